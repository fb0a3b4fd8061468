"""Prefilling policies: M tokens of one layer compete for node capacity (paper §3.4, §4.2-§4.4).

Problem (per layer). Token m picks a node set J_m, 1 <= |J_m| <= K, each of its Top-K experts i is
mapped to its best choice in J_m or skipped (two slots may share a substitute, eq. (12)), and the token
must meet sum_i g_i Fbar[topk_i, phi_i] <= eta. Node v then serves D_v = #{m : v in J_m} <= D_v,max
tokens, and the layer energy sum_v E_v(D_v) = sum_v sum_{d < D_v} dE[v, d] is minimised.

The slot mapping of a node set J and the candidate sets are described in `_sets`.

Methods (`prefill(..., method=...)`):
    "exact": K = 1 only, successive shortest augmenting paths (Algorithm 1; prefill_exact.py).
    "dp":    Algorithm 2, exact for any K over a dense load-state tensor (prefill_dp.py).
    "fast":  greedy + local search with a Lagrangian lower bound, any K, large M, N (prefill_fast.py).
    "auto":  `choose_method`: K = 1 -> exact; K > 1 -> dp when its state count fits, else fast.
`topk` is the practical Top-K baseline. Infeasible instances (some token cannot be served) return
feasible = False with every slot -1, zero loads, energy and deviations ("flagged, never assigned").

Shapes: dE float[N, D] marginal energies (J) from `sift_jax.costs.marginal_costs`, inf beyond capacity;
cap int32[N]; g float[M, K]; topk int32[M, K]; table float[N, N+1] (column N = skip).
"""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.policies._sets import (
    PrefillInfo,
    check_prefill_inputs,
    effective_caps,
    layer_energy,
)
from sift_jax.policies.decision import Decision, make_decision
from sift_jax.policies.prefill_dp import DP_MAX_WORK, dp_size, solve_dp
from sift_jax.policies.prefill_exact import solve_exact
from sift_jax.policies.prefill_fast import solve_fast
from sift_jax.scenario import Scenario

__all__ = [
    "PrefillInfo",
    "choose_method",
    "prefill",
    "prefill_bytes",
    "prefill_with_info",
    "random_instances",
    "topk",
    "topk_bytes",
    "topk_ideal",
]

METHODS = ("exact", "dp", "fast", "auto")


def choose_method(
    sc: Scenario, n_tokens: int | None = None, max_load: int | None = None, max_work: int | None = None
) -> str:
    """The siftmoe prefill rule: K = 1 -> "exact"; K > 1 -> "dp" if its state tensor fits, else "fast".

    Args:
        sc: scenario (uses top_k, n_nodes and, by default, n_tokens).
        n_tokens: M (default sc.n_tokens).
        max_load: width D of dE (default M).
        max_work: DP size limit on states x combos (default prefill_dp.DP_MAX_WORK).

    Returns:
        str, "exact", "dp" or "fast".

    Example:
        N = 4, K = 2, M = 4: (4 + 1)^4 = 625 load states x 10 node sets fits the DP; N = 8, M = 64:
        65^8 states do not:

        >>> from sift_jax.scenario import Scenario
        >>> small = Scenario(n_nodes=4, top_k=2, n_tokens=4)
        >>> choose_method(Scenario(n_nodes=8, top_k=1, n_tokens=64)), choose_method(small)
        ('exact', 'dp')
        >>> choose_method(Scenario(n_nodes=8, top_k=2, n_tokens=64)), choose_method(small, max_work=6249)
        ('fast', 'fast')
    """

    m = sc.n_tokens if n_tokens is None else n_tokens
    if sc.top_k == 1:
        return "exact"
    d = m if max_load is None else max_load
    states, combos = dp_size(m, sc.n_nodes, sc.top_k, d)
    return "dp" if states * combos <= (DP_MAX_WORK if max_work is None else max_work) else "fast"


# Per-instance memory of each method, as multiples of the float size: fitted upper envelopes of XLA's memory
# analysis of the vmapped per-sample program (2026-12-07, jax 0.10.2, CPU; tests/test_simulate.py checks them).
EXACT_BYTES = (3, 8)  # K = 1: M N (3 N + 8) (measured 0.36-0.88 of it at N = 4..16, M = 64..1024)
FAST_BYTES = (30, 1, 2)  # 30 M Cm + M C + 2 C N, Cm = min(C, max_cand) (measured 0.64-0.96 of it)
TOPK_BYTES = 12  # the Top-K baselines: 12 M N (measured 0.42-0.90 of it at N = 8..32, M = 16..384)


def _float_bytes() -> int:
    """Bytes of the float the engine computes in (4; 8 with jax_enable_x64)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64)).itemsize


def prefill_bytes(sc: Scenario, method: str = "auto", max_work: int | None = None, **options) -> int:
    """Upper estimate of the device memory one prefill instance of M = sc.n_tokens tokens needs (bytes).

    The DP: about three float [C, S] tensors and the int32 [M, S] argmin table (S states, C combos,
    `prefill_dp.dp_size`; XLA's memory analysis measured 0.75-0.85 of it at N = 4..6, K = 2, M = 5..16).
    "exact" (K = 1) and "fast": the fitted envelopes `EXACT_BYTES` and `FAST_BYTES` (C = sum_{k <= K}
    binom(N, k) node sets; the fast solver keeps [M, C] arrays for its all-sets fallback even when its
    lists are truncated to `max_cand`).

    Args:
        sc: scenario (n_tokens M, n_nodes N, top_k K). method: as `prefill` ("auto": `choose_method`).
        max_work: the DP limit passed to `choose_method`. **options: the solver options (the fast
            solver's `max_cand` is read; others are ignored).

    Returns:
        int bytes.

    Example:
        N = 4, K = 2, M = 24 picks the DP with S = 25^4 states and C = 10 combos, ~84 MB per instance, so
        a block of 256 samples would ask for ~21 GB; the fast method needs far less:

        >>> sc = Scenario(n_nodes=4, top_k=2, n_tokens=24)
        >>> choose_method(sc), round(prefill_bytes(sc) / 1e6, 1), round(prefill_bytes(sc, "fast") / 1e6, 3)
        ('dp', 84.4, 0.03)
    """
    if method == "auto":
        method = choose_method(sc, max_work=max_work)
    m, n = sc.n_tokens, sc.n_nodes
    item = _float_bytes()
    if method == "dp":
        states, combos = dp_size(m, n, sc.top_k, m)
        return item * 3 * states * combos + 4 * m * states
    if method == "exact":
        return item * m * n * (EXACT_BYTES[0] * n + EXACT_BYTES[1])
    sets = sum(math.comb(n, k) for k in range(1, sc.top_k + 1))
    max_cand = options.get("max_cand", inspect.signature(solve_fast).parameters["max_cand"].default)
    kept = sets if max_cand is None else min(sets, max_cand)
    return item * (FAST_BYTES[0] * m * kept + FAST_BYTES[1] * m * sets + FAST_BYTES[2] * sets * n)


def topk_bytes(sc: Scenario) -> int:
    """Upper estimate of the device memory one Top-K baseline prefill instance needs (bytes): `TOPK_BYTES`
    M N floats (fitted envelope of XLA's memory analysis, as `prefill_bytes`).

    Args:
        sc: scenario (n_tokens M, n_nodes N).

    Returns:
        int bytes.

    Example:
        >>> topk_bytes(Scenario(n_nodes=32, top_k=4, n_tokens=128))   # 12 x 128 x 32 float32
        196608
    """
    return _float_bytes() * TOPK_BYTES * sc.n_tokens * sc.n_nodes


def prefill_with_info(
    sc: Scenario, dE, cap, g, topk, table, method: str = "exact", **options
) -> tuple[Decision, PrefillInfo]:
    """`prefill` that also returns a `PrefillInfo` (method used, lower bound, relative gap).

    Options: exact: `use_classes`, `use_bitmask`; dp: `max_work` (states x combos limit); fast: `n_passes`,
    `n_pair_passes`, `n_cand`, `n_partners`, `n_pair_starts`, `n_dual`, `max_cand` (see prefill_*.py).
    With method="auto" each solver receives only the options it accepts.

    Args:
        sc: scenario; uses eta (may be traced), n_nodes N and top_k K (static).
        dE: float[N, D] marginal energies (J), inf beyond capacity (see `prefill`).
        cap: int32[N] capacities D_v,max (tokens).
        g: float[M, K] gate weights.
        topk: int32[M, K] Top-K expert indices.
        table: float[N, N + 1] mean mismatch Fbar, column N = skip.
        method: "exact" (K = 1), "dp", "fast" or "auto" (`choose_method`); static.
        **options: solver options (above); static.

    Returns:
        (Decision, PrefillInfo): the decision as `prefill` returns it, and the method used with a lower
        bound on the optimal layer energy (J) and the relative gap.

    Raises:
        ConfigError: wrong shapes, an unknown method, "exact" with K > 1, or a DP beyond its size limit.

    Example:
        Two tokens with Top-2 experts {0, 1} and {1, 2} (g = 0.5 each; replacing an expert costs
        0.5 * 1.5, skipping one 0.5 * 1.0). With eta = 0 each is served by its own experts: loads
        (1, 2, 1), energy 3 + (1 + 2) + 1.5 = 7.5 J. With eta = 0.5 each token may skip one expert, and
        the cheapest is token 0 on node 1 and token 1 on node 2: 1 + 1.5 = 2.5 J. "auto" picks the exact
        DP here, so the lower bound is the energy itself:

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, top_k=2, n_tokens=2, eta=0.0)
        >>> dE = jnp.array([[3.0, 1.0], [1.0, 2.0], [1.5, 2.5]])
        >>> table = jnp.array([[0.0, 1.5, 1.5, 1.0], [1.5, 0.0, 1.5, 1.0], [1.5, 1.5, 0.0, 1.0]])
        >>> g, topk = jnp.full((2, 2), 0.5), jnp.array([[0, 1], [1, 2]])
        >>> solve = jax.jit(prefill_with_info, static_argnames="method")
        >>> for eta in (0.0, 0.5):
        ...     d, info = solve(sc.replace(eta=eta), dE, jnp.array([2, 2, 2]), g, topk, table, method="auto")
        ...     print(eta, d.assign.tolist(), d.loads.tolist(), float(d.energy_j), info.method,
        ...           bool(info.lower_bound == d.energy_j))
        0.0 [[0, 1], [1, 2]] [1, 2, 1] 7.5 dp True
        0.5 [[-1, 1], [-1, 2]] [0, 1, 1] 2.5 dp True
    """
    dE, cap, g, topk, table = (jnp.asarray(a) for a in (dE, cap, g, topk, table))
    check_prefill_inputs(sc, dE, cap, g, topk, table)
    auto = method == "auto"
    if auto:
        method = choose_method(sc, g.shape[0], dE.shape[1], options.get("max_work"))
    if method == "exact":
        solver = solve_exact
    elif method == "dp":
        solver = solve_dp
    elif method == "fast":
        solver = solve_fast
    else:
        raise ConfigError("method", method, "one of " + ", ".join(METHODS))
    if auto:  # options may address any of the solvers: pass each its own
        accepted = inspect.signature(solver).parameters
        options = {key: value for key, value in options.items() if key in accepted}
    return solver(sc, dE, cap, g, topk, table, **options)


def prefill(sc: Scenario, dE, cap, g, topk, table, method: str = "exact", **options) -> Decision:
    """SiftMoE prefill decision for M tokens of one layer (paper Alg. 1 / Alg. 2).

    Args:
        sc: scenario; uses eta (may be traced), n_nodes N and top_k K (static).
        dE: float[N, D] marginal energies dE_v(d + 1) (J), inf beyond capacity; node 0 = user, whose
            first entry carries the one-off load energy (`sift_jax.costs.marginal_costs`).
        cap: int32[N] capacities D_v,max (tokens).
        g: float[M, K] gate weights.
        topk: int32[M, K] Top-K expert indices (expert v lives on node v).
        table: float[N, N + 1] mean mismatch Fbar, column N = skip.
        method: "exact" (K = 1), "dp", "fast" or "auto" (`choose_method`); static. Use
            `prefill_with_info` for the method used and the lower bound.
        **options: solver options, see `prefill_with_info`.

    Returns:
        Decision with assign int32[M, K] (node per slot, -1 = skipped), loads int32[N] (tokens per node),
        energy_j (J), deviation_bound float[M], feasible, n_replaced, n_skipped (totals over tokens);
        all zero (assign -1) when some token cannot be served.

    Raises:
        ConfigError: see `prefill_with_info`.

    Example:
        K = 1, eta = 0.5: tokens 0 and 1 (expert 1) may use any node, token 2 (expert 2) only node 2.
        Node 2 takes token 2 (2 J); then node 1 serves tokens 0 and 1 for 1 + 2 = 3 J, cheaper than
        node 2's second unit (3 J) or the user (5 J):

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, top_k=1, n_tokens=3, eta=0.5)
        >>> dE = jnp.array([[5.0, 1.0, 1.0], [1.0, 2.0, 4.0], [2.0, 3.0, jnp.inf]])
        >>> table = jnp.array([[0.0, 0.2, 0.9, 1.0], [0.3, 0.0, 0.2, 1.0], [0.9, 0.9, 0.0, 1.0]])
        >>> d = jax.jit(prefill)(sc, dE, jnp.array([3, 3, 2]), jnp.ones((3, 1)), jnp.array([[1], [1], [2]]), table)
        >>> d.assign[:, 0].tolist(), d.loads.tolist(), float(d.energy_j), bool(d.feasible)
        ([1, 1, 2], [0, 2, 1], 5.0, True)
    """
    return prefill_with_info(sc, dE, cap, g, topk, table, method, **options)[0]


def topk(sc: Scenario, dE, cap, g, topk_idx, table) -> Decision:
    """Practical Top-K prefill baseline (our reading of the paper's "Top-K").

    Every token sends each Top-K slot to its own expert's node. A node serves the first tokens (lowest
    index first) up to its capacity D_v,max (inf marginal cost = beyond capacity); the rest of its slots
    are lost and count as skips (deviation g_i Fbar[i, N]). Energy counts what is served. Unlike the
    siftmoe solvers the outcome is kept when constraints fail: `feasible` says whether nothing was lost
    and every token met eta, but assign/loads/energy are always the real outcome.

    Args:
        sc: scenario; uses eta, n_nodes N and top_k K (static).
        dE: float[N, D] marginal energies (J), inf beyond capacity (as `prefill`).
        cap: int32[N] capacities D_v,max (tokens).
        g: float[M, K] gate weights.
        topk_idx: int32[M, K] Top-K expert indices (expert v lives on node v).
        table: float[N, N + 1] mean mismatch Fbar, column N = skip.

    Returns:
        Decision with assign int32[M, K] (topk or -1 = lost), loads int32[N], energy_j of what is served
        (J), deviation_bound float[M] (skip mismatch of the lost slots), feasible, n_replaced = 0 and
        n_skipped = lost slots.

    Raises:
        ConfigError: wrong shapes.

    Example:
        Three tokens want node 1, which has room for two (its third marginal cost is inf): the third
        token's expert is lost, a deviation of 1.0 > eta:

        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=2, top_k=1, n_tokens=3, eta=0.5)
        >>> dE = jnp.array([[1.0, 1.0, 1.0], [1.0, 2.0, jnp.inf]])
        >>> table = jnp.array([[0.0, 0.3, 1.0], [0.3, 0.0, 1.0]])
        >>> d = jax.jit(topk)(sc, dE, jnp.array([3, 2]), jnp.ones((3, 1)), jnp.array([[1], [1], [1]]), table)
        >>> d.assign[:, 0].tolist(), d.deviation_bound.tolist(), float(d.energy_j), int(d.n_skipped), bool(d.feasible)
        ([1, 1, -1], [0.0, 0.0, 1.0], 3.0, 1, False)
    """
    dE, cap, g, topk_idx, table = (jnp.asarray(a) for a in (dE, cap, g, topk_idx, table))
    check_prefill_inputs(sc, dE, cap, g, topk_idx, table)
    n = sc.n_nodes
    cap_eff = effective_caps(dE, cap)
    want = jax.nn.one_hot(topk_idx, n, dtype=jnp.int32).max(1)  # [M, N]
    served = want * (jnp.cumsum(want, 0) <= cap_eff)
    ok_slot = jnp.take_along_axis(served, topk_idx, -1) > 0
    assign = jnp.where(ok_slot, topk_idx, -1).astype(jnp.int32)
    loads = served.sum(0).astype(jnp.int32)
    rows = table[topk_idx]
    own = jnp.take_along_axis(rows, topk_idx[..., None], -1)[..., 0]
    dev = jnp.sum(g * jnp.where(ok_slot, own, rows[..., n]), -1)
    return make_decision(
        assign,
        loads,
        layer_energy(dE, loads),
        dev,
        jnp.all(ok_slot) & jnp.all(dev <= sc.eta),
        topk_idx,
        reports_infeasible=True,
    )


def topk_ideal(sc, dE, cap, g, topk, table) -> Decision:
    """Ideal Top-K prefill: every token's Top-K experts are delivered (the accuracy upper bound).

    Deviation is 0 and nothing is replaced or skipped. Energy counts the loads within each node's capacity
    (beyond it the model has no finite energy; the ideal baseline assumes delivery anyway), so it equals
    what practical Top-K pays; `feasible` says whether every load fits its capacity.

    Args:
        sc: scenario (n_nodes N). dE: float[N, D] marginal energies (J), inf beyond capacity. cap: int32[N]
            (unused: capacity is read from dE). g: float[M, K]. topk: int32[M, K]. table: unused.

    Returns:
        Decision with assign = topk, loads, energy_j (J), deviation_bound 0, feasible (every load fits).

    Example:
        Two tokens want node 1, which has room for one (its second marginal cost is inf): the ideal
        baseline assumes both delivered and is flagged infeasible, practical Top-K (`topk`) loses one:

        >>> import jax.numpy as jnp
        >>> sc = Scenario(n_nodes=2, top_k=1, n_tokens=2, eta=0.5)
        >>> args = (sc, jnp.array([[1.0, 1.0], [1.0, jnp.inf]]), jnp.array([2, 2]), jnp.ones((2, 1)),
        ...         jnp.array([[1], [1]]), jnp.array([[0.0, 0.3, 1.0], [0.3, 0.0, 1.0]]))
        >>> ideal, practical = jax.jit(lambda *a: (topk_ideal(*a), topk(*a)))(*args)
        >>> ideal.assign[:, 0].tolist(), bool(ideal.feasible), practical.assign[:, 0].tolist(), bool(practical.feasible)
        ([1, 1], False, [1, -1], False)
    """
    del cap, table
    dE, g, topk = jnp.asarray(dE), jnp.asarray(g), jnp.asarray(topk)
    want = jax.nn.one_hot(topk, sc.n_nodes, dtype=jnp.int32).max(1)  # [M, N]
    loads = want.sum(0).astype(jnp.int32)
    d = jnp.arange(dE.shape[1])
    finite = jnp.isfinite(dE)
    energy = jnp.sum(jnp.where((d[None, :] < loads[:, None]) & finite, dE, 0.0))
    fits = jnp.all(jnp.where(d[None, :] < loads[:, None], finite, True))
    m = g.shape[0]
    return make_decision(topk, loads, energy, jnp.zeros((m,), dE.dtype), fits, topk, reports_infeasible=True)


def _instance_parts(m, n, k):
    return [n, n, 1, 1, n, n, n, n * n, n, m * n, m * k, 1]


def _instance_size(m, n, k):
    return sum(_instance_parts(m, n, k))


def _instance_from_uniform(u, m, n, k, d, dtype, tight, cap_lo):
    """One instance of `random_instances` from a vector of U(0, 1) numbers (deterministic)."""
    parts = jnp.split(u, np.cumsum(_instance_parts(m, n, k))[:-1])
    lin = lambda x, lo, hi: lo + (hi - lo) * x  # noqa: E731
    a = jnp.exp(lin(parts[0], math.log(0.3), math.log(3.0)))
    r = lin(parts[1], 0.0, min(1.2, 8.0 / m))
    steps = jnp.arange(d, dtype=dtype)
    helper = a[:, None] * jnp.exp(r[:, None] * steps)
    c0 = jnp.exp(lin(parts[2][0], math.log(0.1), math.log(3.0)))
    user = jnp.full((d,), c0).at[0].add(lin(parts[3][0], 0.0, 4.0))
    dE = helper.at[0].set(user)
    cap_big = jnp.floor((cap_lo + (1 - cap_lo) * parts[4]) * (m + 1))
    cap_small = jnp.floor(parts[5] * 3)
    cap = jnp.minimum(jnp.where(parts[6] < tight, cap_small, cap_big), m).astype(jnp.int32)
    dE = jnp.where(steps[None, :] < cap[:, None], dE, jnp.inf)
    off = lin(parts[7].reshape(n, n), 0.1, 1.6) * (1 - jnp.eye(n, dtype=dtype))
    table = jnp.concatenate([off, lin(parts[8], 0.6, 1.4)[:, None]], 1)
    topk_idx = jnp.argsort(parts[9].reshape(m, n), -1)[:, :k].astype(jnp.int32)
    expo = -jnp.log(jnp.maximum(parts[10].reshape(m, k), jnp.finfo(dtype).tiny))
    g = expo / expo.sum(-1, keepdims=True)  # Dirichlet(1, ..., 1)
    return dict(dE=dE, cap=cap, g=g, topk=topk_idx, table=table, eta=parts[11][0])


def random_instances(
    key: jax.Array,
    batch: int,
    n_tokens: int,
    n_nodes: int,
    top_k: int,
    max_load: int | None = None,
    dtype=jnp.float32,
    tight=0.3,
    cap_lo=0.0,
) -> dict:
    """A batch of random prefill instances (for tests and benchmarks).

    One uniform draw for the whole batch (fast to compile), transformed per instance:
    Helpers: convex increasing marginal costs a_v exp(r_v d), a_v log-uniform in [0.3, 3], r_v uniform in
    [0, min(1.2, 8 / M)];
    capacities uniform in cap_lo (M + 1)..M, replaced with probability `tight` by a small one in 0..2
    (`tight`, `cap_lo` may be traced).
    User: constant marginal c_0 log-uniform in [0.1, 3] plus a one-off first cost in [0, 4], capacity
    as the helpers'. Table: zero diagonal, off-diagonal mismatch in [0.1, 1.6], skip mismatch in
    [0.6, 1.4]. Gates: Dirichlet(1) over K distinct random experts. eta uniform in [0, 1].

    Args:
        key: a JAX PRNG key.
        batch: B, number of instances (static).
        n_tokens: M (static).
        n_nodes: N (static).
        top_k: K (static).
        max_load: D, the width of dE (static; default M).
        dtype: float dtype of the arrays.
        tight: probability that a node gets a small capacity (0..2).
        cap_lo: lower end of the large capacities, as a fraction of M + 1.

    Returns:
        dict of arrays with a leading batch axis: dE float[B, N, D] (J), cap int32[B, N], g float[B, M, K],
        topk int32[B, M, K], table float[B, N, N + 1], eta float[B].

    Example:
        The sizes set shapes, so they are static under jit:

        >>> inst = jax.jit(random_instances, static_argnums=(1, 2, 3, 4))(jax.random.key(0), 5, 4, 3, 2)
        >>> sorted(inst), inst["dE"].shape, inst["g"].shape
        (['cap', 'dE', 'eta', 'g', 'table', 'topk'], (5, 3, 4), (5, 4, 2))
        >>> g, cap = np.asarray(inst["g"]), np.asarray(inst["cap"])
        >>> bool(np.allclose(g.sum(-1), 1.0)), bool(np.all((cap >= 0) & (cap <= 4)))   # gates sum to 1, cap <= M
        (True, True)
    """
    m, n, k = n_tokens, n_nodes, top_k
    d = m if max_load is None else max_load
    u = jax.random.uniform(key, (batch, _instance_size(m, n, k)), dtype)
    return jax.vmap(lambda x: _instance_from_uniform(x, m, n, k, d, dtype, tight, cap_lo))(u)
