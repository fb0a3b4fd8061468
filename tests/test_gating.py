"""Router logits -> Top-K and renormalised gates, the synthetic router, the real-logit path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sift_jax import gating
from sift_jax.errors import ConfigError
from sift_jax.scenario import Scenario

_logits = hnp.arrays(np.float32, (6, 7), elements=st.floats(-20, 20, width=32, allow_subnormal=False))


@settings(max_examples=40, deadline=None)
@given(logits=_logits, k=st.sampled_from([1, 2, 4, 7]), temperature=st.sampled_from([0.5, 1.0, 3.0]))
def test_topk_are_the_largest_logits_and_gates_renormalised(logits, k, temperature):
    g, topk = gating.from_logits(jnp.asarray(logits), k, temperature)
    g, topk = np.asarray(g), np.asarray(topk)
    assert g.shape == topk.shape == (6, k) and topk.dtype == np.int32
    ref_idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    # values equal the K largest in descending order (ties may order indices differently)
    np.testing.assert_array_equal(np.take_along_axis(logits, topk, -1), np.take_along_axis(logits, ref_idx, -1))
    assert all(len(set(row)) == k for row in topk.tolist())
    # every non-selected logit is <= the smallest selected one
    mask = np.zeros_like(logits, bool)
    np.put_along_axis(mask, topk, True, -1)
    assert np.all(
        np.where(mask, -np.inf, logits).max(-1, initial=-np.inf) <= np.take_along_axis(logits, topk, -1)[:, -1]
    )
    # softmax over the active set only, of logits / T (NumPy, float64)
    sel = np.take_along_axis(logits, topk, -1).astype(np.float64) / temperature
    ref_g = np.exp(sel - sel.max(-1, keepdims=True))
    ref_g /= ref_g.sum(-1, keepdims=True)
    np.testing.assert_allclose(g, ref_g, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(g.sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.diff(g, axis=-1) <= 1e-7) and np.all(g >= 0)


def test_from_logits_float64_and_errors(x64):
    g, _topk = gating.from_logits(jnp.array([[0.3, -1.0, 2.0]]), 2)
    assert g.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(g)[0], [1 / (1 + np.exp(-1.7)), 1 - 1 / (1 + np.exp(-1.7))], rtol=1e-14)
    with pytest.raises(ConfigError, match="top_k"):
        gating.from_logits(jnp.zeros(4), 5)
    with pytest.raises(ConfigError, match="top_k"):
        gating.from_logits(jnp.zeros(4), 0)
    with pytest.raises(ConfigError, match="logits"):
        gating.from_logits(jnp.zeros(4, jnp.int32), 1)


SC = Scenario(n_nodes=8, top_k=2, n_tokens=5, n_layers=3, popularity_skew=0.7, gate_temperature=1.5, table_seed=3)


def test_draw_shapes_sums_and_real_logit_path_agree(tmp_path):
    key = jax.random.key(11)
    g, topk = gating.draw(key, SC)
    assert g.shape == topk.shape == (3, 5, 2)
    np.testing.assert_allclose(np.asarray(g).sum(-1), 1.0, rtol=1e-6)
    # the same logits saved to a user's .npy file and passed through from_logits give the same result
    logits = np.asarray(gating.draw_logits(key, SC))
    path = tmp_path / "router_logits.npy"
    np.save(path, logits)
    loaded = gating.load_logits(path, n_nodes=8, n_layers=3)
    g2, topk2 = gating.from_logits(loaded, SC.top_k, SC.gate_temperature)
    np.testing.assert_array_equal(np.asarray(topk2), np.asarray(topk))
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g), rtol=1e-6)
    # Top-K against NumPy's argsort of the same logits
    np.testing.assert_array_equal(np.asarray(topk), np.argsort(-logits, axis=-1)[..., :2])


def test_load_logits_errors(tmp_path):
    with pytest.raises(ConfigError, match="logits_path"):
        gating.load_logits(tmp_path / "missing.npy")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[0.0, np.nan]]))
    with pytest.raises(ConfigError, match="finite"):
        gating.load_logits(bad)
    np.save(bad, np.zeros((2, 4)))
    with pytest.raises(ConfigError, match="N = 8"):
        gating.load_logits(bad, n_nodes=8)
    with pytest.raises(ConfigError, match="L = 3"):
        gating.load_logits(bad, n_layers=3)


def test_popularity_is_a_model_property():
    pop = np.asarray(gating.popularity(SC))
    assert pop.shape == (3, 8)
    np.testing.assert_array_equal(pop, np.asarray(gating.popularity(SC)))
    # linear in popularity_skew, fixed by table_seed, different per layer
    np.testing.assert_allclose(np.asarray(gating.popularity(SC.replace(popularity_skew=1.4))), 2 * pop, rtol=1e-6)
    assert not np.allclose(np.asarray(gating.popularity(SC.replace(table_seed=4))), pop)
    assert not np.allclose(pop[0], pop[1])
    # the same offsets in every sample: the mean of many samples' logits converges to them
    keys = jax.random.split(jax.random.key(0), 400)
    logits = jax.vmap(lambda k: gating.draw_logits(k, SC))(keys)  # [400, L, M, N], noise N(0, 1)
    mean = np.asarray(logits).mean(axis=(0, 2))
    np.testing.assert_allclose(mean, pop, atol=5.0 / np.sqrt(400 * 5))  # 5 standard errors
    # vmapped over keys, sample i equals the unbatched draw with key i
    np.testing.assert_allclose(np.asarray(logits[3]), np.asarray(gating.draw_logits(keys[3], SC)), rtol=1e-6)


def test_draw_vmapped_over_traced_scenarios():
    """One compiled call over scenarios that differ in dynamic leaves (temperature, skew)."""
    key = jax.random.key(11)
    g, topk = gating.draw(key, SC)
    temps = jnp.array([0.5, 1.0, 1.5])
    skews = jnp.array([0.0, 0.7, 0.7])
    batch = jax.vmap(lambda t, s: gating.draw(key, dataclasses.replace(SC, gate_temperature=t, popularity_skew=s)))
    g_b, topk_b = batch(temps, skews)
    assert g_b.shape == (3, 3, 5, 2)
    np.testing.assert_allclose(np.asarray(g_b[2]), np.asarray(g), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(topk_b[2]), np.asarray(topk))
    # lower temperature -> sharper gates, same Top-K
    np.testing.assert_array_equal(np.asarray(topk_b[1]), np.asarray(topk_b[2]))
    assert np.all(np.asarray(g_b[1])[..., 0] >= np.asarray(g_b[2])[..., 0] - 1e-7)
    # no popularity skew: the Top-K differ from the skewed profile's somewhere
    assert not np.array_equal(np.asarray(topk_b[0]), np.asarray(topk_b[1]))
