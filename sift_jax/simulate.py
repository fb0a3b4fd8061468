"""`sj.simulate`: Monte Carlo estimate of a policy's energy, accuracy proxies and latency.

One sample = one inference task: helper distances, per-layer channels, gate weights and Top-K experts
for M tokens in each of L layers; the policy selects experts layer by layer (decoding for M = 1,
prefilling for M > 1) and the sample's metrics are summed over layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax import channel, costs, gating, montecarlo, policies, similarity
from sift_jax.errors import ConfigError
from sift_jax.provenance import provenance
from sift_jax.scenario import Scenario, validate
from sift_jax.stats import Stat

__all__ = ["METRICS", "SimResult", "TaskMetrics", "simulate"]

METRICS = ("energy_per_token_j", "uplink_energy_j", "local_energy_j", "deviation_bound", "replace_rate", "skip_rate",
           "infeasible_rate", "latency_s")
PAIRED_METRIC = "energy_diff_j"  # E_a - E_b per task (J per token) of two bit loadings on the same samples
REGIMES = ("slow", "fast")
BASELINES = ("topk", "topk-ideal", "wdmoe")


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
        """The JSON form of DESIGN.md (`sift-jax simulate --json`).

        Args:
            preset: preset name recorded in the output (None when the scenario is not a preset).

        Returns:
            A dict of plain Python values: preset, policy, samples, seed, metrics ({name: Stat.to_dict()}),
            info and provenance.
        """
        return {"preset": preset, "policy": self.policy, "samples": self.samples, "seed": self.seed,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()}, "info": self.info,
                "provenance": self.provenance}


@dataclasses.dataclass(frozen=True)
class TaskMetrics:
    """Per-sample metric function (hashable, so it is a static jit argument).

    Call with (key, (scenario, tables)) -> {metric: (value, valid)}: `simulate` is `montecarlo.run` of
    this function; use it directly to stack several scenarios as points of one compiled run.

    Attributes:
        policy: a name from `sj.policies.names()`. regime: "slow" or "fast" fading.
        bits: fast-fading bit loading ("uniform", "closed-form"/"dynamic", "dp") or None; or a tuple of
            them: one selection per layer, loaded by each rule, with keys "<bits>/<metric>" (`key`), so
            the curves of one policy under several bit loadings cost one selection (what `sweep` runs);
            then also the paired energy difference of every two of them (`pairs`, `pair_key`), valid where
            both are: its CI is far tighter than two independent CIs, since both see the same samples.
        options: sorted (name, value) pairs passed to the policy.

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
        return tuple((a, b) for i, a in enumerate(loads) for b in loads[i + 1:])

    @staticmethod
    def pair_key(a: str, b: str) -> str:
        """Output key of the paired energy difference E_a - E_b of bit loadings a and b ("<a>|<b>/<metric>")."""
        return f"{a}|{b}/{PAIRED_METRIC}"

    def layer(self, sc: Scenario, distance_m, gain, g, topk, table) -> list:
        """[(Decision, latency s, uplink energy J)] of one layer, one entry per bit loading (`bit_loadings`).

        gain: float[N-1] (slow) or float[N-1, Q] per-slot gains (fast); g, topk: [M, K]; table: [N, N+1].
        Under fast fading the selection runs once and every bit loading loads its slots
        (`fastfading.layer_decisions_with_info`). The uplink energy is summed from the helpers' own energies
        (not the decision's total minus the user's, which would cancel catastrophically in float32 where
        the user dominates); latency uses the downlink gain of the regime (fast: the representative gain)."""
        opts = dict(self.options)
        if self.regime == "fast":  # energy_j is the realised energy
            from sift_jax.policies import fastfading
            pairs = fastfading.layer_decisions_with_info(sc, distance_m, gain, g, topk, table, self.policy,
                                                         self.bit_loadings, **opts)
            decisions = [(dec, info.helper_energy_j) for dec, info in pairs]
            link_gain = jnp.full((sc.n_helpers,), opts.get("downlink_gain", 1.0))
        else:
            if sc.n_tokens == 1:
                f = costs.node_costs(sc, distance_m, gain)
                dec = policies.get(self.policy)(sc, f, g[0], topk[0], table, **opts)
                dec = dataclasses.replace(dec, assign=dec.assign[None],
                                          deviation_bound=jnp.reshape(dec.deviation_bound, (1,)))
            else:
                d_e = costs.marginal_costs(sc, distance_m, gain, sc.n_tokens)
                cap = costs.capacities(sc, distance_m, gain)
                dec = policies.get_prefill(self.policy)(sc, d_e, cap, g, topk, table, **opts)
            decisions = [(dec, costs.helper_energy(sc, distance_m, gain, dec.loads[1:]))]
            link_gain = gain
        out = []
        for dec, helper in decisions:
            uplink = jnp.sum(jnp.where((dec.loads[1:] > 0) & jnp.isfinite(helper), helper, 0.0))
            out.append((dec, jnp.max(costs.node_latency(sc, distance_m, link_gain, dec.loads)), uplink))
        return out

    def __call__(self, key, params):
        sc, tables = params
        k_channel, k_gate = jax.random.split(key)
        ch = channel.draw(k_channel, sc, fast=self.regime == "fast")
        g, topk = gating.draw(k_gate, sc)
        per_bits = jax.vmap(self.layer, in_axes=(None, None, 0, 0, 0, 0))(sc, ch.distance_m, ch.gain, g, topk, tables)
        metrics = {}
        for bits, (dec, latency, uplink) in zip(self.bit_loadings, per_bits):
            metrics |= {self.key(bits, name): value for name, value in self._metrics(sc, dec, latency, uplink).items()}
        for a, b in self.pairs:  # paired on common random numbers: one selection, the same channels
            (ea, va), (eb, vb) = (metrics[self.key(x, "energy_per_token_j")] for x in (a, b))
            metrics[self.pair_key(a, b)] = (ea - eb, va & vb)
        return metrics

    def _metrics(self, sc: Scenario, dec, latency, uplink) -> dict:
        """{metric: (value, valid)} of one task from its per-layer decisions [L], latencies and uplink energies."""
        feasible = jnp.all(dec.feasible)
        # Baselines always execute their selection (lost experts count as skips), so their metrics
        # average over every sample; siftmoe/oracle have no selection where infeasible.
        executed = jnp.bool_(True) if self.policy in BASELINES else feasible
        slots = sc.n_layers * sc.n_tokens * sc.top_k
        user = costs.user_energy(sc, dec.loads[:, 0])  # [L] eq. (3); 0 for an unused user
        return {
            "energy_per_token_j": (jnp.sum(dec.energy_j) / sc.n_tokens, executed),
            "uplink_energy_j": (jnp.sum(uplink) / sc.n_tokens, executed),
            "local_energy_j": (jnp.sum(jnp.where(jnp.isfinite(user), user, 0.0)) / sc.n_tokens, executed),
            "deviation_bound": (jnp.mean(dec.deviation_bound), executed),
            "replace_rate": (jnp.sum(dec.n_replaced) / slots, executed),
            "skip_rate": (jnp.sum(dec.n_skipped) / slots, executed),
            "infeasible_rate": (1.0 - feasible.astype(jnp.result_type(float)), jnp.bool_(True)),
            "latency_s": (jnp.sum(latency), executed),
        }


def check_policy(policy: str, regime: str = "slow", bits: str | None = None) -> None:
    """Raise ConfigError unless policy, fading regime and bit loading name a runnable combination."""
    if regime not in REGIMES:
        raise ConfigError("fading", regime, f"one of {', '.join(REGIMES)}")
    policies.get(policy)
    if regime == "slow" and bits is not None:
        raise ConfigError("bits", bits, "only with fading='fast' (slow fading sends bits uniformly, Remark 5)")
    if regime == "fast":
        from sift_jax.policies import fastfading
        fastfading.check_bits(policy, bits)


def check_tables(sc: Scenario, tables) -> jax.Array:
    """Validate a mismatch table stack float[L, N, N+1] (or one [N, N+1] table used for every layer)."""
    arr = np.asarray(tables, dtype=np.float64)
    if arr.shape == (sc.n_nodes, sc.n_nodes + 1):
        arr = np.broadcast_to(arr, (sc.n_layers,) + arr.shape)
    if arr.shape != (sc.n_layers, sc.n_nodes, sc.n_nodes + 1):
        raise ConfigError("table", f"array of shape {arr.shape}",
                          f"shape ({sc.n_layers}, {sc.n_nodes}, {sc.n_nodes + 1}) or ({sc.n_nodes}, {sc.n_nodes + 1})")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError("table", "an array with negative or non-finite entries", "finite values >= 0")
    return jnp.asarray(arr, dtype=jnp.result_type(float))


def simulate(sc: Scenario, policy: str = "siftmoe", samples: int = 100_000, seed: int = 0,
             chunk_size: int | None = None, table=None, fading: str = "slow", bits: str | None = None,
             progress: Callable[[int], None] | None = None, **options) -> SimResult:
    """Monte Carlo estimate of a policy's metrics (see `METRICS`) with 95% CIs and quantiles.

    Memory is O(chunk_size); sample i is always the same task whatever chunk_size or device count.

    Args:
        sc: the scenario (validated here). policy: a name from `sj.policies.names()`.
        samples: inference tasks to simulate. seed: sample i uses `fold_in(key(seed), i)`.
        chunk_size: samples per compiled call (memory); results do not depend on it.
        table: mismatch table(s) [L, N, N+1] or [N, N+1]; default `similarity.synthetic_tables(sc)`.
        fading: "slow" (gain per layer) or "fast" (gain per slot; see policies/fastfading.py).
        bits: fast-fading bit loading ("uniform", "closed-form"/"dynamic", "dp"); None under slow fading.
        progress: callback with the number of samples finished.
        **options: passed to the policy (e.g. share_substitutes=False, threshold=0.5 for wdmoe).

    Returns:
        A `SimResult`: `.metrics[name]` is a `Stat` per name in `METRICS` (energy_per_token_j in J,
        latency_s in s per task, rates as fractions), plus the inputs and provenance.

    Raises:
        ConfigError: invalid scenario, policy, fading/bits combination, table, samples, seed or chunk size.

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
    check_policy(policy, fading, bits)
    if sc.n_tokens > 1:
        policies.get_prefill(policy)  # name check for prefilling
    tables = similarity.synthetic_tables(sc) if table is None else check_tables(sc, table)
    fn = TaskMetrics(policy=policy, regime=fading, bits=bits, options=tuple(sorted(options.items())))
    # a leading point axis added on the host (eager jnp indexing costs ~0.5 ms per leaf and call)
    params = jax.tree.map(lambda x: np.asarray(x, jax.dtypes.canonicalize_dtype(np.asarray(x).dtype))[None],
                          (sc, tables))
    size = montecarlo.check_run_args(samples, seed, chunk_size)
    (metrics,) = montecarlo.run(fn, params, 1, samples, seed, size, progress)
    info = {"regime": fading, "bits": bits, "options": dict(options)}
    return SimResult(metrics=metrics, scenario=sc, policy=policy, samples=samples, seed=seed, chunk_size=size,
                     info=info, provenance=provenance())
