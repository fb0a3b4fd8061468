"""simulate(): chunk invariance, jit equivalence, float32 vs float64, error handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sift_jax as sj
from sift_jax import montecarlo
from sift_jax.policies.prefill import choose_method
from sift_jax.simulate import TaskMetrics, simulate


def _decode(name="mixtral-8x7b", **kw):
    return sj.presets.get(name).replace(n_tokens=1, **kw)


def test_bit_identical_for_chunk_sizes():
    sc = _decode(n_layers=4)
    runs = [simulate(sc, policy="siftmoe", samples=9000, seed=3, chunk_size=c).metrics for c in (1000, 4096, 9000)]
    assert runs[0] == runs[1] == runs[2]


def test_jit_equals_no_jit():
    sc = _decode(n_layers=3)
    tables = sj.similarity.synthetic_tables(sc)
    fn = TaskMetrics(policy="siftmoe")
    params = jax.tree.map(lambda x: jnp.asarray(x)[None], (sc, tables))
    jitted = jax.device_get(montecarlo._chunk(fn, params, np.uint32(0), np.uint32(256), 256, 0))
    keys = montecarlo.sample_keys(0, jnp.arange(16))
    with jax.disable_jit():
        for i in range(0, 16, 5):
            eager = fn(keys[i], (sc, tables))
            for name, (value, valid) in eager.items():  # the summary keeps a counted value, 0 otherwise
                want = float(value) if bool(valid) and np.isfinite(float(value)) else 0.0
                np.testing.assert_allclose(jitted[name].value[0, i], want, rtol=2e-6)


@pytest.mark.parametrize("name", ["switch-base-8", "mixtral-8x7b", "gpt-oss-20b"])
def test_float32_vs_float64_mean_energy(name, x64):
    sc = _decode(name, n_layers=2)
    jax.config.update("jax_enable_x64", False)
    e32 = simulate(sc, policy="topk", samples=2000, seed=1).metrics["energy_per_token_j"]
    jax.config.update("jax_enable_x64", True)
    e64 = simulate(sc, policy="topk", samples=2000, seed=1).metrics["energy_per_token_j"]
    assert e32.n == e64.n
    assert e32.mean == pytest.approx(e64.mean, rel=1e-4)


def test_bad_arguments_raise_config_error():
    sc = _decode(n_layers=1)
    with pytest.raises(sj.ConfigError, match="policy"):
        simulate(sc, policy="greedy", samples=10)
    with pytest.raises(sj.ConfigError, match="samples"):
        simulate(sc, policy="topk", samples=-5)
    with pytest.raises(sj.ConfigError, match="table"):
        simulate(sc, policy="topk", samples=10, table=np.ones((3, 3)))
    with pytest.raises(sj.ConfigError, match="fading"):
        simulate(sc, policy="topk", samples=10, fading="medium")


def test_infeasible_counted_not_dropped():
    # 27.35 ms expert loads leave 1.65 ms of the 29 ms deadline: whether a helper fits depends on its
    # channel, so some tasks (about 28% with seed 0) have a layer with no feasible selection, others not
    # (at 28 ms every task is infeasible, at 30 ms none is).
    sc = _decode(n_layers=2, deadline_s=0.029)
    res = simulate(sc, policy="siftmoe", samples=500, seed=0).metrics
    rate, energy = res["infeasible_rate"], res["energy_per_token_j"]
    assert 0 < rate.mean < 1 and 0 < energy.n_invalid < 500
    assert rate.n == 500 and rate.n_invalid == 0
    assert energy.n + energy.n_invalid == 500
    assert energy.n == round(500 * (1 - rate.mean))
    assert rate.mean == pytest.approx(energy.n_invalid / 500)


def _user_cost(sc):
    """f_UE in NumPy from the scenario's fields (eq. 17): one load plus one token's compute (J)."""
    return float(sc.user_load_power_w) * float(sc.user_load_time_s) + float(sc.user_compute_power_w) * float(
        sc.expert_flops
    ) / float(sc.user_flops_per_s)


@pytest.mark.parametrize(
    "policy,fading,bits,tokens",
    [
        ("topk", "slow", None, 16),
        ("siftmoe", "slow", None, 16),
        ("siftmoe", "slow", None, 1),
        ("topk", "fast", "dynamic", 8),
    ],
)
def test_energy_breakdown_sums_to_the_total(policy, fading, bits, tokens):
    sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=tokens, n_layers=2)
    m = simulate(sc, policy=policy, samples=64, seed=1, fading=fading, bits=bits).metrics
    total, up, local = (m[k] for k in ("energy_per_token_j", "uplink_energy_j", "local_energy_j"))
    assert total.n == up.n == local.n
    np.testing.assert_allclose(up.mean + local.mean, total.mean, rtol=1e-6)
    assert up.mean > 0 and local.mean > 0  # the fitted regime uses both the radio and the user's expert


def test_local_energy_matches_numpy_count_of_user_tokens():
    """Ideal Top-K decoding: the user's expert runs in a layer iff expert 0 is in that token's Top-K, at f_UE."""
    sc = sj.presets.get("switch-base-8").replace(n_tokens=1, n_layers=3)
    samples = 200
    m = simulate(sc, policy="topk-ideal", samples=samples, seed=5).metrics
    keys = montecarlo.sample_keys(5, jnp.arange(samples))
    topk = np.stack([np.asarray(sj.gating.draw(jax.random.split(k)[1], sc)[1]) for k in keys])  # [S, L, 1, K]
    used = (topk == 0).any(axis=-1).sum(axis=(1, 2))  # layers per sample that run expert 0 at the user
    np.testing.assert_allclose(m["local_energy_j"].mean, used.mean() * _user_cost(sc), rtol=1e-5)
    np.testing.assert_allclose(
        m["uplink_energy_j"].mean, m["energy_per_token_j"].mean - used.mean() * _user_cost(sc), rtol=1e-4
    )


def test_breakdown_without_user_power_is_all_uplink():
    sc = sj.presets.get("switch-base-8").replace(
        n_tokens=32, n_layers=1, user_load_power_w=0.0, user_compute_power_w=0.0
    )
    m = simulate(sc, policy="topk", samples=32, seed=0).metrics
    assert m["local_energy_j"].max == 0.0
    assert m["energy_per_token_j"].mean > 0
    np.testing.assert_allclose(m["uplink_energy_j"].mean, m["energy_per_token_j"].mean, rtol=1e-6)


@pytest.mark.parametrize(
    "preset,fields,method",
    [
        ("switch-base-8", dict(n_nodes=4, top_k=2, n_tokens=12), "dp"),
        ("switch-base-8", dict(n_tokens=384), "exact"),
        ("mixtral-8x7b", dict(n_tokens=24), "fast"),
        ("gpt-oss-20b", dict(n_tokens=16), "fast"),  # C = 41,448 node sets: the [M, C] fallback arrays
        ("gpt-oss-20b", dict(n_tokens=16), "topk"),
        ("mixtral-8x7b", dict(n_tokens=384), "topk-ideal"),
    ],
)
def test_prefill_memory_estimate_bounds_xla_and_sets_the_block(preset, fields, method):
    """Each prefill method's (and the Top-K baselines') memory per sample (`TaskMetrics.sample_bytes`, from
    `prefill_bytes` / `topk_bytes`) bounds XLA's own memory analysis of the compiled per-sample program
    (independent of the estimate) and is not loose by more than 3x; `montecarlo.block_width` keeps
    block x estimate within `BLOCK_MEMORY_BYTES`."""
    sc = sj.presets.get(preset).replace(n_layers=1, **fields)
    policy = method if method.startswith("topk") else "siftmoe"
    assert policy != "siftmoe" or choose_method(sc) == method
    fn, tables = TaskMetrics(policy), sj.similarity.synthetic_tables(sc)
    params = jax.tree.map(lambda x: np.asarray(x)[None], (sc, tables))
    per_sample = fn.sample_bytes((sc, tables))
    width = 4
    compiled = jax.jit(lambda p, idx: montecarlo.raw_metrics(fn, None, p, idx, 0)).lower(params, jnp.arange(width))
    used = compiled.compile().memory_analysis().temp_size_in_bytes
    assert width * per_sample / 3 < used <= width * per_sample
    assert TaskMetrics(policy).sample_bytes((sc.replace(n_layers=3), tables)) == 3 * per_sample  # per layer
    assert TaskMetrics("wdmoe").sample_bytes((sc, tables)) == 0  # decoding only: no prefill to size
    block = montecarlo.block_width(10**6, 50 * per_sample)
    assert block * 50 * per_sample <= montecarlo.BLOCK_MEMORY_BYTES or block == 1


def test_a_narrowed_block_gives_the_same_statistics(monkeypatch):
    """The exact prefill DP at N = 4, K = 2, M = 12 with the block budget set to 4 samples: the run sees
    the same samples in narrower blocks, so its statistics equal the wide run's to float rounding."""
    sc = sj.presets.get("switch-base-8").replace(n_nodes=4, top_k=2, n_tokens=12, n_layers=1)
    per_sample = TaskMetrics("siftmoe").sample_bytes((sc,))
    wide = simulate(sc, policy="siftmoe", samples=32, seed=2).metrics
    monkeypatch.setattr(montecarlo, "BLOCK_MEMORY_BYTES", 4 * per_sample)
    assert montecarlo.block_width(32, per_sample) == 4 < montecarlo.inner_batch(32)
    narrow = simulate(sc, policy="siftmoe", samples=32, seed=2).metrics
    for name, stat in wide.items():
        assert (narrow[name].n, narrow[name].n_invalid) == (stat.n, stat.n_invalid), name
        np.testing.assert_allclose(narrow[name].mean, stat.mean, rtol=1e-6, err_msg=name)
