"""Matplotlib figures of sweep results in the paper's style (one line per curve, 95% CI bands)."""

from __future__ import annotations

import os
import textwrap

import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.store import check_file

__all__ = ["paper_band", "plot_dataset"]

# field -> (axis label, scale to display units)
AXIS_LABELS = {
    "bandwidth_hz": ("Bandwidth between user and each helper $B_n$ (MHz)", 1e-6),
    "deadline_s": ("Latency threshold per layer $T$ (s)", 1.0),
    "eta": (r"Maximum tolerable error per layer $\eta$", 1.0),
    "max_tx_power_w": ("User transmit-power cap $p_{max}$ (W)", 1.0),
    "n_tokens": ("Prompt tokens $M$", 1.0),
    "max_distance_m": ("Maximum user-helper distance (m)", 1.0),
}
CURVE_NAMES = {
    "siftmoe": "SiftMoE",
    "topk": "Top-K (practical)",
    "topk-ideal": "Top-K (ideal)",
    "wdmoe": "WDMoE-style",
    "oracle": "Oracle",
    "siftmoe:dynamic": "SiftMoE + Prop. Dynamic",
    "siftmoe:closed-form": "SiftMoE + Prop. Dynamic",
    "siftmoe:uniform": "SiftMoE + Uniform",
    "siftmoe:dp": "SiftMoE + exact DP",
    "topk:dynamic": "Top-K + Prop. Dynamic",
    "topk:closed-form": "Top-K + Prop. Dynamic",
    "topk:uniform": "Top-K + Uniform",
}


def _metric_label(metric: str) -> str:
    """The registered metric's axis label (`sift_jax.metrics`), or its name for an unregistered one."""
    from sift_jax import metrics

    return metrics.get(metric).label if metric in metrics.names() else metric


def x_axis(ds) -> tuple[str, np.ndarray]:
    """The swept field plotted on x and its values."""
    dims = [d for d in ds.dims if d not in ("curve", "pair")]
    if dims == ["point"]:
        field = next(c for c in ds.coords if c not in ("curve", "point", "pair"))
        return field, np.asarray(ds[field].values, float)
    return dims[0], np.asarray(ds[dims[0]].values, float)


def paper_band(ds, metric: str = "energy_per_token_j", target=None) -> tuple | None:
    """The paper's plotted y-range of the panel `ds` reproduces, as a band to draw (or None).

    Args:
        ds: a sweep result; its `spec_name` attribute names the panel.
        metric: the plotted metric; only "energy_per_token_j" has a paper range.
        target: the panel's `targets.PanelTarget` (default: `targets.get(ds.attrs["spec_name"])`).

    Returns:
        (x_lo, x_hi, y_lo, y_hi, label): the target's x range (the swept field's SI unit), the plotted
        y-range (J) and a legend label; None without a target, for another metric, or when the target
        sweeps another field than `ds`.

    Example:
        >>> import xarray as xr
        >>> ds = xr.Dataset(coords={"curve": ["topk"], "bandwidth_hz": [9e5, 1.2e6]}, attrs={"spec_name": "fig5a"})
        >>> paper_band(ds)
        (900000.0, 1200000.0, 0.03, 0.11, "paper's plotted range (Fig. 5(a))")
        >>> paper_band(ds, "skip_rate") is None, paper_band(ds.assign_attrs(spec_name="mine")) is None
        (True, True)
    """
    from sift_jax import targets

    if metric != "energy_per_token_j":
        return None
    target = target if target is not None else targets.get(str(ds.attrs.get("spec_name", "")))
    if target is None or target.field != x_axis(ds)[0]:
        return None
    return (*target.x_range, *target.y_range, f"paper's plotted range ({target.figure})")


def _y_limits(values: np.ndarray, band: tuple | None, log_y: bool) -> tuple[float, float] | None:
    """y-limits (with a 5% margin, or a factor 1.3 on a log axis) holding the data and the band."""
    ys = values[np.isfinite(values)]
    if band is not None:
        ys = np.concatenate([ys, [band[2], band[3]]])
    if log_y:
        ys = ys[ys > 0]
    if ys.size == 0:
        return None
    lo, hi = float(ys.min()), float(ys.max())
    if log_y:
        return lo / 1.3, hi * 1.3
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-12)
    return (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad


def _figure(ds, metric: str, log_y: bool | None, target):
    """The matplotlib figure of `plot_dataset` (not saved)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone

    field, xs = x_axis(ds)
    label, scale = AXIS_LABELS.get(field, (field, 1.0))
    fig = Figure(figsize=(5.2, 3.8), dpi=120)
    ax = fig.subplots()
    sel = {d: 0 for d in ds.dims if d not in ("curve", "pair", field, "point")}
    band = paper_band(ds, metric, target)
    shown = []
    for curve in ds["curve"].values:
        sub = ds.sel(curve=curve).isel(sel)
        mean = np.asarray(sub[f"{metric}_mean"].values, float)
        lo, hi = (np.asarray(sub[f"{metric}_ci_{k}"].values, float) for k in ("lo", "hi"))
        (line,) = ax.plot(xs * scale, mean, marker="o", ms=4, label=CURVE_NAMES.get(str(curve), str(curve)))
        ax.fill_between(xs * scale, np.maximum(lo, 0), hi, color=line.get_color(), alpha=0.2, lw=0)
        shown += [mean, np.maximum(lo, 0), hi]
    ax.set_xlabel(label)
    ax.set_ylabel(_metric_label(metric))
    values = np.asarray(ds[f"{metric}_mean"].values, float)
    values = values[np.isfinite(values) & (values > 0)]
    if band is not None:
        values = np.concatenate([values, [v for v in band[2:4] if v > 0]])
    if log_y is None:
        log_y = values.size > 1 and values.max() / values.min() > 50
    if log_y:
        ax.set_yscale("log")
    limits = _y_limits(np.concatenate(shown) if shown else np.array([]), band, log_y)
    if band is not None:
        x_lo, x_hi, y_lo, y_hi, text = band
        y_lo = y_lo if y_lo > 0 or not log_y else (limits[0] if limits else y_hi / 10)
        ax.fill_between([x_lo * scale, x_hi * scale], y_lo, y_hi, color="0.6", alpha=0.2, lw=0, zorder=0, label=text)
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_title(textwrap.fill(ds.attrs.get("title", ""), 64), fontsize=9)  # long titles wrap, never clip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_dataset(
    ds, path: str | os.PathLike, metric: str = "energy_per_token_j", log_y: bool | None = None, target=None
) -> str:
    """Draw `metric` (mean and 95% CI band per curve) against the first swept field; write a PNG.

    Extra axes beyond the first are averaged out of the picture by taking their first value. The x axis
    is shown in display units (`AXIS_LABELS`, e.g. bandwidth in MHz); the y axis is logarithmic when
    the positive means (and the paper's band) span more than a factor 50 (log_y None). For a paper panel
    (a `targets.PanelTarget`) and energy_per_token_j, the paper's plotted y-range is drawn as a light grey
    band over the target's x range (`paper_band`), and the y-limits hold both the data and the band.

    Args:
        ds: a sweep result (`sj.sweep.run`): dims (curve, *axes) or (curve, point), with variables
            `<metric>_mean`, `<metric>_ci_lo` and `<metric>_ci_hi` (the metric's unit, e.g. J).
        path: image file to write, in an existing directory (".png" is added when it has no suffix; the
            suffix picks the format, e.g. .pdf, .svg).
        metric: a name from `sj.METRICS`.
        log_y: force (True) or forbid (False) a log y axis; None decides from the data.
        target: the panel's targets (default: `targets.get(ds.attrs["spec_name"])`).

    Returns:
        The path written, as a string.

    Raises:
        ConfigError: `path` is a directory, its directory is missing or read-only, or the format is unknown.

    Example:
        >>> import os, tempfile
        >>> import xarray as xr
        >>> ds = xr.Dataset({f"energy_per_token_j_{k}": (("curve", "eta"), [[2.0 + d, 1.0 + d]])
        ...                  for k, d in (("mean", 0.0), ("ci_lo", -0.1), ("ci_hi", 0.1))},
        ...                 coords={"curve": ["siftmoe"], "eta": [0.0, 1.5]}, attrs={"title": "demo"})
        >>> with tempfile.TemporaryDirectory() as out:
        ...     png = plot_dataset(ds, os.path.join(out, "energy.png"))
        ...     os.path.basename(png), open(png, "rb").read(4)[1:]
        ('energy.png', b'PNG')

        Named like Fig. 4(b), the same data get the paper's plotted range (0.5 - 0.8 J) as a grey band:

        >>> with tempfile.TemporaryDirectory() as out:
        ...     png = plot_dataset(ds.assign_attrs(spec_name="fig4b"), os.path.join(out, "fig4b.png"))
        ...     os.path.getsize(png) > 1000
        True
    """
    path = check_file(path, "out")
    path = path if path.suffix else path.with_suffix(".png")
    fig = _figure(ds, metric, log_y, target)
    try:
        fig.savefig(path)
    except (OSError, ValueError) as err:
        raise ConfigError("out", str(path), f"a writable image file (.png, .pdf, .svg, ...; {err})") from None
    return str(path)
