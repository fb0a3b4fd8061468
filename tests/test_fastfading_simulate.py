"""`sj.simulate(regime="fast")` against an independent per-sample NumPy re-derivation (float64).

`tests/test_fastfading.py` checks the fast-fading layer functions; here the whole Monte Carlo path is
checked: simulate's sample keys (`montecarlo.sample_keys`), the split of each into a channel and a gate key
(`TaskMetrics.__call__`), per-slot gains, the surrogate selection, the slot plan, the bit loading, the
realised energy, the latency and the per-task aggregation, including the `downlink_gain` option (the gain
of the downlink rate R_n,UE, hence of T_up and the latency, under fast fading).

Only the random draws go through the package (`channel.draw(k, sc, fast=True)` and `gating.draw` on the
same keys). Everything else is written here in float64 NumPy from the paper (SIFTMOE.md) and the documented
readings (policies/fastfading.py module docstring), with `sift_jax.testing.numpy_reference` for eqs. (3)-(5):

- per helper, the per-token busy time phi/C_n + b/R_n,UE with R_n,UE at h = downlink_gain (eq. 5), and
  T_up = T - D (phi/C_n + b/R_n,UE) (eq. 17 / Prop. 2); the surrogate selection sees a load as feasible iff
  T_up > 0 and T_up >= T_n,load (no power cap in the preset);
- slots: Q_n = clip(floor(T_up / tau), 1, Q), all of length tau_n = T_up / Q_n;
- bits per slot: "uniform" b D / Q_n; "dynamic" Thm. 3 eq. (26) with r slots left and beta bits left,
  gamma = beta / r + (r - 1) / (r a) log2(h_t E[1/h]), a = 1/(B tau_n), clipped to [0, beta], the last slot
  sending the rest;
- energy per slot eq. (22): (2^{a gamma} - 1) N0 B tau_n / (d^-alpha G_UE h_t); a layer's energy is the user's
  (eq. 3) plus that of every helper that delivers (T_up > 0 and >= T_n,load);
- latency per layer: max over nodes of eq. (2) (user) and eq. (9) (helper: max(T_up, T_n,load) + D busy).

Policies whose selection is trivial here: "topk-ideal" (every Top-K expert on its own node), practical
"topk" (a node serves its tokens in order up to its surrogate capacity, the rest are lost) and "siftmoe"
with eta = 0 (no deviation allowed: the Top-K set when every Top-K node is feasible, else infeasible).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sift_jax as sj
from sift_jax import montecarlo
from sift_jax.testing import numpy_reference as ref

SAMPLES = 128
SEED = 3
GAINS = (1.0, 0.05)  # downlink_gain values; 0.05 slows every downlink, so more helpers miss T_n,load
INV_GAIN_MEAN = 2.0  # E[1/h] of Gamma(2, 1/2) fading (the preset's)

# T - T_n,load = 1.55 ms leaves room for one token only on helpers with a fast enough downlink; slots of
# 1.1 ms give Q_n = 24 or 25 slots
DECODE = dict(n_tokens=1, n_layers=2, deadline_s=0.0289, slot_s=0.0011, n_slots=32)
# 0.3 ms more: at downlink_gain 0.1 about half of the tasks can serve every Top-K expert
SIFT = dict(DECODE, deadline_s=0.0292)
# T - T_n,load = 3.65 ms: capacities of 1 to 4 tokens; floor(T_up / tau) = 13 to 15 against a cap of 14
PREFILL = dict(n_tokens=4, n_layers=2, deadline_s=0.031, slot_s=0.002, n_slots=14)


def _scenario(sizes: dict, **extra):
    return sj.presets.get("mixtral-8x7b").replace(**sizes, **extra)


@jax.jit
@functools.partial(jax.vmap, in_axes=(0, None))
def _draw(key, sc):
    """One sample's draws as TaskMetrics.__call__ makes them: the key split into (channel, gates), per-slot
    gains under fast fading. The scenario is an argument: one compilation per static shape."""
    k_channel, k_gate = jax.random.split(key)
    ch = sj.channel.draw(k_channel, sc, fast=True)
    g, topk = sj.gating.draw(k_gate, sc)
    return ch.distance_m, ch.gain, g, topk


def _draws(sc):
    """simulate's draws of samples 0..SAMPLES-1: distances [S, N-1], slot gains [S, L, N-1, Q], g, topk [S, L, M, K]."""
    d, h, g, topk = (np.asarray(x) for x in _draw(montecarlo.sample_keys(SEED, jnp.arange(SAMPLES)), sc))
    return d.astype(np.float64), h.astype(np.float64), g.astype(np.float64), topk.astype(np.int64)


def _slot_bits(bits: str, total, q, a, h):
    """Bits per slot [..., Q] for total bits [...], q slots used [...], a = 1/(B tau_n) [...], gains h [..., Q]."""
    n_slots = h.shape[-1]
    if bits == "uniform":
        t = np.arange(n_slots)
        return np.where(t < q[..., None], (total / q)[..., None], 0.0)
    out = np.zeros(h.shape)
    beta = total.copy()  # bits still to send
    for t in range(n_slots):  # Thm. 3, eq. (26), with r = q - t slots left (this one included)
        r = q - t
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma = beta / r + (r - 1) / (r * a) * np.log2(h[..., t] * INV_GAIN_MEAN)
        gamma = np.where(r == 1, beta, np.clip(gamma, 0.0, beta))
        gamma = np.where(r >= 1, gamma, 0.0)
        out[..., t] = gamma
        beta = beta - gamma
    return out


def numpy_tasks(sc, policy: str, bits: str, downlink_gain: float) -> dict:
    """Per task (float64 [S]) every checked metric, re-derived from simulate's draws (module docstring).

    Returns a dict with energy (J/token), local (J/token), uplink (J/token, helpers that deliver),
    uplink_loaded (J/token, every loaded helper with finite energy), latency (s/task), infeasible (0/1),
    skip_rate, and executed (bool: the task's metrics count, i.e. every sample for the baselines).
    """
    p = ref.params_of(sc)
    d, h, g, topk = _draws(sc)
    s, n_layers, m, k = topk.shape
    n, q_max = sc.n_nodes, sc.n_slots

    # eq. (5) at the representative downlink gain; per-token helper busy time phi/C_n + b/R_n,UE
    _, r_dn = ref.rates(p, d, np.full(d.shape, downlink_gain), 1.0)  # [S, N-1]
    busy = (p["expert_flops"] / p["helper_flops_per_s"] + p["hidden_bits"] / r_dn)[:, None, :]  # [S, 1, N-1]

    def helper_ok(load):  # the helper can serve `load` tokens: T_up > 0 and T_up >= T_n,load
        t_up = p["deadline_s"] - load * busy
        return (load == 0) | ((t_up > 0) & (t_up >= p["helper_load_time_s"]))

    def user_ok(load):
        return np.isfinite(ref.user_energy(p, load))

    want = (topk[..., None] == np.arange(n)).any(3)  # [S, L, M, N]: token m wants node v
    if policy == "topk":  # practical Top-K: tokens in order, up to the node's capacity
        loads_range = np.arange(m + 1, dtype=np.float64)
        # capacity: the largest load whose every smaller load is feasible (leading feasible loads - 1)
        cap_helper = np.stack([helper_ok(x) for x in loads_range]).cumprod(0).sum(0) - 1  # [S, 1, N-1]
        cap_user = np.cumprod(user_ok(loads_range)).sum() - 1
        cap = np.concatenate(
            [np.full((s, n_layers, 1), cap_user), np.broadcast_to(cap_helper, (s, n_layers, n - 1))], axis=-1
        )  # [S, L, N]
        served = want & (np.cumsum(want, axis=2) <= cap[:, :, None, :])
        slot_served = np.take_along_axis(served, topk, axis=3)  # [S, L, M, K]
        loads = served.sum(2).astype(np.float64)
        tables = np.asarray(sj.similarity.synthetic_tables(sc), np.float64)  # [L, N, N+1], simulate's default
        rows = tables[np.arange(n_layers)[None, :, None, None], topk]  # [S, L, M, K, N+1]: Fbar[topk, :]
        own = np.take_along_axis(rows, topk[..., None], axis=4)[..., 0]  # Fbar[i, i]
        dev = np.sum(g * np.where(slot_served, own, rows[..., n]), axis=-1)  # [S, L, M]
        layer_ok = slot_served.all((2, 3)) & (dev <= float(sc.eta)).all(2)
        lost = (~slot_served).sum((1, 2, 3))
    else:  # topk-ideal, and siftmoe with eta = 0: each Top-K expert on its own node
        loads = want.sum(2).astype(np.float64)
        layer_ok = helper_ok(loads[..., 1:]).all(-1) & user_ok(loads[..., 0])
        lost = np.zeros(s)

    # slot plan, bit loading and realised energy per helper [S, L, N-1]
    hl = loads[..., 1:]
    t_up = p["deadline_s"] - hl * busy
    delivers = (hl > 0) & (t_up > 0) & (t_up >= p["helper_load_time_s"])
    q = np.clip(np.floor(np.where(t_up > 0, t_up, 0.0) / sc.slot_s), 1, q_max)
    tau = np.where(t_up > 0, t_up / q, 1.0)
    bw = p["bandwidth_hz"]
    total = np.where(t_up > 0, hl * p["hidden_bits"], 0.0)
    gamma = _slot_bits(bits, total, q, 1.0 / (bw * tau), h)  # [S, L, N-1, Q]
    path = d[:, None, :, None] ** (-p["pathloss_exponent"]) * p["gain_up"]
    with np.errstate(over="ignore"):
        per_slot = (
            np.expm1(gamma / (bw * tau)[..., None] * np.log(2))
            * (p["noise_psd_w_per_hz"] * bw * tau)[..., None]
            / (path * h)
        )
    helper_energy = np.where(hl > 0, per_slot.sum(-1), 0.0)
    e_user = ref.user_energy(p, loads[..., 0])  # [S, L]
    e_user = np.where(np.isfinite(e_user), e_user, 0.0)
    layer_energy = e_user + np.where(delivers, helper_energy, 0.0).sum(-1)
    uplink = np.where(delivers, helper_energy, 0.0).sum(-1)
    uplink_loaded = np.where((hl > 0) & np.isfinite(helper_energy), helper_energy, 0.0).sum(-1)
    layer_ok = layer_ok & ((hl == 0) | delivers).all(-1)

    # latency, eqs. (2) and (9), the downlink at downlink_gain
    user_lat = np.where(
        loads[..., 0] > 0, p["user_load_time_s"] + loads[..., 0] * p["expert_flops"] / p["user_flops_per_s"], 0
    )
    helper_lat = np.where(hl > 0, np.maximum(np.maximum(t_up, 0.0), p["helper_load_time_s"]) + hl * busy, 0.0)
    latency = np.maximum(user_lat, helper_lat.max(-1))  # [S, L]

    feasible = layer_ok.all(1)
    return dict(
        energy=layer_energy.sum(1) / m,
        local=e_user.sum(1) / m,
        uplink=uplink.sum(1) / m,
        uplink_loaded=uplink_loaded.sum(1) / m,
        latency=latency.sum(1),
        infeasible=1.0 - feasible,
        skip_rate=lost / (n_layers * m * k),
        executed=feasible if policy == "siftmoe" else np.ones(s, bool),
    )


@functools.cache
def _run(sizes: tuple, policy: str, bits: str, downlink_gain: float, eta: float | None = None):
    """(simulate's metrics, NumPy per-task values) for one configuration (cached: tests share the runs)."""
    sc = _scenario(dict(sizes), **({} if eta is None else {"eta": eta}))
    res = sj.simulate(
        sc, policy=policy, samples=SAMPLES, seed=SEED, regime="fast", bits=bits, downlink_gain=downlink_gain
    )
    return res.metrics, numpy_tasks(sc, policy, bits, downlink_gain)


def _check(metrics, ref_tasks, names):
    """simulate's counts, means, standard deviations and maxima against the NumPy tasks (float32 simulate,
    float64 NumPy): the infeasible rate over every task, the other metrics over the executed ones."""
    ok = ref_tasks["executed"]
    inf = metrics["infeasible_rate"]
    assert (inf.n, inf.n_invalid) == (SAMPLES, 0)
    assert inf.mean == pytest.approx(ref_tasks["infeasible"].mean(), abs=1e-12)
    for name, key in names.items():
        stat, want = metrics[name], ref_tasks[key][ok]
        assert (stat.n, stat.n_invalid) == (ok.sum(), SAMPLES - ok.sum()), name
        np.testing.assert_allclose(stat.mean, want.mean(), rtol=1e-5, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(stat.max, want.max(), rtol=1e-5, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(stat.std, want.std(ddof=1), rtol=1e-4, atol=1e-9, err_msg=name)


def test_topk_ideal_decode_uniform_bits_match_numpy_for_two_downlink_gains():
    """Ideal Top-K, one token, uniform bits, downlink_gain 1 and 0.05: simulate's total and local energy per
    token, latency (eqs. 2/9 with the downlink at downlink_gain) and infeasible rate equal the NumPy tasks
    (independent: the slot plan, eq. (22) energies, feasibility and latency; only the draws are shared).
    The downlink gain must matter: helpers that miss T_n,load raise the latency above T and drop out of
    the energy, so the two gains give different values, each matching its own NumPy value."""
    names = {"energy_per_token_j": "energy", "local_energy_j": "local", "latency_s": "latency"}
    runs = [_run(tuple(DECODE.items()), "topk-ideal", "uniform", gain) for gain in GAINS]
    for metrics, tasks in runs:
        _check(metrics, tasks, names)
    (m1, t1), (m2, t2) = runs
    assert 0.2 < t1["infeasible"].mean() < t2["infeasible"].mean()  # a slower downlink loses more helpers
    for name in ("energy_per_token_j", "latency_s", "infeasible_rate"):
        assert abs(m1[name].mean - m2[name].mean) > 1e-4 * abs(m1[name].mean), name
    # latency above the deadline exactly where some helper misses T_n,load
    assert m2["latency_s"].mean > m1["latency_s"].mean > DECODE["n_layers"] * DECODE["deadline_s"]
    # such helpers are loaded with T_up > 0 yet deliver nothing (their energy is left out of the total)
    assert t2["uplink_loaded"].mean() > 2 * t2["uplink"].mean()


def test_topk_ideal_uplink_plus_local_is_total_energy():
    """SimResult documents uplink_energy_j + local_energy_j = energy_per_token_j (both J per token). Ideal
    Top-K under fast fading loads helpers that miss T_n,load and leaves their energy out of the total; the
    uplink energy must then leave it out too, i.e. equal the NumPy uplink energy of the delivering helpers
    (independent: NumPy slot plan and eq. (22) energies; the total and local energies match NumPy above).
    This failed before `fastfading.realised_energy` returned inf for a helper that cannot deliver."""
    for gain in GAINS:
        metrics, tasks = _run(tuple(DECODE.items()), "topk-ideal", "uniform", gain)
        total = metrics["uplink_energy_j"].mean + metrics["local_energy_j"].mean
        np.testing.assert_allclose(total, metrics["energy_per_token_j"].mean, rtol=1e-5, err_msg=str(gain))
        np.testing.assert_allclose(metrics["uplink_energy_j"].mean, tasks["uplink"].mean(), rtol=1e-5)


def test_topk_prefill_dynamic_bits_match_numpy_for_two_downlink_gains():
    """Practical Top-K, four tokens, Thm. 3 bits (eq. 26, clipped): simulate's total, uplink and local
    energy per token, latency, skip rate and infeasible rate equal the NumPy tasks (independent: surrogate
    capacities from T_up >= T_n,load, tokens served in order, slot plan with the cap Q binding for some
    helpers, eq. (26) and eq. (22) in bits). With downlink_gain 0.05 the capacities shrink: more slots are
    lost and the energies change; each gain matches its own NumPy value."""
    names = {
        "energy_per_token_j": "energy",
        "uplink_energy_j": "uplink",
        "local_energy_j": "local",
        "latency_s": "latency",
        "skip_rate": "skip_rate",
    }
    runs = [_run(tuple(PREFILL.items()), "topk", "dynamic", gain) for gain in GAINS]
    for metrics, tasks in runs:
        _check(metrics, tasks, names)
        np.testing.assert_allclose(tasks["uplink"] + tasks["local"], tasks["energy"], rtol=1e-12)
    (m1, t1), (m2, t2) = runs
    assert 0 < t1["skip_rate"].mean() < t2["skip_rate"].mean()
    for name in ("energy_per_token_j", "uplink_energy_j", "skip_rate", "infeasible_rate"):
        assert abs(m1[name].mean - m2[name].mean) > 1e-3 * abs(m1[name].mean), name


def test_siftmoe_eta0_counts_feasible_tasks_against_numpy():
    """SiftMoE with eta = 0 must serve every Top-K expert on its own node; a task is feasible iff every
    Top-K node can serve it with the downlink at downlink_gain 0.1. simulate's n / n_invalid (feasible tasks
    only) and infeasible rate equal the NumPy feasibility, and its means over the feasible tasks (Thm. 3
    bits) equal the NumPy ones (independent as above)."""
    names = {
        "energy_per_token_j": "energy",
        "uplink_energy_j": "uplink",
        "local_energy_j": "local",
        "latency_s": "latency",
    }
    metrics, tasks = _run(tuple(SIFT.items()), "siftmoe", "dynamic", 0.1, eta=0.0)
    assert 0.1 < tasks["executed"].mean() < 0.9  # some, not all, tasks are feasible
    _check(metrics, tasks, names)
