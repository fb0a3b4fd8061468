"""Matplotlib figures of sweep results in the paper's style (one line per curve, 95% CI bands)."""

from __future__ import annotations

import os
import textwrap

import numpy as np

__all__ = ["plot_dataset"]

# field -> (axis label, scale to display units)
AXIS_LABELS = {
    "bandwidth_hz": ("Bandwidth between user and each helper $B_n$ (MHz)", 1e-6),
    "deadline_s": ("Latency threshold per layer $T$ (s)", 1.0),
    "eta": (r"Maximum tolerable error per layer $\eta$", 1.0),
    "max_tx_power_w": ("User transmit-power cap $p_{max}$ (W)", 1.0),
    "n_tokens": ("Prompt tokens $M$", 1.0),
    "max_distance_m": ("Maximum user-helper distance (m)", 1.0),
}
METRIC_LABELS = {
    "energy_per_token_j": "Average energy per token (J)",
    "deviation_bound": "Deviation bound per layer (Prop. 1)",
    "replace_rate": "Replaced Top-K slots (fraction)",
    "skip_rate": "Skipped Top-K slots (fraction)",
    "infeasible_rate": "Infeasible tasks (fraction)",
    "latency_s": "Latency per task (s)",
}
CURVE_NAMES = {
    "siftmoe": "SiftMoE", "topk": "Top-K (practical)", "topk-ideal": "Top-K (ideal)", "wdmoe": "WDMoE-style",
    "oracle": "Oracle", "siftmoe:dynamic": "SiftMoE + Prop. Dynamic", "siftmoe:closed-form": "SiftMoE + Prop. Dynamic",
    "siftmoe:uniform": "SiftMoE + Uniform", "siftmoe:dp": "SiftMoE + exact DP", "topk:dynamic": "Top-K + Prop. Dynamic",
    "topk:closed-form": "Top-K + Prop. Dynamic", "topk:uniform": "Top-K + Uniform",
}


def x_axis(ds) -> tuple[str, np.ndarray]:
    """The swept field plotted on x and its values."""
    dims = [d for d in ds.dims if d != "curve"]
    if dims == ["point"]:
        field = next(c for c in ds.coords if c not in ("curve", "point"))
        return field, np.asarray(ds[field].values, float)
    return dims[0], np.asarray(ds[dims[0]].values, float)


def plot_dataset(ds, path: str | os.PathLike, metric: str = "energy_per_token_j", log_y: bool | None = None) -> str:
    """Draw `metric` (mean and 95% CI band per curve) against the first swept field; write a PNG.

    Extra axes beyond the first are averaged out of the picture by taking their first value. The x axis
    is shown in display units (`AXIS_LABELS`, e.g. bandwidth in MHz); the y axis is logarithmic when
    the positive means span more than a factor 50 (log_y None).

    Args:
        ds: a sweep result (`sj.sweep.run`): dims (curve, *axes) or (curve, point), with variables
            `<metric>_mean`, `<metric>_ci_lo` and `<metric>_ci_hi` (the metric's unit, e.g. J).
        path: PNG file to write.
        metric: a name from `sj.METRICS`.
        log_y: force (True) or forbid (False) a log y axis; None decides from the data.

    Returns:
        The path written, as a string.

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
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    field, xs = x_axis(ds)
    label, scale = AXIS_LABELS.get(field, (field, 1.0))
    fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=120)
    sel = {d: 0 for d in ds.dims if d not in ("curve", field, "point")}
    for curve in ds["curve"].values:
        sub = ds.sel(curve=curve).isel(sel)
        mean = np.asarray(sub[f"{metric}_mean"].values, float)
        lo, hi = (np.asarray(sub[f"{metric}_ci_{k}"].values, float) for k in ("lo", "hi"))
        line, = ax.plot(xs * scale, mean, marker="o", ms=4, label=CURVE_NAMES.get(str(curve), str(curve)))
        ax.fill_between(xs * scale, np.maximum(lo, 0), hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel(label)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    values = np.asarray(ds[f"{metric}_mean"].values, float)
    values = values[np.isfinite(values) & (values > 0)]
    if log_y is None:
        log_y = values.size > 1 and values.max() / values.min() > 50
    if log_y:
        ax.set_yscale("log")
    ax.set_title(textwrap.fill(ds.attrs.get("title", ""), 64), fontsize=9)  # long titles wrap, never clip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
