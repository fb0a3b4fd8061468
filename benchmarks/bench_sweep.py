"""A 100-point sweep (one compiled group) against the same points run one by one through `simulate`.

Run: .venv/bin/python benchmarks/bench_sweep.py [--samples 2048] [--quick]
Mixtral decode (M = 1, L = 4), practical Top-K, 100 bandwidth values; both paths see the same samples.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import sift_jax as sj  # noqa: E402
from benchmarks.common import machine  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.points = 256, 20
    values = np.linspace(1.5e6, 2.5e6, args.points)
    spec = sj.sweep.load_spec(
        'name = "bench"\npreset = "mixtral-8x7b"\ncurves = ["topk"]\n'
        f'samples = {args.samples}\npoints_per_call = {args.points}\n'
        '[fixed]\nn_tokens = 1\nn_layers = 4\n[[axes]]\nfield = "bandwidth_hz"\n'
        f'values = [{", ".join(repr(float(v)) for v in values)}]\n')
    t0 = time.perf_counter()
    ds = sj.sweep.run(spec, out=None)
    t_sweep = time.perf_counter() - t0
    base = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=4)
    t0 = time.perf_counter()
    loop = [sj.simulate(base.replace(bandwidth_hz=float(v)), policy="topk", samples=args.samples, seed=0)
            .metrics["energy_per_token_j"].mean for v in values]
    t_loop = time.perf_counter() - t0
    assert np.allclose(ds["energy_per_token_j_mean"].values[0], loop, rtol=1e-6)
    print(f"Machine: {machine()}\n")
    print("| points x samples | sweep (s, incl. compile) | simulate loop (s, incl. compile) | ratio |")
    print("|---|---|---|---|")
    print(f"| {args.points} x {args.samples} | {t_sweep:.2f} | {t_loop:.2f} | {t_loop / t_sweep:.1f}x |")


if __name__ == "__main__":
    main()
