"""Brute-force decoding oracle: every mapping of the K Top-K slots to a node or skip, (N+1)^K of them.

The reference of the tests of `policies.decode`. It shares no search logic with `decode`: it scores
each complete slot mapping phi directly,

    energy = sum of f over the distinct nodes phi uses,  deviation = sum_i g_i Fbar[topk_i, phi(i)],

keeps the mappings that use at least one node, only nodes with finite f, meet deviation <= eta and,
with share_substitutes=False, never use a node twice, and returns the lexicographic minimum of
(energy, deviation, number of nodes used); the first mapping in lexicographic order of phi on exact ties.
The optimal (energy, deviation, node count) equals that of Theorem 2 over node sets (a set's best
mapping is among the mappings; a mapping's node set has that key or a better one).

Size limit: (N+1)^K <= `MAX_MAPPINGS` (ConfigError beyond), e.g. N = 8 with K <= 5, N = 32 with K <= 3.
"""

from __future__ import annotations

import functools
import itertools

import jax.numpy as jnp
import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.policies.decision import Decision
from sift_jax.policies.decode import canonical_sum, check_inputs, lex_argmin, seq_sum, slot_values
from sift_jax.scenario import Scenario

__all__ = ["oracle"]

MAX_MAPPINGS = 100_000
_BIG = 2**30


@functools.lru_cache(maxsize=None)
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
    f, g, topk, table = check_inputs(sc, f, g, topk, table)
    n, k = sc.n_nodes, sc.top_k
    if not isinstance(share_substitutes, (bool, np.bool_)):
        raise ConfigError("share_substitutes", share_substitutes, "True or False (static)")
    if (n + 1) ** k > MAX_MAPPINGS:
        raise ConfigError("n_nodes/top_k", (n, k), f"sizes with (N+1)^K <= {MAX_MAPPINGS:,} for the brute-force oracle")
    maps, used, ok = _mappings(n, k, bool(share_substitutes))
    e, s = slot_values(g, topk, table)
    ex = jnp.concatenate([e, s[:, None]], axis=1)  # [K, N+1]
    dev = seq_sum(jnp.stack([ex[i, maps[:, i]] for i in range(k)]))  # [P]
    used_j = jnp.asarray(used)
    first = jnp.asarray(np.stack([np.all(maps[:, :i] != maps[:, i:i + 1], axis=1) for i in range(k)], 1))
    fm = jnp.where(first & (maps < n), f[jnp.minimum(maps, n - 1)], 0.0)  # each used node once
    energy = canonical_sum([fm[:, i] for i in range(k)]) if k > 1 else fm[:, 0]
    count = jnp.sum(used_j, axis=1)
    finite = jnp.all(~used_j | jnp.isfinite(f)[None, :], axis=1)
    valid = jnp.asarray(ok) & finite & (dev <= jnp.asarray(sc.eta, f.dtype))
    idx, e_min, d_min, _ = lex_argmin(jnp.where(valid, energy, jnp.inf), jnp.where(valid, dev, jnp.inf),
                                      jnp.where(valid, count, _BIG))
    feasible = jnp.any(valid)
    row = jnp.asarray(maps)[idx]
    assign = jnp.where(feasible & (row < n), row, -1).astype(jnp.int32)
    loads = jnp.where(feasible, used_j[idx], False).astype(jnp.int32)
    return Decision(
        assign=assign,
        loads=loads,
        energy_j=jnp.where(feasible, e_min, 0.0),
        deviation_bound=jnp.where(feasible, d_min, 0.0),
        feasible=feasible,
        n_replaced=jnp.sum((assign >= 0) & (assign != topk)).astype(jnp.int32),
        n_skipped=jnp.where(feasible, jnp.sum(assign < 0), 0).astype(jnp.int32),
    )
