"""A 100-point sweep (one compiled group) against the same points run one by one through `simulate`.

Run: .venv/bin/python benchmarks/bench_sweep.py [--samples 4096] [--points 100] [--quick]
Mixtral decode (M = 1, L = 4), two axes: bandwidth with practical Top-K (the rates, costs and decisions
depend on the axis; draws and gates are shared across points) and eta with SiftMoE (only the decision
depends on the axis). Both paths see the same samples (asserted equal to 1e-6). "cold" includes
compilation (first call in the process); "warm" is the best of three further identical runs (compiled).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import sift_jax as sj
from benchmarks.common import machine

CASES = {
    "bandwidth": ("bandwidth_hz", "topk", np.linspace(1.5e6, 2.5e6, 1000)),
    "eta": ("eta", "siftmoe", np.linspace(0.0, 2.5, 1000)),
}


def measure(field: str, policy: str, values: np.ndarray, samples: int) -> dict:
    spec = sj.sweep.load_spec(
        f'name = "bench"\npreset = "mixtral-8x7b"\ncurves = ["{policy}"]\n'
        f"samples = {samples}\npoints_per_call = {len(values)}\n"
        "[fixed]\nn_tokens = 1\nn_layers = 4\n[[axes]]\n"
        f'field = "{field}"\nvalues = [{", ".join(repr(float(v)) for v in values)}]\n'
    )
    base = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=4)

    def sweep():
        return sj.sweep.run(spec, out=None)["energy_per_token_j_mean"].values[0]

    def loop():
        return [
            sj.simulate(base.replace(**{field: float(v)}), policy=policy, samples=samples, seed=0)
            .metrics["energy_per_token_j"]
            .mean
            for v in values
        ]

    out = {}
    for name, fn in (("sweep", sweep), ("loop", loop)):
        t0 = time.perf_counter()
        first = np.asarray(fn())
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(3):  # best of 3 compiled runs on each side (this VM's timings are noisy)
            t1 = time.perf_counter()
            again = np.asarray(fn())
            warm.append(time.perf_counter() - t1)
            assert np.array_equal(first, again)
        out[name] = (cold, min(warm), first)
    assert np.allclose(out["sweep"][2], out["loop"][2], rtol=1e-6)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="20 points x 256 samples (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.points = 256, 20
    rows = []
    for case, (field, policy, grid) in CASES.items():
        values = grid[np.linspace(0, len(grid) - 1, args.points).astype(int)]
        rows.append((case, policy, measure(field, policy, values, args.samples)))
    print(f"Machine: {machine()}\n")
    print(
        "| axis, policy | points x samples | sweep cold (s) | loop cold (s) | ratio cold | sweep warm (s) | "
        "loop warm (s) | ratio warm |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case, policy, r in rows:
        (s_cold, s_warm, _), (l_cold, l_warm, _) = r["sweep"], r["loop"]
        print(
            f"| {case}, {policy} | {args.points} x {args.samples} | {s_cold:.2f} | {l_cold:.2f} | "
            f"{l_cold / s_cold:.1f}x | {s_warm:.2f} | {l_warm:.2f} | {l_warm / s_warm:.1f}x |"
        )


if __name__ == "__main__":
    main()
