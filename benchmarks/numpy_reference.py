"""Independent float64 NumPy formulation of the paper's channel, latency and energy model.

Written straight from the equations of ../shared/paper/SIFTMOE.md (§1.2-§1.3, §3.3-§3.4), without
sharing code with sift_jax. Used as the oracle of tests/test_costs.py and as the baseline of
benchmarks/bench_foundation.py. Parameters come as a plain dict of floats/arrays (SI units).
"""

from __future__ import annotations

import numpy as np


def params_of(sc) -> dict:
    """Plain float64 dict of a Scenario's numeric fields (per-helper fields broadcast to [N-1])."""
    h = sc.n_nodes - 1
    out = {}
    for name in ("deadline_s", "helper_power_w", "noise_psd_w_per_hz", "pathloss_exponent", "gain_up", "gain_down",
                 "hidden_bits", "expert_flops", "user_flops_per_s", "user_load_time_s", "user_load_power_w",
                 "user_compute_power_w", "max_tx_power_w", "min_distance_m", "max_distance_m"):
        out[name] = float(np.asarray(getattr(sc, name)))
    for name in ("bandwidth_hz", "helper_flops_per_s", "helper_load_time_s"):
        out[name] = np.broadcast_to(np.asarray(getattr(sc, name), np.float64), (h,)).copy()
    return out


def rates(p: dict, d: np.ndarray, h: np.ndarray, p_up: float):
    """Eqs. (4)-(5): uplink rate at power p_up and downlink rate (bit/s)."""
    b = p["bandwidth_hz"]
    path = d ** (-p["pathloss_exponent"])
    r_up = b * np.log2(1 + p_up * path * p["gain_up"] * h / (p["noise_psd_w_per_hz"] * b))
    r_dn = b * np.log2(1 + p["helper_power_w"] * path * p["gain_down"] * h / (p["noise_psd_w_per_hz"] * b))
    return r_up, r_dn


def helper_energy(p: dict, d: np.ndarray, h: np.ndarray, load: np.ndarray, overflow: bool = True) -> np.ndarray:
    """E_n^*(D) of eq. (10) at T_up = T - D (phi/C_n + b/R_dn); inf when infeasible (deadline, hidden
    load time, power cap) and, with `overflow`, when the energy exceeds the float64 range."""
    energy, ok = _helper_energy_and_feasible(p, d, h, load, overflow)
    return np.where(load == 0, 0.0, np.where(ok, energy, np.inf))


def _helper_energy_and_feasible(p, d, h, load, overflow):
    _, r_dn = rates(p, d, h, 1.0)
    t_up = p["deadline_s"] - load * (p["expert_flops"] / p["helper_flops_per_s"] + p["hidden_bits"] / r_dn)
    b = p["bandwidth_hz"]
    path_h = d ** (-p["pathloss_exponent"]) * p["gain_up"] * h
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        x = load * p["hidden_bits"] / (b * t_up)
        power = (2.0 ** x - 1) * p["noise_psd_w_per_hz"] * b / path_h
        energy = power * t_up
        log_energy = x * np.log(2) + np.log(p["noise_psd_w_per_hz"] * b * t_up / path_h)
    ok = (t_up > 0) & (t_up >= p["helper_load_time_s"]) & (power <= p["max_tx_power_w"])
    if overflow:
        ok &= log_energy < np.log(np.finfo(np.float64).max)
    return energy, ok | (load == 0)


def user_energy(p: dict, load: np.ndarray) -> np.ndarray:
    """E_UE(D), eq. (3), inf when T_load + D phi/C_UE > T."""
    used = load > 0
    t_cp = load * p["expert_flops"] / p["user_flops_per_s"]
    e = used * p["user_load_power_w"] * p["user_load_time_s"] + p["user_compute_power_w"] * t_cp
    return np.where(used * p["user_load_time_s"] + t_cp <= p["deadline_s"], e, np.inf)


def node_costs(p: dict, d: np.ndarray, h: np.ndarray) -> np.ndarray:
    """f_v of eq. (21) for h: [..., N-1] -> [..., N]."""
    user = user_energy(p, np.ones(h.shape[:-1]))
    return np.concatenate([user[..., None], helper_energy(p, d, h, np.ones_like(h))], axis=-1)


def capacities_brute(p: dict, d: np.ndarray, h: np.ndarray, max_load: int, overflow: bool = True) -> np.ndarray:
    """D_v,max by scanning D = 0..max_load: [N] (capped at max_load). `overflow=False` ignores the
    float64 range (deadline, load time and power cap only)."""
    loads = np.arange(max_load + 1, dtype=np.float64)
    user = np.isfinite(user_energy(p, loads))
    _, helpers = _helper_energy_and_feasible(p, d[None], h[None], loads[:, None] * np.ones_like(h)[None], overflow)
    feas = np.concatenate([user[:, None], helpers], axis=1)  # [D+1, N]
    return np.argmin(np.vstack([feas, np.zeros((1, feas.shape[1]), bool)]), axis=0) - 1


def draw_channel(rng: np.random.Generator, p: dict, n_samples: int, n_layers: int, n_helpers: int, shape_m: int):
    """Distances uniform over the annulus area and Gamma(m, 1/m) gains as sums of exponentials."""
    u = rng.random((n_samples, n_helpers))
    lo2, hi2 = p["min_distance_m"] ** 2, p["max_distance_m"] ** 2
    d = np.sqrt(lo2 + u * (hi2 - lo2))
    h = rng.standard_exponential((n_samples, n_layers, n_helpers, shape_m)).sum(-1) / shape_m
    return d, h
