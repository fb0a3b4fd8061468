"""Streaming statistics and the chunked runner: coverage, chunk invariance, quantiles."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sift_jax import montecarlo
from sift_jax.errors import ConfigError
from sift_jax.stats import Accumulator


def _stat(values, valid=None, pieces=(len,)):
    acc = Accumulator()
    valid = np.ones(values.size, bool) if valid is None else valid
    acc.add(values, valid)
    return acc.result()


def test_moments_match_numpy_and_invalid_counted():
    rng = np.random.default_rng(0)
    x = rng.lognormal(0, 1, 30_001)
    valid = rng.random(x.size) < 0.9
    x[5] = np.inf  # a non-finite value is invalid, never averaged
    s = _stat(x, valid)
    good = x[valid & np.isfinite(x)]
    assert s.n == good.size and s.n_invalid == x.size - good.size
    assert s.mean == pytest.approx(good.mean(), rel=1e-12)
    assert s.std == pytest.approx(good.std(ddof=1), rel=1e-10)
    assert s.max == good.max()
    for q, got in ((0.5, s.p50), (0.9, s.p90), (0.99, s.p99)):
        assert got == pytest.approx(np.quantile(good, q), rel=0.06)  # log bins of 1/40 decade


def test_ci_coverage_on_known_distribution():
    """Over 400 independent runs the 95% CI covers the true mean 93-97% of the time."""
    rng = np.random.default_rng(1)
    truth = 2.0  # Normal(2, 3) mean
    covered = 0
    for _ in range(400):
        s = _stat(rng.normal(truth, 3.0, 2_000))
        covered += s.ci95[0] <= truth <= s.ci95[1]
    assert 0.93 <= covered / 400 <= 0.97


def test_split_invariance_bit_identical():
    rng = np.random.default_rng(2)
    x = rng.gamma(0.3, 5.0, 20_000)
    v = rng.random(x.size) < 0.8
    ref = _stat(x, v)
    for cut in (1, 1000, 4096, 7777):
        acc = Accumulator()
        for start in range(0, x.size, cut):
            acc.add(x[start:start + cut], v[start:start + cut])
        assert acc.result() == ref


def test_points_accumulator_equals_one_accumulator_per_point():
    """The vectorised form (one [P, n] accumulator) gives each point exactly its own statistics,
    including points with no valid sample, and is split-invariant like the scalar one."""
    rng = np.random.default_rng(5)
    x = rng.lognormal(0, 2, (5, 10_000))
    v = rng.random(x.shape) < 0.7
    v[3] = False  # a point with no valid sample
    x[1, 17] = np.nan
    many = Accumulator(points=5)
    for start in range(0, x.shape[1], 3000):
        many.add(x[:, start:start + 3000], v[:, start:start + 3000])
    got = many.results()
    for p in range(5):
        good = x[p][v[p] & np.isfinite(x[p])]
        assert got[p] == _stat(x[p], v[p])
        assert got[p].n == good.size and got[p].n_invalid == x.shape[1] - good.size
        if good.size:
            assert got[p].mean == pytest.approx(good.mean(), rel=1e-12)
            assert got[p].std == pytest.approx(good.std(ddof=1), rel=1e-10)
    assert got[3].mean is None
    with pytest.raises(ValueError):
        many.result()


def test_tail_share_flags_heavy_tails():
    rng = np.random.default_rng(3)
    light = _stat(rng.normal(10, 1, 50_000))
    assert light.reliable and light.tail_share < 0.01
    heavy = rng.exponential(1.0, 50_000)
    heavy[:10] = 1e9  # a few astronomically large samples carry the sum
    s = _stat(heavy)
    assert not s.reliable and s.tail_share > 0.99


def test_empty_metric_has_no_nan():
    s = _stat(np.ones(10), np.zeros(10, bool))
    assert s.n == 0 and s.mean is None and s.n_invalid == 10 and not s.reliable


@dataclasses.dataclass(frozen=True)
class _Expo:
    """Per-sample metric for runner tests: an Exp(scale) draw, valid 3 times in 4."""

    def __call__(self, key, params):
        x = params["scale"] * jax.random.exponential(key)
        return {"x": (x, jax.random.uniform(jax.random.fold_in(key, 1)) < 0.75), "one": (jnp.float32(1.0), True)}


def test_runner_bit_identical_for_any_chunk_size():
    params = {"scale": jnp.array([1.0, 3.0])}
    runs = [montecarlo.run(_Expo(), params, 2, 9_000, seed=4, chunk_size=c) for c in (1000, 4096, 9000)]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][1]["x"].mean == pytest.approx(3 * runs[0][0]["x"].mean, rel=1e-6)  # common random numbers


def test_runner_is_statistically_right():
    (res,) = montecarlo.run(_Expo(), {"scale": jnp.array([2.0])}, 1, 40_000, seed=5)
    s = res["x"]
    assert s.ci95[0] - 4 * s.std / 200 <= 2.0 <= s.ci95[1] + 4 * s.std / 200
    assert 0.74 < s.n / 40_000 < 0.76


@pytest.mark.parametrize("kw", [{"samples": 0}, {"samples": 1.5}, {"seed": -1}, {"seed": "a"}, {"chunk_size": 0},
                                {"chunk_size": True}])
def test_runner_bad_arguments(kw):
    args = {"samples": 10, "seed": 0, "chunk_size": None} | kw
    with pytest.raises(ConfigError) as err:
        montecarlo.check_run_args(args["samples"], args["seed"], args["chunk_size"])
    assert err.value.field == next(iter(kw))


def test_constant_metric_is_reliable():
    s = _stat(np.full(5000, 0.148))
    assert s.tail_share == pytest.approx(5 / 5000) and s.reliable


@dataclasses.dataclass(frozen=True)
class _HeavyTail:
    """x: values spanning 1e-3 .. 1e36 (no float32 sum or square of them fits), some inf, valid 9 times in
    10; y: the same draws within the histogram's range (1e-3 .. 1e29)."""

    def __call__(self, key, params):
        k1, k2, k3 = jax.random.split(key, 3)
        u = jax.random.uniform(k1)
        x = jnp.where(jax.random.uniform(k2) < 0.01, jnp.inf, params["scale"] * 10.0 ** (39.0 * u - 3.0))
        ok = jax.random.uniform(k3) < 0.9
        return {"x": (x, ok), "y": (params["scale"] * 10.0 ** (32.0 * u - 3.0), ok)}


@pytest.mark.parametrize("samples, chunk", [(5_000, None), (1_234, 512)])
def test_runner_summaries_match_numpy_on_the_raw_values(samples, chunk):
    """The device-side block summaries (scaled moments, bins, padding masked) give the statistics NumPy
    computes in float64 from the raw per-sample values of the same run."""
    params = {"scale": jnp.array([1.0, 2.0])}
    (a, b) = montecarlo.run(_HeavyTail(), params, 2, samples, seed=7, chunk_size=chunk)
    idx = jnp.arange(samples, dtype=jnp.uint32)
    raw = jax.device_get(montecarlo.raw_metrics(_HeavyTail(), None, params, idx, 7))
    for p, got in enumerate((a, b)):
        for name in ("x", "y"):
            x, valid = raw[name][0][p].astype(np.float64), raw[name][1][p]
            good, s = x[valid & np.isfinite(x)], got[name]
            assert s.n == good.size and s.n_invalid == samples - good.size
            assert s.mean == pytest.approx(good.mean(), rel=1e-10)  # exact heads + float32 tails (a float32 sum: 1e-6)
            assert s.std == pytest.approx(good.std(ddof=1), rel=1e-5)
            assert s.max == good.max()
        top = np.sort(good)[-math.ceil(good.size / 1000):]  # y: within the histogram's range
        assert s.p50 == pytest.approx(np.quantile(good, 0.5), rel=0.06)
        assert s.tail_share == pytest.approx(top.sum() / good.sum(), rel=0.06)
