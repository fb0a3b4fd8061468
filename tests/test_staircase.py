"""policies/staircase.py: the best candidate within eta, against a NumPy brute force, for every way the
sweep engine batches it (one eta; an eta axis over shared candidates, the staircase; eta and candidates
batched together; the points x samples x layers nesting of a sweep)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sift_jax.policies import staircase
from sift_jax.policies.staircase import best_within


def instances(rng, s, c):
    """Candidates with exact ties (values on a 1/4 grid) and some impossible ones (energy or dev inf)."""
    energy = np.round(rng.uniform(0, 3, (s, c)) * 4) / 4
    energy[rng.uniform(size=(s, c)) < 0.2] = np.inf
    dev = np.round(rng.uniform(0, 2, (s, c)) * 4) / 4
    dev[rng.uniform(size=(s, c)) < 0.1] = np.inf
    code = rng.integers(1, 1000, (s, c)).astype(np.int32)
    return energy.astype(np.float32), dev.astype(np.float32), code


def brute_force(eta, energy, dev, code):
    """NumPy: lexicographic minimum of (energy, dev, index) over the candidates with dev <= eta (an
    infinite dev never qualifies, not even for eta = inf)."""
    out = []
    for e_row, d_row, c_row in zip(energy, dev, code):
        ok = [j for j in range(len(e_row)) if d_row[j] <= eta and np.isfinite(e_row[j] + d_row[j])]
        if not ok:
            out.append((np.inf, np.inf, 0))
            continue
        j = min(ok, key=lambda j: (e_row[j], d_row[j], j))
        out.append((e_row[j], d_row[j], c_row[j]))
    return np.array(out, dtype=object)


ETAS = np.array([0.0, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, np.inf], np.float32)


def check(got, etas, inst):
    """got: (energy, dev, code) arrays [P, S] for etas [P]."""
    for p, eta in enumerate(etas):
        ref = brute_force(eta, *inst)
        np.testing.assert_array_equal(np.asarray(got[0])[p], ref[:, 0].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(got[1])[p], ref[:, 1].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(got[2])[p], ref[:, 2].astype(np.int32))


@pytest.mark.parametrize("points_outer", [True, False])
def test_eta_axis_over_shared_candidates(points_outer):
    """The sweep's nesting (points outer, samples inner) takes the staircase; the other order too."""
    inst = instances(np.random.default_rng(0), 300, 36)
    assert len(ETAS) >= staircase.STAIRCASE_MIN_POINTS
    over_samples = jax.vmap(best_within, in_axes=(None, 0, 0, 0))
    if points_outer:
        got = jax.jit(jax.vmap(over_samples, in_axes=(0, None, None, None)))(ETAS, *inst)
    else:
        over_points = jax.vmap(best_within, in_axes=(0, None, None, None))
        got = jax.tree.map(lambda x: x.T, jax.jit(jax.vmap(over_points, in_axes=(None, 0, 0, 0)))(ETAS, *inst))
    check(got, ETAS, inst)


def test_three_levels_like_a_sweep_over_layers():
    """points x samples x layers (the candidates differ per sample and layer, eta per point)."""
    energy, dev, code = instances(np.random.default_rng(1), 60 * 4, 20)
    inst = [x.reshape(60, 4, 20) for x in (energy, dev, code)]
    per_layer = jax.vmap(best_within, in_axes=(None, 0, 0, 0))
    per_sample = jax.vmap(per_layer, in_axes=(None, 0, 0, 0))
    got = jax.jit(jax.vmap(per_sample, in_axes=(0, None, None, None)))(ETAS, *inst)
    check([x.reshape(len(ETAS), -1) for x in got], ETAS, (energy, dev, code))


def test_one_eta_few_etas_and_everything_batched():
    """The masked search: one eta at a time, fewer etas than the staircase threshold, and eta batched
    together with the candidates."""
    inst = instances(np.random.default_rng(2), 200, 12)
    one = jax.jit(jax.vmap(best_within, in_axes=(None, 0, 0, 0)))
    check([np.stack(x) for x in zip(*[one(jnp.float32(eta), *inst) for eta in ETAS])], ETAS, inst)
    few = ETAS[: staircase.STAIRCASE_MIN_POINTS - 1]
    got = jax.jit(jax.vmap(jax.vmap(best_within, in_axes=(None, 0, 0, 0)), in_axes=(0, None, None, None)))(few, *inst)
    check(got, few, inst)
    eta_each = np.resize(ETAS, 200)
    both = jax.jit(jax.vmap(best_within))(eta_each, *inst)
    for s in range(0, 200, 37):
        ref = brute_force(eta_each[s], *(x[s : s + 1] for x in inst))[0]
        assert (float(both[0][s]), float(both[1][s]), int(both[2][s])) == (float(ref[0]), float(ref[1]), int(ref[2]))


def test_nothing_within_eta():
    energy, dev, code = jnp.array([1.0, 2.0]), jnp.array([0.5, 0.6]), jnp.array([7, 8], jnp.int32)
    assert [float(x) for x in best_within(jnp.float32(0.1), energy, dev, code)] == [np.inf, np.inf, 0.0]
    batch = jax.vmap(best_within, in_axes=(0, None, None, None))(jnp.zeros(6), energy, dev, code)
    assert np.all(np.isinf(batch[0])) and np.all(batch[2] == 0)


def test_infinite_eta_takes_the_cheapest_finite_candidate():
    """eta = inf (a valid Scenario value): the cheapest candidate with a finite deviation, on both paths
    (the staircase's last step is open-ended)."""
    energy, dev = jnp.array([2.0, 1.0, 0.5, 1.0]), jnp.array([0.1, 5.0, jnp.inf, 3.0])
    code = jnp.array([7, 8, 9, 10], jnp.int32)
    assert int(best_within(jnp.float32(jnp.inf), energy, dev, code)[2]) == 10
    etas = jnp.array([0.0, 0.1, 4.0, jnp.inf, jnp.inf], jnp.float32)
    assert len(etas) >= staircase.STAIRCASE_MIN_POINTS
    got = jax.vmap(best_within, in_axes=(0, None, None, None))(etas, energy, dev, code)
    assert got[2].tolist() == [0, 7, 10, 10, 10]
    np.testing.assert_array_equal(got[1], np.float32([np.inf, 0.1, 3.0, 3.0, 3.0]))
