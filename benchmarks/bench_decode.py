"""Decoding throughput: `sj.policies.decode` (jit + vmap) against a vectorized NumPy reference.

Run: `.venv/bin/python benchmarks/bench_decode.py [--quick]`. Prints a markdown table of decisions per
second for Mixtral-like (N=8, K=2), switch-like (N=8, K=1) and GPT-OSS-like (N=32, K=4) instances.
Instances come from the presets (slow-fading channels, synthetic gates and similarity tables, decoding
costs f from `costs.node_costs`, the preset's eta), evaluated as `simulate` does (a vmap over samples of
a vmap over layers, one mismatch table per layer shared by all samples), plus GPT-OSS with uniformly
random tables and eta (many useful substitutes: the pruned search overflows and its exact fallback runs
for the whole batch). Only the decision is timed: inputs are generated beforehand, `block_until_ready`
closes each timed call, the first (compiling) call is excluded, and the best of a few repeats is
reported; JAX and NumPy repeats alternate, so both see the same load on a shared machine. JAX batch:
16384 instances (a Monte Carlo chunk; per-decision time grows at much larger batches as intermediates
leave the caches), GPT-OSS 8192 (random tables 512).

The NumPy side is `sift_jax.testing.numpy_reference.decode_numpy`, also the independent exact reference of
tests/test_decode.py: it enumerates every node set of size 1..K, scores it in closed form (float64) and
takes the lexicographic minimum of (energy, deviation, node count). It shares no code with the engine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sift_jax.testing.numpy_reference import decode_numpy, random_instances

# ------------------------------------------------------------------------------------------------
# instances
# ------------------------------------------------------------------------------------------------


def preset_layers(preset: str, n_samples: int, seed: int = 0):
    """Decoding instances from a preset as `simulate` sees them: one token per sample through every
    layer (slow fading). Returns (sc, f [S, L, N], g [S, L, K], topk [S, L, K], tables [L, N, N+1])."""
    import jax

    from sift_jax import channel, costs, gating, presets, similarity

    sc = presets.get(preset).replace(n_tokens=1)
    tables = similarity.synthetic_tables(sc)  # [L, N, N+1]

    def one(key):
        k_ch, k_g = jax.random.split(key)
        ch = channel.draw(k_ch, sc)
        g, topk = gating.draw(k_g, sc)
        f = jax.vmap(lambda gain: costs.node_costs(sc, ch.distance_m, gain))(ch.gain)
        return f, g[:, 0], topk[:, 0]

    keys = jax.random.split(jax.random.key(seed), n_samples)
    f, g, topk = jax.jit(jax.vmap(one))(keys)
    return sc, np.asarray(f), np.asarray(g), np.asarray(topk), np.asarray(tables)


def preset_instances(preset: str, n_instances: int, seed: int = 0):
    """`preset_layers` flattened over samples and layers: (sc, f [B, N], g [B, K], topk [B, K],
    table [B, N, N+1]) (the tables are broadcast views)."""
    n_layers = {"switch-base-8": 12, "mixtral-8x7b": 32, "gpt-oss-20b": 24}.get(preset)
    sc, f, g, topk, tables = preset_layers(preset, -(-n_instances // (n_layers or 1)), seed)
    n, k = sc.n_nodes, sc.top_k
    tab = np.broadcast_to(tables[None], (f.shape[0],) + tables.shape).reshape(-1, n, n + 1)
    cut = slice(0, n_instances)
    return sc, f.reshape(-1, n)[cut], g.reshape(-1, k)[cut], topk.reshape(-1, k)[cut], tab[cut]


# ------------------------------------------------------------------------------------------------
# benchmark
# ------------------------------------------------------------------------------------------------


def _best_time(fn, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(quick: bool = False) -> list[dict]:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from sift_jax import policies, presets

    scale = 4 if quick else 1
    batch = {"switch-like": 16384, "mixtral-like": 16384, "gpt-oss-like": 8192 // scale, "gpt-oss-random": 512 // scale}
    np_batch = {"switch-like": 8192, "mixtral-like": 8192, "gpt-oss-like": 32, "gpt-oss-random": 32}
    repeats = 3 if quick else 7
    cases = []  # (name, sc, f, g, topk, table, eta, tables shared per layer?)
    for name, preset in (
        ("switch-like", "switch-base-8"),
        ("mixtral-like", "mixtral-8x7b"),
        ("gpt-oss-like", "gpt-oss-20b"),
    ):
        sc, f, g, topk, tables = preset_layers(preset, -(-batch[name] // presets.get(preset).n_layers))
        eta = np.full(f.shape[:2], float(sc.eta), np.float32)
        cases.append((name, sc, f, g, topk, tables, eta, True))
    sc32 = dataclasses.replace(cases[-1][1])
    f, g, topk, table, eta = random_instances(32, 4, batch["gpt-oss-random"], seed=1)
    cases.append(("gpt-oss-random", sc32, f, g, topk, table, eta * 0.25, False))

    rows = []
    for name, sc, f, g, topk, table, eta, per_layer in cases:

        def one(f_, g_, t_, tab_, eta_, sc=sc):
            return policies.decode(dataclasses.replace(sc, eta=eta_), f_, g_, t_, tab_)

        if per_layer:  # as in simulate: vmap over samples of a vmap over layers; one table per layer
            fn = jax.jit(jax.vmap(jax.vmap(one), in_axes=(0, 0, 0, None, 0)))
            n_dec = f.shape[0] * f.shape[1]
            flat = (
                f.reshape(n_dec, -1),
                g.reshape(n_dec, -1),
                topk.reshape(n_dec, -1),
                np.broadcast_to(table[None], (f.shape[0],) + table.shape).reshape(n_dec, *table.shape[1:]),
                eta.reshape(-1),
            )
        else:
            fn = jax.jit(jax.vmap(one))
            n_dec, flat = f.shape[0], (f, g, topk, table, eta)
        args = tuple(jnp.asarray(a) for a in (f, g, topk, table, eta))
        jax.block_until_ready(fn(*args))  # compile + warm-up
        nb = min(np_batch[name], n_dec)
        ref = tuple(a[:nb] for a in flat)
        t, t_np = np.inf, np.inf
        for _ in range(repeats if nb >= 100 else 2):  # interleaved, so both see the same machine load
            t = min(t, _best_time(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)), 1))
            t_np = min(t_np, _best_time(lambda ref=ref: decode_numpy(*ref), 1))
        rows.append(
            {
                "case": name,
                "N": sc.n_nodes,
                "K": sc.top_k,
                "batch": n_dec,
                "jax_per_s": n_dec / t,
                "numpy_batch": nb,
                "numpy_per_s": nb / t_np,
            }
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches")
    args = parser.parse_args(argv)
    import jax

    rows = bench(args.quick)
    cpu = f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    print(f"Decode decisions per second; jax {jax.__version__}, backend {jax.default_backend()}, {cpu}\n")
    print("| case | N | K | JAX decisions/s (batch) | NumPy decisions/s (batch) | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['N']} | {r['K']} | {r['jax_per_s']:.3g} ({r['batch']}) | "
            f"{r['numpy_per_s']:.3g} ({r['numpy_batch']}) | {r['jax_per_s'] / r['numpy_per_s']:.1f}x |"
        )


if __name__ == "__main__":
    main()
