"""simulate's per-task aggregation (`TaskMetrics._metrics`) against NumPy formulas written from the docs.

`SimResult`'s documentation defines each metric of one task from its L per-layer decisions:
energy_per_token_j = sum_l energy_j[l] / M, split into uplink_energy_j = sum_l uplink[l] / M and
local_energy_j = sum_l E_UE(loads[l, 0]) / M (eq. 3); deviation_bound = the mean of the per-layer
(per-token) bounds; replace_rate and skip_rate = sum of n_replaced / n_skipped over the L x M x K Top-K
slots; infeasible_rate = 1 if some layer is infeasible; latency_s = sum_l latency[l]. SiftMoE (an
optimiser) has no selection where a layer is infeasible, so its metrics are valid only when every layer
is feasible; baselines always execute their selection, so theirs are always valid. infeasible_rate is
valid for every task.

The decisions are built by hand (no policy runs), and the expected values use NumPy and the independent
`sift_jax.testing.numpy_reference.user_energy`. A second part runs `sj.simulate` on a scenario where some
but not all tasks are infeasible and checks the counts against a NumPy re-derivation of each sample
(channel and gate draws of the same keys, NumPy node costs, NumPy exact decoding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sift_jax as sj
from sift_jax import montecarlo
from sift_jax.policies.decision import Decision
from sift_jax.simulate import TaskMetrics
from sift_jax.testing import numpy_reference as ref

BUILT_IN = (
    "energy_per_token_j",
    "uplink_energy_j",
    "local_energy_j",
    "deviation_bound",
    "replace_rate",
    "skip_rate",
    "infeasible_rate",
    "latency_s",
)


def _task(rng, sc, infeasible_layer=None, optimiser=True):
    """Hand-built per-layer decisions of one task (NumPy arrays) and their latencies and uplink energies.

    Each layer serves its M tokens with a random assignment of the K slots to nodes (-1 = skip); node 0
    (the user) serves loads[l, 0] tokens and the helpers some energy, so energy_j = uplink + E_UE. An
    optimiser's infeasible layer is zeroed (no selection); a baseline's keeps its numbers."""
    n, k, m, n_layers = sc.n_nodes, sc.top_k, sc.n_tokens, sc.n_layers
    p = ref.params_of(sc)
    topk = np.stack([rng.permutation(n)[:k] for _ in range(n_layers * m)]).reshape(n_layers, m, k)
    assign = np.where(rng.uniform(size=topk.shape) < 0.6, topk, rng.integers(-1, n, topk.shape))
    assign[0, 0, 0] = (topk[0, 0, 0] + 1) % n  # at least one replaced slot,
    assign[0, 0, k - 1] = -1  # one skipped slot
    assign[-1, -1, 0] = 0  # and one token on the user's own expert
    loads = (assign[:, :, :, None] == np.arange(n)).any(2).sum(1).astype(np.int32)  # [L, N] tokens per node
    uplink = np.where(loads[:, 1:].sum(1) > 0, rng.uniform(1e-4, 3e-3, n_layers), 0.0)
    energy = uplink + ref.user_energy(p, loads[:, 0].astype(np.float64))
    assert np.all(np.isfinite(energy))
    dev = rng.uniform(0.0, 2.0, (n_layers, m))
    n_replaced = ((assign >= 0) & (assign != topk)).sum((1, 2))
    n_skipped = (assign < 0).sum((1, 2))
    latency = rng.uniform(0.01, 0.07, n_layers)
    feasible = np.ones(n_layers, bool)
    if infeasible_layer is not None:
        feasible[infeasible_layer] = False
        if optimiser:
            lay = infeasible_layer
            assign[lay], loads[lay], energy[lay], dev[lay] = -1, 0, 0.0, 0.0
            n_replaced[lay] = n_skipped[lay] = 0
            uplink[lay] = 0.0
    if m == 1:  # decoding shapes: assign [L, K], deviation [L]
        assign, dev = assign[:, 0], dev[:, 0]
    return dict(
        assign=assign,
        loads=loads,
        energy_j=energy,
        deviation_bound=dev,
        feasible=feasible,
        n_replaced=n_replaced,
        n_skipped=n_skipped,
        latency=latency,
        uplink=uplink,
    )


def _expected(sc, t):
    """The documented per-task metrics, in NumPy (float64)."""
    n_layers, m, k = sc.n_layers, sc.n_tokens, sc.top_k
    local = ref.user_energy(ref.params_of(sc), t["loads"][:, 0].astype(np.float64))
    return {
        "energy_per_token_j": t["energy_j"].sum() / m,
        "uplink_energy_j": t["uplink"].sum() / m,
        "local_energy_j": local.sum() / m,
        "deviation_bound": t["deviation_bound"].mean(),
        "replace_rate": t["n_replaced"].sum() / (n_layers * m * k),
        "skip_rate": t["n_skipped"].sum() / (n_layers * m * k),
        "infeasible_rate": float(not t["feasible"].all()),
        "latency_s": t["latency"].sum(),
    }


def _run_metrics(policy, sc, t):
    dec = Decision(
        assign=jnp.asarray(t["assign"], jnp.int32),
        loads=jnp.asarray(t["loads"]),
        energy_j=jnp.asarray(t["energy_j"], jnp.float32),
        deviation_bound=jnp.asarray(t["deviation_bound"], jnp.float32),
        feasible=jnp.asarray(t["feasible"]),
        n_replaced=jnp.asarray(t["n_replaced"], jnp.int32),
        n_skipped=jnp.asarray(t["n_skipped"], jnp.int32),
    )
    out = TaskMetrics(policy)._metrics(
        sc, dec, jnp.asarray(t["latency"], jnp.float32), jnp.asarray(t["uplink"], jnp.float32)
    )
    return {name: (float(v), bool(ok)) for name, (v, ok) in out.items()}


@pytest.mark.parametrize("tokens,layers", [(1, 3), (4, 2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_feasible_task_matches_numpy(tokens, layers, seed):
    """Every layer feasible: optimiser and baseline report the same values, all valid."""
    sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=tokens, n_layers=layers)
    t = _task(np.random.default_rng(seed), sc)
    want = _expected(sc, t)
    assert want["replace_rate"] > 0 and want["skip_rate"] > 0 and want["local_energy_j"] > 0  # non-trivial task
    np.testing.assert_allclose(
        want["uplink_energy_j"] + want["local_energy_j"], want["energy_per_token_j"], rtol=1e-12
    )  # the hand-built split adds up
    for policy in ("siftmoe", "topk"):
        got = _run_metrics(policy, sc, t)
        assert set(BUILT_IN) <= set(got)
        for name in BUILT_IN:
            value, valid = got[name]
            assert valid, (policy, name)
            np.testing.assert_allclose(value, want[name], rtol=2e-6, atol=1e-12, err_msg=f"{policy} {name}")


@pytest.mark.parametrize("tokens,layers", [(1, 3), (4, 2)])
def test_infeasible_layer_invalidates_optimiser_not_baseline(tokens, layers):
    """One infeasible layer: SiftMoE's task counts only in infeasible_rate (value 1); a baseline's task
    keeps every metric valid, computed over all layers including the infeasible one."""
    sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=tokens, n_layers=layers)
    opt = _task(np.random.default_rng(7), sc, infeasible_layer=1, optimiser=True)
    got = _run_metrics("siftmoe", sc, opt)
    assert got["infeasible_rate"] == (1.0, True)
    for name in BUILT_IN:
        if name != "infeasible_rate":
            assert not got[name][1], name
    base = _task(np.random.default_rng(7), sc, infeasible_layer=1, optimiser=False)
    want = _expected(sc, base)
    assert want["infeasible_rate"] == 1.0
    got = _run_metrics("topk", sc, base)
    for name in BUILT_IN:
        value, valid = got[name]
        assert valid, name
        np.testing.assert_allclose(value, want[name], rtol=2e-6, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------------------------------------------
# sj.simulate with some infeasible tasks
# ---------------------------------------------------------------------------------------------------

SAMPLES = 400
# Mixtral decoding, 2 layers, deadline 29 ms: the experts' 27.35 ms load leaves 1.65 ms for the rest, so
# whether a helper meets the deadline depends on its channel draw. Measured with seed 0 (and re-derived
# below in NumPy): about 28% of the tasks have a layer where SiftMoE finds no feasible selection.
INFEASIBLE_SC = dict(n_tokens=1, n_layers=2, deadline_s=0.029)


def _numpy_tasks(sc, samples, seed):
    """Per sample, from the draws of simulate's keys: NumPy node costs f [S, L, N] (float64), g, topk."""
    keys = montecarlo.sample_keys(seed, jnp.arange(samples))

    def draws(key):  # TaskMetrics.__call__ splits each sample key into (channel, gates)
        k_channel, k_gate = jax.random.split(key)
        ch = sj.channel.draw(k_channel, sc)
        g, topk = sj.gating.draw(k_gate, sc)
        return ch.distance_m, ch.gain, g[:, 0], topk[:, 0]

    d, h, g, topk = (np.asarray(x) for x in jax.jit(jax.vmap(draws))(keys))
    f = ref.node_costs(ref.params_of(sc), d[:, None, :].astype(np.float64), h.astype(np.float64))
    return f, g, topk


def test_simulate_counts_infeasible_tasks_against_numpy():
    sc = sj.presets.get("mixtral-8x7b").replace(**INFEASIBLE_SC)
    res = sj.simulate(sc, policy="siftmoe", samples=SAMPLES, seed=0).metrics
    rate, energy = res["infeasible_rate"], res["energy_per_token_j"]
    assert 0.1 < rate.mean < 0.6  # some, not all, tasks are infeasible
    assert rate.n == SAMPLES and rate.n_invalid == 0  # every task counts in the rate
    for name in BUILT_IN:
        if name != "infeasible_rate":  # the other metrics average over the feasible tasks only
            assert res[name].n + res[name].n_invalid == SAMPLES, name
            assert res[name].n == round(SAMPLES * (1 - rate.mean)), name
    # the same tasks in NumPy: exact decoding (node-set enumeration, float64) of every layer
    f, g, topk = _numpy_tasks(sc, SAMPLES, 0)
    tables = np.asarray(sj.similarity.synthetic_tables(sc), np.float64)  # [L, N, N+1]
    s, n_layers, n = f.shape
    out = ref.decode_numpy(
        f.reshape(-1, n),
        g.reshape(s * n_layers, -1),
        topk.reshape(s * n_layers, -1),
        np.broadcast_to(tables[None], (s,) + tables.shape).reshape(-1, n, n + 1),
        float(sc.eta),
    )
    feasible = out["feasible"].reshape(s, n_layers).all(1)
    per_task = out["energy"].reshape(s, n_layers).sum(1)  # J per token (M = 1)
    # float32 against float64 may flip a task whose cost sits on the deadline or eta boundary
    assert abs(energy.n - feasible.sum()) <= 1, (energy.n, feasible.sum())
    assert abs(rate.mean - (1 - feasible.mean())) <= 1 / SAMPLES
    np.testing.assert_allclose(energy.mean, per_task[feasible].mean(), rtol=1e-5)  # float32 sums


def test_simulate_baseline_counts_every_task_against_numpy():
    """Practical Top-K on the same tasks: infeasible = some Top-K expert's node misses the deadline
    (f = inf, NumPy costs), yet every task counts in every metric."""
    sc = sj.presets.get("mixtral-8x7b").replace(**INFEASIBLE_SC)
    res = sj.simulate(sc, policy="topk", samples=SAMPLES, seed=0).metrics
    f, _, topk = _numpy_tasks(sc, SAMPLES, 0)
    lost = ~np.isfinite(np.take_along_axis(f, topk, axis=2))  # [S, L, K]
    infeasible = lost.any((1, 2))
    assert 0 < infeasible.mean() < 1
    assert abs(res["infeasible_rate"].mean - infeasible.mean()) <= 1 / SAMPLES
    for name in BUILT_IN:
        assert res[name].n == SAMPLES and res[name].n_invalid == 0, name
    # lost slots count as skips: the skip rate is the share of lost slots among the L x M x K
    np.testing.assert_allclose(res["skip_rate"].mean, lost.mean(), atol=1 / (SAMPLES * lost[0].size))
