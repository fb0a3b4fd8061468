"""The MoE lab in one call: train, calibrate and measure the bounds' tightness (`quick_lab`).

`sift-jax reproduce` runs it; the steps are the `sift-jax moe train | calibrate | tightness` commands
(`sift_jax.moe.cli`), whose outputs it writes in one directory.
"""

from __future__ import annotations

import json
import pathlib

__all__ = ["quick_lab"]


def _cached_train(ckpt: pathlib.Path, cfg, tc) -> dict | None:
    """The saved training summary when `ckpt` already holds a model trained with exactly (cfg, tc)."""
    try:
        meta = json.loads((ckpt / "config.json").read_text())
        if meta.get("model") == cfg.to_dict() and meta.get("train") == tc.to_dict() and (ckpt / "params").is_dir():
            return json.loads((ckpt / "train_summary.json").read_text())
    except (OSError, ValueError):
        pass
    return None


def quick_lab(out_dir, seed: int = 0, quick: bool = True) -> dict:
    """Train, calibrate and run the tightness lab in one call (used by `sift-jax reproduce`).

    quick=True: the tiny model (`tiny_config`, `tiny_train_config`: about 30 s of CPU time to train,
    about a minute for everything on 2 CPU cores) and a small tightness run (8 test windows, 2 channel
    draws). quick=False: the default model and settings (about 5 minutes of CPU time to train). A checkpoint
    already in `out_dir/checkpoint` that was trained with the same configurations is reused (cached).

    Writes `out_dir/checkpoint/` (checkpoint, calibration, train curve, table heatmaps),
    `out_dir/tightness/` (tightness.json and figures) and `out_dir/summary.json`.

    Args:
        out_dir: output directory (created if missing).
        seed: seed of the training run, the calibration estimators and the channel draws.
        quick: the tiny model and small settings (True) or the defaults (False).

    Returns:
        {"train", "calibration", "tightness": summaries, "paths": {...}, "figures": {name: path relative
        to the parent of out_dir (where a report next to out_dir links them)}, "figures_abs": {name: path},
        "quick": bool}. Units as in `sift_jax.moe.train.train`, `sift_jax.moe.calibrate.summarize` and
        `sift_jax.moe.tightness.run`.

    Example:
        The run is skipped in the doctests (it trains for about 30 s of CPU time; `sift-jax reproduce
        --quick`, tested in `tests/test_sweep.py`, runs it). What quick=True trains, checked:

        >>> import tempfile
        >>> from sift_jax.moe.model import tiny_config
        >>> from sift_jax.moe.train import tiny_train_config
        >>> tiny_config().n_layers, tiny_config().n_experts, tiny_train_config().steps
        (2, 4, 200)
        >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
        ...     summary = quick_lab(d)
        ...     sorted(summary["figures"])
        ['accuracy_vs_eta', 'calibration_tables', 'energy_vs_eta', 'prop1_ratio', 'thm1_ratio', 'train_curve']
    """
    from sift_jax.moe import data as data_lib
    from sift_jax.moe import tightness as tight_lib
    from sift_jax.moe.cli import do_calibrate, do_tightness, do_train, write_json
    from sift_jax.moe.model import MoEConfig, tiny_config
    from sift_jax.moe.train import TrainConfig, tiny_train_config

    out = pathlib.Path(out_dir)
    ckpt = out / "checkpoint"
    if quick:
        cfg, tc = tiny_config(), tiny_train_config(seed=seed)
        cal_kw = dict(n_windows=32, n_lipschitz_points=64, n_power_points=4, power_iters=20)
        tcfg = tight_lib.TightnessConfig(n_windows=8, batch_windows=8, n_draws=2, seed=seed, grid_batch=2)
    else:
        cfg, tc = MoEConfig(), TrainConfig(seed=seed)
        cal_kw = {}
        tcfg = tight_lib.TightnessConfig(seed=seed)
    corpus = data_lib.load_corpus(max_bytes_per_split=tc.max_bytes_per_split)
    train_summary = _cached_train(ckpt, cfg, tc)
    if train_summary is None:
        train_summary = do_train(ckpt, cfg, tc, corpus=corpus)
    else:
        train_summary = dict(train_summary, cached=True)
    cal = do_calibrate(ckpt, seed=seed, corpus=corpus, **cal_kw)
    tight = do_tightness(ckpt, out / "tightness", corpus=corpus, tc=tcfg)
    files = {"train_curve": ckpt / "train_curve.png", "calibration_tables": ckpt / "calibration_tables.png"}
    files.update({pathlib.Path(name).stem: out / "tightness" / name for name in tight["figures"]})
    base = out.resolve().parent
    summary = {
        "train": train_summary,
        "calibration": cal,
        "tightness": tight,
        "quick": quick,
        "paths": {"checkpoint": str(ckpt), "tightness": str(out / "tightness")},
        "figures": {k: str(v.resolve().relative_to(base)) for k, v in files.items()},
        "figures_abs": {k: str(v.resolve()) for k, v in files.items()},
    }
    write_json(out / "summary.json", summary)
    return summary
