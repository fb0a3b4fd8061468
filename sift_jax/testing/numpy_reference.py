"""Independent float64 NumPy formulations of the paper's model, for tests and benchmarks.

Written straight from the equations of the paper (channel and costs: §1.2-§1.3, §3.3-§3.4; decoding:
Theorem 2's problem stated as an enumeration over node sets), without sharing code with the JAX
implementation in `sift_jax`. The tests use these functions as oracles and the benchmarks as
baselines. Model parameters come as a plain dict of floats/arrays in SI units (`params_of`).

Worked numbers used in the examples (the same as `sift_jax.costs`): N = 3, path-loss exponent 0, h = 1;
the user loads in 0.5 ms and computes 1 ms per token at 10 W (E_UE(D) = 5 mJ + 10 mJ D within T = 3 ms);
a helper's downlink runs at B log2(1 + 3) = 2 Mbit/s, so one token leaves T_up = 1 ms for 2 kbit at
B = 1 MHz: E = (2^2 - 1) N0 B T_up / h = 3 nJ; two tokens miss the deadline.
`worked_example()` returns these parameters.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = [
    "cap_eff",
    "capacities_brute",
    "clustered_instances",
    "decode_numpy",
    "draw_channel",
    "feasible_sets",
    "helper_energy",
    "node_costs",
    "node_latency",
    "params_of",
    "random_instances",
    "rates",
    "user_energy",
    "worked_example",
]


# ------------------------------------------------------------------------------------------------
# channel, latency and energy model
# ------------------------------------------------------------------------------------------------


def params_of(sc) -> dict:
    """Plain float64 dict of a Scenario's numeric fields (per-helper fields broadcast to [N-1]).

    Args:
        sc: a `sift_jax.Scenario`.

    Returns:
        dict name -> float (scalar fields) or float64[N-1] (bandwidth_hz, helper_flops_per_s,
        helper_load_time_s).

    Example:
        >>> from sift_jax.scenario import Scenario
        >>> p = params_of(Scenario(n_nodes=3, deadline_s=3e-3))
        >>> p["deadline_s"], p["bandwidth_hz"].shape
        (0.003, (2,))
    """
    h = sc.n_nodes - 1
    out = {}
    for name in (
        "deadline_s",
        "helper_power_w",
        "noise_psd_w_per_hz",
        "pathloss_exponent",
        "gain_up",
        "gain_down",
        "hidden_bits",
        "expert_flops",
        "user_flops_per_s",
        "user_load_time_s",
        "user_load_power_w",
        "user_compute_power_w",
        "max_tx_power_w",
        "min_distance_m",
        "max_distance_m",
    ):
        out[name] = float(np.asarray(getattr(sc, name)))
    for name in ("bandwidth_hz", "helper_flops_per_s", "helper_load_time_s"):
        out[name] = np.broadcast_to(np.asarray(getattr(sc, name), np.float64), (h,)).copy()
    return out


def worked_example(**fields) -> dict:
    """`params_of` the module docstring's worked numbers (N = 3, path-loss exponent 0, T = 3 ms, B = 1 MHz, ...).

    Args:
        **fields: Scenario fields that replace the worked values (SI units).

    Returns:
        dict as `params_of`.

    Example:
        >>> p = worked_example()
        >>> p["deadline_s"], p["bandwidth_hz"].tolist(), p["user_load_power_w"]
        (0.003, [1000000.0, 1000000.0], 10.0)
    """
    from sift_jax.scenario import Scenario  # the parameter container only; no model code

    sc = Scenario(
        n_nodes=3,
        deadline_s=3e-3,
        bandwidth_hz=1e6,
        noise_psd_w_per_hz=1e-12,
        helper_power_w=3e-6,
        pathloss_exponent=0.0,
        hidden_bits=2e3,
        expert_flops=1e9,
        user_flops_per_s=1e12,
        helper_flops_per_s=1e12,
        user_load_time_s=0.5e-3,
        helper_load_time_s=0.5e-3,
        user_load_power_w=10.0,
        user_compute_power_w=10.0,
    )
    return params_of(sc.replace(**fields) if fields else sc)


def rates(p: dict, d: np.ndarray, h: np.ndarray, p_up: float):
    """Eqs. (4)-(5): uplink rate at power p_up and downlink rate (bit/s).

    Args:
        p: parameters from `params_of`.
        d: float[..., N-1] helper distances (m).
        h: float[..., N-1] linear fading power gains.
        p_up: uplink transmit power (W).

    Returns:
        (r_up, r_dn): float64[..., N-1] each, bit/s.

    Example:
        >>> import numpy as np
        >>> p = worked_example()
        >>> d, h = np.array([50.0, 80.0]), np.ones(2)
        >>> r_up, r_dn = rates(p, d, h, 1e-6)
        >>> r_dn.tolist()   # B log2(1 + 3)
        [2000000.0, 2000000.0]
    """
    b = p["bandwidth_hz"]
    path = d ** (-p["pathloss_exponent"])
    r_up = b * np.log2(1 + p_up * path * p["gain_up"] * h / (p["noise_psd_w_per_hz"] * b))
    r_dn = b * np.log2(1 + p["helper_power_w"] * path * p["gain_down"] * h / (p["noise_psd_w_per_hz"] * b))
    return r_up, r_dn


def helper_energy(p: dict, d: np.ndarray, h: np.ndarray, load: np.ndarray, overflow: bool = True) -> np.ndarray:
    """E_n^*(D) of eq. (10) at T_up = T - D (phi/C_n + b/R_dn).

    Args:
        p: parameters from `params_of`.
        d: float[..., N-1] helper distances (m).
        h: float[..., N-1] linear fading power gains.
        load: float[..., N-1] tokens D per helper.
        overflow: also count energies beyond the float64 range as infeasible.

    Returns:
        float64[..., N-1] energy (J); 0 where D = 0, inf where infeasible (deadline, hidden load time,
        power cap).

    Example:
        >>> import numpy as np
        >>> p = worked_example()
        >>> d, h = np.array([50.0, 80.0]), np.ones(2)
        >>> e = helper_energy(p, d, h, np.array([1.0, 2.0]))
        >>> round(float(e[0]) * 1e9, 6), float(e[1])   # 3 nJ; two tokens miss the deadline
        (3.0, inf)
    """
    energy, ok = _helper_energy_and_feasible(p, d, h, load, overflow)
    return np.where(load == 0, 0.0, np.where(ok, energy, np.inf))


def _helper_energy_and_feasible(p, d, h, load, overflow):
    _, r_dn = rates(p, d, h, 1.0)
    t_up = p["deadline_s"] - load * (p["expert_flops"] / p["helper_flops_per_s"] + p["hidden_bits"] / r_dn)
    b = p["bandwidth_hz"]
    path_h = d ** (-p["pathloss_exponent"]) * p["gain_up"] * h
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        x = load * p["hidden_bits"] / (b * t_up)
        power = (2.0**x - 1) * p["noise_psd_w_per_hz"] * b / path_h
        energy = power * t_up
        log_energy = x * np.log(2) + np.log(p["noise_psd_w_per_hz"] * b * t_up / path_h)
    ok = (t_up > 0) & (t_up >= p["helper_load_time_s"]) & (power <= p["max_tx_power_w"])
    if overflow:
        ok &= log_energy < np.log(np.finfo(np.float64).max)
    return energy, ok | (load == 0)


def user_energy(p: dict, load: np.ndarray) -> np.ndarray:
    """E_UE(D), eq. (3).

    Args:
        p: parameters from `params_of`.
        load: float[...] tokens D computed by the user.

    Returns:
        float64[...] energy (J); inf where T_load + D phi/C_UE > T.

    Example:
        >>> import numpy as np
        >>> p = worked_example()
        >>> d, h = np.array([50.0, 80.0]), np.ones(2)
        >>> [round(float(e), 6) for e in user_energy(p, np.array([0.0, 1.0, 2.0, 3.0]))]
        [0.0, 0.015, 0.025, inf]
    """
    used = load > 0
    t_cp = load * p["expert_flops"] / p["user_flops_per_s"]
    e = used * p["user_load_power_w"] * p["user_load_time_s"] + p["user_compute_power_w"] * t_cp
    return np.where(used * p["user_load_time_s"] + t_cp <= p["deadline_s"], e, np.inf)


def node_costs(p: dict, d: np.ndarray, h: np.ndarray) -> np.ndarray:
    """f_v of eq. (21): the energy of one token on each node (user first).

    Args:
        p: parameters from `params_of`.
        d: float[..., N-1] helper distances (m), broadcast against h.
        h: float[..., N-1] linear fading power gains.

    Returns:
        float64[..., N] energy (J) per node, inf where one token misses the deadline.

    Example:
        >>> import numpy as np
        >>> p = worked_example()
        >>> d, h = np.array([50.0, 80.0]), np.ones(2)
        >>> f = node_costs(p, d, h)
        >>> f.shape, round(float(f[0]), 6), round(float(f[1]) * 1e9, 6)   # 5 mJ + 10 mJ; 3 nJ
        ((3,), 0.015, 3.0)
    """
    user = user_energy(p, np.ones(h.shape[:-1]))
    return np.concatenate([user[..., None], helper_energy(p, d, h, np.ones_like(h))], axis=-1)


def node_latency(p: dict, d: np.ndarray, h: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Per-node completion time T_v of eqs. (2) and (9) for a load vector (user first).

    User, eq. (2): T_UE = 1[D > 0] T_UE,load + D phi/C_UE. Helper, eq. (9) with the energy-optimal
    uplink time of eq. (10), T_up = T - D (phi/C_n + b/R_n,UE) (all the time the helper does not need):
    T_n = max(T_up, T_n,load) + D (phi/C_n + b/R_n,UE), which is exactly T when the load time hides
    behind the uplink and T_n,load + D (phi/C_n + b/R_n,UE) > T when it does not.

    Differences from the paper's text: eq. (9) has no usage indicator, so read literally an unused
    helper (D = 0) would take T_n,load; here, as in `sift_jax.costs.node_latency`, it takes 0 (it loads
    nothing). T_up is not clipped: once D (phi/C_n + b/R_n,UE) > T it is negative and the max picks
    T_n,load (the JAX code clips T_up at 0 first, the same result because T_n,load >= 0). An infeasible
    load gets its (over-deadline) time, never inf.

    Args:
        p: parameters from `params_of`.
        d: float[..., N-1] helper distances (m), broadcast against h.
        h: float[..., N-1] linear fading power gains.
        load: float[..., N] tokens D per node (node 0 = the user).

    Returns:
        float64[..., N] completion time (s) per node; 0 where D = 0.

    Example:
        The module docstring's numbers: the user loads in 0.5 ms and computes 1 ms per token; a helper
        spends 1 ms computing and 1 ms downlinking per token, so one token leaves T_up = 3 - 2 = 1 ms
        (>= 0.5 ms of loading: T_n = T) and two tokens leave T_up = -1 ms, so the load time decides:
        0.5 + 4 = 4.5 ms.

        >>> import numpy as np
        >>> p = worked_example()
        >>> d, h = np.array([50.0, 80.0]), np.ones(2)
        >>> [round(float(t) * 1e3, 9) for t in node_latency(p, d, h, np.array([2, 1, 2]))]  # ms
        [2.5, 3.0, 4.5]
        >>> node_latency(p, d, h, np.zeros(3)).tolist()   # unused nodes
        [0.0, 0.0, 0.0]

        Per-helper load times 0.5 ms and 1.5 ms: one token each leaves T_up = 1 ms, which hides the
        first helper's load but not the second's (1.5 + 2 = 3.5 ms > T):

        >>> p = worked_example(helper_load_time_s=np.array([0.5e-3, 1.5e-3]))
        >>> [round(float(t) * 1e3, 9) for t in node_latency(p, d, h, np.array([0, 1, 1]))]   # ms
        [0.0, 3.0, 3.5]
    """
    load = np.asarray(load, np.float64)
    user, helpers = load[..., 0], load[..., 1:]
    t_user = np.where(user > 0, p["user_load_time_s"] + user * p["expert_flops"] / p["user_flops_per_s"], 0.0)
    _, r_dn = rates(p, d, h, 1.0)
    busy = helpers * (p["expert_flops"] / p["helper_flops_per_s"] + p["hidden_bits"] / r_dn)  # T_n,cp + T_n,UE
    t_up = p["deadline_s"] - busy
    t_help = np.where(helpers > 0, np.maximum(t_up, p["helper_load_time_s"]) + busy, 0.0)
    t_user = np.broadcast_to(t_user, t_help.shape[:-1])
    return np.concatenate([t_user[..., None], t_help], axis=-1)


def capacities_brute(p: dict, d: np.ndarray, h: np.ndarray, max_load: int, overflow: bool = True) -> np.ndarray:
    """D_v,max by scanning D = 0..max_load.

    Args:
        p: parameters from `params_of`.
        d: float[N-1] helper distances (m).
        h: float[N-1] linear fading power gains.
        max_load: the largest load scanned.
        overflow: also count energies beyond the float64 range as infeasible (False: deadline, load
            time and power cap only).

    Returns:
        int[N]: the largest feasible load per node (user first), capped at max_load.

    Example:
        >>> import numpy as np
        >>> p = worked_example()
        >>> d, h = np.array([50.0, 80.0]), np.ones(2)
        >>> capacities_brute(p, d, h, 5).tolist()
        [2, 1, 1]
    """
    loads = np.arange(max_load + 1, dtype=np.float64)
    user = np.isfinite(user_energy(p, loads))
    _, helpers = _helper_energy_and_feasible(p, d[None], h[None], loads[:, None] * np.ones_like(h)[None], overflow)
    feas = np.concatenate([user[:, None], helpers], axis=1)  # [D+1, N]
    return np.argmin(np.vstack([feas, np.zeros((1, feas.shape[1]), bool)]), axis=0) - 1


def draw_channel(rng: np.random.Generator, p: dict, n_samples: int, n_layers: int, n_helpers: int, shape_m: int):
    """Distances uniform over the annulus area and Gamma(m, 1/m) gains as sums of exponentials.

    Args:
        rng: NumPy random generator.
        p: parameters from `params_of` (min_distance_m, max_distance_m).
        n_samples: S. n_layers: L. n_helpers: N-1.
        shape_m: integer Gamma shape m (Nakagami-m power gain).

    Returns:
        (d, h): float64[S, N-1] distances (m) and float64[S, L, N-1] gains with mean 1.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> d, h = draw_channel(rng, {"min_distance_m": 10.0, "max_distance_m": 150.0}, 4, 2, 7, 2)
        >>> d.shape, h.shape, bool(np.all((d >= 10) & (d <= 150)))
        ((4, 7), (4, 2, 7), True)
    """
    u = rng.random((n_samples, n_helpers))
    lo2, hi2 = p["min_distance_m"] ** 2, p["max_distance_m"] ** 2
    d = np.sqrt(lo2 + u * (hi2 - lo2))
    h = rng.standard_exponential((n_samples, n_layers, n_helpers, shape_m)).sum(-1) / shape_m
    return d, h


# ------------------------------------------------------------------------------------------------
# decoding: exact enumeration of node sets
# ------------------------------------------------------------------------------------------------


def _subsets(n: int, k: int) -> np.ndarray:
    rows = [c + (-1,) * (k - len(c)) for j in range(1, k + 1) for c in itertools.combinations(range(n), j)]
    return np.asarray(rows, np.int64).reshape(-1, k)


def decode_numpy(f, g, topk, table, eta, share_substitutes: bool = True, block: int = 0) -> dict:
    """Exact SiftMoE decoding by enumerating every node set J, 1 <= |J| <= K (float64, vectorized).

    A set's deviation is that of its best slot mapping that serves at least one slot (img within J):
    sharing: sum_i min(s_i, min_{v in J} e_i(v)), or, if no slot prefers a node of J to skipping,
    S - max_i (s_i - min_v e_i(v)) (the one forced slot); matching: S - (the largest total saving
    sum s_i - e_i(v) of an injective slot assignment, savings capped at >= 0), or the forced pair.
    The decision is the lexicographic minimum of (energy, deviation, node count) over the sets whose
    energy is finite and deviation <= eta.

    Args:
        f: float[B, N] node costs (J, inf = infeasible).
        g: float[B, K] gate weights of the Top-K slots.
        topk: int[B, K] the Top-K experts.
        table: float[B, N, N+1] mean mismatch, column N = skip.
        eta: float[B] (or scalar) deviation budget.
        share_substitutes: a node may serve several slots (False: an injective slot mapping).
        block: instances per vectorized block (0 = automatic, bounded memory).

    Returns:
        dict of float64/bool arrays [B]: energy (0 if infeasible), deviation (0 if infeasible),
        count (nodes used, 0 if infeasible), feasible.

    Example: node 1 costs half of node 0 and its mismatch 0.3 fits eta = 0.5.
        >>> out = decode_numpy(np.array([[1.0, 0.5]]), np.array([[1.0]]), np.array([[0]]),
        ...                    np.array([[[0.0, 0.3, 1.0], [0.3, 0.0, 1.0]]]), np.array([0.5]))
        >>> float(out["energy"][0]), float(out["deviation"][0]), int(out["count"][0]), bool(out["feasible"][0])
        (0.5, 0.3, 1, True)
    """
    f = np.asarray(f, np.float64)
    g = np.asarray(g, np.float64)
    topk = np.asarray(topk, np.int64)
    table = np.asarray(table, np.float64)
    eta = np.broadcast_to(np.asarray(eta, np.float64), f.shape[:1])
    b, n = f.shape
    k = g.shape[1]
    members = _subsets(n, k)  # [S, K], -1 = none
    real = members >= 0
    idx = np.where(real, members, 0)
    count = real.sum(1)
    if not block:
        block = max(1, min(b, 2_000_000 // (members.shape[0] * k * k)))
    out = {name: np.zeros(b) for name in ("energy", "deviation", "count")}
    out["feasible"] = np.zeros(b, bool)
    perms = np.asarray(list(itertools.permutations(range(k))), np.int64)
    for lo in range(0, b, block):
        sl = slice(lo, min(b, lo + block))
        rows = np.take_along_axis(table[sl], topk[sl][:, :, None], axis=1)  # [b, K, N+1]
        e = g[sl][:, :, None] * rows[:, :, :n]  # [b, K, N]
        s = g[sl] * rows[:, :, n]  # [b, K]
        s_tot = s.sum(1)
        fm = np.where(real[None], f[sl][:, idx], 0.0)  # [b, S, K]
        energy = fm.sum(2)
        em = np.where(real[None, None], e[:, :, idx], np.inf)  # [b, K slots, S, K members]
        saving = s[:, :, None, None] - em  # -inf for padding
        best_saving = saving.max(axis=(1, 3))  # [b, S]: the best single (slot, member) pair
        if share_substitutes:
            best = em.min(3)  # [b, K, S]
            capped = np.minimum(best, s[:, :, None]).sum(1)
        else:
            sav = np.maximum(saving, 0.0)  # [b, K, S, K]
            total = np.zeros(sav.shape[:1] + sav.shape[2:3] + (len(perms),))
            for p, perm in enumerate(perms):  # perm[i] = member position serving slot i
                total[:, :, p] = sum(sav[:, i, :, perm[i]] for i in range(k))
            capped = s_tot[:, None] - total.max(2)
        dev = np.where(best_saving >= 0, capped, s_tot[:, None] - best_saving)
        valid = np.isfinite(energy) & (dev <= eta[sl][:, None])
        en = np.where(valid, energy, np.inf)
        e_min = en.min(1)
        m = en == e_min[:, None]
        d_min = np.where(m, dev, np.inf).min(1)
        m &= dev == d_min[:, None]
        c_min = np.where(m, count[None], 1 << 30).min(1)
        feas = np.isfinite(e_min)
        out["energy"][sl] = np.where(feas, e_min, 0.0)
        out["deviation"][sl] = np.where(feas, d_min, 0.0)
        out["count"][sl] = np.where(feas, c_min, 0)
        out["feasible"][sl] = feas
    return out


def random_instances(n: int, k: int, b: int, seed: int = 0, inf_rate: float = 0.15, dtype=np.float32):
    """Uniformly random decoding instances.

    f log-uniform in [e^-2, e^2] (a share `inf_rate` set to inf); topk K distinct random experts; g
    sorted Dirichlet(1); table off-diagonal uniform in [0.05, 2], zero diagonal, skip column uniform in
    [0.5, 1.5]; eta uniform in [0, 1.2].

    Args:
        n: nodes N. k: Top-K. b: instances B.
        seed: NumPy seed.
        inf_rate: probability that a node cost is inf.
        dtype: float dtype of the float arrays.

    Returns:
        (f float[B, N], g float[B, K], topk int32[B, K], table float[B, N, N+1], eta float[B]).

    Example:
        >>> f, g, topk, table, eta = random_instances(5, 2, 3)
        >>> f.shape, g.shape, topk.shape, table.shape, eta.shape
        ((3, 5), (3, 2), (3, 2), (3, 5, 6), (3,))
    """
    rng = np.random.default_rng(seed)
    f = np.exp(rng.uniform(-2, 2, (b, n)))
    f[rng.uniform(size=(b, n)) < inf_rate] = np.inf
    topk = np.argsort(rng.uniform(size=(b, n)), axis=1)[:, :k].astype(np.int32)
    g = -np.sort(-rng.dirichlet(np.ones(k), b), axis=1)
    off = rng.uniform(0.05, 2.0, (b, n, n)) * (1 - np.eye(n))
    table = np.concatenate([off, rng.uniform(0.5, 1.5, (b, n, 1))], axis=2)
    eta = rng.uniform(0, 1.2, b)
    return f.astype(dtype), g.astype(dtype), topk, table.astype(dtype), eta.astype(dtype)


def clustered_instances(n: int, k: int, b: int, cluster: int = 4, seed: int = 0, dtype=np.float64):
    """Decoding instances shaped like the synthetic latent model of `sift_jax.similarity` (no JAX needed).

    Experts in clusters of `cluster`; output norms n_i = 60 exp(0.3 z); mismatch
    F_ij = sqrt(n_i^2 + n_j^2 - 2 c_ij n_i n_j) with c_ij ~ 0.9 +- 0.03 inside a cluster and ~ 0 +- 0.05
    across; skip = n_i. Costs log-normal (sigma 1.5, heavy tails) with 5% inf; gates: softmax of
    normal logits over a random Top-K; eta uniform in [0, 1.2 x the skip-all deviation].

    Args:
        n: nodes N. k: Top-K. b: instances B.
        cluster: experts per cluster.
        seed: NumPy seed.
        dtype: float dtype of the float arrays.

    Returns:
        (f float[B, N], g float[B, K], topk int32[B, K], table float[B, N, N+1], eta float[B]).

    Example:
        >>> f, g, topk, table, eta = clustered_instances(8, 2, 3)
        >>> table.shape, bool(np.allclose(g.sum(1), 1.0))
        ((3, 8, 9), True)
    """
    rng = np.random.default_rng(seed)
    members = np.argsort(rng.uniform(size=(b, n)), axis=1) % (n // cluster)  # cluster of each expert
    norm = 60.0 * np.exp(0.3 * rng.standard_normal((b, n)))
    same = members[:, :, None] == members[:, None, :]
    cos = np.where(same, 0.9 + 0.03 * rng.standard_normal((b, n, n)), 0.05 * rng.standard_normal((b, n, n)))
    cos = (cos + np.swapaxes(cos, 1, 2)) / 2
    ni, nj = norm[:, :, None], norm[:, None, :]
    off = np.sqrt(np.maximum(ni**2 + nj**2 - 2 * cos * ni * nj, 0.0)) * (1 - np.eye(n))
    table = np.concatenate([off, norm[:, :, None]], axis=2)
    f = np.exp(1.5 * rng.standard_normal((b, n))) * 1e-3
    f[rng.uniform(size=(b, n)) < 0.05] = np.inf
    logits = rng.standard_normal((b, n))
    topk = np.argsort(-logits, axis=1)[:, :k].astype(np.int32)
    top = np.take_along_axis(logits, topk, 1)
    g = np.exp(top - top[:, :1])
    g /= g.sum(1, keepdims=True)
    skip_all = (g * np.take_along_axis(norm, topk, 1)).sum(1)
    eta = rng.uniform(0, 1.2, b) * skip_all
    return f.astype(dtype), g.astype(dtype), topk, table.astype(dtype), eta.astype(dtype)


# ------------------------------------------------------------------------------------------------
# prefilling: feasible node sets per token
# ------------------------------------------------------------------------------------------------


def cap_eff(dE, cap):
    """Effective capacity: the load cap, cut at the first infinite marginal cost.

    Args:
        dE: float[..., N, D] marginal energy of each node's d-th token (inf = infeasible).
        cap: int[..., N] load caps.

    Returns:
        int[..., N]: min(cap, number of leading finite marginal costs).

    Example:
        >>> cap_eff(np.array([[1.0, 2.0, np.inf], [1.0, 1.0, 1.0]]), np.array([3, 2])).tolist()
        [2, 2]
    """
    return np.minimum(cap, np.cumprod(np.isfinite(dE), axis=-1).sum(-1))


def feasible_sets(x, k):
    """Per token: the node sets J (1 <= |J| <= K, every node with effective capacity >= 1) whose slot
    mapping meets eta.

    A set's deviation is sum_i g_i min(skip_i, min_{v in J} F_i(v)), or, when no slot prefers a node of
    J to skipping, the skip-all deviation plus the smallest extra g_i (F_i(v) - skip_i) (one forced slot).

    Args:
        x: dict of one instance: dE float[N, D] marginal costs, cap int[N], g float[M, K], topk int[M, K],
            table float[N, N+1], eta float.
        k: Top-K.

    Returns:
        (member bool[S, N] membership of each set of available nodes, ok bool[M, S] set meets eta).

    Example: one token, expert 0; node 1's mismatch 0.3 meets eta = 0.5, the skip (1.0) does not.
        >>> x = dict(dE=np.ones((2, 1)), cap=np.array([1, 1]), g=np.array([[1.0]]), topk=np.array([[0]]),
        ...          table=np.array([[0.0, 0.3, 1.0], [0.3, 0.0, 1.0]]), eta=0.5)
        >>> member, ok = feasible_sets(x, 1)
        >>> member.tolist(), ok.tolist()
        ([[True, False], [False, True]], [[True, True]])
    """
    dE, g, topk, table, eta = x["dE"], x["g"], x["topk"], x["table"], x["eta"]
    n = dE.shape[0]
    ce = cap_eff(dE, x["cap"])
    sets = [c for size in range(1, k + 1) for c in itertools.combinations(range(n), size) if all(ce[v] >= 1 for v in c)]
    member = np.zeros((len(sets), n), bool)
    for i, c in enumerate(sets):
        member[i, list(c)] = True
    rows = table[topk]  # [M, K, N + 1]
    node_part = np.where(member[None, None], rows[..., None, :n], np.inf)  # [M, K, S, N]
    best = node_part.min(-1)
    skip = rows[..., n : n + 1]
    use = best <= skip
    dev = (g[..., None] * np.where(use, best, skip)).sum(1)
    forced = ~use.any(1)
    extra = (g[..., None] * (best - skip)).min(1)
    dev = np.where(forced, (g[..., None] * skip).sum(1) + extra, dev)
    return member, dev <= eta
