"""Output-space expert similarity and the calibration table Fbar (paper §2.3, §2.8).

For expert outputs FFN_i(z), FFN_j(z) on the same input z the paper defines the norm ratio
rho_ij = ||FFN_j|| / ||FFN_i||, the output cosine cos(theta_ij) and the mismatch

    F_ij = ||FFN_i|| sqrt(1 + rho_ij^2 - 2 rho_ij cos(theta_ij)) = ||FFN_i - FFN_j||,

with the null expert (skip) F_i,skip = ||FFN_i||. The calibration table of one layer is
Fbar[i, j] = mean over calibration inputs of F_ij (j < N) and Fbar[i, N] = mean ||FFN_i|| (the skip
column): float[N, N+1], diagonal exactly 0. Stacked over layers it is float[L, N, N+1].

`synthetic_tables` builds such tables for the presets from a documented latent model of expert
outputs, for simulations without a real model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sift_jax.errors import ConfigError

# Tags folded into jax.random.key(sc.table_seed) so that the model-level random streams differ.
_TAG_SIMILARITY = 2

# Default chunk size keeps the (possibly materialised) [C, N, N, d] difference tensor below this
# many elements (128 MiB in float32); XLA usually fuses it into the reduction anyway.
_CHUNK_ELEMENTS = 2**25


def _safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """Euclidean norm with a finite gradient at 0 (the gradient there is set to 0)."""
    sq = jnp.sum(jnp.square(x), axis=axis)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _check_outputs(outputs, ndim: int, what: str) -> jax.Array:
    outputs = jnp.asarray(outputs)
    if outputs.ndim != ndim or not jnp.issubdtype(outputs.dtype, jnp.floating):
        raise ConfigError("outputs", f"array of shape {outputs.shape} and dtype {outputs.dtype}",
                          f"a floating array of shape {what}")
    return outputs


def pairwise(outputs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Norm ratio, output cosine and mismatch for every ordered expert pair and sample (§2.3).

    Args:
        outputs: float[S, N, d], FFN_i(z_s) of every expert i on the same input z_s.

    Returns:
        (rho, cos, F), each float[S, N, N]:
        rho[s, i, j] = ||FFN_j|| / ||FFN_i||;
        cos[s, i, j] = cosine of FFN_i and FFN_j, in [-1, 1];
        F[s, i, j] = ||FFN_i|| sqrt(1 + rho^2 - 2 rho cos) (equals ||FFN_i - FFN_j||).

    Numerics: F is evaluated as ||FFN_i|| sqrt((1 - rho)^2 + 2 rho (1 - cos)), the same expression
    rearranged, with 1 - cos computed as ||u_i - u_j||^2 / 2 from the unit vectors u, which avoids the
    cancellation of the textbook form when two outputs nearly coincide. The diagonal of F is exactly 0.
    Zero outputs (paper: undefined): if ||FFN_i|| = 0 then rho = inf (1 if ||FFN_j|| = 0 too),
    cos = 0 and F = ||FFN_j||, the limit of ||FFN_i - FFN_j||; no NaN is produced.

    Example:
        >>> import jax.numpy as jnp
        >>> out = jnp.array([[[3.0, 0.0], [0.0, 4.0]]])          # S=1, N=2, d=2
        >>> rho, cos, F = pairwise(out)
        >>> float(rho[0, 0, 1]), float(cos[0, 0, 1]), float(F[0, 0, 1])
        (1.333..., 0.0, 5.0)
    """
    outputs = _check_outputs(outputs, 3, "[S, N, d]")
    n = _safe_norm(outputs)  # [S, N]
    pos = n > 0
    u = outputs / jnp.where(pos, n, 1.0)[..., None]
    one_minus_cos = 0.5 * jnp.sum(jnp.square(u[:, :, None, :] - u[:, None, :, :]), axis=-1)
    both = pos[:, :, None] & pos[:, None, :]
    one_minus_cos = jnp.where(both, jnp.clip(one_minus_cos, 0.0, 2.0), 1.0)
    cos = 1.0 - one_minus_cos
    ni, nj = n[:, :, None], n[:, None, :]
    rho = jnp.where(pos[:, :, None], nj / jnp.where(pos[:, :, None], ni, 1.0),
                    jnp.where(nj > 0, jnp.inf, 1.0))
    rho_f = jnp.where(pos[:, :, None], rho, 0.0)  # keep the formula finite where ||FFN_i|| = 0
    F = ni * jnp.sqrt(jnp.square(1.0 - rho_f) + 2.0 * rho_f * one_minus_cos)
    F = jnp.where(pos[:, :, None], F, jnp.broadcast_to(nj, F.shape))
    eye = jnp.eye(outputs.shape[1], dtype=bool)
    F = jnp.where(eye, 0.0, F)
    rho = jnp.where(eye, 1.0, rho)
    cos = jnp.where(eye & both, 1.0, cos)
    return rho, cos, F


def _default_chunk(n_samples: int, n_experts: int, dim: int) -> int:
    return max(1, min(n_samples, _CHUNK_ELEMENTS // max(1, n_experts * n_experts * dim)))


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def mismatch_table(outputs: jax.Array, chunk_size: int | None = None) -> jax.Array:
    """Calibration table of one layer, Fbar: float[N, N+1] (paper §2.8).

    Fbar[i, j] = mean_s ||FFN_i(z_s) - FFN_j(z_s)|| for j < N (diagonal exactly 0) and
    Fbar[i, N] = mean_s ||FFN_i(z_s)|| (skip = null expert). The samples are processed in chunks with
    `lax.scan` (compensated summation across chunks), so memory is O(chunk_size * N^2 * d) at most,
    independent of S. Zero padding of the last chunk contributes exactly 0 to every sum.

    Args:
        outputs: float[S, N, d], outputs of all N experts of a layer on the same S inputs.
        chunk_size: samples per chunk (static); default keeps chunk * N^2 * d <= 2^25.

    Returns:
        float[N, N+1] in the units of the outputs, the dtype of `outputs`.

    Example:
        >>> import jax.numpy as jnp
        >>> out = jnp.array([[[3.0, 0.0], [0.0, 4.0]], [[1.0, 0.0], [1.0, 0.0]]])   # S=2, N=2, d=2
        >>> mismatch_table(out)
        Array([[0. , 2.5, 2. ],
               [2.5, 0. , 2.5]], dtype=float32)
    """
    outputs = _check_outputs(outputs, 3, "[S, N, d]")
    s, n, d = outputs.shape
    if chunk_size is None:
        chunk = _default_chunk(s, n, d)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError("chunk_size", chunk_size, "a positive integer or None")
    else:
        chunk = min(chunk_size, max(s, 1))
    n_chunks = -(-s // chunk) if s else 0
    if n_chunks == 0:
        raise ConfigError("outputs", f"array of shape {outputs.shape}", "at least one sample (S >= 1)")
    padded = jnp.pad(outputs, ((0, n_chunks * chunk - s), (0, 0), (0, 0)))
    padded = padded.reshape(n_chunks, chunk, n, d)

    def body(carry, xc):
        total, comp = carry
        f = _safe_norm(xc[:, :, None, :] - xc[:, None, :, :])  # [C, N, N]
        norms = _safe_norm(xc)  # [C, N]
        part = jnp.concatenate([f.sum(0), norms.sum(0)[:, None]], axis=-1)
        y = part - comp  # Kahan summation over chunks
        t = total + y
        comp = (t - total) - y
        return (t, comp), None

    zero = jnp.zeros((n, n + 1), outputs.dtype)
    (total, _), _ = jax.lax.scan(body, (zero, zero), padded)
    table = total / s
    return table.at[jnp.arange(n), jnp.arange(n)].set(0.0)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def mismatch_tables(outputs: jax.Array, chunk_size: int | None = None) -> jax.Array:
    """Calibration tables of L layers, float[L, N, N+1]; layers are processed one at a time (`lax.map`).

    Args:
        outputs: float[L, S, N, d].
        chunk_size: samples per chunk within a layer (see `mismatch_table`).

    Example:
        >>> import jax.numpy as jnp
        >>> mismatch_tables(jnp.ones((3, 5, 4, 2))).shape
        (3, 4, 5)
    """
    outputs = _check_outputs(outputs, 4, "[L, S, N, d]")
    return jax.lax.map(lambda o: mismatch_table(o, chunk_size=chunk_size), outputs)


def router_cosine(router_weights: jax.Array) -> jax.Array:
    """Cosine similarity of the router columns (MC-SMoE-style alternative metric): float[N, N].

    Pass the router matrix W_r: float[d, N] (cosine of the experts' router weight vectors), or router
    logits over T calibration tokens float[T, N] (cosine of the experts' logit profiles across tokens,
    MC-SMoE's "router-logits" similarity). The diagonal is 1; a zero column has cosine 0 with others.

    Example:
        >>> import jax.numpy as jnp
        >>> router_cosine(jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 2.0]]))
        Array([[1.        , 0.70710677, 0.        ],
               [0.70710677, 1.        , 0.70710677],
               [0.        , 0.70710677, 1.        ]], dtype=float32)
    """
    w = jnp.asarray(router_weights)
    if w.ndim != 2 or not jnp.issubdtype(w.dtype, jnp.floating):
        raise ConfigError("router_weights", f"array of shape {w.shape}", "a floating array of shape [d, N]")
    norms = _safe_norm(w, axis=0)
    u = w / jnp.where(norms > 0, norms, 1.0)
    cos = jnp.clip(jnp.matmul(u.T, u, precision=jax.lax.Precision.HIGHEST), -1.0, 1.0)
    return jnp.where(jnp.eye(w.shape[1], dtype=bool), 1.0, cos)
