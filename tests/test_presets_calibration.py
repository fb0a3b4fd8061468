"""The presets' regimes, checked against the paper's plotted ranges (sweeps/paper_targets.toml).

Paper regime (`switch-base-8`, `mixtral-8x7b`, fitted by `sift_jax.fit`): practical Top-K at the paper's
default (B_n, T) lies inside the intersection of the plotted y-ranges of the slow-fading panels that plot
that default, within a factor 1.5, and the uplink is at least half of its energy (the paper's curves fall
"owing to lower uplink transmission energy"). Data-sheet regime (`*-4090`): the radio is negligible.
"""

import numpy as np
import pytest

import sift_jax as sj
from sift_jax import fit


@pytest.mark.parametrize("model", list(fit.PROBLEMS))
def test_fitted_topk_lands_in_the_paper_band_with_the_uplink_dominating(model):
    targets = sj.targets.load()
    panels = [targets[p] for p in fit.PROBLEMS[model].level_panels]
    lo = max(t.y_range[0] for t in panels if t.y_range[0] > 0)
    hi = min(t.y_range[1] for t in panels)
    sc = sj.presets.get(model)
    for t in panels:  # the preset sits at every panel's paper default
        np.testing.assert_allclose(float(np.asarray(getattr(sc, t.field))), t.default_x, rtol=1e-9)
    m = sj.simulate(sc, policy="topk", samples=256, seed=11).metrics
    energy = m["energy_per_token_j"].mean
    assert lo / 1.5 <= energy <= hi * 1.5, (energy, lo, hi)
    assert m["uplink_energy_j"].mean >= 0.5 * energy


def test_datasheet_regime_makes_the_radio_negligible():
    """switch-base-8-4090: the uplink is < 0.1% of Top-1's energy and bandwidth moves the total < 1%."""
    sc = sj.presets.get("switch-base-8-4090").replace(n_layers=2)
    lo_b, hi_b = (sj.simulate(sc.replace(bandwidth_hz=b), policy="topk", samples=64, seed=0).metrics
                  for b in (0.9e6, 1.2e6))
    assert lo_b["uplink_energy_j"].mean < 1e-3 * lo_b["energy_per_token_j"].mean
    assert abs(lo_b["energy_per_token_j"].mean / hi_b["energy_per_token_j"].mean - 1) < 0.01
