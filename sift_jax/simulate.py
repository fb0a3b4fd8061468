"""`sj.simulate`: Monte Carlo estimate of a policy's energy, accuracy proxies and latency.

One sample = one inference task: helper distances, per-layer channels, gate weights and Top-K experts
for M tokens in each of L layers; the policy selects experts layer by layer (decoding for M = 1,
prefilling for M > 1) and the sample's metrics are summed over layers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax import channel, costs, gating, inputs, montecarlo, policies, similarity
from sift_jax import metrics as metric_records
from sift_jax.errors import ConfigError
from sift_jax.policies import fastfading
from sift_jax.policies.layer import select_layer
from sift_jax.provenance import provenance
from sift_jax.scenario import Scenario, validate
from sift_jax.stats import Stat

__all__ = ["METRICS", "SimResult", "TaskMetrics", "simulate"]

METRICS = metric_records.names()  # the built-in metrics; `sj.metrics.names()` adds those registered later
PAIRED_METRIC = "energy_diff_j"  # E_a - E_b per task (J per token) of two bit loadings on the same samples
REGIMES = ("slow", "fast")


@dataclasses.dataclass(frozen=True)
class SimResult:
    """Result of `simulate`.

    Attributes:
        metrics: metric name -> Stat (mean, ci95, n, p50, p90, p99, ...). For siftmoe and oracle, energy,
            deviation, rates and latency average over feasible samples (no selection exists otherwise) and
            `infeasible_rate` counts the rest. Baselines always execute their selection: their metrics
            average over all samples and `infeasible_rate` is the rate of tasks where a Top-K expert was
            lost or eta was violated.
        scenario, policy, samples, seed, chunk_size: the inputs. info: policy details (e.g. prefill method).
        provenance: versions, backend, devices, PRNG, x64, git revision.

    Units: energy_per_token_j in J per token (summed over layers), split into uplink_energy_j (the user's
    radio energy to the helpers, eqs. 10/22) and local_energy_j (the user's own expert: load and compute,
    eq. 3), both J per token and summing to energy_per_token_j; latency_s in s per task (summed
    over layers), deviation_bound in the mismatch table's unit (Prop. 1, mean per layer), the rates
    as fractions of the L x M x K Top-K slots (infeasible_rate: of tasks).

    Example:
        >>> import json
        >>> import sift_jax as sj
        >>> sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=1)
        >>> res = sj.simulate(sc, policy="siftmoe", samples=16, seed=0)
        >>> sorted(res.metrics) == sorted(sj.METRICS), res.policy, res.samples
        (True, 'siftmoe', 16)
        >>> d = json.loads(json.dumps(res.to_dict(preset="mixtral-8x7b")))  # JSON-serialisable
        >>> d["preset"], d["metrics"]["latency_s"]["n"] == res.metrics["latency_s"].n
        ('mixtral-8x7b', True)
    """

    metrics: dict[str, Stat]
    scenario: Scenario
    policy: str
    samples: int
    seed: int
    chunk_size: int
    info: dict
    provenance: dict

    def to_dict(self, preset: str | None = None) -> dict:
        """The result as JSON-ready plain values, as `sift-jax simulate --json` prints it.

        Args:
            preset: preset name recorded in the output (None when the scenario is not a preset).

        Returns:
            A dict of plain Python values: preset, policy, samples, seed, metrics ({name: Stat.to_dict()}),
            info and provenance.
        """
        return {
            "preset": preset,
            "policy": self.policy,
            "samples": self.samples,
            "seed": self.seed,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "info": self.info,
            "provenance": self.provenance,
        }


@dataclasses.dataclass(frozen=True)
class TaskMetrics:
    """Per-sample metric function (hashable, so it is a static jit argument).

    Call with (key, (scenario, tables)) or (key, (scenario, tables, router logits float32[L, T, N])) ->
    {metric: (value, valid)}: `simulate` is `montecarlo.run` of this function; use it directly to stack
    several scenarios as points of one compiled run.

    Attributes:
        policy: a name from `sj.policies.names()`. regime: "slow" or "fast" fading.
        bits: fast-fading bit loading ("uniform", "closed-form"/"dynamic", "dp") or None; or a tuple of
            them: one selection per layer, loaded by each rule, with keys "<bits>/<metric>" (`key`), so
            the curves of one policy under several bit loadings cost one selection (what `sweep` runs);
            then also the paired energy difference of every two of them (`pairs`, `pair_key`), valid where
            both are: its CI is far tighter than two independent CIs, since both see the same samples.
        options: sorted (name, value) pairs passed to the policy.
        metrics: the metric names computed (default: every registered one, `sj.metrics.names()`, read when
            the TaskMetrics is made, so a metric registered later gets a new compiled program).

    Example:
        The same samples through `montecarlo.run` reproduce `simulate` exactly:

        >>> import jax, numpy as np
        >>> import sift_jax as sj
        >>> sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=1)
        >>> tables = sj.similarity.synthetic_tables(sc)  # float[L, N, N+1]
        >>> params = jax.tree.map(lambda x: np.asarray(x)[None], (sc, tables))  # a point axis of 1
        >>> (stats,) = sj.montecarlo.run(TaskMetrics("siftmoe"), params, 1, 16, seed=0)
        >>> stats == sj.simulate(sc, policy="siftmoe", samples=16, seed=0).metrics
        True
    """

    policy: str
    regime: str = "slow"
    bits: str | tuple[str, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()
    metrics: tuple[str, ...] = dataclasses.field(default_factory=lambda: metric_records.names())

    @property
    def bit_loadings(self) -> tuple:
        """The bit loadings evaluated per sample: `bits` as a tuple ((None,) under slow fading)."""
        return self.bits if isinstance(self.bits, tuple) else (self.bits,)

    def key(self, bits, metric: str) -> str:
        """Output key of `metric` for one bit loading: the metric name, or "<bits>/<metric>" when `bits` is a
        tuple (several bit loadings of one selection, see `__call__`)."""
        return f"{bits}/{metric}" if isinstance(self.bits, tuple) else metric

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Ordered pairs (a, b) of bit loadings (a before b in `bits`) whose per-sample energy difference
        E_a - E_b (J per token, `PAIRED_METRIC`) is also returned: only when `bits` is a tuple of 2 or more."""
        loads = self.bits if isinstance(self.bits, tuple) else ()
        return tuple((a, b) for i, a in enumerate(loads) for b in loads[i + 1 :])

    @staticmethod
    def pair_key(a: str, b: str) -> str:
        """Output key of the paired energy difference E_a - E_b of bit loadings a and b ("<a>|<b>/<metric>")."""
        return f"{a}|{b}/{PAIRED_METRIC}"

    def sample_bytes(self, params) -> int:
        """Upper estimate of the device memory one sample needs (bytes), read by `montecarlo.run` to narrow
        its block of samples: L prefill instances (`PolicyRecord.prefill_bytes`) when M > 1, else 0.

        Args:
            params: (scenario, tables, ...) as `__call__` takes them (only the scenario's static sizes are read).

        Returns:
            int bytes.
        """
        sc, rec = params[0], policies.record(self.policy)
        if sc.n_tokens == 1 or rec.prefill_bytes is None:
            return 0
        return sc.n_layers * int(rec.prefill_bytes(sc, dict(self.options)))

    def layer(self, sc: Scenario, distance_m, gain, g, topk, table) -> list:
        """[(Decision, latency s, uplink energy J)] of one layer, one entry per bit loading (`bit_loadings`).

        gain: float[N-1] (slow) or float[N-1, Q] per-slot gains (fast); g, topk: [M, K]; table: [N, N+1].
        Under fast fading the selection runs once and every bit loading loads its slots
        (`fastfading.layer_decisions_with_info`). Latency and uplink energy: `metrics.layer_latency_and_uplink`,
        with the downlink gain of the regime (fast: the representative gain)."""
        opts = dict(self.options)
        if self.regime == "fast":  # energy_j is the realised energy
            pairs = fastfading.layer_decisions_with_info(
                sc, distance_m, gain, g, topk, table, self.policy, self.bit_loadings, **opts
            )
            decisions = [(dec, info.helper_energy_j) for dec, info in pairs]
            link_gain = jnp.full((sc.n_helpers,), opts.get("downlink_gain", 1.0))
        else:
            dec = select_layer(
                sc,
                self.policy,
                g,
                topk,
                table,
                lambda: costs.node_costs(sc, distance_m, gain),
                lambda m: (costs.marginal_costs(sc, distance_m, gain, m), costs.capacities(sc, distance_m, gain)),
                **opts,
            )
            decisions = [(dec, costs.helper_energy(sc, distance_m, gain, dec.loads[1:]))]
            link_gain = gain
        return [
            (dec, *metric_records.layer_latency_and_uplink(sc, distance_m, link_gain, dec.loads, helper))
            for dec, helper in decisions
        ]

    def __call__(self, key, params):
        sc, tables, *router = params  # router: [logits float32[L, T, N]] from a log, or none (synthetic)
        k_channel, k_gate = jax.random.split(key)
        ch = channel.draw(k_channel, sc, fast=self.regime == "fast")
        g, topk = inputs.draw_router(k_gate, router[0], sc) if router else gating.draw(k_gate, sc)
        per_bits = jax.vmap(self.layer, in_axes=(None, None, 0, 0, 0, 0))(sc, ch.distance_m, ch.gain, g, topk, tables)
        metrics = {}
        for bits, (dec, latency, uplink) in zip(self.bit_loadings, per_bits):
            metrics |= {self.key(bits, name): value for name, value in self._metrics(sc, dec, latency, uplink).items()}
        for a, b in self.pairs:  # paired on common random numbers: one selection, the same channels
            (ea, va), (eb, vb) = (metrics[self.key(x, "energy_per_token_j")] for x in (a, b))
            metrics[self.pair_key(a, b)] = (ea - eb, va & vb)
        return metrics

    def _metrics(self, sc: Scenario, dec, latency, uplink) -> dict:
        """{metric: (value, valid)} of one task from its per-layer decisions [L], latencies and uplink energies
        (every metric of `self.metrics`, each valid over the samples its record's `over` names)."""
        # Baselines always execute their selection (lost experts count as skips), so their metrics
        # average over every sample; siftmoe/oracle have no selection where infeasible.
        executed = jnp.bool_(True) if policies.record(self.policy).reports_infeasible else jnp.all(dec.feasible)
        return metric_records.evaluate(metric_records.TaskOutcome(sc, dec, latency, uplink), executed, self.metrics)


def check_policy(
    policy: str,
    regime: str = "slow",
    bits: str | None = None,
    options: dict | None = None,
    prefilling: bool | None = None,
) -> None:
    """Raise ConfigError unless policy, fading regime, bit loading and options name a runnable combination.

    prefilling: True (M > 1) or False (M = 1) checks that the policy has that rule and accepts `options`
    (plus the fast-fading options under regime "fast"); None checks the name only."""
    if regime not in REGIMES:
        raise ConfigError("regime", regime, f"one of {', '.join(REGIMES)}")
    policies.record(policy)
    if regime == "slow" and bits is not None:
        raise ConfigError("bits", bits, "only with regime='fast' (slow fading sends bits uniformly, Remark 5)")
    if regime == "fast":
        fastfading.check_bits(policy, bits)
    if prefilling is not None:
        extra = fastfading.OPTIONS if regime == "fast" else ()
        policies.check_options(policy, dict(options or {}), prefilling, extra)


def resolve_regime(regime: str = "slow", fading: str | None = None) -> str:
    """The fading regime from `regime` and its former name `fading` (either may be given, not both differently)."""
    if fading is None:
        return regime
    if regime not in ("slow", fading):
        raise ConfigError("fading", fading, f"the same as regime={regime!r} (fading is the former name of regime)")
    if fading not in REGIMES:
        raise ConfigError("regime", fading, f"one of {', '.join(REGIMES)} (the fading family is Scenario.fading)")
    return fading


def simulate(
    sc: Scenario,
    policy: str = "siftmoe",
    samples: int = 100_000,
    seed: int = 0,
    chunk_size: int | None = None,
    table=None,
    regime: str = "slow",
    bits: str | None = None,
    progress: Callable[[int], None] | None = None,
    fading: str | None = None,
    router=None,
    **options,
) -> SimResult:
    """Monte Carlo estimate of a policy's metrics (see `METRICS`) with 95% CIs and quantiles.

    Memory is O(chunk_size); sample i is always the same task whatever chunk_size or device count.

    Args:
        sc: the scenario (validated here). policy: a name from `sj.policies.names()`.
        samples: inference tasks to simulate. seed: sample i uses `fold_in(key(seed), i)`.
        chunk_size: samples per compiled call (memory); results do not depend on it.
        table: mismatch table(s) [L, N, N+1] or [N, N+1], or a file (`inputs.load_tables`: .npz of
            `sift-jax calibrate`, .npy, MoE-lab directory); default `similarity.synthetic_tables(sc)`.
        regime: "slow" (gain per layer) or "fast" (gain per slot; see policies/fastfading.py).
        bits: fast-fading bit loading ("uniform", "closed-form"/"dynamic", "dp"); None under slow fading.
        progress: callback with the number of samples finished.
        fading: the former name of `regime` (still accepted; the fading *family* is `Scenario.fading`).
        router: router logits float[L, T, N] (or [T, N]) or a .npy file of them (`inputs`): each task takes
            M consecutive logged tokens instead of the synthetic router; None: the synthetic router.
        **options: passed to the policy (e.g. share_substitutes=False, threshold=0.5 for wdmoe).

    Returns:
        A `SimResult`: `.metrics[name]` is a `Stat` per name in `METRICS` (energy_per_token_j in J,
        latency_s in s per task, rates as fractions), plus the inputs and provenance.

    Raises:
        ConfigError: invalid scenario, policy, regime/bits combination, option, table, samples, seed or chunk
            size.

    Example:
        SiftMoE averages over feasible tasks only, and a feasible selection meets the per-layer deadline:

        >>> import sift_jax as sj
        >>> sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=1)
        >>> res = sj.simulate(sc, policy="siftmoe", samples=16, seed=0)
        >>> energy, infeasible = res.metrics["energy_per_token_j"], res.metrics["infeasible_rate"]
        >>> energy.n + energy.n_invalid, infeasible.n, energy.n == round(16 * (1 - infeasible.mean))
        (16, 16, True)
        >>> res.metrics["latency_s"].max <= float(sc.deadline_s) * (1 + 1e-6)
        True
        >>> sj.simulate(sc, policy="nope")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: policy = 'nope' is invalid: allowed is one of ...
    """
    validate(sc)
    regime = resolve_regime(regime, fading)
    check_policy(policy, regime, bits, options, prefilling=sc.n_tokens > 1)
    files = {}  # input files and their sha256, recorded in info
    if isinstance(table, (str, os.PathLike)):
        files["table_file"] = os.fspath(table)
        table, files["table_sha256"] = inputs.load_tables(table, sc)
    tables = similarity.synthetic_tables(sc) if table is None else inputs.check_tables(sc, table)
    if isinstance(router, (str, os.PathLike)):
        files["router_file"] = os.fspath(router)
        router, files["router_sha256"] = inputs.load_router(router, sc)
    logits = () if router is None else (inputs.check_router(sc, router),)
    fn = TaskMetrics(policy=policy, regime=regime, bits=bits, options=tuple(sorted(options.items())))
    # a leading point axis added on the host (eager jnp indexing costs ~0.5 ms per leaf and call)
    params = jax.tree.map(
        lambda x: np.asarray(x, jax.dtypes.canonicalize_dtype(np.asarray(x).dtype))[None], (sc, tables, *logits)
    )
    size = montecarlo.check_run_args(samples, seed, chunk_size)
    (metrics,) = montecarlo.run(fn, params, 1, samples, seed, size, progress)
    info = {
        "regime": regime,
        "bits": bits,
        "options": dict(options),
        "router": "log" if logits else "synthetic",
        **files,
    }
    return SimResult(
        metrics=metrics,
        scenario=sc,
        policy=policy,
        samples=samples,
        seed=seed,
        chunk_size=size,
        info=info,
        provenance=provenance(),
    )
