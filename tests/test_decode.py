"""SiftMoE decoding (policies/decode.py) against the brute-force oracle and an independent NumPy
enumeration, plus structural properties (K = 1 closed form, eta = 0, siftmoe <= Top-K, tracing).

Instances are drawn with NumPy (no compilation) and evaluated in one jit+vmap call per static shape.
Most instances have N = 8 node slots of which only the first n_real in 2..8 exist (the others have
f = inf, so no policy can use them: the decision equals that of the n_real-node instance); a second set
uses the real shapes N = 2..8 directly. A third of the instances are "discrete" (integer costs, mismatches
and gate weights on a 1/4 grid) so that exact ties in energy and deviation occur and the tie rules are
exercised.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sift_jax import policies
from sift_jax.errors import ConfigError
from sift_jax.policies import decode, oracle
from sift_jax.policies.baselines import topk as topk_practical
from sift_jax.scenario import Scenario
from sift_jax.testing.numpy_reference import clustered_instances, decode_numpy, random_instances

N_PAD = 8


def make_instances(rng, n, k, b, pad=True, eta_zero=0.1, discrete_rate=1 / 3):
    """NumPy instances (f, g, topk, table, eta); with pad, node v exists only if v < n_real.

    Discrete instances round mismatches to a 1/4 grid, so some off-diagonal entries are 0 (identical
    experts: free substitutes); the others have off-diagonal mismatches >= 0.05.
    """
    n_real = rng.integers(max(2, k), n + 1, b) if pad else np.full(b, n)
    exists = np.arange(n)[None, :] < n_real[:, None]
    discrete = rng.uniform(size=b) < discrete_rate
    f = np.exp(rng.uniform(-2, 2, (b, n)))
    f = np.where(discrete[:, None], np.floor(f * 1.5), f)  # integers 0..11, zeros included
    f[rng.uniform(size=(b, n)) < 0.15] = np.inf
    f[~exists] = np.inf
    topk = np.argsort(np.where(exists, rng.uniform(size=(b, n)), 2.0), axis=1)[:, :k].astype(np.int32)
    g = -np.sort(-rng.dirichlet(np.ones(k), b), axis=1)
    g_disc = np.array({1: [1.0], 2: [0.5, 0.5], 3: [0.5, 0.25, 0.25]}[k])
    g = np.where(discrete[:, None], g_disc[None, :], g)
    off = rng.uniform(0.05, 2.0, (b, n, n))
    skip = rng.uniform(0.5, 1.5, (b, n, 1))
    off = np.where(discrete[:, None, None], np.round(off * 4) / 4, off) * (1 - np.eye(n))
    skip = np.where(discrete[:, None, None], np.round(skip * 4) / 4, skip)
    table = np.concatenate([off, skip], axis=2)
    eta = rng.uniform(0, 1.2, b)
    eta = np.where(discrete, np.round(eta * 16) / 16, eta)
    eta[rng.uniform(size=b) < eta_zero] = 0.0
    return tuple(a.astype(np.float32) if a.dtype.kind == "f" else a for a in (f, g, topk, table, eta))


BATCH = 850  # every compiled bundle sees this batch size only (compiles dominate the test time)


@functools.cache
def bundle(n, k, share=True, pruned=True, baseline=True):
    """One compiled call per configuration: decode (auto), decode (pruned, R = 2), oracle, Top-K."""
    sc = Scenario(n_nodes=n, top_k=k)

    def one(f, g, topk, table, eta):
        s = dataclasses.replace(sc, eta=eta)
        out = {
            "auto": decode(s, f, g, topk, table, share_substitutes=share),
            "oracle": oracle(s, f, g, topk, table, share_substitutes=share),
        }
        if k > 1:  # "auto" is "sets" at these sizes; the dense grids are checked explicitly
            out["direct"] = decode(s, f, g, topk, table, share_substitutes=share, strategy="direct")
        if k > 1 and pruned:
            out["pruned"] = decode(
                s, f, g, topk, table, share_substitutes=share, strategy="pruned", per_slot_candidates=2
            )
        if share and baseline:
            out["topk"] = topk_practical(s, f, g, topk, table)
        return out

    return jax.jit(jax.vmap(one))


def run(n, k, inst, share=True, **flags):
    """Evaluate a bundle on any number of instances in fixed-size batches (padded with copies)."""
    fn, b = bundle(n, k, share, **flags), len(inst[0])
    outs = []
    for lo in range(0, b, BATCH):
        part = [a[lo : lo + BATCH] for a in inst]
        pad = BATCH - len(part[0])
        part = [np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a for a in part]
        outs.append(jax.tree.map(lambda x, pad=pad: np.asarray(x)[: BATCH - pad], fn(*(jnp.asarray(a) for a in part))))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def check_consistent(d, inst):
    """Fields of a decode Decision agree with each other and with the inputs (NumPy, float64)."""
    f, g, topk, table, eta = (np.asarray(a, np.float64) if a.dtype.kind == "f" else a for a in inst)
    _b, n = f.shape
    a = d.assign
    assert np.all((a >= -1) & (a < n))
    feas = d.feasible
    assert np.all(a[~feas] == -1) and np.all(d.loads[~feas] == 0)
    assert np.all(d.energy_j[~feas] == 0) and np.all(d.deviation_bound[~feas] == 0)
    loads = np.stack([(a == v).any(1) for v in range(n)], 1).astype(np.int32)
    np.testing.assert_array_equal(d.loads, loads)
    assert np.all(loads.sum(1)[feas] >= 1)
    rows = np.take_along_axis(table, topk[:, :, None], 1)
    picked = np.take_along_axis(rows, np.where(a >= 0, a, n)[:, :, None], 2)[:, :, 0]
    dev = (g * picked).sum(1)
    np.testing.assert_allclose(d.deviation_bound[feas], dev[feas], rtol=1e-5, atol=1e-6)
    assert np.all(d.deviation_bound[feas] <= eta[feas] + 1e-6)
    energy = np.where(loads > 0, f, 0.0).sum(1)
    np.testing.assert_allclose(d.energy_j[feas], energy[feas], rtol=1e-6)
    np.testing.assert_array_equal(d.n_skipped, np.where(feas, (a < 0).sum(1), 0))
    np.testing.assert_array_equal(d.n_replaced, ((a >= 0) & (a != topk)).sum(1))


def assert_same_optimum(d, o, what):
    """Same feasibility, energy, deviation (1e-6) and node count as the reference."""
    bad = (
        (d.feasible != o.feasible)
        | ~np.isclose(d.energy_j, o.energy_j, rtol=1e-6, atol=0)
        | (np.abs(d.deviation_bound - o.deviation_bound) > 1e-6)
        | (d.loads.sum(1) != o.loads.sum(1))
    )
    assert not bad.any(), f"{what}: {bad.sum()} mismatches, first at {np.argmax(bad)}"


@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_oracle_padded(k):
    """3,400 instances per K (10,200 in all), N in 2..8 by padding, share_substitutes=True; auto
    ("sets"), direct and pruned (R = 2, so both the owner grid and its exact fallback run)."""
    inst = make_instances(np.random.default_rng(k), N_PAD, k, 4 * BATCH)
    out = run(N_PAD, k, inst)
    o = out["oracle"]
    assert 0.6 < o.feasible.mean() < 0.99  # both outcomes well represented
    for name in ("auto", "direct", "pruned") if k > 1 else ("auto",):
        assert_same_optimum(out[name], o, name)
        check_consistent(out[name], inst)
    # K = 1: the closed form of the paper, v* = argmin {f_v : g F[topk, v] <= eta} (ties: deviation, index)
    if k == 1:
        f, g, topk, table, eta = inst
        dev = g[:, :1] * np.take_along_axis(table, topk[:, :, None], 1)[:, 0, :N_PAD]
        ok = np.isfinite(f) & (dev <= eta[:, None])
        key = np.where(ok, f, np.inf)
        best = np.min(key, 1)
        tie = ok & (key == best[:, None])
        dbest = np.min(np.where(tie, dev, np.inf), 1)
        v = np.argmax(tie & (dev == dbest[:, None]), 1)
        feas = ok.any(1)
        np.testing.assert_array_equal(out["auto"].feasible, feas)
        np.testing.assert_array_equal(out["auto"].assign[:, 0], np.where(feas, v, -1))
    # siftmoe never costs more than practical Top-K where Top-K is feasible (it is one candidate)
    t = out["topk"]
    assert np.all(out["auto"].feasible[t.feasible])
    assert np.all(out["auto"].energy_j[t.feasible] <= t.energy_j[t.feasible] * (1 + 1e-6))


@pytest.mark.parametrize("n,k", [(2, 2), (3, 3)])
def test_matches_oracle_real_shapes(n, k):
    """Unpadded shapes with K = N (every node is a Top-K expert)."""
    inst = make_instances(np.random.default_rng(10 * n + k), n, k, BATCH, pad=False)
    out = run(n, k, inst, pruned=False, baseline=False)
    for name in ("auto", "direct"):
        assert_same_optimum(out[name], out["oracle"], f"{name} N={n} K={k}")
        check_consistent(out[name], inst)


@pytest.mark.parametrize("k", [3])
def test_matching_matches_oracle(k):
    """share_substitutes=False: no node serves two slots, against the oracle with the same rule
    (K = 3 covers both the pair grids with slot patterns and the full-size additive grid)."""
    inst = make_instances(np.random.default_rng(100 + k), N_PAD, k, 2 * BATCH)
    out = run(N_PAD, k, inst, share=False)
    for name in ("auto", "direct", "pruned"):
        d = out[name]
        assert_same_optimum(d, out["oracle"], name)
        check_consistent(d, inst)
        used = d.assign >= 0
        dup = [(d.assign[:, i] == d.assign[:, j]) & used[:, i] for i in range(k) for j in range(i + 1, k)]
        assert not np.any(dup)


def test_eta_zero_keeps_topk():
    """eta = 0 and positive off-diagonal mismatches: keep exactly the Top-K experts (if reachable)."""
    rng = np.random.default_rng(7)
    for k in (2, 3):
        f, g, topk, table, _ = make_instances(rng, N_PAD, k, BATCH, eta_zero=0.0, discrete_rate=0.0)
        inst = (f, g, topk, table, np.zeros(len(f), np.float32))
        d = run(N_PAD, k, inst)["auto"]
        reachable = np.all(np.isfinite(np.take_along_axis(f, topk, 1)), 1)
        assert 0.2 < reachable.mean() < 0.9
        np.testing.assert_array_equal(d.feasible, reachable)
        np.testing.assert_array_equal(d.assign[reachable], topk[reachable])
        assert np.all(d.deviation_bound == 0) and np.all(d.n_replaced == 0) and np.all(d.n_skipped == 0)


@pytest.mark.parametrize("share", [True, False])
def test_gpt_oss_matches_full_enumeration(x64, share):
    """N = 32, K = 4 against the NumPy enumeration of all 41,448 node sets, float64. Clustered tables
    like the preset's (4 experts per cluster: the pruned search, no fallback) and uniformly random
    tables (many useful substitutes: the lists overflow and the exact fallback runs)."""
    sc = Scenario(n_nodes=32, top_k=4)
    rnd = random_instances(32, 4, 12, seed=4, dtype=np.float64)
    sets = [clustered_instances(32, 4, 40, seed=3), rnd[:4] + (rnd[4] * 0.25,)]

    def one(f, g, topk, table, eta):
        return decode(dataclasses.replace(sc, eta=eta), f, g, topk, table, share_substitutes=share)

    fn = jax.jit(jax.vmap(one))
    for inst in sets:
        d = jax.tree.map(np.asarray, fn(*(jnp.asarray(a) for a in inst)))
        ref = decode_numpy(*inst, share_substitutes=share)
        np.testing.assert_array_equal(d.feasible, ref["feasible"])
        np.testing.assert_allclose(d.energy_j, ref["energy"], rtol=1e-9)
        np.testing.assert_allclose(d.deviation_bound, ref["deviation"], rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(d.loads.sum(1), ref["count"])
        check_consistent(d, inst)
        assert ref["feasible"].mean() > 0.5 and np.mean(ref["count"] >= 2) > 0.2  # multi-node sets occur


def test_single_call_equals_batch():
    """An unbatched jit call (where the pruned fallback's while_loop has a scalar predicate) gives the
    batched result, for instances whose lists fit R = 2 and ones that overflow."""
    inst = make_instances(np.random.default_rng(3), N_PAD, 3, BATCH)
    out = run(N_PAD, 3, inst)
    sc = Scenario(n_nodes=N_PAD, top_k=3)
    single = jax.jit(
        lambda *a: decode(dataclasses.replace(sc, eta=a[4]), *a[:4], strategy="pruned", per_slot_candidates=2)
    )
    for i in range(6):
        d = single(*(jnp.asarray(a[i]) for a in inst))
        np.testing.assert_array_equal(np.asarray(d.assign), out["pruned"].assign[i])
        assert float(d.energy_j) == pytest.approx(float(out["pruned"].energy_j[i]), rel=1e-6)


@pytest.mark.parametrize("options", [{}, {"strategy": "pruned", "share_substitutes": False}])
def test_traces_once(options):
    sc = Scenario(n_nodes=6, top_k=3)

    chex.clear_trace_counter()  # counters are keyed by the code location, shared across parameters

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(f, g, topk, table, eta):
        return decode(dataclasses.replace(sc, eta=eta), f, g, topk, table, **options)

    for seed in range(3):
        inst = make_instances(np.random.default_rng(seed), 6, 3, 1, pad=False)
        jax.block_until_ready(fn(*(jnp.asarray(a[0]) for a in inst)))


def test_registry():
    assert policies.names() == ("siftmoe", "topk-ideal", "topk", "wdmoe", "oracle")
    assert policies.get("siftmoe") is decode and policies.get("oracle") is oracle
    with pytest.raises(ConfigError, match="policy"):
        policies.get("nope")
    sc = Scenario(n_nodes=4, top_k=2, eta=0.5)
    f, g, topk, table, _ = make_instances(np.random.default_rng(0), 4, 2, 1, pad=False)

    @jax.jit
    def every_policy(*args):  # the common signature (sc, f, g, topk, table, **options)
        out = {name: policies.get(name)(sc, *args) for name in policies.names()}
        out["siftmoe-matching"] = policies.get("siftmoe")(sc, *args, share_substitutes=False)
        out["oracle-matching"] = policies.get("oracle")(sc, *args, share_substitutes=False)
        out["wdmoe-0.9"] = policies.get("wdmoe")(sc, *args, threshold=0.9)
        return out

    out = every_policy(f[0], g[0], topk[0], table[0])
    for d in out.values():
        assert isinstance(d, policies.Decision) and d.assign.shape == (2,) and d.loads.shape == (4,)
    for a, b in (("siftmoe", "oracle"), ("siftmoe-matching", "oracle-matching")):
        assert bool(out[a].feasible) == bool(out[b].feasible)
        assert float(out[a].energy_j) == pytest.approx(float(out[b].energy_j), rel=1e-6)


def test_bad_input():
    sc = Scenario(n_nodes=4, top_k=2)
    f, g, topk, table = jnp.ones(4), jnp.array([0.6, 0.4]), jnp.array([0, 1]), jnp.ones((4, 5))
    with pytest.raises(ConfigError, match="strategy"):
        decode(sc, f, g, topk, table, strategy="greedy")
    with pytest.raises(ConfigError, match="share_substitutes"):
        decode(sc, f, g, topk, table, share_substitutes="yes")
    with pytest.raises(ConfigError, match="per_slot_candidates"):
        decode(sc, f, g, topk, table, per_slot_candidates=0)
    with pytest.raises(ConfigError, match="table"):
        decode(sc, f, g, topk, jnp.ones((4, 4)))
    with pytest.raises(ConfigError, match="f"):
        decode(sc, jnp.ones(3), g, topk, table)
    with pytest.raises(ConfigError, match="top_k"):
        decode(Scenario(n_nodes=64, top_k=8), jnp.ones(64), jnp.ones(8) / 8, jnp.arange(8), jnp.ones((64, 65)))


def test_simulated_energy_non_increasing():
    """Common random numbers (same seed): per sample the SiftMoE energy cannot rise with eta (the
    feasible set grows), nor with bandwidth or deadline (every node cost f_v is non-increasing and
    the accuracy constraint does not move), so with no infeasible sample the means are non-increasing."""
    import sift_jax as sj

    base = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=2, eta=0.75)
    sweeps = {"eta": (0.0, 0.75, 1.5, 3.0), "bandwidth_hz": (1.8e6, 2.0e6, 2.2e6), "deadline_s": (0.070, 0.074, 0.080)}
    for field, values in sweeps.items():
        means = []
        for v in values:
            res = sj.simulate(base.replace(**{field: v}), policy="siftmoe", samples=192, seed=0)
            assert res.metrics["infeasible_rate"].mean == 0.0
            means.append(res.metrics["energy_per_token_j"].mean)
        assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(means)), (field, means)
        assert means[-1] < means[0], (field, means)  # the sweep does move the energy
