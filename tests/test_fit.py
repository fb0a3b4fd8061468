"""sift_jax.fit: anchors from the targets file, the closed form against direct simulation, a tiny fit."""

import dataclasses
import math

import numpy as np
import pytest

import sift_jax as sj
from sift_jax import fit
from sift_jax.errors import ConfigError
from sift_jax.fit import Anchor


def test_anchors_read_the_targets_file():
    t = sj.targets.load()
    (level, ratio) = fit.anchors(fit.PROBLEMS["switch-base-8"], t)
    lo = max(t[p].y_range[0] for p in ("fig3b", "fig5a", "fig5b"))
    hi = min(t[p].y_range[1] for p in ("fig3b", "fig5a", "fig5b"))
    assert level.kind == "level" and level.y == pytest.approx(math.sqrt(lo * hi))
    assert (ratio.kind, ratio.x, ratio.x2) == ("ratio", t["fig5a"].x_range[0], t["fig5a"].x_range[1])
    assert ratio.y == pytest.approx(t["fig5a"].y_range[1] / t["fig5a"].y_range[0])
    # a panel whose plotted range starts at 0 gives no ratio anchor
    only_6a = dataclasses.replace(fit.PROBLEMS["mixtral-8x7b"], panels=("fig6a",))
    assert [a.kind for a in fit.anchors(only_6a, t)] == ["level"]


def test_bad_problems_raise_config_error():
    with pytest.raises(ConfigError, match="model"):
        fit.fit("gpt-5")
    with pytest.raises(ConfigError, match="panels"):
        fit.anchors(dataclasses.replace(fit.PROBLEMS["switch-base-8"], panels=("fig99",)))
    disjoint = {
        "a": dataclasses.replace(sj.targets.load()["fig3b"], y_range=(0.1, 0.2)),
        "b": dataclasses.replace(sj.targets.load()["fig5a"], y_range=(0.3, 0.4)),
    }
    with pytest.raises(ConfigError, match="level_panels"):
        fit.anchors(fit.FitProblem("switch-base-8-4090", ("a",), ("a", "b"), {}), disjoint)


def _direct(model_preset, values, anchor, samples, seed):
    """Top-K's mean energy per token at an anchor point by plain `simulate` (all layers), J."""
    sc = sj.presets.get(model_preset).replace(**values)
    if anchor is not None:
        sc = sc.replace(**{anchor[0]: anchor[1]})
    return sj.simulate(sc, policy="topk", samples=samples, seed=seed).metrics["energy_per_token_j"].mean


def test_closed_form_in_gain_and_load_power_matches_direct_simulation():
    """E(G, P) = U / G + L0 + (L1 - L0) P / P_ref is exact for practical Top-K (its selection ignores both)."""
    problem = dataclasses.replace(fit.PROBLEMS["mixtral-8x7b"], fixed={"n_layers": 2})
    anchor_list = [
        Anchor("level", "x", "default", float("nan"), 1.0),
        Anchor("ratio", "y", "bandwidth_hz", 1.8e6, 1.0, 2.05e6),
    ]
    up, l1, l0 = fit.scan(problem, {"n_tokens": 8}, anchor_list, samples=24, seed=3)
    gain, power = 10 ** (-4.2), 17.0
    closed = up / gain + l0 + (l1 - l0) * power / 100.0
    values = {"n_tokens": 8, "n_layers": 2, "gain_up": gain, "user_load_power_w": power}
    for i, pt in enumerate([None, ("bandwidth_hz", 1.8e6), ("bandwidth_hz", 2.05e6)]):
        np.testing.assert_allclose(_direct("mixtral-8x7b-4090", values, pt, 24, 3), closed[i], rtol=1e-5)


def test_tiny_fit_picks_the_best_combination_and_reports_consistent_residuals():
    problem = dataclasses.replace(fit.PROBLEMS["switch-base-8"], grid={"n_tokens": (32, 96)}, fixed={"n_layers": 1})
    res = fit.fit("switch-base-8", samples=16, problem=problem)
    losses = [row[3] for row in res.table]
    assert res.loss == min(losses) and res.values["n_tokens"] == res.table[int(np.argmin(losses))][0]["n_tokens"]
    assert 30.0 <= res.gain_db <= 60.0 and res.values["gain_up"] == pytest.approx(10 ** (-res.gain_db / 10))
    # the residuals' model values agree with plain simulations at the fitted constants
    level, ratio = res.residuals
    values = {"n_tokens": res.values["n_tokens"], "n_layers": 1, "gain_up": res.values["gain_up"]}
    e_default = _direct("switch-base-8-4090", values, None, 16, 0)
    e1, e2 = (_direct("switch-base-8-4090", values, ("bandwidth_hz", x), 16, 0) for x in (ratio[0].x, ratio[0].x2))
    np.testing.assert_allclose(level[1], e_default, rtol=1e-5)
    np.testing.assert_allclose(ratio[1], e1 / e2, rtol=1e-5)
    assert res.loss == pytest.approx(level[2] ** 2 + ratio[2] ** 2)
    # the grid minimum: 0.1 dB either side is no better (closed form in the gain)
    share = res.uplink_share
    assert 0.5 <= share <= 1.0


# ------------------------------------------------------------------------------------------------ table scale


def test_interpolate_stretch_is_exact_for_a_power_law_and_clamps_outside():
    s = np.array([0.1, 0.2, 0.4, 0.8])
    r = s**-0.5 / 10  # log-log linear: interpolation is exact between grid points
    got, edge = fit.interpolate_stretch(s, r, 0.3**-0.5 / 10)
    assert got == pytest.approx(0.3, rel=1e-12) and not edge
    assert fit.interpolate_stretch(s, r, 10.0) == (0.1, True)  # above every ratio: the smallest stretch
    assert fit.interpolate_stretch(s, r, 1e-3) == (0.8, True)


def test_siftmoe_depends_on_the_table_scale_only_through_eta_over_scale():
    """The identity the table fit rests on: scale c and budget c eta give the same decisions as 1 and eta,
    checked by two independent simulations (common random numbers)."""
    sc = sj.presets.get("mixtral-8x7b").replace(n_layers=2, n_tokens=4)
    a = sj.simulate(sc.replace(eta=0.9), "siftmoe", samples=24, seed=4).metrics
    b = sj.simulate(
        sc.replace(eta=0.9 * 3.0, output_norm=float(sc.output_norm) * 3.0), "siftmoe", samples=24, seed=4
    ).metrics
    for metric in ("energy_per_token_j", "replace_rate", "skip_rate", "infeasible_rate"):
        assert b[metric].mean == pytest.approx(a[metric].mean, rel=1e-6, abs=1e-12), metric
    assert a["replace_rate"].mean + a["skip_rate"].mean > 0  # the budget is in use, so the check can fail
    assert b["deviation_bound"].mean == pytest.approx(3.0 * a["deviation_bound"].mean, rel=1e-5)


def test_tiny_table_fit_brackets_the_target_and_checks_directly():
    small = sj.presets.get("switch-base-8").replace(n_layers=2, n_tokens=16)
    t = fit.fit_table("switch-base-8", samples=16, scenario=small, stretches=(0.25, 0.5, 1.0), refine=1)
    assert t.target == pytest.approx(0.02 / 0.04) and t.norm_ref == 250.0
    assert len(t.stretches) == 4 and list(t.stretches) == sorted(t.stretches)  # the refinement point joined the grid
    s_fit = t.norm_ref / t.output_norm
    if not t.at_bound:  # the direct run at the fitted scale lies between its bracketing grid ratios
        i = int(np.searchsorted(t.stretches, s_fit))
        lo_r, hi_r = t.ratios[min(i, len(t.ratios) - 1)], t.ratios[max(i - 1, 0)]
        assert lo_r - 1e-6 <= t.checked <= hi_r + 1e-6
    direct = sj.simulate(small.replace(eta=0.0), "siftmoe", samples=16, seed=0).metrics["energy_per_token_j"].mean
    assert t.energy_at_zero == pytest.approx(direct, rel=1e-6)
    with pytest.raises(ConfigError, match="model"):
        fit.fit_table("gpt-oss-20b")
    with pytest.raises(ConfigError, match="stretches"):
        fit.fit_table("switch-base-8", stretches=(1.0, 0.5))
