"""Expert-selection policies and their registry (paper §4, §6).

Every policy is one `PolicyRecord` in `registry` (decoding rule, prefilling rule or none, whether it
reports its outcome when infeasible, options, description); `names()`, `get(name)` (the decoding rule),
`get_prefill(name)` and `record(name)` read it, and `register` adds one (also from outside the package).
Decoding rules (one token of one layer) share the signature

    policy(sc, f, g, topk, table, **options) -> Decision

with f float[N] node costs (J, inf = misses the deadline; `sift_jax.costs.node_costs`), g float[K] gate
weights, topk int[K] expert indices and table float[N, N+1] (column N = skip); prefilling rules take
(sc, dE, cap, g, topk, table, **options) with g, topk [M, K] (`policies.prefill`). The built-in ones:

    "siftmoe"     `decode` (Theorem 2, exact) / `prefill` method "auto" (Alg. 1, Alg. 2 or fast)
    "topk-ideal"  every Top-K expert delivered (accuracy upper bound)
    "topk"        practical Top-K: experts on nodes that miss the deadline are lost (= skipped)
    "wdmoe"       WDMoE-style cosine threshold rule (decoding only)
    "oracle"      brute force over all (N+1)^K slot mappings / the exact prefill DP (small instances)

SiftMoE and the oracle return an all-zero Decision (assign -1) where no selection is feasible; the
baselines always report their real outcome and use `feasible` as a flag (`decision.make_decision`).
"""

from __future__ import annotations

from collections.abc import Callable

from sift_jax.policies import prefill as _prefill_rules
from sift_jax.policies.baselines import topk, topk_ideal, wdmoe
from sift_jax.policies.decision import Decision
from sift_jax.policies.decode import decode
from sift_jax.policies.oracle import oracle
from sift_jax.policies.prefill import prefill, prefill_bytes, prefill_with_info
from sift_jax.policies.prefill_dp import solve_dp
from sift_jax.policies.prefill_exact import solve_exact
from sift_jax.policies.prefill_fast import solve_fast
from sift_jax.policies.registry import PolicyRecord, check_options, get_record, names, register, unregister

__all__ = [
    "Decision",
    "PolicyRecord",
    "check_options",
    "decode",
    "get",
    "get_prefill",
    "names",
    "oracle",
    "prefill",
    "prefill_with_info",
    "record",
    "register",
    "topk",
    "topk_ideal",
    "unregister",
    "wdmoe",
]


def _siftmoe_prefill(sc, dE, cap, g, topk, table, method: str = "auto", **options) -> Decision:
    """SiftMoE prefill: K = 1 exact (Alg. 1), K > 1 DP (Alg. 2) when its state count fits, else fast."""
    return prefill(sc, dE, cap, g, topk, table, method=method, **options)


def _oracle_prefill(sc, dE, cap, g, topk, table, **options) -> Decision:
    """Exact reference for prefilling: the DP over load vectors (refuses instances beyond its state limit)."""
    return prefill(sc, dE, cap, g, topk, table, method="dp", **options)


def _solver_options(*solvers) -> tuple[str, ...]:
    return tuple(sorted({o for s in solvers for o in PolicyRecord("x", s, s).accepted_options(prefilling=True)}))


register(
    PolicyRecord(
        "siftmoe",
        decode,
        _siftmoe_prefill,
        prefill_options=("method",) + _solver_options(solve_exact, solve_dp, solve_fast),
        description="the paper's: Thm. 2 decode, Alg. 1/2 prefill",
        prefill_bytes=lambda sc, opts: prefill_bytes(sc, **opts),
    )
)
register(
    PolicyRecord(
        "topk-ideal",
        topk_ideal,
        _prefill_rules.topk_ideal,
        reports_infeasible=True,
        prefill_bytes=lambda sc, opts: _prefill_rules.topk_bytes(sc),
        description="every Top-K expert delivered (accuracy upper bound)",
    )
)
register(
    PolicyRecord(
        "topk",
        topk,
        _prefill_rules.topk,
        reports_infeasible=True,
        prefill_bytes=lambda sc, opts: _prefill_rules.topk_bytes(sc),
        description="practical Top-K: experts on late nodes are lost",
    )
)
register(
    PolicyRecord(
        "wdmoe", wdmoe, None, reports_infeasible=True, description="WDMoE-style cosine threshold rule (decoding only)"
    )
)
register(
    PolicyRecord(
        "oracle",
        oracle,
        _oracle_prefill,
        prefill_options=_solver_options(solve_dp),
        description="brute force / exact DP reference (small instances)",
        prefill_bytes=lambda sc, opts: prefill_bytes(sc, "dp", **opts),
    )
)


def record(name: str) -> PolicyRecord:
    """The registered `PolicyRecord` of policy `name`.

    Args:
        name: one of `names()`.

    Returns:
        The record (decode and prefill rules, reports_infeasible, options, description).

    Raises:
        ConfigError: `name` is not registered.

    Example:
        >>> record("wdmoe").prefill is None, record("siftmoe").decode is decode
        (True, True)
    """
    return get_record(name)


def get(name: str) -> Callable[..., Decision]:
    """The decoding rule of policy `name`: a function (sc, f, g, topk, table, **options) -> Decision.

    Args:
        name: one of `names()`.

    Returns:
        The policy function; f float[N] (J), g float[K], topk int[K], table float[N, N+1] as in
        `decode`, and it returns a `Decision` for one token of one layer.

    Raises:
        ConfigError: `name` is not a registered policy.

    Example:
        >>> get("siftmoe") is decode, get("topk-ideal") is topk_ideal
        (True, True)
        >>> get("greedy")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: policy = 'greedy' is invalid: allowed is one of siftmoe, topk-ideal, topk,
        wdmoe, oracle...
    """
    return get_record(name).decode


def get_prefill(name: str) -> Callable[..., Decision]:
    """The prefilling rule of policy `name` (M > 1 tokens of one layer).

    Args:
        name: a policy with a prefill rule (`names(prefilling=True)`).

    Returns:
        A function (sc, dE, cap, g, topk, table, **options) -> Decision with dE float[N, D] (J), cap
        int32[N], g float[M, K], topk int32[M, K], table float[N, N + 1] as in `prefill`.

    Raises:
        ConfigError: unknown policy, or one without a prefill rule (wdmoe is decoding only).

    Example:
        >>> get_prefill("topk") is prefill_topk
        True
        >>> get_prefill("wdmoe")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: policy = 'wdmoe' is invalid: allowed is one of siftmoe, topk-ideal, topk, oracle...
        for prefilling (n_tokens > 1); wdmoe has no prefill rule (decoding only)
    """
    return get_record(name, prefilling=True).prefill


prefill_topk = _prefill_rules.topk  # the practical Top-K prefill rule (the name `topk` is the decoding rule)
