"""Fast fading (paper §1.4, §3.5-§3.6, §4.5-§4.6): surrogate expert selection and slot-level bit loading.

One layer under fast fading, as `layer_decision` runs it:

1. Selection on the surrogate (§4.5). Helper n's exact expected energy E*_n(D) has no closed form; the
   selection uses Etilde_n(D) = E[1/h] x (uniform-allocation energy of D b bits over the uplink time at
   unit gain), which is the expected energy of uniform bit loading and so an upper bound on the optimum
   for every load. Node costs f [N] (decoding) or marginal costs dE [N, M] and capacities (prefilling)
   built from it go to the slow-fading solvers unchanged: `sift_jax.policies.get(policy)` for M = 1 and
   `get_prefill(policy)` for M > 1. The user (node 0) has no radio: its cost is the slow-fading one.
2. Slot model (§1.4). Helper n with load D_n has the uplink time T_up,n = T - D_n (phi/C_n + b/R_n,UE)
   (eq. 17 / Prop. 2) split into Q_n = min(floor(T_up,n / tau), Q) slots, at least 1, where tau is
   `sc.slot_s` and Q the static `sc.n_slots`; slot t of helper n has gain slot_gain[n, t] (the first Q_n
   of the Q drawn). INFERRED reading (the paper's Q_n = T_UE,n / tau loses its bracket): the Q_n slots
   share the whole uplink time equally, tau_n = T_up,n / Q_n, so tau <= tau_n < 2 tau when the cap does
   not bind and no time is left unused; then Etilde is exactly the uniform rule's expected energy
   (Remark 5 and §4.5 agree), and Etilde is the paper's eq. with T_UE,n, convex in D (Prop. 2), so the
   exact slow-fading solvers stay exact on it. The cap Q is static (array shapes): where
   floor(T_up / tau) > Q the slots are longer than 2 tau (fewer independent gains than the model has);
   `FastInfo.cap_bound` flags it per helper (the presets' Q = 80 never binds: T_up <= T = 70 tau
   for switch-base-8, 74 tau for Mixtral). With T_up < tau there is one slot of length T_up.
3. Bit loading (§4.6) per helper by name, see `fastfading_bits`: "uniform", "closed-form" (alias
   "dynamic", Thm. 3 eq. (26) clipped to [0, remaining], the last slot sends the rest) or "dp" (the
   exact Bellman recursion solved numerically; beyond the paper). Energy of slot t is eq. (22),
   `costs.uplink_energy` with the slot's bits, its gain and its length tau_n. The layer energy reported
   is the realised one: user energy plus the sum over helpers and slots.
4. Power cap. With `sc.max_tx_power_w` finite, a slot that needs more power than the cap fails; the
   decision is then infeasible (`FastInfo.power_infeasible`) and its energy counts the user and the
   helpers that did deliver. The bit-loading rules ignore the cap (a cap-aware DP has an infinite
   expected cost under Gamma fading: any remaining bits meet a too-deep last-slot fade with positive
   probability). Selection uses the cap at unit gain (a helper whose uniform loading needs more than
   p_max at h = 1 is infeasible).

INFERRED choices, as options of `layer_decision`:
    downlink_gain=1.0: the gain used for the downlink rate R_n,UE (hence T_up and the latency) under fast
        fading; the paper does not say which gain; default the mean gain h = 1.
    inv_gain_mean=None: E[1/h] for the surrogate and eq. (26); default the family's value
        (`Scenario.inv_gain_mean`: Gamma/Nakagami shape m > 1: m/(m-1)). Where it is infinite (Rayleigh,
        m <= 1, Rician: its power density is positive at 0) or not known here (log-normal) a
        `ConfigError("fading", ...)` asks for a finite value. The DP always integrates over the family's
        own distribution and needs fading "gamma" or "nakagami" with m > 1.
    dp_grid=256, dp_quad=24, dp_iters=5: DP table grid, quadrature nodes, safeguarded Newton steps per slot.
Every other option goes to the selection policy (e.g. share_substitutes, method).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from sift_jax import costs
from sift_jax import fading as fading_families
from sift_jax.channel import per_helper, uplink_snr_per_watt
from sift_jax.errors import ConfigError
from sift_jax.fading import inverse_gain_mean
from sift_jax.policies import fastfading_bits as fb
from sift_jax.policies.decision import Decision
from sift_jax.policies.layer import select_layer
from sift_jax.policies.registry import get_record
from sift_jax.scenario import Scenario

__all__ = [
    "FastInfo",
    "SlotPlan",
    "allocate_bits",
    "layer_decision",
    "layer_decision_with_info",
    "layer_decisions_with_info",
    "paper_estimate",
    "realised_energy",
    "surrogate_costs",
    "surrogate_load_energy",
    "surrogate_marginal_costs",
]

BITS = ("uniform", "closed-form", "dp")
ALIASES = {"dynamic": "closed-form"}
OPTIONS = ("inv_gain_mean", "downlink_gain", "dp_grid", "dp_quad", "dp_iters")


def check_bits(policy: str, bits) -> str:
    """Check a fast-fading (policy, bit loading) pair; return the canonical bit-loading name.

    Raises ConfigError("policy", ...) for an unknown policy and ConfigError("bits", ...) for an unknown
    bit loading or None (fast fading needs one).

    >>> check_bits("siftmoe", "dynamic")
    'closed-form'
    >>> check_bits("topk", None)
    Traceback (most recent call last):
    ...
    sift_jax.errors.ConfigError: bits = None is invalid: allowed is one of uniform, closed-form, dynamic, dp (fast
    fading needs a bit loading)
    """
    get_record(policy)
    if not isinstance(bits, str) or (bits not in BITS and bits not in ALIASES):
        raise ConfigError("bits", bits, "one of uniform, closed-form, dynamic, dp (fast fading needs a bit loading)")
    return ALIASES.get(bits, bits)


@struct.dataclass
class SlotPlan:
    """Uplink slots per helper for a load vector.

    Attributes:
        uplink_s: float[N-1] T_up,n = T - D_n (phi/C_n + b/R_n,UE) (s); <= 0 where the load cannot fit.
        slots: int32[N-1] Q_n = clip(floor(T_up / tau), 1, Q).
        slot_s: float[N-1] slot length tau_n = T_up / Q_n (s).
        capped: bool[N-1] the static cap Q binds (floor(T_up / tau) > Q) for a loaded helper.

    Example:
        An unloaded helper has the whole deadline, 5 tau: five slots of length tau. A loaded one has
        floor(T_up / tau) slots that share T_up:

        >>> import numpy as np
        >>> sc = Scenario(n_nodes=3, deadline_s=0.05, slot_s=0.01, n_slots=8)
        >>> p = jax.jit(slot_plan)(sc, jnp.array([50.0, 80.0]), jnp.array([1, 0]))
        >>> slots, slot_s, uplink_s = np.asarray(p.slots), np.asarray(p.slot_s), np.asarray(p.uplink_s)
        >>> int(slots[1]), round(float(slot_s[1]), 6), round(float(uplink_s[1]), 6)
        (5, 0.01, 0.05)
        >>> int(slots[0]) == int(uplink_s[0] / 0.01), bool(np.isclose(slots[0] * slot_s[0], uplink_s[0]))
        (True, True)
    """

    uplink_s: jax.Array
    slots: jax.Array
    slot_s: jax.Array
    capped: jax.Array


def slot_plan(sc: Scenario, distance_m, loads, downlink_gain=1.0) -> SlotPlan:
    """Slot plan of the helpers for helper loads int[N-1] (see the module docstring, item 2).

    >>> sc = Scenario(n_nodes=3, deadline_s=0.05, slot_s=0.01, n_slots=3)
    >>> p = jax.jit(slot_plan)(sc, jnp.array([50.0, 80.0]), jnp.array([1, 0]))   # T_up just under 5 tau
    >>> p.slots.tolist(), p.capped.tolist()
    ([3, 3], [True, False])
    """
    loads = jnp.asarray(loads)
    h_rep = jnp.broadcast_to(jnp.asarray(downlink_gain, jnp.result_type(float)), (sc.n_helpers,))
    per_token = costs.helper_token_time(sc, distance_m, h_rep)
    t_up = sc.deadline_s - loads * per_token
    fit = jnp.floor(t_up / sc.slot_s)
    slots = jnp.clip(fit, 1, sc.n_slots).astype(jnp.int32)
    return SlotPlan(uplink_s=t_up, slots=slots, slot_s=t_up / slots, capped=(loads > 0) & (fit > sc.n_slots))


def surrogate_load_energy(sc: Scenario, distance_m, loads, inv_gain_mean=None, downlink_gain=1.0) -> jax.Array:
    """Surrogate energy per node for a load vector: float[..., N] (J), inf where infeasible.

    User: `costs.user_energy` (no radio). Helper: E[1/h] x eq. (10) at unit gain with
    T_up = T - D (phi/C_n + b/R_n,UE(downlink_gain)); infeasible when T_up <= 0, T_up < T_n,load or the
    power at unit gain exceeds the cap.

    Args:
        sc: scenario (fading family and shape give E[1/h]).
        distance_m: float[N-1] helper distances (m).
        loads: int[..., N] tokens per node (node 0 = user).
        inv_gain_mean: E[1/h] override (default: the fading family's, `Scenario.inv_gain_mean`).
        downlink_gain: gain of the downlink rate R_n,UE (default the mean gain 1).

    Returns:
        float[..., N] surrogate energy per node (J); 0 for unloaded helpers, inf where infeasible.

    Raises:
        ConfigError: E[1/h] is infinite or unknown for the fading family and no override is given.

    Example:
        Gamma(2, 1/2) fading (the default) has E[1/h] = 2: a helper's surrogate is twice its
        slow-fading energy at unit gain, and the user's (no radio) is unchanged:

        >>> import numpy as np
        >>> sc, loads = Scenario(n_nodes=3), jnp.array([1, 1, 0])
        >>> E, slow = jax.jit(lambda d: (surrogate_load_energy(sc, d, loads),
        ...                              costs.load_energy(sc, d, jnp.ones(2), loads)))(jnp.array([50.0, 100.0]))
        >>> bool(np.allclose(E, np.array([1.0, 2.0, 1.0]) * slow)), E.shape
        (True, (3,))
    """
    iota = inverse_gain_mean(sc, inv_gain_mean)
    loads = jnp.asarray(loads)
    dtype = jnp.result_type(float)
    h_rep = jnp.broadcast_to(jnp.asarray(downlink_gain, dtype), (sc.n_helpers,))
    hl = loads[..., 1:]
    t_up = sc.deadline_s - hl * costs.helper_token_time(sc, distance_m, h_rep)
    e_help = costs.uplink_energy(sc, distance_m, jnp.ones((sc.n_helpers,), dtype), hl * sc.hidden_bits, t_up)
    ok = (hl == 0) | (t_up >= per_helper(sc, sc.helper_load_time_s))
    e_help = jnp.where(ok, iota * e_help, jnp.inf)
    return jnp.concatenate([costs.user_energy(sc, loads[..., 0])[..., None], e_help], axis=-1)


def surrogate_costs(sc: Scenario, distance_m, inv_gain_mean=None, downlink_gain=1.0) -> jax.Array:
    """Decoding node costs f [N] (J) on the surrogate: `surrogate_load_energy` at load 1 per node.

    Args:
        sc: scenario.
        distance_m: float[N-1] helper distances (m).
        inv_gain_mean: E[1/h] override (default: the fading family's).
        downlink_gain: gain of the downlink rate R_n,UE (default 1).

    Returns:
        float[N] surrogate decoding cost per node (J), inf where infeasible; the input f of the decoding
        policies under fast fading.

    Raises:
        ConfigError: E[1/h] is infinite or unknown for the fading family and no override is given.

    Example:
        E[1/h] = 2 times the slow-fading cost of eq. (21) at unit gain for the helpers:

        >>> import numpy as np
        >>> sc = Scenario(n_nodes=3)
        >>> f, slow = jax.jit(lambda d: (surrogate_costs(sc, d), costs.node_costs(sc, d, jnp.ones(2))))(
        ...     jnp.array([50.0, 100.0]))
        >>> bool(np.allclose(f, np.array([1.0, 2.0, 2.0]) * slow)), f.shape
        (True, (3,))
    """
    return surrogate_load_energy(sc, distance_m, jnp.ones((sc.n_nodes,), jnp.int32), inv_gain_mean, downlink_gain)


def surrogate_marginal_costs(sc: Scenario, distance_m, max_load: int, inv_gain_mean=None, downlink_gain=1.0):
    """Prefill inputs on the surrogate: (dE float[N, max_load] (J), cap int32[N]).

    dE[v, d] = Etilde_v(d + 1) - Etilde_v(d), inf from the first infeasible load on; cap = number of
    finite entries (feasibility is monotone in the load).

    Args:
        sc: scenario.
        distance_m: float[N-1] helper distances (m).
        max_load: D, the largest load (static).
        inv_gain_mean: E[1/h] override (default: the fading family's).
        downlink_gain: gain of the downlink rate R_n,UE (default 1).

    Returns:
        (dE float[N, D] marginal surrogate energies (J), cap int32[N] capacities <= D): the prefill
        inputs under fast fading.

    Raises:
        ConfigError: E[1/h] is infinite or unknown for the fading family and no override is given.

    Example:
        The marginals add up to the surrogate energy, and a helper's are non-decreasing (Etilde is
        convex, Prop. 2):

        >>> import numpy as np
        >>> sc = Scenario(n_nodes=3, n_tokens=4)
        >>> dE, cap, E2 = jax.jit(lambda d: (*surrogate_marginal_costs(sc, d, 4),
        ...                                  surrogate_load_energy(sc, d, jnp.full(3, 2))))(jnp.array([50.0, 100.0]))
        >>> dE, cap = np.asarray(dE), np.asarray(cap)
        >>> dE.shape, bool(np.all(cap <= 4)), bool(np.all(np.diff(dE[1:, :2], axis=1) >= 0))
        ((3, 4), True, True)
        >>> bool(np.allclose(dE[:, :2].sum(1), E2))
        True
    """
    d = jnp.arange(max_load + 1)
    table = surrogate_load_energy(
        sc, distance_m, jnp.broadcast_to(d[:, None], (max_load + 1, sc.n_nodes)), inv_gain_mean, downlink_gain
    )
    steps = jnp.where(jnp.isfinite(table[1:]), table[1:] - table[:-1], jnp.inf).T
    cap = jnp.sum(jnp.cumprod(jnp.isfinite(steps).astype(jnp.int32), axis=-1), axis=-1).astype(jnp.int32)
    return steps, cap


def _dp_tables(sc: Scenario, dp_grid: int, dp_quad: int):
    if not fading_families.get(sc.fading).dp_support(sc):
        raise ConfigError(
            "bits",
            "dp",
            f"bit loadings other than dp for fading={sc.fading!r} (shape "
            f"{sc.fading_shape}): the DP integrates over Gamma/Nakagami fading with shape > 1 only",
        )
    return fb.dp_tables(float(sc.fading_shape), int(sc.n_slots), int(dp_grid), int(dp_quad))


def allocate_bits(
    sc: Scenario,
    distance_m,
    loads,
    slot_gain,
    bits: str = "closed-form",
    inv_gain_mean=None,
    downlink_gain=1.0,
    dp_grid: int = fb.DP_GRID,
    dp_quad: int = fb.DP_QUAD,
    dp_iters: int = fb.DP_ITERS,
):
    """Bits per helper and slot for helper loads int[N-1] and slot gains float[N-1, Q].

    Args:
        sc: scenario (static n_slots Q; slot_s tau).
        distance_m: float[N-1] helper distances (m).
        loads: int[N-1] helper loads (tokens).
        slot_gain: float[N-1, Q] realised per-slot power gains.
        bits: "uniform", "closed-form" (alias "dynamic") or "dp".
        inv_gain_mean: E[1/h] override for "closed-form" (default: the fading family's).
        downlink_gain: gain of the downlink rate R_n,UE (default 1).
        dp_grid: DP table grid points ("dp" only; static).
        dp_quad: DP quadrature nodes ("dp" only; static).
        dp_iters: Newton steps per slot ("dp" only; static).

    Returns:
        (gamma float[N-1, Q] bits per slot (sum over slots = b D_n, all >= 0; 0 beyond Q_n), SlotPlan).
        A helper whose load leaves no uplink time (T_up <= 0) gets no bits; `realised_energy` flags it.

    Raises:
        ConfigError: an unknown bit loading, or a fading family the rule cannot handle.

    Example:
        Uniform loading splits the 2 x 10^4 bits of two tokens equally over the Q_n slots:

        >>> import numpy as np
        >>> sc = Scenario(n_nodes=2, deadline_s=0.05, slot_s=0.01, n_slots=8, hidden_bits=1e4)
        >>> run = jax.jit(allocate_bits, static_argnames="bits")
        >>> gamma, plan = run(sc, jnp.array([60.0]), jnp.array([2]), jnp.ones((1, 8)), bits="uniform")
        >>> gamma, q = np.asarray(gamma[0]), int(plan.slots[0])
        >>> q == int(float(plan.uplink_s[0]) / 0.01), bool(np.allclose(gamma[:q], 2e4 / q)), float(gamma[q:].sum())
        (True, True, 0.0)
    """
    bits = check_bits("siftmoe", bits)
    plan = slot_plan(sc, distance_m, loads, downlink_gain)
    bw = per_helper(sc, sc.bandwidth_hz)
    slot_ok = plan.slot_s > 0
    unit = bw * jnp.where(slot_ok, plan.slot_s, 1.0)  # bits per normalised unit (B tau_n)
    x = jnp.where(slot_ok, jnp.asarray(loads) * sc.hidden_bits / unit, 0.0)
    gain = jnp.asarray(slot_gain)
    if bits == "uniform":
        y = fb.uniform_bits(x, gain, plan.slots)
    elif bits == "closed-form":
        y = fb.closed_form_bits(x, gain, plan.slots, inverse_gain_mean(sc, inv_gain_mean))
    else:
        y = fb.dp_bits(x, gain, plan.slots, _dp_tables(sc, dp_grid, dp_quad), int(dp_iters))
    return y * unit[:, None], plan


def realised_energy(sc: Scenario, distance_m, slot_gain, gamma, plan: SlotPlan, loads):
    """Realised uplink energy per helper, eq. (22) summed over slots: (energy float[N-1] J, ok bool[N-1]).

    ok is False for a loaded helper whose uplink time is <= 0 or shorter than its load time, or with a
    slot over the power cap; its energy is then inf (as `costs.helper_energy` under slow fading), so no
    sum of helper energies can count a helper that does not deliver.

    Args:
        sc: scenario.
        distance_m: float[N-1] helper distances (m).
        slot_gain: float[N-1, Q] realised per-slot power gains.
        gamma: float[N-1, Q] bits per slot (`allocate_bits`).
        plan: the `SlotPlan` returned with gamma.
        loads: int[N-1] helper loads (tokens).

    Returns:
        (energy float[N-1] realised uplink energy per helper (J; 0 if unloaded, inf where not ok), ok bool[N-1]).

    Example:
        At unit gain in every slot, uniform loading over the slots is the slow-fading optimum at
        unit gain (eq. 10: the same bits spread evenly over the same T_up):

        >>> import numpy as np
        >>> sc = Scenario(n_nodes=3, deadline_s=0.05, slot_s=0.01, n_slots=8)
        >>> loads, h = jnp.array([1, 0]), jnp.ones((2, 8))
        >>> @jax.jit
        ... def check(d):
        ...     gamma, plan = allocate_bits(sc, d, loads, h, "uniform")
        ...     e, ok = realised_energy(sc, d, h, gamma, plan, loads)
        ...     return e, ok, costs.load_energy(sc, d, jnp.ones(2), jnp.array([0, 1, 0]))[1:]
        >>> e, ok, slow = check(jnp.array([50.0, 80.0]))
        >>> bool(np.allclose(e, slow)), e.tolist()[1], ok.tolist()
        (True, 0.0, [True, True])
    """
    per_slot = costs.uplink_energy(sc, distance_m, jnp.asarray(slot_gain).T, gamma.T, plan.slot_s)  # [Q, N-1]
    energy = jnp.sum(per_slot, axis=0)
    loads = jnp.asarray(loads)
    time_ok = (plan.uplink_s > 0) & (plan.uplink_s >= per_helper(sc, sc.helper_load_time_s))
    ok = (loads == 0) | (time_ok & jnp.isfinite(energy))
    return jnp.where(loads > 0, jnp.where(ok, energy, jnp.inf), 0.0), ok


def paper_estimate(sc: Scenario, distance_m, loads, slot_gain, inv_gain_mean=None, downlink_gain=1.0) -> jax.Array:
    """The "paper closed form", eq. (27), per helper given its first slot gain: float[N-1] (J).

    c_n [Q_n 2^{x/Q_n} ((1/h_1) E[1/h]^{Q_n-1})^{1/Q_n} - (1/h_1 + (Q_n-1) E[1/h])] with x = b D_n/(B tau_n),
    c_n = N0 B tau_n / (d^-alpha G); 0 for unloaded helpers. A certainty-equivalent estimate, not the
    realised energy of eq. (26) (see `fastfading_bits.paper_closed_form`).

    Args:
        sc: scenario.
        distance_m: float[N-1] helper distances (m).
        loads: int[N-1] helper loads (tokens).
        slot_gain: float[N-1, Q] per-slot gains (only the first slot's is used).
        inv_gain_mean: E[1/h] override (default: the fading family's).
        downlink_gain: gain of the downlink rate R_n,UE (default 1).

    Returns:
        float[N-1] estimate per helper (J); 0 for unloaded helpers, inf where the load leaves no time.

    Example:
        With slots longer than the deadline each helper has one slot, and eq. (27) is the exact energy
        of sending everything at the first gain (here 0.5 on both links), i.e. eq. (10):

        >>> import numpy as np
        >>> sc = Scenario(n_nodes=3, slot_s=1.0)
        >>> h = jnp.full((2, 16), 0.5)
        >>> est, exact = jax.jit(lambda d: (paper_estimate(sc, d, jnp.array([1, 0]), h, downlink_gain=0.5),
        ...                                 costs.load_energy(sc, d, jnp.full(2, 0.5), jnp.array([0, 1, 0]))[1:]))(
        ...     jnp.array([50.0, 80.0]))
        >>> bool(np.allclose(est, exact)), est.tolist()[1]
        (True, 0.0)
    """
    iota = inverse_gain_mean(sc, inv_gain_mean)
    plan = slot_plan(sc, distance_m, loads, downlink_gain)
    dtype = jnp.result_type(float)
    bw = per_helper(sc, sc.bandwidth_hz)
    tau = jnp.where(plan.slot_s > 0, plan.slot_s, 1.0)
    x = jnp.asarray(loads) * sc.hidden_bits / (bw * tau)
    c = tau / uplink_snr_per_watt(sc, distance_m, jnp.ones((sc.n_helpers,), dtype))
    value = c * fb.paper_closed_form(x, jnp.asarray(slot_gain)[:, 0], plan.slots, iota)
    return jnp.where(
        (jnp.asarray(loads) > 0) & (plan.slot_s > 0), value, jnp.where(jnp.asarray(loads) > 0, jnp.inf, 0.0)
    )


@struct.dataclass
class FastInfo:
    """What `layer_decision_with_info` knows besides the Decision.

    Attributes:
        surrogate_energy_j: float[] the selection's objective (user + surrogate helper energies) (J).
        paper_estimate_j: float[] user energy + eq. (27) at the realised first-slot gains (J).
        helper_energy_j: float[N-1] realised uplink energy per helper (J; inf where the helper cannot
            deliver: no uplink time, load time not hidden, or a slot over the power cap).
        latency_s: float[] layer completion time, max over nodes of `costs.node_latency` with the
            downlink at `downlink_gain` (s).
        slots: int32[N-1] Q_n per helper (0 for unloaded helpers).
        cap_bound: bool[N-1] the static slot cap Q binds for this loaded helper.
        power_infeasible: bool[] some loaded helper needed more than `max_tx_power_w` in a slot.

    Example:
        A pytree of arrays (jit and vmap pass it through); `layer_decision_with_info` shows one in use:

        >>> info = FastInfo(surrogate_energy_j=jnp.float32(2.0), paper_estimate_j=jnp.float32(1.5),
        ...                 helper_energy_j=jnp.array([1.0, 0.0]), latency_s=jnp.float32(0.04),
        ...                 slots=jnp.array([4, 0]), cap_bound=jnp.array([False, False]),
        ...                 power_infeasible=jnp.bool_(False))
        >>> len(jax.tree.leaves(info)), info.helper_energy_j.shape
        (7, (2,))
    """

    surrogate_energy_j: jax.Array
    paper_estimate_j: jax.Array
    helper_energy_j: jax.Array
    latency_s: jax.Array
    slots: jax.Array
    cap_bound: jax.Array
    power_infeasible: jax.Array


def layer_decision_with_info(
    sc: Scenario, distance_m, slot_gain, g, topk, table, policy: str = "siftmoe", bits: str = "closed-form", **options
) -> tuple[Decision, FastInfo]:
    """`layer_decision` that also returns a `FastInfo`.

    Args:
        sc: scenario (static: n_nodes, top_k, n_slots Q, fading; dynamic leaves may be traced).
        distance_m: float[N-1] helper distances (m).
        slot_gain: float[N-1, Q] per-slot power gains of this layer.
        g: float[M, K] gate weights.
        topk: int[M, K] Top-K experts.
        table: float[N, N+1] mismatch Fbar.
        policy: selection policy name (as `layer_decision`).
        bits: "uniform", "closed-form" (alias "dynamic") or "dp".
        **options: as `layer_decision`.

    Returns:
        (Decision, FastInfo): the decision of `layer_decision` and what else is known about it
        (surrogate energy, eq. (27) estimate, per-helper energies, latency, slots).

    Raises:
        ConfigError: an unknown policy or bit loading, bad option values or shapes, or a fading family
            without a finite E[1/h] (and no inv_gain_mean option).

    Example:
        One token whose single expert lives on helper 1; with eta = 0 it must be served there. At unit
        gain in every slot uniform loading pays exactly the surrogate's uniform energy at unit gain,
        which the surrogate multiplies by E[1/h] = 2 (Gamma shape 2):

        >>> import jax
        >>> sc = Scenario(n_nodes=3, top_k=1, eta=0.0, deadline_s=0.05, slot_s=0.01, n_slots=8)
        >>> table = jnp.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
        >>> g, topk, d = jnp.ones((1, 1)), jnp.array([[1]]), jnp.array([50.0, 80.0])
        >>> run = jax.jit(lambda h: layer_decision_with_info(sc, d, h, g, topk, table, bits="uniform"))
        >>> dec, info = run(jnp.ones((2, 8)))
        >>> dec.assign.tolist(), dec.loads.tolist(), bool(dec.feasible), info.slots.tolist()[1]
        ([[1]], [0, 1, 0], True, 0)
        >>> abs(float(info.surrogate_energy_j) / float(dec.energy_j) - 2.0) < 1e-5
        True
    """
    return layer_decisions_with_info(sc, distance_m, slot_gain, g, topk, table, policy, (bits,), **options)[0]


def layer_decisions_with_info(
    sc: Scenario,
    distance_m,
    slot_gain,
    g,
    topk,
    table,
    policy: str = "siftmoe",
    bits: tuple[str, ...] = ("closed-form",),
    **options,
) -> list[tuple[Decision, FastInfo]]:
    """`layer_decision_with_info` for several bit loadings of one selection: the selection (on the
    surrogate, which does not depend on the bit loading) runs once, then each rule loads the same slots.

    Args:
        sc, distance_m, slot_gain, g, topk, table, policy, **options: as `layer_decision_with_info`.
        bits: bit loadings, each "uniform", "closed-form" (alias "dynamic") or "dp"; static.

    Returns:
        A list of (Decision, FastInfo), one per entry of `bits`, each equal to
        `layer_decision_with_info(..., bits=that entry)` (same selection, same slot gains).

    Raises:
        ConfigError: as `layer_decision_with_info`; also an empty `bits`.

    Example:
        Dynamic loading never pays more than uniform loading on the same selection and gains
        (see `layer_decision`'s example for the deep-fade case):

        >>> import jax
        >>> sc = Scenario(n_nodes=3, top_k=1, eta=0.5, deadline_s=0.05, slot_s=0.01, n_slots=4)
        >>> table = jnp.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.2, 1.0], [1.0, 0.2, 0.0, 1.0]])
        >>> g, topk, d = jnp.ones((1, 1)), jnp.array([[1]]), jnp.array([60.0, 60.0])
        >>> h = jnp.array([[0.05, 0.05, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
        >>> (u, _), (c, _) = jax.jit(lambda h: layer_decisions_with_info(sc, d, h, g, topk, table,
        ...                                                              bits=("uniform", "dynamic")))(h)
        >>> u.assign.tolist() == c.assign.tolist(), float(c.energy_j) < float(u.energy_j)
        (True, True)
    """
    if isinstance(bits, str) or not bits:
        raise ConfigError("bits", bits, "a non-empty tuple of bit loadings (uniform, closed-form, dynamic, dp)")
    names = [check_bits(policy, b) for b in bits]
    opts = dict(options)
    mine = {k: opts.pop(k) for k in OPTIONS if k in opts}
    iota_opt, h_rep = mine.get("inv_gain_mean"), mine.get("downlink_gain", 1.0)
    if not isinstance(h_rep, jax.core.Tracer) and not (
        isinstance(h_rep, (int, float)) and not isinstance(h_rep, bool) and math.isfinite(h_rep) and h_rep > 0
    ):
        raise ConfigError("downlink_gain", h_rep, "a finite number > 0 (the representative downlink power gain)")
    inverse_gain_mean(sc, iota_opt)  # raise early for families without a finite E[1/h]
    dp_grid, dp_quad = mine.get("dp_grid", fb.DP_GRID), mine.get("dp_quad", fb.DP_QUAD)
    if "dp" in names:
        _dp_tables(sc, dp_grid, dp_quad)  # checks, cached
    g, topk, table = jnp.asarray(g), jnp.asarray(topk), jnp.asarray(table)
    slot_gain = jnp.asarray(slot_gain)
    if slot_gain.shape != (sc.n_helpers, sc.n_slots):
        raise ConfigError("slot_gain", f"shape {slot_gain.shape}", f"float[N-1={sc.n_helpers}, Q={sc.n_slots}]")
    if g.ndim != 2:
        raise ConfigError("g", f"shape {g.shape}", "float[M, K]")
    sel = select_layer(
        sc,
        policy,
        g,
        topk,
        table,
        lambda: surrogate_costs(sc, distance_m, iota_opt, h_rep),
        lambda m: surrogate_marginal_costs(sc, distance_m, m, iota_opt, h_rep),
        **opts,
    )
    loads = sel.loads
    hl = loads[1:]
    e_user = costs.user_energy(sc, loads[0])
    user_ok = jnp.isfinite(e_user)
    e_user = jnp.where(user_ok, e_user, 0.0)
    dtype = jnp.result_type(float)
    latency = jnp.max(costs.node_latency(sc, distance_m, jnp.full((sc.n_helpers,), h_rep, dtype), loads))
    paper = paper_estimate(sc, distance_m, hl, slot_gain, iota_opt, h_rep)
    results = []
    for name in names:
        gamma, plan = allocate_bits(
            sc, distance_m, hl, slot_gain, name, iota_opt, h_rep, dp_grid, dp_quad, mine.get("dp_iters", fb.DP_ITERS)
        )
        e_help, ok = realised_energy(sc, distance_m, slot_gain, gamma, plan, hl)
        time_ok = (plan.uplink_s > 0) & (plan.uplink_s >= per_helper(sc, sc.helper_load_time_s))
        dec = sel.replace(
            energy_j=e_user + jnp.sum(jnp.where(ok, e_help, 0.0)), feasible=sel.feasible & user_ok & jnp.all(ok)
        )
        info = FastInfo(
            surrogate_energy_j=sel.energy_j,
            paper_estimate_j=e_user + jnp.sum(jnp.where(ok, paper, 0.0)),
            helper_energy_j=e_help,
            latency_s=latency,
            slots=jnp.where(hl > 0, plan.slots, 0).astype(jnp.int32),
            cap_bound=plan.capped,
            power_infeasible=jnp.any((hl > 0) & time_ok & ~jnp.isfinite(e_help)),
        )
        results.append((dec, info))
    return results


def layer_decision(
    sc: Scenario, distance_m, slot_gain, g, topk, table, policy: str = "siftmoe", bits: str = "closed-form", **options
) -> Decision:
    """Expert selection and bit loading for one layer under fast fading; energy_j is the realised energy.

    Args:
        sc: scenario (static: n_nodes, top_k, n_slots Q, fading; dynamic leaves may be traced).
        distance_m: float[N-1] helper distances (m).
        slot_gain: float[N-1, Q] per-slot power gains of this layer (`channel.draw(key, sc, fast=True)`
            gives [L, N-1, Q]).
        g: float[M, K] gate weights; topk: int[M, K] Top-K experts; table: float[N, N+1] mismatch Fbar.
        policy: selection policy name (`sift_jax.policies.names()`; prefilling: siftmoe or topk unless
            the registry's `get_prefill` knows more).
        bits: "uniform", "closed-form" (alias "dynamic") or "dp".
        **options: inv_gain_mean, downlink_gain, dp_grid, dp_quad, dp_iters (module docstring); the rest
            go to the policy. All static (Python values).

    Returns:
        Decision with assign int32[M, K], loads int32[N], deviation_bound float[M] from the selection
        on the surrogate, energy_j = realised user + helper energy (J; helpers whose transmission failed
        under the power cap are left out), feasible = selection feasible and every transmission
        delivered.

    Raises:
        ConfigError: as `layer_decision_with_info`.

    Example:
        Helper 1 (expert 1) sits in a deep fade (h = 0.05) for its first two slots. Expert 1 may be
        replaced by expert 2 (mismatch 0.2 <= eta) on helper 2, but the selection sees only the
        surrogate: equal distances give equal costs, and the tie goes to the lower deviation, helper 1.
        The realised energy then depends on the bit loading. With x = b / (B tau_n) ~ 2 over 4 slots,
        uniform loading pays (2^0.5 - 1)(20 + 20 + 0.5 + 0.5) ~ 17 c; Thm. 3 sends nothing in the fade
        (y_1 = (2 + 3 log2(0.05 E[1/h])) / 4 < 0, likewise y_2), then y_3 = (2 + log2(2 E[1/h])) / 2 = 2,
        paying (2^2 - 1) / 2 = 1.5 c:

        >>> import jax
        >>> sc = Scenario(n_nodes=3, top_k=1, eta=0.5, deadline_s=0.05, slot_s=0.01, n_slots=4)
        >>> table = jnp.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.2, 1.0], [1.0, 0.2, 0.0, 1.0]])
        >>> g, topk, d = jnp.ones((1, 1)), jnp.array([[1]]), jnp.array([60.0, 60.0])
        >>> h = jnp.array([[0.05, 0.05, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
        >>> uniform, dynamic = jax.jit(lambda h: [layer_decision(sc, d, h, g, topk, table, bits=bits)
        ...                                       for bits in ("uniform", "dynamic")])(h)
        >>> uniform.assign.tolist(), dynamic.assign.tolist(), float(dynamic.energy_j) < float(uniform.energy_j) / 5
        ([[1]], [[1]], True)
    """
    return layer_decision_with_info(sc, distance_m, slot_gain, g, topk, table, policy, bits, **options)[0]
