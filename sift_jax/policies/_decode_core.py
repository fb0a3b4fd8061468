"""Small helpers shared by the decoding rules (`decode`, `baselines`): fixed-order sums, per-slot values,
loads, the lexicographic (energy, deviation, node count) order, and input checks.

Keys are (energy, dev, count) with (inf, inf, `INVALID_COUNT`) for invalid entries.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp

from sift_jax.errors import ConfigError
from sift_jax.policies.decision import INVALID_COUNT
from sift_jax.scenario import Scenario

__all__: list[str] = []  # a private module: the package's internals, imported by name where used


def seq_sum(x: jax.Array) -> jax.Array:
    """Left-to-right sum over the leading (small, static) axis: ((x0 + x1) + x2) + ...

    Every policy sums per-slot deviations in this fixed order, so equal mappings give bit-equal
    deviations whatever the code path (XLA does not reassociate float additions).
    """
    return functools.reduce(operator.add, [x[i] for i in range(x.shape[0])])


_NETWORKS = {
    2: ((0, 1),),
    3: ((0, 1), (1, 2), (0, 1)),
    4: ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)),
    5: ((0, 1), (3, 4), (2, 4), (2, 3), (1, 4), (0, 3), (0, 2), (1, 3), (1, 2)),
}


def canonical_sum(xs) -> jax.Array:
    """Sum of a short list of arrays in ascending order of value (a sorting network, then left to right).

    The energy of a node set must not depend on the order in which its members are listed: two
    listings of one set must give bit-equal energies, or the deviation tie-break could be overridden
    by one ulp of rounding. Works elementwise on broadcastable arrays; inf sorts last.
    """
    return functools.reduce(operator.add, sorted_network(xs))


def slot_values(g: jax.Array, topk: jax.Array, table: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-slot weighted mismatches: e float[K, N], e[i, v] = g_i Fbar[topk_i, v]; s float[K] (skip)."""
    n = table.shape[0]
    rows = table[topk]  # [K, N + 1]
    return g[:, None] * rows[:, :n], g * rows[:, n]


def loads_of(assign: jax.Array, n: int) -> jax.Array:
    """int32[N]: 1 for every node used by some slot (a token is sent once to each node)."""
    return jnp.any(assign[:, None] == jnp.arange(n)[None, :], axis=0).astype(jnp.int32)


def lex_argmin(energy, dev, count):
    """Index and value of the lexicographic minimum of (energy, dev, count) over flat arrays.

    Invalid entries must carry (inf, inf, INVALID_COUNT). `count` may be a Python int (the same for every
    entry: one pass fewer). Returns (index, energy, dev, count); the first index among exact ties.
    """
    e_min = jnp.min(energy)
    key = jnp.where(energy == e_min, dev, jnp.inf)
    if isinstance(count, int):  # two passes: argmin keeps the first index among ties
        c_min = jnp.where(jnp.isfinite(e_min), count, INVALID_COUNT).astype(jnp.int32)
        return jnp.argmin(key), e_min, jnp.min(key), c_min
    d_min = jnp.min(key)
    m = key == d_min
    c_min = jnp.min(jnp.where(m, count, INVALID_COUNT))
    return jnp.argmax(m & (count == c_min)), e_min, d_min, c_min


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


def sorted_network(xs):
    """Sort a short Python list of equally shaped arrays elementwise (ascending)."""
    xs = list(jnp.broadcast_arrays(*xs))
    m = len(xs)
    pairs = _NETWORKS.get(m) or tuple((i, i + 1) for r in range(m) for i in range(r % 2, m - 1, 2))
    for p, q in pairs:
        xs[p], xs[q] = jnp.minimum(xs[p], xs[q]), jnp.maximum(xs[p], xs[q])
    return xs
