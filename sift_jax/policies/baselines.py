"""Decoding baselines (paper §6): ideal Top-K, practical Top-K and a WDMoE-style threshold rule.

All take the decoding signature (sc, f, g, topk, table, ...) of `policies.decode` and return a
`Decision` for one token of one layer. Unlike SiftMoE (which reports nothing when it finds no feasible
selection), the baselines always report their real outcome (what is sent, its energy and deviation) and
use `feasible` as a flag: the selection met every constraint (deadline, eta, >= 1 expert).

Readings (INFERRED; the paper gives no formulas for the baselines):

- `topk_ideal`: every Top-K expert is assumed delivered: assign = topk, deviation 0 (the accuracy upper
  bound). Energy = sum of f over the Top-K nodes *with finite cost*. If some Top-K node cannot meet the
  deadline (f = inf) the ideal is physically unattainable: feasible = False and the reported energy is
  the finite part only (a lower bound on what the ideal would cost; never inf).
- `topk` (practical): each Top-K slot is sent to its own expert's node; a node with f = inf misses the
  deadline, its output is lost and counts as a skip (deviation g_i Fbar[i, N]; n_skipped counts lost
  slots). Energy counts what is actually sent (the finite-cost nodes), also when something was lost.
  feasible = no Top-K expert lost (then the deviation is 0 <= eta).
- `wdmoe` (WDMoE, Xue et al., as summarised in SiftMoE's introduction): after practical Top-K delivery,
  compare the gate-weight vector w = (g_i) of the delivered experts with their per-expert latency vector
  t by cosine similarity cos(w, t) = <w, t> / (|w| |t|); if it is below `threshold` (and >= 2 experts
  are delivered) drop the lowest-weight delivered expert (one drop per token and layer). A low cosine
  means the weights and latencies disagree: the small-weight experts are the slow ones, so the
  lowest-weight one is dropped. The dropped expert is a skip in the deviation and is not sent.
  Latency vector: `latency_s` float[N] (s) when given (e.g. a fixed-power per-node latency the caller
  computes); by default the node costs f (J) stand in for it: both grow as a helper's channel and
  compute worsen, and f is what every decoding policy receives. feasible = no expert lost to the
  deadline and deviation <= eta (a deliberate drop can break eta).
"""

from __future__ import annotations

import jax.numpy as jnp

from sift_jax.errors import ConfigError
from sift_jax.policies._decode_core import check_inputs, loads_of, seq_sum, slot_values
from sift_jax.policies.decision import Decision, make_decision
from sift_jax.scenario import Scenario

__all__ = ["topk", "topk_ideal", "wdmoe"]

DEFAULT_WDMOE_THRESHOLD = 0.5


def _outcome(sc, f, topk, e, s, assign, feasible) -> Decision:
    """Decision for a baseline mapping (each slot its own node or -1); energy of the finite nodes used."""
    n = sc.n_nodes
    loads = loads_of(assign, n)
    energy = seq_sum(jnp.where(assign >= 0, jnp.where(jnp.isfinite(f[topk]), f[topk], 0.0), 0.0))
    picked = jnp.take_along_axis(e, jnp.clip(assign, 0, n - 1)[:, None], axis=1)[:, 0]
    dev = seq_sum(jnp.where(assign >= 0, picked, s))
    return make_decision(assign, loads, energy, dev, feasible, topk, reports_infeasible=True)


def topk_ideal(sc: Scenario, f, g, topk, table) -> Decision:
    """Ideal Top-K: every Top-K expert delivered (accuracy upper bound, deviation 0).

    Args:
        sc: scenario; uses `n_nodes` N and `top_k` K (static).
        f: float[N] decoding node costs (J), inf = misses the deadline (as `policies.decode`).
        g: float[K] Top-K gate weights.
        topk: int[K] Top-K expert indices (expert v lives on node v).
        table: float[N, N+1] mean mismatch Fbar, column N = skip.

    Returns:
        Decision with assign int32[K] = topk, loads int32[N] 1 on the Top-K nodes, energy_j = sum of the
        finite f over the Top-K nodes (J), deviation_bound 0, feasible = every Top-K node meets the
        deadline.

    Example:
        Node 1 misses the deadline: the ideal still "delivers" its expert but is flagged infeasible, and
        only node 2's 2 J count:

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, top_k=2)
        >>> f, g, idx = jnp.array([1.0, jnp.inf, 2.0]), jnp.array([0.6, 0.4]), jnp.array([2, 1])
        >>> d = jax.jit(topk_ideal)(sc, f, g, idx, jnp.ones((3, 4)))
        >>> d.assign.tolist(), float(d.energy_j), float(d.deviation_bound), bool(d.feasible)
        ([2, 1], 2.0, 0.0, False)
    """
    f, g, topk, table = check_inputs(sc, f, g, topk, table)
    e, s = slot_values(g, topk, table)
    d = _outcome(sc, f, topk, e, s, topk, jnp.all(jnp.isfinite(f[topk])))
    return d.replace(deviation_bound=jnp.zeros_like(d.deviation_bound))


def topk(sc: Scenario, f, g, topk, table) -> Decision:
    """Practical Top-K: slots whose node misses the deadline (f = inf) are lost (= skipped).

    Args:
        sc: scenario; uses `n_nodes` N and `top_k` K (static).
        f: float[N] decoding node costs (J), inf = misses the deadline (as `policies.decode`).
        g: float[K] Top-K gate weights.
        topk: int[K] Top-K expert indices (expert v lives on node v).
        table: float[N, N+1] mean mismatch Fbar, column N = skip.

    Returns:
        Decision with assign int32[K] (assign_i = topk_i, or -1 when lost), loads int32[N], energy_j =
        sum of f over the delivered nodes (J), deviation_bound = sum of g_i Fbar[topk_i, N] over the lost
        slots, n_skipped = lost slots, feasible = nothing lost.

    Example:
        Expert 1's node misses the deadline: its slot (g = 0.4, skip mismatch 3) is lost, deviation
        0.4 * 3 = 1.2 > eta:

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, top_k=2, eta=1.0)
        >>> table = jnp.array([[0.0, 1.0, 1.0, 2.0], [1.0, 0.0, 1.0, 3.0], [1.0, 1.0, 0.0, 4.0]])
        >>> d = jax.jit(topk)(sc, jnp.array([1.0, jnp.inf, 2.0]), jnp.array([0.6, 0.4]), jnp.array([2, 1]), table)
        >>> d.assign.tolist(), float(d.energy_j), round(float(d.deviation_bound), 4), int(d.n_skipped), bool(d.feasible)
        ([2, -1], 2.0, 1.2, 1, False)
    """
    f, g, topk_idx, table = check_inputs(sc, f, g, topk, table)
    e, s = slot_values(g, topk_idx, table)
    delivered = jnp.isfinite(f[topk_idx])
    assign = jnp.where(delivered, topk_idx, -1)
    return _outcome(sc, f, topk_idx, e, s, assign, jnp.all(delivered))


def wdmoe(sc: Scenario, f, g, topk, table, threshold: float = DEFAULT_WDMOE_THRESHOLD, latency_s=None) -> Decision:
    """WDMoE-style rule: drop the lowest-weight expert when cos(weights, latencies) < threshold.

    See the module docstring for the reading. Experts on nodes with f = inf are lost first (as in
    practical Top-K); the cosine is taken over the delivered experts only.

    Args:
        sc: scenario; uses `eta`, `n_nodes` N and `top_k` K (static).
        f: float[N] decoding node costs (J), inf = misses the deadline (as `policies.decode`).
        g: float[K] Top-K gate weights.
        topk: int[K] Top-K expert indices (expert v lives on node v).
        table: float[N, N+1] mean mismatch Fbar, column N = skip.
        threshold: cosine threshold theta in [0, 1] (may be traced); default 0.5 (our choice: with the
            energy proxy, whose values span orders of magnitude, cos ~ g_j / |g| for the costliest expert
            j, so 0.5 drops when the costliest expert carries a small weight; with equal latencies
            cos = sum(g) / (|g| sqrt(K)) >= 1/sqrt(K) never triggers for K <= 4).
        latency_s: optional float[N] per-node latency (s); default: the node costs f stand in.

    Returns:
        Decision with assign int32[K] (assign_i = topk_i, or -1 when lost or dropped), loads int32[N],
        energy_j = sum of f over what is sent (J), deviation_bound = sum of g_i Fbar[topk_i, N] over the
        lost and dropped slots, feasible = nothing lost and deviation <= eta.

    Raises:
        ConfigError: `latency_s` is given with a shape other than [N].

    Example:
        cos((0.7, 0.3), (1, 1.2)) = 1.06 / (0.762 * 1.562) = 0.89 keeps both experts;
        cos((0.7, 0.3), (1, 20)) = 6.7 / (0.762 * 20.02) = 0.44 < 0.5 drops the lighter one (slot 1,
        skip mismatch 4: deviation 0.3 * 4 = 1.2):

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=3, top_k=2, eta=2.0)
        >>> table = jnp.array([[0.0, 1.0, 1.0, 2.0], [1.0, 0.0, 1.0, 3.0], [1.0, 1.0, 0.0, 4.0]])
        >>> g, idx = jnp.array([0.7, 0.3]), jnp.array([0, 2])
        >>> policy = jax.jit(wdmoe)
        >>> policy(sc, jnp.array([1.0, 1.0, 1.2]), g, idx, table).assign.tolist()
        [0, 2]
        >>> d = policy(sc, jnp.array([1.0, 1.0, 20.0]), g, idx, table)
        >>> d.assign.tolist(), float(d.energy_j), round(float(d.deviation_bound), 4), bool(d.feasible)
        ([0, -1], 1.0, 1.2, True)
    """
    f, g, topk_idx, table = check_inputs(sc, f, g, topk, table)
    if latency_s is None:
        lat = f[topk_idx]
    else:
        latency_s = jnp.asarray(latency_s, f.dtype)
        if latency_s.shape != (sc.n_nodes,):
            raise ConfigError("latency_s", f"array of shape {latency_s.shape}", f"float[N={sc.n_nodes}] or None")
        lat = latency_s[topk_idx]
    e, s = slot_values(g, topk_idx, table)
    delivered = jnp.isfinite(f[topk_idx]) & jnp.isfinite(lat)
    w = jnp.where(delivered, g, 0.0)
    t = jnp.where(delivered, lat, 0.0)
    norm = jnp.sqrt(jnp.sum(w * w)) * jnp.sqrt(jnp.sum(t * t))
    cos = jnp.where(norm > 0, jnp.sum(w * t) / jnp.where(norm > 0, norm, 1.0), 1.0)
    k = topk_idx.shape[0]
    # lowest-weight delivered slot (ties: the later slot)
    last = k - 1 - jnp.argmin(jnp.where(delivered, g, jnp.inf)[::-1])
    drop = (jnp.sum(delivered) >= 2) & (cos < threshold)
    keep = delivered & ~(drop & (jnp.arange(k) == last))
    assign = jnp.where(keep, topk_idx, -1)
    d = _outcome(sc, f, topk_idx, e, s, assign, jnp.all(delivered))
    return d.replace(feasible=d.feasible & (d.deviation_bound <= jnp.asarray(sc.eta, f.dtype)))
