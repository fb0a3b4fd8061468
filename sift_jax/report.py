"""The paper's qualitative claims, checked on sweep data with confidence intervals (for REPORT.md)."""

from __future__ import annotations

import dataclasses

import numpy as np

from sift_jax.plots import x_axis

__all__ = ["Claim", "below", "claims_for", "gap_largest_at_tightest", "markdown", "monotone_decreasing"]


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim on one figure: verdict is 'holds', 'holds (within CI)', 'fails' or 'n/a'.

    Attributes:
        figure: the spec name of the figure. claim: the claim in words.
        verdict: 'holds', 'holds (within CI)', 'fails' or 'n/a' (no feasible data to judge).
        evidence: the numbers behind the verdict (means, ratios or gaps).

    Example:
        >>> c = Claim("fig5a", "siftmoe below topk everywhere", "holds", "siftmoe/topk mean ratio [0.8]")
        >>> c.verdict in ("holds", "holds (within CI)")
        True
    """

    figure: str
    claim: str
    verdict: str
    evidence: str


def _series(ds, curve: str, metric: str = "energy_per_token_j"):
    sub = ds.sel(curve=curve)
    sel = {d: 0 for d in sub.dims if d not in (x_axis(ds)[0], "point")}
    sub = sub.isel(sel)
    return tuple(np.asarray(sub[f"{metric}_{k}"].values, float) for k in ("mean", "ci_lo", "ci_hi"))


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def monotone_decreasing(ds, curve: str, figure: str) -> Claim:
    """Energy decreasing along the swept field: 'holds' if no step's mean rises and the whole drop is larger
    than the CIs (the last point's CI lies below the first's); 'holds (within CI)' if every rise stays inside
    the overlap of the two points' 95% CIs and the curve is otherwise flat within its CIs (e.g. a drop of
    1e-4 relative is no evidence of "energy falls as B grows"); 'fails' otherwise.

    Args:
        ds: a sweep result with `energy_per_token_j_{mean,ci_lo,ci_hi}` (J); axes beyond the first
            swept one are taken at their first value.
        curve: the curve label to check (e.g. "siftmoe").
        figure: figure name recorded in the Claim.

    Returns:
        A `Claim` ('n/a' if a point has no feasible sample), the means as evidence.

    Example:
        A hand-made result: SiftMoE's energy (J) falls from 3 to 2 as eta grows, Top-K's from 3 to 2.5
        (equal at eta = 0, as by construction), each with a 95% CI of +-0.1:

        >>> import xarray as xr
        >>> ds = xr.Dataset({f"energy_per_token_j_{k}": (("curve", "eta"), [[3.0 + d, 2.0 + d], [3.0 + d, 2.5 + d]])
        ...                  for k, d in (("mean", 0.0), ("ci_lo", -0.1), ("ci_hi", 0.1))},
        ...                 coords={"curve": ["siftmoe", "topk"], "eta": [0.0, 1.5]}, attrs={"spec_name": "demo"})
        >>> monotone_decreasing(ds, "siftmoe", "demo")
        Claim(figure='demo', claim='siftmoe energy decreases as eta grows', verdict='holds', evidence='means [3, 2], first to last -33.33%')
        >>> flat = xr.DataArray([[0.0, 0.9999], [0.0, 0.0]], dims=("curve", "eta"))  # siftmoe: 3 -> 2.9999
        >>> monotone_decreasing(ds + flat, "siftmoe", "demo").verdict  # falls, but by far less than the CIs
        'holds (within CI)'
        >>> shift = xr.DataArray([[0.0, 1.05], [0.0, 0.0]], dims=("curve", "eta"))  # siftmoe: 3 -> 3.05
        >>> monotone_decreasing(ds + shift, "siftmoe", "demo").verdict  # a rise of 0.05 inside the CIs
        'holds (within CI)'
        >>> monotone_decreasing(ds + 2 * shift, "siftmoe", "demo").verdict  # 3 -> 4.1: CIs [2.9, 3.1], [4, 4.2]
        'fails'
    """
    field, _ = x_axis(ds)
    mean, lo, hi = _series(ds, curve)
    text = f"{curve} energy decreases as {field} grows"
    if not np.all(np.isfinite(mean)):
        return Claim(figure, text, "n/a", "some points have no feasible sample")
    rises = np.diff(mean) > 0
    if not rises.any() and hi[-1] < lo[0]:
        verdict = "holds"
    elif np.all(lo[1:][rises] <= hi[:-1][rises]):
        verdict = "holds (within CI)"
    else:
        verdict = "fails"
    change = (mean[-1] - mean[0]) / mean[0] if mean[0] > 0 else np.nan
    return Claim(figure, text, verdict, f"means {_fmt(mean)}, first to last {change:+.2%}")


def below(ds, low: str, high: str, figure: str) -> Claim:
    """`low` energy at or below `high` at every point and strictly below somewhere (SiftMoE equals Top-K at
    eta = 0 by construction): 'holds' when, where the means differ, the CIs separate; 'holds (within CI)'
    when the means agree with the claim but some CIs overlap.

    Args:
        ds: a sweep result with `energy_per_token_j_{mean,ci_lo,ci_hi}` (J).
        low, high: curve labels; the claim is low <= high.
        figure: figure name recorded in the Claim.

    Returns:
        A `Claim` with the low/high mean ratio per point as evidence.

    Example:
        A hand-made result: SiftMoE's energy (J) falls from 3 to 2 as eta grows, Top-K's from 3 to 2.5
        (equal at eta = 0, as by construction), each with a 95% CI of +-0.1:

        >>> import xarray as xr
        >>> ds = xr.Dataset({f"energy_per_token_j_{k}": (("curve", "eta"), [[3.0 + d, 2.0 + d], [3.0 + d, 2.5 + d]])
        ...                  for k, d in (("mean", 0.0), ("ci_lo", -0.1), ("ci_hi", 0.1))},
        ...                 coords={"curve": ["siftmoe", "topk"], "eta": [0.0, 1.5]}, attrs={"spec_name": "demo"})
        >>> c = below(ds, "siftmoe", "topk", "demo")
        >>> c.verdict, c.evidence  # at eta = 1.5: 2.1 < 2.4, the CIs separate
        ('holds', 'siftmoe/topk mean ratio [1, 0.8]')
        >>> below(ds, "topk", "siftmoe", "demo").verdict
        'fails'
    """
    m1, lo1, hi1 = _series(ds, low)
    m2, lo2, hi2 = _series(ds, high)
    text = f"{low} below {high} everywhere"
    ok = np.isfinite(m1) & np.isfinite(m2)
    if not ok.any():
        return Claim(figure, text, "n/a", "no feasible samples")
    diff = ok & ~np.isclose(m1, m2, rtol=1e-9, atol=0.0)
    if not np.all(m1[ok] <= m2[ok] * (1 + 1e-9)) or not diff.any():
        verdict = "fails"
    elif np.all(hi1[diff] < lo2[diff]):
        verdict = "holds"
    else:
        verdict = "holds (within CI)"
    ratio = m1[ok] / np.where(m2[ok] > 0, m2[ok], np.nan)
    return Claim(figure, text, verdict, f"{low}/{high} mean ratio {_fmt(ratio)}")


def gap_largest_at_tightest(ds, low: str, high: str, figure: str) -> Claim:
    """The saving (high - low) is largest at the smallest value of the swept field.

    Args:
        ds: a sweep result with `energy_per_token_j_mean` (J).
        low, high: curve labels; the saving is high - low.
        figure: figure name recorded in the Claim.

    Returns:
        A `Claim` with the gaps (J) as evidence; 'n/a' when the gap does not vary along the field.

    Example:
        A hand-made result: SiftMoE's energy (J) falls from 3 to 2 as eta grows, Top-K's from 3 to 2.5
        (equal at eta = 0, as by construction), each with a 95% CI of +-0.1:

        >>> import xarray as xr
        >>> ds = xr.Dataset({f"energy_per_token_j_{k}": (("curve", "eta"), [[3.0 + d, 2.0 + d], [3.0 + d, 2.5 + d]])
        ...                  for k, d in (("mean", 0.0), ("ci_lo", -0.1), ("ci_hi", 0.1))},
        ...                 coords={"curve": ["siftmoe", "topk"], "eta": [0.0, 1.5]}, attrs={"spec_name": "demo"})
        >>> c = gap_largest_at_tightest(ds, "siftmoe", "topk", "demo")
        >>> c.verdict, c.evidence  # the saving grows with eta: largest at the largest value
        ('fails', 'gaps [0, 0.5]')
    """
    field, xs = x_axis(ds)
    m1, _, _ = _series(ds, low)
    m2, _, _ = _series(ds, high)
    gap = m2 - m1
    text = f"saving of {low} over {high} largest at the smallest {field}"
    if not np.all(np.isfinite(gap)):
        return Claim(figure, text, "n/a", "some points have no feasible sample")
    if np.allclose(gap, gap[0], rtol=1e-6, atol=0.0):
        return Claim(figure, text, "n/a", f"the saving does not vary with {field}: gaps {_fmt(gap)}")
    verdict = "holds" if int(np.argmax(gap)) == int(np.argmin(xs)) else "fails"
    return Claim(figure, text, verdict, f"gaps {_fmt(gap)}")


def claims_for(ds) -> list[Claim]:
    """The claims the paper makes about a figure like `ds`, derived from its curves and axis.

    SiftMoE curves decrease along eta, bandwidth and deadline axes; each SiftMoE curve lies below its
    Top-K partner (the same bit loading), with the largest saving at the tightest bandwidth; under fast
    fading the dynamic bit loading lies below uniform and the exact DP below the dynamic one.

    Args:
        ds: a sweep result (`sj.sweep.run`); its `spec_name` attribute names the figure.

    Returns:
        A list of `Claim`s (empty when the curves admit none).

    Example:
        A hand-made result: SiftMoE's energy (J) falls from 3 to 2 as eta grows, Top-K's from 3 to 2.5
        (equal at eta = 0, as by construction), each with a 95% CI of +-0.1:

        >>> import xarray as xr
        >>> ds = xr.Dataset({f"energy_per_token_j_{k}": (("curve", "eta"), [[3.0 + d, 2.0 + d], [3.0 + d, 2.5 + d]])
        ...                  for k, d in (("mean", 0.0), ("ci_lo", -0.1), ("ci_hi", 0.1))},
        ...                 coords={"curve": ["siftmoe", "topk"], "eta": [0.0, 1.5]}, attrs={"spec_name": "demo"})
        >>> [(c.claim, c.verdict) for c in claims_for(ds)]
        [('siftmoe energy decreases as eta grows', 'holds'), ('siftmoe below topk everywhere', 'holds')]
    """
    figure = ds.attrs.get("spec_name", "?")
    field, _ = x_axis(ds)
    curves = [str(c) for c in ds["curve"].values]
    out = []
    sift = [c for c in curves if c.split(":")[0] == "siftmoe"]
    if field in ("eta", "bandwidth_hz", "deadline_s"):
        out += [monotone_decreasing(ds, c, figure) for c in sift]
    for c in sift:
        bits = c.partition(":")[2]
        partner = "topk" + (f":{bits}" if bits else "")
        if partner in curves:
            out.append(below(ds, c, partner, figure))
            if field == "bandwidth_hz":
                out.append(gap_largest_at_tightest(ds, c, partner, figure))
    for policy in ("siftmoe", "topk"):
        dyn = next((f"{policy}:{b}" for b in ("dynamic", "closed-form") if f"{policy}:{b}" in curves), None)
        if dyn and f"{policy}:uniform" in curves:
            out.append(below(ds, dyn, f"{policy}:uniform", figure))
        if policy == "siftmoe" and dyn and "siftmoe:dp" in curves:
            out.append(below(ds, "siftmoe:dp", dyn, figure))
    return out


def markdown(claims: list[Claim]) -> str:
    """A markdown table of claims.

    Args:
        claims: the claims, one row each.

    Returns:
        The table as one string (header, separator, rows; no trailing newline).

    Example:
        >>> print(markdown([Claim("fig5a", "siftmoe below topk everywhere", "holds", "ratio [0.8]")]))
        | figure | claim | verdict | evidence |
        |---|---|---|---|
        | fig5a | siftmoe below topk everywhere | holds | ratio [0.8] |
    """
    rows = ["| figure | claim | verdict | evidence |", "|---|---|---|---|"]
    rows += [f"| {c.figure} | {c.claim} | {c.verdict} | {c.evidence} |" for c in claims]
    return "\n".join(rows)
