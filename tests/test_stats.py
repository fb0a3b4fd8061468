"""Streaming statistics and the chunked runner: coverage, chunk invariance, quantiles."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sift_jax import montecarlo, stats
from sift_jax.errors import ConfigError
from sift_jax.stats import Accumulator, Stat

BIN_RATIO = 10.0 ** (1 / stats.BINS_PER_DECADE)  # a histogram bin's upper / lower edge: 1.059
BIN_SLACK = 1e-5  # bins are computed in float32: a value within ~1e-5 (rel.) of an edge may land next door
Z = scipy.stats.norm.ppf(0.975)  # independent of stats.Z95


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
            acc.add(x[start : start + cut], v[start : start + cut])
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
        many.add(x[:, start : start + 3000], v[:, start : start + 3000])
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


@pytest.mark.parametrize(
    "kw", [{"samples": 0}, {"samples": 1.5}, {"seed": -1}, {"seed": "a"}, {"chunk_size": 0}, {"chunk_size": True}]
)
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
        top = np.sort(good)[-math.ceil(good.size / 1000) :]  # y: within the histogram's range
        assert s.p50 == pytest.approx(np.quantile(good, 0.5), rel=0.06)
        assert s.tail_share == pytest.approx(top.sum() / good.sum(), rel=0.06)


# --- small n: quantiles within the data, exact for constants; Wilson intervals for rates; `reliable` ---


def _order_stat(x, q):
    """x_(ceil(q n)), the sample the histogram quantile's bin holds (= numpy.quantile(x, q,
    method="inverted_cdf")); q n computed in float64 as the accumulator does."""
    return np.sort(x)[max(math.ceil(q * x.size), 1) - 1]


def _quantiles(s):
    return s.p50, s.p90, s.p99


@pytest.mark.parametrize("value", [7.0, 2.368, 0.148, 1.0, 0.0, -3.0, 1e-35, 1e35, 123456.789])
@pytest.mark.parametrize("n", [1, 5, 100, 5000])
def test_quantiles_of_constant_data_are_exact(value, n):
    """Issue 20: a constant 7.0 gave p50 6.879 (the middle of its log bin), 2.368 gave 2.304."""
    s = _stat(np.full(n, value))
    assert _quantiles(s) == (value, value, value)
    assert s.mean == value and s.std == 0.0 and s.max == value
    if value not in (0.0, 1.0):  # constant 0 or 1 is a 0/1 metric: Wilson's interval (tested below)
        assert s.ci95 == (value, value) and s.reliable == (n >= 2)


def test_quantiles_of_latency_like_data_lie_within_the_data():
    """Issue 20: latencies around 2.368 s (all in one or two bins) had p50 below the smallest sample."""
    rng = np.random.default_rng(20)
    for n in (3, 10, 40, 1000):
        x = 2.368 + rng.uniform(-0.004, 0.004, n)
        s = _stat(x)
        for q, got in zip((0.5, 0.9, 0.99), _quantiles(s)):
            assert x.min() <= got <= x.max()
            assert got == pytest.approx(np.quantile(x, q), abs=x.max() - x.min())  # within the data's spread


def _check_quantiles(x, s):
    """Every quantile within [min, max]; within one bin of x_(ceil(q n)) for positive x_(ceil(q n)),
    exactly 0 when x_(ceil(q n)) is 0 (the bin of zeros), exact when the data are constant."""
    for q, got in zip((0.5, 0.9, 0.99), _quantiles(s)):
        assert x.min() <= got <= x.max()
        ref = _order_stat(x, q)
        if ref == 0.0:
            assert got == 0.0
        else:
            assert 1 / (BIN_RATIO * (1 + BIN_SLACK)) <= got / ref <= BIN_RATIO * (1 + BIN_SLACK)
        if x.min() == x.max():
            assert got == x[0]


_values = st.one_of(st.just(0.0), st.floats(1e-6, 1e6), st.sampled_from([1.0, 2.368, 7.0]))


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 300), elements=_values))
def test_quantiles_within_range_and_one_bin_of_the_order_statistic(x):
    _check_quantiles(x, _stat(x))


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 200), elements=st.floats(-1e6, 1e6)))
def test_quantiles_within_range_for_any_sign(x):
    """Zero and negative values share bin 0: only the range is promised for them."""
    s = _stat(x)
    assert all(x.min() <= got <= x.max() for got in _quantiles(s))
    assert s.max == x.max()


def test_quantiles_of_large_samples_match_numpy_within_a_bin():
    """Large n: x_(ceil(q n)) and numpy's interpolated quantile coincide to far below a bin, so the
    histogram quantile is within one bin width (5.9%) of numpy.quantile."""
    rng = np.random.default_rng(8)
    for x in (rng.lognormal(0, 2, 50_000), rng.uniform(2.36, 2.38, 20_000), rng.exponential(1e-3, 20_000)):
        s = _stat(x)
        _check_quantiles(x, s)
        for q, got in zip((0.5, 0.9, 0.99), _quantiles(s)):
            assert got == pytest.approx(np.quantile(x, q), rel=BIN_RATIO - 1)


def _wilson(k, n):
    """Wilson's score interval, textbook form: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    denom = 1 + Z**2 / n
    center = (p + Z**2 / (2 * n)) / denom
    half = Z / denom * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return center - half, center + half


@pytest.mark.parametrize(
    "k, n",
    [
        (0, 1),
        (1, 1),
        (0, 10),
        (10, 10),
        (1, 10),
        (3, 100),
        (50, 100),
        (97, 100),
        (0, 5000),
        (1, 5000),
        (4999, 5000),
        (5000, 5000),
        (1234, 9999),
    ],
)
def test_rate_ci_is_wilson(k, n):
    """A 0/1 metric gets Wilson's interval, never Wald's [0, 0] at p = 0 or [1, 1] at p = 1; checked against
    the closed form and scipy's binomtest."""
    x = np.zeros(n)
    x[np.random.default_rng(k).permutation(n)[:k]] = 1.0
    s = _stat(x)
    lo, hi = _wilson(k, n)
    sp = scipy.stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert s.mean == k / n
    assert s.ci95 == (pytest.approx(max(lo, 0.0), rel=1e-12, abs=1e-15), pytest.approx(min(hi, 1.0), rel=1e-12))
    assert s.ci95 == (pytest.approx(sp.low, rel=1e-9, abs=1e-15), pytest.approx(sp.high, rel=1e-9))
    assert 0.0 <= s.ci95[0] <= s.mean <= s.ci95[1] <= 1.0 and s.ci95[0] < s.ci95[1]
    assert (s.ci95[0] == 0.0) == (k == 0) and (s.ci95[1] == 1.0) == (k == n)
    assert _quantiles(s) == tuple(float(v) for v in np.sort(x)[[math.ceil(q * n) - 1 for q in (0.5, 0.9, 0.99)]])


def test_one_value_other_than_0_or_1_makes_a_metric_ordinary():
    """The 0/1 test is on the data: a single 0.5 (in a late block) gives the normal interval; masked-out or
    non-finite values do not count. Either way the result is split-invariant."""
    rng = np.random.default_rng(9)
    x = (rng.random(10_000) < 0.2).astype(float)
    v = np.ones(x.size, bool)
    x[[10, 20]], v[10] = (0.5, np.inf), False  # masked 0.5, invalid inf: still a 0/1 metric
    rate = _stat(x, v)
    good = x[v & np.isfinite(x)]
    lo, hi = _wilson(int(good.sum()), good.size)
    assert rate.ci95 == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    x[9_000] = 0.5
    s = _stat(x, v)
    good = x[v & np.isfinite(x)]
    half = Z * good.std(ddof=1) / math.sqrt(good.size)
    assert s.ci95 == (pytest.approx(good.mean() - half, rel=1e-9), pytest.approx(good.mean() + half, rel=1e-9))
    for cut in (1, 333, 4096, 5000):
        acc = Accumulator()
        for start in range(0, x.size, cut):
            acc.add(x[start : start + cut], v[start : start + cut])
        assert acc.result() == s


def test_points_mix_rates_constants_and_continuous_data():
    """The vectorised accumulator decides 0/1-ness, constancy and reliability per point."""
    rng = np.random.default_rng(11)
    x = np.stack(
        [(rng.random(6000) < 0.01).astype(float), np.full(6000, 7.0), rng.lognormal(0, 1, 6000), np.zeros(6000)]
    )
    many = Accumulator(points=4)
    many.add(x, np.ones(x.shape, bool))
    got = many.results()
    for p in range(4):
        assert got[p] == _stat(x[p])
    assert got[1].p50 == 7.0 and got[3].ci95[0] == 0.0 and got[3].ci95[1] == pytest.approx(Z**2 / (6000 + Z**2))


def test_reliable_rule():
    """n >= 30 (MIN_RELIABLE_N) and a light tail; 0/1 metrics need only n >= 30 (Wilson handles rare
    events); constant data are reliable from n = 2 (the zero-width CI is exact)."""
    assert stats.MIN_RELIABLE_N == 30 and pytest.approx(Z, rel=1e-15) == stats.Z95
    rng = np.random.default_rng(12)
    x = rng.normal(5.0, 1.0, 30)
    assert not _stat(x[:29]).reliable and _stat(x).reliable
    assert not _stat(np.zeros(29)).reliable and _stat(np.zeros(30)).reliable
    assert not _stat(np.array([0.0, 1.0] * 14 + [1.0])).reliable
    rare = np.zeros(50_000)
    rare[123] = 1.0  # one event: it carries the whole sum, but the Wilson interval is still sound
    s = _stat(rare)
    assert s.tail_share == 1.0 and s.reliable and s.ci95[0] > 0.0
    assert not _stat(np.full(1, 7.0)).reliable and _stat(np.full(2, 7.0)).reliable and _stat(np.full(5, 7.0)).reliable
    assert not _stat(np.array([7.0, 7.0, 7.5])).reliable


def test_stat_fields_unchanged():
    """Sweep part files store Stat.to_dict() and load it with Stat(**dict): the fields stay as they were."""
    assert [f.name for f in dataclasses.fields(Stat)] == [
        "mean",
        "ci95",
        "n",
        "n_invalid",
        "std",
        "p50",
        "p90",
        "p99",
        "max",
        "tail_share",
        "reliable",
    ]
