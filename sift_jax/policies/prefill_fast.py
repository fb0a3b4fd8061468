"""Scalable prefill for any K: greedy construction + local search, with a Lagrangian lower bound.

Candidates. Each token keeps the list of its minimal feasible node sets (prefill.candidate_mask); when
C = sum_{k <= K} binom(N, k) exceeds `max_cand` (N = 32, K = 4: C = 41,449) the list keeps the
`max_cand` sets of least first-unit energy, built token by token (`candidate_lists`) from the sets that
can be minimal: subsets of the token's "useful" nodes (those that beat some slot's skip mismatch, ~K x
cluster size of them) and singletons (`_token_sets`, proof in its docstring), not from all C sets; when
some token has more than `n_useful` useful nodes (dense random tables) the instance falls back to all C.

Primal. Tokens are inserted one at a time (fewest candidates first), each taking the candidate of least
current marginal energy sum_{v in J} dE_v(D_v + 1) (inf at capacity). Re-insertion passes then take
every token out in turn and put it back at its best candidate until none moves (`n_passes` at most);
a move never raises the energy. Five starts run side by side, each searched under its own cost model:
greedy with the user's one-off load energy prepaid (prefill.user_prepaid), empty with the user
switched off, the Lagrangian choices (below) under "off" and under "prepaid", and the practical Top-K
assignment under the true costs (re-insertion also repairs its overloads, so whenever Top-K is
feasible the result costs no more than Top-K). Pair moves (`_pair_search`: two tokens taken out and
put back jointly, which also realises ejection chains of depth one) then run on the best starts; the
cheapest true energy wins.

Lower bound. Relaxing "node v serves D_v >= #{m : v in J_m}" with multipliers lam >= 0,
    L(lam) = sum_m min_{J in cand_m} sum_{v in J} lam_v + sum_v min_{0 <= d <= cap_v} (E_v(d) - lam_v d)
is <= the optimum for every lam >= 0 (weak duality; the node term is minimised by enumeration, so it is
exact for any E_v). Because the user's E_0 is not convex, the relaxation is applied twice, to the
problem with the user off and to the one with the user on (prepaid costs, plus the one-off energy),
and the smaller value is the bound; each is maximised by `lagrangian_bound` (smoothed dual, Adam) and
lowered by a floating-point safety margin. tests/test_prefill.py checks it against the exact optimum;
BENCHMARKS.md (benchmarks/bench_prefill.py) reports the certified gaps.

Cost per instance: O((n_passes + 1) M Cm K) for re-insertion, O(n_pair_passes M P R^2 N) for pair moves
(P = n_partners, R = n_cand) and O(n_dual (M Cm K + N D)) for the bound, Cm = min(C, max_cand), plus, when
the lists are truncated, two feasibility passes per token (building the lists, and the bound's minima
over all sets), each over S = sum_{k <= K} binom(n_useful, k) + N sets (n_useful = 16:
S = 2,548 instead of C = 41,449); memory O(M Cm) (plus O(K S) per token for those passes). Timings:
BENCHMARKS.md (benchmarks/bench_prefill.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from sift_jax.policies._sets import (
    PrefillInfo,
    candidate_mask,
    combo_index,
    combo_table,
    decision_from_combos,
    effective_caps,
    layer_energy,
    slot_rows,
    token_deviation,
    user_prepaid,
)
from sift_jax.policies.lazy import lazy

__all__ = ["solve_fast"]


def _reinsert(cost, combo, cand, members, ind, cap_eff, order, n_passes):
    """Construction (tokens without a set are inserted) and re-insertion passes under `cost`.

    cand: int32[M, Cm] each token's candidate sets (combo indices, -1 = none)."""
    n, width = cost.shape
    k = members.shape[1]

    def one_pass(combo):
        def body(i, s):
            combo, loads, moved = s
            m = order[i]
            cur = combo[m]
            curc = jnp.maximum(cur, 0)
            loads = loads - jnp.where(cur >= 0, ind[curc], 0)
            p = cost[jnp.arange(n), jnp.minimum(loads, width - 1)]
            p = jnp.concatenate([jnp.where(loads < cap_eff, p, jnp.inf), jnp.zeros((1,), p.dtype)])
            row = cand[m]
            mem = members[jnp.maximum(row, 0)]  # [Cm, K]
            cc = jnp.where(row >= 0, sum(p[mem[:, j]] for j in range(k)), jnp.inf)
            best = jnp.argmin(cc)
            c = row[best]
            ok = jnp.isfinite(cc[best])
            cur_cost = sum(p[members[curc, j]] for j in range(k))
            keep = (cur >= 0) & jnp.any(row == cur) & (cur_cost <= cc[best])
            c = jnp.where(keep, cur, jnp.where(ok, c, -1))
            loads = loads + jnp.where(c >= 0, ind[jnp.maximum(c, 0)], 0)
            return combo.at[m].set(c), loads, moved | (c != cur)

        loads = jnp.where(combo[:, None] >= 0, ind[jnp.maximum(combo, 0)], 0).sum(0)
        out, _, moved = jax.lax.fori_loop(0, order.shape[0], body, (combo, loads, jnp.zeros((), bool)))
        return out, moved

    def step(s):
        c, moved = one_pass(s[0])
        return c, s[1] + 1, moved

    combo, _, _ = jax.lax.while_loop(lambda s: s[2] & (s[1] <= n_passes), step, (combo, 0, jnp.ones((), bool)))
    return combo


def _token_sets(sc, cap_eff, gm, tm, table, n_useful: int):
    """One token's node sets that can be minimal and feasible, enumerated without the C = sum binom(N, k) sweep.

    A node is useful for the token when it is available and some slot's mismatch with it is <= that slot's
    skip mismatch. A minimal feasible set of two or more nodes holds useful nodes only (a node that beats no
    slot's skip is never a used slot's best, so dropping it keeps the deviation; a set of such nodes only is
    all-skipped and its forced slot's cost is that of its best single node). So the sets are: every subset
    of size <= K of the token's first `n_useful` useful nodes (a static local combo table) and the singletons
    of the other nodes.

    Args: gm float[K], tm int[K] the token's gates and experts; n_useful R (static).

    Returns:
        ids int32[S] global combo indices (S = sum_{k<=K} binom(R, k) + N; duplicates are masked out),
        feasible bool[S], minimal bool[S] (feasible and no feasible subset), overflow bool[] (more than R
        useful nodes: then some minimal sets are missing).
    """
    n, k = table.shape[0], tm.shape[0]
    r = min(n_useful, n)
    fp, skip = slot_rows(gm[None], tm[None], table)
    fp, skip = fp[0], skip[0]  # [K, N + 1] (column N = inf pad), [K]
    avail = cap_eff >= 1
    useful = jnp.any(fp[:, :n] <= skip[:, None], 0) & avail
    count = jnp.sum(useful)
    nodes = jnp.argsort(~useful, stable=True)[:r]  # the first R useful nodes, ascending
    nodes = jnp.concatenate([jnp.where(jnp.arange(r) < count, nodes, n), jnp.array([n])]).astype(jnp.int32)
    local = combo_table(r, k)
    pos = jnp.asarray(local.members)  # [S_loc, K] positions, pad r
    valid = jnp.all((pos == r) | (pos < count), -1)
    mem = jnp.concatenate(
        [nodes[pos], jnp.full((n, k), n, jnp.int32).at[:, 0].set(jnp.arange(n, dtype=jnp.int32))]
    )  # [S, K]
    best = functools.reduce(jnp.minimum, [fp[:, mem[:, j]] for j in range(k)])  # [K, S]
    dev, _ = token_deviation(gm, best, skip[:, None])
    avail_ext = jnp.concatenate([avail, jnp.ones((1,), bool)])
    feasible = (dev <= sc.eta) & jnp.all(avail_ext[mem], -1)
    keep = jnp.concatenate([valid, ~useful])  # useful singletons are local combos already
    feasible = feasible & keep
    sub = jnp.asarray(local.sub)
    n_loc = pos.shape[0]
    sub_feas = jnp.any(jnp.where(sub >= 0, feasible[:n_loc][jnp.maximum(sub, 0)], False), -1)
    minimal = feasible & jnp.concatenate([~sub_feas, jnp.ones((n,), bool)])
    return combo_index(mem, n, k).astype(jnp.int32), feasible, minimal, count > r


def _compact_unless_overflow(compact, full, operands):
    """compact(operands) -> (value, overflow bool[M]); full(operands) instead when some token overflows
    (run only then: `lazy`)."""
    value, overflow = compact(operands)
    return lazy(jnp.any(overflow), lambda *ops: full(ops), operands, value)


def candidate_lists(sc, cap_eff, g, topk, table, dE, max_cand: int | None, n_useful: int = 16):
    """Each token's minimal feasible node sets as a list: int32[M, Cm] combo indices, -1 padded.

    With C = sum_{k <= K} binom(N, k) <= max_cand (or max_cand None) the lists hold every set (dense mask,
    memory O(M K C)). Otherwise a token keeps its max_cand sets of least first-unit energy
    sum_{v in J} dE_v(1) among the sets of `_token_sets` (or, when some token has more than `n_useful`
    useful nodes, among all C sets); the search then only uses those, and the lower bound still covers
    all sets (`_full_token_min`).
    """
    _m, k = g.shape
    n = table.shape[0]
    tab = combo_table(n, k)
    n_combos = len(tab.members)
    if max_cand is None or n_combos <= max_cand:
        mask = candidate_mask(sc, cap_eff, g, topk, table)
        return jnp.where(mask, jnp.arange(n_combos, dtype=jnp.int32)[None, :], -1)
    first = jnp.concatenate([jnp.where(cap_eff >= 1, dE[:, 0], jnp.inf), jnp.zeros((1,), dE.dtype)])
    members = jnp.asarray(tab.members)

    def pick(ids, ok):  # the max_cand listed sets of least first-unit energy, -1 padded
        neg, idx = jax.lax.top_k(jnp.where(ok, -first[members[ids]].sum(-1), -jnp.inf), min(max_cand, ids.shape[0]))
        row = jnp.where(neg > -jnp.inf, ids[idx], -1)
        return jnp.pad(row, (0, max_cand - row.shape[0]), constant_values=-1)

    def compact(ops):
        g, topk, table, cap_eff = ops

        def one(args):
            ids, _, minimal, overflow = _token_sets(sc, cap_eff, *args, table, n_useful)
            return pick(ids, minimal), overflow

        return jax.lax.map(one, (g, topk))

    def full(ops):
        g, topk, table, cap_eff = ops
        every = jnp.arange(n_combos, dtype=jnp.int32)
        return jax.lax.map(
            lambda a: pick(every, candidate_mask(sc, cap_eff, a[0][None], a[1][None], table)[0]), (g, topk)
        )

    return _compact_unless_overflow(compact, full, (g, topk, table, cap_eff))


def _full_token_min(sc, cap_eff, g, topk, table, ind, lams, n_useful: int = 16):
    """min over ALL feasible sets of sum_{v in J} lam_v, token by token, for the multipliers lams[0]
    (user off: sets with the user excluded) and lams[1] (user on): float[M, 2].

    For lam >= 0 the minimum is attained at a minimal feasible set, and `_token_sets` lists all of those
    unless the token has more than `n_useful` useful nodes; if some token has, every token is evaluated
    over all C sets (supersets included: they never lower a minimum of non-negative prices)."""
    cc = ind.astype(lams.dtype) @ lams.T  # [C, 2]
    cc = cc.at[:, 0].set(jnp.where(ind[:, 0] > 0, jnp.inf, cc[:, 0]))

    def compact(ops):
        g, topk, table, cap_eff, cc = ops

        def one(args):
            ids, feasible, _, overflow = _token_sets(sc, cap_eff, *args, table, n_useful)
            return jnp.min(jnp.where(feasible[:, None], cc[ids], jnp.inf), 0), overflow

        return jax.lax.map(one, (g, topk))

    def full(ops):
        g, topk, table, cap_eff, cc = ops

        def one(args):
            row = candidate_mask(sc, cap_eff, args[0][None], args[1][None], table, minimal=False)[0]
            return jnp.min(jnp.where(row[:, None], cc, jnp.inf), 0)

        return jax.lax.map(one, (g, topk))

    return _compact_unless_overflow(compact, full, (g, topk, table, cap_eff, cc))


def _pair_search(dE, combo, cand, members, ind, cap_eff, order, n_cand: int, n_partners: int, n_passes: int):
    """Pair moves (combos must be from the lists `cand`, as `_reinsert` leaves them). For token a (in
    `order`) and its `n_partners` likeliest partners b (tokens whose
    current set shares the most nodes with a's candidates, full nodes counted thrice), remove both and
    re-insert them jointly at least cost over each one's `n_cand` cheapest candidate sets plus its
    current one; apply the best pair. Partners that share no node with a's candidates cannot gain
    over single moves. Unassigned tokens are re-placed first (an ejection chain of depth one)."""
    m = combo.shape[0]
    n, width = dE.shape
    r = min(n_cand, cand.shape[1])
    n_p = min(n_partners, m - 1)
    nodes = jnp.arange(n)

    def price(loads):
        p = dE[nodes, jnp.clip(loads, 0, width - 1)]
        return jnp.where((loads >= 0) & (loads < cap_eff), p, jnp.inf)

    def ind_of(c):
        return jnp.where((c >= 0)[..., None], ind[jnp.maximum(c, 0)], 0)

    def one_pass(combo):
        loads = ind_of(combo).sum(0)
        q = dE[nodes, jnp.clip(jnp.minimum(loads, cap_eff - 1), 0, width - 1)]  # price, capacity ignored
        q = jnp.where(cap_eff >= 1, q, jnp.inf)
        score = _set_prices(q, members, cand)  # [M, Cm]
        neg, pos = jax.lax.top_k(-score, r)
        best_r = jnp.where(jnp.isfinite(neg), jnp.take_along_axis(cand, pos, 1), -1)  # [M, r]

        def body(i, s):
            combo, loads, improved = s
            a = order[i]
            ja = combo[a]
            ca = jnp.concatenate([best_r[a], ja[None]])  # [r + 1]
            ia = ind_of(ca) > 0  # [r + 1, N]
            wanted = jnp.any(ia, 0)
            weight = wanted * (1 + 2 * (loads >= cap_eff))
            w_ext = jnp.concatenate([weight, jnp.zeros((1,), weight.dtype)])
            overlap = jnp.where(combo >= 0, w_ext[members[jnp.maximum(combo, 0)]].sum(-1), 0)  # [M]
            overlap = jnp.where((jnp.arange(m) == a) | (overlap == 0), -1, overlap)
            ov, partner = jax.lax.top_k(overlap, n_p)  # [P]
            jb = combo[partner]
            base = loads - ind_of(ja)
            lb = base[None, :] - ind_of(jb)  # loads without a and b
            p0, p1 = price(lb), price(lb + 1)
            delta = jnp.where(jnp.isfinite(p1), p1 - p0, jnp.inf)
            cb = jnp.concatenate([best_r[partner], jb[:, None]], 1)  # [P, r + 1]
            ib = ind_of(cb) > 0  # [P, r + 1, N]
            va, vb = ca >= 0, cb >= 0  # current sets come from the lists too (after `_reinsert`)
            cost_a = jnp.where(ia[None], p0[:, None, :], 0.0).sum(-1)  # [P, r + 1]
            cost_b = jnp.where(ib, p0[:, None, :], 0.0).sum(-1)
            inter = jnp.where(ia[None, :, None, :] & ib[:, None, :, :], delta[:, None, None, :], 0.0).sum(-1)
            total = cost_a[:, :, None] + cost_b[:, None, :] + inter
            total = jnp.where(va[None, :, None] & vb[:, None, :], total, jnp.inf)  # [P, r + 1, r + 1]
            flat = total.reshape(n_p, -1)
            k_best = jnp.argmin(flat, 1)
            best = jnp.take_along_axis(flat, k_best[:, None], 1)[:, 0]
            current = jnp.where((ja >= 0) & (jb >= 0), total[:, r, r], jnp.inf)
            gain = jnp.where(
                jnp.isinf(current),
                jnp.where(jnp.isfinite(best), jnp.inf, -jnp.inf),
                current - best - 1e-9 * jnp.abs(current),
            )
            gain = jnp.where(ov >= 0, gain, -jnp.inf)
            j = jnp.argmax(gain)
            b = partner[j]
            do = gain[j] > 0
            ka, kb = k_best[j] // (r + 1), k_best[j] % (r + 1)
            new_a, new_b = jnp.where(do, ca[ka], ja), jnp.where(do, cb[j, kb], jb[j])
            loads = loads - ind_of(ja) - ind_of(jb[j]) + ind_of(new_a) + ind_of(new_b)
            combo = combo.at[b].set(new_b).at[a].set(new_a)
            return combo, loads, improved | do

        combo, _, improved = jax.lax.fori_loop(0, m, body, (combo, loads, jnp.zeros((), bool)))
        return combo, improved

    def step(s):
        c, improved = one_pass(s[0])
        return c, s[1] + 1, improved

    if n_p < 1:
        return combo
    combo, _, _ = jax.lax.while_loop(lambda s: s[2] & (s[1] < n_passes), step, (combo, 0, jnp.ones((), bool)))
    return combo


DENSE_SETS = 4096  # up to this many node sets, prices of all sets by one [C, N] matvec beat per-list gathers


def _set_prices(lam, members, cand):
    """sum_{v in J} lam_v for each listed set J = cand[m, c] (inf where -1): float[M, Cm].

    Few sets (C <= DENSE_SETS): every set's price by a membership matvec, then looked up. Many sets
    (N = 32, K = 4: C = 41,449): gathers through members (int[C, K], pad N), O(M Cm K), never O(C N)."""
    c, n = members.shape[0], lam.shape[0]
    if c <= DENSE_SETS:
        ind = jax.nn.one_hot(members, n + 1, dtype=jnp.int32)[..., :n].sum(1) > 0  # [C, N], a constant
        price = jnp.where(ind, lam[None, :], 0.0).sum(-1)  # not a matvec: lam may hold inf (0 * inf = nan)
        return jnp.where(cand >= 0, price[jnp.maximum(cand, 0)], jnp.inf)
    lam_ext = jnp.concatenate([lam, jnp.zeros((1,), lam.dtype)])
    return jnp.where(cand >= 0, lam_ext[members[jnp.maximum(cand, 0)]].sum(-1), jnp.inf)


def dual_value(dE, cap_eff, tok_min, lam):
    """L(lam) given each token's minimum set price tok_min float[M], lowered by a floating-point safety
    margin (M + N + 2) eps sum |terms|; inf when a token has no set (the problem is infeasible)."""
    n, width = dE.shape
    d = jnp.arange(width + 1)
    e_cum = jnp.concatenate([jnp.zeros((n, 1), dE.dtype), jnp.cumsum(dE, 1)], 1)
    e_cum = jnp.where(d[None, :] <= cap_eff[:, None], e_cum, jnp.inf)
    node = jnp.min(e_cum - lam[:, None] * d.astype(dE.dtype)[None, :], 1)
    dead = ~jnp.all(jnp.isfinite(tok_min))
    tok = jnp.where(dead, 0.0, tok_min)
    margin = (tok.shape[0] + n + 2) * jnp.finfo(dE.dtype).eps * (jnp.abs(tok).sum() + jnp.abs(node).sum())
    return jnp.where(dead, jnp.inf, tok.sum() + node.sum() - margin)


# The dual ascent of `lagrangian_bound`: Adam on mu = log(lam), temperature annealed geometrically.
DUAL_LR = 0.1  # Adam step size on log(lam)
DUAL_GRAD_WEIGHTS = (0.1, 0.001)  # weight of the new gradient in Adam's first and second moments (1 - beta_1,2)
DUAL_EPS = 1e-12  # added to Adam's denominator sqrt(second moment)
DUAL_TAU = (0.3, 1e-3)  # soft-min temperature at the first and the last iteration, as fractions of the price scale
DUAL_EXACT_EVERY = 4  # the exact L is evaluated at every this many-th iterate (and the last)


def lagrangian_bound(dE, cap_eff, cand, members, lam0, n_dual: int = 120, lr: float = DUAL_LR):
    """Lagrangian lower bound L(lam) maximised over lam >= 0 (module docstring).

    L is concave but not smooth, and plain subgradient or coordinate ascent stall on its kinks, so
    lam = exp(mu) follows Adam ascent steps (DUAL_GRAD_WEIGHTS, DUAL_EPS) on a smoothed L_tau (each min
    over a token's sets and over a node's loads replaced by a soft-min at temperature tau, annealed
    geometrically from DUAL_TAU[0] to DUAL_TAU[1] of the price scale by `optax.exponential_decay`). The
    exact L is evaluated at every DUAL_EXACT_EVERY-th iterate and the last; the best value, lowered by a
    floating-point safety margin (M + N + 2) eps sum |terms|, is returned. The Adam step is written out
    rather than `optax.adam`: optax rounds differently ((1 - 0.9) != 0.1, lr applied after the division),
    and the multipliers seed two of `solve_fast`'s search starts, so its decisions would change.

    Args:
        dE: float[N, D] marginal costs (the cost model to bound). cap_eff: int32[N].
        cand: int32[M, Cm] candidate sets (-1 = none). members: int[C, K] set members (pad N).
        lam0: float[N] start. n_dual: iterations. lr: Adam step on log(lam).
        When the lists are truncated the value is a bound only for the listed sets: re-evaluate the
        returned multipliers with `dual_value` and the minima over all sets (`_full_token_min`).

    Returns:
        (float[] lower bound, inf if some token has no candidate set; float[N] its multipliers).
    """
    n, width = dE.shape
    mask = cand >= 0
    d = jnp.arange(width + 1)
    e_cum = jnp.concatenate([jnp.zeros((n, 1), dE.dtype), jnp.cumsum(dE, 1)], 1)
    e_cum = jnp.where(d[None, :] <= cap_eff[:, None], e_cum, jnp.inf)
    df = d.astype(dE.dtype)
    dtype = dE.dtype
    n_sets = members.shape[0]
    indf = jax.nn.one_hot(members, n + 1, dtype=dtype)[..., :n].sum(1) if n_sets <= DENSE_SETS else None

    def exact(lam):
        return dual_value(dE, cap_eff, jnp.min(_set_prices(lam, members, cand), 1), lam)

    finite0 = jnp.isfinite(lam0) & (lam0 > 0)
    scale = jnp.where(
        jnp.any(finite0),
        jnp.exp(
            jnp.sum(jnp.where(finite0, jnp.log(jnp.where(finite0, lam0, 1.0)), 0.0)) / jnp.maximum(jnp.sum(finite0), 1)
        ),
        1.0,
    )
    mu0 = jnp.log(jnp.where(finite0, lam0, scale))

    def grad(mu, tau):
        lam = jnp.exp(mu)
        cc = _set_prices(lam, members, cand)
        p = jax.nn.softmax(-(cc - jnp.min(cc, 1, keepdims=True)) / tau, axis=1)
        p = jnp.where(mask, p, 0.0)
        if indf is not None:  # few sets: mass per set, then a [C, N] matvec
            count = jnp.zeros((n_sets,), dtype).at[jnp.maximum(cand, 0).ravel()].add(p.ravel()) @ indf
        else:  # many sets: scatter each listed set's mass onto its K members
            mem = members[jnp.maximum(cand, 0)]  # [M, Cm, K]
            count = jnp.zeros((n + 1,), dtype).at[mem].add(jnp.broadcast_to(p[..., None], mem.shape))[:n]
        node = e_cum - lam[:, None] * df[None, :]
        q = jax.nn.softmax(-(node - jnp.min(node, 1, keepdims=True)) / tau, axis=1)
        q = jnp.where(jnp.isfinite(node), q, 0.0)
        load = q @ df
        return (count - load) * lam

    def tau_at(i):  # traced in the loop body: scale * DUAL_TAU[0] hoisted out of it rounds tau differently
        return optax.exponential_decay(
            scale * DUAL_TAU[0], transition_steps=max(n_dual - 1, 1), decay_rate=DUAL_TAU[1] / DUAL_TAU[0]
        )(i)

    w1, w2 = DUAL_GRAD_WEIGHTS
    b1, b2 = 1 - w1, 1 - w2  # 0.9, 0.999 exactly

    def body(i, s):
        mu, mom, vel, best, best_mu = s
        gr = grad(mu, tau_at(i))
        mom = b1 * mom + w1 * gr
        vel = b2 * vel + w2 * gr**2
        step = lr * (mom / (1 - b1 ** (i + 1))) / (jnp.sqrt(vel / (1 - b2 ** (i + 1))) + DUAL_EPS)
        mu = mu + jnp.where(jnp.isfinite(step), step, 0.0)
        check = (i % DUAL_EXACT_EVERY == DUAL_EXACT_EVERY - 1) | (i == n_dual - 1)
        val = jax.lax.cond(check, exact, lambda _: -jnp.inf, jnp.exp(mu))
        better = val > best
        return mu, mom, vel, jnp.where(better, val, best), jnp.where(better, mu, best_mu)

    zeros = jnp.zeros((n,), dtype)
    init = (mu0, zeros, zeros, exact(jnp.exp(mu0)), mu0)
    _, _, _, best, best_mu = jax.lax.fori_loop(0, n_dual, body, init)
    return jnp.maximum(best, 0.0), jnp.exp(best_mu)


# The search starts of `solve_fast` (module docstring, "Primal"), in the order of its start arrays: (start,
# the cost model it is searched under). Cost models: "prepaid" (the user's one-off energy prepaid,
# `user_prepaid`), "off" (the user node switched off), "true" (dE as given).
SEARCH_STARTS = (
    ("greedy", "prepaid"),
    ("empty", "off"),
    ("lagrangian", "off"),
    ("lagrangian", "prepaid"),
    ("topk", "true"),
)
COST_MODELS = ("prepaid", "off", "true")  # pair moves go to the best start of each model first


def solve_fast(
    sc,
    dE,
    cap,
    g,
    topk,
    table,
    n_passes: int = 4,
    n_pair_passes: int = 3,
    n_cand: int = 6,
    n_partners: int = 12,
    n_pair_starts: int | None = None,
    n_dual: int = 120,
    max_cand: int | None = 1024,
    n_useful: int = 16,
):
    """Heuristic prefill for any K with a Lagrangian lower bound (see the module docstring).

    Called by `prefill(..., method="fast")` after its input checks (arrays, shapes as there).

    Args:
        sc: scenario; uses eta (may be traced).
        dE: float[N, D] marginal energies (J), inf beyond capacity.
        cap: int32[N] capacities D_v,max (tokens).
        g: float[M, K] gate weights.
        topk: int32[M, K] Top-K expert indices.
        table: float[N, N + 1] mean mismatch Fbar, column N = skip.
        n_passes: most re-insertion passes after construction (stops early when no token moves).
        n_pair_passes: most pair-move passes (0: none; stops early when no pair improves).
        n_cand: candidate sets per token considered in a pair move (its cheapest ones + its current).
        n_partners: partner tokens tried per token in a pair pass.
        n_pair_starts: how many starts get the pair passes (the best of each cost model first);
            default all 5 (SEARCH_STARTS) for M <= 16 (small instances, where single moves stall most), else 1.
        n_dual: iterations of the Lagrangian bound (`lagrangian_bound`).
        max_cand: most candidate sets per token in the search (`candidate_lists`; None = all). Only
            binds when sum_{k <= K} binom(N, k) > max_cand (e.g. N = 32, K = 4: 41,449 sets).
        n_useful: with truncated lists, the sets of each token are enumerated from its useful nodes
            (`_token_sets`) when no token has more than n_useful of them, else from all C sets.
        All options are static.

    Returns:
        (Decision, PrefillInfo): the best decision found (assign int32[M, K], loads int32[N], energy_j
        in J, ...; zeroed when none is found) and info with method "fast", lower_bound <= the optimal
        energy (J; inf when proven infeasible) and rel_gap = (energy_j - lower_bound) / energy_j.

    Example:
        With eta = 0 the only feasible decision serves every token by its own Top-K nodes (energy
        3 + (1 + 2) + 1.5 = 7.5 J), so the search must find it; the bound never exceeds it:

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, top_k=2, n_tokens=2, eta=0.0)
        >>> dE = jnp.array([[3.0, 1.0], [1.0, 2.0], [1.5, 2.5]])
        >>> table = jnp.array([[0.0, 1.5, 1.5, 1.0], [1.5, 0.0, 1.5, 1.0], [1.5, 1.5, 0.0, 1.0]])
        >>> g, topk = jnp.full((2, 2), 0.5), jnp.array([[0, 1], [1, 2]])
        >>> d, info = jax.jit(solve_fast)(sc, dE, jnp.array([2, 2, 2]), g, topk, table)
        >>> d.assign.tolist(), float(d.energy_j), bool(info.lower_bound <= d.energy_j), info.method
        ([[0, 1], [1, 2]], 7.5, True, 'fast')
    """
    m, k = g.shape
    n, width = dE.shape
    tab = combo_table(n, k)
    members = jnp.asarray(tab.members)
    ind = jax.nn.one_hot(members, n + 1, dtype=jnp.int32)[..., :n].sum(1)  # [C, N]
    cap_eff = effective_caps(dE, cap)
    cand = candidate_lists(sc, cap_eff, g, topk, table, dE, max_cand, n_useful)  # [M, Cm]
    truncated = cand.shape[1] < len(tab.members)
    order = jnp.argsort((cand >= 0).sum(1), stable=True).astype(jnp.int32)
    prepaid, prepaid_l = user_prepaid(dE)
    off = dE.at[0].set(jnp.inf)
    empty = jnp.full((m,), -1, jnp.int32)

    def energy_of(combo):
        loads = jnp.where(combo[:, None] >= 0, ind[jnp.maximum(combo, 0)], 0).sum(0)
        e = layer_energy(dE, loads)
        return jnp.where(jnp.all(combo >= 0), e, jnp.inf), loads

    # A quick greedy for the dual's starting prices.
    greedy = _reinsert(prepaid, empty, cand, members, ind, cap_eff, order, 0)
    _, ld = energy_of(greedy)
    nodes = jnp.arange(n)
    nxt = jnp.where(ld < cap_eff, dE[nodes, jnp.minimum(ld, width - 1)], jnp.inf)
    last = jnp.where(ld >= 1, dE[nodes, jnp.clip(ld - 1, 0, width - 1)], jnp.inf)
    lam0 = jnp.where(jnp.isfinite(nxt) & jnp.isfinite(last), 0.5 * (nxt + last), jnp.minimum(nxt, last))
    lam0 = jnp.where(jnp.isfinite(lam0), lam0, jnp.where(jnp.isfinite(dE[:, 0]), dE[:, 0], 0.0))
    # Bound: the user's one-off cost is not convex, so bound the problems "user off" and "user on"
    # (prepaid costs + L) separately; the optimum is the smaller of the two.
    cand_off = jnp.where((cand >= 0) & (ind[jnp.maximum(cand, 0), 0] == 0), cand, -1)
    bounds, lams = [], []
    for costs_v, cand_v in ((off, cand_off), (prepaid, cand)):
        b, lam = lagrangian_bound(costs_v, cap_eff, cand_v, members, lam0, n_dual)
        bounds.append(b)
        lams.append(lam)
    if truncated:  # the lists leave sets out: evaluate the multipliers with the minima over all sets
        tok = _full_token_min(sc, cap_eff, g, topk, table, ind, jnp.stack(lams), n_useful)
        bounds = [jnp.maximum(dual_value(c, cap_eff, tok[:, i], lams[i]), 0.0) for i, c in enumerate((off, prepaid))]
    lb = jnp.minimum(bounds[0], bounds[1] + prepaid_l)

    # Starts, each searched under its own cost model; the best true energy wins.
    def lagr_start(cand_v, lam):
        price = jnp.where(cand_v >= 0, (ind.astype(dE.dtype) @ lam)[jnp.maximum(cand_v, 0)], jnp.inf)
        pick = jnp.take_along_axis(cand_v, jnp.argmin(price, 1)[:, None], 1)[:, 0]
        return jnp.where(jnp.isfinite(price.min(1)), pick, -1).astype(jnp.int32)

    costs = {"prepaid": prepaid, "off": off, "true": dE}
    starts = {
        ("greedy", "prepaid"): greedy,
        ("empty", "off"): empty,
        ("lagrangian", "off"): lagr_start(cand_off, lams[0]),
        ("lagrangian", "prepaid"): lagr_start(cand, lams[1]),
        ("topk", "true"): combo_index(topk, n, k).astype(jnp.int32),
    }
    n_starts = len(SEARCH_STARTS)
    start_cost = jnp.stack([costs[model] for _, model in SEARCH_STARTS])
    start_combo = jnp.stack([starts[start] for start in SEARCH_STARTS])
    combos = jax.vmap(lambda c, x: _reinsert(c, x, cand, members, ind, cap_eff, order, n_passes))(
        start_cost, start_combo
    )
    energies, _ = jax.vmap(energy_of)(combos)
    if n_pair_starts is None:
        n_pair_starts = n_starts if m <= 16 else 1
    if n_pair_passes > 0 and n_pair_starts > 0:
        # the best start of each cost model (COST_MODELS), then the next best ones
        group = jnp.array([COST_MODELS.index(model) for _, model in SEARCH_STARTS])
        first = jnp.stack([jnp.argmin(jnp.where(group == i, energies, jnp.inf)) for i in range(len(COST_MODELS))])
        pos = jnp.argsort(jnp.argsort(energies))  # rank by energy
        key = jnp.where(jnp.any(jnp.arange(n_starts)[:, None] == first[None, :], 1), pos, pos + n_starts)
        top = jnp.argsort(key)[:n_pair_starts]
        more = jax.vmap(
            lambda c, x: _pair_search(c, x, cand, members, ind, cap_eff, order, n_cand, n_partners, n_pair_passes)
        )(start_cost[top], combos[top])
        combos = jnp.concatenate([combos, more])
        energies = jnp.concatenate([energies, jax.vmap(energy_of)(more)[0]])
    combo = combos[jnp.argmin(energies)]
    feasible = jnp.isfinite(jnp.min(energies))
    dec = decision_from_combos(sc, dE, g, topk, table, jnp.where(feasible, combo, -1), feasible)
    lb = jnp.where(dec.feasible, jnp.minimum(lb, dec.energy_j), lb)
    gap = jnp.where(dec.feasible & (dec.energy_j > 0), (dec.energy_j - lb) / dec.energy_j, 0.0)
    return dec, PrefillInfo(lower_bound=lb, rel_gap=gap, method="fast")
