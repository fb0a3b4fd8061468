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

Algorithm (exact; fixed shapes; vmappable). Write e_i(v) = g_i Fbar[topk_i, v], s_i = g_i Fbar[topk_i, N],
cap_i(v) = min(e_i(v), s_i). Candidates are compared by the key (energy, deviation, node count).
    1. Single-node sets: closed form over all N nodes (with the forced-serve rule). For K = 1 this is all.
    2. Multi-node sets. In an optimal multi-node J every node is *strictly useful* (e_i(v) < s_i for a
       slot it serves; otherwise dropping it lowers the energy or, at equal energy and deviation, the
       node count), so only strictly useful nodes with finite cost take part.
       - "sets": every node set of size 1..K as one candidate row (energy, deviation, packed slot
         mapping), listed by size; none of it depends on eta. The choice is
         `staircase.best_within(eta, rows)`: a masked lexicographic search for one eta, and under
         `vmap` over eta alone (a sweep's eta axis) the rows are ranked once per sample and each eta
         costs one comparison per row (the "staircase"). Ties go to the earlier row, so to fewer nodes.
       - "direct": dense grids over ordered j-tuples of nodes, j = 2..K (no gathers). A tuple with a
         repeated node stands for a smaller set with its energy counted twice, which that set beats;
         for j = K every slot has its own node, so the deviation of "slot i -> i-th member" is additive.
       - "pruned": dominance pruning, then one list entry (or none) per slot:
         * sharing: u dominates v if f_u <= f_v and cap_i(u) <= cap_i(v) for every slot (strict
           somewhere, or u < v on exact ties). Replacing v by u never raises the energy or the
           deviation (exchange argument; the order is a strict partial order, so every dropped node has
           an undominated dominator). Every node of an optimal set is the strict best of the set for
           some slot (its "owner" slot), so choosing, per slot, an owner from the undominated nodes
           strictly useful for that slot (or none) covers every optimal set.
         * matching: v leaves slot i's list when at least K nodes dominate it on slot i alone
           (f_u <= f_v, e_i(u) <= e_i(v)): one of them is outside the other <= K-1 nodes of J and can
           take v's slot. One server (or none) per slot, all distinct.
         The lists hold R = `per_slot_candidates` entries (static). The (R+1)^K choices are evaluated
         meet-in-the-middle: half grids over slots [0, K/2) and [K/2, K), combined on a 2-D grid
         (GPT-OSS, R = 4: 25 x 25 cells instead of 41,448 node sets). If some list holds more than R
         nodes, an exact fallback (every node set of size 2..K, chunked with `lax.scan`, member values
         selected by one-hot matrix products) runs instead. It sits in a `lax.while_loop` that runs at
         most once, so under `vmap` it is executed only when some element of the batch overflows.
       "auto" (default) uses "sets" when there are at most 128 node sets of size 2..K (N = 8 with
       K <= 3, N <= 16 with K = 2, every K = 1), else "direct" when sum_(j=2..K) N^j <= 4096 (e.g.
       N = 64 with K = 2), else "pruned".
    3. The lexicographic minimum over all parts. The energy of a set is summed in ascending order of
       the costs (a sorting network), so every listing of one set gives bit-equal energies and the
       deviation tie-break cannot be overridden by rounding.

Performance notes. Under `vmap` on CPU, reductions over tiny minor axes, gathers and broadcasts over
many small axes are what costs, so the code reduces small static axes row by row, uses 2-pass
lexicographic minima and dense grids. One exception: a lexicographic running minimum written as a
chain of selects over the candidate rows (energy, deviation and mapping carried together) makes XLA's
CPU fusion recompute the chain at every use (compile time exponential in the rows, runs 10-100x
slower), so "sets" packs the mapping into one integer and leaves the choice to `staircase`. For one
eta "sets" costs more per decision than "direct" on Mixtral; on an eta axis it is cheaper per point
(figures: BENCHMARKS.md, "Sweeps").
With the synthetic GPT-OSS tables (4 experts per cluster) a list never exceeds 4 entries, so the
default R = 4 never falls back. With tables where many nodes are strictly useful for one expert (e.g.
uniformly random tables) the fallback runs: still exact, about a hundred times slower. Raise `per_slot_candidates`
for such tables ((R+1)^K grows fast).

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
from sift_jax.policies._decode_core import (
    canonical_sum,
    check_inputs,
    lex_argmin,
    lex_better,
    loads_of,
    seq_sum,
    slot_values,
    sorted_network,
)
from sift_jax.policies.decision import INVALID_COUNT, Decision, make_decision
from sift_jax.policies.lazy import lazy
from sift_jax.policies.staircase import best_within
from sift_jax.scenario import Scenario

__all__ = ["decode"]

STRATEGIES = ("auto", "sets", "direct", "pruned")
SETS_MAX = 128  # "auto" uses "sets" when the node sets of size 2..K number at most this
DIRECT_MAX_DENSE = 4096  # else "direct" when sum_(j=2..K) N^j (dense grid cells) is at most this
SETS_MAX_EXPLICIT = 8 * SETS_MAX  # strategy="sets" asked for explicitly: most node sets of size 2..K compiled
DIRECT_MAX_EXPLICIT = 64 * DIRECT_MAX_DENSE  # strategy="direct" asked for explicitly: most dense grid cells compiled
MAX_SUBSETS = 2_000_000  # largest exact subset enumeration (fallback) we compile
MAX_COMBOS = 1_000_000  # largest (R+1)^K owner grid
MAX_MATCHING_K = 5  # share_substitutes=False enumerates K! slot permutations per subset
DEFAULT_PER_SLOT = 4
_CHUNK = 512  # subsets per scan step of the fallback enumeration
_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------
# kernels. Conventions: e float[K, N] = g_i Fbar[topk_i, v]; s float[K] skip values; cap = min(e, s);
# fu float[N] = f on strictly useful finite nodes, inf elsewhere. Keys are (energy, dev, count) with
# (inf, inf, INVALID_COUNT) for invalid entries. Dense one-hot selections replace gathers (slow on CPU).
# ----------------------------------------------------------------------------------------------------


def _pick(x, onehot):
    """x[..., idx] for a one-hot bool[..., M, N] over the last axis of x[..., N]: exact, no gather."""
    return jnp.max(jnp.where(onehot, x[..., None, :], -jnp.inf), axis=-1)


def _rows(x):
    """The rows of a small static leading axis as a list (reductions over it become elementwise)."""
    return [x[i] for i in range(x.shape[0])]


def _first_arg(better, rows):
    """Elementwise index of the first row that no later row beats (argmin: operator.lt; argmax:
    operator.gt) over a Python list of equally shaped arrays: int32."""
    idx, best = jnp.zeros(rows[0].shape, jnp.int32), rows[0]
    for i in range(1, len(rows)):
        take = better(rows[i], best)
        idx, best = jnp.where(take, jnp.int32(i), idx), jnp.where(take, rows[i], best)
    return idx


def _singletons(f, e, s, share: bool):
    """Single-node sets for every node, before the eta test: energy float[N] (f, inf if not finite),
    dev float[N] and use bool[K, N] (the slots node v serves when it is the only node)."""
    k, n = e.shape
    energy = jnp.where(jnp.isfinite(f), f, jnp.inf)
    if k == 1:  # the single slot is always served (a token runs at least one expert)
        return energy, e[0], jnp.ones((1, n), bool)
    if share:
        use = [e[i] <= s[i] for i in range(k)]
        forced = _first_arg(operator.lt, [e[i] - s[i] for i in range(k)])  # served when no slot prefers v
        any_use = functools.reduce(operator.or_, use)
        dev = jnp.where(
            any_use,
            seq_sum(jnp.minimum(e, s[:, None])),
            functools.reduce(operator.add, [jnp.where(forced == i, e[i], s[i]) for i in range(k)]),
        )
        use = jnp.stack([use[i] | (~any_use & (forced == i)) for i in range(k)])
    else:
        best = _first_arg(operator.gt, [s[i] - e[i] for i in range(k)])  # one slot: the largest saving
        use = jnp.stack([best == i for i in range(k)])
        dev = functools.reduce(operator.add, [jnp.where(best == i, e[i], s[i]) for i in range(k)])
    return energy, dev, use


def _grid_axis(x, j: int, dims: int):
    """Place x[M] on axis j of a `dims`-dimensional grid (size 1 elsewhere)."""
    return jnp.reshape(x, tuple(x.shape[0] if a == j else 1 for a in range(dims)))


@functools.cache
def _matching_patterns(k: int, j: int) -> tuple[tuple[int, ...], ...]:
    """Distinct injective maps of j members into K slots: pattern[i] = member serving slot i or -1."""
    pats = {tuple(p if p < j else -1 for p in perm) for perm in itertools.permutations(range(k))}
    return tuple(sorted(pats))


def _dense_blocks(fu, cap, s, eta, share: bool, n: int, k: int):
    """Node tuples of length j = 2..K as dense [N]^j grids over ordered member tuples.

    Every set appears once per ordering; a tuple with a repeated node stands for a smaller set with
    its energy (and node count) counted twice, which that smaller set beats, so with sharing no mask
    is needed (the first index among exact ties is the ascending ordering). For j = K every slot is
    served by a different node in a minimal set, so the deviation of the ordering "slot i -> member i"
    is additive, sum_i min(e_i(m_i), s_i), and the set's deviation is its best ordering. For j < K:
    sharing: sum_i min(s_i, min_m e_i(m)); matching: the best injective pattern. The matching grids
    exclude repeated nodes. Only the energy entries carry the validity (dev <= eta): inf elsewhere.

    Returns a list over j = 2..K of flat keys (energy, dev) float[N^j] (every entry counts j nodes).
    """
    keys = []
    for j in range(2, k + 1):
        energy = canonical_sum([_grid_axis(fu, m, j) for m in range(j)]) if j > 2 else fu[:, None] + fu[None, :]
        caps = [[_grid_axis(cap[i], m, j) for m in range(j)] for i in range(k)]
        if j == k:
            dev = functools.reduce(operator.add, [caps[i][i] for i in range(k)])
        elif share:
            dev = functools.reduce(operator.add, [functools.reduce(jnp.minimum, c) for c in caps])
        else:
            devs = []
            for pat in _matching_patterns(k, j):
                terms = [caps[i][pat[i]] if pat[i] >= 0 else s[i] for i in range(k)]
                devs.append(functools.reduce(operator.add, terms))  # slot order: the same sum as seq_sum
            dev = functools.reduce(jnp.minimum, devs)
        dev = jnp.broadcast_to(dev, (n,) * j)
        ok = dev <= eta
        if not share:
            distinct = np.ones((n,) * j, bool)
            for a, b in itertools.combinations(range(j), 2):
                distinct &= np.arange(n).reshape(_shape(a, j, n)) != np.arange(n).reshape(_shape(b, j, n))
            ok = ok & jnp.asarray(distinct)
        keys.append((jnp.where(ok, energy, jnp.inf).reshape(-1), dev.reshape(-1)))
    return keys


def _shape(m: int, j: int, n: int) -> tuple[int, ...]:
    return tuple(n if a == m else 1 for a in range(j))


def _set_row(members, fu, e, s, cap, topk, share: bool):
    """(energy, dev, assign) of the node set `members` (a static ascending tuple, 2..K nodes).

    energy: canonical sum of fu (inf unless every member is strictly useful and finite). Sharing:
    slot i takes its best member (ties: its own expert, then the lowest index) when that is no worse
    than skipping. Matching: the first injective pattern (`_matching_patterns` order) of least
    deviation; a slot is served only where its member is no worse than skipping. assign: list over
    slots of int32 arrays (-1 = skipped). These are the rules of `_map_shared` / `_map_matching`,
    written for static members (plain slices instead of their one-hot selections of traced members).
    """
    k = e.shape[0]
    energy = canonical_sum([fu[m] for m in members])
    if share:
        assign, devs = [], []
        for i in range(k):
            best, node = e[i, members[0]], jnp.int32(members[0])
            for m in members[1:]:
                take = (e[i, m] < best) | ((e[i, m] == best) & (topk[i] == m))
                best, node = jnp.where(take, e[i, m], best), jnp.where(take, jnp.int32(m), node)
            served = best <= s[i]
            assign.append(jnp.where(served, node, jnp.int32(-1)))
            devs.append(jnp.minimum(best, s[i]))
        return energy, functools.reduce(operator.add, devs), assign
    dev, assign = None, None
    for pat in _matching_patterns(k, len(members)):
        d = functools.reduce(operator.add, [cap[i, members[p]] if p >= 0 else s[i] for i, p in enumerate(pat)])
        a = [
            jnp.where(e[i, members[p]] <= s[i], jnp.int32(members[p]), jnp.int32(-1)) if p >= 0 else jnp.int32(-1)
            for i, p in enumerate(pat)
        ]
        if dev is None:
            dev, assign = d, a
        else:
            take = d < dev
            dev, assign = jnp.where(take, d, dev), [jnp.where(take, x, y) for x, y in zip(a, assign)]
    return energy, dev, assign


def _best_row(rows, eta, n: int):
    """Lexicographic minimum of (energy, dev) over the rows with dev <= eta, the earliest row on exact
    ties (rows are listed by node count, so ties go to fewer nodes). rows: list of (energy, dev, assign
    list over K); the assignment travels as one bit-packed code of the a_i + 1 through
    `staircase.best_within` (which ranks the rows once for a whole vmapped axis of etas).

    Returns (energy, dev, assign int32[K]); energy inf when no row qualifies.
    """
    bits = n.bit_length()  # a_i + 1 in [0, N] takes `bits` bits; shifts, not divisions (no SIMD integer division)
    code = jnp.stack(
        [functools.reduce(operator.or_, [(a + 1) << (bits * i) for i, a in enumerate(r[2])]) for r in rows]
    )
    energy, dev = jnp.stack([r[0] for r in rows]), jnp.stack([r[1] for r in rows])
    best_e, best_d, best_a = best_within(eta, energy, dev, code.astype(jnp.int32))
    assign = jnp.stack([((best_a >> (bits * i)) & ((1 << bits) - 1)) - 1 for i in range(len(rows[0][2]))])
    return best_e, best_d, assign.astype(jnp.int32)


def _dense_members(local, j: int, n: int, k: int):
    """Members (ascending, padded with N) of flat index `local` of the [N]^j grid: int32[K]."""
    digits = [(local // n ** (j - 1 - m)) % n for m in range(j)]
    return jnp.stack(digits + [jnp.asarray(n)] * (k - j)).astype(jnp.int32)


def _member_values(x, members, n: int):
    """x[..., members] for members int32[M] (N = sentinel -> x[..., N] must exist): float[..., M]."""
    onehot = members[:, None] == jnp.arange(x.shape[-1])[None, :]  # [M, N(+1)]
    return _pick(x, onehot)


def _map_shared(members, e, s, topk, n: int):
    """Slot mapping of node set `members` (int32[M], padded with N) under sharing: int32[K]."""
    real = members < n
    vals = jnp.where(real[None, :], _member_values(e, jnp.minimum(members, n - 1), n), jnp.inf)  # [K, M]
    best = jnp.min(vals, axis=1)
    is_best = (vals == best[:, None]) & real[None, :]
    own = is_best & (members[None, :] == topk[:, None])
    lowest = jnp.min(jnp.where(is_best, members[None, :], n), axis=1)
    node = jnp.where(jnp.any(own, axis=1), topk, lowest)
    return jnp.where(best <= s, node, -1).astype(jnp.int32)


def _map_matching(members, e, s, n: int):
    """Best injective slot mapping of node set `members` (int32[K], padded with N): int32[K].

    Recomputes the enumeration's choice: the first pattern (in `_matching_patterns` order over
    positions) of least deviation; a slot is served only if its node is no worse than skipping.
    """
    k = e.shape[0]
    capx = jnp.concatenate([jnp.minimum(e, s[:, None]), s[:, None]], axis=1)
    vals = _member_values(capx, members, n)  # [K slots, K positions]; sentinel -> s
    pats = np.asarray(_matching_patterns(k, k), np.int32)  # all full permutations
    devs = jnp.stack([seq_sum(jnp.stack([vals[i, p[i]] for i in range(k)])) for p in pats])
    best = jnp.argmin(devs)
    pos = jnp.asarray(pats)[best]  # member position serving slot i
    node = jnp.max(jnp.where(jnp.arange(k)[None, :] == pos[:, None], members[None, :], -1), axis=1)
    ev = jnp.max(jnp.where(jnp.arange(n)[None, :] == node[:, None], e, -jnp.inf), axis=1)
    return jnp.where((node < n) & (ev <= s), node, -1).astype(jnp.int32)


def n_multi_subsets(n: int, k: int) -> int:
    """Number of node sets of size 2..K."""
    return sum(math.comb(n, j) for j in range(2, min(k, n) + 1))


@functools.cache
def _subset_chunks(n: int, k: int, chunk: int) -> np.ndarray:
    """All node sets of size 2..k as rows of int32[n_chunks, chunk, k], members ascending, padded
    with n (the sentinel); padding rows are all n (count 0, never valid)."""
    rows = [c + (n,) * (k - len(c)) for j in range(2, min(k, n) + 1) for c in itertools.combinations(range(n), j)]
    total = max(1, len(rows))
    chunk = min(chunk, total)
    n_chunks = -(-total // chunk)
    out = np.full((n_chunks * chunk, k), n, np.int32)
    if rows:
        out[: len(rows)] = np.asarray(rows, np.int32)
    return out.reshape(n_chunks, chunk, k)


def _subset_search(fu, cap, s, eta, share: bool, n: int, k: int, chunk: int):
    """Exact search over every node set of size 2..K: the fallback of "pruned".

    Static subset tables, `lax.scan` over chunks; member values are selected with one-hot matrix
    products (exact: one non-zero term; precision HIGHEST) instead of gathers.
    Returns keys (energy, dev, count) and members int32[K] of the best set.
    """
    chunks = _subset_chunks(n, k, chunk)
    finite = jnp.isfinite(fu)
    # value table [N+1, 2+K]: finite cost, infinite flag, cap per slot; row N = sentinel (0, 0, s)
    v = jnp.concatenate([jnp.where(finite, fu, 0.0)[:, None], (~finite).astype(fu.dtype)[:, None], cap.T], axis=1)
    v = jnp.concatenate([v, jnp.concatenate([jnp.zeros((2,), fu.dtype), s])[None, :]], axis=0)
    pats = _matching_patterns(k, k)

    def evaluate(members):  # members int32[c, K] (static per chunk)
        onehot = jax.nn.one_hot(members, n + 1, dtype=fu.dtype)  # [c, K, N+1]
        vals = jnp.einsum("cpn,nq->pqc", onehot, v, precision=_HI)  # [K positions, 2+K, c]
        energy = canonical_sum([vals[p, 0, :] for p in range(k)])
        bad = jnp.sum(vals[:, 1, :], axis=0) > 0
        capm = vals[:, 2:, :]  # [K positions, K slots, c]
        if share:
            dev = seq_sum(jnp.stack([functools.reduce(jnp.minimum, [capm[p, i] for p in range(k)]) for i in range(k)]))
        else:
            dev = functools.reduce(jnp.minimum, [seq_sum(jnp.stack([capm[p[i], i] for i in range(k)])) for p in pats])
        count = jnp.sum(members < n, axis=1).astype(jnp.int32)
        valid = (count >= 2) & ~bad & (dev <= eta)
        idx, e_min, d_min, c_min = lex_argmin(
            jnp.where(valid, energy, jnp.inf), jnp.where(valid, dev, jnp.inf), jnp.where(valid, count, INVALID_COUNT)
        )
        sel = jnp.arange(members.shape[0]) == idx
        best = jnp.max(jnp.where(sel[:, None], members, -1), axis=0)
        return e_min, d_min, c_min.astype(jnp.int32), best.astype(jnp.int32)

    if chunks.shape[0] == 1:
        return evaluate(jnp.asarray(chunks[0]))
    init = (
        jnp.asarray(jnp.inf, fu.dtype),
        jnp.asarray(jnp.inf, fu.dtype),
        jnp.asarray(INVALID_COUNT, jnp.int32),
        jnp.full((k,), n, jnp.int32),
    )

    def step(carry, members):
        new = evaluate(members)
        better = lex_better(new[:3], carry[:3])
        return jax.tree.map(lambda a, b: jnp.where(better, a, b), new, carry), None

    return jax.lax.scan(step, init, jnp.asarray(chunks))[0]


def _candidate_lists(mask, r: int):
    """Compact each row of bool[K, N] into int32[K, R] node lists (ascending, padded with N) by R
    first-set-bit passes (no cumsum, no gathers); overflow flag: some row has more than R entries."""
    _k, n = mask.shape
    node = jnp.arange(n)
    left, lists = mask, []
    for _ in range(r):
        first = jnp.min(jnp.where(left, node[None, :], n), axis=1)  # [K]
        lists.append(first)
        left = left & (node[None, :] != first[:, None])
    return jnp.stack(lists, axis=1).astype(jnp.int32), jnp.any(left)


def _half_grid(slots, opt, fo, vo, share: bool, n: int):
    """Flat grid over the options of `slots` (one option per slot, the last one = none), built by
    broadcasting the per-slot option vectors (no gathers, no one-hot selections).

    Returns node picks [|H|] x int32[C], sorted pick costs (ascending list of float[C]), the minimum
    (sharing) or own (matching) capped value per slot (list over K, None for other slots' own
    values), count int32[C] and validity bool[C] (matching: distinct picks within the half).
    """
    h, r1 = len(slots), opt.shape[1]

    def grid(x, q):  # option vector of slot slots[q] on axis q of an [R+1]^h grid, flattened
        return jnp.broadcast_to(jnp.reshape(x, tuple(r1 if a == q else 1 for a in range(h))), (r1,) * h).reshape(-1)

    picks = [grid(opt[j], q) for q, j in enumerate(slots)]
    costs = sorted_network([grid(fo[j], q) for q, j in enumerate(slots)]) if h > 1 else [grid(fo[slots[0]], 0)]
    k = vo.shape[0]
    if share:
        vals = [functools.reduce(jnp.minimum, [grid(vo[i, j], q) for q, j in enumerate(slots)]) for i in range(k)]
    else:
        vals = [grid(vo[i, i], slots.index(i)) if i in slots else None for i in range(k)]
    count = functools.reduce(operator.add, [(p < n).astype(jnp.int32) for p in picks])
    ok = jnp.ones(count.shape, bool)
    if not share:
        for p, q in itertools.combinations(range(h), 2):
            ok = ok & ((picks[p] != picks[q]) | (picks[p] == n))
    return picks, costs, vals, count, ok


def _merge_sum(xs, ys):
    """Sum of the union of two ascending lists of arrays in ascending order (canonical)."""
    if len(xs) == 2 and len(ys) == 2:  # Batcher's merge of two sorted pairs: 3 comparators
        a, b = jnp.minimum(xs[0], ys[0]), jnp.maximum(xs[0], ys[0])
        c, d = jnp.minimum(xs[1], ys[1]), jnp.maximum(xs[1], ys[1])
        b, c = jnp.minimum(b, c), jnp.maximum(b, c)
        return ((a + b) + c) + d
    return functools.reduce(operator.add, sorted_network(list(xs) + list(ys)))


def _owner_grid(lists, fu, cap, s, eta, share: bool, n: int):
    """One list entry (or none) per slot, (R+1)^K combinations, evaluated meet-in-the-middle: half
    grids over the slots [0, K/2) and [K/2, K) combined on a 2-D [C1, C2] grid.

    Returns flat keys (energy, dev, count) over C1 * C2 cells and `picks_of(index)` -> int32[K], the
    slot-aligned node picks of a cell (N = none).
    """
    k, _r = lists.shape
    opt = jnp.concatenate([lists, jnp.full((k, 1), n, jnp.int32)], axis=1)  # [K, R+1], last = none
    fx = jnp.concatenate([fu, jnp.zeros((1,), fu.dtype)])  # none -> 0
    capx = jnp.concatenate([cap, s[:, None]], axis=1)  # none -> s
    fo = fx[opt]  # [K, R+1] (a small gather)
    vo = capx[:, opt]  # [K slot i, K owner j, R+1]
    h = k // 2
    halves = (_half_grid(list(range(h)), opt, fo, vo, share, n), _half_grid(list(range(h, k)), opt, fo, vo, share, n))
    # materialise the half grids: otherwise XLA recomputes them inside every [C1, C2] fusion with
    # costly index arithmetic (measured 10x slower on CPU)
    (p1, c1, v1, n1, ok1), (p2, c2, v2, n2, ok2) = jax.lax.optimization_barrier(halves)
    col, row = (lambda x: x[:, None]), (lambda x: x[None, :])
    energy = _merge_sum([col(x) for x in c1], [row(x) for x in c2])
    if share:
        dev = functools.reduce(operator.add, [jnp.minimum(col(v1[i]), row(v2[i])) for i in range(k)])
    else:
        dev = functools.reduce(operator.add, [col(v1[i]) if i < h else row(v2[i]) for i in range(k)])
    count = col(n1) + row(n2)
    valid = (count >= 2) & (dev <= eta)
    if not share:
        valid = valid & col(ok1) & row(ok2)
        for x in p1:
            for y in p2:
                valid = valid & ((col(x) != row(y)) | col(x == n))
    shape = (n1.shape[0], n2.shape[0])
    keys = (
        jnp.where(valid, energy, jnp.inf).reshape(-1),
        jnp.broadcast_to(dev, shape).reshape(-1),
        jnp.where(valid, count, INVALID_COUNT).astype(jnp.int32).reshape(-1),
    )

    def picks_of(idx):  # slot-aligned picks of the flat grid index, int32[K]
        a, b = idx // shape[1], idx % shape[1]
        sel1, sel2 = jnp.arange(shape[0]) == a, jnp.arange(shape[1]) == b
        first = [jnp.max(jnp.where(sel1, x, -1)) for x in p1]
        second = [jnp.max(jnp.where(sel2, y, -1)) for y in p2]
        return jnp.stack(first + second).astype(jnp.int32)

    return keys, picks_of


def _resolve_strategy(strategy: str, n: int, k: int) -> str:
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", strategy, "one of " + ", ".join(STRATEGIES))
    if strategy == "auto":
        if n_multi_subsets(n, k) <= SETS_MAX:
            return "sets"
        return "direct" if sum(n**j for j in range(2, k + 1)) <= DIRECT_MAX_DENSE else "pruned"
    return strategy


def _check_options(n, k, share, strategy, per_slot):
    if not isinstance(share, (bool, np.bool_)):
        raise ConfigError("share_substitutes", share, "True or False (static)")
    if isinstance(per_slot, bool) or not isinstance(per_slot, (int, np.integer)) or per_slot < 1:
        raise ConfigError("per_slot_candidates", per_slot, "an integer >= 1 (static)")
    strategy = _resolve_strategy(strategy, n, k)
    if k > 1 and n_multi_subsets(n, k) > MAX_SUBSETS:
        raise ConfigError(
            "top_k", k, f"a size whose exact enumeration of node sets fits: sum_(j=2..K) C(N={n}, j) <= {MAX_SUBSETS:,}"
        )
    if k > 1 and not share and k > MAX_MATCHING_K:
        raise ConfigError("top_k", k, f"K <= {MAX_MATCHING_K} with share_substitutes=False (K! slot permutations)")
    if strategy == "sets" and n_multi_subsets(n, k) > SETS_MAX_EXPLICIT:
        raise ConfigError("strategy", strategy, f"'direct', 'pruned' or 'auto' for N={n}, K={k} (too many node sets)")
    if strategy == "direct" and k > 1 and sum(n**j for j in range(2, k + 1)) > DIRECT_MAX_EXPLICIT:
        raise ConfigError("strategy", strategy, f"'pruned' or 'auto' for N={n}, K={k} (dense grid too large)")
    if strategy == "pruned" and k > 1 and (min(per_slot, n) + 1) ** k > MAX_COMBOS:
        raise ConfigError("per_slot_candidates", per_slot, f"a value with (R+1)^K <= {MAX_COMBOS:,}")
    return bool(share), strategy, int(min(per_slot, n))


# ----------------------------------------------------------------------------------------------------
# the policy
# ----------------------------------------------------------------------------------------------------


def decode(
    sc: Scenario,
    f,
    g,
    topk,
    table,
    share_substitutes: bool = True,
    strategy: str = "auto",
    per_slot_candidates: int = DEFAULT_PER_SLOT,
) -> Decision:
    """SiftMoE decoding decision for one token of one layer (Theorem 2; exact).

    Args:
        sc: scenario; uses `eta` (may be traced), `n_nodes` N and `top_k` K (static).
        f: float[N] decoding node costs f_v (J) from `sift_jax.costs.node_costs`; inf = misses the
            deadline. Node 0 is the user.
        g: float[K] Top-K gate weights renormalised over the active set (descending).
        topk: int[K] Top-K expert indices (expert v lives on node v), distinct, in [0, N).
        table: float[N, N+1] mean mismatch Fbar (zero diagonal; column N = skip = E||FFN_i||).
        share_substitutes: allow two slots to use the same node (eq. 12; static). False = a matching.
        strategy: "auto", "sets", "direct" or "pruned" (static; see the module docstring). All are exact.
        per_slot_candidates: R, the per-slot list length of "pruned" (static; performance only).

    Returns:
        Decision: assign int32[K] (node per Top-K slot, -1 = skipped), loads int32[N] (1 for each node
        used), energy_j = sum of f over used nodes (J), deviation_bound = sum_i g_i Fbar[topk_i,
        assign_i] (skip column for -1), feasible, n_replaced, n_skipped. All zero (assign -1) when no
        feasible selection exists.

    Raises:
        ConfigError: wrong shapes or dtypes, an unknown strategy or option value, or sizes whose exact
            search does not fit (see the constants at the top of the module).

    Example:
        Expert 0 (g = 0.7) can be replaced by expert 2 at a cost of 0.7 * 0.4 = 0.28 and expert 1
        (g = 0.3) skipped at 0.3 * 1.0 = 0.3; node 3 misses the deadline. As eta grows the energy falls:
        eta = 0.2 allows neither (nodes {0, 1}, 6 J), 0.3 the replacement ({2, 1}, 1.5 J), 0.6 both
        ({2}, 0.5 J). A jitted policy is compiled once for every eta (eta is a traced leaf):

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=4, top_k=2, eta=0.3)
        >>> table = jnp.array([[0.0, 1.5, 0.4, 1.5, 1.0],    # expert 2 is a close substitute of 0
        ...                    [1.5, 0.0, 1.5, 1.5, 1.0],
        ...                    [0.4, 1.5, 0.0, 1.5, 1.0],
        ...                    [1.5, 1.5, 1.5, 0.0, 1.0]])
        >>> f = jnp.array([5.0, 1.0, 0.5, jnp.inf])           # node 3 misses the deadline
        >>> g, topk = jnp.array([0.7, 0.3]), jnp.array([0, 1])
        >>> decide = jax.jit(decode)
        >>> for eta in (0.2, 0.3, 0.6):
        ...     d = decide(sc.replace(eta=eta), f, g, topk, table)
        ...     print(eta, d.assign.tolist(), d.loads.tolist(), float(d.energy_j), round(float(d.deviation_bound), 2))
        0.2 [0, 1] [1, 1, 0, 0] 6.0 0.0
        0.3 [2, 1] [0, 1, 1, 0] 1.5 0.28
        0.6 [2, -1] [0, 0, 1, 0] 0.5 0.58

        Without node 1 and with eta = 0.2 no selection meets the budget:

        >>> d = decide(sc.replace(eta=0.2), f.at[1].set(jnp.inf), g, topk, table)
        >>> bool(d.feasible), d.assign.tolist(), float(d.energy_j)
        (False, [-1, -1], 0.0)
    """
    f, g, topk, table = check_inputs(sc, f, g, topk, table)
    n, k = sc.n_nodes, sc.top_k
    share, strategy, r = _check_options(n, k, share_substitutes, strategy, per_slot_candidates)
    eta = jnp.asarray(sc.eta, f.dtype)
    e, s = slot_values(g, topk, table)
    cap = jnp.minimum(e, s[:, None])
    node = jnp.arange(n)
    e1, d1, use1 = _singletons(f, e, s, share)
    finite = jnp.isfinite(f)
    useful_slot = (e < s[:, None]) & finite[None, :]  # [K, N] strictly useful for slot i
    useful = functools.reduce(operator.or_, _rows(useful_slot))
    fu = jnp.where(useful, f, jnp.inf)
    if strategy == "sets":  # every candidate is eta-free; only the final pass depends on eta
        rows = [
            (e1[v], d1[v], [jnp.where(use1[i, v], jnp.int32(v), jnp.int32(-1)) for i in range(k)]) for v in range(n)
        ]
        rows += [
            _set_row(members, fu, e, s, cap, topk, share)
            for j in range(2, k + 1)
            for members in itertools.combinations(range(n), j)
        ]
        return _decision(*_best_row(rows, eta, n), topk, n)
    valid1 = d1 <= eta
    v, best_e, best_d, best_c = lex_argmin(jnp.where(valid1, e1, jnp.inf), jnp.where(valid1, d1, jnp.inf), 1)
    assign = jnp.where(jnp.any(use1 & (node == v)[None, :], axis=1), v, -1).astype(jnp.int32)
    if k > 1:
        results = []  # (energy, dev, count, assign) of the best multi-node set of each search
        if strategy == "direct":
            for j, (ej, dj) in zip(range(2, k + 1), _dense_blocks(fu, cap, s, eta, share, n, k)):
                idx, bj_e, bj_d, bj_c = lex_argmin(ej, dj, j)
                members = _dense_members(idx, j, n, k)
                a = _map_shared(members, e, s, topk, n) if share else _map_matching(members, e, s, n)
                results.append((bj_e, bj_d, bj_c, a))
        else:
            # dominance matrices indexed [v, u]: does u dominate v? (reductions over the minor axis u)
            f_le, f_lt = f[None, :] <= f[:, None], f[None, :] < f[:, None]
            tie = node[None, :] < node[:, None]
            if share:
                c_le = functools.reduce(operator.and_, [cap[i][None, :] <= cap[i][:, None] for i in range(k)])
                c_lt = functools.reduce(operator.or_, [cap[i][None, :] < cap[i][:, None] for i in range(k)])
                dominated = jnp.any(useful[None, :] & f_le & c_le & (f_lt | c_lt | tie), axis=1)
                lists, overflow = _candidate_lists(useful_slot & ~dominated[None, :], r)
            else:
                other = node[None, :] != node[:, None]
                keep = []
                for i in range(k):  # v stays in slot i's list unless >= K nodes dominate it on slot i
                    ei = e[i]
                    dom = (
                        useful_slot[i][None, :]
                        & f_le
                        & (ei[None, :] <= ei[:, None])
                        & other
                        & (f_lt | (ei[None, :] < ei[:, None]) | tie)
                    )
                    keep.append(jnp.sum(dom, axis=1) < k)
                lists, overflow = _candidate_lists(useful_slot & jnp.stack(keep), r)
            (eg, dg, cg), picks_of = _owner_grid(lists, fu, cap, s, eta, share, n)
            idx, bg_e, bg_d, bg_c = lex_argmin(eg, dg, cg)
            picks = picks_of(idx)  # slot-aligned
            a = _map_shared(picks, e, s, topk, n) if share else jnp.where(picks < n, picks, -1).astype(jnp.int32)
            results.append((bg_e, bg_d, bg_c, a))

            def full_search(fu, cap, e, s, topk, eta):
                f_e, f_d, f_c, members = _subset_search(fu, cap, s, eta, share, n, k, _CHUNK)
                a = _map_shared(members, e, s, topk, n) if share else _map_matching(members, e, s, n)
                return f_e, f_d, f_c, a

            no_result = (
                jnp.asarray(jnp.inf, f.dtype),
                jnp.asarray(jnp.inf, f.dtype),
                jnp.asarray(INVALID_COUNT, jnp.int32),
                jnp.full((k,), -1, jnp.int32),
            )
            results.append(lazy(overflow, full_search, (fu, cap, e, s, topk, eta), no_result))
        for r_e, r_d, r_c, r_a in results:
            better = lex_better((r_e, r_d, r_c), (best_e, best_d, best_c))
            best_e, best_d = jnp.where(better, r_e, best_e), jnp.where(better, r_d, best_d)
            best_c, assign = jnp.where(better, r_c, best_c), jnp.where(better, r_a, assign)
    return _decision(best_e, best_d, assign, topk, n)


def _decision(best_e, best_d, assign, topk, n: int) -> Decision:
    feasible = jnp.isfinite(best_e)
    return make_decision(
        assign, loads_of(jnp.where(feasible, assign, -1), n), best_e, best_d, feasible, topk, reports_infeasible=False
    )
