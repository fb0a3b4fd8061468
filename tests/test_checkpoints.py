"""Checkpoint readers and calibration from weights, on tiny checkpoints written here.

Every table is checked against an independent NumPy (float64) computation of the paper's formula,
Fbar[i, j] = mean_t ||FFN_i(z_t) - FFN_j(z_t)||, Fbar[i, N] = mean_t ||FFN_i(z_t)||, with each layout's
expert written out again in NumPy from its public definition.
"""

from __future__ import annotations

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from sift_jax.checkpoints import (
    Checkpoint,
    Layout,
    Tensor,
    calibrate_checkpoint,
    draw_hidden_states,
    export_lab,
    layouts,
    load_calibration,
    load_tables,
    reader,
    register,
    save_calibration,
    save_checkpoint,
)
from sift_jax.checkpoints.cli import calibrate as calibrate_cmd
from sift_jax.errors import ConfigError

N, D, F, T = 4, 8, 16, 24  # experts, hidden size, expert width, tokens: one compile per layout
FAST = dict(lipschitz=False)


# ---- NumPy references ----------------------------------------------------------------------------


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _f64(a):
    return np.asarray(a, np.float64)


def _table(outs):
    """(Fbar [N, N+1], B_max [N]) from outputs [T, N, d], float64."""
    diff = np.linalg.norm(outs[:, :, None, :] - outs[:, None, :, :], axis=-1).mean(0)
    norms = np.linalg.norm(outs, axis=-1)
    return np.concatenate([diff, norms.mean(0)[:, None]], axis=1), norms.max(0)


def _assert_tables(result, layer, outs, rtol=2e-5):
    want, b_max = _table(outs)
    scale = want.max()
    np.testing.assert_allclose(result["tables"][layer], want, rtol=0, atol=rtol * scale)
    np.testing.assert_allclose(result["b_max"][layer], b_max, rtol=rtol, atol=rtol * scale)
    assert np.all(np.diag(result["tables"][layer]) == 0)


def _np_dequant(blocks, scales):
    """MXFP4 written out independently: code c -> (-1)^(c>=8) * {0, .5, 1, 1.5, 2, 3, 4, 6}[c % 8]."""
    magnitude = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    codes = np.empty(blocks.shape[:-1] + (2 * blocks.shape[-1],), np.int64)
    codes[..., 0::2] = blocks % 16
    codes[..., 1::2] = blocks // 16
    values = np.where(codes >= 8, -1.0, 1.0) * magnitude[codes % 8]
    values = values * 2.0 ** (scales.astype(np.float64) - 127)[..., None]
    return values.reshape(blocks.shape[:-2] + (-1,))


# ---- tiny checkpoints ----------------------------------------------------------------------------


def _w(rng, *shape, dtype=np.float32):
    return (rng.normal(size=shape) / np.sqrt(shape[-1])).astype(dtype)


def _mixtral(rng, n_layers=2, dtype=np.float32):
    tensors = {}
    for layer in range(n_layers):
        p = f"model.layers.{layer}"
        tensors[f"{p}.block_sparse_moe.gate.weight"] = _w(rng, N, D, dtype=dtype)
        tensors[f"{p}.post_attention_layernorm.weight"] = (1 + 0.1 * rng.normal(size=D)).astype(dtype)
        tensors[f"{p}.self_attn.q_proj.weight"] = _w(rng, D, D, dtype=dtype)  # not read
        for e in range(N):
            q = f"{p}.block_sparse_moe.experts.{e}"
            tensors[f"{q}.w1.weight"] = _w(rng, F, D, dtype=dtype)
            tensors[f"{q}.w3.weight"] = _w(rng, F, D, dtype=dtype)
            tensors[f"{q}.w2.weight"] = _w(rng, D, F, dtype=dtype)
    return tensors


def _mixtral_outputs(tensors, layer, z):
    q = f"model.layers.{layer}.block_sparse_moe.experts"
    w = {role: [_f64(tensors[f"{q}.{e}.{role}.weight"]) for e in range(N)] for role in ("w1", "w2", "w3")}
    return np.stack([(_silu(z @ w1.T) * (z @ w3.T)) @ w2.T for w1, w2, w3 in zip(w["w1"], w["w2"], w["w3"])], axis=1)


def _hidden(rng, n_layers, tokens=T):
    return (2.0 * rng.normal(size=(n_layers, tokens, D))).astype(np.float32)


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    tensors = _mixtral(rng)
    path = save_checkpoint(tensors, tmp_path_factory.mktemp("mixtral"), config={"model_type": "mixtral"})
    return path, tensors, _hidden(rng, 2)


# ---- each layout against NumPy -------------------------------------------------------------------


def test_mixtral_tables_b_max_and_router_match_numpy(mixtral_dir):
    path, tensors, hidden = mixtral_dir
    ckpt = Checkpoint(path)
    assert (ckpt.layout.name, ckpt.layers, ckpt.n_experts, ckpt.hidden_size) == (
        "mixtral",
        ("model.layers.0", "model.layers.1"),
        N,
        D,
    )
    result = calibrate_checkpoint(ckpt, hidden, batch_tokens=10, **FAST)  # 3 batches, the last padded
    assert result["tables"].shape == (2, N, N + 1) and result["tables"].dtype == np.float32
    for layer in range(2):
        z = _f64(hidden[layer])
        _assert_tables(result, layer, _mixtral_outputs(tensors, layer, z))
        router = z @ _f64(tensors[f"model.layers.{layer}.block_sparse_moe.gate.weight"]).T
        np.testing.assert_allclose(result["router_logits"][layer], router, rtol=1e-5, atol=1e-5)
    assert np.all(np.isnan(result["beta_pi"]))  # lipschitz=False


def test_bf16_weights_stay_bf16_and_accumulate_in_float32(tmp_path):
    rng = np.random.default_rng(1)
    tensors = _mixtral(rng, n_layers=1, dtype=ml_dtypes.bfloat16)
    save_checkpoint(tensors, tmp_path, config={"model_type": "mixtral"})
    ckpt = Checkpoint(tmp_path)
    weights = ckpt.read_layer(0)
    assert weights.expert["w1"].dtype == ml_dtypes.bfloat16 and weights.expert["w1"].shape == (N, F, D)
    hidden = _hidden(rng, 1)
    result = calibrate_checkpoint(ckpt, hidden, **FAST)
    # the reference uses the same BF16 values in float64: a float32 pass agrees to ~1e-6, a BF16 one would not
    _assert_tables(result, 0, _mixtral_outputs(tensors, 0, _f64(hidden[0])), rtol=1e-5)


def test_switch_encoder_then_decoder_and_lipschitz(tmp_path):
    rng = np.random.default_rng(2)
    blocks = [("encoder", 1, 1), ("encoder", 3, 1), ("decoder", 1, 2)]  # sparse every other block
    tensors = {"shared.weight": _w(rng, 5, D)}
    for stack, block, sub in blocks:
        p = f"{stack}.block.{block}.layer.{sub}"
        tensors[f"{p}.mlp.router.classifier.weight"] = _w(rng, N, D)
        tensors[f"{p}.layer_norm.weight"] = np.ones(D, np.float32)
        for e in range(N):
            tensors[f"{p}.mlp.experts.expert_{e}.wi.weight"] = _w(rng, F, D)
            tensors[f"{p}.mlp.experts.expert_{e}.wo.weight"] = _w(rng, D, F)
    save_checkpoint(tensors, tmp_path, config={"model_type": "switch_transformers"})
    hidden = _hidden(rng, 3)
    result = calibrate_checkpoint(tmp_path, hidden, n_power_points=T, power_iters=200, n_lipschitz_points=T)
    assert result["layer_names"] == ("encoder.block.1.layer.1", "encoder.block.3.layer.1", "decoder.block.1.layer.2")
    for layer, name in enumerate(result["layer_names"]):
        z = _f64(hidden[layer])
        wi = [_f64(tensors[f"{name}.mlp.experts.expert_{e}.wi.weight"]) for e in range(N)]
        wo = [_f64(tensors[f"{name}.mlp.experts.expert_{e}.wo.weight"]) for e in range(N)]
        outs = np.stack([np.maximum(z @ a.T, 0) @ b.T for a, b in zip(wi, wo)], axis=1)
        _assert_tables(result, layer, outs)
        # ReLU expert: Jacobian Wo diag(1[Wi z > 0]) Wi; power iteration over all tokens -> max spectral norm
        spectral = np.array(
            [max(np.linalg.norm(b @ ((a @ zt > 0)[:, None] * a), 2) for zt in z) for a, b in zip(wi, wo)]
        )
        np.testing.assert_allclose(result["beta_pi"][layer], spectral, rtol=1e-3)
        assert np.all(result["beta_fd"][layer] > 0) and np.all(result["beta_fd"][layer] <= 1.05 * spectral)
        assert result["beta_max"][layer] == pytest.approx(max(result["beta_fd"][layer].max(), spectral.max()), rel=1e-3)


def test_qwen_olmoe_detected_from_config_shared_expert_ignored(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {}
    for layer in range(2):
        p = f"model.layers.{layer}.mlp"
        tensors[f"{p}.gate.weight"] = _w(rng, N, D)
        tensors[f"{p}.shared_expert_gate.weight"] = _w(rng, 1, D)  # Qwen2-MoE's always-on expert: not routed
        tensors[f"{p}.shared_expert.gate_proj.weight"] = _w(rng, F, D)
        for e in range(N):
            for role, shape in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
                tensors[f"{p}.experts.{e}.{role}.weight"] = _w(rng, *shape)
    save_checkpoint(tensors, tmp_path, config={"model_type": "olmoe"})
    ckpt = Checkpoint(tmp_path)
    assert ckpt.layout.name == "qwen-moe"
    hidden = _hidden(rng, 2)
    result = calibrate_checkpoint(ckpt, hidden, **FAST)
    for layer in range(2):
        p = f"model.layers.{layer}.mlp.experts"
        t = {k: _f64(v) for k, v in tensors.items()}
        z = _f64(hidden[layer])
        outs = np.stack(
            [
                (_silu(z @ t[f"{p}.{e}.gate_proj.weight"].T) * (z @ t[f"{p}.{e}.up_proj.weight"].T))
                @ t[f"{p}.{e}.down_proj.weight"].T
                for e in range(N)
            ],
            axis=1,
        )
        _assert_tables(result, layer, outs)


def test_gpt_oss_mxfp4_dequantised_and_clamped_swiglu(tmp_path):
    rng = np.random.default_rng(4)
    d, f = 32, 32  # MXFP4 groups of 32 along the input dimension
    tensors = {}
    for layer in range(2):
        p = f"model.layers.{layer}"
        tensors[f"{p}.mlp.router.weight"] = _w(rng, N, d, dtype=ml_dtypes.bfloat16)
        tensors[f"{p}.mlp.router.bias"] = _w(rng, N, dtype=ml_dtypes.bfloat16)
        tensors[f"{p}.mlp.experts.gate_up_proj_blocks"] = rng.integers(0, 256, (N, 2 * f, d // 32, 16), dtype=np.uint8)
        tensors[f"{p}.mlp.experts.gate_up_proj_scales"] = rng.integers(122, 126, (N, 2 * f, d // 32), dtype=np.uint8)
        tensors[f"{p}.mlp.experts.gate_up_proj_bias"] = _w(rng, N, 2 * f, dtype=ml_dtypes.bfloat16)
        tensors[f"{p}.mlp.experts.down_proj_blocks"] = rng.integers(0, 256, (N, d, f // 32, 16), dtype=np.uint8)
        tensors[f"{p}.mlp.experts.down_proj_scales"] = rng.integers(120, 124, (N, d, f // 32), dtype=np.uint8)
        tensors[f"{p}.mlp.experts.down_proj_bias"] = _w(rng, N, d, dtype=ml_dtypes.bfloat16)
    save_checkpoint(tensors, tmp_path, config={"model_type": "gpt_oss"})
    hidden = (2.0 * rng.normal(size=(2, T, d))).astype(np.float32)
    result = calibrate_checkpoint(tmp_path, hidden, batch_tokens=10, **FAST)  # biases: FFN(0) != 0 on padding
    assert result["layout"] == "gpt-oss"
    for layer in range(2):
        t = {
            k.split(".")[-1]: _f64(v) if v.dtype != np.uint8 else v
            for k, v in tensors.items()
            if k.startswith(f"model.layers.{layer}.")
        }
        z = _f64(hidden[layer])
        outs = []
        for e in range(N):
            w_gate_up = _np_dequant(t["gate_up_proj_blocks"][e], t["gate_up_proj_scales"][e])  # [2f, d]
            gate_up = z @ w_gate_up.T + t["gate_up_proj_bias"][e]
            gate, up = np.minimum(gate_up[:, 0::2], 7.0), np.clip(gate_up[:, 1::2], -7.0, 7.0)
            act = (up + 1) * gate / (1 + np.exp(-1.702 * gate))
            w_down = _np_dequant(t["down_proj_blocks"][e], t["down_proj_scales"][e])  # [d, f]
            outs.append(act @ w_down.T + t["down_proj_bias"][e])
        _assert_tables(result, layer, np.stack(outs, axis=1))
        np.testing.assert_allclose(result["router_logits"][layer], z @ t["weight"].T + t["bias"], rtol=1e-5, atol=1e-5)


def test_mxfp4_dequantisation_against_numpy():
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 256, (3, 2, 16), dtype=np.uint8)
    scales = rng.integers(120, 135, (3, 2), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(layouts.dequantize_mxfp4(blocks, scales)), _np_dequant(blocks, scales))


# ---- the lab's export: two routes to the same numbers ---------------------------------------------


def test_lab_export_round_trip_reproduces_the_lab_calibration(tmp_path):
    from flax import nnx

    from sift_jax.moe import calibrate as lab_calibrate
    from sift_jax.moe import data
    from sift_jax.moe.model import init_model, tiny_config

    model = nnx.eval_shape(lambda: init_model(tiny_config(), seed=3))  # random weights set without compiling
    rng = np.random.default_rng(3)  # the initialisers (saves ~10 s of CPU)
    nnx.update(model, jax.tree.map(lambda a: (0.2 * rng.normal(size=a.shape)).astype(a.dtype), nnx.state(model)))
    export_lab(model, tmp_path / "lab", max_shard_bytes=40_000)  # sharded, with an index
    ckpt = Checkpoint(tmp_path / "lab")
    assert ckpt.layout.name == "sift-lab" and len(ckpt) == 2 and len(list((tmp_path / "lab").glob("*.safetensors"))) > 1
    tokens = data.load_corpus(max_bytes_per_split=4000).train
    lab = lab_calibrate.calibrate(model, tokens, n_windows=2, n_lipschitz_points=2, n_power_points=1, power_iters=2)
    x, _ = data.eval_windows(tokens, model.cfg.context, 2)  # the windows the lab calibrated on
    got = lab_calibrate.collect(model, x)
    np.save(tmp_path / "h.npy", got["moe_inputs"])  # [L, S, d]: each MoE layer's own inputs
    ours = calibrate_checkpoint(ckpt, tmp_path / "h.npy", **FAST)
    np.testing.assert_allclose(ours["tables"], lab["table"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours["b_max"], lab["b_max"], rtol=1e-5)
    log_probs = np.log(got["router_probs"])  # logits up to a constant per token
    np.testing.assert_allclose(
        ours["router_logits"] - ours["router_logits"][..., :1], log_probs - log_probs[..., :1], rtol=1e-4, atol=1e-4
    )


# ---- layout registry ------------------------------------------------------------------------------


def test_a_new_layout_is_one_record(tmp_path, monkeypatch):
    monkeypatch.setattr(layouts, "_REGISTRY", dict(layouts._REGISTRY))
    register(
        Layout(
            name="tiny-gelu",
            prefixes=("h.{layer}",),
            model_types=("tiny_gelu",),
            tensors={
                "router": Tensor("{prefix}.moe.router.weight", ("N", "d"), "router"),
                "fc1": Tensor("{prefix}.moe.experts.{e}.fc1.weight", ("f", "d")),
                "fc2": Tensor("{prefix}.moe.experts.{e}.fc2.weight", ("d", "f")),
            },
            expert=lambda w, z: jax.nn.gelu(z @ w["fc1"].T) @ w["fc2"].T,
            router=lambda w, z: z @ w["router"].T,
        )
    )
    assert "tiny-gelu" in layouts.names()
    rng = np.random.default_rng(6)
    tensors = {"h.0.moe.router.weight": _w(rng, N, D)}
    for e in range(N):
        tensors[f"h.0.moe.experts.{e}.fc1.weight"] = _w(rng, F, D)
        tensors[f"h.0.moe.experts.{e}.fc2.weight"] = _w(rng, D, F)
    save_checkpoint(tensors, tmp_path)  # no config.json: found by its tensor names
    hidden = _hidden(rng, 1)
    result = calibrate_checkpoint(tmp_path, hidden, **FAST)
    assert result["layout"] == "tiny-gelu"
    z = _f64(hidden[0])

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    fc1 = [_f64(tensors[f"h.0.moe.experts.{e}.fc1.weight"]) for e in range(N)]
    fc2 = [_f64(tensors[f"h.0.moe.experts.{e}.fc2.weight"]) for e in range(N)]
    outs = np.stack([gelu(z @ a.T) @ b.T for a, b in zip(fc1, fc2)], axis=1)
    _assert_tables(result, 0, outs)
    with pytest.raises(ConfigError, match="a new name"):
        register(layouts.get("tiny-gelu"))


def test_unknown_layout_lists_the_registered_ones(mixtral_dir, tmp_path):
    with pytest.raises(ConfigError, match="one of gpt-oss, mixtral, qwen-moe, sift-lab, switch"):
        Checkpoint(mixtral_dir[0], layout="llama")
    save_checkpoint({"x.weight": np.ones(3, np.float32)}, tmp_path, config={"model_type": "llama"})
    with pytest.raises(ConfigError, match=r"model_type 'llama' is not registered.*pass one of gpt-oss"):
        Checkpoint(tmp_path)
    with pytest.raises(ConfigError, match=r"no MoE layer of layout mixtral.*found 1 tensors: x.weight"):
        Checkpoint(tmp_path, layout="mixtral")


# ---- sharded index, corrupted file, missing tensor, wrong shape ----------------------------------


def _write_shards(tensors, directory, split):
    """Hand-written Hugging Face shards: names before `split` (sorted) in file 1, the rest in file 2."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    parts = {"a.safetensors": names[:split], "b.safetensors": names[split:]}
    for file, part in parts.items():
        save_file({n: tensors[n] for n in part}, str(directory / file))
    weight_map = {n: file for file, part in parts.items() for n in part}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory, weight_map


def test_sharded_index_gives_the_single_file_tables(mixtral_dir, tmp_path):
    path, tensors, hidden = mixtral_dir
    sharded, weight_map = _write_shards(tensors, tmp_path / "sharded", split=len(tensors) // 3)
    assert {f for n, f in weight_map.items() if n.startswith("model.layers.0.")} == {"a.safetensors", "b.safetensors"}
    ckpt = Checkpoint(sharded, layout="mixtral")
    single = calibrate_checkpoint(path, hidden, **FAST)
    split = calibrate_checkpoint(ckpt, hidden, **FAST)
    np.testing.assert_array_equal(split["tables"], single["tables"])
    _assert_tables(split, 1, _mixtral_outputs(tensors, 1, _f64(hidden[1])))


def test_corrupted_files_give_one_clear_error(mixtral_dir, tmp_path):
    _, tensors, _ = mixtral_dir
    sharded, _ = _write_shards(tensors, tmp_path / "c", split=10)
    data = (sharded / "b.safetensors").read_bytes()
    (sharded / "b.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(ConfigError, match=r"b\.safetensors is not a valid safetensors file \(.*incomplete"):
        Checkpoint(sharded, layout="mixtral")
    (sharded / "b.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[100:200])
    with pytest.raises(ConfigError, match="is not a valid safetensors file"):
        Checkpoint(sharded, layout="mixtral")
    (sharded / "b.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"shard b\.safetensors .* is missing"):
        Checkpoint(sharded, layout="mixtral")
    (sharded / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"index .* is not valid"):
        Checkpoint(sharded)


def test_missing_tensor_is_named_and_the_found_ones_listed(mixtral_dir, tmp_path):
    _, tensors, _ = mixtral_dir
    gone = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    save_checkpoint({k: v for k, v in tensors.items() if k != gone}, tmp_path)
    with pytest.raises(ConfigError) as err:
        Checkpoint(tmp_path, layout="mixtral")
    text = str(err.value)
    assert f"tensor {gone!r} (layout mixtral, role w3) is missing" in text
    assert "found under 'model.layers.1.block_sparse_moe.experts.2.': w1.weight, w2.weight" in text
    assert "\n" not in text


def test_wrong_shape_names_the_tensor_and_the_expected_shape(mixtral_dir, tmp_path):
    _, tensors, _ = mixtral_dir
    bad = dict(tensors)
    bad["model.layers.0.block_sparse_moe.experts.3.w2.weight"] = np.ones((D, F + 1), np.float32)
    save_checkpoint(bad, tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"experts\.3\.w2\.weight' has shape \(8, 17\); layout mixtral "
        r"expects \(d=8, f=16\)",
    ):
        Checkpoint(tmp_path, layout="mixtral")


# ---- hidden states ------------------------------------------------------------------------------


def test_hidden_states_files_shared_and_subset(mixtral_dir, tmp_path):
    path, tensors, hidden = mixtral_dir
    shared = hidden[0]  # [T, d]: the same inputs for every layer
    np.save(tmp_path / "h.npy", shared)
    np.savez(tmp_path / "h.npz", hidden_states=shared)
    from_npy = calibrate_checkpoint(path, tmp_path / "h.npy", **FAST)
    from_npz = calibrate_checkpoint(path, tmp_path / "h.npz", **FAST)
    np.testing.assert_array_equal(from_npy["tables"], from_npz["tables"])
    _assert_tables(from_npy, 1, _mixtral_outputs(tensors, 1, _f64(shared)))
    assert from_npy["hidden_states"].startswith(f"file {tmp_path / 'h.npy'} sha256 ")
    sub = calibrate_checkpoint(path, hidden, tokens=10, seed=4, **FAST)
    idx = np.sort(np.random.default_rng(4).choice(T, 10, replace=False))
    _assert_tables(sub, 0, _mixtral_outputs(tensors, 0, _f64(hidden[0][idx])))
    assert sub["n_tokens"] == 10


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, T, D + 1), np.float32), r"float\[L=2, T, d=8\] or float\[T, d=8\]"),
        (np.zeros((3, T, D), np.float32), r"float\[L=2, T, d=8\]"),
        (np.zeros((2, T, D), np.int32), "a floating array"),
        (np.full((T, D), np.nan, np.float32), "non-finite values"),
    ],
)
def test_bad_hidden_states_are_refused(mixtral_dir, bad, match):
    with pytest.raises(ConfigError, match=match):
        calibrate_checkpoint(mixtral_dir[0], bad, **FAST)


def test_bad_options_are_refused(mixtral_dir):
    path, _, hidden = mixtral_dir
    with pytest.raises(ConfigError, match=r"tokens = 25 .* \[1, 24\]"):
        calibrate_checkpoint(path, hidden, tokens=T + 1, **FAST)
    with pytest.raises(ConfigError, match="batch_tokens = 0"):
        calibrate_checkpoint(path, hidden, batch_tokens=0, **FAST)


def test_drawn_hidden_states_follow_the_input_norm(mixtral_dir):
    path, tensors, _ = mixtral_dir
    ckpt = Checkpoint(path)
    result = calibrate_checkpoint(ckpt, None, tokens=T, seed=5, **FAST)
    assert result["hidden_states"].startswith("drawn")
    weights = ckpt.read_layer(1)
    z = np.asarray(draw_hidden_states(weights, 1, T, 5))
    scale = tensors["model.layers.1.post_attention_layernorm.weight"]
    n = z / scale
    assert abs(n.mean()) < 0.3 and 0.7 < n.std() < 1.3  # N(0, I) times the norm's weight
    _assert_tables(result, 1, _mixtral_outputs(tensors, 1, _f64(z)))
    again = calibrate_checkpoint(ckpt, None, tokens=T, seed=5, **FAST)
    np.testing.assert_array_equal(again["tables"], result["tables"])


# ---- streaming, files, CLI ------------------------------------------------------------------------


def test_one_layer_is_read_at_a_time(mixtral_dir, monkeypatch):
    path, _tensors, hidden = mixtral_dir
    reads, computed = [], []
    real_open, real_read = reader.safe_open, reader.Checkpoint.read_layer

    class Spy:
        def __init__(self, *a, **k):
            self.inner = real_open(*a, **k)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_slice(self, name):
            return self.f.get_slice(name)

        def get_tensor(self, name):
            reads.append((len(computed), name))
            return self.f.get_tensor(name)

    def read_layer(self, layer):
        computed.append(layer)
        return real_read(self, layer)

    monkeypatch.setattr(reader, "safe_open", Spy)
    monkeypatch.setattr(reader.Checkpoint, "read_layer", read_layer)
    calibrate_checkpoint(path, hidden, **FAST)
    assert computed == [0, 1]
    for step, name in reads:  # every tensor read belongs to the layer being read, once
        assert name.startswith(f"model.layers.{step - 1}.")
    assert len(reads) == len({n for _, n in reads}) == 2 * (2 + 3 * N)  # router, norm, 3 per expert; no attention


def test_saved_file_round_trip_with_provenance(mixtral_dir, tmp_path):
    path, _, hidden = mixtral_dir
    result = calibrate_checkpoint(path, hidden, **FAST)
    out = save_calibration(tmp_path / "sub" / "tables.npz", result)
    assert out == tmp_path / "sub" / "tables.npz" and not list(out.parent.glob("*.tmp"))
    back = load_calibration(out)
    np.testing.assert_array_equal(back["tables"], result["tables"])
    np.testing.assert_array_equal(load_tables(out), result["tables"])
    assert back["layer_names"] == result["layer_names"] and back["layout"] == "mixtral"
    assert back["provenance"]["jax"] == jax.__version__ and back["model_config"] == {"model_type": "mixtral"}
    assert back["checkpoint_files"] == {"model.safetensors": (path / "model.safetensors").stat().st_size}
    np.savez(tmp_path / "other.npz", table=np.ones((1, 2, 3)))
    with pytest.raises(ConfigError, match="missing tables"):
        load_tables(tmp_path / "other.npz")
    np.save(tmp_path / "table.npy", result["tables"])
    with pytest.raises(ConfigError, match=r"this is an .npy array"):
        load_tables(tmp_path / "table.npy")


def test_cli_calibrate_writes_the_tables(mixtral_dir, tmp_path):
    path, _, hidden = mixtral_dir
    np.save(tmp_path / "h.npy", hidden)
    out = tmp_path / "tables.npz"
    run = CliRunner().invoke(
        calibrate_cmd,
        [
            "--checkpoint",
            str(path),
            "--hidden-states",
            str(tmp_path / "h.npy"),
            "--out",
            str(out),
            "--tokens",
            "16",
            "--seed",
            "1",
            "--quiet",
            "--no-lipschitz",
        ],
    )  # the Lipschitz path: the Switch test
    assert run.exit_code == 0, run.output
    assert "tables 2 layers x 4 experts (mixtral) from 16 tokens, supplied hidden states" in run.output
    back = load_calibration(out)
    assert back["tables"].shape == (2, N, N + 1) and np.all(np.isnan(back["beta_max"]))
    idx = np.sort(np.random.default_rng(1).choice(T, 16, replace=False))
    np.testing.assert_allclose(
        back["tables"][0], _table(_mixtral_outputs(mixtral_dir[1], 0, _f64(hidden[0][idx])))[0], rtol=2e-5, atol=1e-6
    )
    assert back["settings"]["tokens"] == 16 and back["settings"]["seed"] == 1
    bad = CliRunner().invoke(calibrate_cmd, ["--checkpoint", str(path), "--layout", "llama", "--quiet"])
    assert isinstance(bad.exception, ConfigError) and "one of gpt-oss, mixtral" in str(bad.exception)
