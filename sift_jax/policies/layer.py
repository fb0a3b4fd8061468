"""One layer's decision for M tokens by a registered policy: the decoding rule for M = 1, the prefilling
rule for M > 1. Used by `simulate` (slow fading) and `fastfading` (on the surrogate costs), so "pick one
layer's decision" exists once."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sift_jax.policies.decision import Decision
from sift_jax.policies.registry import get_record
from sift_jax.scenario import Scenario

__all__ = ["select_layer"]


def select_layer(
    sc: Scenario,
    policy: str,
    g,
    topk,
    table,
    node_costs: Callable[[], jax.Array],
    marginal_costs: Callable[[int], tuple[jax.Array, jax.Array]],
    **options,
) -> Decision:
    """The decision of `policy` for one layer's M tokens, with the token axis always present.

    Args:
        sc: the scenario. policy: a registered name (`sift_jax.policies.names()`).
        g: float[M, K] gate weights. topk: int[M, K] Top-K experts. table: float[N, N+1] mismatch table.
        node_costs: () -> f float[N] node costs (J), called only when M = 1.
        marginal_costs: (M) -> (dE float[N, D] marginal costs (J), cap int32[N]), called only when M > 1.
        **options: passed to the policy's rule.

    Returns:
        A `Decision` with assign int32[M, K] and deviation_bound float[M].

    Example:
        One token, three nodes: Top-K (K = 1) keeps its expert 2 on node 2:

        >>> import jax.numpy as jnp
        >>> sc = Scenario(n_nodes=3, top_k=1, eta=0.5)
        >>> table = jnp.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.2, 1.0], [1.0, 0.2, 0.0, 1.0]])
        >>> d = select_layer(sc, "topk", jnp.ones((1, 1)), jnp.array([[2]]), table,
        ...                  lambda: jnp.array([5.0, 1.0, 2.0]), None)
        >>> d.assign.tolist(), d.deviation_bound.shape
        ([[2]], (1,))
    """
    if g.shape[0] == 1:
        dec = get_record(policy).decode(sc, node_costs(), g[0], topk[0], table, **options)
        return dec.replace(
            assign=jnp.reshape(dec.assign, (1, -1)), deviation_bound=jnp.reshape(dec.deviation_bound, (1,))
        )
    d_e, cap = marginal_costs(g.shape[0])
    return get_record(policy, prefilling=True).prefill(sc, d_e, cap, g, topk, table, **options)
