"""The result type every policy returns."""

from __future__ import annotations

import jax
from flax import struct


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
    """

    assign: jax.Array
    loads: jax.Array
    energy_j: jax.Array
    deviation_bound: jax.Array
    feasible: jax.Array
    n_replaced: jax.Array
    n_skipped: jax.Array
