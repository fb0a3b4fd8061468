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

`decode_numpy` is also the independent exact reference of tests/test_decode.py: it enumerates every
node set of size 1..K, scores it in closed form (float64) and takes the lexicographic minimum of
(energy, deviation, node count). It shares no code with sift_jax.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------


def _subsets(n: int, k: int) -> np.ndarray:
    rows = [c + (-1,) * (k - len(c)) for j in range(1, k + 1) for c in itertools.combinations(range(n), j)]
    return np.asarray(rows, np.int64).reshape(-1, k)


def decode_numpy(f, g, topk, table, eta, share_substitutes: bool = True, block: int = 0) -> dict:
    """Exact SiftMoE decoding by enumerating every node set J, 1 <= |J| <= K (float64, vectorized).

    A set's deviation is that of its best slot mapping that serves at least one slot (img within J):
    sharing: sum_i min(s_i, min_{v in J} e_i(v)), or, if no slot prefers a node of J to skipping,
    S - max_i (s_i - min_v e_i(v)) (the one forced slot); matching: S - (the largest total saving
    sum s_i - e_i(v) of an injective slot assignment, savings capped at >= 0), or the forced pair.

    Args:
        f: float[B, N] node costs (inf = infeasible). g: float[B, K]. topk: int[B, K].
        table: float[B, N, N+1]. eta: float[B].
        block: instances per vectorized block (0 = automatic, bounded memory).

    Returns:
        dict of float64/bool arrays [B]: energy (0 if infeasible), deviation (0 if infeasible),
        count (nodes used, 0 if infeasible), feasible.
    """
    f = np.asarray(f, np.float64)
    g = np.asarray(g, np.float64)
    topk = np.asarray(topk, np.int64)
    table = np.asarray(table, np.float64)
    eta = np.broadcast_to(np.asarray(eta, np.float64), f.shape[:1])
    b, n = f.shape
    k = g.shape[1]
    members = _subsets(n, k)  # [S, K], -1 = none
    real = members >= 0
    idx = np.where(real, members, 0)
    count = real.sum(1)
    if not block:
        block = max(1, min(b, 2_000_000 // (members.shape[0] * k * k)))
    out = {name: np.zeros(b) for name in ("energy", "deviation", "count")}
    out["feasible"] = np.zeros(b, bool)
    perms = np.asarray(list(itertools.permutations(range(k))), np.int64)
    for lo in range(0, b, block):
        sl = slice(lo, min(b, lo + block))
        rows = np.take_along_axis(table[sl], topk[sl][:, :, None], axis=1)  # [b, K, N+1]
        e = g[sl][:, :, None] * rows[:, :, :n]  # [b, K, N]
        s = g[sl] * rows[:, :, n]  # [b, K]
        s_tot = s.sum(1)
        fm = np.where(real[None], f[sl][:, idx], 0.0)  # [b, S, K]
        energy = fm.sum(2)
        em = np.where(real[None, None], e[:, :, idx], np.inf)  # [b, K slots, S, K members]
        saving = s[:, :, None, None] - em  # -inf for padding
        best_saving = saving.max(axis=(1, 3))  # [b, S]: the best single (slot, member) pair
        if share_substitutes:
            best = em.min(3)  # [b, K, S]
            capped = np.minimum(best, s[:, :, None]).sum(1)
        else:
            sav = np.maximum(saving, 0.0)  # [b, K, S, K]
            total = np.zeros(sav.shape[:1] + sav.shape[2:3] + (len(perms),))
            for p, perm in enumerate(perms):  # perm[i] = member position serving slot i
                total[:, :, p] = sum(sav[:, i, :, perm[i]] for i in range(k))
            capped = s_tot[:, None] - total.max(2)
        dev = np.where(best_saving >= 0, capped, s_tot[:, None] - best_saving)
        valid = np.isfinite(energy) & (dev <= eta[sl][:, None])
        en = np.where(valid, energy, np.inf)
        e_min = en.min(1)
        m = en == e_min[:, None]
        d_min = np.where(m, dev, np.inf).min(1)
        m &= dev == d_min[:, None]
        c_min = np.where(m, count[None], 1 << 30).min(1)
        feas = np.isfinite(e_min)
        out["energy"][sl] = np.where(feas, e_min, 0.0)
        out["deviation"][sl] = np.where(feas, d_min, 0.0)
        out["count"][sl] = np.where(feas, c_min, 0)
        out["feasible"][sl] = feas
    return out


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


def random_instances(n: int, k: int, b: int, seed: int = 0, inf_rate: float = 0.15, dtype=np.float32):
    """Uniformly random instances: (f, g, topk, table, eta), NumPy arrays with a leading [B] axis.

    f log-uniform in [e^-2, e^2] (some inf); topk K distinct random experts; g sorted Dirichlet(1);
    table off-diagonal uniform in [0.05, 2], zero diagonal, skip column uniform in [0.5, 1.5];
    eta uniform in [0, 1.2].
    """
    rng = np.random.default_rng(seed)
    f = np.exp(rng.uniform(-2, 2, (b, n)))
    f[rng.uniform(size=(b, n)) < inf_rate] = np.inf
    topk = np.argsort(rng.uniform(size=(b, n)), axis=1)[:, :k].astype(np.int32)
    g = -np.sort(-rng.dirichlet(np.ones(k), b), axis=1)
    off = rng.uniform(0.05, 2.0, (b, n, n)) * (1 - np.eye(n))
    table = np.concatenate([off, rng.uniform(0.5, 1.5, (b, n, 1))], axis=2)
    eta = rng.uniform(0, 1.2, b)
    return f.astype(dtype), g.astype(dtype), topk, table.astype(dtype), eta.astype(dtype)


def clustered_instances(n: int, k: int, b: int, cluster: int = 4, seed: int = 0, dtype=np.float64):
    """NumPy instances shaped like the synthetic latent model of `sift_jax.similarity` (no JAX needed).

    Experts in clusters of `cluster`; output norms n_i = 60 exp(0.3 z); mismatch
    F_ij = sqrt(n_i^2 + n_j^2 - 2 c_ij n_i n_j) with c_ij ~ 0.9 +- 0.03 inside a cluster and ~ 0 +- 0.05
    across; skip = n_i. Costs log-normal (sigma 1.5, heavy tails) with 5% inf; gates: softmax of
    normal logits over a random Top-K; eta uniform in [0, 1.2 x the skip-all deviation].
    Returns (f, g, topk, table, eta) with a leading [B] axis.
    """
    rng = np.random.default_rng(seed)
    members = np.argsort(rng.uniform(size=(b, n)), axis=1) % (n // cluster)  # cluster of each expert
    norm = 60.0 * np.exp(0.3 * rng.standard_normal((b, n)))
    same = members[:, :, None] == members[:, None, :]
    cos = np.where(same, 0.9 + 0.03 * rng.standard_normal((b, n, n)), 0.05 * rng.standard_normal((b, n, n)))
    cos = (cos + np.swapaxes(cos, 1, 2)) / 2
    ni, nj = norm[:, :, None], norm[:, None, :]
    off = np.sqrt(np.maximum(ni ** 2 + nj ** 2 - 2 * cos * ni * nj, 0.0)) * (1 - np.eye(n))
    table = np.concatenate([off, norm[:, :, None]], axis=2)
    f = np.exp(1.5 * rng.standard_normal((b, n))) * 1e-3
    f[rng.uniform(size=(b, n)) < 0.05] = np.inf
    logits = rng.standard_normal((b, n))
    topk = np.argsort(-logits, axis=1)[:, :k].astype(np.int32)
    top = np.take_along_axis(logits, topk, 1)
    g = np.exp(top - top[:, :1])
    g /= g.sum(1, keepdims=True)
    skip_all = (g * np.take_along_axis(norm, topk, 1)).sum(1)
    eta = rng.uniform(0, 1.2, b) * skip_all
    return f.astype(dtype), g.astype(dtype), topk, table.astype(dtype), eta.astype(dtype)


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
    batch = {"switch-like": 16384, "mixtral-like": 16384, "gpt-oss-like": 8192 // scale,
             "gpt-oss-random": 512 // scale}
    np_batch = {"switch-like": 8192, "mixtral-like": 8192, "gpt-oss-like": 32, "gpt-oss-random": 32}
    repeats = 3 if quick else 7
    cases = []  # (name, sc, f, g, topk, table, eta, tables shared per layer?)
    for name, preset in (("switch-like", "switch-base-8"), ("mixtral-like", "mixtral-8x7b"),
                         ("gpt-oss-like", "gpt-oss-20b")):
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
            flat = (f.reshape(n_dec, -1), g.reshape(n_dec, -1), topk.reshape(n_dec, -1),
                    np.broadcast_to(table[None], (f.shape[0],) + table.shape).reshape(n_dec, *table.shape[1:]),
                    eta.reshape(-1))
        else:
            fn = jax.jit(jax.vmap(one))
            n_dec, flat = f.shape[0], (f, g, topk, table, eta)
        args = tuple(jnp.asarray(a) for a in (f, g, topk, table, eta))
        jax.block_until_ready(fn(*args))  # compile + warm-up
        nb = min(np_batch[name], n_dec)
        ref = tuple(a[:nb] for a in flat)
        t, t_np = np.inf, np.inf
        for r in range(repeats if nb >= 100 else 2):  # interleaved, so both see the same machine load
            t = min(t, _best_time(lambda: jax.block_until_ready(fn(*args)), 1))
            t_np = min(t_np, _best_time(lambda: decode_numpy(*ref), 1))
        rows.append({"case": name, "N": sc.n_nodes, "K": sc.top_k, "batch": n_dec, "jax_per_s": n_dec / t,
                     "numpy_batch": nb, "numpy_per_s": nb / t_np})
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
        print(f"| {r['case']} | {r['N']} | {r['K']} | {r['jax_per_s']:.3g} ({r['batch']}) | "
              f"{r['numpy_per_s']:.3g} ({r['numpy_batch']}) | {r['jax_per_s'] / r['numpy_per_s']:.1f}x |")


if __name__ == "__main__":
    main()
