"""The runner's device-side summaries at small n: min and 0/1 detection carried through the chunks, so
quantiles stay within the data (exact for constants) and rates get Wilson intervals, bit-identically for
any chunk size."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from sift_jax import montecarlo, stats

BIN_RATIO = 10.0 ** (1 / stats.BINS_PER_DECADE)  # a histogram bin's upper / lower edge: 1.059
BIN_SLACK = 1e-4  # bins are computed in float32 (device and host log10 may differ in the last ulps)
Z = scipy.stats.norm.ppf(0.975)


@dataclasses.dataclass(frozen=True)
class _SmallN:
    """Per-sample metrics: a constant 7.0, a latency spread over 2.364..2.372 s, a Bernoulli(p) rate (p per
    point), and a rate that is 0.5 in 1 sample in 500 (so not a 0/1 metric)."""

    def __call__(self, key, params):
        u = jax.random.uniform(key)
        w = jax.random.uniform(jax.random.fold_in(key, 1))
        return {
            "const": (jnp.float32(7.0), True),
            "latency": (2.364 + 0.008 * u, True),
            "rate": ((u < params["p"]).astype(jnp.float32), w < 0.9),
            "mixed": (jnp.where(w < 0.002, 0.5, (u < 0.5).astype(jnp.float32)), True),
        }


PARAMS = {"p": jnp.array([0.0, 0.3, 1.0])}


def _raw(samples, seed):
    idx = jnp.arange(samples, dtype=jnp.uint32)
    return jax.device_get(montecarlo.raw_metrics(_SmallN(), None, PARAMS, idx, seed))


def _wilson(k, n):
    """Wilson's score interval, textbook form: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    denom = 1 + Z**2 / n
    center = (p + Z**2 / (2 * n)) / denom
    half = Z / denom * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return max(center - half, 0.0), min(center + half, 1.0)


@pytest.mark.parametrize("samples", [1, 7, 50, 3000])
def test_runner_small_n_statistics(samples):
    res = montecarlo.run(_SmallN(), PARAMS, 3, samples, seed=3)
    raw = _raw(samples, 3)
    for p, got in enumerate(res):
        c = got["const"]
        assert (c.p50, c.p90, c.p99, c.mean, c.max, c.ci95) == (7.0, 7.0, 7.0, 7.0, 7.0, (7.0, 7.0))
        assert c.reliable == (samples >= 2)
        x = raw["latency"][0][p].astype(np.float64)
        s = got["latency"]
        for q, value in ((0.5, s.p50), (0.9, s.p90), (0.99, s.p99)):
            assert x.min() <= value <= x.max()  # issue 20: was below the data
            ref = np.sort(x)[max(math.ceil(q * x.size), 1) - 1]  # numpy.quantile(x, q, method="inverted_cdf")
            assert 1 / (BIN_RATIO * (1 + BIN_SLACK)) <= value / ref <= BIN_RATIO * (1 + BIN_SLACK)
        r, ok = raw["rate"][0][p], raw["rate"][1][p]
        s = got["rate"]
        n, k = int(ok.sum()), int(r[ok].sum())
        assert s.n == n
        if n:
            lo, hi = _wilson(k, n)
            assert s.mean == k / n
            assert s.ci95 == (pytest.approx(lo, rel=1e-12, abs=1e-15), pytest.approx(hi, rel=1e-12))
            assert (s.ci95[0] == 0.0) == (k == 0) and (s.ci95[1] == 1.0) == (k == n)  # p = 0, p = 1: not Wald's


def test_runner_p0_and_p1_rates_get_wilson():
    (zero, _, one) = montecarlo.run(_SmallN(), PARAMS, 3, 400, seed=1)
    n = zero["rate"].n
    assert zero["rate"].ci95 == (0.0, pytest.approx(Z**2 / (n + Z**2), rel=1e-12))  # Wald: (0.0, 0.0)
    assert one["rate"].ci95 == (pytest.approx(n / (n + Z**2), rel=1e-12), 1.0)  # Wald: (1.0, 1.0)
    assert (zero["rate"].p50, one["rate"].p50, one["rate"].p99) == (0.0, 1.0, 1.0)


def test_runner_non_binary_metric_gets_the_normal_interval():
    (res, _, _) = montecarlo.run(_SmallN(), PARAMS, 3, 3000, seed=2)
    x = _raw(3000, 2)["mixed"][0][0].astype(np.float64)
    assert (x == 0.5).any()
    s = res["mixed"]
    half = Z * x.std(ddof=1) / math.sqrt(x.size)
    assert s.ci95 == (pytest.approx(x.mean() - half, rel=1e-9), pytest.approx(x.mean() + half, rel=1e-9))


@pytest.mark.parametrize("samples", [50, 3000])
def test_runner_small_n_bit_identical_for_any_chunk_size(samples):
    runs = [montecarlo.run(_SmallN(), PARAMS, 3, samples, seed=4, chunk_size=c) for c in (None, 8, 64, 1000)]
    assert all(r == runs[0] for r in runs[1:])


def test_runner_matches_the_host_accumulator_on_raw_values():
    """Device summaries (min, 0/1 count, bins) give the same quantiles, 0/1 decision and CI as the host
    accumulator fed the raw values."""
    res = montecarlo.run(_SmallN(), PARAMS, 3, 5000, seed=6)
    raw = _raw(5000, 6)
    for p, got in enumerate(res):
        for name in ("const", "rate", "mixed"):
            acc = stats.Accumulator()
            acc.add(raw[name][0][p].astype(np.float64), raw[name][1][p])
            ref, s = acc.result(), got[name]
            assert (s.p50, s.p90, s.p99, s.n, s.max, s.reliable) == (
                ref.p50,
                ref.p90,
                ref.p99,
                ref.n,
                ref.max,
                ref.reliable,
            )
            assert s.ci95 == (pytest.approx(ref.ci95[0], rel=1e-9, abs=1e-15), pytest.approx(ref.ci95[1], rel=1e-9))


METRIC_CODE = """
import json, jax, jax.numpy as jnp
from sift_jax import montecarlo

def metric(key, params):
    u = jax.random.uniform(key)
    return {"latency": (2.364 + 0.008 * jnp.exp(u), True), "rate": ((u < params["p"]).astype(jnp.float32), True)}
"""
SHARDED_CODE = (
    METRIC_CODE
    + """
params = {"p": jax.device_put(jnp.array([0.0, 0.3, 1.0]), jax.devices()[0])}  # committed to one device
out = {mode: [{k: v.to_dict() for k, v in r.items()} for r in montecarlo.run(metric, params, 3, 3000, 5, 1000,
                                                                                sharding=mode)]
       for mode in ("shard_map", "dispatch")}
print(json.dumps({"devices": jax.device_count(), "spmd_programs": montecarlo._chunk_shard_map._cache_size(), **out}))
"""
)


def test_shard_map_over_four_cpu_devices_runs_one_spmd_program():
    """sharding="shard_map" over 4 CPU devices compiles the SPMD program (it used to fall back to one device),
    takes params committed to one device, and matches a one-device run: exactly for the 0/1 rate, to float32
    rounding for a float metric (XLA's partitioned code may differ in the last ulps); "dispatch" bit for bit."""
    import json
    import os
    import subprocess
    import sys

    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", SHARDED_CODE], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["devices"] == 4 and got["spmd_programs"] == 1
    ns = {}
    exec(METRIC_CODE, ns)  # the same metric, run in this (one-device) process
    ref = montecarlo.run(ns["metric"], {"p": jnp.array([0.0, 0.3, 1.0])}, 3, 3000, 5, 1000)
    for p, stats_p in enumerate(ref):
        assert got["dispatch"][p] == json.loads(json.dumps({k: v.to_dict() for k, v in stats_p.items()}))
        assert got["shard_map"][p]["rate"] == got["dispatch"][p]["rate"]
        for field in ("mean", "std", "max", "p50", "p99"):
            assert got["shard_map"][p]["latency"][field] == pytest.approx(getattr(stats_p["latency"], field), rel=1e-6)
