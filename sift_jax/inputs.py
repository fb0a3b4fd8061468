"""Real inputs for `simulate` and sweeps: mismatch tables and router logs from files, checked against the
scenario, with the sha256 of each file (recorded in results' provenance; `--resume` refuses a changed file).

- tables: float[L, N, N+1] (column N = skip) or one [N, N+1] for every layer, from a `.npz` written by
  `sift-jax calibrate` (`checkpoints.load_tables`), a `.npy`, or a MoE-lab calibration directory.
- router: float[L, T, N] router logits of T logged tokens per layer (or [T, N] for every layer), T >= M,
  from a `.npy` or the `router_logits` of a calibration `.npz`.
  Each task takes the M consecutive tokens starting at a uniformly drawn position (the same in every
  layer: the tokens of one sequence go through all layers) and turns them into Top-K gates with the
  model's own softmax (temperature 1; `Scenario.gate_temperature` shapes only the synthetic router).
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax import gating
from sift_jax.errors import ConfigError
from sift_jax.scenario import Scenario

__all__ = ["check_router", "check_tables", "draw_router", "file_sha256", "load_router", "load_tables"]


def file_sha256(path) -> str:
    """sha256 (hex) of a file's bytes, or of every file below a directory (sorted by relative path).

    Args:
        path: a file or directory.

    Returns:
        64 hex digits.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "x.bin")
        ...     _ = open(p, "wb").write(b"abc")
        ...     file_sha256(p)[:12]
        'ba7816bf8f01'
    """
    p = pathlib.Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(str(q.relative_to(p)).encode())
        with open(q, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_tables(sc: Scenario, tables) -> jax.Array:
    """Validate a mismatch table stack float[L, N, N+1] (or one [N, N+1] table used for every layer).

    Args:
        sc: the scenario (N = n_nodes, L = n_layers). tables: the array.

    Returns:
        float[L, N, N+1] in the default float dtype.

    Raises:
        ConfigError: a wrong shape, negative or non-finite entries.

    Example:
        >>> sc = Scenario(n_nodes=2, n_layers=3, top_k=1)
        >>> check_tables(sc, np.ones((2, 3))).shape
        (3, 2, 3)
        >>> check_tables(sc, np.ones((2, 2)))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: table = 'array of shape (2, 2)' is invalid: allowed is shape (3, 2, 3) or (2, 3)
    """
    arr = np.asarray(tables, dtype=np.float64)
    if arr.shape == (sc.n_nodes, sc.n_nodes + 1):
        arr = np.broadcast_to(arr, (sc.n_layers,) + arr.shape)
    if arr.shape != (sc.n_layers, sc.n_nodes, sc.n_nodes + 1):
        raise ConfigError(
            "table",
            f"array of shape {arr.shape}",
            f"shape ({sc.n_layers}, {sc.n_nodes}, {sc.n_nodes + 1}) or ({sc.n_nodes}, {sc.n_nodes + 1})",
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError("table", "an array with negative or non-finite entries", "finite values >= 0")
    return jnp.asarray(arr, dtype=jnp.result_type(float))


def load_tables(path, sc: Scenario) -> tuple[jax.Array, str]:
    """Tables from a file (`.npz` of `sift-jax calibrate`, `.npy`, or a MoE-lab calibration directory).

    Args:
        path: the file or directory. sc: the scenario they must match (N, L).

    Returns:
        (tables float[L, N, N+1], the file's sha256).

    Raises:
        ConfigError: a missing or unreadable file, or tables that do not match the scenario.

    Example:
        >>> load_tables("/nonexistent/tables.npz", Scenario())
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: tables = '/nonexistent/tables.npz' is invalid: allowed is an existing .npz, .npy
        or calibration directory
    """
    p = pathlib.Path(os.fspath(path))
    if not p.exists():
        raise ConfigError("tables", os.fspath(path), "an existing .npz, .npy or calibration directory")
    if p.is_dir():
        from sift_jax.moe.calibrate import load_tables as load_lab

        arr = load_lab(p)
    elif p.suffix == ".npz":
        from sift_jax.checkpoints import load_tables as load_npz

        arr = load_npz(p)
    else:
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ConfigError("tables", os.fspath(path), f"a readable .npy file ({err})") from None
    return check_tables(sc, arr), file_sha256(p)


def check_router(sc: Scenario, logits) -> jax.Array:
    """Validate router logits float[L, T, N] (or [T, N] for every layer) for `draw_router`.

    Args:
        sc: the scenario (N, L, M = n_tokens <= T). logits: the array (logit units).

    Returns:
        float32[L, T, N].

    Raises:
        ConfigError: not floating, non-finite, or a shape that does not match the scenario.

    Example:
        >>> sc = Scenario(n_nodes=4, n_layers=2, n_tokens=3, top_k=2)
        >>> check_router(sc, np.zeros((5, 4))).shape
        (2, 5, 4)
        >>> check_router(sc, np.zeros((2, 2, 4)))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: router = 'array of shape (2, 2, 4)' is invalid: allowed is float[L=2, T, N=4] or
        [T, N=4] with T >= n_tokens = 3 logged tokens
    """
    arr = np.asarray(logits)
    if arr.ndim == 2:
        arr = np.broadcast_to(arr, (sc.n_layers,) + arr.shape)
    allowed = (
        f"float[L={sc.n_layers}, T, N={sc.n_nodes}] or [T, N={sc.n_nodes}] with T >= n_tokens = {sc.n_tokens} "
        "logged tokens"
    )
    if arr.ndim != 3 or arr.shape[0] != sc.n_layers or arr.shape[2] != sc.n_nodes or arr.shape[1] < sc.n_tokens:
        raise ConfigError("router", f"array of shape {arr.shape}", allowed)
    if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
        raise ConfigError("router", f"array of dtype {arr.dtype}", "finite floating logits")
    return jnp.asarray(arr, jnp.float32)


def load_router(path, sc: Scenario) -> tuple[jax.Array, str]:
    """Router logits from a `.npy` file (`gating.load_logits`) or the `router_logits` of a `.npz` written by
    `sift-jax calibrate`, checked by `check_router`.

    Args:
        path: the .npy or .npz file. sc: the scenario they must match.

    Returns:
        (logits float32[L, T, N], the file's sha256).

    Raises:
        ConfigError: a missing or unreadable file, or logits that do not match.

    Example:
        >>> load_router("/nonexistent/router.npy", Scenario())
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: logits_path = '/nonexistent/router.npy' is invalid: allowed is a readable .npy
        file ...
    """
    if os.fspath(path).endswith(".npz"):
        from sift_jax.checkpoints import load_calibration

        logits = load_calibration(path).get("router_logits")
        if logits is None:
            raise ConfigError("router", os.fspath(path), "a .npz holding router_logits (written by sift-jax calibrate)")
        return check_router(sc, logits), file_sha256(path)
    return check_router(sc, gating.load_logits(path)), file_sha256(path)


def draw_router(key: jax.Array, logits: jax.Array, sc: Scenario) -> tuple[jax.Array, jax.Array]:
    """One task's gates from a router log: M consecutive logged tokens from a uniform start, every layer.

    Args:
        key: PRNG key. logits: float32[L, T, N] (`check_router`). sc: the scenario (M, K).

    Returns:
        (g float[L, M, K], topk int32[L, M, K]) as `gating.draw`.

    Example:
        >>> sc = Scenario(n_nodes=3, n_layers=1, n_tokens=2, top_k=1)
        >>> logits = jnp.array([[[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]]])   # token t prefers expert t
        >>> g, topk = draw_router(jax.random.key(0), logits, sc)
        >>> topk.shape, int(topk[0, 1, 0]) - int(topk[0, 0, 0])    # consecutive tokens
        ((1, 2, 1), 1)
    """
    start = jax.random.randint(key, (), 0, logits.shape[1] - sc.n_tokens + 1)
    window = jax.lax.dynamic_slice_in_dim(logits, start, sc.n_tokens, axis=1)
    g, topk = gating.from_logits(window, sc.top_k, 1.0)
    return g.astype(jnp.result_type(float)), topk
