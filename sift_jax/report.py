"""The paper's claims, judged on sweep data with 95% confidence intervals (REPORT.md, claims.json).

Verdicts are "holds", "not shown", "fails" and "n/a". "holds" needs the effect the paper shows: separated
95% CIs and the magnitude recorded in `sweeps/paper_targets.toml`; "not shown" means the data do not
show it (flat, too small or overlapping CIs); "fails" means the opposite is significant; "n/a" means a
judged point has no finite mean or CI (e.g. no feasible sample; the x values are named, never dropped)
or a curve is missing. With m, lo, hi the mean and 95% CI of the energy per token (J) at each point,
points in ascending order of the swept field x:

- `falls(curve, min_fall)`: "fails" if some later point is significantly above an earlier one
  (lo[j] > hi[i] for some i < j); "holds" if hi[last] < lo[first] and the relative fall
  (m[first] - m[last]) / m[first] >= min_fall (and nothing fails); "not shown" otherwise.
- `below(low, high, max_ratio, exclude_x)`, over the points whose x is not in exclude_x: "fails" if at
  some point low is significantly above high (lo_low > hi_high); "holds" if at every point the CIs
  separate (hi_low < lo_high) and m_low / m_high <= max_ratio; "not shown" otherwise. Where the dataset
  holds the paired difference d = E_low - E_high of the two curves on the same samples (fast fading:
  curves of one policy, `sweep.curve_pairs`), "separated" and "significantly above" are judged on d's
  95% CI instead (hi_d < 0, lo_d > 0): the paired test, far tighter than two independent CIs.
- `gap_largest_at_tightest(low, high)`: gap_i = m_high_i - m_low_i with half-width
  w_i = sqrt(hw_low_i^2 + hw_high_i^2) (hw: half the CI width). This treats the two curves as
  independent; they share common random numbers (positively correlated), so the true gap CI is
  narrower and this w is conservative. "holds" if gap_0 (smallest x) > w_0 and
  gap_0 - gap_i > sqrt(w_0^2 + w_i^2) for every other point i; "fails" if every gap is <= 0 or
  gap_i - gap_0 > sqrt(w_0^2 + w_i^2) for some i; "not shown" otherwise.
- `level_check(target, curve)`: the curve's mean at the paper default of the swept field (the nearest
  point if the default is not on the axis, and the evidence says so) lies within the paper's plotted
  y-range widened by a factor 1.5 (y_lo / 1.5 <= mean <= y_hi * 1.5; only the upper bound when y_lo = 0):
  "holds", else "fails".

`claims_for` builds the claims of a panel from its `PanelTarget` (each with the paper's words and
source); specs without targets (user specs, gptoss_*) get generic claims derived from their curves.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from sift_jax import targets as paper_targets
from sift_jax.plots import x_axis
from sift_jax.simulate import PAIRED_METRIC

__all__ = [
    "VERDICTS",
    "VERDICT_RULES",
    "Claim",
    "below",
    "breakdown_markdown",
    "breakdown_rows",
    "claims_for",
    "claims_json",
    "falls",
    "gap_largest_at_tightest",
    "level_check",
    "markdown",
]

VERDICTS = ("holds", "not shown", "fails", "n/a")
VERDICT_RULES = (
    "'holds' needs the effect the paper shows: separated 95% CIs and the magnitude in sweeps/paper_targets.toml; "
    "'not shown' means the data do not show it (flat, too small or overlapping CIs); 'fails' means the opposite "
    "is significant; 'n/a' means a judged point has no finite mean or CI (named in the evidence) or a curve is "
    "missing. In detail: 'falls' needs the last point's CI below the first's and a relative fall >= min_fall, and "
    "fails on any significant rise (a later CI wholly above an earlier one); 'below' needs separated CIs and a mean "
    "ratio <= max_ratio at every judged point, and fails where the curve is significantly above the other; the gap "
    "at the tightest point must exceed every other gap by more than the combined CI half-widths (curves treated as "
    "independent, conservative under common random numbers), and fails when no gap is positive or another gap is "
    "significantly larger; the level check needs Top-K at the paper default within the plotted y-range widened "
    "by a factor 1.5."
)
GENERIC_SOURCE = "generic (no paper targets for this spec)"
LEVEL_FACTOR = 1.5


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim on one figure and its verdict: 'holds', 'not shown', 'fails' or 'n/a' (see the module doc).

    Attributes:
        figure: the spec name of the figure. claim: the claim in words (the rule, and the paper's words).
        verdict: 'holds', 'not shown', 'fails' or 'n/a'.
        evidence: the numbers behind the verdict (means in J, ratios or gaps, and the x values).
        source: where the claim comes from (the paper section / figure, or "generic").

    Example:
        >>> c = Claim("fig5a", "siftmoe below topk", "holds", "siftmoe/topk mean ratio [0.8]", "SIFTMOE.md 5.2")
        >>> c.verdict in VERDICTS, c.source
        (True, 'SIFTMOE.md 5.2')
    """

    figure: str
    claim: str
    verdict: str
    evidence: str
    source: str = ""


def _values(ds, curve: str, var: str) -> np.ndarray:
    """One curve's variable along the first swept field, in ascending x; other axes at their first value."""
    field, xs = x_axis(ds)
    sub = ds[var].sel(curve=curve)
    sub = sub.isel({d: 0 for d in sub.dims if d not in (field, "point")})
    return np.asarray(sub.values, float).reshape(-1)[np.argsort(xs, kind="stable")]


def _series(ds, curve: str, metric: str = "energy_per_token_j"):
    """(x, mean, ci_lo, ci_hi) of one curve along the first swept field, in ascending x."""
    xs = np.sort(x_axis(ds)[1], kind="stable")
    return (xs, *(_values(ds, curve, f"{metric}_{k}") for k in ("mean", "ci_lo", "ci_hi")))


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _words(rule: str, text: str) -> str:
    return f'{rule}: "{text}"' if text else rule


def _figure(ds, figure: str | None) -> str:
    return figure if figure is not None else str(ds.attrs.get("spec_name", "?"))


def _missing(ds, *curves: str) -> str:
    have = {str(c) for c in ds["curve"].values}
    gone = [c for c in curves if c not in have]
    return f"curve {', '.join(gone)} not in the dataset (curves: {', '.join(sorted(have))})" if gone else ""


def _pair(ds, low: str, high: str):
    """(x, (mean, ci_lo, ci_hi) of `low`, the same of `high`) along the first swept field, or the reason a
    curve is missing (a string)."""
    missing = _missing(ds, low, high)
    if missing:
        return missing
    xs, *first = _series(ds, low)
    return xs, tuple(first), tuple(_series(ds, high)[1:])


def _paired(ds, low: str, high: str):
    """(mean, ci_lo, ci_hi) of the paired difference E_low - E_high (J) along the first swept field, in
    ascending x, from the dataset's `energy_diff_j_*` (both curves on the same samples, `sweep.curve_pairs`);
    None when the dataset has no such pair."""
    if "pair" not in ds.coords:
        return None
    pairs = [str(p) for p in ds["pair"].values]
    sign = 1.0 if f"{low}|{high}" in pairs else -1.0 if f"{high}|{low}" in pairs else 0.0
    if not sign:
        return None
    label = f"{low}|{high}" if sign > 0 else f"{high}|{low}"
    field, xs = x_axis(ds)
    order = np.argsort(xs, kind="stable")

    def values(stat: str) -> np.ndarray:
        sub = ds[f"{PAIRED_METRIC}_{stat}"].sel(pair=label)
        sub = sub.isel({d: 0 for d in sub.dims if d not in (field, "point")})
        return sign * np.asarray(sub.values, float).reshape(-1)[order]

    mean, lo, hi = values("mean"), values("ci_lo"), values("ci_hi")
    return (mean, lo, hi) if sign > 0 else (mean, hi, lo)


def _nonfinite(field: str, xs, *arrays) -> str:
    bad = ~np.all([np.isfinite(a) for a in arrays], axis=0)
    if not bad.any():
        return ""
    return f"no finite mean/95% CI (e.g. no feasible sample) at {field} = {_fmt(xs[bad])}"


def falls(
    ds, curve: str, min_fall: float = 0.30, *, figure: str | None = None, text: str = "", source: str = ""
) -> Claim:
    """Energy falls along the swept field, by at least `min_fall` (relative) from the first to the last point.

    "fails" if a later point is significantly above an earlier one (lo[j] > hi[i], i < j); "holds" if the
    last point's CI lies below the first's (hi[last] < lo[first]) and (m[first] - m[last]) / m[first] >=
    min_fall; "not shown" otherwise (flat, too small, or overlapping CIs); "n/a" if a point has no finite
    mean or CI.

    Args:
        ds: a sweep result with `energy_per_token_j_{mean,ci_lo,ci_hi}` (J); axes beyond the first swept
            one are taken at their first value.
        curve: the curve label (e.g. "siftmoe").
        min_fall: the smallest relative fall first -> last that counts as the paper's effect (fraction).
        figure: figure name recorded in the Claim (default the dataset's `spec_name`).
        text: the paper's words, appended to the claim. source: where the claim comes from.

    Returns:
        A `Claim`; the evidence lists the means and the relative change first to last.

    Example:
        A hand-made result, energy (J) with 95% CIs of +-0.1 at eta = 0, 1.5, 3:

        >>> import xarray as xr
        >>> def result(mean, hw=0.1):
        ...     return xr.Dataset({f"energy_per_token_j_{k}": (("curve", "eta"), [[m + d * hw for m in mean]])
        ...                        for k, d in (("mean", 0), ("ci_lo", -1), ("ci_hi", 1))},
        ...                       coords={"curve": ["siftmoe"], "eta": [0.0, 1.5, 3.0]}, attrs={"spec_name": "demo"})
        >>> c = falls(result([3.0, 2.5, 2.0]), "siftmoe")  # -33%, CIs [2.9, 3.1] and [1.9, 2.1] separate
        >>> c.verdict, c.evidence
        ('holds', 'means [3, 2.5, 2] J at eta = [0, 1.5, 3]; change first to last -33.33%')
        >>> falls(result([3.0, 2.9, 2.8]), "siftmoe").verdict  # separated CIs, but only -6.7%
        'not shown'
        >>> falls(result([3.0, 3.0, 3.05]), "siftmoe").verdict  # a rise inside the CIs
        'not shown'
        >>> falls(result([3.0, 3.1, 3.3]), "siftmoe").verdict  # 3.3 - 0.1 > 3.0 + 0.1: a significant rise
        'fails'
    """
    figure = _figure(ds, figure)
    field = x_axis(ds)[0]
    claim = _words(f"{curve} falls as {field} grows, by >= {min_fall:.0%} first to last", text)
    missing = _missing(ds, curve)
    if missing:
        return Claim(figure, claim, "n/a", missing, source)
    xs, m, lo, hi = _series(ds, curve)
    bad = _nonfinite(field, xs, m, lo, hi)
    if bad or len(xs) < 2:
        return Claim(figure, claim, "n/a", bad or f"fewer than 2 points along {field}", source)
    change = (m[-1] - m[0]) / m[0] if m[0] > 0 else np.nan
    evidence = f"means {_fmt(m)} J at {field} = {_fmt(xs)}; change first to last {change:+.2%}"
    excess = np.triu(lo[None, :] - hi[:, None], k=1)  # excess[i, j] = lo[j] - hi[i] for i < j
    if (excess > 0).any():
        i, j = np.unravel_index(int(np.argmax(excess)), excess.shape)
        return Claim(
            figure,
            claim,
            "fails",
            f"{evidence}; significant rise from {field} = {xs[i]:.3g} "
            f"(CI [{lo[i]:.3g}, {hi[i]:.3g}]) to {xs[j]:.3g} (CI [{lo[j]:.3g}, {hi[j]:.3g}])",
            source,
        )
    if hi[-1] < lo[0] and -change >= min_fall:
        return Claim(figure, claim, "holds", evidence, source)
    why = "the first and last CIs overlap" if not hi[-1] < lo[0] else f"the fall is below {min_fall:.0%}"
    return Claim(figure, claim, "not shown", f"{evidence}; {why}", source)


def below(
    ds,
    low: str,
    high: str,
    max_ratio: float = 1.0,
    exclude_x=(),
    *,
    figure: str | None = None,
    text: str = "",
    source: str = "",
) -> Claim:
    """`low` energy below `high` at every judged point, with mean ratio low/high <= `max_ratio`.

    Judged are the points whose x is not in `exclude_x` (e.g. SiftMoE equals Top-K at eta = 0 by
    construction). "fails" if at some judged point low is significantly above high (lo_low > hi_high);
    "holds" if at every judged point hi_low < lo_high and m_low / m_high <= max_ratio; "not shown"
    otherwise; "n/a" if a judged point has no finite mean or CI.

    Args:
        ds: a sweep result with `energy_per_token_j_{mean,ci_lo,ci_hi}` (J).
        low, high: curve labels; the claim is low below high.
        max_ratio: the largest mean ratio low/high that counts as the paper's effect.
        exclude_x: x values (the swept field's SI unit) not judged.
        figure: figure name recorded in the Claim (default the dataset's `spec_name`).
        text: the paper's words, appended to the claim. source: where the claim comes from.

    Returns:
        A `Claim`; the evidence lists the mean ratio per judged point.

    Example:
        A hand-made result: SiftMoE's energy (J) falls from 3 to 2 as eta grows, Top-K's from 3 to 2.5
        (equal at eta = 0, as by construction), each with a 95% CI of +-0.1:

        >>> import xarray as xr
        >>> ds = xr.Dataset({f"energy_per_token_j_{k}": (("curve", "eta"), [[3.0 + d, 2.0 + d], [3.0 + d, 2.5 + d]])
        ...                  for k, d in (("mean", 0.0), ("ci_lo", -0.1), ("ci_hi", 0.1))},
        ...                 coords={"curve": ["siftmoe", "topk"], "eta": [0.0, 1.5]}, attrs={"spec_name": "demo"})
        >>> c = below(ds, "siftmoe", "topk", 0.9, exclude_x=[0.0])
        >>> c.verdict, c.evidence  # at eta = 1.5: 2.1 < 2.4 and 2 / 2.5 = 0.8 <= 0.9
        ('holds', 'siftmoe/topk mean ratio [0.8] at eta = [1.5] (max 0.9); not judged: eta = [0]')
        >>> below(ds, "siftmoe", "topk", 0.9).verdict  # eta = 0 judged too: equal there
        'not shown'
        >>> below(ds, "topk", "siftmoe", exclude_x=[0.0]).verdict  # 2.4 > 2.1: significantly above
        'fails'
    """
    figure = _figure(ds, figure)
    field = x_axis(ds)[0]
    claim = _words(f"{low} below {high} (mean ratio <= {max_ratio:g})", text)
    pair = _pair(ds, low, high)
    if isinstance(pair, str):
        return Claim(figure, claim, "n/a", pair, source)
    xs, (m1, lo1, hi1), (m2, lo2, hi2) = pair
    excluded = np.array([np.isclose(x, exclude_x, rtol=1e-9, atol=1e-12).any() for x in xs], bool)
    skipped = f"; not judged: {field} = {_fmt(xs[excluded])}" if excluded.any() else ""
    keep = ~excluded
    if not keep.any():
        return Claim(figure, claim, "n/a", f"no judged point{skipped}", source)
    xs, m1, lo1, hi1, m2, lo2, hi2 = (a[keep] for a in (xs, m1, lo1, hi1, m2, lo2, hi2))
    bad = _nonfinite(field, xs, m1, lo1, hi1, m2, lo2, hi2)
    if bad:
        return Claim(figure, claim, "n/a", bad + skipped, source)
    ratio = np.divide(m1, m2, out=np.full_like(m1, np.nan), where=m2 > 0)
    evidence = f"{low}/{high} mean ratio {_fmt(ratio)} at {field} = {_fmt(xs)} (max {max_ratio:g}){skipped}"
    paired = _paired(ds, low, high)
    if paired is not None:
        d, dlo, dhi = (a[keep] for a in paired)
        bad = _nonfinite(field, xs, d, dlo, dhi)
        if bad:
            return Claim(figure, claim, "n/a", f"paired difference: {bad}{skipped}", source)
        above, overlap = dlo > 0, ~(dhi < 0)
        evidence += f"; paired difference {low} - {high} (J): 95% CI upper end {_fmt(dhi)}"
        what = "paired 95% CI of the difference includes 0"
    else:
        above, overlap = lo1 > hi2, ~(hi1 < lo2)
        what = "CIs overlap"
    if above.any():
        return Claim(
            figure, claim, "fails", f"{evidence}; {low} significantly above at {field} = {_fmt(xs[above])}", source
        )
    large = ~(ratio <= max_ratio)
    if not overlap.any() and not large.any():
        return Claim(figure, claim, "holds", evidence, source)
    why = [f"{what} at {field} = {_fmt(xs[overlap])}"] if overlap.any() else []
    why += [f"ratio above {max_ratio:g} at {field} = {_fmt(xs[large])}"] if large.any() else []
    return Claim(figure, claim, "not shown", f"{evidence}; " + ", ".join(why), source)


def gap_largest_at_tightest(
    ds, low: str, high: str, *, figure: str | None = None, text: str = "", source: str = ""
) -> Claim:
    """The saving high - low is largest at the smallest value of the swept field (the tightest point).

    gap_i = m_high_i - m_low_i with half-width w_i = sqrt(hw_low_i^2 + hw_high_i^2) (hw: half the CI
    width; an approximation that treats the curves as independent: they share common random numbers, so
    it is conservative). "holds" if gap_0 > w_0 and gap_0 - gap_i > sqrt(w_0^2 + w_i^2) for every other
    point i; "fails" if every gap is <= 0 or gap_i - gap_0 > sqrt(w_0^2 + w_i^2) for some i; "not shown"
    otherwise; "n/a" if a point has no finite mean or CI, or there are fewer than 2 points.

    Args:
        ds: a sweep result with `energy_per_token_j_{mean,ci_lo,ci_hi}` (J).
        low, high: curve labels; the saving is high - low.
        figure: figure name recorded in the Claim (default the dataset's `spec_name`).
        text: the paper's words, appended to the claim. source: where the claim comes from.

    Returns:
        A `Claim` with the gaps (J) and their half-widths as evidence.

    Example:
        A hand-made result: energies (J) with 95% CIs of +-0.1 at B = 0.9 and 1.2 MHz:

        >>> import xarray as xr
        >>> def result(sift, topk):
        ...     return xr.Dataset({f"energy_per_token_j_{k}": (("curve", "bandwidth_hz"),
        ...                                                     [[v + d for v in sift], [v + d for v in topk]])
        ...                        for k, d in (("mean", 0.0), ("ci_lo", -0.1), ("ci_hi", 0.1))},
        ...                       coords={"curve": ["siftmoe", "topk"], "bandwidth_hz": [9e5, 1.2e6]})
        >>> c = gap_largest_at_tightest(result([1.0, 0.8], [2.0, 1.0]), "siftmoe", "topk")
        >>> c.verdict, c.evidence  # gaps 1 and 0.2, each +-0.141: 0.8 > 0.2
        ('holds', 'gaps [1, 0.2] J +- [0.141, 0.141] at bandwidth_hz = [9e+05, 1.2e+06]')
        >>> gap_largest_at_tightest(result([1.0, 0.8], [1.2, 1.1]), "siftmoe", "topk").verdict  # 0.2 vs 0.3
        'not shown'
        >>> gap_largest_at_tightest(result([1.0, 0.8], [0.9, 0.7]), "siftmoe", "topk").verdict  # no saving
        'fails'
    """
    figure = _figure(ds, figure)
    field = x_axis(ds)[0]
    claim = _words(f"saving of {low} over {high} largest at the smallest {field}", text)
    pair = _pair(ds, low, high)
    if isinstance(pair, str):
        return Claim(figure, claim, "n/a", pair, source)
    xs, (m1, lo1, hi1), (m2, lo2, hi2) = pair
    bad = _nonfinite(field, xs, m1, lo1, hi1, m2, lo2, hi2)
    if bad or len(xs) < 2:
        return Claim(figure, claim, "n/a", bad or f"fewer than 2 points along {field}", source)
    gap = m2 - m1
    w = np.hypot((hi1 - lo1) / 2, (hi2 - lo2) / 2)
    combined = np.hypot(w[0], w[1:])
    evidence = f"gaps {_fmt(gap)} J +- {_fmt(w)} at {field} = {_fmt(xs)}"
    larger = gap[1:] - gap[0] > combined
    if np.all(gap <= 0) or larger.any():
        why = "no positive gap" if np.all(gap <= 0) else f"larger gap at {field} = {_fmt(xs[1:][larger])}"
        return Claim(figure, claim, "fails", f"{evidence}; {why}", source)
    if gap[0] > w[0] and np.all(gap[0] - gap[1:] > combined):
        return Claim(figure, claim, "holds", evidence, source)
    return Claim(
        figure,
        claim,
        "not shown",
        f"{evidence}; the tightest gap is not larger than the others by more than their combined half-widths",
        source,
    )


def _default_index(xs: np.ndarray, default_x: float) -> tuple[int, bool]:
    """Index of the point at `default_x` (ascending xs) and whether it is on the axis (else the nearest)."""
    on = np.isclose(xs, default_x, rtol=1e-9, atol=1e-12)
    return (int(np.argmax(on)), True) if on.any() else (int(np.argmin(np.abs(xs - default_x))), False)


def level_check(ds, target: paper_targets.PanelTarget, curve: str = "topk", factor: float = LEVEL_FACTOR) -> Claim:
    """The curve's energy at the paper default lies within the paper's plotted y-range, widened by `factor`.

    The point is the one at `target.default_x` (or the nearest one, said in the evidence). "holds" if
    y_lo / factor <= mean <= y_hi * factor (only the upper bound when y_lo == 0), "fails" otherwise,
    "n/a" if the curve is missing, the mean is not finite or the target sweeps another field.

    Args:
        ds: a sweep result with `energy_per_token_j_mean` (J).
        target: the panel's `PanelTarget` (y_range in J, default_x in the field's SI unit).
        curve: the curve label (default "topk", the baseline whose level the paper plots).
        factor: the allowed factor outside the plotted range.

    Returns:
        A `Claim` with the mean (J) and the allowed interval as evidence.

    Example:
        >>> import xarray as xr
        >>> from sift_jax import targets
        >>> fig = targets.get("fig5a")  # y-range 0.03 - 0.11 J, default B = 1 MHz
        >>> ds = xr.Dataset({f"energy_per_token_j_{k}": (("curve", "bandwidth_hz"), [[0.2 + d, 0.1 + d]])
        ...                  for k, d in (("mean", 0.0), ("ci_lo", -0.01), ("ci_hi", 0.01))},
        ...                 coords={"curve": ["topk"], "bandwidth_hz": [9e5, 1e6]}, attrs={"spec_name": "fig5a"})
        >>> c = level_check(ds, fig)
        >>> c.verdict, c.evidence
        ('holds', 'topk mean 0.1 J at bandwidth_hz = 1e+06; allowed [0.02, 0.165] J')
        >>> c = level_check(ds.sel(bandwidth_hz=[9e5]), fig)  # 0.2 J > 0.165, at the nearest point
        >>> c.verdict, c.evidence
        ('fails', 'topk mean 0.2 J at bandwidth_hz = 9e+05 (nearest point: the default 1e+06 is not on the axis);
         allowed [0.02, 0.165] J')
    """
    field = x_axis(ds)[0]
    y_lo, y_hi = target.y_range
    claim = (
        f"{curve} at the paper default {target.field} = {target.default_x:g} lies within the plotted y-range "
        f"[{y_lo:g}, {y_hi:g}] J of {target.figure} (factor {factor:g})"
    )
    figure, source = _figure(ds, None), target.source
    if field != target.field:
        return Claim(figure, claim, "n/a", f"the target sweeps {target.field}, the dataset {field}", source)
    missing = _missing(ds, curve)
    if missing:
        return Claim(figure, claim, "n/a", missing, source)
    xs, m, _, _ = _series(ds, curve)
    i, on_axis = _default_index(xs, target.default_x)
    where = f"{field} = {xs[i]:.3g}" + (
        "" if on_axis else f" (nearest point: the default {target.default_x:.3g} is not on the axis)"
    )
    if not np.isfinite(m[i]):
        return Claim(figure, claim, "n/a", f"no finite mean at {where}", source)
    lo_ok = y_lo / factor if y_lo > 0 else 0.0
    ok = m[i] <= y_hi * factor and (y_lo == 0 or m[i] >= y_lo / factor)
    return Claim(
        figure,
        claim,
        "holds" if ok else "fails",
        f"{curve} mean {m[i]:.3g} J at {where}; allowed [{lo_ok:.3g}, {y_hi * factor:.3g}] J",
        source,
    )


def _from_target(ds, claim: paper_targets.ClaimTarget) -> Claim:
    common = {"text": claim.text, "source": claim.source}
    if claim.kind == "falls":
        return falls(ds, claim.curve, claim.min_fall, **common)
    if claim.kind == "below":
        return below(ds, claim.curve, claim.other, claim.max_ratio, claim.exclude_x, **common)
    return gap_largest_at_tightest(ds, claim.curve, claim.other, **common)


def _generic(ds) -> list[Claim]:
    field, _ = x_axis(ds)
    curves = [str(c) for c in ds["curve"].values]
    src = {"source": GENERIC_SOURCE}
    sift = [c for c in curves if c.split(":")[0] == "siftmoe"]
    out = [falls(ds, c, 0.30, **src) for c in sift] if field in paper_targets.FIELDS else []
    for c in sift:
        bits = c.partition(":")[2]
        partner = "topk" + (f":{bits}" if bits else "")
        if partner in curves:
            out.append(below(ds, c, partner, 0.9, (0.0,) if field == "eta" else (), **src))
            if field == "bandwidth_hz":
                out.append(gap_largest_at_tightest(ds, c, partner, **src))
    for policy in ("siftmoe", "topk"):
        dyn = next((f"{policy}:{b}" for b in ("dynamic", "closed-form") if f"{policy}:{b}" in curves), None)
        if dyn and f"{policy}:uniform" in curves:
            out.append(below(ds, dyn, f"{policy}:uniform", 0.95, **src))
        if policy == "siftmoe" and dyn and "siftmoe:dp" in curves:
            out.append(below(ds, "siftmoe:dp", dyn, 1.0, **src))
    return out


def claims_for(ds, target: paper_targets.PanelTarget | None = None) -> list[Claim]:
    """The claims about a figure like `ds`: the paper's (from its targets) or generic ones.

    With a `PanelTarget` (default: `targets.get(ds.attrs["spec_name"])`) whose field is the dataset's
    swept field, exactly the target's claims (each with the paper's words and source), plus
    `level_check` of "topk" for slow-fading panels (those whose claims use "topk"). Without one (user
    specs, gptoss_*), generic claims: every SiftMoE curve falls (min_fall 0.3) along eta, bandwidth or
    deadline; each SiftMoE curve is below its Top-K partner (same bit loading; max_ratio 0.9, not judged
    at eta = 0), with the largest saving at the smallest bandwidth; under fast fading Dynamic is below
    Uniform (0.95) and the exact DP at or below Dynamic (1.0). A target for another field adds an 'n/a'
    claim saying so, then the generic ones. Curves missing from the dataset give 'n/a' claims.

    Args:
        ds: a sweep result (`sj.sweep.run`); its `spec_name` attribute names the figure.
        target: the panel's targets (default looked up by `spec_name`).

    Returns:
        A list of `Claim`s.

    Example:
        A hand-made result named like no paper panel: SiftMoE's energy (J) falls from 3 to 2 as eta
        grows, Top-K's from 3 to 2.5 (equal at eta = 0, as by construction), each with a 95% CI of +-0.1:

        >>> import xarray as xr
        >>> ds = xr.Dataset({f"energy_per_token_j_{k}": (("curve", "eta"), [[3.0 + d, 2.0 + d], [3.0 + d, 2.5 + d]])
        ...                  for k, d in (("mean", 0.0), ("ci_lo", -0.1), ("ci_hi", 0.1))},
        ...                 coords={"curve": ["siftmoe", "topk"], "eta": [0.0, 1.5]}, attrs={"spec_name": "demo"})
        >>> [(c.claim, c.verdict) for c in claims_for(ds)]
        [('siftmoe falls as eta grows, by >= 30% first to last', 'holds'),
         ('siftmoe below topk (mean ratio <= 0.9)', 'holds')]
        >>> [(c.verdict, c.source) for c in claims_for(ds.assign_attrs(spec_name="fig4b"))][-1]  # Top-K 3 J vs 0.5-0.8
        ('fails', 'SIFTMOE.md 5.2 (Fig. 4(b) axis ticks); default eta from 5.1')
    """
    name = str(ds.attrs.get("spec_name", "?"))
    target = target if target is not None else paper_targets.get(name)
    field, _ = x_axis(ds)
    if target is None:
        return _generic(ds)
    if target.field != field:
        note = Claim(
            name,
            f"the paper targets of {target.figure} apply",
            "n/a",
            f"the targets sweep {target.field}, this dataset {field}: generic claims instead",
            target.source,
        )
        return [note] + _generic(ds)
    out = [_from_target(ds, c) for c in target.claims]
    if "topk" in target.curves:
        out.append(level_check(ds, target, "topk"))
    return out


def breakdown_rows(ds, target: paper_targets.PanelTarget | None = None) -> list[dict]:
    """Uplink (radio) vs user-side expert energy per token of each curve at the panel's default point.

    The point is the target's `default_x` when it is on the axis, else the smallest x. Other axes are
    taken at their first value.

    Args:
        ds: a sweep result with `uplink_energy_j_mean` and `local_energy_j_mean` (J per token).
        target: the panel's targets (default looked up by the dataset's `spec_name`).

    Returns:
        One dict per curve: figure, curve, field, x (the field's SI unit), energy_j, uplink_j, local_j
        (J per token; energy_j NaN if absent) and uplink_share = uplink / (uplink + local) (NaN when not
        finite or the sum is 0). An empty list when the breakdown variables are absent.

    Example:
        >>> import xarray as xr
        >>> ds = xr.Dataset({"energy_per_token_j_mean": (("curve", "eta"), [[3.0, 2.0]]),
        ...                  "uplink_energy_j_mean": (("curve", "eta"), [[2.5, 1.5]]),
        ...                  "local_energy_j_mean": (("curve", "eta"), [[0.5, 0.5]])},
        ...                 coords={"curve": ["siftmoe"], "eta": [0.0, 1.5]}, attrs={"spec_name": "demo"})
        >>> breakdown_rows(ds)  # no target: the first point
        [{'figure': 'demo', 'curve': 'siftmoe', 'field': 'eta', 'x': 0.0, 'energy_j': 3.0, 'uplink_j': 2.5,
          'local_j': 0.5, 'uplink_share': 0.8333333333333334}]
        >>> breakdown_rows(ds.assign_attrs(spec_name="fig4b"))[0]["x"]  # Fig. 4(b): the paper default eta = 1.5
        1.5
        >>> breakdown_rows(ds.drop_vars("uplink_energy_j_mean"))
        []
    """
    if "uplink_energy_j_mean" not in ds or "local_energy_j_mean" not in ds:
        return []
    name = str(ds.attrs.get("spec_name", "?"))
    target = target if target is not None else paper_targets.get(name)
    field, xs = x_axis(ds)
    xs = np.sort(xs)
    i, on_axis = _default_index(xs, target.default_x) if target is not None and target.field == field else (0, False)
    i = i if on_axis else 0

    def mean(curve: str, metric: str) -> float:
        var = f"{metric}_mean"
        return float(_values(ds, curve, var)[i]) if var in ds else float("nan")

    rows = []
    for curve in (str(c) for c in ds["curve"].values):
        up, loc = mean(curve, "uplink_energy_j"), mean(curve, "local_energy_j")
        total = up + loc
        share = up / total if np.isfinite(total) and total > 0 else float("nan")
        rows.append(
            {
                "figure": name,
                "curve": curve,
                "field": field,
                "x": float(xs[i]),
                "energy_j": mean(curve, "energy_per_token_j"),
                "uplink_j": up,
                "local_j": loc,
                "uplink_share": share,
            }
        )
    return rows


def breakdown_markdown(rows: list[dict]) -> str:
    """A markdown table of `breakdown_rows` (energies in J per token, the uplink share in %).

    Args:
        rows: dicts from `breakdown_rows` (of one or more datasets).

    Returns:
        The table as one string (header, separator, rows; no trailing newline).

    Example:
        >>> print(breakdown_markdown([{"figure": "fig5a", "curve": "topk", "field": "bandwidth_hz", "x": 1e6,
        ...                            "energy_j": 0.1, "uplink_j": 0.09, "local_j": 0.01, "uplink_share": 0.9}]))
        | figure | curve | at | energy (J) | uplink (J) | user-side expert (J) | uplink share |
        |---|---|---|---|---|---|---|
        | fig5a | topk | bandwidth_hz = 1e+06 | 0.1 | 0.09 | 0.01 | 90.0% |
    """
    lines = [
        "| figure | curve | at | energy (J) | uplink (J) | user-side expert (J) | uplink share |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['figure']} | {r['curve']} | {r['field']} = {r['x']:.3g} | {r['energy_j']:.3g} | "
        f"{r['uplink_j']:.3g} | {r['local_j']:.3g} | {r['uplink_share']:.1%} |"
        for r in rows
    ]
    return "\n".join(lines)


def markdown(claims: list[Claim]) -> str:
    """A markdown table of claims ('|' inside a cell is escaped).

    Args:
        claims: the claims, one row each.

    Returns:
        The table as one string (header, separator, rows; no trailing newline).

    Example:
        >>> print(markdown([Claim("fig5a", "siftmoe below topk", "holds", "ratio [0.8]", "SIFTMOE.md 5.2")]))
        | figure | claim | verdict | evidence | source |
        |---|---|---|---|---|
        | fig5a | siftmoe below topk | holds | ratio [0.8] | SIFTMOE.md 5.2 |
    """

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    rows = ["| figure | claim | verdict | evidence | source |", "|---|---|---|---|---|"]
    rows += ["| " + " | ".join(cell(v) for v in dataclasses.astuple(c)) + " |" for c in claims]
    return "\n".join(rows)


def claims_json(claims: list[Claim]) -> str:
    """The claims as JSON for tools (claims.json beside REPORT.md): a list of dicts, one per claim.

    Args:
        claims: the claims.

    Returns:
        A JSON array of objects with keys figure, claim, verdict, evidence and source (newline-terminated).

    Example:
        >>> import json
        >>> json.loads(claims_json([Claim("fig5a", "siftmoe below topk", "not shown", "ratio [0.95]", "SIFTMOE.md")]))
        [{'figure': 'fig5a', 'claim': 'siftmoe below topk', 'verdict': 'not shown', 'evidence': 'ratio [0.95]',
          'source': 'SIFTMOE.md'}]
    """
    return json.dumps([dataclasses.asdict(c) for c in claims], indent=1) + "\n"
