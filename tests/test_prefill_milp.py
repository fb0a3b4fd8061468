"""The fast prefill solver at the GPT-OSS preset scale against an exact MILP (SciPy `milp`, HiGHS).

The MILP is written here from the problem statement (paper §3.4, policies/prefill.py), without any of
the package's solvers or set machinery: binaries x[m, k, v] (Top-K slot k of token m is served by node
v; no x = skipped), z[m, v] = OR_k x[m, k, v] (token m uses node v: a node serving two slots of one
token counts once in its load) and per-node unit binaries y[v, d] (the node's (d+1)-th token) with
y[v, d] >= y[v, d + 1], so energy = sum dE[v, d] y[v, d] is exact for any marginal costs (the user's
non-convex first marginal included). Constraints: each slot at most one node; per token
sum_k g_k Fbar[topk_k, node or skip] <= eta, 1 <= #nodes <= K (at least one expert, eq. 16d); loads
D_v = sum_m z[m, v] <= the capacity (cap, cut at the first inf marginal). It is validated against the
package's exact DP (Algorithm 2) on small random instances, then used as the reference for "fast" at
N = 32, K = 4, M = 128 (the preset's own M) on instances drawn as `simulate` draws them.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from sift_jax import channel, costs, gating, presets, similarity
from sift_jax.scenario import Scenario
from sift_jax.testing.numpy_reference import cap_eff

# `sift_jax.policies.prefill` is also the name of the function re-exported by the package.
P = importlib.import_module("sift_jax.policies.prefill")

ETA_TOL = 1e-9  # relative tolerance on the deviation bound eta (float64 sums)


# ----------------------------------------------------------------------------- NumPy reference


def check_assignment(x, eta, assign):
    """Check a selection against the MILP's constraints in NumPy; return (energy J, loads, deviations).

    assign int[M, K]: node per Top-K slot, -1 = skipped. Loads count tokens (a node serving two slots of
    one token counts once)."""
    dE, g, topk, table = x["dE"], x["g"], x["topk"], x["table"]
    n = dE.shape[0]
    m, k = g.shape
    assign = np.asarray(assign)
    assert assign.shape == (m, k)
    assert np.all((assign >= -1) & (assign < n)), "node index out of range"
    assert np.all(np.any(assign >= 0, 1)), "a token runs no expert (16d)"
    uses = np.zeros((m, n), bool)
    rows, cols = np.nonzero(assign >= 0)
    uses[rows, assign[rows, cols]] = True
    assert np.all(uses.sum(1) <= k)
    loads = uses.sum(0)
    assert np.all(loads <= cap_eff(dE, x["cap"])), "a load exceeds its capacity"
    col = np.where(assign >= 0, assign, n)
    dev = (g * table[topk, col]).sum(1)
    assert np.all(dev <= eta * (1 + ETA_TOL) + 1e-12), f"deviation {dev.max()} > eta {eta}"
    energy = float(sum(dE[v, : loads[v]].sum() for v in range(n)))
    return energy, loads, dev


def topk_energy(x):
    """Energy of serving every slot by its own expert (deviation 0), inf if a load exceeds capacity."""
    n = x["dE"].shape[0]
    loads = np.bincount(x["topk"].ravel(), minlength=n)  # Top-K experts of a token are distinct
    if np.any(loads > cap_eff(x["dE"], x["cap"])):
        return np.inf
    return float(sum(x["dE"][v, : loads[v]].sum() for v in range(n)))


def solve_milp(x, eta, time_limit=60.0):
    """Exact optimum by SciPy `milp` (HiGHS): (energy J or inf, assign int[M, K] or None, dual bound J).

    Variable reductions, each leaving the optimum unchanged:
    - x[m, k, v] only where slot k alone already breaks eta otherwise is excluded: g_k Fbar[i_k, v] plus
      the least possible deviation of the other slots <= eta; and only where node v beats the skip
      (Fbar[i_k, v] <= Fbar[i_k, N]) or the token is feasible with that slot as its only served one
      (exchange argument: a served slot worse than skipping can be skipped, never raising the energy
      as dE >= 0, unless it is the token's only served slot);
    - y[v, d] only for d < the capacity, and not from the first marginal above the Top-K energy (a
      feasible selection's energy, so an upper bound on the optimum; every marginal is >= 0).
    Valid inequalities y[v, 0] >= z[m, v] tighten the LP (the user's one-off load energy sits in its
    first marginal). Returns inf, None, inf when infeasible.
    """
    dE, g, topk, table = x["dE"], x["g"], x["topk"], x["table"]
    n = dE.shape[0]
    m, k = g.shape
    ce = np.minimum(cap_eff(dE, x["cap"]), m)
    ub = topk_energy(x)
    if np.isfinite(ub):
        ce = np.array([min(ce[v], int(np.argmax(np.append(dE[v] > ub, True)))) for v in range(n)])
    node_dev = g[..., None] * table[topk][..., :n]  # [M, K, N]
    skip_dev = g * table[topk, n]  # [M, K]
    least = np.minimum(node_dev.min(-1), skip_dev)
    others = (least.sum(1, keepdims=True) - least)[..., None]
    useful = table[topk][..., :n] <= table[topk][..., n:]
    alone = node_dev + (skip_dev.sum(1, keepdims=True) - skip_dev)[..., None] <= eta
    allow = (node_dev + others <= eta) & (useful | alone) & (ce >= 1)[None, None, :]
    xs = np.argwhere(allow)  # (m, k, v) per x variable
    if len(np.unique(xs[:, 0])) < m:
        return np.inf, None, np.inf  # some token has no way to meet eta within capacity
    zs = np.unique(xs[:, [0, 2]], axis=0)  # (m, v) per z variable
    ys = np.array([(v, d) for v in range(n) for d in range(ce[v])]).reshape(-1, 2)
    nx, nz, ny = len(xs), len(zs), len(ys)
    z_of = {(a, b): nx + i for i, (a, b) in enumerate(zs)}
    y_of = {(a, b): nx + nz + i for i, (a, b) in enumerate(ys)}

    rows, cols, vals, lo, hi = [], [], [], [], []

    def add(c, v, lower, upper):
        rows.extend([len(lo)] * len(c))
        cols.extend(c)
        vals.extend(v)
        lo.append(lower)
        hi.append(upper)

    for mm, kk in np.unique(xs[:, :2], axis=0):  # each slot: at most one node
        idx = np.flatnonzero((xs[:, 0] == mm) & (xs[:, 1] == kk))
        add(idx, [1.0] * len(idx), -np.inf, 1.0)
    for mm in range(m):  # deviation bound: skip everything, minus what each served slot saves
        idx = np.flatnonzero(xs[:, 0] == mm)
        saving = node_dev[mm, xs[idx, 1], xs[idx, 2]] - skip_dev[mm, xs[idx, 1]]
        add(idx, saving, -np.inf, eta - skip_dev[mm].sum())
    for (mm, v), j in z_of.items():  # z[m, v] = OR_k x[m, k, v]
        idx = np.flatnonzero((xs[:, 0] == mm) & (xs[:, 2] == v))
        for i in idx:
            add([j, i], [1.0, -1.0], 0.0, np.inf)
        add([j, *idx], [1.0] + [-1.0] * len(idx), -np.inf, 0.0)
    for mm in range(m):  # 1 <= |J_m| <= K
        idx = [j for (a, _), j in z_of.items() if a == mm]
        add(idx, [1.0] * len(idx), 1.0, k)
    for v in range(n):  # load D_v = sum_m z[m, v] = sum_d y[v, d], units in order
        zv = [j for (_, b), j in z_of.items() if b == v]
        yv = [y_of[v, d] for d in range(ce[v])]
        if not zv:
            continue
        if not yv:
            return np.inf, None, np.inf  # unreachable: x needs ce >= 1
        add(zv + yv, [1.0] * len(zv) + [-1.0] * len(yv), 0.0, 0.0)
        for d in range(ce[v] - 1):
            add([yv[d], yv[d + 1]], [1.0, -1.0], 0.0, np.inf)
        for j in zv:
            add([yv[0], j], [1.0, -1.0], 0.0, np.inf)

    n_var = nx + nz + ny
    a = sparse.csr_array((vals, (rows, cols)), shape=(len(lo), n_var))
    c = np.zeros(n_var)
    c[nx + nz :] = dE[ys[:, 0], ys[:, 1]]
    # HiGHS also stops at an absolute gap of 1e-6 (not settable through SciPy): scale the objective up
    first = dE[:, 0][np.isfinite(dE[:, 0]) & (dE[:, 0] > 0)]
    scale = (float(np.median(first)) if first.size else 1.0) * 1e-3
    res = milp(
        c / scale,
        constraints=LinearConstraint(a, lo, hi),
        integrality=np.ones(n_var),
        bounds=Bounds(0, 1),
        options=dict(mip_rel_gap=1e-9, time_limit=time_limit),
    )
    if res.status == 2:
        return np.inf, None, np.inf
    assert res.status == 0, f"MILP not solved to optimality: {res.message}"
    assert res.fun - res.mip_dual_bound <= 1e-9 * abs(res.fun), "MILP gap above 1e-9"
    sol = np.round(res.x[:nx]).astype(bool)
    assign = np.full((m, k), -1, np.int64)
    assign[xs[sol, 0], xs[sol, 1]] = xs[sol, 2]
    return float(res.fun * scale), assign, float(res.mip_dual_bound * scale)


# ----------------------------------------------------------------------------- instances and solvers


@functools.cache
def _prefill(method):
    """jit(prefill_with_info) with the method fixed; the scenario (eta traced) is an argument."""
    return jax.jit(
        lambda sc, x: P.prefill_with_info(sc, x["dE"], x["cap"], x["g"], x["topk"], x["table"], method=method)
    )


def solve(method, sc, x):
    dec, info = _prefill(method)(sc, {name: jnp.asarray(v) for name, v in x.items()})
    return jax.tree.map(np.asarray, dec), jax.tree.map(np.asarray, info)


@functools.cache
def _gpt_oss():
    """The preset with one layer (each instance is layer 0 of one sample) and its mismatch table."""
    sc = presets.get("gpt-oss-20b").replace(n_layers=1)
    assert (sc.n_nodes, sc.top_k, sc.n_tokens) == (32, 4, 128)
    return sc, np.asarray(similarity.synthetic_tables(sc)[0])


@functools.cache
def gpt_oss_instance(seed):
    """Layer 0 of sample `seed`, drawn as `simulate` draws it (TaskMetrics.__call__ and .layer): channel
    and gates from split(key(seed)), dE = marginal_costs(..., M), cap = capacities(...) (float64)."""
    sc, table = _gpt_oss()
    k_channel, k_gate = jax.random.split(jax.random.key(seed))
    ch = channel.draw(k_channel, sc)
    g, topk = gating.draw(k_gate, sc)
    dE = costs.marginal_costs(sc, ch.distance_m, ch.gain[0], sc.n_tokens)
    cap = costs.capacities(sc, ch.distance_m, ch.gain[0])
    x = dict(dE=dE, cap=cap, g=g[0], topk=topk[0], table=table)
    return {name: np.asarray(v) for name, v in x.items()}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("m, n, k", [(4, 5, 4), (5, 5, 3)])
def test_milp_equals_dp_on_small_instances(x64, m, n, k):
    """The MILP formulation is exact: on 40 random instances per shape (`prefill.random_instances`:
    tight and zero capacities, the user's one-off load energy, eta in [0, 1], some infeasible) its
    optimum and feasibility equal the package's exact DP (Algorithm 2, a different algorithm over the
    load vector), and its solution passes the NumPy constraint check with the energy it reports.
    Independent: the MILP and the NumPy check; only the DP and the instance generator are the package's."""
    batch = 40
    inst = P.random_instances(jax.random.key(7), batch, m, n, k, dtype=jnp.float64)
    inst = {name: np.asarray(v) for name, v in inst.items()}
    sc = Scenario(n_nodes=n, top_k=k, n_tokens=m)
    n_feasible = 0
    for b in range(batch):
        x = {name: v[b] for name, v in inst.items() if name != "eta"}
        eta = float(inst["eta"][b])
        dec, _ = solve("dp", sc.replace(eta=eta), x)
        energy, assign, dual = solve_milp(x, eta)
        assert np.isfinite(energy) == bool(dec.feasible), f"instance {b}: MILP {energy}, DP feasible {dec.feasible}"
        if not dec.feasible:
            continue
        n_feasible += 1
        np.testing.assert_allclose(energy, dec.energy_j, rtol=1e-9, err_msg=f"instance {b}")
        np.testing.assert_allclose(check_assignment(x, eta, assign)[0], energy, rtol=1e-9)
        assert dual <= energy * (1 + 1e-9)
    assert 10 <= n_feasible < batch  # both outcomes are exercised


# (seed, eta): eta around the preset's 30 (GPT-OSS synthetic tables: the top expert becomes replaceable
# near 30, see similarity.synthetic_tables), each instance solved by HiGHS in ~1-3 s on 2 CPU cores (the
# first case also pays the ~10 s compilation of the fast solver). In every optimum here the user runs
# tokens too, so its one-off load energy (non-convex first marginal) is exercised at this scale.
GPT_OSS_CASES = [(1, 15.0), (0, 20.0), (3, 25.0), (0, 30.0)]


@pytest.mark.parametrize("seed, eta", GPT_OSS_CASES)
def test_fast_against_milp_at_gpt_oss_scale(x64, seed, eta):
    """method="fast" at N = 32, K = 4, M = 128 (the GPT-OSS preset) against the exact MILP.

    Independent: the MILP and the NumPy constraint/energy check (the solver is only called). Checks:
    fast's selection meets every MILP constraint and its reported loads, deviations and energy equal the
    NumPy recomputation; fast >= the MILP's dual bound (nothing beats the exact optimum); its Lagrangian
    lower bound <= the MILP optimum (a valid certificate, which bounds fast/opt - 1 by
    rel_gap / (1 - rel_gap)); and fast/opt - 1 <= 1%. Measured gaps: 1.84e-3, 3.15e-4, 4.06e-4, 2.3e-5
    (the cases in order); BENCHMARKS.md reports certified gaps of 1-2% at this N, K and the prefill
    tests bound the mean gap to the DP by 1%, so 1% per instance is a margin of 5x over the worst case
    measured here. The instance is non-trivial: the optimum replaces and skips experts and beats Top-K.
    """
    sc, _ = _gpt_oss()
    x = gpt_oss_instance(seed)
    dec, info = solve("fast", sc.replace(eta=eta), x)
    assert dec.feasible and info.method == "fast"
    energy, loads, dev = check_assignment(x, eta, dec.assign)
    np.testing.assert_array_equal(loads, dec.loads)
    np.testing.assert_allclose(dev, dec.deviation_bound, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dec.energy_j, energy, rtol=1e-9)

    opt, assign, dual = solve_milp(x, eta)
    assert np.isfinite(opt)
    opt_check, _, _ = check_assignment(x, eta, assign)
    np.testing.assert_allclose(opt_check, opt, rtol=1e-7)
    n_replaced = np.sum((assign >= 0) & (assign != x["topk"]))
    n_skipped = np.sum(assign < 0)
    assert n_replaced > 0 and n_skipped > 0 and opt < 0.9 * topk_energy(x)

    gap = float(dec.energy_j) / opt - 1
    assert float(dec.energy_j) >= dual * (1 - 1e-9), f"fast {dec.energy_j} below the MILP bound {dual}"
    assert float(info.lower_bound) <= opt * (1 + 1e-9), f"fast's lower bound {info.lower_bound} > optimum {opt}"
    assert gap <= float(info.rel_gap) / (1 - float(info.rel_gap)) + 1e-9
    assert gap <= 0.01, f"fast is {gap:.2%} above the MILP optimum"
