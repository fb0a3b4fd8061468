"""Prefill policies (paper §4.2-§4.4) against independent references: brute force over every mapping
of every token, SciPy's linear_sum_assignment on the slot-expanded cost matrix, and the DP."""

from __future__ import annotations

import functools
import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from sift_jax.errors import ConfigError
from sift_jax.policies._sets import combo_index
from sift_jax.policies.prefill_dp import dp_size
from sift_jax.scenario import Scenario

# `sift_jax.policies.prefill` is also the name of the function re-exported by the package.
P = importlib.import_module("sift_jax.policies.prefill")


@pytest.fixture
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@functools.cache
def _generator(m, n, k):
    return jax.jit(
        lambda key, tight, cap_lo, batch: P.random_instances(
            key, batch, m, n, k, dtype=jnp.float64, tight=tight, cap_lo=cap_lo
        ),
        static_argnums=3,
    )


def instances(seed, batch, m, n, k, tight=0.3, cap_lo=0.0):
    """A batch of random float64 instances (one vmapped, jitted draw), as a dict of numpy arrays."""
    with jax.enable_x64(True):
        inst = _generator(m, n, k)(jax.random.key(seed), jnp.float64(tight), jnp.float64(cap_lo), batch)
        return {name: np.asarray(v) for name, v in inst.items()}


def one(inst, b):
    return {name: v[b] for name, v in inst.items()}


_JITTED = {}
_RESULTS = {}


def solve(method, inst, **options):
    """vmapped, jitted solver over a batch of one shape; returns (Decision, PrefillInfo) as numpy."""
    m, k = inst["g"].shape[1:]
    n = inst["dE"].shape[1]
    key = (method, m, n, k, tuple(sorted(options.items())))
    if key not in _JITTED:
        sc = Scenario(n_nodes=n, top_k=k, n_tokens=m)

        def f(x):
            s = sc.replace(eta=x["eta"])
            if method == "topk":
                return P.topk(s, x["dE"], x["cap"], x["g"], x["topk"], x["table"]), None
            return P.prefill_with_info(s, x["dE"], x["cap"], x["g"], x["topk"], x["table"], method=method, **options)

        _JITTED[key] = jax.jit(jax.vmap(f))
    out = _JITTED[key]({name: jnp.asarray(v) for name, v in inst.items()})
    return jax.tree.map(np.asarray, out)


def cached(method, seed, batch, m, n, k, **options):
    """Instances and a solver's results, computed once per session (several tests share them)."""
    key = (method, seed, batch, m, n, k, tuple(sorted(options.items())))
    if key not in _RESULTS:
        inst = instances(seed, batch, m, n, k)
        _RESULTS[key] = (inst, solve(method, inst, **options))
    return _RESULTS[key]


def energies(dec):
    return np.where(dec.feasible, dec.energy_j, np.inf)


def same(a, b, rtol=1e-9):
    return (np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))) | np.isclose(a, b, rtol=rtol, atol=0)


# ----------------------------------------------------------------------------- references


def cap_eff(dE, cap):
    finite = np.cumprod(np.isfinite(dE), axis=1).sum(1)
    return np.minimum(cap, finite)


def brute_force(x):
    """Optimal energy by enumeration: each token chooses the image J of a mapping of its Top-K slots
    to nodes or skip (J non-empty, all nodes of J available, sum_i g_i Fbar[i, phi_i] <= eta).
    Returns (energy or inf, number of optimal solutions' that use the user node > 0)."""
    dE, g, topk, table, eta = x["dE"], x["g"], x["topk"], x["table"], x["eta"]
    n, width = dE.shape
    m, k = g.shape
    ce = cap_eff(dE, x["cap"])
    ecum = np.concatenate([np.zeros((n, 1)), np.cumsum(np.where(np.isfinite(dE), dE, 0.0), 1)], 1)
    ecum = np.where(np.arange(width + 1)[None] <= ce[:, None], ecum, np.inf)
    phis = np.array(list(itertools.product(range(n + 1), repeat=k)))  # [P, K], n = skip
    loads = np.zeros((1, n), np.int64)
    for t in range(m):
        devs = (g[t][None, :] * table[topk[t][None, :], phis]).sum(1)
        opts = set()
        for phi, dev in zip(phis, devs):
            j = frozenset(int(v) for v in phi if v < n)
            if j and dev <= eta and all(ce[v] >= 1 for v in j):
                opts.add(j)
        if not opts:
            return np.inf, False
        vec = np.array([[v in j for v in range(n)] for j in sorted(opts, key=sorted)], np.int64)
        loads = (loads[:, None, :] + vec[None]).reshape(-1, n)
    energy = ecum[np.arange(n)[None], np.minimum(loads, width)].sum(1)
    best = energy.min()
    return best, bool(np.isfinite(best) and np.any(loads[energy <= best * (1 + 1e-12)][:, 0] > 0))


def lsa_k1(x):
    """K = 1 optimum from scipy's linear_sum_assignment on the slot-expanded cost matrix, solved with
    the user off and with the user on and its one-off load energy prepaid."""
    dE, g, topk, table, eta = x["dE"], x["g"], x["topk"], x["table"], x["eta"]
    n, width = dE.shape
    m = g.shape[0]
    ce = cap_eff(dE, x["cap"])
    omega = (g[:, :1] * table[topk[:, 0], :n] <= eta) & (ce >= 1)

    def run(cost, allowed):
        cols, node = [], []
        for v in range(n):
            if allowed[v]:
                for d in range(min(ce[v], m)):
                    cols.append(cost[v, d])
                    node.append(v)
        if len(cols) < m:
            return np.inf
        mat = np.where(omega[:, node], np.array(cols)[None, :], np.inf)
        try:
            r, c = linear_sum_assignment(mat)
        except ValueError:
            return np.inf
        return mat[r, c].sum()

    off = run(dE, np.arange(n) != 0)
    pre = dE.copy()
    one_off = 0.0
    if width >= 2 and np.isfinite(dE[0, 1]):
        one_off = dE[0, 0] - dE[0, 1]
        pre[0, 0] = dE[0, 1]
    return min(off, run(pre, np.ones(n, bool)) + one_off)


def check_decisions(inst, dec, tol=1e-9):
    """Each returned Decision is internally consistent: loads = tokens using each node, energy from the
    loads, deviation recomputed from assign, within capacity and eta; infeasible ones are all -1."""
    for b in range(len(dec.feasible)):
        x = one(inst, b)
        n = x["dE"].shape[0]
        a = dec.assign[b]
        if not dec.feasible[b]:
            assert np.all(a == -1) and np.all(dec.loads[b] == 0) and dec.energy_j[b] == 0
            continue
        loads = np.array([np.sum(np.any(a == v, 1)) for v in range(n)])
        np.testing.assert_array_equal(loads, dec.loads[b])
        assert np.all(loads <= cap_eff(x["dE"], x["cap"]))
        energy = sum(x["dE"][v, : loads[v]].sum() for v in range(n))
        np.testing.assert_allclose(dec.energy_j[b], energy, rtol=tol)
        col = np.where(a >= 0, a, n)
        dev = (x["g"] * np.take_along_axis(x["table"][x["topk"]], col[..., None], -1)[..., 0]).sum(1)
        np.testing.assert_allclose(dec.deviation_bound[b], dev, rtol=1e-9, atol=1e-12)
        assert np.all(dev <= x["eta"] * (1 + 1e-9) + 1e-12)
        assert np.all(np.any(a >= 0, 1))  # at least one expert per token
        assert dec.n_skipped[b] == np.sum(a < 0)
        assert dec.n_replaced[b] == np.sum((a >= 0) & (a != x["topk"]))


# ----------------------------------------------------------------------------- exact K = 1


def naive_slot_lsa(x):
    """Prop. 2 as printed: the user's one-off cost left in its first slot, one slot-expanded LSA."""
    dE, g, topk, table, eta = x["dE"], x["g"], x["topk"], x["table"], x["eta"]
    n = dE.shape[0]
    m = g.shape[0]
    ce = cap_eff(dE, x["cap"])
    omega = (g[:, :1] * table[topk[:, 0], :n] <= eta) & (ce >= 1)
    node = [v for v in range(n) for _ in range(min(ce[v], m))]
    cols = [dE[v, d] for v in range(n) for d in range(min(ce[v], m))]
    mat = np.where(omega[:, node], np.array(cols)[None, :], np.inf)
    try:
        r, c = linear_sum_assignment(mat)
    except ValueError:
        return np.inf
    return mat[r, c].sum()


def test_exact_k1_equals_lsa_and_brute_force(x64):
    inst, (dec, info) = cached("exact", 11, 2000, 6, 5, 1)
    e = energies(dec)
    ref_lsa = np.array([lsa_k1(one(inst, b)) for b in range(2000)])
    bf = [brute_force(one(inst, b)) for b in range(2000)]
    ref_bf = np.array([r[0] for r in bf])
    assert np.all(same(ref_lsa, ref_bf)), "the two references disagree"
    assert np.all(same(e, ref_bf))
    assert np.all(dec.feasible == np.isfinite(ref_bf))
    np.testing.assert_array_equal(info.lower_bound, np.where(dec.feasible, e, np.inf))
    assert np.isfinite(ref_bf).sum() >= 800
    assert sum(r[1] for r in bf) >= 200  # the user node is optimal for some tokens
    assert np.sum(dec.loads[:, 0] > 0) >= 200
    # The correction matters: a slot-expanded LSA with the one-off cost in the user's first slot
    # (Prop. 2 as printed) can take the user's cheap later slots without the first.
    naive = np.array([naive_slot_lsa(one(inst, b)) for b in range(300)])
    assert np.sum(naive < ref_bf[:300] * (1 - 1e-9)) >= 5
    check_decisions(inst, dec)


@pytest.mark.parametrize("use_bitmask", [True, False])
def test_exact_k1_token_classes_equal_lsa(x64, use_bitmask):
    m, n = 40, 5  # N (N + 1) = 30 < M: the search runs over token classes (M = 6 above: over tokens)
    inst, (dec, _) = cached("exact", 12, 300, m, n, 1, use_bitmask=use_bitmask)
    ref = np.array([lsa_k1(one(inst, b)) for b in range(300)])
    assert np.all(same(energies(dec), ref))
    assert np.isfinite(ref).sum() >= 60
    check_decisions(inst, dec)


def test_exact_refuses_k2():
    x = instances(0, 1, 3, 3, 2)
    with pytest.raises(ConfigError, match="top_k = 1"):
        P.prefill(
            Scenario(n_nodes=3, top_k=2, n_tokens=3), *[one(x, 0)[f] for f in ("dE", "cap", "g", "topk", "table")]
        )


# ----------------------------------------------------------------------------- DP


@pytest.mark.parametrize("m,n,k,batch", [(4, 4, 2, 1200), (3, 3, 2, 400), (4, 4, 1, 400)])
def test_dp_equals_brute_force(x64, m, n, k, batch):
    inst, (dec, _info) = cached("dp", 21, batch, m, n, k)
    ref = np.array([brute_force(one(inst, b))[0] for b in range(batch)])
    assert np.all(same(energies(dec), ref))
    assert np.all(dec.feasible == np.isfinite(ref))
    assert np.isfinite(ref).sum() >= batch // 4
    check_decisions(inst, dec)


def test_dp_refuses_large_state_tensor():
    x = one(instances(0, 1, 8, 8, 2), 0)
    sc = Scenario(n_nodes=8, top_k=2, n_tokens=8)
    assert dp_size(8, 8, 2, 8) == (9**8, 36)
    with pytest.raises(ConfigError, match="states x combos"):
        P.prefill(sc, x["dE"], x["cap"], x["g"], x["topk"], x["table"], method="dp")
    assert P.choose_method(sc) == "fast"
    assert P.choose_method(sc.replace(n_tokens=2)) == "dp"
    assert P.choose_method(sc.replace(top_k=1)) == "exact"


# ----------------------------------------------------------------------------- fast

FAST_SHAPES = [(4, 4, 2, 1200), (5, 5, 3, 500)]  # the first reuses the DP results above


def fast_vs_dp(m, n, k, batch):
    inst, (dec_dp, _) = cached("dp", 21, batch, m, n, k)
    _, (dec_f, info) = cached("fast", 21, batch, m, n, k)
    return inst, energies(dec_dp), dec_f, info


def test_fast_gap_to_dp_and_lower_bound(x64):
    gaps, count = [], 0
    for m, n, k, batch in FAST_SHAPES:
        inst, opt, dec, info = fast_vs_dp(m, n, k, batch)
        fin = np.isfinite(opt)
        count += fin.sum()
        assert np.all(dec.feasible == fin)  # no false "infeasible" on these instances
        gaps.append((dec.energy_j[fin] - opt[fin]) / opt[fin])
        assert np.all(info.lower_bound <= opt * (1 + 1e-9))  # inf <= inf where infeasible
        assert np.all(info.lower_bound[fin] <= dec.energy_j[fin] * (1 + 1e-9))
        assert np.all(info.lower_bound[fin] > 0)
        check_decisions(inst, dec)
    gaps = np.concatenate(gaps)
    assert count >= 600
    assert gaps.min() >= -1e-9
    assert gaps.mean() <= 0.01 and gaps.max() <= 0.05


def test_fast_truncated_candidate_lists_keep_a_valid_bound(x64):
    # C = 25 sets for N = 5, K = 3; keep only 6 per token: the search is restricted, the bound is not.
    inst, opt, _, _ = fast_vs_dp(5, 5, 3, 500)
    dec, info = solve("fast", inst, max_cand=6)
    fin = np.isfinite(opt)
    assert np.all(info.lower_bound <= opt * (1 + 1e-9))
    assert np.all(dec.energy_j[dec.feasible] >= opt[dec.feasible] * (1 - 1e-9))
    assert np.sum(dec.feasible) >= 0.95 * np.sum(fin) and not np.any(dec.feasible & ~fin)
    ok = dec.feasible
    assert np.mean((dec.energy_j[ok] - opt[ok]) / opt[ok]) <= 0.01
    check_decisions(inst, dec)


def _numpy_minimal_sets(x, k):
    """Minimal feasible node sets per token from the NumPy formulation of sift_jax/testing/numpy_reference.py."""
    from sift_jax.testing.numpy_reference import feasible_sets

    member, ok = feasible_sets(x, k)  # [S, N] membership of the sets of available nodes, [M, S] feasible
    n = member.shape[1]
    lists = np.array([np.flatnonzero(row).tolist() + [n] * (k - row.sum()) for row in member]).reshape(-1, k)
    ids = np.asarray(combo_index(jnp.asarray(lists), n, k))
    subset = np.all(member[:, None, :] <= member[None, :, :], -1) & (member.sum(1)[:, None] < member.sum(1)[None, :])
    minimal = ok & ~np.any(ok[:, :, None] & subset[None], 1)  # no feasible proper subset
    return [set(ids[np.flatnonzero(row)].tolist()) for row in minimal]


@pytest.mark.parametrize("n_useful", [9, 3])
def test_token_sets_hold_every_minimal_feasible_set(x64, n_useful):
    from sift_jax.policies.prefill_fast import _token_sets

    m, n, k, batch = 6, 9, 3, 24
    inst = instances(5, batch, m, n, k)
    cap_eff = np.asarray(P.effective_caps(inst["dE"], inst["cap"]))
    fn = jax.jit(
        jax.vmap(
            jax.vmap(
                lambda ce, g, t, tab, eta: _token_sets(
                    Scenario(n_nodes=n, top_k=k, n_tokens=m, eta=eta), ce, g, t, tab, n_useful
                ),
                in_axes=(None, 0, 0, None, None),
            )
        )
    )
    ids, _feasible, minimal, overflow = map(
        np.asarray, fn(cap_eff, inst["g"], inst["topk"], inst["table"], inst["eta"])
    )
    n_over = 0
    for b in range(batch):
        x = one(inst, b)
        ref = _numpy_minimal_sets(x, k)
        rows = x["table"][x["topk"]]  # [M, K, N + 1]
        useful = np.any(rows[..., :n] <= rows[..., n:], 1) & (cap_eff[b] >= 1)
        for t in range(m):
            got = ids[b, t][minimal[b, t]]
            assert len(set(got.tolist())) == len(got)  # no set listed twice
            assert overflow[b, t] == (useful[t].sum() > n_useful)
            if overflow[b, t]:
                n_over += 1
                assert set(got.tolist()) <= ref[t]
            else:
                assert set(got.tolist()) == ref[t]
    assert (n_over > 0) == (n_useful < n)


def test_fast_bound_valid_when_tokens_have_more_useful_nodes_than_enumerated(x64):
    inst, opt, _, _ = fast_vs_dp(5, 5, 3, 500)
    dec, info = solve("fast", inst, max_cand=6, n_useful=2)
    fin = np.isfinite(opt)
    assert np.all(info.lower_bound <= opt * (1 + 1e-9))
    assert np.all(dec.energy_j[dec.feasible] >= opt[dec.feasible] * (1 - 1e-9)) and not np.any(dec.feasible & ~fin)
    check_decisions(inst, dec)


# ----------------------------------------------------------------------------- baselines


@pytest.mark.parametrize(
    "method,shape", [("exact", (6, 5, 1, 2000)), ("dp", (4, 4, 2, 1200)), ("fast", (4, 4, 2, 1200))]
)
def test_siftmoe_not_worse_than_topk(x64, method, shape):
    m, n, k, batch = shape  # same shapes as above: the compiled solvers are reused
    inst = instances(51, batch, m, n, k, tight=0.0, cap_lo=0.5)  # roomy capacities: Top-K often feasible
    dec, _ = solve(method, inst)
    top, _ = solve("topk", inst)
    ok = top.feasible
    assert ok.sum() >= batch // 10
    assert np.all(dec.feasible[ok])
    assert np.all(dec.energy_j[ok] <= top.energy_j[ok] * (1 + 1e-9))


def test_topk_serves_lowest_index_first(x64):
    inst = instances(41, 300, 6, 4, 2)
    top, _ = solve("topk", inst)
    for b in range(300):
        x = one(inst, b)
        ce = cap_eff(x["dE"], x["cap"])
        seen = np.zeros(4, int)
        for t in range(6):
            for i, v in enumerate(x["topk"][t]):
                expect = v if seen[v] < ce[v] else -1
                assert top.assign[b, t, i] == expect
                seen[v] += 1
        loads = np.minimum(np.bincount(x["topk"].ravel(), minlength=4), ce)
        np.testing.assert_array_equal(top.loads[b], loads)
        np.testing.assert_allclose(top.energy_j[b], sum(x["dE"][v, : loads[v]].sum() for v in range(4)))
        assert top.n_skipped[b] == np.sum(top.assign[b] < 0)


# ----------------------------------------------------------------------------- infeasible


@pytest.mark.parametrize(
    "method,shape,seed", [("exact", (6, 5, 1, 2000), 11), ("dp", (4, 4, 2, 1200), 21), ("fast", (4, 4, 2, 1200), 21)]
)
def test_infeasible_token_flagged_never_assigned(x64, method, shape, seed):
    m, n, k, batch = shape
    inst = {f: v.copy() for f, v in instances(seed, batch, m, n, k).items()}
    inst["eta"][:] = 0.0  # off-diagonal mismatches are >= 0.1: only the Top-K experts themselves qualify
    for b in range(batch):
        for v in inst["topk"][b, 0]:  # token 0's own experts cannot run
            inst["dE"][b, v] = np.inf
            inst["cap"][b, v] = 0
    dec, info = solve(method, inst)
    assert not dec.feasible.any()
    assert np.all(dec.assign == -1) and np.all(dec.loads == 0) and np.all(dec.energy_j == 0)
    assert np.all(dec.n_replaced == 0) and np.all(dec.n_skipped == 0)
    assert np.all(np.isinf(info.lower_bound))


def test_bad_inputs_raise_config_error():
    x = one(instances(0, 1, 3, 3, 1), 0)
    sc = Scenario(n_nodes=3, top_k=1, n_tokens=3)
    args = [x[f] for f in ("dE", "cap", "g", "topk", "table")]
    with pytest.raises(ConfigError, match="method"):
        P.prefill(sc, *args, method="hungarian")
    with pytest.raises(ConfigError, match="dE"):
        P.prefill(sc, x["dE"][:2], *args[1:])
    with pytest.raises(ConfigError, match="top_k"):
        P.prefill(Scenario(n_nodes=3, top_k=2, n_tokens=3), *args)


def test_auto_reports_method():
    x = one(instances(0, 1, 3, 3, 2), 0)
    args = [x[f] for f in ("dE", "cap", "g", "topk", "table")]
    sc = Scenario(n_nodes=3, top_k=2, n_tokens=3)
    method = lambda **o: jax.eval_shape(lambda: P.prefill_with_info(sc, *args, method="auto", **o))[1].method  # noqa: E731
    assert method() == "dp"
    assert method(max_work=10) == "fast"
