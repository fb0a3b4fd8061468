"""A 100-point sweep (one compiled group) against the same points run one by one through `simulate`.

Run: .venv/bin/python benchmarks/bench_sweep.py [--samples 2048] [--quick]
Mixtral decode (M = 1, L = 4), practical Top-K, 100 bandwidth values; both paths see the same samples.
"cold" includes compilation (first call in the process), "warm" is a second identical run (compiled).
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
    base = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=4)

    def sweep():
        return sj.sweep.run(spec, out=None)["energy_per_token_j_mean"].values[0]

    def loop():
        return [sj.simulate(base.replace(bandwidth_hz=float(v)), policy="topk", samples=args.samples, seed=0)
                .metrics["energy_per_token_j"].mean for v in values]

    times = {}
    for name, fn in (("sweep", sweep), ("loop", loop)):
        t0 = time.perf_counter()
        first = fn()
        t1 = time.perf_counter()
        again = fn()
        times[name] = (t1 - t0, time.perf_counter() - t1)
        assert np.array_equal(np.asarray(first), np.asarray(again))
        times[name + "_values"] = np.asarray(first)
    assert np.allclose(times["sweep_values"], times["loop_values"], rtol=1e-6)
    (s_cold, s_warm), (l_cold, l_warm) = times["sweep"], times["loop"]
    print(f"Machine: {machine()}\n")
    print("| points x samples | sweep cold (s) | loop cold (s) | ratio cold | sweep warm (s) | loop warm (s) | ratio warm |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.points} x {args.samples} | {s_cold:.2f} | {l_cold:.2f} | {l_cold / s_cold:.1f}x | {s_warm:.2f} | "
          f"{l_warm:.2f} | {l_warm / s_warm:.1f}x |")

if __name__ == "__main__":
    main()
