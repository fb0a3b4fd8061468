"""Samples/s of channel draw + rates + decode node costs for every preset, JAX vs vectorized NumPy.

Run: .venv/bin/python benchmarks/bench_foundation.py [--samples 65536]
One sample = distances for N-1 helpers, Gamma(2) gains for L layers x N-1 helpers, both link rates
and the per-node decode cost f_v of every layer (float32 JAX, float64 NumPy, same process).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import sift_jax as sj
from benchmarks.common import best_time, machine
from sift_jax.testing import numpy_reference as ref


def jax_batch(sc, n: int, impl: str = "threefry2x32"):
    def one(key):
        ch = sj.channel.draw(key, sc)
        _, r_dn = jax.vmap(lambda g: sj.channel.rates(sc, ch.distance_m, g))(ch.gain)
        f = jax.vmap(lambda g: sj.costs.node_costs(sc, ch.distance_m, g))(ch.gain)
        return f.sum() + r_dn.sum() * 0

    @jax.jit
    def run(seed):
        keys = jax.random.split(jax.random.key(seed, impl=impl), n)
        return jax.vmap(one)(keys).sum()

    return run


def numpy_batch(sc, n: int):
    p = ref.params_of(sc)
    rng = np.random.default_rng(0)

    def run():
        d, h = ref.draw_channel(rng, p, n, sc.n_layers, sc.n_helpers, int(sc.fading_shape))
        _, _r_dn = ref.rates(p, d[:, None, :], h, 1.0)
        f = ref.node_costs(p, d[:, None, :], h)
        return f.sum()

    return run


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=65536)
    ap.add_argument("--quick", action="store_true", help="2048 samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples = 2048
    print(f"Machine: {machine()}\n")
    print("| preset | L x (N-1) | JAX samples/s | NumPy samples/s | ratio | JAX rbg keys samples/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in sj.presets.names():
        sc = sj.presets.get(name)
        t_jax = best_time(jax_batch(sc, args.samples), 0)
        t_np = best_time(numpy_batch(sc, args.samples), repeats=3)
        t_rbg = best_time(jax_batch(sc, args.samples, "rbg"), 0)
        print(
            f"| {name} | {sc.n_layers} x {sc.n_helpers} | {args.samples / t_jax:.3g} | {args.samples / t_np:.3g} "
            f"| {t_np / t_jax:.1f}x | {args.samples / t_rbg:.3g} | {t_np / t_rbg:.1f}x |"
        )


if __name__ == "__main__":
    main()
