"""Claim verdicts computed from data (REPORT.md): each rule can hold, be not shown, fail or be n/a.

Expected verdicts are hand computations from the rules in `sift_jax.report`'s docstring, never the
module's own output.
"""

import dataclasses
import math

import numpy as np
import pytest
import xarray as xr

from sift_jax import report, targets

FAST = ["siftmoe:dynamic", "siftmoe:uniform", "siftmoe:dp", "topk:dynamic", "topk:uniform"]


def _ds(curves: dict, field="eta", xs=None, half=0.01, name="t"):
    """curve -> means; `half` is the CI half-width (a number, or curve -> number or per-point list)."""
    labels = list(curves)
    n = len(next(iter(curves.values())))
    xs = np.arange(n, dtype=float) if xs is None else np.asarray(xs, float)
    mean = np.array([curves[c] for c in labels], float)
    hw = np.array([np.broadcast_to(half[c] if isinstance(half, dict) else half, (n,)) for c in labels], float)
    data = {
        "energy_per_token_j_mean": (("curve", field), mean),
        "energy_per_token_j_ci_lo": (("curve", field), mean - hw),
        "energy_per_token_j_ci_hi": (("curve", field), mean + hw),
    }
    return xr.Dataset(data, coords={"curve": labels, field: xs}, attrs={"spec_name": name})


# ---------------------------------------------------------------- falls


def test_falls_flat_and_tiny_falls_are_not_shown():
    assert report.falls(_ds({"siftmoe": [2.0, 2.0, 2.0]}), "siftmoe").verdict == "not shown"
    # 1 -> 0.9999 (-0.01%) with CIs of +-1e-6: the CIs separate (1 - 1e-6 > 0.9999 + 1e-6) but the fall is tiny
    tiny = _ds({"siftmoe": [1.0, 0.99995, 0.9999]}, half=1e-6)
    assert 0.9999 + 1e-6 < 1.0 - 1e-6
    assert report.falls(tiny, "siftmoe", 0.30).verdict == "not shown"
    assert report.falls(tiny, "siftmoe", 0.0).verdict == "holds"  # same data, no magnitude asked
    # a 50% fall whose first and last CIs overlap (3 - 1.6 = 1.4 < 1.5 + 1.6): not shown, not failed
    assert report.falls(_ds({"siftmoe": [3.0, 1.5]}, half=1.6), "siftmoe").verdict == "not shown"


def test_falls_fails_on_any_significant_rise_not_only_neighbours():
    assert report.falls(_ds({"siftmoe": [1.0, 3.0]}), "siftmoe").verdict == "fails"
    # 1.00, 1.05, ..., 1.20 with +-0.05: no neighbouring pair separates (1.05 - 0.05 = 1.00 = 1.00 + 0.05 is
    # not >), but the last (lo 1.15) is significantly above the first (hi 1.05): a 20% rise
    stair = [1.00, 1.05, 1.10, 1.15, 1.20]
    lo, hi = np.array(stair) - 0.05, np.array(stair) + 0.05
    assert not any(lo[i + 1] > hi[i] + 1e-12 for i in range(4)) and lo[4] > hi[0]
    c = report.falls(_ds({"siftmoe": stair}, half=0.05), "siftmoe")
    assert c.verdict == "fails"
    # a fall overall with a significant rise in the middle fails too
    assert report.falls(_ds({"siftmoe": [3.0, 2.0, 2.5, 1.0]}), "siftmoe").verdict == "fails"


def test_falls_holds_on_a_clear_fall_in_any_storage_order():
    assert report.falls(_ds({"siftmoe": [3.0, 2.0, 1.0]}), "siftmoe").verdict == "holds"
    # the same curve stored with x descending is judged along ascending x
    rev = _ds({"siftmoe": [1.0, 2.0, 3.0]}, xs=[2.0, 1.0, 0.0])
    assert report.falls(rev, "siftmoe").verdict == "holds"
    assert report.falls(_ds({"siftmoe": [1.0, 2.0, 3.0]}), "siftmoe").verdict == "fails"
    # exactly at the magnitude: (1 - 0.7) / 1 = 0.3 >= 0.3
    assert report.falls(_ds({"siftmoe": [1.0, 0.7]}, half=0.01), "siftmoe", 0.30).verdict == "holds"
    assert report.falls(_ds({"siftmoe": [1.0, 0.71]}, half=0.01), "siftmoe", 0.30).verdict == "not shown"


def test_non_finite_points_are_na_and_named():
    ds = _ds({"siftmoe": [3.0, np.nan, 1.0], "topk": [4.0, 4.0, 4.0]}, xs=[0.0, 150.0, 300.0])
    c = report.falls(ds, "siftmoe")
    assert c.verdict == "n/a" and "150" in c.evidence
    # a NaN CI (finite mean) is n/a as well
    ds2 = _ds({"siftmoe": [3.0, 2.0, 1.0], "topk": [4.0, 4.0, 4.0]}, xs=[0.0, 150.0, 300.0])
    ds2["energy_per_token_j_ci_hi"][0, 2] = np.inf
    assert report.falls(ds2, "siftmoe").verdict == "n/a"
    assert report.below(ds, "siftmoe", "topk", 0.9).verdict == "n/a"
    bw = ds.rename({"eta": "bandwidth_hz"})
    assert report.gap_largest_at_tightest(bw, "siftmoe", "topk").verdict == "n/a"
    # an excluded x is not judged, so a NaN there does not matter
    nan0 = _ds({"siftmoe": [np.nan, 1.0], "topk": [np.nan, 2.0]})
    assert report.below(nan0, "siftmoe", "topk", 0.9, exclude_x=[0.0]).verdict == "holds"


def test_missing_curves_are_na():
    c = report.below(_ds({"siftmoe": [1.0, 0.5]}), "siftmoe", "topk")
    assert c.verdict == "n/a" and "topk" in c.evidence


# ---------------------------------------------------------------- below


def test_below_rules():
    def verdict(low, high, max_ratio=1.0, exclude=(), half=0.01):
        return report.below(
            _ds({"siftmoe": low, "topk": high}, half=half), "siftmoe", "topk", max_ratio, exclude
        ).verdict

    assert verdict([0.5, 0.2], [1.0, 1.0], 0.9) == "holds"  # ratios 0.5, 0.2 <= 0.9, CIs separate
    assert verdict([0.95, 0.5], [1.0, 1.0], 0.9) == "not shown"  # 0.95 > 0.9 although CIs separate
    assert verdict([0.5, 0.2], [1.0, 1.0], 0.9, half=0.3) == "not shown"  # 0.5 + 0.3 >= 1.0 - 0.3
    assert verdict([1.0, 1.0], [1.0, 1.0]) == "not shown"  # equal: nothing shown, nothing opposite
    assert verdict([1.0, 1.2], [1.1, 1.1]) == "fails"  # 1.19 > 1.11 at x = 1
    # SiftMoE equals Top-K at eta = 0 by construction: judged only for eta > 0
    assert verdict([1.0, 0.5], [1.0, 1.0], 0.9) == "not shown"
    assert verdict([1.0, 0.5], [1.0, 1.0], 0.9, exclude=[0.0]) == "holds"
    assert verdict([1.0, 0.5], [1.0, 1.0], 0.9, exclude=[0.0, 1.0]) == "n/a"  # nothing left to judge


def _with_pair(ds, label, diff, half, field="eta"):
    """`ds` plus a paired difference variable for the pair `label` ("<a>|<b>"): means `diff`, CI +-half."""
    d = np.asarray(diff, float)[None]
    data = {
        f"energy_diff_j_{k}": (("pair", field), d + off)
        for k, off in (("mean", 0.0), ("ci_lo", -half), ("ci_hi", half))
    }
    return ds.assign(data).assign_coords(pair=[label])


def test_below_uses_the_paired_difference_when_the_dataset_has_it():
    # independent CIs overlap (0.9 + 0.2 >= 1.0 - 0.2): not shown without the pair
    ds = _ds({"a": [0.9, 0.9], "b": [1.0, 1.0]}, half=0.2)
    assert report.below(ds, "a", "b", 0.95).verdict == "not shown"
    # the paired difference a - b = -0.1 +- 0.02: separated from 0, ratio 0.9 <= 0.95 -> holds
    tight = _with_pair(ds, "a|b", [-0.1, -0.1], 0.02)
    claim = report.below(tight, "a", "b", 0.95)
    assert claim.verdict == "holds" and "paired difference a - b" in claim.evidence
    # the pair stored the other way round (b - a = +0.1): the sign flips, same verdict
    assert report.below(_with_pair(ds, "b|a", [0.1, 0.1], 0.02), "a", "b", 0.95).verdict == "holds"
    # the paired CI includes 0 at one point -> not shown (and says why)
    wide = report.below(_with_pair(ds, "a|b", [-0.1, -0.01], 0.02), "a", "b", 0.95)
    assert wide.verdict == "not shown" and "includes 0" in wide.evidence
    # a significantly positive paired difference (lo = 0.01 > 0) fails, although the means' ratio is below 1
    assert report.below(_with_pair(ds, "a|b", [-0.1, 0.03], 0.02), "a", "b", 0.95).verdict == "fails"
    # a NaN paired CI is n/a, never dropped
    assert report.below(_with_pair(ds, "a|b", [-0.1, np.nan], 0.02), "a", "b", 0.95).verdict == "n/a"
    # a pair of other curves is not used
    assert report.below(_with_pair(ds, "a|c", [-0.1, -0.1], 0.02), "a", "b", 0.95).verdict == "not shown"


def test_below_ratio_bound_is_inclusive():
    ds = _ds({"a": [0.9, 0.9], "b": [1.0, 1.0]}, half=0.001)
    assert report.below(ds, "a", "b", 0.9).verdict == "holds"
    assert report.below(ds, "a", "b", 0.89).verdict == "not shown"


# ---------------------------------------------------------------- gap largest at the tightest point


def _gap(sift, topk, half=0.1):
    ds = _ds({"siftmoe": sift, "topk": topk}, "bandwidth_hz", [9e5, 1e6, 1.1e6][: len(sift)], half)
    return report.gap_largest_at_tightest(ds, "siftmoe", "topk").verdict


def test_gap_rules():
    w = math.hypot(0.1, 0.1)  # gap half-width at every point
    combined = math.hypot(w, w)  # half-width of a difference of two gaps (~0.2)
    assert w < 1.0 and combined < 1.0 - 0.3
    assert _gap([1.0, 1.0], [2.0, 1.3]) == "holds"  # gaps 1.0, 0.3
    assert _gap([1.0, 1.0], [1.25, 1.2]) == "not shown"  # gaps 0.25, 0.2: 0.05 < combined
    assert _gap([2.0, 2.0, 2.0], [1.0, 1.5, 1.9]) == "fails"  # gaps negative everywhere
    assert _gap([1.0, 1.0], [1.0, 1.0]) == "fails"  # no positive gap
    assert _gap([1.0, 1.0], [1.2, 1.8]) == "fails"  # gaps 0.2, 0.8: 0.6 > combined elsewhere
    assert _gap([1.0, 1.0], [1.2, 1.35]) == "not shown"  # gaps 0.2, 0.35: larger elsewhere, not significantly
    # the gap at the tightest point must also be positive beyond its own half-width
    assert _gap([1.0, 1.0], [1.12, 0.7], half=0.1) == "not shown"  # 0.12 < w = 0.141 although 0.12 + 0.3 > combined
    assert _gap([1.0], [2.0]) == "n/a"  # a single point has no "largest"


# ---------------------------------------------------------------- level check


def test_level_check_uses_default_point_and_factor():
    fig = targets.get("fig5a")  # y 0.03 - 0.11 J, default 1 MHz
    lo_ok, hi_ok = 0.03 / 1.5, 0.11 * 1.5

    def check(topk_at_default):  # the other points (5 J) must not be looked at
        ds = _ds({"topk": [5.0, topk_at_default, 5.0]}, "bandwidth_hz", [9e5, 1e6, 1.1e6], half=0.001, name="fig5a")
        return report.level_check(ds, fig, "topk")

    assert check(0.1).verdict == "holds"
    assert check(hi_ok * 1.01).verdict == "fails" and check(hi_ok * 0.99).verdict == "holds"
    assert check(lo_ok * 0.99).verdict == "fails" and check(lo_ok * 1.01).verdict == "holds"
    # the default is not on this axis: the nearest point (0.9 MHz), and the evidence says so
    off = report.level_check(_ds({"topk": [0.1, 5.0]}, "bandwidth_hz", [9e5, 1.2e6], name="fig5a"), fig)
    assert off.verdict == "holds" and "nearest" in off.evidence
    zero_lo = targets.get("fig7a")  # y 0 - 0.5 J: only the upper bound
    ds = _ds({"topk": [1e-9, 1e-9]}, "bandwidth_hz", [9e5, 1e6], half=0.0, name="fig7a")
    assert report.level_check(ds, zero_lo, "topk").verdict == "holds"
    assert report.level_check(ds, fig, "topk").verdict == "fails"  # 1e-9 < 0.02
    assert report.level_check(ds.rename({"bandwidth_hz": "eta"}), fig, "topk").verdict == "n/a"  # other field
    assert report.level_check(ds, fig, "siftmoe").verdict == "n/a"  # missing curve


# ---------------------------------------------------------------- claims_for: targets and generic pairings


@pytest.fixture
def calls(monkeypatch):
    """Record the rule calls made by claims_for: (rule, curves, magnitude, exclude_x)."""
    seen = []
    orig = {name: getattr(report, name) for name in ("falls", "below", "gap_largest_at_tightest", "level_check")}

    def falls(ds, curve, min_fall=0.30, **kw):
        seen.append(("falls", (curve,), min_fall, ()))
        return orig["falls"](ds, curve, min_fall, **kw)

    def below(ds, low, high, max_ratio=1.0, exclude_x=(), **kw):
        seen.append(("below", (low, high), max_ratio, tuple(exclude_x)))
        return orig["below"](ds, low, high, max_ratio, exclude_x, **kw)

    def gap(ds, low, high, **kw):
        seen.append(("gap", (low, high), None, ()))
        return orig["gap_largest_at_tightest"](ds, low, high, **kw)

    def level(ds, target, curve="topk", factor=1.5):
        seen.append(("level", (curve,), factor, ()))
        return orig["level_check"](ds, target, curve, factor)

    for name, fn in (("falls", falls), ("below", below), ("gap_largest_at_tightest", gap), ("level_check", level)):
        monkeypatch.setattr(report, name, fn)
    return seen


def _fast(name, field="bandwidth_hz", xs=(7e5, 8e5, 9e5, 1e6)):
    # Dynamic 20% below Uniform, SiftMoE 30% below Top-K, DP = Dynamic; all fall by 50%
    base = np.linspace(2.0, 1.0, len(xs))
    means = {
        "siftmoe:dynamic": 0.7 * 0.8 * base,
        "siftmoe:uniform": 0.7 * base,
        "siftmoe:dp": 0.7 * 0.8 * base,
        "topk:dynamic": 0.8 * base,
        "topk:uniform": base,
    }
    return _ds(means, field, xs, half=0.001, name=name)


def test_claims_for_fast_fading_with_targets(calls):
    ds = _fast("fig7a")
    claims = report.claims_for(ds)
    assert calls == [
        ("falls", ("siftmoe:dynamic",), 0.30, ()),
        ("falls", ("topk:dynamic",), 0.30, ()),
        ("below", ("siftmoe:dynamic", "siftmoe:uniform"), 0.95, ()),
        ("below", ("topk:dynamic", "topk:uniform"), 0.95, ()),
        ("below", ("siftmoe:dynamic", "topk:dynamic"), 0.9, ()),
        ("below", ("siftmoe:dynamic", "topk:uniform"), 0.9, ()),
        ("below", ("siftmoe:dp", "siftmoe:dynamic"), 1.0, ()),
        ("gap", ("siftmoe:dynamic", "topk:dynamic"), None, ()),
    ]  # no level check: no "topk" curve
    fig = targets.get("fig7a")
    assert [c.source for c in claims] == [t.source for t in fig.claims]
    assert all(t.text in c.claim for c, t in zip(claims, fig.claims))
    # by hand: falls 50% with tiny CIs; ratios 0.8 <= 0.95, 0.7 * 0.8 / 0.8 = 0.7 <= 0.9, 0.56 <= 0.9;
    # DP equal to Dynamic: CIs overlap -> not shown; gaps 0.8 base - 0.56 base shrink with B -> holds
    assert [c.verdict for c in claims] == ["holds"] * 6 + ["not shown", "holds"]


def test_claims_for_fast_fading_without_targets(calls):
    ds = _fast("my_spec")
    claims = report.claims_for(ds)
    assert calls == [
        ("falls", ("siftmoe:dynamic",), 0.30, ()),
        ("falls", ("siftmoe:uniform",), 0.30, ()),
        ("falls", ("siftmoe:dp",), 0.30, ()),
        ("below", ("siftmoe:dynamic", "topk:dynamic"), 0.9, ()),
        ("gap", ("siftmoe:dynamic", "topk:dynamic"), None, ()),
        ("below", ("siftmoe:uniform", "topk:uniform"), 0.9, ()),
        ("gap", ("siftmoe:uniform", "topk:uniform"), None, ()),
        ("below", ("siftmoe:dynamic", "siftmoe:uniform"), 0.95, ()),
        ("below", ("siftmoe:dp", "siftmoe:dynamic"), 1.0, ()),
        ("below", ("topk:dynamic", "topk:uniform"), 0.95, ()),
    ]
    assert all(c.source == report.GENERIC_SOURCE for c in claims)
    # generic along a deadline axis: no gap claims; the "closed-form" label counts as Dynamic
    calls.clear()
    dl = _fast("my_spec", "deadline_s", (0.64, 0.7)).assign_coords(
        curve=["siftmoe:closed-form", "siftmoe:uniform", "siftmoe:dp", "topk:closed-form", "topk:uniform"]
    )
    report.claims_for(dl)
    assert [c for c in calls if c[0] == "gap"] == []
    assert ("below", ("siftmoe:dp", "siftmoe:closed-form"), 1.0, ()) in calls


def test_claims_for_slow_fading_eta_with_and_without_targets(calls):
    xs = [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0]
    sift = [0.04, 0.03, 0.028, 0.026, 0.024, 0.022, 0.02]  # -50%
    ds = _ds({"siftmoe": sift, "topk": [0.04] * 7}, "eta", xs, half=1e-4, name="fig3b")
    claims = report.claims_for(ds)
    assert calls == [
        ("falls", ("siftmoe",), 0.30, ()),
        ("below", ("siftmoe", "topk"), 0.9, (0.0,)),
        ("level", ("topk",), 1.5, ()),
    ]
    # ratios 0.75 .. 0.5 <= 0.9 for eta > 0 (equal at eta = 0); Top-K 0.04 J at eta = 200 in [0.02/1.5, 0.04*1.5]
    assert [c.verdict for c in claims] == ["holds", "holds", "holds"]
    calls.clear()
    generic = report.claims_for(ds.assign_attrs(spec_name="gptoss_eta"))
    assert calls == [("falls", ("siftmoe",), 0.30, ()), ("below", ("siftmoe", "topk"), 0.9, (0.0,))]
    assert [c.verdict for c in generic] == ["holds", "holds"]


def test_claims_for_missing_curve_and_other_field():
    ds = _ds({"siftmoe": [3.0, 2.0, 1.0]}, "bandwidth_hz", [9e5, 1e6, 1.2e6], name="fig5a")  # no topk
    claims = report.claims_for(ds)
    assert len(claims) == len(targets.get("fig5a").claims) + 1
    assert [c.verdict for c in claims] == ["holds", "n/a", "n/a", "n/a", "n/a"]
    assert all("topk" in c.evidence for c in claims[1:])
    other = report.claims_for(ds.rename({"bandwidth_hz": "deadline_s"}))  # fig5a's targets sweep bandwidth
    assert other[0].verdict == "n/a" and "bandwidth_hz" in other[0].evidence
    assert [c.source for c in other[1:]] == [report.GENERIC_SOURCE]


def test_claim_is_frozen_with_source_and_markdown_has_a_source_column():
    c = report.Claim("f", "a | b", "holds", "e")
    assert c.source == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.verdict = "fails"
    table = report.markdown([report.Claim("f", "a | b", "holds", "e", "src")]).splitlines()
    assert table[0].split("|")[1:-1] == [" figure ", " claim ", " verdict ", " evidence ", " source "]
    assert table[2].count("|") - table[2].count("\\|") == 6  # the '|' in the claim is escaped


# ---------------------------------------------------------------- energy breakdown


def test_breakdown_rows_at_the_default_point():
    xs = [0.9e6, 1.0e6, 1.1e6]
    ds = _ds({"siftmoe": [3.0, 2.0, 1.0], "topk": [6.0, 5.0, 4.0]}, "bandwidth_hz", xs, name="fig5a")
    ds["uplink_energy_j_mean"] = (("curve", "bandwidth_hz"), [[2.0, 1.5, 0.5], [5.0, 4.0, 3.0]])
    ds["local_energy_j_mean"] = (("curve", "bandwidth_hz"), [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0]])
    rows = report.breakdown_rows(ds)
    assert [(r["curve"], r["x"], r["uplink_j"], r["local_j"], r["energy_j"]) for r in rows] == [
        ("siftmoe", 1e6, 1.5, 0.5, 2.0),
        ("topk", 1e6, 4.0, 1.0, 5.0),
    ]  # fig5a's default B = 1 MHz
    assert rows[0]["uplink_share"] == pytest.approx(0.75) and rows[1]["uplink_share"] == pytest.approx(0.8)
    first = report.breakdown_rows(ds.assign_attrs(spec_name="mine"))  # no target: the first point
    assert [r["x"] for r in first] == [0.9e6, 0.9e6] and first[0]["uplink_share"] == pytest.approx(2 / 3)
    zero = ds.copy()
    zero["uplink_energy_j_mean"][:] = 0.0
    zero["local_energy_j_mean"][:] = 0.0
    assert all(math.isnan(r["uplink_share"]) for r in report.breakdown_rows(zero))
    assert report.breakdown_rows(ds.drop_vars("local_energy_j_mean")) == []


# ---------------------------------------------------------------- REPORT.md text and claims.json


def test_report_text_has_rules_breakdown_and_quick_label():
    import json

    from sift_jax import reproduce

    claims = [report.Claim("fig5a", "siftmoe below topk", "not shown", "ratio [0.95]", "SIFTMOE.md 5.2")]
    rows = [
        {
            "figure": "fig5a",
            "curve": "topk",
            "field": "bandwidth_hz",
            "x": 1e6,
            "energy_j": 0.1,
            "uplink_j": 0.09,
            "local_j": 0.01,
            "uplink_share": 0.9,
        }
    ]
    text = reproduce._report_text([("fig5a", "Fig. 5(a)", "fig5a.png", 2)], claims, None, True, 1.0, rows)
    assert "Quick mode" in text and "not evidence" in text and "holds (within CI)" not in text
    for words in (
        "'holds' needs the effect the paper shows: separated 95% CIs and the magnitude in sweeps/paper_targets.toml",
        "'not shown' means the data do not show it",
        "'fails' means the opposite is significant",
    ):
        assert words in text
    breakdown = text.split("## Energy breakdown", 1)[1].split("## Figures", 1)[0]
    assert "| fig5a | topk | bandwidth_hz = 1e+06 | 0.1 | 0.09 | 0.01 | 90.0% |" in breakdown
    assert "## Energy breakdown" in reproduce._report_text([], claims, None, False, 1.0, [])
    assert json.loads(report.claims_json(claims)) == [
        {
            "figure": "fig5a",
            "claim": "siftmoe below topk",
            "verdict": "not shown",
            "evidence": "ratio [0.95]",
            "source": "SIFTMOE.md 5.2",
        }
    ]
