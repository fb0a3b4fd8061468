"""Output-space similarity, calibration tables and the synthetic latent model, against NumPy/closed forms."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sift_jax import similarity
from sift_jax.errors import ConfigError
from sift_jax.scenario import Scenario

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _direct_f(out):
    out = np.asarray(out, np.float64)
    return np.linalg.norm(out[:, :, None, :] - out[:, None, :, :], axis=-1)


def _brute_table(out):
    out = np.asarray(out, np.float64)
    s, n, _ = out.shape
    table = np.zeros((n, n + 1))
    for i in range(n):
        table[i, n] = np.mean([np.linalg.norm(out[k, i]) for k in range(s)])
        for j in range(n):
            table[i, j] = np.mean([np.linalg.norm(out[k, i] - out[k, j]) for k in range(s)])
    return table


# fixed shapes (S=3, N=4, d=5) so every example reuses one compilation. Magnitudes are 0 or >= 1e-100: XLA:CPU
# flushes subnormals to zero, so a vector of ~1e-158 entries (squares ~1e-316) has norm 0 in JAX and > 0 in NumPy.
_outputs = hnp.arrays(
    np.float64,
    (3, 4, 5),
    elements=st.floats(-10, 10, allow_subnormal=False).filter(lambda x: x == 0.0 or abs(x) >= 1e-100),
)


@SETTINGS
@given(out=_outputs)
def test_F_from_rho_cos_equals_output_difference(x64, out):
    """Paper §2.3: F = ||FFN_i|| sqrt(1 + rho^2 - 2 rho cos) equals ||FFN_i - FFN_j|| (rel 1e-5)."""
    rho, cos, F = (np.asarray(a) for a in similarity.pairwise(jnp.asarray(out)))
    direct = _direct_f(out)
    norms = np.linalg.norm(out, axis=-1)
    scale = norms[:, :, None] + norms[:, None, :]
    # pairwise's own F
    np.testing.assert_allclose(F, direct, rtol=1e-5, atol=1e-9 * (1 + scale.max()))
    assert np.all(np.diagonal(F, axis1=1, axis2=2) == 0)
    # the paper's formula evaluated independently from the returned rho and cos (NumPy), where defined;
    # the textbook form cancels when two outputs nearly coincide, hence the absolute slack ~ sqrt(eps) |FFN|
    ok = (norms[:, :, None] > 0) & (norms[:, None, :] > 0)
    with np.errstate(invalid="ignore"):
        paper = norms[:, :, None] * np.sqrt(np.maximum(1 + rho**2 - 2 * rho * cos, 0.0))
    np.testing.assert_allclose(paper[ok], direct[ok], rtol=1e-5, atol=1e-7 * (1 + scale.max()))
    # rho and cos against their definitions
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_ref = norms[:, None, :] / norms[:, :, None]
        cos_ref = np.einsum("sid,sjd->sij", out, out) / (norms[:, :, None] * norms[:, None, :])
    np.testing.assert_allclose(rho[ok], rho_ref[ok], rtol=1e-9)
    np.testing.assert_allclose(cos[ok], cos_ref[ok], rtol=1e-6, atol=1e-9)
    assert not np.isnan(rho).any() and not np.isnan(cos).any() and not np.isnan(F).any()


def test_pairwise_float32_and_zero_outputs():
    rng = np.random.default_rng(0)
    out = rng.normal(size=(6, 5, 7)).astype(np.float32)
    out[2, 1] = 0.0  # a zero output: F is the other norm, no NaN
    out[3, 4] = out[3, 2]  # identical outputs: F = 0
    rho, cos, F = similarity.pairwise(out)
    assert F.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(F), _direct_f(out), rtol=1e-5, atol=1e-6)
    assert float(F[3, 4, 2]) == pytest.approx(0.0, abs=1e-6)
    assert float(rho[2, 1, 0]) == math.inf and float(rho[2, 0, 1]) == 0.0
    assert not np.isnan(np.asarray(cos)).any()


def test_mismatch_table_matches_brute_force():
    rng = np.random.default_rng(1)
    out = rng.normal(size=(13, 4, 6)) * rng.lognormal(size=(1, 4, 1))
    table = np.asarray(similarity.mismatch_table(out.astype(np.float32)))
    np.testing.assert_allclose(table, _brute_table(out), rtol=2e-6, atol=1e-6)
    assert np.all(np.diag(table[:, :4]) == 0.0)


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
def test_chunked_table_equals_unchunked(chunk):
    rng = np.random.default_rng(2)
    out = jnp.asarray(rng.normal(size=(13, 5, 3)), jnp.float32)
    whole = similarity.mismatch_table(out, chunk_size=13)
    np.testing.assert_allclose(
        np.asarray(similarity.mismatch_table(out, chunk_size=chunk)), np.asarray(whole), rtol=1e-6, atol=1e-7
    )


def test_chunked_table_float64_exact(x64):
    rng = np.random.default_rng(3)
    out = jnp.asarray(rng.normal(size=(1000, 3, 4)))
    a, b = similarity.mismatch_table(out, chunk_size=7), similarity.mismatch_table(out)
    assert a.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(a), _brute_table(np.asarray(out)), rtol=1e-12)


def test_mismatch_tables_stacks_layers():
    rng = np.random.default_rng(4)
    out = jnp.asarray(rng.normal(size=(3, 9, 4, 2)), jnp.float32)
    stacked = similarity.mismatch_tables(out, chunk_size=4)
    assert stacked.shape == (3, 4, 5)
    for layer in range(3):
        np.testing.assert_allclose(
            np.asarray(stacked[layer]), np.asarray(similarity.mismatch_table(out[layer])), rtol=1e-6, atol=1e-7
        )


def test_bad_inputs_raise_config_error():
    with pytest.raises(ConfigError, match="outputs"):
        similarity.mismatch_table(jnp.ones((4, 3)))
    with pytest.raises(ConfigError, match="chunk_size"):
        similarity.mismatch_table(jnp.ones((4, 3, 2)), chunk_size=0)
    with pytest.raises(ConfigError, match="outputs"):
        similarity.mismatch_tables(jnp.ones((4, 3, 2)))
    with pytest.raises(ConfigError, match="router_weights"):
        similarity.router_cosine(jnp.ones(3))


def test_router_cosine_matches_numpy():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(7, 4))
    w[:, 2] = 0.0
    got = np.asarray(similarity.router_cosine(w.astype(np.float32)))
    n = np.linalg.norm(w, axis=0)
    ref = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            ref[i, j] = 1.0 if i == j else (w[:, i] @ w[:, j] / (n[i] * n[j]) if n[i] * n[j] > 0 else 0.0)
    np.testing.assert_allclose(got, ref, atol=1e-6)


# ---------------------------------------------------------------- synthetic latent model

SC = Scenario(
    n_nodes=6, n_layers=3, n_clusters=3, output_norm=2.0, output_norm_sigma=0.4, intra_cluster_cosine=0.8, table_seed=7
)
S, D = 512, 32


def _chi_mean(d):
    """E[chi_d] / sqrt(d): mean norm of an N(0, I_d / d) vector."""
    return math.sqrt(2.0 / d) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))


@pytest.fixture(scope="module")
def base_tables():
    return similarity.synthetic_tables(SC, n_samples=S, latent_dim=D)


def test_synthetic_table_matches_latent_closed_form(base_tables):
    """Each entry is sigma_ij E[chi_D]/sqrt(D) with sigma_ij^2 = Var of (o_i - o_j) (see the docstring)."""
    tables = np.asarray(base_tables)
    clusters = np.asarray(similarity.synthetic_clusters(SC))
    norms = np.asarray(similarity.synthetic_norms(SC))
    a = SC.intra_cluster_cosine
    c = _chi_mean(D)
    assert tables.shape == (3, 6, 7)
    for layer in range(3):
        assert sorted(np.bincount(clusters[layer], minlength=3)) == [2, 2, 2]
        n = norms[layer]
        same = clusters[layer][:, None] == clusters[layer][None, :]
        var = np.where(
            same,
            a * (n[:, None] - n[None, :]) ** 2 + (1 - a) * (n[:, None] ** 2 + n[None, :] ** 2),
            n[:, None] ** 2 + n[None, :] ** 2,
        )
        expected = np.concatenate([np.sqrt(var) * c, n[:, None] * c], axis=1)
        np.fill_diagonal(expected[:, :6], 0.0)
        # Monte Carlo: relative sd of one norm ~ 1/sqrt(2D) = 0.125, of the mean over S ~ 0.0055; 7 sd
        np.testing.assert_allclose(tables[layer], expected, rtol=0.04)
        assert np.all(np.diag(tables[layer][:, :6]) == 0.0)
    # per-expert norms: log-normal around output_norm
    assert np.all(norms > 0) and np.median(np.log(norms)) == pytest.approx(math.log(2.0), abs=0.6)


def test_synthetic_outputs_define_the_table(base_tables):
    out = similarity.synthetic_outputs(SC, 1, n_samples=S, latent_dim=D)
    assert out.shape == (S, 6, D)
    np.testing.assert_allclose(
        np.asarray(similarity.mismatch_table(out)), np.asarray(base_tables[1]), rtol=1e-6, atol=1e-6
    )
    mean_norm = np.linalg.norm(np.asarray(out), axis=-1).mean(0)
    np.testing.assert_allclose(mean_norm, np.asarray(similarity.synthetic_norms(SC))[1] * _chi_mean(D), rtol=0.03)


def test_synthetic_tables_deterministic_scaling_and_seed(base_tables):
    again = similarity.synthetic_tables(SC, n_samples=S, latent_dim=D)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(base_tables))
    scaled = similarity.synthetic_tables(SC.replace(output_norm=6.0), n_samples=S, latent_dim=D)
    np.testing.assert_allclose(np.asarray(scaled), 3.0 * np.asarray(base_tables), rtol=1e-5)
    other = similarity.synthetic_tables(SC.replace(table_seed=8), n_samples=S, latent_dim=D)
    assert not np.allclose(np.asarray(other), np.asarray(base_tables))


def test_synthetic_tables_jit_traced_scenario_and_vmap(base_tables):
    fn = jax.jit(lambda sc: similarity.synthetic_tables(sc, n_samples=S, latent_dim=D))
    np.testing.assert_allclose(np.asarray(fn(SC)), np.asarray(base_tables), rtol=1e-5, atol=1e-6)
    values = [0.0, 0.5, 0.95]
    batch = jax.vmap(lambda a: fn(_with(SC, intra_cluster_cosine=a)))(jnp.array(values))
    assert batch.shape == (3, 3, 6, 7)
    single = fn(SC.replace(intra_cluster_cosine=0.5))  # same compiled function, concrete value
    np.testing.assert_allclose(np.asarray(batch[1]), np.asarray(single), rtol=1e-5, atol=1e-6)
    # higher intra-cluster cosine -> smaller mismatch to the cluster partner; other clusters ~unchanged
    clusters = np.asarray(similarity.synthetic_clusters(SC))[0]
    i, j = np.flatnonzero(clusters == clusters[0])[:2]
    k = np.flatnonzero(clusters != clusters[0])[0]
    assert batch[2, 0, i, j] < batch[1, 0, i, j] < batch[0, 0, i, j]
    np.testing.assert_allclose(np.asarray(batch[:, 0, i, k]), float(batch[0, 0, i, k]), rtol=0.03)  # MC noise


def _with(sc, **fields):
    """Unvalidated replace, for traced values inside vmap."""
    return dataclasses.replace(sc, **fields)
