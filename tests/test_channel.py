"""Channel draws and rates against closed forms and an independent NumPy formulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

import sift_jax as sj
from sift_jax.scenario import Scenario
from sift_jax.testing import numpy_reference as ref

N_DRAW = 400_000


def _gains(fading, **fields):
    sc = Scenario(n_nodes=2, n_layers=1, fading=fading, **fields)
    return np.asarray(sj.channel.draw_fading(jax.random.key(1), sc, (N_DRAW,)), np.float64)


def _within(sample, truth, z=4.5):
    """Mean of `sample` within z standard errors of `truth` (fixed seed; z leaves no flakiness)."""
    se = sample.std(ddof=1) / np.sqrt(sample.size)
    return abs(sample.mean() - truth) <= z * se


@pytest.mark.parametrize(
    "fading,fields",
    [
        ("gamma", {"fading_shape": 2.0}),
        ("gamma", {"fading_shape": 3.0}),
        ("nakagami", {"fading_shape": 1.7}),
        ("rayleigh", {}),
        ("rician", {"rician_k": 4.0}),
        ("lognormal", {"shadowing_db": 4.0}),
    ],
)
def test_unit_mean(fading, fields):
    h = _gains(fading, **fields)
    assert np.all(h > 0) and _within(h, 1.0)


@pytest.mark.parametrize("fading,m", [("gamma", 3.0), ("gamma", 4.0), ("nakagami", 2.5)])
def test_inverse_gain_mean_matches_m_over_m_minus_1(fading, m):
    h = _gains(fading, fading_shape=m)
    assert _within(1.0 / h, m / (m - 1.0))
    assert Scenario(fading=fading, fading_shape=m).inv_gain_mean == pytest.approx(m / (m - 1.0))


def test_gamma_shape_2_distribution_ks():
    h = _gains("gamma", fading_shape=2.0)[:50_000]
    assert sps.kstest(h, sps.gamma(a=2.0, scale=0.5).cdf).pvalue > 1e-3


def test_rayleigh_outage_closed_form():
    h = _gains("rayleigh")
    for x in (0.01, 0.1, 0.5, 1.0):
        p = 1.0 - np.exp(-x)
        emp = np.mean(h < x)
        assert abs(emp - p) <= 4.5 * np.sqrt(p * (1 - p) / h.size)


def test_distance_cdf_annulus():
    sc = Scenario(n_nodes=2, min_distance_m=20.0, max_distance_m=150.0)
    keys = jax.random.split(jax.random.key(3), 100_000)
    d = np.asarray(jax.vmap(lambda k: sj.channel.draw_distances(k, sc))(keys)).ravel()
    assert d.min() >= 20.0 and d.max() <= 150.0
    for r in (30.0, 60.0, 100.0, 140.0):
        p = (r**2 - 20.0**2) / (150.0**2 - 20.0**2)
        assert abs(np.mean(d <= r) - p) <= 4.5 * np.sqrt(p * (1 - p) / d.size)


def test_shapes_slow_and_fast():
    sc = Scenario(n_nodes=5, n_layers=3, n_slots=7)
    ch = sj.channel.draw(jax.random.key(0), sc)
    assert ch.distance_m.shape == (4,) and ch.gain.shape == (3, 4)
    assert sj.channel.draw(jax.random.key(0), sc, fast=True).gain.shape == (3, 4, 7)


def test_rates_match_numpy_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        sc = Scenario(
            n_nodes=6,
            bandwidth_hz=rng.uniform(0.2e6, 5e6, 5),
            max_tx_power_w=rng.uniform(0.01, 1.0),
            pathloss_exponent=rng.uniform(2, 4.5),
        )
        d = rng.uniform(10, 150, 5)
        h = rng.gamma(2.0, 0.5, 5)
        r_up, r_dn = sj.channel.rates(sc, jnp.asarray(d, jnp.float32), jnp.asarray(h, jnp.float32))
        e_up, e_dn = ref.rates(ref.params_of(sc), d, h, sc.max_tx_power_w)
        np.testing.assert_allclose(np.asarray(r_up), e_up, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(r_dn), e_dn, rtol=1e-5)
