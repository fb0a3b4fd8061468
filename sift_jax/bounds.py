"""Accuracy-degradation bounds (paper §2.4-§2.7) and empirical estimators of B_max and beta.

- Prop. 1 (eq. 13): E[delta^(l)] <= sum_{i in Top-K} g_i Fbar[i, phi(i)], the per-token layer bound
  `layer_bound`; `exact_deviation` is the true delta for given expert outputs (validation).
- Remark 1: replacing i by j only helps when Fbar[i, j] < Fbar[i, skip] (`replace_beats_skip`).
- Thm. 1 (eq. 14): e^(l) <= beta^(l) e^(l-1) + 2 B^(l) + delta^(l), e^(0) = 0 (`final_bound`), whose
  unrolled sum is `final_bound_closed_form`.
- Cor. 1 (eq. 15): per-layer budgets eta^(l) from a global target theta (`layer_budgets`).
- Estimators of the constants of Assumptions 1-2 (`estimate_b_max`, `lipschitz_finite_difference`,
  `lipschitz_power_iteration`). They are **empirical estimates** over the inputs you give, not
  certified constants: the true sup over all inputs can be larger.

Mapping convention (shared with the policies): `mapping[..., i]` is the node that serves the i-th Top-K
slot (expert `topk[..., i]`); `mapping == topk` retains, another node replaces, -1 skips.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sift_jax.errors import ConfigError

__all__ = [
    "estimate_b_max",
    "exact_deviation",
    "final_bound",
    "layer_bound",
    "layer_budgets",
    "lipschitz_finite_difference",
    "lipschitz_power_iteration",
    "replace_beats_skip",
]


def _check_table(table) -> jax.Array:
    table = jnp.asarray(table)
    if table.ndim != 2 or table.shape[1] != table.shape[0] + 1:
        raise ConfigError("table", f"array of shape {table.shape}", "float[N, N+1] (column N = skip)")
    return table


def _columns(mapping: jax.Array, n: int) -> jax.Array:
    mapping = jnp.asarray(mapping)
    return jnp.where(mapping < 0, n, mapping)


@jax.jit
def layer_bound(g: jax.Array, topk: jax.Array, mapping: jax.Array, table: jax.Array) -> jax.Array:
    """Prop. 1 bound per token: sum_i g_i Fbar[topk_i, phi(i)], phi(i) = -1 -> skip column N.

    Args:
        g: float[..., K] gate weights of the Top-K slots.
        topk: int[..., K] Top-K expert indices.
        mapping: int[..., K] node serving each slot; -1 = skipped.
        table: float[N, N+1] mismatch table of the layer (vmap over layers for [L, N, N+1]).

    Returns:
        float[...], the bound (units of the expert outputs). Out-of-range indices are not checked
        (JAX clamps gathers); policies produce mappings in [-1, N).

    Example:
        >>> import jax.numpy as jnp
        >>> table = jnp.array([[0.0, 1.0, 5.0], [1.0, 0.0, 3.0]])
        >>> # slot 0: expert 0 replaced by node 1 (Fbar[0, 1] = 1); slot 1: expert 1 skipped (Fbar[1, 2] = 3)
        >>> float(layer_bound(jnp.array([0.7, 0.3]), jnp.array([0, 1]), jnp.array([1, -1]), table))  # 0.7 + 0.9
        1.6
        >>> float(layer_bound(jnp.array([0.7, 0.3]), jnp.array([0, 1]), jnp.array([0, 1]), table))  # retain all
        0.0
    """
    table = _check_table(table)
    cols = _columns(mapping, table.shape[0])
    vals = table[jnp.asarray(topk), cols]
    return jnp.sum(jnp.asarray(g) * vals, axis=-1)


@jax.jit
def exact_deviation(g: jax.Array, topk: jax.Array, mapping: jax.Array, outputs: jax.Array) -> jax.Array:
    """The layer deviation delta = ||sum_i g_i (FFN_phi(i)(z) - FFN_i(z))|| of eq. (12) for one input.

    A skipped slot contributes output 0 (FFN_skip = 0); substitutes inherit g_i; no renormalisation.

    Args:
        g, topk, mapping: float/int[..., K] as in `layer_bound`.
        outputs: float[..., N, d], every expert's output on the token (same leading dims as g).

    Returns:
        float[...].

    Example:
        >>> import jax.numpy as jnp
        >>> out = jnp.array([[3.0, 0.0], [0.0, 4.0]])   # N=2, d=2
        >>> float(exact_deviation(jnp.array([1.0]), jnp.array([0]), jnp.array([1]), out))   # ||(0, 4) - (3, 0)||
        5.0
        >>> float(exact_deviation(jnp.array([0.5]), jnp.array([1]), jnp.array([-1]), out))  # skip: 0.5 ||(0, 4)||
        2.0
    """
    outputs = jnp.asarray(outputs)
    n = outputs.shape[-2]
    ext = jnp.concatenate([outputs, jnp.zeros_like(outputs[..., :1, :])], axis=-2)  # [..., N+1, d]
    cols = _columns(mapping, n)
    orig = jnp.take_along_axis(outputs, jnp.asarray(topk)[..., None], axis=-2)  # [..., K, d]
    sub = jnp.take_along_axis(ext, cols[..., None], axis=-2)
    diff = jnp.sum(jnp.asarray(g)[..., None] * (sub - orig), axis=-2)
    sq = jnp.sum(jnp.square(diff), axis=-1)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


@jax.jit
def mismatch_factor(table: jax.Array) -> jax.Array:
    """Remark 1 factor Fbar[i, j] / Fbar[i, skip]: float[N, N] (diagonal 0; inf where Fbar[i, skip] = 0).

    Example:
        >>> import jax.numpy as jnp
        >>> mismatch_factor(jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]]))
        Array([[0. , 0.5],
               [2. , 0. ]], dtype=float32)
    """
    table = _check_table(table)
    n = table.shape[0]
    skip = table[:, n:]
    f = jnp.where(skip > 0, table[:, :n] / jnp.where(skip > 0, skip, 1.0), jnp.inf)
    return jnp.where(jnp.eye(n, dtype=bool), 0.0, f)


@jax.jit
def replace_beats_skip(table: jax.Array) -> jax.Array:
    """Remark 1 mask: bool[N, N], True where replacing expert i by j beats skipping i.

    allowed[i, j] = Fbar[i, j] < Fbar[i, N] (mismatch factor < 1); the diagonal (retain) is True.
    Policies use it to prune substitutes that a skip dominates.

    Args:
        table: float[N, N+1] mismatch table of one layer (column N = skip).

    Returns:
        bool[N, N], row i = original expert, column j = substitute node.

    Raises:
        ConfigError: `table` is not of shape [N, N+1].

    Example:
        >>> import jax.numpy as jnp
        >>> # row 0: Fbar[0, 1] = 1 < skip 2; row 1: Fbar[1, 0] = 1 >= skip 0.5
        >>> replace_beats_skip(jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]]))
        Array([[ True,  True],
               [False,  True]], dtype=bool)
    """
    table = _check_table(table)
    n = table.shape[0]
    return (table[:, :n] < table[:, n:]) | jnp.eye(n, dtype=bool)


def _broadcast_layers(*xs):
    arrs = [jnp.asarray(x) for x in xs]
    dtype = jnp.result_type(*arrs, float)
    shape = jnp.broadcast_shapes(*(a.shape for a in arrs))
    if len(shape) == 0:
        raise ConfigError("delta", "scalars only", "at least one float[..., L] argument (layers on the last axis)")
    return [jnp.broadcast_to(a.astype(dtype), shape) for a in arrs]


@jax.jit
def final_bound(delta: jax.Array, b_max: jax.Array, beta_max: jax.Array) -> jax.Array:
    """Thm. 1 bound on the final-output deviation e^(l) for every layer l, by the recursion.

    e^(l) <= beta^(l) e^(l-1) + 2 B^(l) + delta^(l), e^(0) = 0 (App. B, eqs. 29-32).

    Args:
        delta: float[..., L] per-layer deviation (or its expectation / budget).
        b_max: float[..., L] or scalar, B_max^(l) (Assumption 1).
        beta_max: float[..., L] or scalar, beta_{E,max}^(l) = max_i beta_{E,i}^(l) (Assumption 2).

    Returns:
        float[..., L], the bound for e^(1), ..., e^(L).

    Example:
        >>> import jax.numpy as jnp
        >>> # 2 B + delta = 2 per layer: e1 = 2, e2 = 2 e1 + 2 = 6, e3 = 2 e2 + 2 = 14
        >>> final_bound(jnp.array([1.0, 1.0, 1.0]), 0.5, 2.0)
        Array([ 2.,  6., 14.], dtype=float32)
    """
    delta, b_max, beta_max = _broadcast_layers(delta, b_max, beta_max)
    add = 2.0 * b_max + delta

    def step(e_prev, xs):
        beta, a = xs
        e = beta * e_prev + a
        return e, e

    init = jnp.zeros(delta.shape[:-1], delta.dtype)
    _, e = jax.lax.scan(step, init, (jnp.moveaxis(beta_max, -1, 0), jnp.moveaxis(add, -1, 0)))
    return jnp.moveaxis(e, 0, -1)


@jax.jit
def final_bound_closed_form(delta: jax.Array, b_max: jax.Array, beta_max: jax.Array) -> jax.Array:
    """Thm. 1, eq. (14) as printed: e^(l) <= sum_{r<=l} (2 B^(r) + delta^(r)) prod_{t=r+1}^{l} beta^(t).

    Same arguments and result as `final_bound` (O(L^2) memory per layer; a reference for it).

    Example:
        >>> import jax.numpy as jnp
        >>> final_bound_closed_form(jnp.array([1.0, 1.0, 1.0]), 0.5, 2.0)
        Array([ 2.,  6., 14.], dtype=float32)
    """
    delta, b_max, beta_max = _broadcast_layers(delta, b_max, beta_max)
    n_layers = delta.shape[-1]
    add = 2.0 * b_max + delta
    idx = jnp.arange(n_layers)

    def row(l):
        # prod_{t=r+1}^{l} beta_t for every r: factors where r < t <= l, 1 elsewhere
        use = (idx[None, :] > idx[:, None]) & (idx[None, :] <= l)  # [r, t]
        prods = jnp.prod(jnp.where(use, beta_max[..., None, :], 1.0), axis=-1)  # [..., r]
        return jnp.sum(jnp.where(idx <= l, add * prods, 0.0), axis=-1)

    return jnp.moveaxis(jax.lax.map(row, idx), 0, -1)


@jax.jit
def layer_budgets(theta, kappa, b_max, beta_max, split=None, delta_prev=None) -> jax.Array:
    """Cor. 1 per-layer deviation budgets eta^(l), float[L].

    eta^(l) = min{ kappa^(l) - 2 B^(l) - sum_{r<l} f(r, l),  theta^(l) / prod_{t>l} beta^(t) - 2 B^(l) },
    f(r, l) = (2 B^(r) + delta^(r)) prod_{t=r+1}^{l} beta^(t).

    Choices (INFERRED; the paper leaves them open):
    - `split`: nonnegative weights float[L] of the target, theta^(l) = theta * split_l / sum(split);
      default the equal split theta / L.
    - `kappa`: intermediate targets E[e^(l)] <= kappa^(l), scalar or float[L]; inf disables them. At the
      last layer min(kappa^(L), theta) is used (the target there is theta).
    - `delta_prev`: the deviations delta^(r) in f(r, l). Default None plans them as the budgets
      themselves, delta^(r) = max(eta^(r), 0) (the worst case that still meets the budgets), computed
      layer by layer; then `final_bound(max(eta, 0), b_max, beta_max)` meets theta at layer L and kappa
      at every layer. Pass measured or expected deviations instead for online use.
    - A negative budget means the target cannot be guaranteed through Thm. 1 even with zero deviation
      (the selection-independent 2 B term is too large); values are returned unclipped. Where
      prod_{t>l} beta^(t) = 0 the second term is +inf (and with kappa^(l) = inf so is the budget; a
      planned infinite deviation then makes finite kappa targets of the layers before the zero-Lipschitz
      layer unattainable, -inf). No NaN is produced for nonnegative finite B, beta and theta.

    Args:
        theta: scalar target on the final-output deviation E[e^(L)].
        kappa: scalar or float[L].
        b_max, beta_max: scalar or float[L] (at least one argument must be float[L]).
        split: float[L] or None. delta_prev: float[L] or None.

    Returns:
        float[L].

    Example:
        >>> import jax.numpy as jnp
        >>> eta = layer_budgets(3.0, jnp.inf, jnp.array([0.1, 0.1, 0.1]), 1.0)
        >>> [round(float(x), 4) for x in eta]      # theta / L - 2 B = 3 / 3 - 0.2 with beta = 1
        [0.8, 0.8, 0.8]
        >>> round(float(final_bound(eta, 0.1, 1.0)[-1]), 4)    # plugged into Thm. 1: meets theta
        3.0
    """
    theta = jnp.asarray(theta)
    if theta.ndim != 0:
        raise ConfigError("theta", f"array of shape {theta.shape}", "a scalar")
    args = (
        [kappa, b_max, beta_max]
        + ([split] if split is not None else [])
        + ([delta_prev] if delta_prev is not None else [])
    )
    shapes = [jnp.shape(a) for a in args]
    if any(len(s) > 1 for s in shapes) or all(len(s) == 0 for s in shapes):
        raise ConfigError("b_max", f"shapes {shapes}", "scalars or float[L] arrays, at least one float[L]")
    full = _broadcast_layers(*args, theta)
    kappa, b_max, beta_max = full[:3]
    rest = full[3:-1]
    theta = full[-1][0]
    n_layers = b_max.shape[0]
    if split is None:
        theta_l = jnp.full((n_layers,), 1.0 / n_layers, b_max.dtype) * theta
    else:
        w = rest.pop(0)
        theta_l = theta * w / jnp.sum(w)
    delta = rest.pop(0) if delta_prev is not None else None
    kappa = kappa.at[-1].min(theta)
    # tail[l] = prod_{t=l+1}^{L} beta_t
    tail = jnp.concatenate([jnp.cumprod(beta_max[::-1])[::-1][1:], jnp.ones((1,), beta_max.dtype)])
    term2 = jnp.where(tail > 0, theta_l / jnp.where(tail > 0, tail, 1.0), jnp.inf) - 2.0 * b_max

    def step(e_prev, xs):
        # e_prev = Thm. 1 bound of layer l-1 with the planned deviations; sum_{r<l} f(r, l) = beta_l e_prev
        kap, b, beta, t2, d = xs
        upstream = jnp.where(beta == 0, 0.0, beta * e_prev)  # 0 * inf = 0: a zero-Lipschitz layer resets
        term1 = jnp.where(kap == jnp.inf, jnp.inf, kap - 2.0 * b - upstream)  # kappa = inf: no constraint
        eta = jnp.minimum(term1, t2)
        d_used = jnp.maximum(eta, 0.0) if delta is None else d
        return upstream + 2.0 * b + d_used, eta

    d_in = jnp.zeros_like(b_max) if delta is None else delta
    _, eta = jax.lax.scan(step, jnp.zeros((), b_max.dtype), (kappa, b_max, beta_max, term2, d_in))
    return eta


# ---------------------------------------------------------------------------------------------------
# Empirical estimators of the Assumption 1-2 constants (not certified bounds)
# ---------------------------------------------------------------------------------------------------


def _norm_last(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1))


def estimate_b_max(fn: Callable[[jax.Array], jax.Array], zs: jax.Array, batch_size: int | None = None) -> jax.Array:
    """Empirical B_max: the largest output norm max_s ||fn(z_s)||_2 over the given inputs (Assumption 1).

    This is an **empirical estimate** over `zs`, not a certified constant: inputs outside the sample
    can have larger outputs. Take `.max()` over experts for B_max^(l).

    Args:
        fn: float[d] -> float[..., d_out], e.g. all N experts of a layer stacked as [N, d_out].
        zs: float[S, d] inputs (e.g. calibration hidden states).
        batch_size: if given, evaluate with `lax.map` in batches of this size (bounded memory).

    Returns:
        float[...] per leading output index (per expert), the max over samples of the norm over d_out.

    Example:
        >>> import jax.numpy as jnp
        >>> W = jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])        # two linear experts
        >>> # largest input norm ||(3, 4)|| = 5, scaled by 1 and 2
        >>> estimate_b_max(lambda z: W @ z, jnp.array([[3.0, 4.0], [1.0, 0.0]]))
        Array([ 5., 10.], dtype=float32)
    """

    def run(zs):
        out = jax.vmap(fn)(zs) if batch_size is None else jax.lax.map(fn, zs, batch_size=batch_size)
        return jnp.max(_norm_last(out), axis=0)

    return jax.jit(run)(jnp.asarray(zs))


def lipschitz_finite_difference(
    fn: Callable[[jax.Array], jax.Array], zs: jax.Array, key: jax.Array, eps: float = 1e-3, n_directions: int = 8
) -> jax.Array:
    """Empirical Lipschitz constant by finite differences (the paper's suggestion, §2.1).

    beta_i ~ max over samples s and random unit directions u of ||fn_i(z_s + eps u) - fn_i(z_s)|| / eps.
    This is an **empirical estimate**, not a certified constant: it is a lower bound of the local
    Lipschitz constant around the samples (random directions rarely hit the worst one) and says nothing
    about inputs far from them. Use `lipschitz_power_iteration` for the worst direction at a point.
    Float32 rounding limits the relative accuracy to about 1e-7 ||fn|| / (eps beta).

    Args:
        fn: float[d] -> float[..., d_out] (all experts of a layer, or one).
        zs: float[S, d] base points. key: PRNG key for the directions.
        eps: absolute step length (in input units). n_directions: random directions per sample (static).

    Returns:
        float[...] per leading output index (per expert).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> fn = lambda z: 3.0 * z                              # Lipschitz constant 3 in every direction
        >>> est = lipschitz_finite_difference(fn, jnp.ones((4, 5)), jax.random.key(0))
        >>> bool(jnp.abs(est - 3.0) < 1e-2)
        True
    """

    def run(zs, key, eps):
        u = jax.random.normal(key, (zs.shape[0], n_directions, zs.shape[-1]), zs.dtype)
        u = u / _norm_last(u)[..., None]
        base = jax.vmap(fn)(zs)  # [S, ..., d_out]
        moved = jax.vmap(jax.vmap(fn))(zs[:, None, :] + eps * u)  # [S, D, ..., d_out]
        ratio = _norm_last(moved - base[:, None]) / eps
        return jnp.max(ratio, axis=(0, 1))

    return jax.jit(run)(jnp.asarray(zs), key, eps)


def lipschitz_power_iteration(
    fn: Callable[[jax.Array], jax.Array], z: jax.Array, key: jax.Array, iters: int = 100
) -> jax.Array:
    """Spectral norm of each expert's Jacobian at z by power iteration with `jax.jvp` / `jax.vjp`.

    For expert i with Jacobian J_i at z, iterates v <- J_i^T J_i v / ||.|| and returns ||J_i v||, the
    local Lipschitz constant ||J_i(z)||_2. For linear experts this is their exact Lipschitz constant.
    For nonlinear experts it is an **empirical estimate**, not a certified constant: the max over the
    given points is a lower bound of sup_z ||J_i(z)||_2 (Assumption 2's beta).

    Args:
        fn: float[d] -> float[..., d_out] (E = prod of the leading dims experts; each gets its own
            power iteration).
        z: float[d], or float[S, d] (maximum over the S points).
        key: PRNG key for the start vectors. iters: iterations (static).

    Returns:
        float[...] per leading output index (per expert).

    Raises:
        ConfigError: `z` is neither float[d] nor float[S, d].

    Example:
        >>> import jax, jax.numpy as jnp
        >>> # two linear experts with spectral norms 2 (diag(2, 1)) and 0.5
        >>> W = jnp.array([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.5], [0.0, 0.0]]])
        >>> lipschitz_power_iteration(lambda z: W @ z, jnp.ones(2), jax.random.key(0))
        Array([2. , 0.5], dtype=float32)
    """
    z = jnp.asarray(z)
    if z.ndim == 2:

        def run(z, key):
            keys = jax.random.split(key, z.shape[0])
            return jnp.max(jax.vmap(lambda zz, kk: _power_iteration(fn, zz, kk, iters))(z, keys), axis=0)

        return jax.jit(run)(z, key)
    if z.ndim != 1:
        raise ConfigError("z", f"array of shape {z.shape}", "float[d] or float[S, d]")
    return jax.jit(lambda z, key: _power_iteration(fn, z, key, iters))(z, key)


def _power_iteration(fn, z, key, iters):
    out_shape = jax.eval_shape(fn, z).shape
    lead, d_out = out_shape[:-1], out_shape[-1]
    n_exp = 1
    for s in lead:
        n_exp *= s

    def jv(v):  # v: [d] -> J v for all experts, [E, d_out]
        return jax.jvp(fn, (z,), (v,))[1].reshape(n_exp, d_out)

    _, vjp_fn = jax.vjp(fn, z)

    def jtu(u, e):  # J_e^T u for expert e: cotangent u at row e, 0 elsewhere
        cot = jnp.zeros((n_exp, d_out), u.dtype).at[e].set(u).reshape(out_shape)
        return vjp_fn(cot)[0]

    def normalise(v):
        nv = _norm_last(v)
        return v / jnp.where(nv > 0, nv, 1.0)[..., None]

    experts = jnp.arange(n_exp)

    def apply_j(vs):  # vs [E, d] -> [E, d_out], J_e v_e
        return jax.vmap(lambda v, e: jv(v)[e])(vs, experts)

    def body(_, vs):
        w = apply_j(vs)
        return normalise(jax.vmap(jtu)(w, experts))

    v0 = normalise(jax.random.normal(key, (n_exp, z.shape[0]), z.dtype))
    vs = jax.lax.fori_loop(0, iters, body, v0)
    return _norm_last(apply_j(vs)).reshape(lead)
