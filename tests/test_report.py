"""Claim verdicts computed from data (REPORT.md)."""

import numpy as np
import xarray as xr

from sift_jax import report


def _ds(sift, topk, field="eta", half=0.01):
    xs = np.arange(len(sift), dtype=float)
    data = {}
    for stat, off in (("mean", 0.0), ("ci_lo", -half), ("ci_hi", half)):
        data[f"energy_per_token_j_{stat}"] = (("curve", field), np.array([sift, topk], float) + off)
    return xr.Dataset(data, coords={"curve": ["siftmoe", "topk"], field: xs}, attrs={"spec_name": "t"})


def test_below_allows_ties_but_needs_a_strict_saving():
    assert report.below(_ds([1.0, 0.5, 0.2], [1.0, 1.0, 1.0]), "siftmoe", "topk", "t").verdict == "holds"
    assert report.below(_ds([1.0, 1.0], [1.0, 1.0]), "siftmoe", "topk", "t").verdict == "fails"
    assert report.below(_ds([1.0, 1.2], [1.1, 1.1]), "siftmoe", "topk", "t").verdict == "fails"
    assert report.below(_ds([1.0, 0.99], [1.0, 1.0]), "siftmoe", "topk", "t").verdict == "holds (within CI)"


def test_monotone_and_gap_verdicts():
    assert report.monotone_decreasing(_ds([3.0, 2.0, 1.0], [4, 4, 4]), "siftmoe", "t").verdict == "holds"
    assert report.monotone_decreasing(_ds([3.0, 3.005, 1.0], [4, 4, 4]), "siftmoe", "t").verdict == "holds (within CI)"
    assert report.monotone_decreasing(_ds([1.0, 3.0], [4, 4]), "siftmoe", "t").verdict == "fails"
    # a strictly falling but flat curve (a drop far inside the CIs) is no evidence that energy falls
    flat = report.monotone_decreasing(_ds([1.0, 1.0 - 1e-7, 1.0 - 2e-7], [4, 4, 4]), "siftmoe", "t")
    assert flat.verdict == "holds (within CI)" and "-0.00%" in flat.evidence
    bw = "bandwidth_hz"
    assert report.gap_largest_at_tightest(_ds([1.0, 2.0], [5.0, 3.0], bw), "siftmoe", "topk", "t").verdict == "holds"
    assert report.gap_largest_at_tightest(_ds([1.0, 1.0], [2.0, 2.0], bw), "siftmoe", "topk", "t").verdict == "n/a"
    assert report.gap_largest_at_tightest(_ds([3.0, 1.0], [4.0, 5.0], bw), "siftmoe", "topk", "t").verdict == "fails"
