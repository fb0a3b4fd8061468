"""The extension points, used as a user would: a policy, a fading family and a metric defined outside the
package (tests/plugins/sift_extension_demo.py) run through simulate, a sweep and the CLI, with no edit of
sift_jax. The plugin is loaded from its file (no sys.path edit) and unregistered afterwards."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sift_jax as sj
from sift_jax import fading, metrics, montecarlo, policies
from sift_jax.simulate import TaskMetrics

PLUGIN = pathlib.Path(__file__).parent / "plugins" / "sift_extension_demo.py"


@pytest.fixture
def plugin():
    spec = importlib.util.spec_from_file_location("sift_extension_demo", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        policies.unregister("greedy")
        fading.unregister("weibull")
        metrics.unregister("helpers_used")


def _scenario(**fields):
    return sj.presets.get("switch-base-8").replace(n_layers=2, fading="weibull", fading_shape=2.0, **fields)


def test_registries_list_and_refuse_duplicates(plugin):
    assert "greedy" in policies.names(prefilling=True) and "weibull" in fading.names()
    assert metrics.names()[-1] == "helpers_used" and "helpers_used" not in sj.METRICS
    with pytest.raises(sj.ConfigError, match="not yet registered"):
        policies.register(policies.record("greedy"))
    with pytest.raises(sj.ConfigError, match="policy"):
        policies.register(policies.PolicyRecord("bad:name", plugin.greedy_decode))


def test_weibull_gains_have_unit_mean_and_the_closed_form_inverse_mean(plugin):
    sc = _scenario()
    h = np.asarray(sj.channel.draw_fading(jax.random.key(0), sc, (200_000,)), np.float64)
    assert abs(h.mean() - 1.0) < 5 * h.std() / math.sqrt(h.size)
    # E[1/h] for k = 2: Gamma(1/2) Gamma(3/2) = pi / 2; the sample mean of 1/h has infinite variance for
    # k = 2, so compare the median of 1/h with its closed form instead: h_med = (ln 2)^(1/k) / Gamma(1 + 1/k)
    assert sc.inv_gain_mean == pytest.approx(math.pi / 2)
    median = math.log(2.0) ** 0.5 / math.gamma(1.5)
    assert np.median(h) == pytest.approx(median, rel=0.01)


def test_simulate_runs_the_user_policy_fading_and_metric(plugin):
    sc = _scenario(n_tokens=1)
    res = sj.simulate(sc, policy="greedy", samples=64, seed=2)
    used = res.metrics["helpers_used"]
    assert set(res.metrics) == set(metrics.names()) and 0.0 <= used.mean <= sc.n_helpers
    # the user's metric against an independent computation on the same samples: loads from the policy's
    # own decisions, per sample, counted with NumPy
    params = jax.tree.map(lambda x: np.asarray(x)[None], (sc, sj.similarity.synthetic_tables(sc)))
    idx = jnp.arange(64, dtype=jnp.uint32)
    raw = jax.device_get(montecarlo.raw_metrics(TaskMetrics("greedy"), None, params, idx, 2))
    value, ok = (np.asarray(a[0]) for a in raw["helpers_used"])
    assert used.n == ok.sum() and used.mean == pytest.approx(value[ok].mean(), rel=1e-6)
    # SiftMoE is optimal under the same eta: where both are feasible it never pays more than the greedy rule
    mine = jax.device_get(montecarlo.raw_metrics(TaskMetrics("siftmoe"), None, params, idx, 2))
    (e_greedy, ok_g), (e_sift, ok_s) = (
        (np.asarray(r["energy_per_token_j"][0][0], np.float64), np.asarray(r["energy_per_token_j"][1][0], bool))
        for r in (raw, mine)
    )
    both = ok_g & ok_s
    assert both.sum() > 10 and np.all(e_sift[both] <= e_greedy[both] * (1 + 1e-5))
    # prefilling through the user's prefill rule, and an unknown option named with the policy's options
    assert sj.simulate(_scenario(n_tokens=4), policy="greedy", samples=8, seed=0).metrics["energy_per_token_j"].n >= 0
    with pytest.raises(sj.ConfigError, match="an option of policy greedy"):
        sj.simulate(sc, policy="greedy", samples=8, colour=1)


def test_a_two_point_sweep_carries_the_user_metric(plugin):
    spec = sj.sweep.load_spec(
        """
        name = "ext"
        preset = "switch-base-8"
        curves = ["greedy", "topk"]
        samples = 16
        [fixed]
        n_layers = 2
        n_tokens = 1
        fading = "weibull"
        [[axes]]
        field = "bandwidth_hz"
        values = [0.9e6, 1.2e6]
        """.replace("\n        ", "\n")
    )
    ds = sj.sweep.run(spec, out=None)
    assert ds["curve"].values.tolist() == ["greedy", "topk"] and dict(ds.sizes)["bandwidth_hz"] == 2
    assert "helpers_used_mean" in ds and bool((ds["helpers_used_n"] + ds["helpers_used_n_invalid"] == 16).all())


def test_the_cli_runs_the_user_policy_through_a_plugin_module(plugin, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(PLUGIN.parent), JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "-c",
        "from sift_jax.cli import main; main()",
        "--plugin",
        "sift_extension_demo",
        "simulate",
        "--preset",
        "switch-base-8",
        "--policy",
        "greedy",
        "--fading-family",
        "weibull",
        "--n-layers",
        "1",
        "--n-tokens",
        "1",
        "--samples",
        "8",
        "--json",
        "--quiet",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["policy"] == "greedy" and "helpers_used" in result["metrics"]
    bad = subprocess.run(
        cmd[:3] + ["--plugin", "no_such_module_xyz"] + cmd[5:], capture_output=True, text=True, env=env, timeout=600
    )
    assert bad.returncode == 2 and "plugin = 'no_such_module_xyz'" in bad.stderr
