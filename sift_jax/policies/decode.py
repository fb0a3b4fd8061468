"""SiftMoE decoding policy: Theorem 2 for one token of one layer (paper §3.3, §4.1).

Problem. Given per-node decoding costs f_v (eq. 21; `inf` = node v misses the deadline), the token's
Top-K experts `topk` with gate weights g (renormalised over the Top-K set, descending) and the
calibration table Fbar[N, N+1] (column N = skip), choose a node set J, 1 <= |J| <= K, of nodes with
finite cost and a slot mapping phi (Top-K slot i -> a node of J or skip) with

    deviation(phi) = sum_i g_i Fbar[topk_i, phi(i)] <= eta             (Prop. 1 bound, eq. 16c)

minimising the energy sum_{v in J} f_v. Ties go to the lower deviation, then to fewer nodes. Every
node of J serves at least one slot and at least one slot is served (eq. 16d: a token runs >= 1 expert),
so for K = 1 the single slot is always served: the closed form v* = argmin {f_v : g Fbar[topk, v] <= eta}.

Slot mapping of a node set J (the same rule as `policies/prefill.py`):
    share_substitutes=True (default; eq. (12) allows two slots to use the same substitute): slot i uses
    its best node in J (ties: its own expert, then the lowest node index) when that node's mismatch is
    <= the skip mismatch Fbar[topk_i, N], and is skipped otherwise; if that leaves every slot skipped,
    the one slot with the least extra mismatch g_i (Fbar[i, v] - Fbar[i, N]) is served anyway.
    share_substitutes=False: phi is a matching (no node serves two slots), chosen to minimise the
    deviation; again at least one slot is served.

Algorithm (exact; fixed shapes; vmappable). Write e_i(v) = g_i Fbar[topk_i, v], s_i = g_i Fbar[topk_i, N].
    1. Single-node sets: closed form over all N nodes (including the forced-serve rule).
    2. Multi-node sets. In an optimal multi-node J every node is *strictly useful* (e_i(v) < s_i for the
       slot it serves; otherwise dropping it lowers the energy or, at equal energy and deviation, the
       node count). Only strictly useful nodes with finite cost are candidates.
       - "direct": enumerate every subset of 2..K candidates (static subset table, dense).
       - "pruned": dominance pruning, then a dense enumeration over short per-slot candidate lists:
         * share: node u dominates v if f_u <= f_v and min(e_i(u), s_i) <= min(e_i(v), s_i) for every
           slot i (strict somewhere, or u < v on exact ties). Replacing v by u in any set never raises
           the energy or the deviation, so the dominated nodes can be dropped (exchange argument; the
           dominance order is a strict partial order, so every dropped node has an undominated
           dominator). Each remaining candidate is listed under the slots it is strictly useful for.
           Every node of an optimal set is the strict best of J for some slot (its "owned" slot), so
           enumerating one owner (or none) per slot from its list covers every optimal set.
         * matching: v is dropped from slot i's list when at least K nodes dominate it on that slot
           alone (f_u <= f_v, e_i(u) <= e_i(v)): one of them is outside the other <= K-1 nodes of J and
           can take v's slot. The enumeration is over one server (or none) per slot, all distinct.
         The lists hold `per_slot_candidates` = R entries (static); the enumeration is (R+1)^K dense
         combinations. If some list overflows R, an exact fallback (the "direct" enumeration of every
         subset, chunked with `lax.scan`) runs instead. The fallback sits in a `lax.while_loop` that runs
         at most once, so under `vmap` it is executed only when some element of the batch overflows.
       "auto" (default) uses "direct" when there are at most 256 multi-node subsets (e.g. N = 8, K <= 3)
       and "pruned" otherwise (GPT-OSS: N = 32, K = 4, 625 combinations instead of 41,448 subsets).
    3. The lexicographic minimum of (energy, deviation, node count) over both parts.

Performance notes. With the synthetic GPT-OSS tables (4 experts per cluster) a per-slot list never
exceeds 4 entries, so the default R = 4 never falls back. With tables where many nodes are strictly
useful for one expert (e.g. uniformly random tables) the fallback runs: still exact, much slower.
Raise `per_slot_candidates` for such tables ((R+1)^K grows fast).

Infeasible tokens (no feasible set) return feasible = False with every slot -1 and zero loads, energy,
deviation, n_replaced and n_skipped (the convention of the prefill solvers).
"""

from __future__ import annotations

import functools
import itertools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.policies.decision import Decision
from sift_jax.scenario import Scenario

STRATEGIES = ("auto", "direct", "pruned")
DIRECT_MAX_SUBSETS = 256  # "auto" enumerates every subset up to this many multi-node subsets
MAX_SUBSETS = 2_000_000  # largest exact subset enumeration (direct / fallback) we compile
MAX_COMBOS = 1_000_000  # largest (R+1)^K owner grid
MAX_MATCHING_K = 5  # share_substitutes=False enumerates K! slot permutations per subset
DEFAULT_PER_SLOT = 4
_CHUNK = 256  # subsets per scan step of the fallback enumeration
_BIG = 2**30  # node count of an invalid candidate


# ----------------------------------------------------------------------------------------------------
# small helpers (shared with baselines / oracle)
# ----------------------------------------------------------------------------------------------------


def seq_sum(x: jax.Array) -> jax.Array:
    """Left-to-right sum over the leading (small, static) axis: ((x0 + x1) + x2) + ...

    Every policy sums per-slot deviations in this fixed order, so equal mappings give bit-equal
    deviations whatever the code path (XLA does not reassociate float additions).
    """
    return functools.reduce(operator.add, [x[i] for i in range(x.shape[0])])


def slot_values(g: jax.Array, topk: jax.Array, table: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-slot weighted mismatches: e float[K, N], e[i, v] = g_i Fbar[topk_i, v]; s float[K] (skip)."""
    n = table.shape[0]
    rows = table[topk]  # [K, N + 1]
    return g[:, None] * rows[:, :n], g * rows[:, n]


def slot_deviation(e: jax.Array, s: jax.Array, assign: jax.Array) -> jax.Array:
    """Deviation sum_i g_i Fbar[topk_i, assign_i] (assign -1 = skip) from `slot_values`: float[]."""
    n = e.shape[1]
    picked = jnp.take_along_axis(e, jnp.clip(assign, 0, n - 1)[:, None], axis=1)[:, 0]
    return seq_sum(jnp.where(assign >= 0, picked, s))


def loads_of(assign: jax.Array, n: int) -> jax.Array:
    """int32[N]: 1 for every node used by some slot (a token is sent once to each node)."""
    return jnp.any(assign[:, None] == jnp.arange(n)[None, :], axis=0).astype(jnp.int32)


def lex_argmin(energy, dev, count):
    """Index and value of the lexicographic minimum of (energy, dev, count) over flat arrays.

    Invalid entries must carry (inf, inf, _BIG). Returns (index, energy, dev, count); the first index
    among exact ties.
    """
    e_min = jnp.min(energy)
    m = energy == e_min
    d_min = jnp.min(jnp.where(m, dev, jnp.inf))
    m = m & (dev == d_min)
    c_min = jnp.min(jnp.where(m, count, _BIG))
    m = m & (count == c_min)
    return jnp.argmax(m), e_min, d_min, c_min


def lex_better(a, b) -> jax.Array:
    """True where key a = (energy, dev, count) is strictly smaller than key b."""
    (ea, da, ca), (eb, db, cb) = a, b
    return (ea < eb) | ((ea == eb) & ((da < db) | ((da == db) & (ca < cb))))


def check_inputs(sc: Scenario, f, g, topk, table):
    """Shape checks shared by the decoding policies; returns the arrays in one float dtype."""
    f, g, topk, table = jnp.asarray(f), jnp.asarray(g), jnp.asarray(topk), jnp.asarray(table)
    n, k = sc.n_nodes, sc.top_k
    if f.shape != (n,):
        raise ConfigError("f", f"array of shape {f.shape}", f"float[N={n}] node costs")
    if g.shape != (k,):
        raise ConfigError("g", f"array of shape {g.shape}", f"float[K={k}] gate weights")
    if topk.shape != (k,) or not jnp.issubdtype(topk.dtype, jnp.integer):
        raise ConfigError("topk", f"array of shape {topk.shape} and dtype {topk.dtype}", f"int[K={k}] expert indices")
    if table.shape != (n, n + 1):
        raise ConfigError("table", f"array of shape {table.shape}", f"float[N={n}, N+1={n + 1}]")
    dt = jnp.result_type(f.dtype, g.dtype, table.dtype, float)
    return f.astype(dt), g.astype(dt), topk.astype(jnp.int32), table.astype(dt)


def _lazy(pred, fn, default):
    """`fn()` if pred else `default`, evaluating fn only when needed (also under vmap: then only if
    some batch element needs it). A while_loop that runs at most once."""
    def body(carry):
        return jnp.zeros_like(carry[0]), fn()
    return jax.lax.while_loop(lambda carry: carry[0], body, (pred, default))[1]


# ----------------------------------------------------------------------------------------------------
# static tables
# ----------------------------------------------------------------------------------------------------


def n_multi_subsets(n: int, k: int) -> int:
    """Number of node sets of size 2..K."""
    return sum(math.comb(n, j) for j in range(2, min(k, n) + 1))


@functools.lru_cache(maxsize=None)
def _subset_chunks(n: int, k: int, chunk: int) -> np.ndarray:
    """All node sets of size 2..k as rows of int32[n_chunks, chunk, k], members ascending, padded
    with n (the sentinel); padding rows are all n (count 0, never valid)."""
    rows = [c + (n,) * (k - len(c)) for j in range(2, min(k, n) + 1) for c in itertools.combinations(range(n), j)]
    total = max(1, len(rows))
    n_chunks = -(-total // chunk)
    out = np.full((n_chunks * chunk, k), n, np.int32)
    if rows:
        out[:len(rows)] = np.asarray(rows, np.int32)
    return out.reshape(n_chunks, chunk, k)


@functools.lru_cache(maxsize=None)
def _permutations(k: int) -> np.ndarray:
    """int32[K!, K]: perm[p, i] = member position serving slot i."""
    return np.asarray(list(itertools.permutations(range(k))), np.int32)


# ----------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------


def _singletons(f, e, s, eta, share: bool):
    """Best single-node set over all N nodes: (energy, dev, count, assign int32[K])."""
    k, n = e.shape
    slot = jnp.arange(k)[:, None]
    if share:
        use = e <= s[:, None]
        forced = jnp.argmin(e - s[:, None], axis=0)  # [N] slot served when no slot prefers v over skip
        use = use | (~jnp.any(use, axis=0)[None, :] & (slot == forced[None, :]))
    else:
        use = slot == jnp.argmax(s[:, None] - e, axis=0)[None, :]  # one slot: the largest saving
    dev = seq_sum(jnp.where(use, e, s[:, None]))  # [N]
    valid = jnp.isfinite(f) & (dev <= eta)
    v, e_min, d_min, c_min = lex_argmin(jnp.where(valid, f, jnp.inf), jnp.where(valid, dev, jnp.inf),
                                        jnp.where(valid, 1, _BIG))
    node_is_v = jnp.arange(n)[None, :] == v
    assign = jnp.where(jnp.any(use & node_is_v, axis=1), v, -1).astype(jnp.int32)
    return e_min, d_min, c_min, assign


def _map_shared(members, e, s, topk):
    """Slot mapping of node set `members` (int[M], padded with N) under sharing: int32[K]."""
    n = e.shape[1]
    real = members < n
    vals = jnp.where(real[None, :], e[:, jnp.minimum(members, n - 1)], jnp.inf)  # [K, M]
    best = jnp.min(vals, axis=1)
    is_best = (vals == best[:, None]) & real[None, :]
    own = is_best & (members[None, :] == topk[:, None])
    lowest = jnp.min(jnp.where(is_best, members[None, :], n), axis=1)
    node = jnp.where(jnp.any(own, axis=1), topk, lowest)
    return jnp.where(best <= s, node, -1).astype(jnp.int32)


def _map_matching(members, perm, e, s):
    """Slot i served by members[perm[i]] when real and no worse than skip: int32[K]."""
    n = e.shape[1]
    node = members[perm]
    val = jnp.take_along_axis(e, jnp.minimum(node, n - 1)[:, None], axis=1)[:, 0]
    return jnp.where((node < n) & (val <= s), node, -1).astype(jnp.int32)


def _subset_search(fx, capx, eta, share: bool, n: int, k: int, chunk: int):
    """Exact search over every node set of size 2..K (static subset table, `lax.scan` over chunks).

    fx: float[N+1] costs with inf for non-candidates and 0 at the sentinel N. capx: float[K, N+1]
    min(e, s) with s at the sentinel. Returns (energy, dev, count, members int32[K], perm int32[K]).
    """
    chunks = _subset_chunks(n, k, chunk)
    perms = _permutations(k) if not share else None

    def evaluate(members):  # members int32[c, K]
        energy = seq_sum(fx[members].T)
        count = jnp.sum(members < n, axis=1).astype(jnp.int32)
        vals = capx[:, members]  # [K slots, c, K positions]
        if share:
            dev = seq_sum(jnp.min(vals, axis=2))
            p_best = jnp.zeros(members.shape[:1], jnp.int32)
        else:
            per = jnp.stack([seq_sum(jnp.stack([vals[i, :, p[i]] for i in range(k)])) for p in perms])
            p_best = jnp.argmin(per, axis=0).astype(jnp.int32)
            dev = jnp.min(per, axis=0)
        valid = (count >= 2) & jnp.isfinite(energy) & (dev <= eta)
        idx, e_min, d_min, c_min = lex_argmin(jnp.where(valid, energy, jnp.inf), jnp.where(valid, dev, jnp.inf),
                                              jnp.where(valid, count, _BIG))
        return e_min, d_min, c_min.astype(jnp.int32), members[idx], p_best[idx]

    if chunks.shape[0] == 1:
        key_e, key_d, key_c, members, p = evaluate(jnp.asarray(chunks[0]))
    else:
        init = (jnp.asarray(jnp.inf, fx.dtype), jnp.asarray(jnp.inf, fx.dtype), jnp.asarray(_BIG, jnp.int32),
                jnp.full((k,), n, jnp.int32), jnp.zeros((), jnp.int32))

        def step(carry, members):
            new = evaluate(members)
            better = lex_better(new[:3], carry[:3])
            return jax.tree.map(lambda a, b: jnp.where(better, a, b), new, carry), None

        (key_e, key_d, key_c, members, p), _ = jax.lax.scan(step, init, jnp.asarray(chunks))
    perm = jnp.asarray(perms)[p] if not share else jnp.zeros((k,), jnp.int32)
    return key_e, key_d, key_c.astype(jnp.int32), members, perm


def _candidate_lists(mask, r: int):
    """Compact each row of bool[K, N] into int32[K, R] node lists (padded with N); overflow flag."""
    k, n = mask.shape
    pos = jnp.cumsum(mask, axis=1) - 1
    sel = mask[:, None, :] & (pos[:, None, :] == jnp.arange(r)[None, :, None])  # [K, R, N]
    nodes = jnp.where(jnp.any(sel, axis=2), jnp.argmax(sel, axis=2), n).astype(jnp.int32)
    return nodes, jnp.any(jnp.sum(mask, axis=1) > r)


def _owner_search(lists, fx, capx, eta, share: bool, n: int):
    """Dense search over one list entry (or none) per slot: (R+1)^K combinations.

    Returns (energy, dev, count, members int32[K] (slot j's pick, N = none)).
    """
    k, r = lists.shape
    opt = jnp.concatenate([lists, jnp.full((k, 1), n, jnp.int32)], axis=1)  # [K, R+1], last = none
    shape = (r + 1,) * k

    def axis(x, j):  # float[R+1] placed on grid axis j
        return jnp.reshape(x, tuple(r + 1 if a == j else 1 for a in range(k)))

    energy = seq_sum(jnp.stack(jnp.broadcast_arrays(*[axis(fx[opt[j]], j) for j in range(k)])))
    count = functools.reduce(operator.add, [axis((opt[j] < n).astype(jnp.int32), j) for j in range(k)])
    valid = count >= 2
    if share:
        vo = capx[:, opt]  # [K slot i, K owner j, R+1]
        best = [functools.reduce(jnp.minimum, [axis(vo[i, j], j) for j in range(k)]) for i in range(k)]
        dev = seq_sum(jnp.stack(jnp.broadcast_arrays(*best)))
    else:
        own = jnp.stack([capx[i, opt[i]] for i in range(k)])  # slot i served by its own pick
        dev = seq_sum(jnp.stack(jnp.broadcast_arrays(*[axis(own[i], i) for i in range(k)])))
        for a, b in itertools.combinations(range(k), 2):
            na, nb = axis(opt[a], a), axis(opt[b], b)
            valid = valid & ((na != nb) | (na == n))
    energy, dev, count, valid = (jnp.broadcast_to(x, shape).reshape(-1) for x in (energy, dev, count, valid))
    valid = valid & jnp.isfinite(energy) & (dev <= eta)
    idx, e_min, d_min, c_min = lex_argmin(jnp.where(valid, energy, jnp.inf), jnp.where(valid, dev, jnp.inf),
                                          jnp.where(valid, count, _BIG))
    strides = [(r + 1) ** (k - 1 - j) for j in range(k)]
    picks = jnp.stack([(idx // strides[j]) % (r + 1) for j in range(k)])
    members = opt[jnp.arange(k), picks]
    return e_min, d_min, c_min.astype(jnp.int32), members


def _resolve_strategy(strategy: str, n: int, k: int) -> str:
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", strategy, "one of " + ", ".join(STRATEGIES))
    if strategy == "auto":
        return "direct" if n_multi_subsets(n, k) <= DIRECT_MAX_SUBSETS else "pruned"
    return strategy


def _check_options(n, k, share, strategy, per_slot):
    if not isinstance(share, (bool, np.bool_)):
        raise ConfigError("share_substitutes", share, "True or False (static)")
    if isinstance(per_slot, bool) or not isinstance(per_slot, (int, np.integer)) or per_slot < 1:
        raise ConfigError("per_slot_candidates", per_slot, "an integer >= 1 (static)")
    strategy = _resolve_strategy(strategy, n, k)
    if k > 1 and n_multi_subsets(n, k) > MAX_SUBSETS:
        raise ConfigError("top_k", k, f"a size whose exact enumeration of node sets fits: sum_(j=2..K) C(N={n}, j)"
                                      f" <= {MAX_SUBSETS:,}")
    if k > 1 and not share and k > MAX_MATCHING_K:
        raise ConfigError("top_k", k, f"K <= {MAX_MATCHING_K} with share_substitutes=False (K! slot permutations)")
    if strategy == "pruned" and k > 1 and (min(per_slot, n) + 1) ** k > MAX_COMBOS:
        raise ConfigError("per_slot_candidates", per_slot, f"a value with (R+1)^K <= {MAX_COMBOS:,}")
    return bool(share), strategy, int(min(per_slot, n))


# ----------------------------------------------------------------------------------------------------
# the policy
# ----------------------------------------------------------------------------------------------------


def decode(sc: Scenario, f, g, topk, table, share_substitutes: bool = True, strategy: str = "auto",
           per_slot_candidates: int = DEFAULT_PER_SLOT) -> Decision:
    """SiftMoE decoding decision for one token of one layer (Theorem 2; exact).

    Args:
        sc: scenario; uses `eta` (may be traced), `n_nodes` N and `top_k` K (static).
        f: float[N] decoding node costs f_v (J) from `sift_jax.costs.node_costs`; inf = misses the
            deadline. Node 0 is the user.
        g: float[K] Top-K gate weights renormalised over the active set (descending).
        topk: int[K] Top-K expert indices (expert v lives on node v), distinct, in [0, N).
        table: float[N, N+1] mean mismatch Fbar (zero diagonal; column N = skip = E||FFN_i||).
        share_substitutes: allow two slots to use the same node (eq. 12; static). False = a matching.
        strategy: "auto", "direct" or "pruned" (static; see the module docstring). All are exact.
        per_slot_candidates: R, the per-slot list length of "pruned" (static; performance only).

    Returns:
        Decision: assign int32[K] (node per Top-K slot, -1 = skipped), loads int32[N] (1 for each node
        used), energy_j = sum of f over used nodes (J), deviation_bound = sum_i g_i Fbar[topk_i,
        assign_i] (skip column for -1), feasible, n_replaced, n_skipped. All zero (assign -1) when no
        feasible selection exists.

    Example:
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=4, top_k=2, eta=0.3)
        >>> table = jnp.array([[0.0, 1.5, 0.4, 1.5, 1.0],    # expert 2 is a close substitute of 0
        ...                    [1.5, 0.0, 1.5, 1.5, 1.0],
        ...                    [0.4, 1.5, 0.0, 1.5, 1.0],
        ...                    [1.5, 1.5, 1.5, 0.0, 1.0]])
        >>> f = jnp.array([5.0, 1.0, 0.5, jnp.inf])           # node 3 misses the deadline
        >>> g, topk = jnp.array([0.7, 0.3]), jnp.array([0, 1])
        >>> for eta in (0.2, 0.3, 0.6):
        ...     d = decode(sc.replace(eta=eta), f, g, topk, table)
        ...     print(eta, d.assign.tolist(), d.loads.tolist(), float(d.energy_j), round(float(d.deviation_bound), 2))
        0.2 [0, 1] [1, 1, 0, 0] 6.0 0.0
        0.3 [2, 1] [0, 1, 1, 0] 1.5 0.28
        0.6 [2, -1] [0, 0, 1, 0] 0.5 0.58

        Without node 1 and with eta = 0.2 no selection meets the budget:

        >>> d = decode(sc.replace(eta=0.2), f.at[1].set(jnp.inf), g, topk, table)
        >>> bool(d.feasible), d.assign.tolist(), float(d.energy_j)
        (False, [-1, -1], 0.0)
    """
    f, g, topk, table = check_inputs(sc, f, g, topk, table)
    n, k = sc.n_nodes, sc.top_k
    share, strategy, r = _check_options(n, k, share_substitutes, strategy, per_slot_candidates)
    eta = jnp.asarray(sc.eta, f.dtype)
    e, s = slot_values(g, topk, table)

    best_e, best_d, best_c, assign = _singletons(f, e, s, eta, share)

    if k > 1:
        finite = jnp.isfinite(f)
        useful_slot = (e < s[:, None]) & finite[None, :]  # [K, N] strictly useful for slot i
        useful = jnp.any(useful_slot, axis=0)
        cap = jnp.minimum(e, s[:, None])
        capx = jnp.concatenate([cap, s[:, None]], axis=1)  # sentinel N = skip value
        fx_all = jnp.concatenate([jnp.where(useful, f, jnp.inf), jnp.zeros((1,), f.dtype)])

        def full_search():
            m_e, m_d, m_c, members, perm = _subset_search(fx_all, capx, eta, share, n, k, _CHUNK)
            a = _map_shared(members, e, s, topk) if share else _map_matching(members, perm, e, s)
            return m_e, m_d, m_c, a

        if strategy == "direct":
            m_e, m_d, m_c, m_assign = full_search()
        else:
            idx = jnp.arange(n)
            f_le, f_lt = f[:, None] <= f[None, :], f[:, None] < f[None, :]
            tie = (idx[:, None] < idx[None, :])
            if share:
                c_le = jnp.all(cap[:, :, None] <= cap[:, None, :], axis=0)  # [u, v]
                c_lt = jnp.any(cap[:, :, None] < cap[:, None, :], axis=0)
                dominated = jnp.any(useful[:, None] & f_le & c_le & (f_lt | c_lt | tie), axis=0)
                lists, overflow = _candidate_lists(useful_slot & ~dominated[None, :], r)
            else:
                e_le, e_lt = e[:, :, None] <= e[:, None, :], e[:, :, None] < e[:, None, :]  # [K, u, v]
                dom = useful_slot[:, :, None] & f_le[None] & e_le & (f_lt[None] | e_lt | tie[None])
                dom = dom & (idx[:, None] != idx[None, :])[None]
                lists, overflow = _candidate_lists(useful_slot & (jnp.sum(dom, axis=1) < k), r)
            m_e, m_d, m_c, members = _owner_search(lists, fx_all, capx, eta, share, n)
            m_assign = _map_shared(members, e, s, topk) if share else \
                jnp.where(members < n, members, -1).astype(jnp.int32)
            m_e, m_d, m_c, m_assign = _lazy(overflow, full_search, (m_e, m_d, m_c, m_assign))

        better = lex_better((m_e, m_d, m_c), (best_e, best_d, best_c))
        best_e = jnp.where(better, m_e, best_e)
        best_d = jnp.where(better, m_d, best_d)
        assign = jnp.where(better, m_assign, assign)

    feasible = jnp.isfinite(best_e)
    assign = jnp.where(feasible, assign, -1).astype(jnp.int32)
    return Decision(
        assign=assign,
        loads=loads_of(assign, n),
        energy_j=jnp.where(feasible, best_e, 0.0),
        deviation_bound=jnp.where(feasible, best_d, 0.0),
        feasible=feasible,
        n_replaced=jnp.sum((assign >= 0) & (assign != topk)).astype(jnp.int32),
        n_skipped=jnp.where(feasible, jnp.sum(assign < 0), 0).astype(jnp.int32),
    )
