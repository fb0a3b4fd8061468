"""Latency/energy model against an independent float64 NumPy formulation, and Prop. 2's structure."""

import jax.numpy as jnp
import numpy as np
import pytest

import sift_jax as sj
from sift_jax.scenario import Scenario
from sift_jax.testing import numpy_reference as ref


def _random_scenario(rng, n_nodes=6, cap=False):
    return Scenario(
        n_nodes=n_nodes,
        bandwidth_hz=rng.uniform(0.5e6, 3e6, n_nodes - 1),
        deadline_s=rng.uniform(0.02, 0.5),
        hidden_bits=rng.uniform(1e4, 7e4),
        expert_flops=rng.uniform(1e6, 5e8),
        helper_flops_per_s=rng.uniform(1e11, 1e13, n_nodes - 1),
        user_flops_per_s=rng.uniform(1e11, 1e13),
        helper_load_time_s=rng.uniform(0, 5e-3, n_nodes - 1),
        user_load_time_s=rng.uniform(0, 5e-3),
        user_load_power_w=rng.uniform(1, 100),
        user_compute_power_w=rng.uniform(1, 300),
        pathloss_exponent=rng.uniform(2.5, 4.0),
        max_tx_power_w=rng.uniform(0.05, 0.5) if cap else np.inf,
    )


def _loads_and_channel(rng, sc):
    d = rng.uniform(10, 150, sc.n_nodes - 1)
    h = rng.gamma(2.0, 0.5, sc.n_nodes - 1)
    loads = rng.integers(0, 40, (64, sc.n_nodes))
    return d, h, loads


@pytest.mark.parametrize("cap", [False, True])
def test_load_energy_matches_numpy_float32(cap):
    rng = np.random.default_rng(1 + cap)
    compared = 0
    for _ in range(30):
        sc = _random_scenario(rng, cap=cap)
        d, h, loads = _loads_and_channel(rng, sc)
        got = np.asarray(
            sj.costs.load_energy(sc, jnp.asarray(d, jnp.float32), jnp.asarray(h, jnp.float32), jnp.asarray(loads))
        )
        p = ref.params_of(sc)
        want = np.concatenate([ref.user_energy(p, loads[:, 0])[:, None], ref.helper_energy(p, d, h, loads[:, 1:])], 1)
        # feasibility decisions within float32 rounding of a constraint boundary may differ: skip those
        _, r_dn = ref.rates(p, d, h, 1.0)
        t_up = p["deadline_s"] - loads[:, 1:] * (p["expert_flops"] / p["helper_flops_per_s"] + p["hidden_bits"] / r_dn)
        margin = np.concatenate([np.full((64, 1), np.inf), np.abs(t_up - p["helper_load_time_s"]) / p["deadline_s"]], 1)
        clear = (margin > 1e-4) & ~(np.isfinite(want) & (want > 1e37))  # float32 overflows above ~3.4e38
        assert not np.any(np.isnan(got))
        np.testing.assert_array_equal(np.isinf(got)[clear], np.isinf(want)[clear])
        both = clear & np.isfinite(want) & (want > 0)
        # E = c (2^x - 1) with x = D b / (B T_up), T_up = T - D gamma: its condition number w.r.t. the
        # float32-rounded inputs is kappa ~ x ln2 (1 + T / T_up). Where kappa <= 20 we require rel 1e-5;
        # beyond, the tolerance scales with kappa (float32 cannot do better than the inputs allow).
        with np.errstate(divide="ignore", invalid="ignore"):
            x = loads[:, 1:] * p["hidden_bits"] / (p["bandwidth_hz"] * t_up)
            kappa = np.concatenate([np.ones((64, 1)), 1 + x * np.log(2) * (1 + p["deadline_s"] / t_up)], 1)
        rtol = 1e-5 * np.maximum(1.0, kappa / 20.0)
        assert np.all(np.abs(got[both] - want[both]) <= rtol[both] * want[both])
        compared_well = (both & (kappa <= 20)).sum()
        assert compared_well > 0
        compared += both.sum()
    assert compared > 1000


def test_load_energy_matches_numpy_float64(x64):
    rng = np.random.default_rng(7)
    for _ in range(20):
        sc = _random_scenario(rng, cap=bool(rng.integers(2)))
        d, h, loads = _loads_and_channel(rng, sc)
        got = np.asarray(sj.costs.load_energy(sc, jnp.asarray(d), jnp.asarray(h), jnp.asarray(loads)))
        p = ref.params_of(sc)
        want = np.concatenate([ref.user_energy(p, loads[:, 0])[:, None], ref.helper_energy(p, d, h, loads[:, 1:])], 1)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=1e-7)  # XLA exp/log, conditioning


def test_node_costs_and_capacities_match_reference(x64):
    rng = np.random.default_rng(3)
    checked_exact = []
    for _ in range(40):
        sc = _random_scenario(rng, cap=bool(rng.integers(2)))
        d, h, _ = _loads_and_channel(rng, sc)
        p = ref.params_of(sc)
        np.testing.assert_allclose(
            np.asarray(sj.costs.node_costs(sc, jnp.asarray(d), jnp.asarray(h))), ref.node_costs(p, d, h), rtol=1e-9
        )
        cap = np.asarray(sj.costs.capacities(sc, jnp.asarray(d), jnp.asarray(h)))
        brute = ref.capacities_brute(p, d, h, 3000)
        by_physics = ref.capacities_brute(p, d, h, 3000, overflow=False)
        exact = brute == by_physics  # limited by deadline / load time / power cap: must agree exactly
        np.testing.assert_array_equal(np.minimum(cap, 3000)[exact], brute[exact])
        # limited by energies beyond the float64 range (~1e308 J): agree up to the rounding of that edge
        assert np.all(np.abs(np.minimum(cap, 3000) - brute)[~exact] <= 2)
        checked_exact.append(exact[1:].sum())
    assert sum(checked_exact) > 10


def test_marginal_costs_convex_for_helpers_and_sum_to_energy(x64):
    rng = np.random.default_rng(5)
    for _ in range(20):
        sc = _random_scenario(rng)
        d, h, _ = _loads_and_channel(rng, sc)
        de = np.asarray(sj.costs.marginal_costs(sc, jnp.asarray(d), jnp.asarray(h), 30))
        assert de.shape == (sc.n_nodes, 30)
        helpers = de[1:]
        fin = np.isfinite(helpers[:, 1:])
        assert np.all(helpers[:, 1:][fin] >= helpers[:, :-1][fin] * (1 - 1e-9))  # Prop. 2: discrete convexity
        assert np.all(np.diff(np.isinf(de).astype(int), axis=1) >= 0)  # once infeasible, always
        full = np.asarray(sj.costs.load_energy(sc, jnp.asarray(d), jnp.asarray(h), jnp.full((sc.n_nodes,), 7)))
        ok = np.isfinite(full)
        np.testing.assert_allclose(de[:, :7].sum(1)[ok], full[ok], rtol=1e-9)


def test_energy_non_increasing_in_uplink_time_and_bandwidth(x64):
    sc = Scenario(n_nodes=2)
    t = jnp.linspace(1e-3, 1.0, 200)
    e = np.asarray(sj.costs.uplink_energy(sc, jnp.array([100.0]), jnp.array([1.0]), 5e5, t[:, None]))[:, 0]
    assert np.all(np.diff(e) <= 0)
    d, h = jnp.array([120.0]), jnp.array([0.7])
    es = [
        float(sj.costs.load_energy(sc.replace(bandwidth_hz=b), d, h, jnp.array([0, 20]))[1])
        for b in np.linspace(0.3e6, 3e6, 30)
    ]
    assert np.all(np.diff(es) <= 0)


def test_no_nan_on_extreme_inputs():
    sc = Scenario(n_nodes=3)
    loads = jnp.array([[0, 10**6, 10**9], [10**9, 1, 0], [1, 0, 500]])
    e = np.asarray(sj.costs.load_energy(sc, jnp.array([1e-3, 1e6]), jnp.array([1e-30, 1e30]), loads))
    assert not np.any(np.isnan(e))
    de = np.asarray(sj.costs.marginal_costs(sc, jnp.array([149.0, 150.0]), jnp.array([1e-12, 1e-3]), 600))
    assert not np.any(np.isnan(de))


def test_node_latency_within_deadline_when_feasible(x64):
    rng = np.random.default_rng(11)
    sc = _random_scenario(rng)
    d, h, loads = _loads_and_channel(rng, sc)
    e = np.asarray(sj.costs.load_energy(sc, jnp.asarray(d), jnp.asarray(h), jnp.asarray(loads)))
    lat = np.asarray(sj.costs.node_latency(sc, jnp.asarray(d), jnp.asarray(h), jnp.asarray(loads)))
    ok = np.isfinite(e) & (loads > 0)
    assert np.all(lat[ok] <= sc.deadline_s * (1 + 1e-12))
    assert np.all(lat[loads == 0] == 0)


def test_node_latency_matches_numpy_reference(x64):
    """Eqs. (2) and (9) against `ref.node_latency` on random scenarios with per-helper bandwidths, FLOP
    rates and load times: the user branch, unused nodes (exactly 0), helpers whose load hides behind the
    uplink (T_n = T exactly) and helpers whose load time exceeds T_up, with T_up > 0 and T_up <= 0."""
    rng = np.random.default_rng(13)
    seen = dict.fromkeys(("user", "unused", "hidden", "load_decides", "load_decides_t_up_neg"), 0)
    for i in range(16):
        sc = _random_scenario(rng, cap=bool(rng.integers(2)))
        if i % 2:  # load times of 10-90% of the deadline: 0 < T_up < T_n,load becomes common
            sc = sc.replace(helper_load_time_s=rng.uniform(0.1, 0.9, sc.n_nodes - 1) * sc.deadline_s)
        d, h, loads = _loads_and_channel(rng, sc)
        p = ref.params_of(sc)
        _, r_dn = ref.rates(p, d, h, 1.0)
        gamma = p["expert_flops"] / p["helper_flops_per_s"] + p["hidden_bits"] / r_dn  # phi/C_n + b/R_n,UE
        # 16 more rows with helper loads past the deadline (T_up <= 0): the load time decides there too
        over = np.concatenate([loads[:16, :1], np.ceil(p["deadline_s"] / gamma) + rng.integers(0, 5, (16, 1))], 1)
        loads = np.concatenate([loads, over.astype(loads.dtype)])
        loads[rng.uniform(size=loads.shape) < 0.2] = 0
        for name in ("bandwidth_hz", "helper_flops_per_s", "helper_load_time_s"):
            assert p[name].shape == (sc.n_nodes - 1,) and np.ptp(p[name]) > 0  # really per helper
        got = np.asarray(sj.costs.node_latency(sc, jnp.asarray(d), jnp.asarray(h), jnp.asarray(loads)))
        want = ref.node_latency(p, d, h, loads)
        assert got.shape == want.shape == loads.shape and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        assert np.all(got[loads == 0] == 0.0)
        # which branch each helper took, from the model's own quantities
        busy = loads[:, 1:] * gamma
        t_up = p["deadline_s"] - busy
        used = loads[:, 1:] > 0
        hidden = used & (t_up >= p["helper_load_time_s"])
        load_decides = used & (t_up < p["helper_load_time_s"])
        np.testing.assert_allclose(got[:, 1:][hidden], p["deadline_s"], rtol=1e-12)  # uplink stretched to T
        load_time = np.broadcast_to(p["helper_load_time_s"], busy.shape)
        np.testing.assert_allclose(got[:, 1:][load_decides], (load_time + busy)[load_decides], rtol=1e-12)
        assert np.all(got[:, 1:][load_decides] > p["deadline_s"])
        user = loads[:, 0] > 0
        t_user = p["user_load_time_s"] + loads[:, 0] * p["expert_flops"] / p["user_flops_per_s"]
        np.testing.assert_allclose(got[user, 0], t_user[user], rtol=1e-12)
        seen["user"] += user.sum()
        seen["unused"] += (loads == 0).sum()
        seen["hidden"] += hidden.sum()
        seen["load_decides"] += (load_decides & (t_up > 0)).sum()
        seen["load_decides_t_up_neg"] += (load_decides & (t_up <= 0)).sum()
    assert all(count >= 50 for count in seen.values()), seen
    # batch dimensions beyond one: [10, 8, N] loads give [10, 8, N] latencies
    got = np.asarray(sj.costs.node_latency(sc, jnp.asarray(d), jnp.asarray(h), jnp.asarray(loads.reshape(10, 8, -1))))
    np.testing.assert_allclose(got, want.reshape(10, 8, -1), rtol=1e-12, atol=0)
