"""Node-set machinery shared by the prefill solvers (`prefill`, `prefill_dp`, `prefill_exact`, `prefill_fast`).

Slot mapping of a node set J (used by every solver here and in the Decision):
    slot i uses its best node in J (ties: its own expert, then the lowest node index) when that node's
    mismatch is <= the skip mismatch Fbar[i, N], and is skipped otherwise. If that leaves every slot
    skipped (a token must run at least one expert, (16d)), the one slot with the least extra mismatch
    g_i (Fbar[i, best] - Fbar[i, N]) is served anyway. For K = 1 this is the paper's rule: the feasible
    set is {v : g Fbar[topk, v] <= eta}, no full skip.
Candidate sets. The deviation of a set is non-increasing when nodes are added, and adding a node never
lowers the energy (dE >= 0), so only *minimal* feasible sets (no proper subset feasible) are needed:
restricting to them loses no optimality, and in a minimal set every node serves at least one slot, so
`assign` and `loads` always agree.

Shapes: dE float[N, D] marginal energies (J), inf beyond capacity; cap int32[N]; g float[M, K];
topk int32[M, K]; table float[N, N+1] (column N = skip).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sift_jax.errors import ConfigError
from sift_jax.policies.decision import Decision, make_decision
from sift_jax.scenario import Scenario

__all__: list[str] = []  # a private module: the package's internals, imported by name where used


@struct.dataclass
class PrefillInfo:
    """What a prefill solver knows about its own answer.

    Attributes:
        method: "exact", "dp" or "fast" (static): the solver that produced the Decision.
        lower_bound: float[] (J) a valid lower bound on the optimal layer energy; equals the energy for
            the exact methods; `inf` when the instance is proven infeasible. For "fast" it is the
            Lagrangian dual bound (rounded down by a floating-point safety margin).
        rel_gap: float[] (energy - lower_bound) / energy, 0 for the exact methods and where infeasible.

    Example:
        `method` is static (not a pytree leaf), so a jitted solver can return it:

        >>> import jax.numpy as jnp
        >>> info = PrefillInfo(lower_bound=jnp.float32(9.5), rel_gap=jnp.float32(0.05), method="fast")
        >>> len(jax.tree.leaves(info)), info.method
        (2, 'fast')
    """

    lower_bound: jax.Array
    rel_gap: jax.Array
    method: str = struct.field(pytree_node=False, default="exact")


class Combos(NamedTuple):
    """Static table of node sets J, 1 <= |J| <= K, in size-major colex order (numpy arrays).

    members int32[C, K] (padded with N), size int32[C], sub int32[C, K] index of J minus its k-th
    member (-1 if none), start int[K + 2] first index of each size, binom int[N + 1, K + 1].
    """

    members: np.ndarray
    size: np.ndarray
    sub: np.ndarray
    start: np.ndarray
    binom: np.ndarray


@functools.cache
def combo_table(n_nodes: int, top_k: int) -> Combos:
    """All node sets of size 1..K (static). Singletons come first: combo v is {v}.

    >>> c = combo_table(3, 2)
    >>> c.members.tolist()
    [[0, 3], [1, 3], [2, 3], [0, 1], [0, 2], [1, 2]]
    """
    n, k = n_nodes, min(top_k, n_nodes)
    combos, start = [], [0]
    for size in range(1, k + 1):
        combos += sorted(itertools.combinations(range(n), size), key=lambda c: c[::-1])
        start.append(len(combos))
    index = {c: i for i, c in enumerate(combos)}
    members = np.full((len(combos), top_k), n, np.int32)
    sub = np.full((len(combos), top_k), -1, np.int32)
    for i, c in enumerate(combos):
        members[i, : len(c)] = c
        if len(c) > 1:
            for j in range(len(c)):
                sub[i, j] = index[c[:j] + c[j + 1 :]]
    size = (members < n).sum(1).astype(np.int32)
    start += [len(combos)] * (top_k + 2 - len(start))
    binom = np.array([[math.comb(a, b) for b in range(top_k + 1)] for a in range(n + 1)], np.int64)
    return Combos(members, size, sub, np.array(start, np.int64), binom)


def combo_index(nodes: jax.Array, n_nodes: int, top_k: int) -> jax.Array:
    """Index in `combo_table` of the set of distinct nodes in `nodes` (int[..., K]; -1 or >= N ignored)."""
    tab = combo_table(n_nodes, top_k)
    valid = (nodes >= 0) & (nodes < n_nodes)
    s = jnp.sort(jnp.where(valid, nodes, n_nodes), axis=-1)
    first = jnp.concatenate([jnp.ones_like(s[..., :1], bool), s[..., 1:] != s[..., :-1]], -1) & (s < n_nodes)
    rank = jnp.cumsum(first, -1)  # 1-based position among distinct members
    binom = jnp.asarray(tab.binom)
    terms = jnp.where(first, binom[jnp.clip(s, 0, n_nodes), jnp.clip(rank, 0, top_k)], 0)
    size = rank[..., -1]
    return jnp.asarray(tab.start)[jnp.clip(size - 1, 0, top_k)] + terms.sum(-1)


def effective_caps(dE: jax.Array, cap: jax.Array) -> jax.Array:
    """min(cap, number of leading finite marginal costs): int32[N]."""
    finite = jnp.cumprod(jnp.isfinite(dE).astype(jnp.int32), axis=-1).sum(-1)
    return jnp.minimum(jnp.asarray(cap, jnp.int32), finite).astype(jnp.int32)


def layer_energy(dE: jax.Array, loads: jax.Array) -> jax.Array:
    """sum_v E_v(D_v) = sum_v sum_{d < D_v} dE[v, d] (J); inf if a load passes its finite prefix."""
    d = jnp.arange(dE.shape[-1])
    over = jnp.any(loads > dE.shape[-1])
    e = jnp.where(d < loads[..., :, None], dE, 0.0).sum((-2, -1))
    return jnp.where(over, jnp.inf, e)


def user_prepaid(dE: jax.Array) -> tuple[jax.Array, jax.Array]:
    """dE with the user's first marginal replaced by its second, and the one-off cost taken out.

    For the user (node 0) dE[0, 0] = c + P_load T_load and dE[0, d] = c for d >= 1, so E_0 is not
    convex. With D_0 >= 1, E_0(D_0) = L + sum_{d < D_0} dE'[0, d] with L = dE[0, 0] - dE[0, 1].
    Returns (dE', L); unchanged (L = 0) when the user cannot take a second token.
    """
    if dE.shape[-1] < 2:
        return dE, jnp.zeros((), dE.dtype)
    ok = jnp.isfinite(dE[0, 1])
    first = jnp.where(ok, dE[0, 1], dE[0, 0])
    return dE.at[0, 0].set(first), jnp.where(ok, dE[0, 0] - dE[0, 1], 0.0)


def slot_rows(g, topk, table):
    """Per-slot mismatch rows: node part float[M, K, N + 1] (inf pad column N) and skip float[M, K]."""
    n = table.shape[0]
    rows = table[topk]  # [M, K, N + 1]
    pad = jnp.full(rows.shape[:-1] + (1,), jnp.inf, rows.dtype)
    return jnp.concatenate([rows[..., :n], pad], -1), rows[..., n]


def token_deviation(g, best, skip):
    """Deviation and slot use given each slot's best node mismatch. best, skip: [..., K, X]/[..., K, 1].

    Returns (dev [..., X], use bool[..., K, X]) with the forced-slot rule of the module docstring.
    """
    use = best <= skip
    forced = ~jnp.any(use, axis=-2, keepdims=True)
    extra = jnp.where(jnp.isfinite(best), g[..., None] * (best - skip), jnp.inf)
    first = jnp.argmin(extra, axis=-2, keepdims=True)
    k = jnp.arange(best.shape[-2]).reshape((-1, 1))
    use = use | (forced & (k == first))
    dev = jnp.sum(g[..., None] * jnp.where(use, best, skip), axis=-2)
    return dev, use


def candidate_mask(
    sc: Scenario,
    cap_eff: jax.Array,
    g: jax.Array,
    topk: jax.Array,
    table: jax.Array,
    user_off: bool | jax.Array = False,
    minimal: bool = True,
) -> jax.Array:
    """bool[M, C]: combo c is a minimal feasible node set for token m (all nodes available, dev <= eta).

    minimal=False: every feasible set (supersets included; enough for minima of non-negative prices).
    Memory O(M K C); C = sum_{k <= K} binom(N, k).
    """
    n, k = table.shape[0], topk.shape[-1]
    tab = combo_table(n, k)
    fp, skip = slot_rows(g, topk, table)
    best = functools.reduce(jnp.minimum, [fp[..., tab.members[:, j]] for j in range(k)])  # [M, K, C]
    dev, _ = token_deviation(g, best, skip[..., None])
    avail = (cap_eff >= 1) & ~((jnp.arange(n) == 0) & user_off)
    avail_c = jnp.all(jnp.concatenate([avail, jnp.ones((1,), bool)])[tab.members], -1)
    feas = (dev <= sc.eta) & avail_c
    if not minimal:
        return feas
    sub = jnp.asarray(tab.sub)
    sub_feas = jnp.where(sub >= 0, feas[..., jnp.maximum(sub, 0)], False)  # [M, C, K]
    return feas & ~jnp.any(sub_feas, -1)


def slot_map(g, topk, table, members):
    """Slot mapping of chosen node sets. members: int[M, K] padded with N (all pad = no set).

    Returns (assign int32[M, K] node or -1, deviation float[M]).
    """
    n = table.shape[0]
    fp, skip = slot_rows(g, topk, table)
    vals = jnp.take_along_axis(fp, jnp.broadcast_to(members[:, None, :], fp.shape[:2] + members.shape[-1:]), -1)
    best = vals.min(-1)  # [M, K]
    is_best = (vals == best[..., None]) & (members[:, None, :] < n)
    own = is_best & (members[:, None, :] == topk[..., None])
    pick = jnp.where(own.any(-1), jnp.argmax(own, -1), jnp.argmax(is_best, -1))
    node = jnp.take_along_axis(members, pick, -1)
    dev, use = token_deviation(g, best[..., None], skip[..., None])
    assign = jnp.where(use[..., 0] & (node < n), node, -1).astype(jnp.int32)
    return assign, dev[..., 0]


def decision_from_combos(sc, dE, g, topk, table, combo, feasible) -> Decision:
    """Decision from one combo index per token (int[M], -1 = none); zeroed when infeasible."""
    n, k = table.shape[0], topk.shape[-1]
    tab = combo_table(n, k)
    members = jnp.where(combo[:, None] >= 0, jnp.asarray(tab.members)[jnp.maximum(combo, 0)], n)
    loads = jax.nn.one_hot(members, n + 1, dtype=jnp.int32)[..., :n].sum((0, 1))
    assign, dev = slot_map(g, topk, table, members)
    energy = layer_energy(dE, loads)
    ok = feasible & jnp.all(combo >= 0) & jnp.isfinite(energy) & jnp.all(dev <= sc.eta)
    return make_decision(assign, loads, energy, dev, ok, topk, reports_infeasible=False)


def check_prefill_inputs(sc, dE, cap, g, topk, table):
    n = sc.n_nodes
    if dE.ndim != 2 or dE.shape[0] != n:
        raise ConfigError("dE", f"shape {dE.shape}", f"float[N={n}, D]")
    if tuple(cap.shape) != (n,):
        raise ConfigError("cap", f"shape {cap.shape}", f"int[N={n}]")
    if g.ndim != 2 or topk.shape != g.shape:
        raise ConfigError("g/topk", f"shapes {g.shape}, {topk.shape}", "float[M, K] and int[M, K]")
    if g.shape[1] != sc.top_k:
        raise ConfigError("top_k", g.shape[1], f"K = sc.top_k = {sc.top_k} columns in g and topk")
    if tuple(table.shape) != (n, n + 1):
        raise ConfigError("table", f"shape {table.shape}", f"float[N={n}, N+1={n + 1}]")
