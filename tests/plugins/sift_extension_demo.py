"""A user's extension of sift_jax, written outside the package: a policy, a fading family and a metric.

Imported by tests/test_extension.py in-process and by `sift-jax --plugin sift_extension_demo` in a subprocess.
"""

import math

import jax
import jax.numpy as jnp

from sift_jax import fading, metrics, policies
from sift_jax.policies.decision import make_decision


def greedy_decode(sc, f, g, topk, table):
    """Each Top-K slot on the cheapest node with a finite cost whose weighted mismatch fits eta / K
    (its share of the budget); a slot with no such node is skipped if its skip mismatch fits, else the
    token is infeasible. Energy: each used node's cost once."""
    n, k = sc.n_nodes, topk.shape[0]
    rows = table[topk]  # [K, N + 1]
    share = sc.eta / k
    ok = jnp.isfinite(f)[None, :] & (g[:, None] * rows[:, :n] <= share)  # [K, N]
    node = jnp.argmin(jnp.where(ok, f[None, :], jnp.inf), axis=1)
    has = ok.any(axis=1)
    skip_ok = g * rows[:, n] <= share
    assign = jnp.where(has, node, -1)
    used = jnp.any(assign[:, None] == jnp.arange(n)[None, :], axis=0)
    energy = jnp.sum(jnp.where(used, f, 0.0))
    dev = jnp.sum(
        jnp.where(has, g * jnp.take_along_axis(rows, jnp.maximum(assign, 0)[:, None], 1)[:, 0], g * rows[:, n])
    )
    feasible = jnp.all(has | skip_ok) & jnp.any(has)
    return make_decision(assign, used.astype(jnp.int32), energy, dev, feasible, topk, reports_infeasible=False)


def greedy_prefill(sc, dE, cap, g, topk, table):
    """Every token decides alone on the first marginal costs; infeasible where a node's load passes its capacity."""
    f = dE[:, 0]
    decs = jax.vmap(lambda gm, tm: greedy_decode(sc, f, gm, tm, table))(g, topk)
    loads = decs.loads.sum(0)
    d = jnp.arange(dE.shape[1])
    energy = jnp.sum(jnp.where((d[None, :] < loads[:, None]) & jnp.isfinite(dE), dE, 0.0))
    feasible = jnp.all(decs.feasible) & jnp.all(loads <= cap)
    return make_decision(decs.assign, loads, energy, decs.deviation_bound, feasible, topk, reports_infeasible=False)


def weibull_sample(key, sc, shape):
    """Unit-mean Weibull(k) power gains, k = fading_shape: h = (-ln U)^(1/k) / Gamma(1 + 1/k)."""
    k = float(sc.fading_shape)
    u = jax.random.uniform(key, shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    return jnp.power(-jnp.log(u), 1.0 / k) / math.gamma(1.0 + 1.0 / k)


def weibull_inverse_mean(sc):
    """E[1/h] = Gamma(1 - 1/k) Gamma(1 + 1/k) for k > 1 (inf otherwise)."""
    k = float(sc.fading_shape)
    return math.gamma(1.0 - 1.0 / k) * math.gamma(1.0 + 1.0 / k) if k > 1.0 else math.inf


policies.register(
    policies.PolicyRecord("greedy", greedy_decode, greedy_prefill, description="cheapest node per slot within eta / K"),
    replace=True,
)
fading.register(
    fading.FadingFamily(
        "weibull",
        weibull_sample,
        weibull_inverse_mean,
        parameters=("fading_shape",),
        description="unit-mean Weibull(k) power gains",
    ),
    replace=True,
)
metrics.register(
    metrics.MetricRecord(
        "helpers_used",
        "-",
        "Helpers used per layer",
        lambda t: jnp.mean(jnp.sum(t.decision.loads[:, 1:] > 0, axis=1)),
        description="mean number of helpers with a load, per layer",
    ),
    replace=True,
)
