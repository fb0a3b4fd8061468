"""MoE lab on a tiny trained model: calibration tables, Prop. 1 for every token and layer, tightness runs."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from sift_jax import similarity
from sift_jax.errors import ConfigError
from sift_jax.moe import calibrate as cal_lib
from sift_jax.moe import data as data_lib
from sift_jax.moe import tightness as tight_lib
from sift_jax.moe.model import tiny_config
from sift_jax.moe.train import tiny_train_config, train
from sift_jax.testing import numpy_reference as ref

# one xdist worker per file: the module fixtures (trained models, compilations) are shared
pytestmark = pytest.mark.xdist_group("test_moe_lab")


@pytest.fixture(scope="module")
def corpus():
    return data_lib.load_corpus(max_bytes_per_split=100_000)


@pytest.fixture(scope="module")
def model(corpus):
    return train(tiny_config(), tiny_train_config(steps=100, eval_windows=4), corpus=corpus).model


@pytest.fixture(scope="module")
def cal(model, corpus):
    return cal_lib.calibrate(model, corpus.train, n_windows=8, n_lipschitz_points=32, n_power_points=4, power_iters=20)


def test_calibration_tables(model, corpus, cal):
    table = cal["table"]
    cfg = model.cfg
    assert table.shape == (cfg.n_layers, cfg.n_experts, cfg.n_experts + 1)
    x, _ = data_lib.eval_windows(corpus.train, cfg.context, 8)
    outs = cal_lib.collect(model, x)["expert_outputs"].astype(np.float64)  # [L, S, N, d]
    norms = np.linalg.norm(outs, axis=-1)  # [L, S, N]
    # zero diagonal, skip column = mean output norm, off-diagonal = mean ||FFN_i - FFN_j|| (brute force)
    np.testing.assert_array_equal(np.diagonal(table[:, :, :-1], axis1=1, axis2=2), 0.0)
    np.testing.assert_allclose(table[:, :, -1], norms.mean(1), rtol=1e-4)
    np.testing.assert_allclose(cal["mean_output_norm"], norms.mean(1), rtol=1e-4)
    diff = np.linalg.norm(outs[:, :, :, None, :] - outs[:, :, None, :, :], axis=-1).mean(1)
    np.testing.assert_allclose(table[:, :, :-1], diff, rtol=1e-4, atol=1e-6)
    # B_max is the max norm (>= the mean); betas are positive; gate shares sum to 1
    np.testing.assert_allclose(cal["b_max"], norms.max(1), rtol=1e-4)
    assert np.all(cal["beta_pi"] > 0) and np.all(cal["beta_fd"] > 0)
    np.testing.assert_allclose(cal["beta_max"], np.maximum(cal["beta_fd"], cal["beta_pi"]).max(-1))
    np.testing.assert_allclose(cal["load_slots"].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cal["gate_mean_by_slot"].sum(-1), 1.0, rtol=1e-5)


def test_save_and_load_tables(cal, tmp_path):
    path = cal_lib.save_calibration(tmp_path, cal)
    for p in (tmp_path, path):
        t = cal_lib.load_tables(p)
        assert t.dtype == np.float32
        np.testing.assert_array_equal(t, cal["table"])
    back = cal_lib.load_calibration(tmp_path)
    np.testing.assert_array_equal(back["beta_max"], cal["beta_max"])
    assert back["config"] == cal["config"]
    with pytest.raises(ConfigError):
        cal_lib.load_tables(tmp_path / "nowhere")


def test_prop1_holds_for_every_token_and_layer(model, corpus, cal):
    """Random skip/replace selections on every token and layer: delta <= sum_i g_i F_i,phi(i)(z), with F
    from `similarity.pairwise` (independent of the model's code path). Thm. 1 on the same run, counted in
    NumPy: e^(l) = ||y~^(l) - y^(l)|| (perturbed against clean MoE outputs) <= the recursion
    b^(l) = beta^(l) b^(l-1) + 2 B^(l) + delta^(l), b^(0) = 0, with the calibrated B_max, beta_max."""
    cfg = model.cfg
    x, _ = data_lib.eval_windows(corpus.test, cfg.context, 4)
    x = jnp.asarray(x)
    _, aux0 = model(x, return_internals=True)
    rng = np.random.default_rng(1)
    sel = rng.integers(-1, cfg.n_experts, aux0["topk"].shape).astype(np.int32)
    _, aux = model(x, selection=jnp.asarray(sel), return_internals=True)
    outs = np.asarray(aux["expert_outputs"], np.float64)  # perturbed run: z~ at each layer
    g, tk = np.asarray(aux["gates"], np.float64), np.asarray(aux["topk"])
    n_l, b, t, n, d = outs.shape
    flat = outs.reshape(-1, n, d)
    _, _, F = similarity.pairwise(jnp.asarray(flat, jnp.float32))
    F = np.concatenate([np.asarray(F, np.float64), np.linalg.norm(flat, axis=-1)[:, :, None]], -1)  # [S, N, N+1]
    F = F.reshape(n_l, b, t, n, n + 1)
    col = np.where(sel < 0, n, sel)
    rows = np.take_along_axis(F, tk[..., None], -2)  # [L, B, T, K, N+1]: row of each slot's expert
    bound = np.sum(g * np.take_along_axis(rows, col[..., None], -1)[..., 0], -1)
    y_top = np.einsum("lbtk,lbtkd->lbtd", g, np.take_along_axis(outs, tk[..., None], -2))
    delta = np.linalg.norm(np.asarray(aux["moe_outputs"], np.float64) - y_top, axis=-1)
    assert delta.shape == (n_l, b, t)
    assert np.all(delta <= bound * (1 + 1e-5) + 1e-6)
    assert np.mean(bound > 0) > 0.5
    # the lab's exact-F bound is the same quantity
    np.testing.assert_allclose(
        np.asarray(tight_lib.exact_f_bound(aux["expert_outputs"], aux["gates"], aux["topk"], jnp.asarray(sel))),
        bound,
        rtol=2e-4,
        atol=1e-5,
    )
    # Thm. 1, written out in NumPy (App. B, eqs. 29-32), on every token and layer
    e = np.linalg.norm(
        np.asarray(aux["moe_outputs"], np.float64) - np.asarray(aux0["moe_outputs"], np.float64), axis=-1
    )
    b_max = np.asarray(cal["b_max"], np.float64)
    b_max = b_max.max(-1) if b_max.ndim == 2 else b_max  # [L]: max over the layer's experts
    beta = np.asarray(cal["beta_max"], np.float64)
    thm1 = np.zeros_like(delta)
    prev = np.zeros(delta.shape[1:])
    for l in range(n_l):
        prev = beta[l] * prev + 2 * b_max[l] + delta[l]
        thm1[l] = prev
    assert np.sum(e > thm1 * (1 + tight_lib.PROP1_RTOL)) == 0
    assert np.mean(e > 0) > 0.5  # the selections did perturb the outputs


# one settings object for both runs: the second reuses the first one's compilation
TC = tight_lib.TightnessConfig(n_windows=2, n_draws=2, eta_fractions=(0.0, 0.3, 1.0), grid_batch=2)


@pytest.fixture(scope="module")
def tight_run(model, cal, corpus):
    return tight_lib.run(model, cal["table"], cal["b_max"], cal["beta_max"], corpus.test, tc=TC)


def _numpy_violations(res) -> tuple[int, int]:
    """Violations counted in NumPy from the run's per-token arrays ("ratios", SiftMoE runs, changed
    layer-tokens): (Prop. 1 with exact F: delta > bound_f; Thm. 1 at the last layer: e / bound > 1)."""
    r, rtol = res["ratios"], tight_lib.PROP1_RTOL
    delta, bound_f = np.asarray(r["delta"], np.float64), np.asarray(r["bound_f"], np.float64)
    assert delta.shape == bound_f.shape and np.all(bound_f > 0)
    return int(np.sum(delta > bound_f * (1 + rtol) + 1e-6)), int(np.sum(np.asarray(r["thm1"]) > 1 + rtol))


def test_tightness_run(model, tight_run):
    res = tight_run
    # (a) Prop. 1 with exact F never exceeds 1 (triangle inequality); the table version is a distribution
    prop1, thm1 = _numpy_violations(res)
    r = res["ratios"]
    assert prop1 == 0 and res["prop1_exact"]["n_violations"] == prop1
    # Top-K's Prop. 1 violations, counted in NumPy from its changed layer-tokens (lost slots are skips)
    t_delta, t_bound = (np.asarray(r[k], np.float64) for k in ("topk_delta", "topk_bound_f"))
    assert t_delta.shape == t_bound.shape and np.all(t_bound > 0)
    topk_viol = int(np.sum(t_delta > t_bound * (1 + tight_lib.PROP1_RTOL) + 1e-6))
    assert topk_viol == 0 and res["prop1_exact"]["topk_n_violations"] == topk_viol
    assert r["delta"].size == res["prop1_exact"]["n"] > 0
    assert np.max(np.asarray(r["delta"], np.float64) / r["bound_f"]) <= 1 + tight_lib.PROP1_RTOL
    assert res["prop1_table"]["all"]["median"] > 0
    # (b) Thm. 1 holds (e <= 2 B_max with the calibrated B_max, see the module docstring), at the last layer
    # of every SiftMoE run and token, counted here
    n_runs = len(res["etas"]) * res["n_draws"]
    assert r["thm1"].size == n_runs * res["n_tokens"] and thm1 == 0
    assert res["thm1"]["n_violations"] == 0 and res["thm1"]["measured_delta"]["max"] <= 1
    # (c) shapes and sanity: eta = 0 cannot lose more than practical Top-K (fallback), energy falls with eta
    assert len(res["accuracy"]["siftmoe"]) == 3 and len(res["accuracy"]["siftmoe_per_draw"][0]) == 2
    assert res["accuracy"]["siftmoe"][0] == pytest.approx(res["accuracy"]["topk"])
    e = res["energy_per_token_j"]["siftmoe"]
    assert e[2] <= e[0] and all(math.isfinite(v) for v in e)
    assert res["n_tokens"] == 2 * model.cfg.context


def _numpy_lab_metrics(sc, table, f, d, h, gates, topk, assign, eta):
    """The metric records' per-token values of a Top-K run, from the model's routing in NumPy (float64).

    f float[S, L, N] node costs, d [S, N-1], h [S, L, N-1]; gates, topk, assign [L, S, K] (assign = topk
    where delivered, -1 where lost). Each token is one M = 1 task of L layers (the records' definitions,
    `tests/test_aggregation_reference.py`): energies summed over layers, rates over the L x K slots,
    infeasible = in some layer a Top-K expert's node misses the deadline (ideal: flagged; practical: lost) or
    the bound exceeds eta."""
    p = ref.params_of(sc)
    n_layers, k = sc.n_layers, sc.top_k
    onehot = (assign[..., None] == np.arange(sc.n_nodes)).any(-2).astype(np.float64)  # [L, S, N] loads
    f_lt = np.moveaxis(f, 1, 0)  # [L, S, N]
    cost = np.where(onehot > 0, np.where(np.isfinite(f_lt), f_lt, 0.0), 0.0)
    skip_dev = np.take_along_axis(table[:, None, :, -1].repeat(topk.shape[1], 1), topk, -1)  # Fbar[i, skip]
    dev = np.sum(np.where(assign < 0, gates * skip_dev, 0.0), -1)  # [L, S] Prop. 1 bound of the lost slots
    lost = (assign < 0).sum(-1)
    missed = ~np.isfinite(np.take_along_axis(f_lt, topk, -1)).all(-1)  # [L, S] a Top-K node misses the deadline
    latency = ref.node_latency(p, d[None], np.moveaxis(h, 1, 0), onehot).max(-1)  # [L, S] eqs. (2), (9)
    return {
        "energy_per_token_j": cost.sum((0, 2)),
        "uplink_energy_j": cost[..., 1:].sum((0, 2)),
        "local_energy_j": cost[..., 0].sum(0),
        "deviation_bound": dev.mean(0),
        "replace_rate": np.zeros(topk.shape[1]),
        "skip_rate": lost.sum(0) / (n_layers * k),
        "infeasible_rate": (missed | (dev > eta)).any(0).astype(np.float64),
        "latency_s": latency.sum(0),
    }


def test_lab_metrics_are_the_records_and_match_numpy(model, cal, corpus, tight_run):
    """The lab's per-metric numbers for ideal and practical Top-K, re-derived in NumPy.

    Independent of the lab: the channel of each (draw, token) is drawn with the lab's documented keys;
    node costs, latency and every metric are NumPy (`sift_jax.testing.numpy_reference`, eqs. 2/3/9/10);
    practical Top-K's selection (keep the Top-K experts whose node meets the deadline) is applied to the
    model by this test's own `select_fn`, so its routing downstream of lost experts is the model's own.
    Accuracy and loss of practical Top-K are checked on the same run. SiftMoE: the energy split sums."""
    import jax

    from sift_jax import channel, metrics

    res, sc, cfg = tight_run, tight_lib.lab_scenario(model.cfg), model.cfg
    assert set(res["metric_records"]) == set(metrics.names())
    x, y = data_lib.eval_windows(corpus.test, cfg.context, TC.n_windows)
    b, t = x.shape
    table = np.asarray(cal["table"], np.float64)
    p = ref.params_of(sc)
    for c in range(TC.n_draws):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(TC.seed), c), 0)
        draws = [channel.draw(jax.random.fold_in(key, m), sc) for m in range(b * t)]
        d = np.stack([np.asarray(ch.distance_m, np.float64) for ch in draws])  # [S, N-1]
        h = np.stack([np.asarray(ch.gain, np.float64) for ch in draws])  # [S, L, N-1]
        f = ref.node_costs(p, d[:, None], h)  # [S, L, N]
        f_bt = jnp.asarray(f.reshape(b, t, cfg.n_layers, cfg.n_experts), jnp.float32)

        def practical(l, g, tk, z, f_bt=f_bt):
            return jnp.where(jnp.isfinite(jnp.take_along_axis(f_bt[:, :, l], tk, -1)), tk, -1).astype(jnp.int32)

        for policy, select_fn in (("topk-ideal", None), ("topk", practical)):
            logits, aux = model(jnp.asarray(x), select_fn=select_fn, return_internals=True)
            gates, topk = (np.asarray(aux[k]).reshape(cfg.n_layers, b * t, -1) for k in ("gates", "topk"))
            assign = topk if select_fn is None else np.asarray(aux["selection"]).reshape(cfg.n_layers, b * t, -1)
            want = _numpy_lab_metrics(sc, table, f, d, h, gates.astype(np.float64), topk, assign, res["etas"][0])
            for name, values in want.items():
                got = res[name][f"{policy}_per_draw"][c]
                np.testing.assert_allclose(got, values.mean(), rtol=2e-5, atol=1e-9, err_msg=f"{policy} {name}")
            if policy == "topk":
                correct = np.mean(np.asarray(jnp.argmax(logits, -1)) == y)
                assert res["accuracy"]["topk_per_draw"][c] == pytest.approx(correct, abs=1e-12)
                assert want["skip_rate"].mean() > 0 and want["infeasible_rate"].mean() < 1  # the radio matters
    # SiftMoE: the energy split sums at every eta; a token with an infeasible layer counts once
    e, up, loc = (np.asarray(res[k]["siftmoe"]) for k in ("energy_per_token_j", "uplink_energy_j", "local_energy_j"))
    np.testing.assert_allclose(up + loc, e, rtol=1e-5)
    per_layer, per_task = (
        np.asarray(res["infeasible_layer_rate"]["siftmoe"]),
        np.asarray(res["infeasible_rate"]["siftmoe"]),
    )
    assert np.all(per_layer <= per_task + 1e-12) and np.all(per_task <= cfg.n_layers * per_layer + 1e-12)


def test_skip_fallback_counts_every_slot_of_a_skipped_layer(model, cal, corpus):
    """With infeasible_fallback="skip" the model skips every slot of a layer where SiftMoE finds no
    selection. At eta = 0 a feasible SiftMoE selection keeps every Top-K expert (no deviation allowed), so
    the skipped slots are exactly K per infeasible layer decision: skip_rate == infeasible_layer_rate, and
    no slot is replaced."""
    tc = tight_lib.TightnessConfig(n_windows=1, n_draws=1, eta_fractions=(0.0,), infeasible_fallback="skip")
    res = tight_lib.run(model, cal["table"], cal["b_max"], cal["beta_max"], corpus.test, tc=tc)
    layer_rate = res["infeasible_layer_rate"]["siftmoe"][0]
    assert 0 < layer_rate < 1  # the lab's default radio makes some layers infeasible, not all
    assert res["skip_rate"]["siftmoe"][0] == pytest.approx(layer_rate, rel=1e-12)
    assert res["replace_rate"]["siftmoe"][0] == 0.0


def test_eta_zero_without_losses_is_ideal_topk(model, cal, corpus):
    """With a generous channel (preset numbers, no power cap) every node meets the deadline, so at
    eta = 0 SiftMoE must keep every Top-K expert: identical loss and accuracy to ideal Top-K."""
    sc = tight_lib.lab_scenario(model.cfg, max_tx_power_w=math.inf, bandwidth_hz=2e6)
    res = tight_lib.run(model, cal["table"], cal["b_max"], cal["beta_max"], corpus.test, sc=sc, tc=TC)
    assert res["etas"][0] == 0.0
    assert res["infeasible_rate"]["siftmoe"][0] == 0.0 and res["infeasible_rate"]["topk"] == 0.0
    assert res["accuracy"]["siftmoe"][0] == res["accuracy"]["topk-ideal"] == res["accuracy"]["topk"]
    assert res["loss"]["siftmoe"][0] == pytest.approx(res["loss"]["topk-ideal"], rel=1e-6)  # vmapped: rounding only
    assert res["replace_rate"]["siftmoe"][0] == 0.0 and res["skip_rate"]["siftmoe"][0] == 0.0
    assert res["prop1_table"]["per_eta"][0]["n"] == 0  # nothing changed at eta = 0, nothing to bound


def test_bad_inputs(model, cal, corpus):
    with pytest.raises(ConfigError):
        tight_lib.TightnessConfig(infeasible_fallback="drop")
    with pytest.raises(ConfigError):
        tight_lib.run(model, cal["table"][:1], cal["b_max"], cal["beta_max"], corpus.test)
    with pytest.raises(ConfigError):
        tight_lib.run(
            model,
            cal["table"],
            cal["b_max"],
            cal["beta_max"],
            corpus.test,
            sc=tight_lib.lab_scenario(model.cfg, n_layers=3),
        )


def test_cli_calibrate_and_tightness(model, cal, tight_run, tmp_path):
    """`moe calibrate` and `moe tightness` on a saved checkpoint write tables, JSON and PNG figures."""
    import json

    from click.testing import CliRunner

    from sift_jax.moe.cli import moe
    from sift_jax.moe.train import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt", model, {"train": {"max_bytes_per_split": 100_000}})
    runner = CliRunner()
    # the fixture's calibration settings: reuses its compilations, and must reproduce its numbers
    r = runner.invoke(
        moe,
        [
            "calibrate",
            str(ckpt),
            "--windows",
            "8",
            "--lipschitz-points",
            "32",
            "--power-points",
            "4",
            "--power-iters",
            "20",
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    table = cal_lib.load_tables(ckpt)
    np.testing.assert_array_equal(table, cal["table"])
    np.testing.assert_array_equal(cal_lib.load_calibration(ckpt)["beta_max"], cal["beta_max"])
    assert (ckpt / "calibration_tables.png").stat().st_size > 0
    # the same settings as TC: reuses the compiled tightness function
    r = runner.invoke(
        moe,
        [
            "tightness",
            str(ckpt),
            "--windows",
            "2",
            "--draws",
            "2",
            "--eta-fractions",
            "0,0.3,1",
            "--grid-batch",
            "2",
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((ckpt / "tightness" / "tightness.json").read_text())
    # the same settings and model as `tight_run`: the counts are those of its per-token arrays (NumPy)
    prop1, _ = _numpy_violations(tight_run)
    assert doc["prop1_exact"]["n_violations"] == prop1 == 0 and len(doc["etas"]) == 3
    assert doc["prop1_exact"]["n"] == tight_run["ratios"]["delta"].size
    assert doc["thm1"]["n_violations"] == 0
    for name in doc["figures"]:
        assert (ckpt / "tightness" / name).stat().st_size > 1000
    r = runner.invoke(moe, ["tightness", str(ckpt), "--fallback", "drop"])
    assert isinstance(r.exception, ConfigError)
    r = runner.invoke(moe, ["tightness", str(ckpt), "--set", "bandwidth_hz"])
    assert isinstance(r.exception, ConfigError)
