"""Router logits -> Top-K experts and gate weights (paper §2.1).

The gate weights are the softmax of the router logits **renormalised over the active (Top-K) set**:
g_i = exp(P_i / T) / sum_{i' in Top-K} exp(P_i' / T) for i in Top-K, with temperature T (T = 1 is the
paper's formula; T is our exposed knob, `sc.gate_temperature`).

Synthetic router (for simulations without a model; INFERRED, the paper uses real routers): the logits of
token m at layer l are P[l, m, :] = x[l, m, :] + o[l, :] with x ~ N(0, I) drawn per sample, and a per-layer
expert popularity profile o[l, :] = sc.popularity_skew * u[l, :], u ~ N(0, I) fixed by `sc.table_seed` and
the layer: the routing skew is a property of the model, the same for every sample. Real router logits
(a `.npy` file, the Flax MoE model) go through the same `from_logits`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.scenario import Scenario

__all__ = ["draw", "from_logits", "load_logits"]

# Tag folded into jax.random.key(sc.table_seed) for the popularity profile (similarity uses another tag).
_TAG_POPULARITY = 1


@functools.partial(jax.jit, static_argnames=("k",))
def from_logits(logits: jax.Array, k: int, temperature=1.0) -> tuple[jax.Array, jax.Array]:
    """Top-K experts and their renormalised gate weights from router logits.

    Args:
        logits: float[..., N] router logits P(z) = W_r^T z (any leading batch dims: tokens, layers, ...).
        k: K, the number of active experts (static), 1 <= K <= N.
        temperature: softmax temperature (> 0), scalar or broadcastable to float[...]; traced is fine.

    Returns:
        (g, topk): g float[..., K], gate weights over the Top-K set (sum 1, descending);
        topk int32[..., K], indices of the K largest logits in descending order of logit
        (ties: the lower index first, as `jax.lax.top_k`).

    Raises:
        ConfigError: `logits` not a floating array with an expert axis, or k outside [1, N].

    Example:
        >>> import math
        >>> import jax.numpy as jnp
        >>> g, topk = from_logits(jnp.array([0.0, 2.0, 1.0, -1.0]), k=2)
        >>> topk
        Array([1, 2], dtype=int32)
        >>> [round(float(x), 4) for x in g]           # softmax over {2, 1}: 1 / (1 + e^-1), e^-1 / (1 + e^-1)
        [0.7311, 0.2689]
        >>> round(1 / (1 + math.exp(-1)), 4)
        0.7311
        >>> from sift_jax.errors import ConfigError
        >>> try:
        ...     from_logits(jnp.zeros(4), k=5)
        ... except ConfigError as err:
        ...     print(err)
        top_k = 5 is invalid: allowed is an integer in [1, N=4]
    """
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ConfigError(
            "logits", f"array of shape {logits.shape} and dtype {logits.dtype}", "a floating array of shape [..., N]"
        )
    n = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ConfigError("top_k", k, f"an integer in [1, N={n}]")
    vals, topk = jax.lax.top_k(logits, int(k))
    t = jnp.asarray(temperature, logits.dtype)
    z = (vals - vals[..., :1]) / t[..., None] if t.ndim else (vals - vals[..., :1]) / t
    w = jnp.exp(z)  # z <= 0: no overflow; the first entry is exactly 1
    g = w / jnp.sum(w, axis=-1, keepdims=True)
    return g, topk.astype(jnp.int32)


@jax.jit
def popularity(sc: Scenario) -> jax.Array:
    """Per-layer expert popularity offsets o = sc.popularity_skew * u: float[L, N] (logit units).

    u ~ N(0, I) is fixed by `sc.table_seed` (static) and the layer index, so the skew belongs to the
    model, not to the sample. `popularity_skew` may be traced.

    Example:
        >>> from sift_jax.scenario import Scenario
        >>> popularity(Scenario(n_nodes=4, n_layers=3)).shape
        (3, 4)
    """
    base = jax.random.fold_in(jax.random.key(sc.table_seed), _TAG_POPULARITY)
    u = jax.vmap(lambda l: jax.random.normal(jax.random.fold_in(base, l), (sc.n_nodes,), jnp.float32))(
        jnp.arange(sc.n_layers)
    ).astype(jnp.result_type(float))  # float32 draws: same samples under x64
    return jnp.asarray(sc.popularity_skew, u.dtype) * u


@jax.jit
def draw_logits(key: jax.Array, sc: Scenario) -> jax.Array:
    """Synthetic router logits float[L, M, N]: standard normals plus the layer's popularity profile.

    Args:
        key: a typed PRNG key (one sample).
        sc: the scenario; static n_layers L, n_tokens M, n_nodes N set the shape.

    Example:
        >>> import jax
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=4, n_tokens=5, n_layers=2)   # eval_shape: traced, not compiled
        >>> jax.eval_shape(draw_logits, jax.random.key(0), sc).shape
        (2, 5, 4)
    """
    x = jax.random.normal(key, (sc.n_layers, sc.n_tokens, sc.n_nodes), jnp.float32).astype(jnp.result_type(float))
    return x + popularity(sc)[:, None, :].astype(x.dtype)


@jax.jit
def draw(key: jax.Array, sc: Scenario) -> tuple[jax.Array, jax.Array]:
    """Synthetic gate weights and Top-K experts for every layer and token of one sample.

    Equal to `from_logits(draw_logits(key, sc), sc.top_k, sc.gate_temperature)`: standard-normal
    logits per token plus the layer's fixed popularity profile (module docstring). Jittable with `sc`
    as a traced argument (dynamic leaves traced) and vmappable over keys and scenarios.

    Args:
        key: a typed PRNG key (one sample).
        sc: the scenario; static n_layers L, n_tokens M, n_nodes N, top_k K set the shapes;
            gate_temperature and popularity_skew (logit units) may be traced.

    Returns:
        (g, topk): g float[L, M, K] gate weights (each row sums to 1, descending),
        topk int32[L, M, K] expert (= node) indices in [0, N), distinct within a row.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> g, topk = draw(jax.random.key(0), Scenario(n_nodes=4, top_k=2, n_tokens=3, n_layers=1))
        >>> g.shape, topk.shape, bool(jnp.allclose(g.sum(-1), 1.0))
        ((1, 3, 2), (1, 3, 2), True)
        >>> bool((g[..., 0] >= g[..., 1]).all()), bool((topk[..., 0] != topk[..., 1]).all())
        (True, True)
    """
    return from_logits(draw_logits(key, sc), sc.top_k, sc.gate_temperature)


def load_logits(path: str | os.PathLike, n_nodes: int | None = None, n_layers: int | None = None) -> np.ndarray:
    """Load real router logits from a `.npy` file for `from_logits`.

    The array must be floating and finite with shape [..., N]; a common layout is [L, M, N]
    (layers, tokens, experts). Checks N (last axis) and L (first axis) when given.

    Args:
        path: a `.npy` file (no pickles).
        n_nodes: expected N, the size of the last axis; None skips the check.
        n_layers: expected L, the size of the first axis; None skips the check.

    Returns:
        np.ndarray float[..., N], the logits as stored (logit units, dtype kept).

    Raises:
        ConfigError: missing file, wrong shape or dtype, non-finite values.

    Example:
        >>> import numpy as np, tempfile, os
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "logits.npy")
        ...     np.save(path, np.zeros((2, 3, 8), np.float32))
        ...     print(load_logits(path, n_nodes=8, n_layers=2).shape)
        ...     load_logits(path, n_nodes=4)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: logits = 'array of shape (2, 3, 8)' is invalid: allowed is last axis N = 4
    """
    try:
        arr = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConfigError("logits_path", os.fspath(path), f"a readable .npy file ({err})") from None
    if arr.ndim < 1 or not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(
            "logits", f"array of shape {arr.shape} and dtype {arr.dtype}", "a floating array of shape [..., N]"
        )
    if n_nodes is not None and arr.shape[-1] != n_nodes:
        raise ConfigError("logits", f"array of shape {arr.shape}", f"last axis N = {n_nodes}")
    if n_layers is not None and (arr.ndim < 2 or arr.shape[0] != n_layers):
        raise ConfigError("logits", f"array of shape {arr.shape}", f"first axis L = {n_layers}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("logits", "an array with non-finite values", "finite values")
    return arr
