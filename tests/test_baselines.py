"""Decoding baselines (policies/baselines.py) against independent NumPy implementations of the
documented readings: ideal Top-K, practical Top-K (lost = skipped), WDMoE-style cosine threshold."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sift_jax.errors import ConfigError
from sift_jax.policies import baselines, decode, topk, topk_ideal, wdmoe
from sift_jax.scenario import Scenario
from sift_jax.testing.numpy_reference import random_instances

N, K = 6, 3


def numpy_outcome(f, g, topk_idx, table, keep):
    """Energy, deviation, assign of 'each kept slot on its own expert's node, the rest skipped'."""
    n = f.shape[1]
    rows = np.take_along_axis(table.astype(np.float64), topk_idx[:, :, None], 1)
    own = np.take_along_axis(rows, topk_idx[:, :, None], 2)[:, :, 0]
    dev = (g * np.where(keep, own, rows[:, :, n])).sum(1)
    ftk = np.take_along_axis(f.astype(np.float64), topk_idx, 1)
    energy = np.where(keep & np.isfinite(ftk), ftk, 0.0).sum(1)
    return energy, dev, np.where(keep, topk_idx, -1)


@functools.cache
def batched(name, n=N, k=K, **options):
    sc = Scenario(n_nodes=n, top_k=k)
    fn = {"topk": topk, "topk_ideal": topk_ideal, "wdmoe": wdmoe, "decode": decode}[name]

    def one(f, g, t, table, eta, *extra):
        kw = dict(options)
        if extra:
            kw["latency_s"] = extra[0]
        return fn(dataclasses.replace(sc, eta=eta), f, g, t, table, **kw)

    return jax.jit(jax.vmap(one))


def run(name, inst, *extra, **options):
    out = batched(name, **options)(*(jnp.asarray(a) for a in inst), *(jnp.asarray(x) for x in extra))
    return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def inst():
    return random_instances(N, K, 2000, seed=21, inf_rate=0.2)


def test_topk_ideal(inst):
    f, g, t, table, _eta = inst
    d = run("topk_ideal", inst)
    energy, _, _ = numpy_outcome(f, g, t, table, np.ones_like(t, bool))
    np.testing.assert_array_equal(d.assign, t)
    np.testing.assert_allclose(d.energy_j, energy, rtol=1e-6)
    assert np.all(d.deviation_bound == 0) and np.all(d.n_skipped == 0) and np.all(d.n_replaced == 0)
    reachable = np.all(np.isfinite(np.take_along_axis(f, t, 1)), 1)
    np.testing.assert_array_equal(d.feasible, reachable)
    assert 0.2 < reachable.mean() < 0.8
    assert np.all(d.loads.sum(1) == K)


def test_topk_practical(inst):
    f, g, t, table, _eta = inst
    d = run("topk", inst)
    delivered = np.isfinite(np.take_along_axis(f, t, 1))
    energy, dev, assign = numpy_outcome(f, g, t, table, delivered)
    np.testing.assert_array_equal(d.assign, assign)
    np.testing.assert_allclose(d.energy_j, energy, rtol=1e-6)
    np.testing.assert_allclose(d.deviation_bound, dev, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(d.n_skipped, (~delivered).sum(1))
    np.testing.assert_array_equal(d.feasible, delivered.all(1))
    np.testing.assert_array_equal(d.loads.sum(1), delivered.sum(1))
    # ideal and practical agree where nothing is lost
    ideal = run("topk_ideal", inst)
    ok = delivered.all(1)
    np.testing.assert_allclose(d.energy_j[ok], ideal.energy_j[ok], rtol=1e-6)
    assert np.all(d.deviation_bound[ok] == 0)


def numpy_wdmoe(f, g, t, table, eta, threshold, lat=None):
    ftk = np.take_along_axis(f.astype(np.float64), t, 1)
    latency = ftk if lat is None else np.take_along_axis(lat.astype(np.float64), t, 1)
    delivered = np.isfinite(ftk) & np.isfinite(latency)
    keep = delivered.copy()
    for b in range(len(f)):
        idx = np.flatnonzero(delivered[b])
        if len(idx) < 2:
            continue
        w, x = g[b, idx].astype(np.float64), latency[b, idx]
        cos = w @ x / (np.linalg.norm(w) * np.linalg.norm(x))
        if cos < threshold:
            low = idx[np.flatnonzero(w == w.min())[-1]]  # lowest weight, the later slot on ties
            keep[b, low] = False
    energy, dev, assign = numpy_outcome(f, g, t, table, keep)
    feasible = delivered.all(1) & (dev <= eta + 1e-7)
    return energy, dev, assign, feasible


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_wdmoe_matches_numpy(inst, threshold):
    f, g, t, table, eta = inst
    d = run("wdmoe", inst, threshold=threshold)
    energy, dev, assign, feasible = numpy_wdmoe(f, g, t, table, eta, threshold)
    np.testing.assert_array_equal(d.assign, assign)
    np.testing.assert_allclose(d.energy_j, energy, rtol=1e-6)
    np.testing.assert_allclose(d.deviation_bound, dev, rtol=1e-5, atol=1e-6)
    close = np.abs(dev - eta) < 1e-5  # float32 vs float64 at the boundary
    np.testing.assert_array_equal(d.feasible[~close], feasible[~close])
    dropped = (d.assign < 0) & np.isfinite(np.take_along_axis(f, t, 1))
    assert 0.0 < dropped.any(1).mean() < 1.0  # the rule does fire, but not always


def test_wdmoe_latency_argument(inst):
    f, g, t, table, eta = inst
    lat = np.random.default_rng(5).uniform(0.01, 0.3, f.shape).astype(np.float32)
    d = run("wdmoe", inst, lat, threshold=0.9)
    _energy, _dev, assign, _ = numpy_wdmoe(f, g, t, table, eta, 0.9, lat)
    np.testing.assert_array_equal(d.assign, assign)
    with pytest.raises(ConfigError, match="latency_s"):
        wdmoe(Scenario(n_nodes=N, top_k=K), f[0], g[0], t[0], table[0], latency_s=np.ones(N + 1))


def test_wdmoe_limits(inst):
    """threshold -1 never drops (= practical Top-K); threshold > 1 always drops one of >= 2 delivered."""
    f, _g, t, _table, _eta = inst
    never, always, practical = run("wdmoe", inst, threshold=-1.0), run("wdmoe", inst, threshold=1.01), run("topk", inst)
    np.testing.assert_array_equal(never.assign, practical.assign)
    delivered = np.isfinite(np.take_along_axis(f, t, 1)).sum(1)
    np.testing.assert_array_equal((always.assign >= 0).sum(1), np.where(delivered >= 2, delivered - 1, delivered))
    one = random_instances(N, 1, 200, seed=3)  # K = 1: nothing to drop
    d1 = jax.tree.map(np.asarray, batched("wdmoe", N, 1, threshold=1.01)(*(jnp.asarray(a) for a in one)))
    p1 = jax.tree.map(np.asarray, batched("topk", N, 1)(*(jnp.asarray(a) for a in one)))
    np.testing.assert_array_equal(d1.assign, p1.assign)


def test_siftmoe_never_worse_than_ideal_topk(inst):
    """Retaining every Top-K expert is always a candidate of SiftMoE (deviation 0 <= eta)."""
    ideal, sift = run("topk_ideal", inst), run("decode", inst)
    ok = ideal.feasible
    assert np.all(sift.feasible[ok])
    assert np.all(sift.energy_j[ok] <= ideal.energy_j[ok] * (1 + 1e-6))


@pytest.mark.parametrize("policy", [topk, topk_ideal, wdmoe])
def test_traces_once(policy):
    sc = Scenario(n_nodes=N, top_k=K)

    chex.clear_trace_counter()  # counters are keyed by the code location, shared across parameters

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(f, g, t, table, eta):
        return policy(dataclasses.replace(sc, eta=eta), f, g, t, table)

    for seed in range(3):
        f, g, t, table, eta = random_instances(N, K, 1, seed=seed)
        jax.block_until_ready(fn(f[0], g[0], t[0], table[0], eta[0]))


def test_default_threshold_documented():
    assert baselines.DEFAULT_WDMOE_THRESHOLD == 0.5
