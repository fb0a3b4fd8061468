"""Brute-force decoding oracle: every mapping of the K Top-K slots to a node or skip, (N+1)^K of them.

The reference of the tests of `policies.decode`. It shares no code with `decode` (its own input checks,
slot values, sums and lexicographic choice), so a bug in decode's helpers cannot hide in both. It scores
each complete slot mapping phi directly,

    energy = sum of f over the distinct nodes phi uses,  deviation = sum_i g_i Fbar[topk_i, phi(i)],

keeps the mappings that use at least one node, only nodes with finite f, meet deviation <= eta and,
with share_substitutes=False, never use a node twice, and returns the lexicographic minimum of
(energy, deviation, number of nodes used); the first mapping in lexicographic order of phi on exact ties.
Sums run in a fixed order so that ties are exact: the deviation over slots 0, 1, ..., K-1 from left to
right (each product rounded first), the energy over the used nodes in ascending order of cost (a function
of the node set alone, so two mappings with one node set tie exactly). These are the orders `decode`
documents, so an exact tie there is an exact tie here.
The optimal (energy, deviation, node count) equals that of Theorem 2 over node sets (a set's best
mapping is among the mappings; a mapping's node set has that key or a better one).

Size limit: (N+1)^K <= `MAX_MAPPINGS` (ConfigError beyond), e.g. N = 8 with K <= 5, N = 32 with K <= 3.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.policies.decision import Decision
from sift_jax.scenario import Scenario

__all__ = ["oracle"]

MAX_MAPPINGS = 100_000
_BIG = 2**30


@functools.cache
def _mappings(n: int, k: int, share: bool):
    """Static tables: maps int32[P, K] (value n = skip), used bool[P, N], ok bool[P]."""
    maps = np.asarray(list(itertools.product(range(n + 1), repeat=k)), np.int32).reshape(-1, k)
    used = np.zeros((maps.shape[0], n + 1), bool)
    np.put_along_axis(used, maps, True, axis=1)
    used = used[:, :n]
    ok = used.any(1)
    if not share:
        real = np.where(maps < n, maps, -1 - np.arange(k)[None, :])  # skips never collide
        ok &= np.array([len(set(r)) == k for r in real.tolist()])
    return maps, used, ok


def _check_inputs(sc: Scenario, f, g, topk, table):
    """Shape and dtype checks; the float arrays in one float dtype, topk as int32."""
    f, g, topk, table = jnp.asarray(f), jnp.asarray(g), jnp.asarray(topk), jnp.asarray(table)
    n, k = sc.n_nodes, sc.top_k
    for name, x, shape, what in (
        ("f", f, (n,), "node costs"),
        ("g", g, (k,), "gate weights"),
        ("topk", topk, (k,), "expert indices"),
        ("table", table, (n, n + 1), "mismatches"),
    ):
        if x.shape != shape:
            raise ConfigError(name, f"array of shape {x.shape}", f"an array of shape {shape} ({what})")
    if not jnp.issubdtype(topk.dtype, jnp.integer):
        raise ConfigError("topk", f"array of dtype {topk.dtype}", "integer expert indices")
    dtype = jnp.result_type(f.dtype, g.dtype, table.dtype, float)
    return f.astype(dtype), g.astype(dtype), topk.astype(jnp.int32), table.astype(dtype)


def _left_to_right(terms):
    """((t0 + t1) + t2) + ... over a Python list of arrays (XLA keeps this order)."""
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def oracle(sc: Scenario, f, g, topk, table, share_substitutes: bool = True) -> Decision:
    """Exact decoding decision by enumerating all (N+1)^K slot mappings (small N, K only).

    Args:
        sc: scenario; uses `eta` (may be traced), `n_nodes` N and `top_k` K (static).
        f: float[N] decoding node costs (J), inf = misses the deadline (as `policies.decode`).
        g: float[K] Top-K gate weights.
        topk: int[K] Top-K expert indices (expert v lives on node v).
        table: float[N, N+1] mean mismatch Fbar, column N = skip.
        share_substitutes: allow two slots on one node (static); False = injective mappings.

    Returns:
        Decision as `policies.decode`: assign int32[K] (-1 = skipped), loads int32[N], energy_j (J),
        deviation_bound, feasible, n_replaced, n_skipped; zeroed (assign -1) when infeasible.

    Raises:
        ConfigError: (N+1)^K > MAX_MAPPINGS, or share_substitutes is not a bool.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, top_k=2, eta=0.5)
        >>> table = jnp.array([[0.0, 0.2, 1.5, 1.0], [0.3, 0.0, 1.5, 1.0], [1.5, 1.5, 0.0, 1.0]])
        >>> d = jax.jit(oracle)(sc, jnp.array([3.0, 1.0, 2.0]), jnp.array([0.6, 0.4]), jnp.array([0, 2]), table)
        >>> d.assign.tolist(), float(d.energy_j), round(float(d.deviation_bound), 4), bool(d.feasible)
        ([1, 2], 3.0, 0.12, True)

        Node 0 alone also costs 3 J but deviates by 0.4, so the tie goes to {1, 2}; node 1 alone (1 J)
        deviates by 0.6 * 0.2 + 0.4 * 1.0 = 0.52 > eta. Sizes beyond the enumeration limit are refused:

        >>> oracle(Scenario(n_nodes=64, top_k=3), jnp.ones(64), jnp.ones(3) / 3, jnp.arange(3), jnp.ones((64, 65)))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: n_nodes/top_k = (64, 3) is invalid: ...
    """
    f, g, topk, table = _check_inputs(sc, f, g, topk, table)
    n, k = sc.n_nodes, sc.top_k
    if not isinstance(share_substitutes, (bool, np.bool_)):
        raise ConfigError("share_substitutes", share_substitutes, "True or False (static)")
    if (n + 1) ** k > MAX_MAPPINGS:
        raise ConfigError("n_nodes/top_k", (n, k), f"sizes with (N+1)^K <= {MAX_MAPPINGS:,} for the brute-force oracle")
    maps, used, ok = _mappings(n, k, bool(share_substitutes))
    # deviation of every mapping: sum_i g_i Fbar[topk_i, phi(i)] (column N = skip), slot 0 first. The
    # barrier rounds every product before the sum (no fused multiply-add), as in eager evaluation.
    weighted = jax.lax.optimization_barrier(g[:, None] * table[topk])  # [K, N+1]
    dev = _left_to_right([weighted[i][maps[:, i]] for i in range(k)])  # [P]
    # energy of every mapping: the costs of its distinct nodes (0 for unused ones), summed in ascending order
    used_j = jnp.asarray(used)  # [P, N]
    costs = jnp.sort(jnp.where(used_j, f[None, :], jnp.zeros((), f.dtype)), axis=1)
    energy = _left_to_right([costs[:, v] for v in range(n)])  # [P]
    count = used.sum(1).astype(np.int32)  # static int32[P]
    finite = jnp.all(~used_j | jnp.isfinite(f)[None, :], axis=1)
    valid = jnp.asarray(ok) & finite & (dev <= jnp.asarray(sc.eta, f.dtype))
    # lexicographic minimum of (energy, deviation, count, mapping index) over the valid mappings
    order = jnp.lexsort(
        (
            jnp.arange(maps.shape[0]),
            jnp.where(valid, count, _BIG),
            jnp.where(valid, dev, jnp.inf),
            jnp.where(valid, energy, jnp.inf),
        )
    )
    idx = order[0]
    feasible = valid[idx]
    row = jnp.asarray(maps)[idx]
    assign = jnp.where(feasible & (row < n), row, -1).astype(jnp.int32)
    loads = jnp.where(feasible, used_j[idx], False).astype(jnp.int32)
    return Decision(
        assign=assign,
        loads=loads,
        energy_j=jnp.where(feasible, energy[idx], 0.0),
        deviation_bound=jnp.where(feasible, dev[idx], 0.0),
        feasible=feasible,
        n_replaced=jnp.sum((assign >= 0) & (assign != topk)).astype(jnp.int32),
        n_skipped=jnp.where(feasible, jnp.sum(assign < 0), 0).astype(jnp.int32),
    )
