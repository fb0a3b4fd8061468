"""Exact K = 1 prefill: Algorithm 1 (successive shortest augmenting paths), in fixed shapes.

Network: source -> token (unit) -> feasible node -> sink, the node -> sink arcs priced by the node's next
marginal energy dE_v(D_v + 1). Token -> node arcs cost nothing, so an s-t path's cost is the price of
the node where it ends, and a shortest augmenting path for a new token is: the cheapest open node
reachable from the token's feasible set through the exchange graph (u -> w when some token now at u may
move to w), then every token on the path moves one hop. The sink -> node back arcs are never used by a
simple s-t path, so no Bellman-Ford over negative arcs is needed: reachability is a breadth-first
search over N nodes. Tokens are added one at a time in index order, each by a shortest augmenting
path (the Hungarian row-by-row scheme), which keeps the partial assignment optimal; the result is
optimal because every node's marginal cost is non-decreasing (Prop. 2).

Correction of the paper's Prop. 2: the user's one-off load energy P_load T_load makes E_UE affine with
a jump at 0, not convex, so Algorithm 1 alone can be suboptimal. We solve with the user on and its
load cost prepaid (first marginal = the constant per-token cost, L added), and with the user node off,
and keep the cheaper true energy. Exact: every solution with D_UE = 0 is feasible for the "off"
problem; every solution with D_UE >= 1 has the same energy in the "on" one. The "off" run is skipped
when the "on" optimum leaves the user idle (it is then also the best "off" solution) or is infeasible.

Interchangeable tokens: token m's feasible set is {v : g_m Fbar[t_m, v] <= eta, v available}, the first
k_m nodes of expert t_m's nodes sorted by Fbar[t_m, .] (ties kept together). So tokens fall in at most
N (N + 1) classes (t, k) with identical sets; when that is fewer than M the search state is the count
matrix classes x nodes instead of tokens x nodes, and tokens of a class are handed their nodes in
index order at the end.

Cost per instance: O(M (N^2 + h C)) with h the path length and C the number of classes
(min(M, N (N + 1))); for N <= 32 node sets are uint32 bitmasks (`_ssap_bits`), for larger N boolean
matrices (`_ssap`). See benchmarks/bench_prefill.py for measured throughput.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sift_jax.errors import ConfigError
from sift_jax.policies._sets import PrefillInfo, decision_from_combos, effective_caps, layer_energy, user_prepaid
from sift_jax.policies.lazy import lazy

__all__ = ["solve_exact"]


def _ssap(omega, cls, cost, cap):
    """Successive shortest augmenting paths over classes.

    Args:
        omega: bool[C, N] feasible nodes per class. cls: int32[M] class of each token.
        cost: float[N, D] marginal costs (non-decreasing per node). cap: int32[N] capacities.

    Returns:
        x int32[C, N] tokens of each class per node, loads int32[N], ok bool[] all tokens placed.
    """
    n_cls, n = omega.shape
    width = cost.shape[1]
    om = omega.astype(jnp.int32)
    nodes = jnp.arange(n)

    def price(loads):
        p = cost[nodes, jnp.minimum(loads, width - 1)]
        return jnp.where(loads < cap, p, jnp.inf)

    def bfs_body(s):
        reached, frontier, parent, adj = s
        edge = frontier[:, None] & adj
        new = jnp.any(edge, 0) & ~reached
        parent = jnp.where(new, jnp.argmax(edge, 0).astype(jnp.int32), parent)
        return reached | new, new, parent, adj

    def token(m, state):
        x, cnt, loads, ok = state
        c = cls[m]
        start = omega[c]
        reached, _, parent, _ = jax.lax.while_loop(
            lambda s: jnp.any(s[1]), bfs_body, (start, start, jnp.full((n,), -1, jnp.int32), cnt > 0)
        )
        p = jnp.where(reached, price(loads), jnp.inf)
        w = jnp.argmin(p).astype(jnp.int32)
        found = jnp.isfinite(p[w])

        def walk_body(s):  # move one token of some class c2 from parent[cur] to cur
            cur, x, cnt, go = s
            u = parent[cur]
            c2 = jnp.argmax((x[:, u] > 0) & omega[:, cur])
            x = x.at[c2, u].add(-1).at[c2, cur].add(1)
            cnt = cnt.at[u].add(-om[c2]).at[cur].add(om[c2])
            return u, x, cnt, go

        cur, x, cnt, _ = jax.lax.while_loop(lambda s: s[3] & (parent[s[0]] >= 0), walk_body, (w, x, cnt, found))
        f = found.astype(jnp.int32)
        x = x.at[c, cur].add(f)
        cnt = cnt.at[cur].add(om[c] * f)
        loads = loads.at[w].add(f)
        return x, cnt, loads, ok & found

    init = (
        jnp.zeros((n_cls, n), jnp.int32),
        jnp.zeros((n, n), jnp.int32),
        jnp.zeros((n,), jnp.int32),
        jnp.ones((), bool),
    )
    x, _, loads, ok = jax.lax.fori_loop(0, cls.shape[0], token, init)
    return x, loads, ok


def _ssap_bits(omega, cls, cost, cap):
    """`_ssap` for N <= 32 with node sets as uint32 bitmasks: a BFS level costs O(N), not O(N^2).

    The BFS keeps its N level sets; the augmenting path is walked back through them (a while loop that
    carries only the hop list: under vmap a loop carrying the class-by-node counts would copy them every
    iteration), choosing every moved class from the counts before the moves (valid: the hops leave
    distinct nodes), and the moves are applied afterwards as one scatter.
    """
    n_cls, n = omega.shape
    width = cost.shape[1]
    om = omega.astype(jnp.int32)
    nodes = jnp.arange(n, dtype=jnp.uint32)
    pow2 = jnp.left_shift(jnp.uint32(1), nodes)
    om_bits = jnp.sum(jnp.where(omega, pow2, jnp.uint32(0)), 1, dtype=jnp.uint32)  # [C]
    hops = max(n - 1, 1)
    idx = jnp.arange(n)

    def bit(mask, i):
        return (jnp.right_shift(mask, i) & jnp.uint32(1)) > 0

    def token(m, state):
        x, cnt, loads, ok = state
        c = cls[m]
        adj_bits = jnp.sum(jnp.where(cnt > 0, pow2[None, :], jnp.uint32(0)), 1, dtype=jnp.uint32)  # rows u -> w
        start = om_bits[c]
        reached, frontier, levels = start, start, [start]
        for _ in range(n - 1):
            nxt = jax.lax.reduce(
                jnp.where(bit(frontier, nodes), adj_bits, jnp.uint32(0)), jnp.uint32(0), jax.lax.bitwise_or, (0,)
            )
            frontier = nxt & ~reached
            reached = reached | frontier
            levels.append(frontier)
        levels = jnp.stack(levels)  # [N] BFS level sets
        p = jnp.where(bit(reached, nodes), cost[idx, jnp.minimum(loads, width - 1)], jnp.inf)
        p = jnp.where(loads < cap, p, jnp.inf)
        w = jnp.argmin(p).astype(jnp.int32)
        found = jnp.isfinite(p[w])
        lvl = jnp.argmax(bit(levels, w.astype(jnp.uint32))).astype(jnp.int32)

        def walk_body(s):  # hop j: a token of class c2[j] moves from frm[j] to to[j]
            cur, lv, frm, to, c2 = s
            j = lvl - lv
            u = jnp.argmax(bit(levels[lv - 1], nodes) & (cnt[:, cur] > 0)).astype(jnp.int32)
            moved = jnp.argmax((x[:, u] > 0) & omega[:, cur]).astype(jnp.int32)
            return u, lv - 1, frm.at[j].set(u), to.at[j].set(cur), c2.at[j].set(moved)

        zero = jnp.zeros((hops,), jnp.int32)
        cur, _, frm, to, c2 = jax.lax.while_loop(lambda s: found & (s[1] > 0), walk_body, (w, lvl, zero, zero, zero))
        n_hops = jnp.where(found, lvl, 0)
        # Scatters cost per update whether active or not, and paths are short (measured, N = 8: 85% of
        # tokens need no move, 15% one, 0.6% two), so the first `short` hops are one scatter and any
        # further ones a loop that runs only when some instance (of a vmapped batch) needs it.
        short = min(2, hops)
        act = (jnp.arange(short) < n_hops).astype(jnp.int32)
        f = found.astype(jnp.int32)
        ci = jnp.concatenate([c2[:short], c2[:short], c[None]])
        vi = jnp.concatenate([frm[:short], to[:short], cur[None]])
        dv = jnp.concatenate([-act, act, f[None]])
        x = x.at[ci, vi].add(dv)
        cnt = cnt.at[vi].add(om[ci] * dv[:, None])

        def long_hop(s):
            j, x, cnt = s
            x = x.at[c2[j], frm[j]].add(-1).at[c2[j], to[j]].add(1)
            cnt = cnt.at[frm[j]].add(-om[c2[j]]).at[to[j]].add(om[c2[j]])
            return j + 1, x, cnt

        _, x, cnt = jax.lax.while_loop(lambda s: s[0] < n_hops, long_hop, (jnp.int32(short), x, cnt))
        loads = loads.at[w].add(f)
        return x, cnt, loads, ok & found

    init = (
        jnp.zeros((n_cls, n), jnp.int32),
        jnp.zeros((n, n), jnp.int32),
        jnp.zeros((n,), jnp.int32),
        jnp.ones((), bool),
    )
    x, _, loads, ok = jax.lax.fori_loop(0, cls.shape[0], token, init)
    return x, loads, ok


def _token_nodes(x, cls):
    """Node of each token: tokens of class c get the nodes of x[c] in index order. int32[M]."""
    n_cls = x.shape[0]
    onehot = jax.nn.one_hot(cls, n_cls, dtype=jnp.int32)  # [M, C]
    rank = jnp.take_along_axis(jnp.cumsum(onehot, 0) - 1, cls[:, None], 1)[:, 0]
    cum = jnp.cumsum(x[cls], -1)  # [M, N]
    return jnp.sum(cum <= rank[:, None], -1).astype(jnp.int32)


def feasible_nodes(sc, cap_eff, g, topk, table):
    """K = 1 feasible sets: bool[M, N], v available and g Fbar[topk, v] <= eta."""
    n = table.shape[0]
    mism = g[:, :1] * table[topk[:, 0], :n]
    return (mism <= sc.eta) & (cap_eff >= 1)


def solve_exact(sc, dE, cap, g, topk, table, use_classes: bool | None = None, use_bitmask: bool | None = None):
    """Exact K = 1 prefill by Algorithm 1 with the user-cost correction (see the module docstring).

    Called by `prefill(..., method="exact")` after its input checks (arrays, shapes as there).

    Args:
        sc: scenario; uses eta (may be traced).
        dE: float[N, D] marginal energies (J), inf beyond capacity; non-decreasing per helper.
        cap: int32[N] capacities D_v,max (tokens).
        g: float[M, 1] gate weights.
        topk: int32[M, 1] expert indices.
        table: float[N, N + 1] mean mismatch Fbar, column N = skip.
        use_classes: search over the (expert, threshold) token classes (static; default: when
            N (N + 1) < M).
        use_bitmask: BFS over uint32 node bitmasks (`_ssap_bits`; static; default and only possible for
            N <= 32), else over boolean matrices (`_ssap`).

    Returns:
        (Decision, PrefillInfo): the optimal decision (assign int32[M, 1], loads int32[N], energy_j in J,
        ...; zeroed when infeasible) and info with method "exact", lower_bound = energy_j (inf where
        infeasible) and rel_gap 0.

    Raises:
        ConfigError: K > 1, or use_bitmask=True with N > 32.

    Example:
        The user's one-off load energy makes its first token cost 3 J and the next 1 J; the helper
        charges 1.5 J and then 3 J. Both tokens on the user cost 4 J, both on the helper 4.5 J, one
        each 4.5 J: the optimum is the user for both, although the helper is cheaper for the first
        token (a plain Algorithm 1 would start there):

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=2, top_k=1, n_tokens=2, eta=1.0)
        >>> dE = jnp.array([[3.0, 1.0], [1.5, 3.0]])
        >>> table = jnp.array([[0.0, 0.5, 1.0], [0.5, 0.0, 1.0]])
        >>> d, info = jax.jit(solve_exact)(sc, dE, jnp.array([2, 2]), jnp.ones((2, 1)), jnp.array([[1], [1]]), table)
        >>> d.assign[:, 0].tolist(), d.loads.tolist(), float(d.energy_j), info.method, float(info.rel_gap)
        ([0, 0], [2, 0], 4.0, 'exact', 0.0)
    """
    m, k = g.shape
    n = table.shape[0]
    if k != 1:
        raise ConfigError("method", "exact", "'exact' for top_k = 1 only; use 'dp' or 'fast' for top_k > 1")
    cap_eff = effective_caps(dE, cap)
    avail = cap_eff >= 1
    if use_classes is None:
        use_classes = n * (n + 1) < m
    t = topk[:, 0]
    if use_classes:
        fn = table[:, :n]
        rank = jnp.argsort(jnp.argsort(fn, axis=1, stable=True), axis=1)  # rank[t, v]
        thresh = jnp.sum(g[:, :1] * fn[t] <= sc.eta, -1)
        cls = (t * (n + 1) + thresh).astype(jnp.int32)
        levels = jnp.arange(n + 1)
        omega = (rank[:, None, :] < levels[None, :, None]).reshape(n * (n + 1), n) & avail
    else:
        cls = jnp.arange(m, dtype=jnp.int32)
        omega = feasible_nodes(sc, cap_eff, g, topk, table)
    prepaid, _ = user_prepaid(dE)
    if use_bitmask is None:
        use_bitmask = n <= 32
    if use_bitmask and n > 32:
        raise ConfigError("use_bitmask", True, "False for n_nodes > 32")
    ssap = _ssap_bits if use_bitmask else _ssap
    # User on (prepaid) first. The user-off run can only win when the first one uses the user (else the
    # first solution already is the best with the user off) and is feasible (else so is not the second);
    # a while loop runs it at most once, and under vmap only when some instance in the batch needs it.
    x_on, loads_on, ok_on = ssap(omega, cls, prepaid, cap_eff)
    need_off = ok_on & (loads_on[0] > 0)
    omega_off = omega & (jnp.arange(n) != 0)
    none = (jnp.zeros_like(x_on), jnp.zeros_like(loads_on), jnp.zeros((), bool))
    x_off, loads_off, ok_off = lazy(need_off, ssap, (omega_off, cls, dE, cap_eff), none)
    x = jnp.stack([x_off, x_on])
    ok = jnp.stack([ok_off & need_off, ok_on])
    loads = jnp.stack([loads_off, loads_on])
    energy = jnp.where(ok, jax.vmap(layer_energy, in_axes=(None, 0))(dE, loads), jnp.inf)
    best = jnp.argmin(energy)
    node = _token_nodes(x[best], cls) if use_classes else jnp.argmax(x[best], 1).astype(jnp.int32)
    feasible = jnp.isfinite(energy[best])
    dec = decision_from_combos(sc, dE, g, topk, table, jnp.where(feasible, node, -1), feasible)
    lb = jnp.where(dec.feasible, dec.energy_j, jnp.inf)
    return dec, PrefillInfo(lower_bound=lb, rel_gap=jnp.zeros_like(lb), method="exact")
