"""Scalable prefill for any K: greedy construction + local search, with a Lagrangian lower bound.

Primal. Tokens are inserted one at a time (fewest candidate sets first), each taking the candidate set
of least current marginal energy sum_{v in J} dE_v(D_v + 1) (inf at capacity). Local search then
re-inserts every token in turn with the others fixed (remove it, pick its best set again) until no
token moves or `n_passes` passes are done; each move never raises the energy. Four starts run
side by side and the cheapest result is kept: construction under the true costs, under the user's
prepaid costs (one-off load energy shared, see prefill.user_prepaid), with the user switched off, and
from the practical Top-K assignment (re-insertion also repairs its overloads). Whenever Top-K is
feasible the result therefore costs no more than Top-K.

Lower bound. Relaxing the coupling "node v serves D_v >= #{m : v in J_m}" with multipliers lam >= 0:
    L(lam) = sum_m min_{J in cand_m} sum_{v in J} lam_v + sum_v min_{0 <= d <= cap_v} (E_v(d) - lam_v d)
is <= the optimum for every lam >= 0 (weak duality; the node term is minimised by enumeration, so the
user's non-convex E_0 is handled exactly). lam starts at the primal's marginal prices and follows
projected subgradient steps (Polyak step towards the primal energy, step scale halved after 5
non-improving iterations) for `n_dual` iterations; the best value, lowered by a floating-point safety
margin (M + N + 2) eps sum |terms|, is returned as `PrefillInfo.lower_bound`.

Cost per instance: O((n_passes + 1) M C K) for the search and O(n_dual M C) for the bound, with
C = sum_{k <= K} binom(N, k) candidate sets (36 for N = 8, K = 2; 41,449 for N = 32, K = 4) and memory
O(M C) for the candidate mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax.policies.prefill import (PrefillInfo, candidate_mask, combo_index, combo_table,
                                       decision_from_combos, effective_caps, layer_energy, user_prepaid)


def _reinsert(cost, combo, mask, ind, members, cap_eff, order, n_passes):
    """Construction (tokens without a set are inserted) and re-insertion passes under `cost`."""
    n, width = cost.shape

    def one_pass(combo):
        def body(i, s):
            combo, loads, moved = s
            m = order[i]
            cur = combo[m]
            curc = jnp.maximum(cur, 0)
            loads = loads - jnp.where(cur >= 0, ind[curc], 0)
            p = cost[jnp.arange(n), jnp.minimum(loads, width - 1)]
            p = jnp.concatenate([jnp.where(loads < cap_eff, p, jnp.inf), jnp.zeros((1,), p.dtype)])
            cc = jnp.where(mask[m], sum(p[members[:, j]] for j in range(members.shape[1])), jnp.inf)
            c = jnp.argmin(cc).astype(jnp.int32)
            ok = jnp.isfinite(cc[c])
            keep = (cur >= 0) & mask[m, curc] & (cc[curc] <= cc[c])
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


def _pair_search(dE, combo, mask, ind, cap_eff, order, n_cand: int, n_partners: int, n_passes: int):
    """Pair moves. For token a (in `order`) and its `n_partners` likeliest partners b (tokens whose
    current set shares the most nodes with a's candidates, full nodes counted thrice), remove both and
    re-insert them jointly at least cost over each one's `n_cand` cheapest candidate sets plus its
    current one; apply the best pair. Partners that share no node with a's candidates cannot gain
    over single moves. Unassigned tokens are re-placed first (an ejection chain of depth one)."""
    m = combo.shape[0]
    n, width = dE.shape
    r = min(n_cand, ind.shape[0])
    n_p = min(n_partners, m - 1)
    nodes = jnp.arange(n)

    def price(loads):
        p = dE[nodes, jnp.clip(loads, 0, width - 1)]
        return jnp.where((loads >= 0) & (loads < cap_eff), p, jnp.inf)

    def ind_of(c):
        return jnp.where((c >= 0)[..., None], ind[jnp.maximum(c, 0)], 0)

    def valid(c, rows):
        return (c >= 0) & jnp.take_along_axis(rows, jnp.maximum(c, 0), -1)

    def one_pass(combo):
        loads = ind_of(combo).sum(0)
        q = dE[nodes, jnp.clip(jnp.minimum(loads, cap_eff - 1), 0, width - 1)]  # price, capacity ignored
        q = jnp.where(cap_eff >= 1, q, jnp.inf)
        score = jnp.where(mask, jnp.where(ind > 0, q[None, :], 0.0).sum(-1), jnp.inf)
        neg, cand = jax.lax.top_k(-score, r)
        cand = jnp.where(jnp.isfinite(neg), cand, -1).astype(jnp.int32)  # [M, r]

        def body(i, s):
            combo, loads, improved = s
            a = order[i]
            ja = combo[a]
            ca = jnp.concatenate([cand[a], ja[None]])  # [r + 1]
            ia = ind_of(ca) > 0  # [r + 1, N]
            wanted = jnp.any(ia & valid(ca, mask[a])[:, None], 0)
            weight = wanted * (1 + 2 * (loads >= cap_eff))
            overlap = jnp.where(combo >= 0, (ind @ weight)[jnp.maximum(combo, 0)], 0)  # [M]
            overlap = jnp.where((jnp.arange(m) == a) | (overlap == 0), -1, overlap)
            ov, partner = jax.lax.top_k(overlap, n_p)  # [P]
            jb = combo[partner]
            base = loads - ind_of(ja)
            lb = base[None, :] - ind_of(jb)  # loads without a and b
            p0, p1 = price(lb), price(lb + 1)
            delta = jnp.where(jnp.isfinite(p1), p1 - p0, jnp.inf)
            cb = jnp.concatenate([cand[partner], jb[:, None]], 1)  # [P, r + 1]
            ib = ind_of(cb) > 0  # [P, r + 1, N]
            va, vb = valid(ca, mask[a]), valid(cb, mask[partner])
            cost_a = jnp.where(ia[None], p0[:, None, :], 0.0).sum(-1)  # [P, r + 1]
            cost_b = jnp.where(ib, p0[:, None, :], 0.0).sum(-1)
            inter = jnp.where(ia[None, :, None, :] & ib[:, None, :, :], delta[:, None, None, :], 0.0).sum(-1)
            total = cost_a[:, :, None] + cost_b[:, None, :] + inter
            total = jnp.where(va[None, :, None] & vb[:, None, :], total, jnp.inf)  # [P, r + 1, r + 1]
            flat = total.reshape(n_p, -1)
            k_best = jnp.argmin(flat, 1)
            best = jnp.take_along_axis(flat, k_best[:, None], 1)[:, 0]
            current = jnp.where((ja >= 0) & (jb >= 0), total[:, r, r], jnp.inf)
            gain = jnp.where(jnp.isinf(current), jnp.where(jnp.isfinite(best), jnp.inf, -jnp.inf),
                             current - best - 1e-9 * jnp.abs(current))
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


def lagrangian_bound(dE, cap_eff, mask, ind, lam0, n_dual: int = 120, lr: float = 0.1):
    """Lagrangian lower bound L(lam) maximised over lam >= 0 (module docstring).

    L is concave but not smooth, and plain subgradient or coordinate ascent stall on its kinks, so
    lam = exp(mu) follows Adam ascent steps on a smoothed L_tau (each min over a token's sets and over a
    node's loads replaced by a soft-min at temperature tau, annealed from 0.3 to 0.001 of the price
    scale). The exact L is evaluated at every 4th iterate and the last; the best value, lowered by a floating-point
    safety margin (M + N + 2) eps sum |terms|, is returned.

    Args:
        dE: float[N, D] marginal costs (the cost model to bound). cap_eff: int32[N].
        mask: bool[M, C] candidate sets. ind: int[C, N] membership. lam0: float[N] starting prices.
        n_dual: iterations. lr: Adam step on log(lam).

    Returns:
        (float[] lower bound, inf if some token has no candidate set; float[N] its multipliers).
    """
    n, width = dE.shape
    m = mask.shape[0]
    d = jnp.arange(width + 1)
    e_cum = jnp.concatenate([jnp.zeros((n, 1), dE.dtype), jnp.cumsum(dE, 1)], 1)
    e_cum = jnp.where(d[None, :] <= cap_eff[:, None], e_cum, jnp.inf)
    indf = ind.astype(dE.dtype)
    dead = ~jnp.all(jnp.any(mask, 1))
    eps = jnp.finfo(dE.dtype).eps
    dtype = dE.dtype
    df = d.astype(dtype)

    def exact(lam):
        tok = jnp.min(jnp.where(mask, (indf @ lam)[None, :], jnp.inf), 1)
        node = jnp.min(e_cum - lam[:, None] * df[None, :], 1)
        margin = (m + n + 2) * eps * (jnp.abs(tok).sum() + jnp.abs(node).sum())
        return tok.sum() + node.sum() - margin

    finite0 = jnp.isfinite(lam0) & (lam0 > 0)
    scale = jnp.where(jnp.any(finite0), jnp.exp(jnp.sum(jnp.where(finite0, jnp.log(jnp.where(finite0, lam0, 1.0)), 0.0))
                                                  / jnp.maximum(jnp.sum(finite0), 1)), 1.0)
    mu0 = jnp.log(jnp.where(finite0, lam0, scale))

    def grad(mu, tau):
        lam = jnp.exp(mu)
        cc = jnp.where(mask, (indf @ lam)[None, :], jnp.inf)
        p = jax.nn.softmax(-(cc - jnp.min(cc, 1, keepdims=True)) / tau, axis=1)
        p = jnp.where(mask, p, 0.0)
        count = (p @ indf).sum(0)
        node = e_cum - lam[:, None] * df[None, :]
        q = jax.nn.softmax(-(node - jnp.min(node, 1, keepdims=True)) / tau, axis=1)
        q = jnp.where(jnp.isfinite(node), q, 0.0)
        load = q @ df
        return (count - load) * lam

    def body(i, s):
        mu, mom, vel, best, best_mu = s
        frac = i / jnp.maximum(n_dual - 1, 1)
        tau = scale * 0.3 * (1e-3 / 0.3) ** frac
        gr = grad(mu, tau)
        mom = 0.9 * mom + 0.1 * gr
        vel = 0.999 * vel + 0.001 * gr**2
        step = lr * (mom / (1 - 0.9 ** (i + 1))) / (jnp.sqrt(vel / (1 - 0.999 ** (i + 1))) + 1e-12)
        mu = mu + jnp.where(jnp.isfinite(step), step, 0.0)
        val = jax.lax.cond((i % 4 == 3) | (i == n_dual - 1), exact, lambda _: -jnp.inf, jnp.exp(mu))
        better = val > best
        return mu, mom, vel, jnp.where(better, val, best), jnp.where(better, mu, best_mu)

    zeros = jnp.zeros((n,), dtype)
    init = (mu0, zeros, zeros, exact(jnp.exp(mu0)), mu0)
    _, _, _, best, best_mu = jax.lax.fori_loop(0, n_dual, body, init)
    return jnp.where(dead, jnp.inf, jnp.maximum(best, 0.0)), jnp.exp(best_mu)


def solve_fast(sc, dE, cap, g, topk, table, n_passes: int = 4, n_pair_passes: int = 3, n_cand: int = 6,
               n_partners: int = 12, n_pair_starts: int | None = None, n_dual: int = 120):
    """Heuristic prefill for any K with a lower bound (module docstring). Returns (Decision, PrefillInfo).

    Args:
        n_passes: most re-insertion passes after construction (stops early when no token moves).
        n_pair_passes: most pair-move passes (0: none; stops early when no pair improves).
        n_cand: candidate sets per token considered in a pair move (its cheapest ones + its current).
        n_partners: partner tokens tried per token in a pair pass.
        n_pair_starts: how many starts get the pair passes (the best of each cost model first);
            default all 5 for M <= 16 (small instances, where single moves stall most), else 1.
        n_dual: iterations of the Lagrangian bound (`lagrangian_bound`).
    """
    m, k = g.shape
    n, width = dE.shape
    tab = combo_table(n, k)
    members = jnp.asarray(tab.members)
    ind = jax.nn.one_hot(members, n + 1, dtype=jnp.int32)[..., :n].sum(1)  # [C, N]
    cap_eff = effective_caps(dE, cap)
    mask = candidate_mask(sc, cap_eff, g, topk, table)
    order = jnp.argsort(mask.sum(1), stable=True).astype(jnp.int32)
    prepaid, prepaid_l = user_prepaid(dE)
    off = dE.at[0].set(jnp.inf)
    empty = jnp.full((m,), -1, jnp.int32)

    def energy_of(combo):
        loads = jnp.where(combo[:, None] >= 0, ind[jnp.maximum(combo, 0)], 0).sum(0)
        e = layer_energy(dE, loads)
        return jnp.where(jnp.all(combo >= 0), e, jnp.inf), loads

    # A quick greedy for the dual's starting prices.
    greedy = _reinsert(prepaid, empty, mask, ind, members, cap_eff, order, 0)
    _, ld = energy_of(greedy)
    nodes = jnp.arange(n)
    nxt = jnp.where(ld < cap_eff, dE[nodes, jnp.minimum(ld, width - 1)], jnp.inf)
    last = jnp.where(ld >= 1, dE[nodes, jnp.clip(ld - 1, 0, width - 1)], jnp.inf)
    lam0 = jnp.where(jnp.isfinite(nxt) & jnp.isfinite(last), 0.5 * (nxt + last), jnp.minimum(nxt, last))
    lam0 = jnp.where(jnp.isfinite(lam0), lam0, jnp.where(jnp.isfinite(dE[:, 0]), dE[:, 0], 0.0))
    # Bound: the user's one-off cost is not convex, so bound the problems "user off" and "user on"
    # (prepaid costs + L) separately; the optimum is the smaller of the two.
    has_user = ind[:, 0] > 0
    masks = jnp.stack([mask & ~has_user[None, :], mask])
    bounds, lams = jax.vmap(lambda c, mk: lagrangian_bound(c, cap_eff, mk, ind, lam0, n_dual))(
        jnp.stack([off, prepaid]), masks)
    lb = jnp.minimum(bounds[0], bounds[1] + prepaid_l)

    # Starts, each searched under its own cost model; the best true energy wins.
    price = jnp.where(masks, jnp.einsum("cn,sn->sc", ind.astype(dE.dtype), lams)[:, None, :], jnp.inf)
    lagr = jnp.where(masks.any(2), jnp.argmin(price, 2), -1).astype(jnp.int32)  # [2, M]
    start_cost = jnp.stack([prepaid, off, off, prepaid, dE])
    start_combo = jnp.stack([greedy, empty, lagr[0], lagr[1], combo_index(topk, n, k).astype(jnp.int32)])

    combos = jax.vmap(lambda c, x: _reinsert(c, x, mask, ind, members, cap_eff, order, n_passes))(
        start_cost, start_combo)
    energies, _ = jax.vmap(energy_of)(combos)
    if n_pair_starts is None:
        n_pair_starts = 5 if m <= 16 else 1
    if n_pair_passes > 0 and n_pair_starts > 0:
        # the best start of each cost model (user prepaid, user off, true), then the next best ones
        group = jnp.array([0, 1, 1, 0, 2])
        first = jnp.stack([jnp.argmin(jnp.where(group == i, energies, jnp.inf)) for i in range(3)])
        pos = jnp.argsort(jnp.argsort(energies))  # rank by energy
        key = jnp.where(jnp.any(jnp.arange(5)[:, None] == first[None, :], 1), pos, pos + 5)
        top = jnp.argsort(key)[:n_pair_starts]
        more = jax.vmap(lambda c, x: _pair_search(c, x, mask, ind, cap_eff, order, n_cand, n_partners,
                                                  n_pair_passes))(start_cost[top], combos[top])
        combos = jnp.concatenate([combos, more])
        energies = jnp.concatenate([energies, jax.vmap(energy_of)(more)[0]])
    combo = combos[jnp.argmin(energies)]
    feasible = jnp.isfinite(jnp.min(energies))
    dec = decision_from_combos(sc, dE, g, topk, table, jnp.where(feasible, combo, -1), feasible)
    lb = jnp.where(dec.feasible, jnp.minimum(lb, dec.energy_j), lb)
    gap = jnp.where(dec.feasible & (dec.energy_j > 0), (dec.energy_j - lb) / dec.energy_j, 0.0)
    return dec, PrefillInfo(lower_bound=lb, rel_gap=gap, method="fast")
