"""The result type every policy returns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

__all__ = ["INVALID_COUNT", "Decision", "make_decision"]

INVALID_COUNT = 2**30  # node count carried by an invalid candidate in (energy, deviation, count) keys


@struct.dataclass
class Decision:
    """An expert selection for one layer.

    For decoding (one token) the token axis M is absent: `assign` is int32[K] and `deviation_bound`
    a scalar; for prefilling `assign` is int32[M, K] and `deviation_bound` float[M].

    Attributes:
        assign: node serving each Top-K slot (slot i holds the i-th Top-K expert); -1 = skipped.
        loads: int32[N] tokens served per node (node 0 = user).
        energy_j: float[] user-side energy of the layer (J), eqs. (3) + (10); 0 where infeasible.
        deviation_bound: Prop. 1 bound sum_i g_i Fbar[i, phi(i)] per token.
        feasible: bool[] whether the selection meets every constraint (deadline, eta, 1 <= |J| <= K).
        n_replaced: int32[] Top-K slots served by another expert.
        n_skipped: int32[] Top-K slots skipped (or lost).

    Example:
        A Decision is a pytree (jit and vmap pass it through); `replace` returns a modified copy:

        >>> import jax.numpy as jnp
        >>> d = Decision(assign=jnp.array([2, -1]), loads=jnp.array([0, 0, 1]), energy_j=jnp.float32(0.5),
        ...              deviation_bound=jnp.float32(0.3), feasible=jnp.bool_(True),
        ...              n_replaced=jnp.int32(1), n_skipped=jnp.int32(1))
        >>> len(jax.tree.leaves(d))
        7
        >>> d.replace(feasible=jnp.bool_(False)).feasible.item(), d.feasible.item()
        (False, True)
    """

    assign: jax.Array
    loads: jax.Array
    energy_j: jax.Array
    deviation_bound: jax.Array
    feasible: jax.Array
    n_replaced: jax.Array
    n_skipped: jax.Array


def make_decision(assign, loads, energy_j, deviation_bound, feasible, topk, *, reports_infeasible: bool) -> Decision:
    """The one Decision constructor: applies the counting and infeasibility rules every policy shares.

    n_replaced counts the slots served by a node other than their own expert's, n_skipped the slots
    with assign -1. An optimiser (`reports_infeasible=False`) has no selection where none is feasible:
    there every slot becomes -1 and loads, energy, deviation and both counts are 0 ("flagged, never
    assigned"). A baseline (`reports_infeasible=True`) executes its selection anyway: everything is kept
    and `feasible` is only a flag (lost experts count as skipped).

    Args:
        assign: int[K] (decoding) or int[M, K] (prefilling) node per Top-K slot, -1 = skipped.
        loads: int32[N] tokens per node. energy_j: float[] (J). deviation_bound: float[] or float[M].
        feasible: bool[]. topk: int[K] or int[M, K] the Top-K experts (expert v lives on node v).
        reports_infeasible: the policy's `PolicyRecord.reports_infeasible`.

    Returns:
        A `Decision`.

    Example:
        An infeasible optimiser result is zeroed, a baseline's is kept:

        >>> import jax.numpy as jnp
        >>> args = (jnp.array([2, -1]), jnp.array([0, 0, 1]), jnp.float32(0.5), jnp.float32(0.3), jnp.bool_(False),
        ...         jnp.array([1, 0]))
        >>> d = make_decision(*args, reports_infeasible=False)
        >>> d.assign.tolist(), d.loads.tolist(), float(d.energy_j), int(d.n_replaced), int(d.n_skipped)
        ([-1, -1], [0, 0, 0], 0.0, 0, 0)
        >>> b = make_decision(*args, reports_infeasible=True)
        >>> b.assign.tolist(), float(b.energy_j), int(b.n_replaced), int(b.n_skipped)
        ([2, -1], 0.5, 1, 1)
    """
    assign = jnp.asarray(assign)
    skipped = jnp.sum(assign < 0) if reports_infeasible else None
    if not reports_infeasible:
        assign = jnp.where(feasible, assign, -1)
        loads = jnp.where(feasible, loads, 0)
        energy_j = jnp.where(feasible, energy_j, 0.0)
        deviation_bound = jnp.where(feasible, deviation_bound, 0.0)
        skipped = jnp.where(feasible, jnp.sum(assign < 0), 0)
    assign = assign.astype(jnp.int32)
    return Decision(
        assign=assign,
        loads=loads,
        energy_j=energy_j,
        deviation_bound=deviation_bound,
        feasible=feasible,
        n_replaced=jnp.sum((assign >= 0) & (assign != topk)).astype(jnp.int32),
        n_skipped=skipped.astype(jnp.int32),
    )
