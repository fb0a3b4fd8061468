"""Figures: the paper's plotted y-range is drawn as a band and the y-limits hold both the data and the band."""

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from sift_jax import plots, targets


def _ds(means, field="bandwidth_hz", xs=(9e5, 1e6, 1.1e6, 1.2e6), name="fig5a", half=0.001):
    means = np.asarray(means, float)
    data = {
        f"energy_per_token_j_{k}": (("curve", field), means + d)
        for k, d in (("mean", 0.0), ("ci_lo", -half), ("ci_hi", half))
    }
    return xr.Dataset(
        data,
        coords={"curve": ["siftmoe", "topk"][: len(means)], field: list(xs)},
        attrs={"spec_name": name, "title": name},
    )


def _band_labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts() if "paper" in t.get_text()]


def test_band_and_limits_hold_data_and_band():
    # data far above the paper's 0.03 - 0.11 J (Fig. 5(a)): the limits reach down to the band
    fig = plots._figure(_ds([[1.0, 0.9, 0.8, 0.7], [2.0, 1.9, 1.8, 1.7]]), "energy_per_token_j", False, None)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo <= 0.03 and hi >= 2.0 + 0.001
    assert _band_labels(ax) == ["paper's plotted range (Fig. 5(a))"]
    plt.close(fig)
    # data far below the band: the limits reach up to 0.11
    fig = plots._figure(_ds([[0.001, 0.001, 0.001, 0.001]]), "energy_per_token_j", False, None)
    lo, hi = fig.axes[0].get_ylim()
    assert lo <= 0.001 - 0.001 and hi >= 0.11
    plt.close(fig)


def test_no_band_without_target_or_for_other_metrics():
    ds = _ds([[1.0, 0.9, 0.8, 0.7]], name="my_spec")
    fig = plots._figure(ds, "energy_per_token_j", None, None)
    assert _band_labels(fig.axes[0]) == []
    plt.close(fig)
    names = {f"energy_per_token_j_{k}": f"skip_rate_{k}" for k in ("mean", "ci_lo", "ci_hi")}
    skip = _ds([[0.1, 0.2, 0.3, 0.4]]).rename(names)
    fig = plots._figure(skip, "skip_rate", None, None)
    assert _band_labels(fig.axes[0]) == []
    plt.close(fig)
    # an explicit target applies whatever the dataset's name
    fig = plots._figure(ds, "energy_per_token_j", None, targets.get("fig6a"))
    assert _band_labels(fig.axes[0]) == ["paper's plotted range (Fig. 6(a))"]
    plt.close(fig)


def test_band_from_zero_on_a_log_axis(tmp_path):
    # Fig. 7(a) plots 0 - 0.5 J; on a log axis the band starts at the lower y-limit instead of 0
    ds = _ds([[1e-4, 1e-3, 1e-2, 1e-1]], xs=(7e5, 8e5, 9e5, 1e6), name="fig7a")
    fig = plots._figure(ds, "energy_per_token_j", True, None)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert ax.get_yscale() == "log" and 0 < lo <= 1e-4
    assert hi >= 0.5 and _band_labels(ax) == ["paper's plotted range (Fig. 7(a))"]
    plt.close(fig)
    png = plots.plot_dataset(ds, tmp_path / "fig7a.png")
    assert (tmp_path / "fig7a.png").stat().st_size > 1000 and png.endswith("fig7a.png")


def test_metric_labels_cover_every_registered_metric():
    from sift_jax import metrics

    assert plots._metric_label("uplink_energy_j") == "Uplink (radio) energy per token (J)"
    assert plots._metric_label("local_energy_j") == "User-side expert energy per token (J)"
    assert all(plots._metric_label(m) != m for m in metrics.names())  # every metric has a label of its own
    assert plots._metric_label("not_registered") == "not_registered"
