"""The Flax NNX MoE lab: a small byte-level MoE language model trained on the Python standard library,
its calibration tables and the tightness of the paper's bounds on it.

Modules: `data` (corpus), `model` (MoELM), `train` (AdamW + orbax checkpoints), `calibrate`
(Fbar tables, B_max / beta estimates, `load_tables`), `tightness` (Prop. 1 / Thm. 1 checks, accuracy vs
eta) and `cli` (the `sift-jax moe` commands, `quick_lab`). Importing this package is cheap: the
submodules load on first use.
"""

from __future__ import annotations


def quick_lab(out_dir, seed: int = 0, quick: bool = True) -> dict:
    """Train, calibrate and run the tightness lab; see `sift_jax.moe.cli.quick_lab`."""
    from sift_jax.moe.cli import quick_lab as _quick_lab

    return _quick_lab(out_dir, seed=seed, quick=quick)


def load_tables(path):
    """Calibration tables float32[L, N, N+1] of a checkpoint; see `sift_jax.moe.calibrate.load_tables`."""
    from sift_jax.moe.calibrate import load_tables as _load_tables

    return _load_tables(path)


__all__ = ["load_tables", "quick_lab"]
