"""The Flax NNX MoE lab: a small byte-level MoE language model trained on the Python standard library,
its calibration tables and the tightness of the paper's bounds on it.

Modules: `data` (corpus), `model` (MoELM), `train` (AdamW + orbax checkpoints), `calibrate`
(Fbar tables, B_max / beta estimates, `load_tables`), `tightness` (Prop. 1 / Thm. 1 checks, accuracy vs
eta) and `cli` (the `sift-jax moe` commands), `lab` (`quick_lab`). Importing this package is cheap: the
submodules load on first use.
"""

from __future__ import annotations


def quick_lab(out_dir, seed: int = 0, quick: bool = True) -> dict:
    """Train, calibrate and run the tightness lab; see `sift_jax.moe.lab.quick_lab`.

    Args:
        out_dir: output directory (checkpoint/, tightness/ and summary.json are written there).
        seed: seed of training, calibration and channel draws.
        quick: the tiny model and small settings (about a minute of CPU time) or the defaults.

    Returns:
        dict of the train, calibration and tightness summaries, with paths and figure paths.

    Example:
        The run is skipped in the doctests (it trains for about 30 s of CPU time; `sift-jax reproduce
        --quick` runs it). What quick=True trains (2 MoE layers of 4 experts, 200 steps), checked:

        >>> import tempfile
        >>> from sift_jax.moe.model import tiny_config
        >>> from sift_jax.moe.train import tiny_train_config
        >>> tiny_config().n_layers, tiny_config().n_experts, tiny_train_config().steps
        (2, 4, 200)
        >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
        ...     summary = quick_lab(d, seed=0)
        ...     summary["quick"], sorted(summary["paths"])
        (True, ['checkpoint', 'tightness'])
    """
    from sift_jax.moe.lab import quick_lab as _quick_lab

    return _quick_lab(out_dir, seed=seed, quick=quick)


def load_tables(path):
    """Calibration tables float32[L, N, N+1] of a checkpoint; see `sift_jax.moe.calibrate.load_tables`.

    Args:
        path: a checkpoint directory holding `calibration.npz` (``sift-jax moe calibrate``), or the file.

    Returns:
        float32[L, N, N+1] NumPy array: Fbar[l, i, j] mean mismatch norm of replacing expert i by j,
        column N = skip (units of the expert outputs). `load_tables(p)[l]` is a policy's `table`.

    Example:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.savez(pathlib.Path(d) / "calibration.npz", table=np.ones((3, 8, 9)))  # L = 3, N = 8
        ...     t = load_tables(d)
        >>> t.shape, t.dtype
        ((3, 8, 9), dtype('float32'))
    """
    from sift_jax.moe.calibrate import load_tables as _load_tables

    return _load_tables(path)


__all__ = ["load_tables", "quick_lab"]
