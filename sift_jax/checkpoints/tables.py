"""The calibration file: one .npz of tables, estimates and provenance (`sift-jax calibrate`'s output).

`save_calibration` writes what `calibrate_checkpoint` returns; `load_tables` gives the tables
float32[L, N, N+1] (column N = skip) that a sweep or `simulate` uses, `load_calibration` everything.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.provenance import provenance

__all__ = ["ARRAY_KEYS", "TEXT_KEYS", "load_calibration", "load_tables", "save_calibration"]

ARRAY_KEYS = ("tables", "b_max", "beta_fd", "beta_pi", "beta_max", "router_logits")
TEXT_KEYS = (
    "layout",
    "checkpoint",
    "checkpoint_files",
    "hidden_states",
    "layer_names",
    "settings",
    "model_config",
    "provenance",
)


def save_calibration(path, result: dict) -> pathlib.Path:
    """Write a calibration to one .npz (written whole, then renamed into place), with provenance.

    Keys: the float32 arrays `tables` [L, N, N+1], `b_max`, `beta_fd`, `beta_pi` [L, N], `beta_max` [L],
    `router_logits` [L, T, N]; text: `layout`, `checkpoint`, `hidden_states`, `layer_names` (JSON list),
    `checkpoint_files`, `settings`, `model_config` (JSON) and `provenance` (JSON of
    `sift_jax.provenance.provenance()`).

    Args:
        path: the .npz path (written exactly there; its directory is created).
        result: `calibrate_checkpoint`'s dict.

    Returns:
        pathlib.Path of the file.

    Example:
        A hand-made result (what `calibrate_checkpoint` returns), written and read back:

        >>> import tempfile
        >>> L, N, T = 2, 3, 5  # MoE layers, experts, tokens
        >>> result = {"tables": np.ones((L, N, N + 1)), "beta_max": np.ones(L), "router_logits": np.zeros((L, T, N)),
        ...           **{k: np.ones((L, N)) for k in ("b_max", "beta_fd", "beta_pi")},
        ...           "layout": "mixtral", "checkpoint": "ckpt", "checkpoint_files": {"model.safetensors": 4096},
        ...           "hidden_states": "drawn", "layer_names": ("model.layers.0", "model.layers.1"),
        ...           "settings": {"seed": 0}, "model_config": {"model_type": "mixtral"}}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_calibration(f"{d}/out/tables.npz", result)
        ...     cal = load_calibration(path)
        >>> path.name, cal["tables"].shape, cal["tables"].dtype, cal["layer_names"], cal["settings"]
        ('tables.npz', (2, 3, 4), dtype('float32'), ('model.layers.0', 'model.layers.1'), {'seed': 0})
        >>> "jax" in cal["provenance"]
        True
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = {
        "layout": result["layout"],
        "checkpoint": result["checkpoint"],
        "hidden_states": result["hidden_states"],
        "checkpoint_files": json.dumps(result["checkpoint_files"], sort_keys=True),
        "layer_names": json.dumps(list(result["layer_names"])),
        "settings": json.dumps(result["settings"], sort_keys=True),
        "model_config": json.dumps(result["model_config"], sort_keys=True),
        "provenance": json.dumps(provenance(), sort_keys=True),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                **{k: np.asarray(result[k], np.float32) for k in ARRAY_KEYS},
                **{k: np.asarray(v) for k, v in text.items()},
            )
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_calibration(path) -> dict:
    """Read a file written by `save_calibration`: arrays as NumPy, `layer_names` a tuple,
    `checkpoint_files`, `settings`, `model_config` and `provenance` dicts, the other text keys strings.

    Args:
        path: the .npz file.

    Returns:
        dict: the keys of `save_calibration`.

    Raises:
        ConfigError: not a readable .npz, or keys missing.

    Example:
        (`save_calibration` shows a round trip.) An .npz holding tables only is refused:

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.savez(f"{d}/t.npz", tables=np.zeros((1, 2, 3), np.float32))
        ...     load_calibration(f"{d}/t.npz")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: tables .../t.npz: missing b_max, beta_fd, ... (not written by `sift-jax calibrate`)
    """
    path = pathlib.Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(
            "tables", str(path), "a readable .npz file", message=f"tables {path} is not a readable .npz file ({err})"
        ) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ConfigError("tables", str(path), "an .npz file written by `sift-jax calibrate` (this is an .npy array)")
    with z:
        missing = [k for k in ARRAY_KEYS + TEXT_KEYS if k not in z]
        out = {k: z[k] for k in ARRAY_KEYS if k in z}
        text = {k: str(z[k]) for k in TEXT_KEYS if k in z}
    if missing:
        raise ConfigError(
            "tables",
            str(path),
            "a file written by `sift-jax calibrate`",
            message=f"tables {path}: missing {', '.join(missing)} (not written by `sift-jax calibrate`)",
        )
    out.update(text)
    out["layer_names"] = tuple(json.loads(text["layer_names"]))
    for k in ("checkpoint_files", "settings", "model_config", "provenance"):
        out[k] = json.loads(text[k])
    return out


def load_tables(path) -> np.ndarray:
    """The tables float32[L, N, N+1] (column N = skip) of a `save_calibration` file.

    Args:
        path: the .npz file.

    Returns:
        np.ndarray float32[L, N, N+1], in the units of the expert outputs.

    Raises:
        ConfigError: unreadable, or `tables` not [L, N, N+1].

    Example:
        A full write-and-read round trip is `save_calibration`'s example; a missing file is one clear error:

        >>> load_tables("/nonexistent/tables.npz")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: tables /nonexistent/tables.npz is not a readable .npz file ...
    """
    tables = load_calibration(path)["tables"]
    if tables.ndim != 3 or tables.shape[2] != tables.shape[1] + 1:
        raise ConfigError("tables", f"array of shape {tables.shape}", "float[L, N, N+1]")
    return tables
