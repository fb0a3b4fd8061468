"""Exact prefill for any K: Algorithm 2, dynamic programming over the node-load vector.

DP_m(D) = least energy of the first m tokens that leaves load vector D; token m moves D to D + 1_J for a
candidate set J at cost sum_{v in J} dE_v(D_v + 1). Exact for any marginal costs (the user's one-off
load energy included), since the state is the whole load vector.

Fixed shapes: each node's load is bounded by b = min(M, D) (a token adds at most one to a node; D is the
width of dE), so the state tensor has S = (b + 1)^N entries, flattened with strides (b + 1)^v. For each
token a `lax.scan` step pulls, for every state t and every combo J, DP(t - 1_J) + cost(t, J) and keeps
the least; J's offset in the flat index is a constant, and the per-state costs cost(t, J) do not
depend on the token, so they are built once. Work and memory per token are O(S C) with
C = sum_{k <= K} binom(N, k); the argmin table is int32[M, S].

State-count limit: inputs with S * C > DP_MAX_WORK (2^22 by default, ~16 MB per float32 [C, S] array)
are refused with ConfigError; pass `max_work=` to raise it. Examples that fit: N = 4, M = 8 (S = 6,561);
N = 6, K = 2, M = 6 (S = 117,649, C = 21). Larger problems: method "fast".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.policies._sets import PrefillInfo, candidate_mask, combo_table, decision_from_combos, effective_caps

__all__ = ["solve_dp"]

DP_MAX_WORK = 2**22


def dp_size(n_tokens: int, n_nodes: int, top_k: int, max_load: int) -> tuple[int, int]:
    """(states S, combos C) of the DP for these static sizes.

    >>> dp_size(4, 4, 2, 4)
    (625, 10)
    """
    b = min(n_tokens, max_load)
    return (b + 1) ** n_nodes, len(combo_table(n_nodes, top_k).members)


def solve_dp(sc, dE, cap, g, topk, table, max_work: int | None = None):
    """Exact prefill for any K by Algorithm 2 (see the module docstring).

    Called by `prefill(..., method="dp")` after its input checks (arrays, shapes as there).

    Args:
        sc: scenario; uses eta (may be traced).
        dE: float[N, D] marginal energies (J), inf beyond capacity.
        cap: int32[N] capacities D_v,max (tokens).
        g: float[M, K] gate weights.
        topk: int32[M, K] Top-K expert indices.
        table: float[N, N + 1] mean mismatch Fbar, column N = skip.
        max_work: limit on states x combos (static; default DP_MAX_WORK).

    Returns:
        (Decision, PrefillInfo): the optimal decision (assign int32[M, K], loads int32[N], energy_j in J,
        ...; zeroed when infeasible) and info with method "dp", lower_bound = energy_j (inf where
        infeasible) and rel_gap 0.

    Raises:
        ConfigError: (min(M, D) + 1)^N x sum_k binom(N, k) > max_work.

    Example:
        With eta = 0 no expert may be replaced or skipped, so every token is served by its own Top-K
        nodes: loads (1, 2, 1) and energy 3 + (1 + 2) + 1.5 = 7.5 J. With node 2 unavailable
        (capacity 0) token 1 cannot be served:

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, top_k=2, n_tokens=2, eta=0.0)
        >>> dE = jnp.array([[3.0, 1.0], [1.0, 2.0], [1.5, 2.5]])
        >>> table = jnp.array([[0.0, 1.5, 1.5, 1.0], [1.5, 0.0, 1.5, 1.0], [1.5, 1.5, 0.0, 1.0]])
        >>> g, topk = jnp.full((2, 2), 0.5), jnp.array([[0, 1], [1, 2]])
        >>> solve = jax.jit(solve_dp)
        >>> d, info = solve(sc, dE, jnp.array([2, 2, 2]), g, topk, table)
        >>> d.assign.tolist(), d.loads.tolist(), float(d.energy_j), float(info.lower_bound), info.method
        ([[0, 1], [1, 2]], [1, 2, 1], 7.5, 7.5, 'dp')
        >>> d, info = solve(sc, dE, jnp.array([2, 2, 0]), g, topk, table)
        >>> bool(d.feasible), d.assign.tolist(), float(info.lower_bound)
        (False, [[-1, -1], [-1, -1]], inf)
    """
    m, k = g.shape
    n, width = dE.shape
    states, n_combos = dp_size(m, n, k, width)
    limit = DP_MAX_WORK if max_work is None else max_work
    if states * n_combos > limit:
        raise ConfigError(
            "method",
            "dp",
            f"a DP with states x combos <= {limit} (this instance: {states} x "
            f"{n_combos} = (min(M, D) + 1)^N x sum_k binom(N, k)); use method='fast' or max_work=",
        )
    tab = combo_table(n, k)
    b = min(m, width)
    strides = (b + 1) ** np.arange(n, dtype=np.int64)
    members = tab.members
    offset = np.array([strides[mem[mem < n]].sum() for mem in members], np.int64)

    cap_eff = effective_caps(dE, cap)
    t_idx = jnp.arange(states, dtype=jnp.int32)
    load = (t_idx[:, None] // jnp.asarray(strides, jnp.int32)) % (b + 1)  # [S, N] loads of state t
    ok_arrive = (load >= 1) & (load <= cap_eff)  # the token's unit arrives as the load-th one
    arrive = jnp.where(ok_arrive, dE[jnp.arange(n), jnp.clip(load - 1, 0, width - 1)], jnp.inf)  # [S, N]
    arrive = jnp.concatenate([arrive, jnp.zeros((states, 1), dE.dtype)], 1)
    cost = sum(arrive[:, members[:, j]] for j in range(k)).T  # [C, S]
    prev = t_idx[None, :] - jnp.asarray(offset, jnp.int32)[:, None]  # [C, S]; invalid ones have inf cost
    prev = jnp.maximum(prev, 0)

    mask = candidate_mask(sc, cap_eff, g, topk, table)  # [M, C]

    def step(val, mask_m):
        cand = jnp.where(mask_m[:, None], val[prev] + cost, jnp.inf)
        choice = jnp.argmin(cand, 0).astype(jnp.int32)
        return jnp.min(cand, 0), choice

    init = jnp.full((states,), jnp.inf, dE.dtype).at[0].set(0.0)
    final, choice = jax.lax.scan(step, init, mask)
    t_best = jnp.argmin(final).astype(jnp.int32)
    opt = final[t_best]
    feasible = jnp.isfinite(opt)
    offset_j = jnp.asarray(offset, jnp.int32)

    def back(t, choice_m):
        c = choice_m[t]
        return t - offset_j[c], c

    _, combo = jax.lax.scan(back, t_best, choice, reverse=True)
    dec = decision_from_combos(sc, dE, g, topk, table, jnp.where(feasible, combo, -1), feasible)
    lb = jnp.where(dec.feasible, dec.energy_j, jnp.inf)
    return dec, PrefillInfo(lower_bound=lb, rel_gap=jnp.zeros_like(lb), method="dp")
