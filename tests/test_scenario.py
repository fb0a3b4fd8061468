"""Scenario validation: every bad input raises ConfigError naming the field."""

import math

import numpy as np
import pytest

import sift_jax as sj
from sift_jax.scenario import Scenario, make

BAD_FIELDS = [
    ("bandwidth_hz", -1.0),
    ("bandwidth_hz", 0.0),
    ("bandwidth_hz", math.nan),
    ("bandwidth_hz", math.inf),
    ("bandwidth_hz", "wide"),
    ("bandwidth_hz", np.ones(3)),
    ("deadline_s", 0.0),
    ("deadline_s", -0.1),
    ("eta", -1.0),
    ("eta", math.nan),
    ("helper_power_w", 0.0),
    ("noise_psd_w_per_hz", -1e-20),
    ("pathloss_exponent", -2.0),
    ("pathloss_exponent", 12.0),
    ("gain_up", 0.0),
    ("gain_down", math.inf),
    ("min_distance_m", 0.0),
    ("max_distance_m", -5.0),
    ("max_tx_power_w", 0.0),
    ("max_tx_power_w", math.nan),
    ("hidden_bits", 0.0),
    ("expert_flops", -1.0),
    ("user_flops_per_s", 0.0),
    ("helper_flops_per_s", np.array([1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0])),
    ("user_load_time_s", -1e-3),
    ("helper_load_time_s", math.nan),
    ("slot_s", 0.0),
    ("gate_temperature", 0.0),
    ("n_nodes", 1),
    ("n_nodes", 2.5),
    ("n_nodes", True),
    ("top_k", 0),
    ("top_k", 9),
    ("n_tokens", 0),
    ("n_layers", -1),
    ("n_slots", 0),
    ("fading", "weibull"),
    ("fading_shape", 2.5),
    ("fading_shape", 0.1),
    ("rician_k", -1.0),
    ("shadowing_db", 50.0),
    ("intra_cluster_cosine", 1.5),
    ("output_norm", 0.0),
    ("eta", None),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_bad_field_raises_config_error_naming_it(field, value):
    with pytest.raises(sj.ConfigError) as err:
        make(n_nodes=8, top_k=2).replace(**{field: value})
    assert err.value.field == field
    assert field in str(err.value)


def test_unknown_field_and_preset_and_wrong_type():
    with pytest.raises(sj.ConfigError, match="colour"):
        make(colour="blue")
    with pytest.raises(sj.ConfigError, match="preset"):
        sj.presets.get("gpt-5")
    with pytest.raises(sj.ConfigError, match="scenario"):
        sj.validate({"n_nodes": 8})


def test_min_distance_above_max_rejected():
    with pytest.raises(sj.ConfigError, match="min_distance_m"):
        make(min_distance_m=200.0, max_distance_m=150.0)


def test_presets_valid_and_paper_values():
    for suffix in ("", "-4090"):  # the paper's regime (fitted) and the data-sheet one share the paper's values
        sw, mx, go = (sj.presets.get(n + suffix) for n in ("switch-base-8", "mixtral-8x7b", "gpt-oss-20b"))
        assert (sw.n_nodes, sw.top_k, sw.bandwidth_hz, sw.deadline_s, sw.eta) == (8, 1, 1e6, 0.7, 200.0)
        assert (mx.n_nodes, mx.top_k, mx.bandwidth_hz, mx.deadline_s, mx.eta) == (8, 2, 2e6, 0.074, 1.5)
        assert (go.n_nodes, go.top_k, go.bandwidth_hz, go.deadline_s, go.eta) == (32, 4, 0.8e6, 0.35, 30.0)
        for name, sc in zip(("switch-base-8", "mixtral-8x7b", "gpt-oss-20b"), (sw, mx, go)):
            assert math.isclose(sc.helper_power_w, 10**3.8 / 1e3)  # 38 dBm
            assert math.isclose(sc.noise_psd_w_per_hz, 10**-17.4 / 1e3)  # -174 dBm/Hz
            assert (sc.pathloss_exponent, sc.gain_down, sc.fading, sc.fading_shape) == (4.0, 1, "gamma", 2)
            assert sc.max_distance_m == 150.0 and math.isinf(sc.max_tx_power_w)
            # the uplink carries the fitted path-loss reference; the data-sheet presets keep the paper's factor 1
            want = sj.presets.FITTED[name]["gain_up"] if not suffix else 1.0
            assert math.isclose(sc.gain_up, want)


def test_per_helper_array_accepted():
    sc = Scenario(n_nodes=4).replace(bandwidth_hz=np.array([1e6, 2e6, 3e6]))
    assert np.asarray(sc.bandwidth_hz).shape == (3,)


def test_inverse_gain_mean():
    assert Scenario(fading_shape=2.0).inv_gain_mean == 2.0
    assert Scenario(fading_shape=4.0).inv_gain_mean == pytest.approx(4 / 3)
    assert math.isinf(Scenario(fading="rayleigh").inv_gain_mean)
