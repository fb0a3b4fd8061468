"""Expert-selection policies and their registry (paper §4, §6).

Decoding policies (one token of one layer) share the signature

    policy(sc, f, g, topk, table, **options) -> Decision

with f float[N] node costs (J, inf = misses the deadline; `sift_jax.costs.node_costs`), g float[K] gate
weights, topk int[K] expert indices and table float[N, N+1] (column N = skip). `names()` lists them and
`get(name)` returns one:

    "siftmoe"     `decode`: Theorem 2, exact (options: share_substitutes, strategy, per_slot_candidates)
    "topk-ideal"  `topk_ideal`: every Top-K expert delivered (accuracy upper bound)
    "topk"        `topk`: practical Top-K, experts on nodes that miss the deadline are lost (= skipped)
    "wdmoe"       `wdmoe`: WDMoE-style cosine threshold rule (options: threshold, latency_s)
    "oracle"      `oracle`: brute force over all (N+1)^K slot mappings (small N, K; option share_substitutes)

SiftMoE and the oracle return an all-zero Decision (assign -1) where no selection is feasible; the
baselines always report their real outcome and use `feasible` as a flag (see `baselines`).
"""

from __future__ import annotations

from typing import Callable

from sift_jax.errors import ConfigError
from sift_jax.policies.baselines import topk, topk_ideal, wdmoe
from sift_jax.policies.decision import Decision
from sift_jax.policies.decode import decode
from sift_jax.policies.oracle import oracle

from sift_jax.policies.prefill import prefill, prefill_with_info
from sift_jax.policies.prefill_registry import get_prefill

_DECODE = {
    "siftmoe": decode,
    "topk-ideal": topk_ideal,
    "topk": topk,
    "wdmoe": wdmoe,
    "oracle": oracle,
}


def names() -> tuple[str, ...]:
    """Names of the decoding policies, in the order of the module docstring.

    Returns:
        tuple of str, one name per policy; each is a valid argument of `get`.

    Example:
        >>> names()
        ('siftmoe', 'topk-ideal', 'topk', 'wdmoe', 'oracle')
        >>> all(callable(get(name)) for name in names())
        True
    """
    return tuple(_DECODE)


def get(name: str) -> Callable[..., Decision]:
    """The decoding policy called `name`: a function (sc, f, g, topk, table, **options) -> Decision.

    Args:
        name: one of `names()`.

    Returns:
        The policy function; f float[N] (J), g float[K], topk int[K], table float[N, N+1] as in
        `decode`, and it returns a `Decision` for one token of one layer.

    Raises:
        ConfigError: `name` is not a decoding policy.

    Example:
        >>> get("siftmoe") is decode, get("topk-ideal") is topk_ideal
        (True, True)
        >>> get("greedy")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: policy = 'greedy' is invalid: allowed is one of siftmoe, topk-ideal, topk,
        wdmoe, oracle
    """
    if not isinstance(name, str) or name not in _DECODE:
        raise ConfigError("policy", name, "one of " + ", ".join(_DECODE))
    return _DECODE[name]


__all__ = ["Decision", "decode", "get", "get_prefill", "names", "oracle", "prefill", "prefill_with_info", "topk",
           "topk_ideal", "wdmoe"]
