"""Metrics as registered records: what `simulate` and sweeps report per inference task.

A `MetricRecord` names a metric, its unit and plot label, computes its per-task value from a `TaskOutcome`
(the task's per-layer decisions, latencies and uplink energies), and says which samples it averages over.
`simulate`, sweeps (one `<name>_<stat>` variable each), plots, the CLI and its errors read this registry;
adding a metric is one `register(MetricRecord(...))`, also from outside the package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sift_jax import costs
from sift_jax.errors import ConfigError
from sift_jax.policies.decision import Decision
from sift_jax.records import Registry
from sift_jax.scenario import Scenario

__all__ = [
    "AVERAGES",
    "MetricRecord",
    "TaskOutcome",
    "evaluate",
    "get",
    "layer_latency_and_uplink",
    "names",
    "register",
    "unregister",
]

AVERAGES = ("executed", "all")  # which samples a metric averages over (see MetricRecord.over)


class TaskOutcome(NamedTuple):
    """One inference task, as the metric functions see it.

    Attributes:
        sc: the scenario (M = sc.n_tokens tokens, L = sc.n_layers layers, K = sc.top_k).
        decision: the per-layer `Decision`s stacked on a leading axis L (assign int32[L, M, K], loads
            int32[L, N], energy_j float[L] in J, deviation_bound float[L, M], feasible bool[L], counts [L]).
        latency_s: float[L] each layer's latency (s). uplink_j: float[L] each layer's uplink energy (J).

    Example:
        >>> TaskOutcome._fields
        ('sc', 'decision', 'latency_s', 'uplink_j')
    """

    sc: Scenario
    decision: Decision
    latency_s: jax.Array
    uplink_j: jax.Array


@dataclasses.dataclass(frozen=True)
class MetricRecord:
    """One metric.

    Attributes:
        name: the key in `SimResult.metrics` and the sweep variables' prefix (letters, digits, '_').
        unit: "J", "s", "fraction" or another unit string. label: the plot's axis label.
        value: TaskOutcome -> float[] the task's value (traced; jit- and vmap-compatible).
        over: "executed": the samples where the policy executed a selection (every sample for baselines,
            the feasible ones for optimisers, `PolicyRecord.reports_infeasible`); "all": every sample.
        description: one line for docs and help.

    Example:
        >>> rec = get("latency_s")
        >>> rec.unit, rec.over
        ('s', 'executed')
    """

    name: str
    unit: str
    label: str
    value: Callable[[TaskOutcome], jax.Array]
    over: str = "executed"
    description: str = ""


_REGISTRY: Registry[MetricRecord] = Registry("metric")


def register(record: MetricRecord, *, replace: bool = False) -> MetricRecord:
    """Add a metric to the registry (validated; a second record of the same name is refused).

    Args:
        record: the metric's record. replace: allow replacing an existing record of the same name.

    Returns:
        The record.

    Raises:
        ConfigError: a bad name, a non-callable value, an unknown `over`, or a duplicate name.

    Example:
        >>> register(get("skip_rate"))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: metric = 'skip_rate' is invalid: allowed is a name not yet registered (pass
        replace=True to replace it)
    """
    name = record.name
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ConfigError("metric", name, "a name of letters, digits and '_' (not starting with '_' or a digit)")
    if not callable(record.value):
        raise ConfigError(f"{name}.value", record.value, "a callable TaskOutcome -> float[]")
    if record.over not in AVERAGES:
        raise ConfigError(f"{name}.over", record.over, "one of " + ", ".join(AVERAGES))
    return _REGISTRY.add(name, record, replace)


def unregister(name: str) -> None:
    """Remove a registered metric (e.g. a test's or a notebook's own, when done with it).

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
        sift_jax.errors.ConfigError: metric = 'never-registered' is invalid: allowed is a registered name ...
    """
    _REGISTRY.remove(name)


def names() -> tuple[str, ...]:
    """Registered metric names, in registration order (the built-in ones are `sift_jax.METRICS`).

    Returns:
        tuple of str.

    Example:
        >>> names()[:3]
        ('energy_per_token_j', 'uplink_energy_j', 'local_energy_j')
    """
    return _REGISTRY.names()


def get(name: str) -> MetricRecord:
    """The record of metric `name`.

    Args:
        name: one of `names()`.

    Returns:
        The `MetricRecord`.

    Raises:
        ConfigError: unknown metric.

    Example:
        >>> get("energy_per_token_j").label
        'Average energy per token (J)'
    """
    return _REGISTRY.get(name)


def layer_latency_and_uplink(sc: Scenario, distance_m, link_gain, loads, helper_energy_j) -> tuple:
    """A layer's latency and the user's uplink energy, the two per-layer inputs of a `TaskOutcome` that a
    `Decision` does not hold.

    The uplink energy is summed from the helpers' own energies of the served loads (not the decision's
    total minus the user's, which would cancel catastrophically in float32 where the user dominates);
    helpers whose energy is infinite (a baseline's lost expert) count 0, as in the decision's energy.

    Args:
        sc: the scenario. distance_m: float[..., N-1] helper distances (m). link_gain: float[..., N-1] the
            gains of the downlink rates R_n,UE (slow fading: the layer's gains; fast: the representative one).
        loads: int[..., N] tokens per node (node 0 = user). helper_energy_j: float[..., N-1] each helper's
            energy for its load (J; `costs.helper_energy` under slow fading).

    Returns:
        (latency float[...] s: the slowest node, eqs. 2 and 9; uplink float[...] J).

    Example:
        Two helpers, one serving a token at 3 mJ and one unused (its energy is not counted):

        >>> import jax.numpy as jnp
        >>> sc = Scenario(n_nodes=3, deadline_s=0.05)
        >>> lat, up = layer_latency_and_uplink(sc, jnp.array([50.0, 80.0]), jnp.ones(2), jnp.array([0, 1, 0]),
        ...                                    jnp.array([3e-3, 7.0]))
        >>> round(float(up), 6), round(float(lat), 6)   # the helper's uplink stretches to the deadline
        (0.003, 0.05)
    """
    used = (loads[..., 1:] > 0) & jnp.isfinite(helper_energy_j)
    uplink = jnp.sum(jnp.where(used, helper_energy_j, 0.0), axis=-1)
    return jnp.max(costs.node_latency(sc, distance_m, link_gain, loads), axis=-1), uplink


def evaluate(task: TaskOutcome, executed, metric_names: tuple[str, ...] | None = None) -> dict:
    """Every metric of one task, each with the flag saying whether it counts in its average.

    Args:
        task: the task's `TaskOutcome` (traced; vmap over tasks).
        executed: bool[] whether the policy executed a selection in this task (`MetricRecord.over`).
        metric_names: the metrics (default: every registered one, `names()`).

    Returns:
        {name: (value float[], valid bool[])}: valid is `executed` for over="executed" records, else True.

    Example:
        One decoding task of two layers (K = 2): one slot replaced in layer 0, one skipped in layer 1:

        >>> import jax.numpy as jnp
        >>> sc = Scenario(n_nodes=3, top_k=2, n_layers=2)
        >>> dec = Decision(assign=jnp.array([[[1, 2]], [[0, -1]]]), loads=jnp.array([[0, 1, 1], [1, 0, 0]]),
        ...                energy_j=jnp.array([0.2, 0.3]), deviation_bound=jnp.array([[0.1], [0.4]]),
        ...                feasible=jnp.array([True, True]), n_replaced=jnp.array([1, 0]),
        ...                n_skipped=jnp.array([0, 1]))
        >>> out = evaluate(TaskOutcome(sc, dec, jnp.array([0.05, 0.01]), jnp.array([0.2, 0.0])), jnp.bool_(False))
        >>> [(k, round(float(out[k][0]), 4), bool(out[k][1])) for k in ("replace_rate", "skip_rate", "infeasible_rate")]
        [('replace_rate', 0.25, False), ('skip_rate', 0.25, False), ('infeasible_rate', 0.0, True)]
    """
    out = {}
    for name in names() if metric_names is None else metric_names:
        rec = get(name)
        out[name] = (rec.value(task), executed if rec.over == "executed" else jnp.bool_(True))
    return out


def _slots(t: TaskOutcome) -> int:
    return t.sc.n_layers * t.sc.n_tokens * t.sc.top_k


def _local_energy(t: TaskOutcome) -> jax.Array:
    user = costs.user_energy(t.sc, t.decision.loads[:, 0])  # [L] eq. (3); 0 for an unused user
    return jnp.sum(jnp.where(jnp.isfinite(user), user, 0.0)) / t.sc.n_tokens


for _record in (
    MetricRecord(
        "energy_per_token_j",
        "J",
        "Average energy per token (J)",
        lambda t: jnp.sum(t.decision.energy_j) / t.sc.n_tokens,
        description="the user's energy per token, summed over layers (eqs. 3 + 10/22)",
    ),
    MetricRecord(
        "uplink_energy_j",
        "J",
        "Uplink (radio) energy per token (J)",
        lambda t: jnp.sum(t.uplink_j) / t.sc.n_tokens,
        description="the user's radio energy to the helpers per token",
    ),
    MetricRecord(
        "local_energy_j",
        "J",
        "User-side expert energy per token (J)",
        _local_energy,
        description="the user's own expert (load and compute, eq. 3) per token",
    ),
    MetricRecord(
        "deviation_bound",
        "table unit",
        "Deviation bound per layer (Prop. 1)",
        lambda t: jnp.mean(t.decision.deviation_bound),
        description="Prop. 1 bound, mean over layers and tokens",
    ),
    MetricRecord(
        "replace_rate",
        "fraction",
        "Replaced Top-K slots (fraction)",
        lambda t: jnp.sum(t.decision.n_replaced) / _slots(t),
        description="fraction of the L x M x K Top-K slots served by another expert",
    ),
    MetricRecord(
        "skip_rate",
        "fraction",
        "Skipped Top-K slots (fraction)",
        lambda t: jnp.sum(t.decision.n_skipped) / _slots(t),
        description="fraction of the L x M x K Top-K slots skipped or lost",
    ),
    MetricRecord(
        "infeasible_rate",
        "fraction",
        "Infeasible tasks (fraction)",
        lambda t: 1.0 - jnp.all(t.decision.feasible).astype(jnp.result_type(float)),
        over="all",
        description="fraction of tasks with an infeasible layer (baselines: a lost expert or eta violated)",
    ),
    MetricRecord(
        "latency_s",
        "s",
        "Latency per task (s)",
        lambda t: jnp.sum(t.latency_s),
        description="latency summed over layers",
    ),
):
    register(_record)
