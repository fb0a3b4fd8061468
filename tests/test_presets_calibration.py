"""The presets' regimes, checked against the paper's plotted ranges (sweeps/paper_targets.toml).

Paper regime (`switch-base-8`, `mixtral-8x7b`, fitted by `sift_jax.fit`): practical Top-K at the paper's
default (B_n, T) lies inside the intersection of the plotted y-ranges of the slow-fading panels that plot
that default (its 95% CI meets that band), and the uplink is at least the fit's `min_uplink_share` (one half)
of its energy (the paper's curves fall "owing to lower uplink transmission energy"). Data-sheet regime
(`*-4090`): the radio is negligible.

Every number held against a target is first re-derived in NumPy on the same tasks (the channel and gate draws
of simulate's sample keys, then float64 capacities and energies from `sift_jax.testing.numpy_reference`), so
the checks do not rest on what the package reports.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sift_jax as sj
from sift_jax import fit, montecarlo
from sift_jax.testing import numpy_reference as ref


def numpy_topk(sc, samples: int, seed: int):
    """Practical Top-K per task in NumPy (float64): (local J/token [S], uplink J/token [S], any expert lost [S]).

    Each node serves the tokens whose Top-K holds its expert, up to its capacity (the largest load whose
    energy is finite, by scanning); the energy is E_UE(served) for the user (eq. 3) plus E_n(served) for
    every helper (eq. 10), summed over layers, per token."""
    keys = montecarlo.sample_keys(seed, jnp.arange(samples))

    def draws(key):  # TaskMetrics.__call__ splits each sample key into (channel, gates)
        k_channel, k_gate = jax.random.split(key)
        ch = sj.channel.draw(k_channel, sc)
        _, topk = sj.gating.draw(k_gate, sc)
        return ch.distance_m, ch.gain, topk

    d, h, topk = (np.asarray(x) for x in jax.jit(jax.vmap(draws))(keys))
    d, h = d.astype(np.float64), h.astype(np.float64)
    s, n_layers, m, _ = topk.shape
    p = ref.params_of(sc)
    want = (topk[..., None] == np.arange(sc.n_nodes)).any(3).sum(2)  # [S, L, N] tokens per node
    cap = np.stack([[ref.capacities_brute(p, d[i], h[i, l], m) for l in range(n_layers)] for i in range(s)])
    served = np.minimum(want, cap).astype(np.float64)
    local = ref.user_energy(p, served[..., 0]).sum(1) / m
    uplink = ref.helper_energy(p, d[:, None, :], h, served[..., 1:]).sum((1, 2)) / m
    return local, uplink, (want > cap).any((1, 2))


@pytest.mark.parametrize("model", list(fit.PROBLEMS))
def test_fitted_topk_lands_in_the_paper_band_with_the_uplink_dominating(model):
    targets = sj.targets.load()
    panels = [targets[p] for p in fit.PROBLEMS[model].level_panels]
    lo = max(t.y_range[0] for t in panels if t.y_range[0] > 0)
    hi = min(t.y_range[1] for t in panels)
    sc = sj.presets.get(model)
    for t in panels:  # the preset sits at every panel's paper default
        np.testing.assert_allclose(float(np.asarray(getattr(sc, t.field))), t.default_x, rtol=1e-9)
    samples, seed = 256, 11
    m = sj.simulate(sc, policy="topk", samples=samples, seed=seed).metrics
    local, uplink, lost = numpy_topk(sc, samples, seed)
    total = local + uplink
    assert np.all(np.isfinite(total))
    # the package's figures are the NumPy ones (float32 against float64)
    np.testing.assert_allclose(m["energy_per_token_j"].mean, total.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["uplink_energy_j"].mean, uplink.mean(), rtol=1e-5)
    assert m["infeasible_rate"].mean == lost.mean()
    # the paper's band: the 95% CI of the mean energy meets [lo, hi] (no slack factor)
    half = 1.96 * total.std(ddof=1) / np.sqrt(samples)
    assert total.mean() - half <= hi and total.mean() + half >= lo, (total.mean(), half, lo, hi)
    assert uplink.mean() >= fit.PROBLEMS[model].min_uplink_share * total.mean()


def test_datasheet_regime_makes_the_radio_negligible():
    """switch-base-8-4090: the uplink is < 0.1% of Top-1's energy and bandwidth moves the total < 1% (NumPy
    on the same tasks, and the package agrees)."""
    sc = sj.presets.get("switch-base-8-4090").replace(n_layers=2)
    runs = {}
    for b in (0.9e6, 1.2e6):
        m = sj.simulate(sc.replace(bandwidth_hz=b), policy="topk", samples=64, seed=0).metrics
        local, uplink, _ = numpy_topk(sc.replace(bandwidth_hz=b), 64, 0)
        np.testing.assert_allclose(m["energy_per_token_j"].mean, (local + uplink).mean(), rtol=1e-5)
        np.testing.assert_allclose(m["uplink_energy_j"].mean, uplink.mean(), rtol=1e-5)
        runs[b] = (local + uplink).mean(), uplink.mean()
    (total_lo, up_lo), (total_hi, _) = runs[0.9e6], runs[1.2e6]
    assert up_lo < 1e-3 * total_lo
    assert abs(total_lo / total_hi - 1) < 0.01
