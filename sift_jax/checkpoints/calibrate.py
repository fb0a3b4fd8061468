"""Calibration tables and Assumption 1-2 estimates from checkpoint weights (paper §2.1, §2.8).

For every MoE layer l of a checkpoint, from hidden states z_t (t < T) at that layer's input:

- ``tables`` float32[L, N, N+1]: Fbar[l, i, j] = mean_t ||FFN_i(z_t) - FFN_j(z_t)|| (j < N, diagonal
  0), Fbar[l, i, N] = mean_t ||FFN_i(z_t)|| (skip), the table of `sift_jax.similarity.mismatch_table`;
- ``b_max`` float32[L, N]: max_t ||FFN_i(z_t)|| (Assumption 1; empirical, over these z);
- ``beta_fd`` float32[L, N]: finite-difference Lipschitz estimates (`bounds.lipschitz_finite_difference`
  on a random subset of the z, step `fd_rel_eps` times the median ||z||);
- ``beta_pi`` float32[L, N]: Jacobian spectral norms by power iteration, max over a random subset
  (`bounds.lipschitz_power_iteration`, one expert at a time); ``beta_max`` float32[L]: max over experts
  of max(beta_fd, beta_pi), the beta_{E,max} of Thm. 1 (all empirical, not certified);
- ``router_logits`` float32[L, T, N]: the router's logits of the same z.

Units: those of the expert outputs (the residual stream). Hidden states are either supplied, float[L,
T, d] (each MoE layer's own inputs, dumped from the user's forward pass: the faithful way) or
float[T, d] (the same inputs for every layer), or drawn: z = s * n + b with n ~ N(0, I_d) and (s, b)
the weight and bias of the norm in front of the layer when the checkpoint has it (n alone when not).
Drawn states only approximate the model's own distribution (real hidden states are neither Gaussian
nor isotropic): use them to check the pipeline, supply dumps for numbers you report.

The layers are read and processed one at a time (`Checkpoint.read_layer`); one jit-compiled function
per layer shape runs all experts on batches of tokens (`lax.scan`, experts one after another with
`lax.map`, each expert's weights cast to float32 in turn, so BF16 weights stay BF16 in memory) and
accumulates in float32, the per-batch sums added in float64 on the host.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax import bounds, similarity
from sift_jax.checkpoints.reader import Checkpoint, LayerWeights
from sift_jax.checkpoints.tables import ARRAY_KEYS
from sift_jax.errors import ConfigError

__all__ = ["calibrate_checkpoint", "draw_hidden_states"]

DEFAULT_DRAWN_TOKENS = 1024
_TAG_DRAW = 7  # folded into key(seed): drawn hidden states
_TAG_LIPSCHITZ = 8  # folded into key(seed): Lipschitz points and directions
_PAIR_ELEMENTS = 2**22  # the [chunk, N, N, d] output differences: at most 16 MiB in float32


def _carriers(weights: dict) -> tuple[dict, tuple]:
    """Empty `weights` (role -> array) into (role -> array, ((role, dtype name), ...)), 16-bit floats
    bit-cast to uint16, one role at a time (so the peak is one extra role).

    XLA's CPU backend widens every BF16/F16 parameter of a program to float32 up front (a float32
    copy of the whole layer, 2x its BF16 size); as uint16 the weights stay 16-bit in memory and one
    expert at a time is widened inside the loop (`_one_expert_float32`).
    """
    arrays, dtypes = {}, []
    for role in list(weights):
        a = weights.pop(role)
        dtypes.append((role, jnp.dtype(a.dtype).name))
        arrays[role] = jax.lax.bitcast_convert_type(a, jnp.uint16) if a.dtype in (jnp.bfloat16, jnp.float16) else a
        del a
    return arrays, tuple(dtypes)


def _one_expert_float32(weights: dict, dtypes: tuple) -> dict:
    """One expert's (or the router's) tensors from their carriers to float32; integer tensors as they are.
    The barrier keeps XLA from moving the widening out of the loop over experts."""
    weights = jax.lax.optimization_barrier(weights)
    out = {}
    for role, name in dtypes:
        a, dtype = weights[role], jnp.dtype(name)
        if a.dtype == jnp.uint16 and dtype != a.dtype:
            a = jax.lax.bitcast_convert_type(a, dtype)
        out[role] = a.astype(jnp.float32) if jnp.issubdtype(dtype, jnp.floating) else a
    return out


def _all_experts(layout, dtypes: tuple, expert_weights: dict, z: jax.Array) -> jax.Array:
    """float32[T, N, d]: every expert on z float32[T, d], one expert at a time (float32 copy of one)."""
    outputs = jax.lax.map(lambda w: layout.expert(_one_expert_float32(w, dtypes), z), expert_weights)  # [N, T, d]
    return jnp.swapaxes(outputs, 0, 1)


@functools.lru_cache(maxsize=16)
def _layer_fn(
    layout,
    expert_dtypes: tuple,
    router_dtypes: tuple,
    batch_tokens: int,
    lipschitz: bool,
    n_fd: int,
    fd_directions: int,
    n_pi: int,
    power_iters: int,
):
    """Jitted (expert carriers, router carriers, z [T, d], key, fd_rel_eps) -> per-layer statistics."""

    def run(expert_w, router_w, z, key, fd_rel_eps):
        t, d = z.shape
        batch = min(batch_tokens, t)
        n_batches = -(-t // batch)
        zb = jnp.pad(z, ((0, n_batches * batch - t), (0, 0))).reshape(n_batches, batch, d)
        valid = (jnp.arange(n_batches * batch) < t).reshape(n_batches, batch)
        n_experts = jax.tree.leaves(expert_w)[0].shape[0]
        pair_chunk = max(1, min(batch, _PAIR_ELEMENTS // (n_experts * n_experts * d)))

        def body(_, xs):
            zc, vc = xs
            out = jnp.where(vc[:, None, None], _all_experts(layout, expert_dtypes, expert_w, zc), 0.0)  # padding -> 0
            pairs = similarity.mismatch_table(out, chunk_size=pair_chunk)
            return None, (pairs, jnp.max(jnp.linalg.norm(out, axis=-1), axis=0))

        _, (batch_means, batch_max) = jax.lax.scan(body, None, (zb, valid))
        stats = {
            "batch_means": batch_means,
            "b_max": jnp.max(batch_max, axis=0),
            "router_logits": layout.router(_one_expert_float32(router_w, router_dtypes), z),
        }
        if not lipschitz:
            return stats
        k_fd_points, k_fd_dirs, k_pi_points, k_pi = jax.random.split(key, 4)
        norms = jnp.linalg.norm(z, axis=-1)
        eps = fd_rel_eps * jnp.where(jnp.median(norms) > 0, jnp.median(norms), 1.0)
        z_fd = z[jax.random.choice(k_fd_points, t, (n_fd,), replace=False)]

        def all_experts_at(x):  # float[d] -> float[N, d]
            return _all_experts(layout, expert_dtypes, expert_w, x[None])[0]

        def finite_difference(args):  # one point, its own directions; lax.map below vmaps 8 points at a time
            point, k = args
            return bounds.lipschitz_finite_difference(
                all_experts_at, point[None], k, eps=eps, n_directions=fd_directions
            )

        per_point = jax.lax.map(finite_difference, (z_fd, jax.random.split(k_fd_dirs, n_fd)), batch_size=8)
        stats["beta_fd"] = jnp.max(per_point, axis=0)
        z_pi = z[jax.random.choice(k_pi_points, t, (n_pi,), replace=False)]

        def power(args):
            w, k = args
            w = _one_expert_float32(w, expert_dtypes)
            return bounds.lipschitz_power_iteration(lambda x: layout.expert(w, x[None])[0], z_pi, k, iters=power_iters)

        stats["beta_pi"] = jax.lax.map(power, (expert_w, jax.random.split(k_pi, n_experts)))
        return stats

    return jax.jit(run)


# ---------------------------------------------------------------------------------------------------
# Hidden states
# ---------------------------------------------------------------------------------------------------


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _open_hidden(hidden_states):
    """(array-like float[L, T, d] or [T, d], memory-mapped for .npy; description)."""
    if not isinstance(hidden_states, (str, os.PathLike)):
        return np.asarray(hidden_states), "array passed in memory"
    path = pathlib.Path(hidden_states)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "hidden_states" if "hidden_states" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ConfigError(
                        "hidden_states",
                        str(path),
                        "an .npz with one array or a 'hidden_states' array",
                        message=f"hidden_states {path}: an .npz needs one array or one named "
                        f"'hidden_states'; found {', '.join(keys)}",
                    )
                array = z[key]
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(
            "hidden_states",
            str(path),
            "a readable .npy or .npz file",
            message=f"hidden_states {path} is not a readable .npy/.npz file ({err})",
        ) from None
    return array, f"file {path} sha256 {_sha256(path)}"


def _check_hidden(array, n_layers: int, d: int):
    floating = np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"
    shape_ok = array.ndim in (2, 3) and array.shape[-1] == d and array.shape[-2] >= 1
    if not floating or not shape_ok or (array.ndim == 3 and array.shape[0] != n_layers):
        raise ConfigError(
            "hidden_states",
            f"array of shape {array.shape} and dtype {array.dtype}",
            f"a floating array float[L={n_layers}, T, d={d}] or float[T, d={d}]",
        )


def _token_subset(n_available: int, tokens, seed: int):
    """Sorted token indices: all when `tokens` is None, else `tokens` of them drawn without replacement."""
    if tokens is None:
        return None
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or not 1 <= tokens <= n_available:
        raise ConfigError("tokens", tokens, f"an integer in [1, {n_available}] (the tokens in the hidden states)")
    if tokens == n_available:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_available, int(tokens), replace=False))


def draw_hidden_states(weights: LayerWeights, layer: int, tokens: int, seed: int) -> jax.Array:
    """Drawn inputs of one layer (an approximation, see the module docstring): float32[T, d].

    z = s * n + b, n ~ N(0, I_d) from key(seed) folded with a tag and `layer`; s and b are the layer's
    norm scale and bias when the checkpoint has them (1 and 0 otherwise).

    Args:
        weights: the layer (`Checkpoint.read_layer`). layer: its index. tokens: T. seed: integer seed.

    Returns:
        float32[T, d] on the default JAX device.

    Example:
        A layer (d = 4) whose input norm has scale 2: T = 3 drawn tokens, twice the plain draw.

        >>> w = LayerWeights("model.layers.0", expert={}, router={}, norm={"norm_scale": jnp.full(4, 2.0)},
        ...                  dims={"N": 2, "d": 4})
        >>> z = draw_hidden_states(w, layer=0, tokens=3, seed=0)
        >>> z.shape, z.dtype
        ((3, 4), dtype('float32'))
        >>> plain = LayerWeights(w.name, expert={}, router={}, norm={}, dims=w.dims)  # no norm: n itself
        >>> bool(jnp.allclose(z, 2 * draw_hidden_states(plain, layer=0, tokens=3, seed=0)))
        True
    """
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _TAG_DRAW), layer)
    z = jax.random.normal(key, (tokens, weights.dims["d"]), jnp.float32)
    if "norm_scale" in weights.norm:
        z = z * weights.norm["norm_scale"].astype(jnp.float32)
    if "norm_bias" in weights.norm:
        z = z + weights.norm["norm_bias"].astype(jnp.float32)
    return z


# ---------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(name, value, "a positive integer")
    return int(value)


def calibrate_checkpoint(
    checkpoint,
    hidden_states=None,
    *,
    layout=None,
    tokens: int | None = None,
    seed: int = 0,
    batch_tokens: int = 256,
    lipschitz: bool = True,
    n_lipschitz_points: int = 64,
    fd_directions: int = 8,
    fd_rel_eps: float = 1e-3,
    n_power_points: int = 8,
    power_iters: int = 30,
    progress: bool = False,
) -> dict:
    """Tables Fbar, B_max and Lipschitz estimates of every MoE layer of a safetensors checkpoint.

    Args:
        checkpoint: a `Checkpoint`, or a path for `Checkpoint(path, layout)`.
        hidden_states: None (draw them, an approximation), a .npy/.npz path (memory-mapped .npy: one
            layer's rows are read at a time) or an array; float[L, T, d] or float[T, d].
        layout: layout name when `checkpoint` is a path (None: from config.json).
        tokens: T used. With hidden states: a random subset of that many tokens (seeded; None = all).
            Drawn: how many to draw (None = 1024).
        seed: seed of the token subset, the drawn states and the Lipschitz points and directions.
        batch_tokens: tokens per batch of the table pass (memory: batch * N * d plus one expert's
            activations). lipschitz: False skips beta_fd / beta_pi (NaN in the result).
        n_lipschitz_points, fd_directions, fd_rel_eps: finite-difference points, random unit directions
            per point, step relative to the median ||z||.
        n_power_points, power_iters: power-iteration points (max over them) and iterations.
        progress: a tqdm bar over layers.

    Returns:
        dict: the arrays of the module docstring (NumPy, float32) and "layout", "checkpoint",
        "checkpoint_files" (file name -> bytes), "hidden_states" (where they came from), "layer_names"
        (tuple), "n_tokens", "settings" (dict), "model_config" (config.json as a dict).

    Raises:
        ConfigError: a bad checkpoint (see `Checkpoint`), hidden states of the wrong shape or with
            non-finite values, or a bad option.

    Example:
        Two Mixtral-layout layers (N = 3, d = 4, f = 5) of random weights, 6 tokens per layer
        (tests/test_checkpoints.py checks the values against NumPy for every layout):

        >>> import tempfile
        >>> from sift_jax.checkpoints import save_checkpoint
        >>> rng = np.random.default_rng(0)
        >>> t = {}
        >>> for l in range(2):
        ...     p = f"model.layers.{l}.block_sparse_moe"
        ...     t[f"{p}.gate.weight"] = rng.normal(size=(3, 4)).astype(np.float32)
        ...     for e in range(3):
        ...         for w, s in (("w1", (5, 4)), ("w2", (4, 5)), ("w3", (5, 4))):
        ...             t[f"{p}.experts.{e}.{w}.weight"] = rng.normal(size=s).astype(np.float32)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint(t, d, config={"model_type": "mixtral"})
        ...     cal = calibrate_checkpoint(d, rng.normal(size=(2, 6, 4)), lipschitz=False)
        >>> cal["tables"].shape, cal["b_max"].shape, cal["router_logits"].shape, cal["layer_names"]
        ((2, 3, 4), (2, 3), (2, 6, 3), ('model.layers.0', 'model.layers.1'))
        >>> bool(np.all(np.diagonal(cal["tables"], axis1=1, axis2=2) == 0)), bool(np.all(cal["tables"][:, :, 3] > 0))
        (True, True)
    """
    from tqdm import tqdm

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint, layout)
    n_layers, d = len(ckpt), ckpt.hidden_size
    for name, value in (
        ("batch_tokens", batch_tokens),
        ("n_lipschitz_points", n_lipschitz_points),
        ("fd_directions", fd_directions),
        ("n_power_points", n_power_points),
        ("power_iters", power_iters),
    ):
        _positive_int(name, value)
    if not (isinstance(fd_rel_eps, (int, float)) and 0 < fd_rel_eps < 1):
        raise ConfigError("fd_rel_eps", fd_rel_eps, "a number in (0, 1)")
    seed = int(seed)
    if hidden_states is None:
        array, source = (
            None,
            (
                f"drawn: z = s * n + b, n ~ N(0, I_d), (s, b) the input norm's weight and bias "
                f"when present; seed {seed} (an approximation of the model's hidden states)"
            ),
        )
        n_tokens = DEFAULT_DRAWN_TOKENS if tokens is None else _positive_int("tokens", tokens)
        subset = None
    else:
        array, source = _open_hidden(hidden_states)
        _check_hidden(array, n_layers, d)
        subset = _token_subset(array.shape[-2], tokens, seed)
        n_tokens = array.shape[-2] if subset is None else len(subset)
    n_fd, n_pi = min(n_lipschitz_points, n_tokens), min(n_power_points, n_tokens)
    shared = None
    if array is not None and array.ndim == 2:
        shared = _layer_inputs(array, subset, 0)
    out = {k: [] for k in ARRAY_KEYS}
    batch = min(batch_tokens, n_tokens)
    base_key = jax.random.fold_in(jax.random.key(seed), _TAG_LIPSCHITZ)
    for layer in tqdm(range(n_layers), desc="calibrate", unit="layer", disable=not progress, leave=False):
        if array is not None:  # checked before the layer is read
            z = shared if shared is not None else _layer_inputs(array, subset, layer)
        weights = ckpt.read_layer(layer)
        if array is None:
            z = draw_hidden_states(weights, layer, n_tokens, seed)
        expert, expert_dtypes = _carriers(weights.expert)  # empties weights.expert
        router, router_dtypes = _carriers(weights.router)
        del weights
        run = _layer_fn(
            ckpt.layout,
            expert_dtypes,
            router_dtypes,
            int(batch_tokens),
            bool(lipschitz),
            n_fd,
            int(fd_directions),
            n_pi,
            int(power_iters),
        )
        stats = run(expert, router, z, jax.random.fold_in(base_key, layer), float(fd_rel_eps))
        stats = jax.tree.map(np.asarray, stats)
        del expert, router
        table = stats["batch_means"].astype(np.float64).sum(0) * (batch / n_tokens)
        out["tables"].append(table.astype(np.float32))
        out["b_max"].append(stats["b_max"])
        out["router_logits"].append(stats["router_logits"])
        n = ckpt.n_experts
        beta_fd = stats.get("beta_fd", np.full(n, np.nan, np.float32))
        beta_pi = stats.get("beta_pi", np.full(n, np.nan, np.float32))
        out["beta_fd"].append(beta_fd)
        out["beta_pi"].append(beta_pi)
        out["beta_max"].append(np.max(np.maximum(beta_fd, beta_pi)))
    result = {k: np.asarray(np.stack(v), np.float32) for k, v in out.items()}
    result.update(
        {
            "layout": ckpt.layout.name,
            "checkpoint": str(ckpt.path),
            "checkpoint_files": ckpt.files(),
            "hidden_states": source,
            "layer_names": tuple(ckpt.layers),
            "n_tokens": n_tokens,
            "model_config": ckpt.config,
            "settings": {
                "tokens": n_tokens,
                "seed": seed,
                "batch_tokens": batch_tokens,
                "lipschitz": bool(lipschitz),
                "n_lipschitz_points": n_fd,
                "fd_directions": fd_directions,
                "fd_rel_eps": fd_rel_eps,
                "n_power_points": n_pi,
                "power_iters": power_iters,
                "token_subset": (
                    "drawn"
                    if array is None
                    else "all"
                    if subset is None
                    else f"{len(subset)} of {array.shape[-2]}, drawn with seed {seed}"
                ),
            },
        }
    )
    return result


def _layer_inputs(array, subset, layer: int) -> jax.Array:
    rows = array[layer] if array.ndim == 3 else array
    rows = np.asarray(rows if subset is None else rows[subset], np.float32)
    if not np.all(np.isfinite(rows)):
        raise ConfigError("hidden_states", f"non-finite values (layer {layer})", "finite numbers")
    return jnp.asarray(rows)
