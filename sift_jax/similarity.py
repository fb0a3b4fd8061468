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

__all__ = ["mismatch_table", "mismatch_tables", "pairwise", "router_cosine", "synthetic_tables"]

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
        raise ConfigError(
            "outputs", f"array of shape {outputs.shape} and dtype {outputs.dtype}", f"a floating array of shape {what}"
        )
    return outputs


@jax.jit
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
        >>> rho.shape
        (1, 2, 2)
        >>> float(rho[0, 0, 1]), float(cos[0, 0, 1]), float(F[0, 0, 1])   # 4/3, orthogonal, 3-4-5
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
    rho = jnp.where(pos[:, :, None], nj / jnp.where(pos[:, :, None], ni, 1.0), jnp.where(nj > 0, jnp.inf, 1.0))
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
        >>> # F_01: (5 + 0) / 2 = 2.5; skip column: mean norms (3 + 1) / 2 = 2 and (4 + 1) / 2 = 2.5
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
        outputs: float[L, S, N, d], per layer the outputs of all N experts on the same S inputs.
        chunk_size: samples per chunk within a layer (see `mismatch_table`).

    Returns:
        float[L, N, N+1], `mismatch_table` of every layer (units of the outputs); column N = skip.

    Example:
        >>> import jax.numpy as jnp
        >>> t = mismatch_tables(jnp.ones((3, 5, 4, 2)))   # identical outputs (1, 1): norm sqrt(2)
        >>> t.shape
        (3, 4, 5)
        >>> bool(jnp.all(t[..., :4] == 0)), round(float(t[0, 0, 4]), 4)   # no mismatch; skip costs sqrt(2)
        (True, 1.4142)
    """
    outputs = _check_outputs(outputs, 4, "[L, S, N, d]")
    return jax.lax.map(lambda o: mismatch_table(o, chunk_size=chunk_size), outputs)


def router_cosine(router_weights: jax.Array) -> jax.Array:
    """Cosine similarity of the router columns (MC-SMoE-style alternative metric): float[N, N].

    Pass the router matrix W_r: float[d, N] (cosine of the experts' router weight vectors), or router
    logits over T calibration tokens float[T, N] (cosine of the experts' logit profiles across tokens,
    MC-SMoE's "router-logits" similarity). The diagonal is 1; a zero column has cosine 0 with others.

    Args:
        router_weights: float[d, N] router matrix, or float[T, N] router logits (columns = experts).

    Returns:
        float[N, N] symmetric cosine similarities in [-1, 1] (dimensionless), diagonal 1.

    Raises:
        ConfigError: not a floating 2-D array.

    Example:
        >>> import jax.numpy as jnp
        >>> # columns (1, 0), (1, 1), (0, 2): neighbours at 45 degrees (cos = 1/sqrt(2)), the ends orthogonal
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


# ---------------------------------------------------------------------------------------------------
# Synthetic tables: a latent model of expert outputs (INFERRED; the paper calibrates on real models)
# ---------------------------------------------------------------------------------------------------


def _layer_key(sc, layer) -> jax.Array:
    base = jax.random.fold_in(jax.random.key(sc.table_seed), _TAG_SIMILARITY)
    return jax.random.fold_in(base, layer)


def _clusters(sc, key) -> jax.Array:
    # a uniformly random permutation (argsort of uniforms) dealt round-robin into the clusters
    perm = jnp.argsort(jax.random.uniform(jax.random.fold_in(key, 0), (sc.n_nodes,), jnp.float32))
    return (perm % sc.n_clusters).astype(jnp.int32)


def _norms(sc, key) -> jax.Array:
    w = jax.random.normal(jax.random.fold_in(key, 1), (sc.n_nodes,), jnp.float32).astype(jnp.result_type(float))
    return jnp.asarray(sc.output_norm, w.dtype) * jnp.exp(jnp.asarray(sc.output_norm_sigma, w.dtype) * w)


@jax.jit
def synthetic_clusters(sc) -> jax.Array:
    """Cluster of every expert in the synthetic latent model: int32[L, N], values in [0, n_clusters).

    Per layer, a random permutation (fixed by `sc.table_seed` and the layer) deals the N experts into
    `sc.n_clusters` clusters of equal size (+-1), so which node shares a cluster with the user's local
    expert (node 0) varies across layers.

    Example:
        >>> from sift_jax.scenario import Scenario
        >>> c = synthetic_clusters(Scenario(n_nodes=8, n_layers=2, n_clusters=4))
        >>> c.shape, [int(x) for x in jax.numpy.bincount(c[0], length=4)]
        ((2, 8), [2, 2, 2, 2])
    """
    return jax.vmap(lambda layer: _clusters(sc, _layer_key(sc, layer)))(jnp.arange(sc.n_layers))


@jax.jit
def synthetic_norms(sc) -> jax.Array:
    """Per-expert output-norm scale n_i of the latent model: float[L, N] (log-normal, median output_norm).

    n_i = sc.output_norm * exp(sc.output_norm_sigma * w_i), w_i ~ N(0, 1) fixed by `sc.table_seed`
    and the layer. `output_norm` and `output_norm_sigma` may be traced.
    """
    return jax.vmap(lambda layer: _norms(sc, _layer_key(sc, layer)))(jnp.arange(sc.n_layers))


@functools.partial(jax.jit, static_argnames=("n_samples", "latent_dim"))
def synthetic_outputs(sc, layer, n_samples: int = 256, latent_dim: int = 64) -> jax.Array:
    """Sampled expert outputs of the latent model at one layer: float[S, N, D].

    Latent model (INFERRED, documented in `synthetic_tables`): for calibration input s,
    FFN_i(z_s) = n_i v_i(s), v_i(s) = sqrt(a) c_{k(i)}(s) + sqrt(1 - a) e_i(s), with
    c_k(s), e_i(s) ~ N(0, I_D / D) independent, k(i) = `synthetic_clusters`, n_i = `synthetic_norms`,
    a = clip(sc.intra_cluster_cosine, 0, 1). Deterministic in (sc.table_seed, layer).

    Args:
        sc: scenario (static n_nodes, n_clusters, table_seed; traced dynamic leaves are fine).
        layer: layer index (int, may be traced).
        n_samples: S, calibration inputs (static). latent_dim: D, output dimension (static).

    Example:
        >>> import jax
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=4, n_clusters=2)   # eval_shape: traced, not compiled (the check is the shape)
        >>> jax.eval_shape(lambda s: synthetic_outputs(s, 0, n_samples=5, latent_dim=3), sc).shape
        (5, 4, 3)
    """
    key = _layer_key(sc, layer)
    cluster = _clusters(sc, key)
    norms = _norms(sc, key)
    scale = 1.0 / jnp.sqrt(jnp.asarray(latent_dim, norms.dtype))
    z = (
        jax.random.normal(
            jax.random.fold_in(key, 2), (n_samples, sc.n_clusters + sc.n_nodes, latent_dim), jnp.float32
        ).astype(jnp.result_type(float))
        * scale
    )  # float32 draws: same under x64
    c, e = z[:, : sc.n_clusters], z[:, sc.n_clusters :]
    member = jax.nn.one_hot(cluster, sc.n_clusters, dtype=c.dtype)  # [N, C]
    shared = jnp.einsum("nc,scd->snd", member, c, precision=jax.lax.Precision.HIGHEST)
    a = jnp.clip(jnp.asarray(sc.intra_cluster_cosine, c.dtype), 0.0, 1.0)
    v = jnp.sqrt(a) * shared + jnp.sqrt(1.0 - a) * e
    return norms.astype(c.dtype)[None, :, None] * v


@functools.partial(jax.jit, static_argnames=("n_samples", "latent_dim", "chunk_size"))
def synthetic_tables(sc, n_samples: int = 256, latent_dim: int = 64, chunk_size: int | None = None) -> jax.Array:
    """Mismatch tables Fbar float[L, N, N+1] from a latent model of expert outputs (for the presets).

    The paper calibrates Fbar on real models (§2.8); without a model we sample outputs from a latent
    model (INFERRED, ours) and compute the genuine mean-mismatch table with `mismatch_table`:

    - Experts are dealt into `sc.n_clusters` equal clusters per layer (random, fixed by `table_seed`).
    - On calibration input s, expert i outputs FFN_i(z_s) = n_i v_i(s) with
      v_i(s) = sqrt(a) c_{k(i)}(s) + sqrt(1 - a) e_i(s); c_k(s) (one per cluster) and e_i(s) (one per
      expert) are independent N(0, I_D / D). So E||v_i||^2 = 1 and the output cosine concentrates at
      a = `intra_cluster_cosine` within a cluster and at 0 across clusters (fluctuation ~ 1/sqrt(D)).
      Negative `intra_cluster_cosine` is clipped to 0 (no cluster of > 2 vectors has all cosines < 0).
    - n_i = `output_norm` * exp(`output_norm_sigma` * w_i), w_i ~ N(0, 1): log-normal across experts with
      median `output_norm`; the table scales linearly with `output_norm`.

    Resulting table (large D): skip Fbar[i, N] ~ n_i; same cluster Fbar[i, j] ~ sqrt(n_i^2 + n_j^2 -
    2 a n_i n_j) (~ 0.45 n for a = 0.9 and equal norms); other clusters ~ sqrt(n_i^2 + n_j^2) > skip, so
    Remark 1 rules those substitutes out.

    Recommended latent values per preset (measured with the default gates of `gating.draw`: temperature
    1, popularity_skew 0.5; a = 0.9, sigma = 0.3, S = 256, D = 64; 1024 tokens x all layers). "eta50"
    is the eta at which half of the tokens can afford the change alone (its Prop. 1 cost <= eta), a
    feasibility proxy; the decisions a policy takes also depend on the energies:

    - switch-base-8 (N=8, K=1, g = 1): output_norm = 250, n_clusters = 4 (pairs). Replacing the expert
      by its cluster partner: feasible for 3% of tokens at eta = 100, 51% at 150, 82% at 200, 97% at 250
      (eta50 ~ 140). Skipping would need ~ 257 (eta50) but K = 1 cannot skip under (16d). So eta in
      [0, 300] moves decisions from keep to replace.
    - Mixtral-8x7B (N=8, K=2): output_norm = 4, n_clusters = 4. eta50: change the 2nd slot 0.8, skip
      the 2nd slot 1.45, replace the top expert 1.4, change both slots 2.3, skip the top expert 2.6:
      [0, 2.5] spans keep -> replace/skip the 2nd -> replace the 1st, with eta = 1.5 in the middle.
    - GPT-OSS-20B (N=32, K=4): output_norm = 100, n_clusters = 8 (4 experts per cluster). At eta = 30
      the top expert is replaceable for 89% of tokens and skippable for 24%, the three lower slots can
      all be removed for 52% and changing every slot is not yet affordable (eta50 49); an axis of
      [0, 50] spans the transition. (With output_norm = 60 eta = 30 is already the eta50 of changing
      every slot, more permissive than the other presets' defaults.)
    - Lower `intra_cluster_cosine` (0.8) raises replacement costs by ~ 30% and leaves skip costs alone.

    Args:
        sc: scenario; static n_layers, n_nodes, n_clusters, table_seed; dynamic output_norm,
            output_norm_sigma, intra_cluster_cosine may be traced (vmap over them works).
        n_samples: S latent calibration inputs per layer (static). latent_dim: D (static).
        chunk_size: see `mismatch_table`.

    Returns:
        float[L, N, N+1], diagonal 0, column N = mean ||FFN_i||.

    Example:
        Shapes only, by tracing (`jax.eval_shape`): compiling the sampler takes seconds on a small CPU.
        tests/test_similarity.py checks the values (diagonal 0, cluster structure, linear scaling).

        >>> import jax
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=8, n_layers=2, n_clusters=4, output_norm=10.0)
        >>> jax.eval_shape(synthetic_tables, sc).shape     # [L, N, N+1]
        (2, 8, 9)
    """

    def one(layer):
        return mismatch_table(synthetic_outputs(sc, layer, n_samples, latent_dim), chunk_size=chunk_size)

    return jax.lax.map(one, jnp.arange(sc.n_layers))
