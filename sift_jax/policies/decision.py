"""The result type every policy returns."""

from __future__ import annotations

import jax
from flax import struct

__all__ = ["Decision"]


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
