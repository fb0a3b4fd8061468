"""Offline calibration of a trained MoE model (paper §2.8, Assumptions 1-2).

From the MoE-layer inputs z of calibration tokens (deterministic windows of the *train* split, the
calibration distribution) every expert of every layer is run on the same hidden states, giving
outputs [L, S, N, d]; then

- ``table``  float[L, N, N+1]: Fbar[l, i, j] = mean_s ||FFN_i(z_s) - FFN_j(z_s)||, Fbar[l, i, N] =
  mean_s ||FFN_i(z_s)|| (skip), via `sift_jax.similarity.mismatch_tables`;
- ``b_max``  float[L, N]: max_s ||FFN_i(z_s)|| (`sift_jax.bounds.estimate_b_max`; empirical);
- ``beta_fd`` float[L, N]: finite-difference Lipschitz estimates (`bounds.lipschitz_finite_difference`);
- ``beta_pi`` float[L, N]: Jacobian spectral norms by power iteration, max over points
  (`bounds.lipschitz_power_iteration`);
- ``beta_max`` float[L]: max over experts of max(beta_fd, beta_pi) (the beta_{E,max} of Thm. 1);
- gate statistics: expert shares of the Top-1 and of all Top-K slots [L, N], mean gate per slot
  [L, K], mean router entropy [L] (nats), mean output norm [L, N].

All estimates are empirical over the calibration sample, not certified constants.

Saved next to the checkpoint as ``calibration.npz`` (arrays) and ``calibration.json`` (summary);
`load_tables(path)` returns the [L, N, N+1] table from either file or the checkpoint directory, so
any policy, `simulate` run or sweep can use it.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sift_jax import bounds, similarity
from sift_jax.errors import ConfigError
from sift_jax.moe import data as data_lib
from sift_jax.moe.model import MoELM

__all__ = ["calibrate", "collect", "load_calibration", "load_tables", "save_calibration", "summarize"]

CALIBRATION_NPZ = "calibration.npz"
CALIBRATION_JSON = "calibration.json"
ARRAY_KEYS = (
    "table",
    "b_max",
    "beta_fd",
    "beta_pi",
    "beta_max",
    "load_top1",
    "load_slots",
    "gate_mean_by_slot",
    "router_entropy",
    "mean_output_norm",
)


def collect(model: MoELM, inputs: np.ndarray, batch: int = 16, selection_fn=None) -> dict:
    """Run the model on windows and gather per-layer internals, flattened over tokens.

    The plain Top-K forward (no substitution); `calibrate` uses it on windows of the train split.

    Args:
        model: the MoE model. inputs: int32[S_seq, T] byte windows (T <= context), e.g. the inputs of
            `sift_jax.moe.data.eval_windows`.
        batch: windows per forward call.
        selection_fn: ignored (accepted for compatibility; the forward is always plain Top-K).

    Returns:
        dict of NumPy arrays, tokens flattened to S = S_seq * T: "expert_outputs" [L, S, N, d]
        (FFN_i(z) of every expert), "moe_inputs" z [L, S, d], "gates" [L, S, K], "topk" [L, S, K],
        "router_probs" [L, S, N].

    Example:
        A tiny model with all-zero weights (set without running the random initialisers, to keep
        the example fast; a trained model comes from `sift_jax.moe.train`). Its router logits tie,
        but whatever the weights, the K = 2 Top-K gates of every token sum to 1 (gate_norm "topk").

        >>> from sift_jax.moe.model import init_model, tiny_config
        >>> model = nnx.eval_shape(lambda: init_model(tiny_config()))
        >>> nnx.update(model, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), nnx.state(model)))
        >>> got = collect(model, np.zeros((2, 8), np.int32))            # S = 2 * 8 tokens
        >>> got["expert_outputs"].shape, got["gates"].shape, got["router_probs"].shape
        ((2, 16, 4, 32), (2, 16, 2), (2, 16, 4))
        >>> bool(np.allclose(got["gates"].sum(-1), 1.0))
        True
    """
    graphdef, params = nnx.split(model, nnx.Param)
    keys = ("expert_outputs", "moe_inputs", "gates", "topk", "router_probs")
    run = _collect_fn(graphdef)
    parts = {k: [] for k in keys}
    for i in range(0, inputs.shape[0], batch):
        out = run(params, jnp.asarray(inputs[i : i + batch]))
        for k in keys:
            v = np.asarray(out[k])
            parts[k].append(v.reshape(v.shape[0], -1, *v.shape[3:]))
    return {k: np.concatenate(v, axis=1) for k, v in parts.items()}


def _stacked_moe_params(model: MoELM):
    """(graphdef, params stacked over layers) of the MoE layers (identical structure in every layer)."""
    splits = [nnx.split(blk.moe, nnx.Param) for blk in model.blocks]
    graphdef = splits[0][0]
    return graphdef, jax.tree.map(lambda *a: jnp.stack(a), *[p for _, p in splits])


@functools.lru_cache(maxsize=16)
def _estimators(graphdef, n_tokens: int, n_fd: int, n_pi: int, power_iters: int, fd_eps: float, fd_directions: int):
    """Jitted per-layer estimator (params, zs [S, d], key) -> (b_max [N], beta_fd [N], beta_pi [N])."""

    def est(params, zs, key):
        def experts(z):
            return nnx.merge(graphdef, params).expert_outputs(z)  # [d] -> [N, d]

        k_pts, k_fd, k_pi, k_pts2 = jax.random.split(key, 4)
        b_max = bounds.estimate_b_max(experts, zs, batch_size=1024)
        idx = jax.random.choice(k_pts, n_tokens, (n_fd,), replace=False)
        beta_fd = bounds.lipschitz_finite_difference(experts, zs[idx], k_fd, eps=fd_eps, n_directions=fd_directions)
        idx2 = jax.random.choice(k_pts2, n_tokens, (n_pi,), replace=False)
        beta_pi = bounds.lipschitz_power_iteration(experts, zs[idx2], k_pi, iters=power_iters)
        return b_max, beta_fd, beta_pi

    return jax.jit(est)


@functools.lru_cache(maxsize=16)
def _collect_fn(graphdef):
    keys = ("expert_outputs", "moe_inputs", "gates", "topk", "router_probs")

    def run(p, x):
        _, aux = nnx.merge(graphdef, p)(x, return_internals=True)
        return {k: aux[k] for k in keys}

    return jax.jit(run)


def calibrate(
    model: MoELM,
    tokens: np.ndarray,
    n_windows: int = 64,
    seed: int = 0,
    n_lipschitz_points: int = 256,
    n_power_points: int = 16,
    power_iters: int = 50,
    fd_eps: float = 1e-2,
    fd_directions: int = 8,
) -> dict:
    """Calibration tables, B_max / beta estimates and gate statistics.

    Args:
        model: a trained `MoELM`.
        tokens: uint8[n] calibration stream (use the train split).
        n_windows: evenly spaced windows of `context` bytes (S = n_windows * context tokens).
        seed: PRNG seed of the Lipschitz estimators (points and directions).
        n_lipschitz_points: calibration states used by the finite-difference estimate (random subset).
        n_power_points: states used by the power iteration (random subset). power_iters: iterations.
        fd_eps: finite-difference step (input units; LayerNorm outputs have norm ~ sqrt(d)).
        fd_directions: random unit directions per point.

    Returns:
        dict of NumPy arrays (see the module docstring) plus "n_tokens" and "config" (the
        estimator settings).

    Raises:
        ConfigError: `tokens` too short for `n_windows` windows of `context` bytes.

    Example:
        A tiny untrained model on 4 windows (S = 128 tokens). The calibration call is skipped in the
        doctests: it compiles the forward pass and the Lipschitz estimators, about 20 s of CPU time
        (`tests/test_moe_lab.py` runs it).

        >>> from sift_jax.moe.model import init_model, tiny_config
        >>> from sift_jax.moe import data
        >>> tokens = data.load_corpus(max_bytes_per_split=4000).train
        >>> cal = calibrate(init_model(tiny_config(), 0), tokens, n_windows=4, n_lipschitz_points=8,  # doctest: +SKIP
        ...                 n_power_points=2, power_iters=5)
        >>> cal["table"].shape, cal["b_max"].shape, cal["beta_max"].shape, cal["n_tokens"]  # doctest: +SKIP
        ((2, 4, 5), (2, 4), (2,), 128)

        Too few bytes for the windows asked for is refused before anything is computed (here with
        the model's shapes only, `nnx.eval_shape`):

        >>> abstract = nnx.eval_shape(lambda: init_model(tiny_config(), 0))
        >>> calibrate(abstract, tokens[:100], n_windows=4)           # 100 bytes: 3 windows of 32
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: n_windows = 4 is invalid: allowed is an integer in [1, 3]
    """
    cfg = model.cfg
    x, _ = data_lib.eval_windows(tokens, cfg.context, n_windows)
    got = collect(model, x)
    outputs = got["expert_outputs"]  # [L, S, N, d]
    table = np.asarray(similarity.mismatch_tables(jnp.asarray(outputs)))
    n_tokens = outputs.shape[1]
    graphdef, layer_params = _stacked_moe_params(model)
    n_fd = min(n_lipschitz_points, n_tokens)
    n_pi = min(n_power_points, n_tokens)
    est = _estimators(graphdef, n_tokens, n_fd, n_pi, power_iters, float(fd_eps), fd_directions)
    keys = jax.vmap(lambda l: jax.random.fold_in(jax.random.key(seed), l))(jnp.arange(cfg.n_layers))
    b_max, beta_fd, beta_pi = (
        np.asarray(a)
        for a in jax.lax.map(lambda args: est(*args), (layer_params, jnp.asarray(got["moe_inputs"]), keys))
    )
    n = cfg.n_experts
    topk, gates, probs = got["topk"], got["gates"], got["router_probs"]
    load_top1 = np.stack([np.bincount(t[:, 0], minlength=n) for t in topk]) / n_tokens
    load_slots = np.stack([np.bincount(t.ravel(), minlength=n) for t in topk]) / (n_tokens * cfg.top_k)
    entropy = -np.sum(probs * np.log(np.maximum(probs, 1e-30)), axis=-1).mean(-1)
    return {
        "table": table.astype(np.float32),
        "b_max": b_max,
        "beta_fd": beta_fd,
        "beta_pi": beta_pi,
        "beta_max": np.maximum(beta_fd, beta_pi).max(-1),
        "load_top1": load_top1,
        "load_slots": load_slots,
        "gate_mean_by_slot": gates.mean(1),
        "router_entropy": entropy,
        "mean_output_norm": np.linalg.norm(outputs, axis=-1).mean(1),
        "n_tokens": n_tokens,
        "config": {
            "n_windows": n_windows,
            "seed": seed,
            "n_lipschitz_points": n_lipschitz_points,
            "n_power_points": n_power_points,
            "power_iters": power_iters,
            "fd_eps": fd_eps,
            "fd_directions": fd_directions,
            "split": "train",
        },
    }


def summarize(cal: dict) -> dict:
    """JSON-ready summary of a calibration (per-layer scalars and small arrays as lists).

    Args:
        cal: a calibration dict (`calibrate` or `load_calibration`).

    Returns:
        dict of lists per layer: "b_max_per_layer" and the beta maxima (max over experts),
        "mean_skip_cost_per_layer" (mean of Fbar[:, i, N]), "mean_mismatch_per_layer" (mean of the
        off-diagonal Fbar[:, i, j], i != j), "replace_beats_skip_fraction_per_layer" (share of pairs
        i != j with Fbar[i, j] < Fbar[i, skip], the Remark 1 factor below 1), "router_entropy_per_layer"
        (nats), "gate_mean_by_slot" [L][K], "load_top1" [L][N]; plus "n_tokens" and "config".
        Units are those of the calibration (expert-output norms).

    Example:
        A hand-made one-layer calibration, N = 2: expert 0 is better replaced by expert 1 (Fbar 1)
        than skipped (2); expert 1 is better skipped (0.5) than replaced (1).

        >>> L, N, K = 1, 2, 2
        >>> cal = {"table": np.array([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]]]), "n_tokens": 64, "config": {"seed": 0}}
        >>> cal |= {k: np.ones((L, N)) for k in ("b_max", "beta_fd", "beta_pi", "load_top1", "load_slots",
        ...                                      "mean_output_norm")}
        >>> cal |= {"beta_max": np.ones(L), "router_entropy": np.ones(L), "gate_mean_by_slot": np.full((L, K), 0.5)}
        >>> s = summarize(cal)
        >>> s["mean_skip_cost_per_layer"], s["mean_mismatch_per_layer"], s["replace_beats_skip_fraction_per_layer"]
        ([1.25], [1.0], [0.5])
    """
    t = cal["table"]
    n = t.shape[1]
    off = t[:, :, :n][:, ~np.eye(n, dtype=bool)]  # [L, N(N-1)]
    ratio = off.reshape(t.shape[0], n, n - 1) / t[:, :, n:]  # Remark 1 factor
    return {
        "n_tokens": int(cal["n_tokens"]),
        "config": cal["config"],
        "b_max_per_layer": cal["b_max"].max(-1).tolist(),
        "beta_max_per_layer": np.asarray(cal["beta_max"]).tolist(),
        "beta_fd_max_per_layer": cal["beta_fd"].max(-1).tolist(),
        "beta_pi_max_per_layer": cal["beta_pi"].max(-1).tolist(),
        "mean_skip_cost_per_layer": t[:, :, n].mean(-1).tolist(),
        "mean_mismatch_per_layer": off.mean(-1).tolist(),
        "replace_beats_skip_fraction_per_layer": (ratio < 1).mean((-1, -2)).tolist(),
        "router_entropy_per_layer": np.asarray(cal["router_entropy"]).tolist(),
        "gate_mean_by_slot": np.asarray(cal["gate_mean_by_slot"]).tolist(),
        "load_top1": np.asarray(cal["load_top1"]).tolist(),
    }


def save_calibration(path, cal: dict) -> pathlib.Path:
    """Write `calibration.npz` and `calibration.json` into directory `path` (e.g. the checkpoint).

    Args:
        path: directory (created if missing).
        cal: a calibration dict (`calibrate`).

    Returns:
        pathlib.Path of the written `calibration.npz` (`calibration.json` holds `summarize(cal)`).

    Example:
        A hand-made one-layer calibration (N = 2, K = 2) saved in a temporary directory:

        >>> import tempfile
        >>> L, N, K = 1, 2, 2
        >>> cal = {"table": np.array([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]]]), "n_tokens": 64, "config": {"seed": 0}}
        >>> cal |= {k: np.ones((L, N)) for k in ("b_max", "beta_fd", "beta_pi", "load_top1", "load_slots",
        ...                                      "mean_output_norm")}
        >>> cal |= {"beta_max": np.ones(L), "router_entropy": np.ones(L), "gate_mean_by_slot": np.full((L, K), 0.5)}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     npz = save_calibration(d, cal)
        ...     npz.name, json.loads((npz.parent / "calibration.json").read_text())["n_tokens"]
        ('calibration.npz', 64)
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(
        path / CALIBRATION_NPZ,
        **{k: np.asarray(cal[k]) for k in ARRAY_KEYS},
        n_tokens=np.asarray(cal["n_tokens"]),
        config=np.asarray(json.dumps(cal["config"])),
    )
    (path / CALIBRATION_JSON).write_text(json.dumps(summarize(cal), indent=2))
    return path / CALIBRATION_NPZ


def _npz_path(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / CALIBRATION_NPZ
    if not path.is_file():
        raise ConfigError(
            "table",
            str(path),
            f"a {CALIBRATION_NPZ} file or a checkpoint directory holding one (run `sift-jax moe calibrate`)",
        )
    return path


def load_calibration(path) -> dict:
    """Read a calibration written by `save_calibration` (a checkpoint directory or the .npz file).

    Args:
        path: a checkpoint directory holding `calibration.npz`, or the file itself.

    Returns:
        dict with the arrays of `calibrate` ("table" [L, N, N+1], "b_max" [L, N], "beta_max" [L], ...),
        "n_tokens" (int) and "config" (dict).

    Raises:
        ConfigError: no calibration file there.

    Example:
        A round trip of a hand-made one-layer calibration (N = 2, K = 2):

        >>> import tempfile
        >>> L, N, K = 1, 2, 2
        >>> cal = {"table": np.array([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]]]), "n_tokens": 64, "config": {"seed": 0}}
        >>> cal |= {k: np.ones((L, N)) for k in ("b_max", "beta_fd", "beta_pi", "load_top1", "load_slots",
        ...                                      "mean_output_norm")}
        >>> cal |= {"beta_max": np.ones(L), "router_entropy": np.ones(L), "gate_mean_by_slot": np.full((L, K), 0.5)}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_calibration(d, cal)
        ...     back = load_calibration(d)
        >>> bool((back["table"] == cal["table"]).all()), back["n_tokens"], back["config"]
        (True, 64, {'seed': 0})
    """
    with np.load(_npz_path(path), allow_pickle=False) as z:
        cal = {k: z[k] for k in ARRAY_KEYS}
        cal["n_tokens"] = int(z["n_tokens"])
        cal["config"] = json.loads(str(z["config"]))
    return cal


def load_tables(path) -> np.ndarray:
    """The calibration tables Fbar float32[L, N, N+1] (column N = skip) from a checkpoint directory or a
    `calibration.npz`. Layer l's table `load_tables(p)[l]` is the `table` argument of every policy.

    Args:
        path: a checkpoint directory holding `calibration.npz`, or the file itself.

    Returns:
        float32[L, N, N+1]: mean mismatch norms Fbar[l, i, j], column N = skip (units of the
        expert outputs).

    Raises:
        ConfigError: no calibration file there, or a table that is not [L, N, N+1].

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.savez(pathlib.Path(d) / "calibration.npz", table=np.ones((2, 4, 5)))   # L = 2, N = 4
        ...     t = load_tables(d)
        >>> t.shape, t.dtype
        ((2, 4, 5), dtype('float32'))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.savez(pathlib.Path(d) / "calibration.npz", table=np.ones((2, 4, 4)))   # no skip column
        ...     load_tables(d)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: table = 'array of shape (2, 4, 4)' is invalid: allowed is float[L, N, N+1]
    """
    with np.load(_npz_path(path), allow_pickle=False) as z:
        table = np.asarray(z["table"], np.float32)
    if table.ndim != 3 or table.shape[2] != table.shape[1] + 1:
        raise ConfigError("table", f"array of shape {table.shape}", "float[L, N, N+1]")
    return table
