"""The brute-force oracle (policies/oracle.py) against hand-solved cases and the independent NumPy
enumeration of sift_jax/testing/numpy_reference.py (node sets instead of slot mappings)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sift_jax.errors import ConfigError
from sift_jax.policies import oracle
from sift_jax.scenario import Scenario
from sift_jax.testing.numpy_reference import decode_numpy, random_instances


def run(n, k, inst, share):
    sc = Scenario(n_nodes=n, top_k=k)

    def one(f, g, t, table, eta):
        return oracle(dataclasses.replace(sc, eta=eta), f, g, t, table, share_substitutes=share)

    return jax.tree.map(np.asarray, jax.jit(jax.vmap(one))(*(jnp.asarray(a) for a in inst)))


@pytest.mark.parametrize("n,k,share", [(5, 2, True), (6, 3, True), (6, 3, False), (4, 4, False)])
def test_matches_numpy_set_enumeration(n, k, share):
    inst = random_instances(n, k, 600, seed=10 * n + k, dtype=np.float64)
    d = run(n, k, tuple(a.astype(np.float32) if a.dtype.kind == "f" else a for a in inst), share)
    ref = decode_numpy(*inst, share_substitutes=share)
    np.testing.assert_array_equal(d.feasible, ref["feasible"])
    np.testing.assert_allclose(d.energy_j, ref["energy"], rtol=1e-5)
    np.testing.assert_allclose(d.deviation_bound, ref["deviation"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(d.loads.sum(1), ref["count"])
    if not share:
        a = d.assign
        used = a >= 0
        assert not any(np.any((a[:, i] == a[:, j]) & used[:, i]) for i in range(k) for j in range(i + 1, k))


def test_hand_solved():
    """N = 3, K = 2. e = g * Fbar rows: slot 0 (expert 0, g = .6): [0, .12, .9], skip .6;
    slot 1 (expert 2, g = .4): [.6, .6, 0], skip .4. f = [3, 1, 2]."""
    sc = Scenario(n_nodes=3, top_k=2)
    table = jnp.array([[0.0, 0.2, 1.5, 1.0], [0.3, 0.0, 1.5, 1.0], [1.5, 1.5, 0.0, 1.0]])
    f, g, t = jnp.array([3.0, 1.0, 2.0]), jnp.array([0.6, 0.4]), jnp.array([0, 2])
    cases = {  # eta: (assign, energy, deviation)
        0.0: ([0, 2], 5.0, 0.0),  # keep both
        0.2: ([1, 2], 3.0, 0.12),  # replace expert 0 by node 1
        0.45: ([1, 2], 3.0, 0.12),  # {0} alone also costs 3 J but deviates 0.4: the tie goes to {1, 2}
        0.55: ([1, -1], 1.0, 0.52),  # node 1 for slot 0, skip slot 1
    }
    solve = jax.jit(lambda eta, f: oracle(dataclasses.replace(sc, eta=eta), f, g, t, table))
    for eta, (assign, energy, dev) in cases.items():
        d = solve(eta, f)
        assert d.assign.tolist() == assign and float(d.energy_j) == pytest.approx(energy)
        assert float(d.deviation_bound) == pytest.approx(dev, abs=1e-6) and bool(d.feasible)
    # K = 2 with every node infinite but node 1: a token must run at least one expert (forced serve)
    d = solve(10.0, jnp.array([jnp.inf, 1.0, jnp.inf]))
    assert d.assign.tolist() == [1, -1] and float(d.energy_j) == 1.0
    d = solve(0.3, jnp.full(3, jnp.inf))
    assert not bool(d.feasible) and d.assign.tolist() == [-1, -1] and float(d.energy_j) == 0.0


def test_matching_forbids_sharing():
    """Node 1 is the best substitute for both slots; with a matching only one slot may use it."""
    sc = Scenario(n_nodes=4, top_k=2, eta=10.0)
    table = jnp.array(
        [[0.0, 0.1, 2.0, 2.0, 1.0], [2.0, 0.0, 2.0, 2.0, 1.0], [2.0, 0.1, 0.0, 2.0, 1.0], [2.0, 2.0, 2.0, 0.0, 1.0]]
    )
    f, g, t = jnp.array([9.0, 1.0, 9.0, 9.0]), jnp.array([0.5, 0.5]), jnp.array([0, 2])
    shared = jax.jit(lambda f: oracle(sc, f, g, t, table))(f)
    assert shared.assign.tolist() == [1, 1] and float(shared.deviation_bound) == pytest.approx(0.1)
    matched = jax.jit(lambda f: oracle(sc, f, g, t, table, share_substitutes=False))(f)
    assert sorted(matched.assign.tolist()) == [-1, 1] and float(matched.deviation_bound) == pytest.approx(0.55)


def test_size_limit():
    with pytest.raises(ConfigError, match="brute-force"):
        oracle(Scenario(n_nodes=32, top_k=4), jnp.ones(32), jnp.ones(4) / 4, jnp.arange(4), jnp.ones((32, 33)))
    with pytest.raises(ConfigError, match="share_substitutes"):
        oracle(
            Scenario(n_nodes=3, top_k=2),
            jnp.ones(3),
            jnp.ones(2) / 2,
            jnp.arange(2),
            jnp.ones((3, 4)),
            share_substitutes=1,
        )


def test_traces_once():
    sc = Scenario(n_nodes=4, top_k=2)

    chex.clear_trace_counter()  # counters are keyed by the code location, shared across parameters

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(f, g, t, table, eta):
        return oracle(dataclasses.replace(sc, eta=eta), f, g, t, table)

    for seed in range(3):
        f, g, t, table, eta = random_instances(4, 2, 1, seed=seed)
        jax.block_until_ready(fn(f[0], g[0], t[0], table[0], eta[0]))
