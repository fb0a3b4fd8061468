"""Policies as registered records: one `PolicyRecord` per selection rule, the only list of policies.

`simulate`, sweeps, fast fading, the CLI's choices and help, and every "unknown policy" error read this
registry; adding a policy (from inside or outside the package) is one `register(PolicyRecord(...))`.
The built-in records are registered by `sift_jax.policies` on import.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sift_jax.errors import ConfigError
from sift_jax.policies.decision import Decision
from sift_jax.records import Registry

if TYPE_CHECKING:
    from sift_jax.scenario import Scenario

__all__ = [
    "DecodePolicy",
    "PolicyRecord",
    "PrefillPolicy",
    "check_options",
    "get_record",
    "names",
    "register",
    "unregister",
]

_RESERVED = ":|/ \t\n"  # curve labels are "<policy>:<bits>", pair labels "<a>|<b>"


@runtime_checkable
class DecodePolicy(Protocol):
    """Decoding (one token of one layer): f float[N] node costs (J, inf = misses the deadline), g float[K]
    gate weights, topk int[K] expert indices, table float[N, N+1] (column N = skip) -> `Decision`.

    Example:
        >>> from sift_jax import policies
        >>> isinstance(policies.decode, DecodePolicy)  # a Protocol: any callable of this shape
        True
    """

    def __call__(self, sc, f, g, topk, table, **options) -> Decision: ...


@runtime_checkable
class PrefillPolicy(Protocol):
    """Prefilling (M tokens of one layer): dE float[N, D] marginal costs (J), cap int32[N] capacities,
    g float[M, K], topk int32[M, K], table float[N, N+1] -> `Decision` with assign int32[M, K].

    Example:
        >>> from sift_jax import policies
        >>> isinstance(policies.prefill, PrefillPolicy)
        True
    """

    def __call__(self, sc, dE, cap, g, topk, table, **options) -> Decision: ...


@dataclasses.dataclass(frozen=True)
class PolicyRecord:
    """One selection policy.

    Attributes:
        name: the name users pass (`simulate(policy=...)`, spec curves, `--policy`); no ':', '|', '/' or space.
        decode: the decoding rule (`DecodePolicy`), used for M = 1.
        prefill: the prefilling rule (`PrefillPolicy`) for M > 1, or None (decoding only).
        reports_infeasible: True for baselines that always execute their selection (a lost expert counts
            as skipped): their metrics average over every sample and `infeasible_rate` is the rate of tasks
            where a Top-K expert was lost or eta violated. False for optimisers that have no selection where
            none is feasible: their metrics average over feasible samples only.
        decode_options, prefill_options: the keyword options each rule accepts (None: read from the
            function's signature: its keyword parameters after the five (decode) or six (prefill) positional ones).
        description: one line for the CLI help and the docs.
        prefill_bytes: (sc, prefill options) -> int, an upper estimate of the device memory (bytes) one
            prefill instance of sc.n_tokens tokens needs, or None (small). The Monte Carlo runner narrows its
            vmapped block of samples so that the block's instances fit `montecarlo.BLOCK_MEMORY_BYTES`.

    Example:
        >>> import jax.numpy as jnp
        >>> def cheapest(sc, f, g, topk, table):  # serve each slot on the cheapest node holding its expert
        ...     ...
        >>> rec = PolicyRecord("demo-cheapest", decode=cheapest, description="demo")
        >>> rec.accepted_options(prefilling=False), rec.prefill is None
        ((), True)
    """

    name: str
    decode: DecodePolicy
    prefill: PrefillPolicy | None = None
    reports_infeasible: bool = False
    decode_options: tuple[str, ...] | None = None
    prefill_options: tuple[str, ...] | None = None
    description: str = ""
    prefill_bytes: Callable[[Scenario, dict], int] | None = None

    def accepted_options(self, prefilling: bool) -> tuple[str, ...]:
        """Keyword options the decoding (prefilling=False) or prefilling rule accepts.

        Args:
            prefilling: True for M > 1 (the prefill rule), False for M = 1.

        Returns:
            The option names, sorted.

        Example:
            >>> def rule(sc, f, g, topk, table, threshold=0.5):
            ...     ...
            >>> PolicyRecord("demo", decode=rule).accepted_options(prefilling=False)
            ('threshold',)
        """
        fn, given = (self.prefill, self.prefill_options) if prefilling else (self.decode, self.decode_options)
        if given is not None:
            return tuple(sorted(given))
        if fn is None:
            return ()
        params = list(inspect.signature(fn).parameters.values())[6 if prefilling else 5 :]  # after sc and the arrays
        return tuple(sorted(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)))


_REGISTRY: Registry[PolicyRecord] = Registry("policy")


def register(record: PolicyRecord, *, replace: bool = False) -> PolicyRecord:
    """Add a policy to the registry (validated; a second record of the same name is refused).

    Args:
        record: the policy's record.
        replace: allow replacing an existing record of the same name (e.g. re-running a notebook cell).

    Returns:
        The record.

    Raises:
        ConfigError: a bad name, a non-callable rule, bad option names, or a duplicate name.

    Example:
        >>> register(get_record("topk"))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: policy = 'topk' is invalid: allowed is a name not yet registered (pass
        replace=True to replace it)
    """
    name = record.name
    if not isinstance(name, str) or not name or any(c in name for c in _RESERVED):
        raise ConfigError("policy", name, "a non-empty name without ':', '|', '/' or whitespace")
    if not callable(record.decode):
        raise ConfigError(f"{name}.decode", record.decode, "a callable (sc, f, g, topk, table, **options) -> Decision")
    if record.prefill is not None and not callable(record.prefill):
        raise ConfigError(
            f"{name}.prefill", record.prefill, "None or a callable (sc, dE, cap, g, topk, table, **options) -> Decision"
        )
    if record.prefill_bytes is not None and not callable(record.prefill_bytes):
        raise ConfigError(f"{name}.prefill_bytes", record.prefill_bytes, "None or a callable (sc, options) -> int")
    for field in ("decode_options", "prefill_options"):
        opts = getattr(record, field)
        if opts is not None and not (isinstance(opts, tuple) and all(isinstance(o, str) for o in opts)):
            raise ConfigError(f"{name}.{field}", opts, "None or a tuple of option names")
    return _REGISTRY.add(name, record, replace)


def unregister(name: str) -> None:
    """Remove a registered policy (e.g. a test's or a notebook's own, when done with it).

    Args:
        name: a registered name.

    Returns:
        None.

    Raises:
        ConfigError: `name` is not registered.

    Example:
        >>> unregister("never-registered")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: policy = 'never-registered' is invalid: allowed is a registered name ...
    """
    _REGISTRY.remove(name)


def names(prefilling: bool | None = None) -> tuple[str, ...]:
    """Registered policy names, in registration order.

    Args:
        prefilling: None: every policy; True: those with a prefill rule (usable for M > 1); False: all
            (every policy decodes).

    Returns:
        tuple of str.

    Example:
        >>> names()[:5]
        ('siftmoe', 'topk-ideal', 'topk', 'wdmoe', 'oracle')
        >>> "wdmoe" in names(prefilling=True)
        False
    """
    return tuple(n for n, r in _REGISTRY.items() if not prefilling or r.prefill is not None)


def get_record(name: str, prefilling: bool = False) -> PolicyRecord:
    """The record of policy `name`.

    Args:
        name: a registered name (`names()`).
        prefilling: require a prefill rule (M > 1).

    Returns:
        The `PolicyRecord`.

    Raises:
        ConfigError: unknown name, or no prefill rule when `prefilling`.

    Example:
        >>> get_record("topk").reports_infeasible, get_record("siftmoe").reports_infeasible
        (True, False)
        >>> get_record("wdmoe", prefilling=True)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: policy = 'wdmoe' is invalid: allowed is one of siftmoe, topk-ideal, topk, oracle
        for prefilling (n_tokens > 1); wdmoe has no prefill rule (decoding only)
    """
    record = _REGISTRY.get(name)
    if prefilling and record.prefill is None:
        raise ConfigError(
            "policy",
            name,
            "one of " + ", ".join(names(prefilling=True)) + " for prefilling "
            f"(n_tokens > 1); {name} has no prefill rule (decoding only)",
        )
    return record


def check_options(name: str, options: dict, prefilling: bool, extra: tuple[str, ...] = ()) -> None:
    """Raise ConfigError unless every key of `options` is accepted by the policy's rule.

    Args:
        name: a registered policy. options: the keyword options given. prefilling: M > 1.
        extra: further accepted names (e.g. the fast-fading options, consumed before the policy runs).

    Returns:
        None.

    Example:
        >>> check_options("wdmoe", {"threshold": 0.3}, prefilling=False)
        >>> check_options("siftmoe", {"colour": 1}, prefilling=False)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: colour = 1 is invalid: allowed is an option of policy siftmoe (decoding): one of
        per_slot_candidates, share_substitutes, strategy
    """
    allowed = set(get_record(name, prefilling).accepted_options(prefilling)) | set(extra)
    for key, value in options.items():
        if key not in allowed:
            kind = "prefilling" if prefilling else "decoding"
            listed = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(key, value, f"an option of policy {name} ({kind}): one of {listed}")
