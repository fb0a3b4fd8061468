"""Prefilling (M > 1) policies by name, with the common signature
(sc, dE, cap, g, topk, table, **options) -> Decision (see policies/prefill.py for the arguments)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sift_jax.errors import ConfigError
from sift_jax.policies.prefill import prefill as _solve
from sift_jax.policies.prefill import topk as _topk_practical
from sift_jax.policies.decision import Decision

__all__ = ["get_prefill"]


def siftmoe(sc, dE, cap, g, topk, table, method: str = "auto", **options) -> Decision:
    """SiftMoE prefill: K = 1 exact (Alg. 1), K > 1 DP (Alg. 2) when its state count fits, else fast."""
    return _solve(sc, dE, cap, g, topk, table, method=method, **options)


def oracle(sc, dE, cap, g, topk, table, **options) -> Decision:
    """Exact reference for prefilling: the DP over load vectors (refuses instances beyond its state limit)."""
    return _solve(sc, dE, cap, g, topk, table, method="dp", **options)


def topk_ideal(sc, dE, cap, g, topk, table) -> Decision:
    """Ideal Top-K prefill: every token's Top-K experts are delivered (the accuracy upper bound).

    Deviation is 0 and nothing is replaced or skipped. Energy counts the loads within each node's capacity
    (beyond it the model has no finite energy; the ideal baseline assumes delivery anyway), so it equals
    what practical Top-K pays; `feasible` says whether every load fits its capacity.
    """
    dE, g, topk = jnp.asarray(dE), jnp.asarray(g), jnp.asarray(topk)
    want = jax.nn.one_hot(topk, sc.n_nodes, dtype=jnp.int32).max(1)  # [M, N]
    loads = want.sum(0).astype(jnp.int32)
    d = jnp.arange(dE.shape[1])
    finite = jnp.isfinite(dE)
    energy = jnp.sum(jnp.where((d[None, :] < loads[:, None]) & finite, dE, 0.0))
    fits = jnp.all(jnp.where(d[None, :] < loads[:, None], finite, True))
    m = g.shape[0]
    return Decision(assign=topk.astype(jnp.int32), loads=loads, energy_j=energy,
                    deviation_bound=jnp.zeros((m,), dE.dtype), feasible=fits,
                    n_replaced=jnp.zeros((), jnp.int32), n_skipped=jnp.zeros((), jnp.int32))


_PREFILL = {"siftmoe": siftmoe, "topk-ideal": topk_ideal, "topk": _topk_practical, "oracle": oracle}


def get_prefill(name: str) -> Callable[..., Decision]:
    """The prefilling policy called `name`.

    "siftmoe": `prefill` with method "auto" (K = 1 exact, K > 1 DP when it fits, else fast);
    "topk-ideal": every Top-K expert delivered (deviation 0); "topk": practical Top-K
    (`prefill.topk`); "oracle": the exact DP.

    Args:
        name: "siftmoe", "topk-ideal", "topk" or "oracle".

    Returns:
        The policy, a function (sc, dE, cap, g, topk, table, **options) -> Decision with dE float[N, D]
        (J), cap int32[N], g float[M, K], topk int32[M, K], table float[N, N + 1] as in `prefill`.

    Raises:
        ConfigError: `name` is not a prefilling policy (wdmoe is decoding only).

    Example:
        Two tokens want node 1, which has room for one (its second marginal cost is inf): the ideal
        baseline assumes both delivered and is flagged infeasible, practical Top-K loses one:

        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=2, top_k=1, n_tokens=2, eta=0.5)
        >>> args = (sc, jnp.array([[1.0, 1.0], [1.0, jnp.inf]]), jnp.array([2, 2]), jnp.ones((2, 1)),
        ...         jnp.array([[1], [1]]), jnp.array([[0.0, 0.3, 1.0], [0.3, 0.0, 1.0]]))
        >>> ideal, practical = jax.jit(lambda *a: (get_prefill("topk-ideal")(*a), get_prefill("topk")(*a)))(*args)
        >>> ideal.assign[:, 0].tolist(), bool(ideal.feasible), practical.assign[:, 0].tolist(), bool(practical.feasible)
        ([1, 1], False, [1, -1], False)
        >>> get_prefill("wdmoe")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: policy = 'wdmoe' is invalid: allowed is one of siftmoe, topk-ideal, topk, oracle
        for prefilling (n_tokens > 1); wdmoe is a decoding rule
    """
    if not isinstance(name, str) or name not in _PREFILL:
        raise ConfigError("policy", name, "one of " + ", ".join(_PREFILL) + " for prefilling (n_tokens > 1); "
                          "wdmoe is a decoding rule")
    return _PREFILL[name]
