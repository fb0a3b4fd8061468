"""Latency and energy model (paper eqs. 1-3, 6-10, 17-18, 21; Prop. 2).

A helper serving D tokens in a layer spends D (phi/C_n + b/R_n,UE) on compute and downlink and gives
the uplink all the time left, T_up(D) = T - D (phi/C_n + b/R_n,UE) (energy is non-increasing in the
uplink time, eq. 10). Loading the expert (T_n,load) overlaps the uplink, so a load is feasible iff
T_up(D) > 0, T_up(D) >= T_n,load and, with a power cap, the needed power is <= p_max.
Infeasible loads cost `+inf`; no NaN is produced. Node 0 is the user, nodes 1..N-1 helpers.

Worked numbers used in the examples (N = 3, path-loss exponent 0, h = 1): the user loads in 0.5 ms and
computes phi/C_UE = 1 ms per token, both at 10 W, so E_UE(D) = 5 mJ + 10 mJ D within T = 3 ms (D <= 2).
A helper sees downlink SNR 3e-6 W / (N0 B = 1e-6 W) = 3, R_dn = B log2(4) = 2 Mbit/s, so each token
costs phi/C_n + b/R_dn = 1 ms + 1 ms; one token leaves T_up = 1 ms for b = 2 kbit at B = 1 MHz:
E = (2^2 - 1) N0 B T_up / h = 3 nJ; two tokens miss the deadline.
The examples jit the calls (the scenario is a pytree argument), as the simulator does: run eagerly,
every primitive compiles on its own, which is slower for a one-off call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sift_jax.channel import per_helper, rates, uplink_snr_per_watt
from sift_jax.scenario import Scenario

__all__ = ["capacities", "load_energy", "marginal_costs", "node_costs"]

_LN2 = 0.6931471805599453


def _energy_from_exponent(x_ln2: jax.Array, prefactor: jax.Array) -> jax.Array:
    """prefactor * (exp(x_ln2) - 1) without overflow of the intermediate for x_ln2 up to ~100.

    prefactor * expm1(min(x, 20)) * exp(x - min(x, 20)): exactly prefactor * expm1(x) below 20 (times
    1.0), and prefactor * e^x to within 2e-9 (relative) above, where e^-20 is below float32 resolution.
    Two transcendentals per element (the log-domain form exp(x + log prefactor) needed three and
    measured ~10% slower on a bandwidth sweep, BENCHMARKS.md "Sweeps"); it overflows to inf only where
    exp(x - 20) does (x > ~108, i.e. beyond 1e35 J for any prefactor above 1e-12), which is
    infeasible for every cap and counted as such.
    """
    clipped = jnp.minimum(x_ln2, 20.0)
    return prefactor * jnp.expm1(clipped) * jnp.exp(x_ln2 - clipped)


def helper_token_time(sc: Scenario, distance_m: jax.Array, gain: jax.Array) -> jax.Array:
    """Per-token helper time phi/C_n + b/R_n,UE (compute + downlink): float[..., N-1] (s)."""
    _, r_dn = rates(sc, distance_m, gain, uplink_power_w=1.0)
    return sc.expert_flops / per_helper(sc, sc.helper_flops_per_s) + sc.hidden_bits / r_dn


def uplink_energy(sc: Scenario, distance_m, gain, bits, uplink_time_s) -> jax.Array:
    """Minimum user energy to send `bits` in `uplink_time_s` on each helper link, eq. (10) / (22) (J).

    E = (2^{bits / (B T_up)} - 1) N0 B T_up / (d^-alpha G h). Shapes broadcast with [..., N-1].
    Returns `inf` where T_up <= 0 with bits > 0, and where the power cap `max_tx_power_w` is exceeded.
    """
    bw = per_helper(sc, sc.bandwidth_hz)
    snr_w = uplink_snr_per_watt(sc, distance_m, gain)  # 1/W
    ok_time = uplink_time_s > 0
    t = jnp.where(ok_time, uplink_time_s, 1.0)
    x_ln2 = bits / (bw * t) * _LN2
    energy = _energy_from_exponent(x_ln2, t / snr_w)
    power_ok = energy <= sc.max_tx_power_w * t  # the power E / T_up = (2^x - 1)/snr is <= p_max
    energy = jnp.where(ok_time & power_ok, energy, jnp.inf)
    return jnp.where(bits > 0, energy, 0.0)


def helper_energy(sc: Scenario, distance_m, gain, loads) -> jax.Array:
    """E_n^*(D_n), eq. (10) at the optimal uplink time: float[..., N-1] (J), inf if infeasible."""
    gamma = helper_token_time(sc, distance_m, gain)
    t_up = sc.deadline_s - loads * gamma
    load_hidden = t_up >= per_helper(sc, sc.helper_load_time_s)
    energy = uplink_energy(sc, distance_m, gain, loads * sc.hidden_bits, t_up)
    return jnp.where((loads == 0) | load_hidden, energy, jnp.inf)


def user_energy(sc: Scenario, loads) -> jax.Array:
    """E_UE(D), eq. (3): one-off load energy if D > 0 plus D phi/C_UE of compute (J); inf if the
    user misses the deadline, T_UE,load + D phi/C_UE > T."""
    t_cp = loads * sc.expert_flops / sc.user_flops_per_s
    used = loads > 0
    energy = jnp.where(used, sc.user_load_power_w * sc.user_load_time_s, 0.0) + sc.user_compute_power_w * t_cp
    latency = jnp.where(used, sc.user_load_time_s, 0.0) + t_cp
    return jnp.where(latency <= sc.deadline_s, energy, jnp.inf)


def load_energy(sc: Scenario, distance_m: jax.Array, gain: jax.Array, loads: jax.Array) -> jax.Array:
    """Per-node energy for a load vector, eqs. (3) and (10).

    User: E_UE(D), a one-off load energy if D > 0 plus D phi/C_UE of compute. Helper: E_n^*(D), the
    minimum uplink energy for D b bits with the uplink given all the time the helper does not need,
    T_up(D) = T - D (phi/C_n + b/R_n,UE). An unused node (D = 0) costs 0.

    Args:
        sc: the scenario (powers in W, times in s, see `sift_jax.scenario.UNITS`).
        distance_m: float[N-1] user-helper distances (m).
        gain: float[N-1] linear power gains of this layer.
        loads: int or float[..., N] tokens per node (node 0 = user).

    Returns:
        float[..., N] energy (J); `inf` where the node cannot serve its load within the deadline.

    Example:
        Numbers derived in the module docstring.

        >>> import jax, jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, deadline_s=3e-3, bandwidth_hz=1e6, noise_psd_w_per_hz=1e-12,
        ...               helper_power_w=3e-6, pathloss_exponent=0.0, hidden_bits=2e3, expert_flops=1e9,
        ...               user_flops_per_s=1e12, helper_flops_per_s=1e12, user_load_time_s=0.5e-3,
        ...               helper_load_time_s=0.5e-3, user_load_power_w=10.0, user_compute_power_w=10.0)
        >>> d, h = jnp.array([50.0, 80.0]), jnp.ones(2)   # alpha = 0: the distance does not matter
        >>> energy = jax.jit(load_energy)
        >>> E = energy(sc, d, h, jnp.array([2, 1, 2]))
        >>> E.shape, round(float(E[0]), 6), round(float(E[1]) * 1e9, 3), float(E[2])   # J, J, J
        ((3,), 0.025, 3.0, inf)
        >>> [float(e) for e in energy(sc, d, h, jnp.zeros(3, jnp.int32))]      # unused nodes
        [0.0, 0.0, 0.0]
    """
    loads = jnp.asarray(loads)
    e_user = user_energy(sc, loads[..., 0])
    e_help = helper_energy(sc, distance_m, gain, loads[..., 1:])
    return jnp.concatenate([e_user[..., None], e_help], axis=-1)


def node_costs(sc: Scenario, distance_m: jax.Array, gain: jax.Array) -> jax.Array:
    """Decoding cost f_v of serving one token, eq. (21): float[N] (J), inf if infeasible.

    f_UE = P_load T_load + P_cp phi/C_UE; f_n = E_n^*(1) with the residual uplink time of eq. (17).
    Equal to `load_energy` with one token on every node.

    Args:
        sc: the scenario.
        distance_m: float[N-1] user-helper distances (m).
        gain: float[N-1] linear power gains of this layer.

    Returns:
        float[N] energy per node for one token (J), node 0 = user; inf where infeasible.

    Example:
        Numbers derived in the module docstring.

        >>> import jax, jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, deadline_s=3e-3, bandwidth_hz=1e6, noise_psd_w_per_hz=1e-12,
        ...               helper_power_w=3e-6, pathloss_exponent=0.0, hidden_bits=2e3, expert_flops=1e9,
        ...               user_flops_per_s=1e12, helper_flops_per_s=1e12, user_load_time_s=0.5e-3,
        ...               helper_load_time_s=0.5e-3, user_load_power_w=10.0, user_compute_power_w=10.0)
        >>> d, h = jnp.array([50.0, 80.0]), jnp.ones(2)   # alpha = 0: the distance does not matter
        >>> f = jax.jit(node_costs)(sc, d, h)
        >>> f.shape, round(float(f[0]), 6), round(float(f[1]) * 1e9, 3)   # 5 mJ + 10 mJ; 3 nJ
        ((3,), 0.015, 3.0)
    """
    return load_energy(sc, distance_m, gain, jnp.ones((sc.n_nodes,), jnp.int32))


def marginal_costs(sc: Scenario, distance_m: jax.Array, gain: jax.Array, max_load: int) -> jax.Array:
    """Marginal energies dE_v(d) = E_v(d) - E_v(d-1) for d = 1..max_load: float[N, max_load] (J).

    `inf` from the first infeasible load on. Non-decreasing in d for helpers (Prop. 2); for the user the
    first entry carries the one-off load energy (the paper's Prop. 2 omits it; see policies/prefill.py).

    Args:
        sc: the scenario.
        distance_m: float[N-1] user-helper distances (m).
        gain: float[N-1] linear power gains of this layer.
        max_load: number of loads d = 1..max_load to tabulate (static int, typically M).

    Returns:
        float[N, max_load], row v = node v (0 = user), column d-1 = dE_v(d) in J; inf once infeasible.

    Example:
        Numbers derived in the module docstring.

        >>> import jax, jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, deadline_s=3e-3, bandwidth_hz=1e6, noise_psd_w_per_hz=1e-12,
        ...               helper_power_w=3e-6, pathloss_exponent=0.0, hidden_bits=2e3, expert_flops=1e9,
        ...               user_flops_per_s=1e12, helper_flops_per_s=1e12, user_load_time_s=0.5e-3,
        ...               helper_load_time_s=0.5e-3, user_load_power_w=10.0, user_compute_power_w=10.0)
        >>> d, h = jnp.array([50.0, 80.0]), jnp.ones(2)   # alpha = 0: the distance does not matter
        >>> dE = jax.jit(marginal_costs, static_argnums=3)(sc, d, h, 3)
        >>> dE.shape
        (3, 3)
        >>> [round(float(x), 6) for x in dE[0]]   # user: load + 1 token, 1 more token, misses T
        [0.015, 0.01, inf]
        >>> [round(float(x) * 1e9, 3) for x in dE[1]]   # helper: one token (3 nJ), then infeasible
        [3.0, inf, inf]
    """
    d = jnp.arange(max_load + 1)
    table = load_energy(sc, distance_m, gain, jnp.broadcast_to(d[:, None], (max_load + 1, sc.n_nodes)))
    steps = jnp.where(jnp.isfinite(table[1:]), table[1:] - table[:-1], jnp.inf)
    return steps.T


def capacities(sc: Scenario, distance_m: jax.Array, gain: jax.Array) -> jax.Array:
    """Largest feasible load D_v,max per node (paper §3.4): int32[N].

    Closed form from the deadline, the hidden load time and the power cap, refined by bisection on the
    feasibility of `load_energy`, so both always agree (energies beyond the float range count as infeasible).

    Args:
        sc: the scenario.
        distance_m: float[N-1] user-helper distances (m).
        gain: float[N-1] linear power gains of this layer.

    Returns:
        int32[N] tokens per node (node 0 = user); 0 where even one token is infeasible.

    Example:
        Numbers derived in the module docstring.

        >>> import jax, jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, deadline_s=3e-3, bandwidth_hz=1e6, noise_psd_w_per_hz=1e-12,
        ...               helper_power_w=3e-6, pathloss_exponent=0.0, hidden_bits=2e3, expert_flops=1e9,
        ...               user_flops_per_s=1e12, helper_flops_per_s=1e12, user_load_time_s=0.5e-3,
        ...               helper_load_time_s=0.5e-3, user_load_power_w=10.0, user_compute_power_w=10.0)
        >>> d, h = jnp.array([50.0, 80.0]), jnp.ones(2)   # alpha = 0: the distance does not matter
        >>> cap = jax.jit(capacities)(sc, d, h)
        >>> cap
        Array([2, 1, 1], dtype=int32)
        >>> energy = jax.jit(load_energy)
        >>> bool(jnp.isfinite(energy(sc, d, h, cap)).all())    # every node can serve its capacity
        True
        >>> bool(jnp.isinf(energy(sc, d, h, cap + 1)).all())   # and no node one token more
        True
    """
    t = sc.deadline_s
    user = jnp.floor((t - sc.user_load_time_s) * sc.user_flops_per_s / sc.expert_flops)
    gamma = helper_token_time(sc, distance_m, gain)
    by_load = jnp.floor((t - per_helper(sc, sc.helper_load_time_s)) / gamma)
    by_time = jnp.ceil(t / gamma) - 1.0  # T - D gamma > 0
    s_max = jnp.log2(1.0 + sc.max_tx_power_w * uplink_snr_per_watt(sc, distance_m, gain))  # bit/s/Hz
    bw = per_helper(sc, sc.bandwidth_hz)
    by_power = jnp.where(
        jnp.isinf(s_max),
        jnp.inf,
        jnp.floor(s_max * bw * t / (sc.hidden_bits + jnp.where(jnp.isinf(s_max), 0.0, s_max) * bw * gamma)),
    )
    helper = jnp.minimum(jnp.minimum(by_load, by_time), by_power)
    upper = jnp.clip(jnp.concatenate([user[None], helper]), 0, 2**30).astype(jnp.int32) + 1

    def feasible(loads):
        return jnp.isfinite(jnp.diagonal(load_energy(sc, distance_m, gain, jnp.diag(loads))))

    # Bisection for the largest load with finite energy in [0, upper]: feasibility is monotone in D, and
    # this also catches energies beyond the float range (counted as infeasible, like in load_energy).
    def step(_, bounds):
        lo, hi = bounds  # lo feasible, hi infeasible (or the top, when feasible)
        mid = (lo + hi + 1) // 2
        ok = feasible(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, step, (jnp.zeros_like(upper), upper))
    return lo


def node_latency(sc: Scenario, distance_m: jax.Array, gain: jax.Array, loads: jax.Array) -> jax.Array:
    """Per-node completion time for a load vector, eqs. (2) and (9): float[..., N] (s); 0 if unused.

    User: T_UE,load + D phi/C_UE. Helper: max(T_up, T_n,load) + D (phi/C_n + b/R_n,UE) with the uplink
    stretched over all remaining time, T_up = T - D (phi/C_n + b/R_n,UE), which is T when feasible.
    """
    loads = jnp.asarray(loads)
    user = jnp.where(
        loads[..., 0] > 0, sc.user_load_time_s + loads[..., 0] * sc.expert_flops / sc.user_flops_per_s, 0.0
    )
    gamma = helper_token_time(sc, distance_m, gain)
    busy = loads[..., 1:] * gamma
    t_up = jnp.maximum(sc.deadline_s - busy, 0.0)
    helper = jnp.where(loads[..., 1:] > 0, jnp.maximum(t_up, per_helper(sc, sc.helper_load_time_s)) + busy, 0.0)
    return jnp.concatenate([user[..., None], helper], axis=-1)
