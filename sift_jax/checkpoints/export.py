"""Write safetensors checkpoints: any dict of tensors, and the Flax lab's model in the `sift-lab` layout.

The lab's expert (`sift_jax.moe.model.MoELayer`) is a GELU MLP with biases, fused over experts
(w1 [N, d, f], b1 [N, f], w2 [N, f, d], b2 [N, d], router [d, N]): neither SwiGLU (Mixtral, Qwen) nor
bias-free ReLU (Switch), so it has its own layout record, `sift-lab`, and is exported as it is.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from safetensors.numpy import save_file

from sift_jax.checkpoints.reader import INDEX_FILE, SINGLE_FILE
from sift_jax.errors import ConfigError

__all__ = ["LAB_MODEL_TYPE", "export_lab", "save_checkpoint"]

LAB_MODEL_TYPE = "sift_jax_lab"


def save_checkpoint(
    tensors: dict, directory, config: dict | None = None, max_shard_bytes: int | None = None
) -> pathlib.Path:
    """Write `tensors` (name -> NumPy array) as a safetensors checkpoint directory.

    One `model.safetensors`, or with `max_shard_bytes` shards `model-0000k-of-0000n.safetensors`
    (tensors in name order, a new shard when the next tensor would pass the limit) and the
    `model.safetensors.index.json` that maps every name to its shard, as Hugging Face writes them.

    Args:
        tensors: name -> contiguous NumPy array (any dtype safetensors stores, ml_dtypes.bfloat16 too).
        directory: created if missing.
        config: written as config.json when given (e.g. {"model_type": "mixtral", ...}).
        max_shard_bytes: shard size limit in bytes (None: one file).

    Returns:
        pathlib.Path of the directory.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint({"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)}, d, max_shard_bytes=16)
        ...     sorted(p.name for p in pathlib.Path(d).iterdir())
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if max_shard_bytes is None:
        save_file(arrays, str(directory / SINGLE_FILE))
        return directory
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise ConfigError("max_shard_bytes", max_shard_bytes, "a positive integer or None")
    shards, size = [[]], 0
    for name in sorted(arrays):
        if shards[-1] and size + arrays[name].nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += arrays[name].nbytes
    weight_map = {}
    for k, names in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: arrays[n] for n in names}, str(directory / file))
        weight_map.update(dict.fromkeys(names, file))
    total = sum(a.nbytes for a in arrays.values())
    (directory / INDEX_FILE).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
    )
    return directory


def lab_tensors(model) -> dict:
    """Every parameter of a lab `MoELM` as name -> float32 NumPy array, named by its path.

    E.g. `blocks.0.moe.w1` [N, d, f], `blocks.0.ln2.scale` [d], `embed.embedding` [V, d].
    """
    from flax import nnx

    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(str(p) for p in path): np.asarray(var.get_value()) for path, var in flat}


def export_lab(model, directory, max_shard_bytes: int | None = None) -> pathlib.Path:
    """Export a Flax lab model (`sift_jax.moe.model.MoELM`) as a `sift-lab` safetensors checkpoint.

    Writes every parameter (`lab_tensors`) and a config.json holding `model_type` "sift_jax_lab" and
    the model's `MoEConfig`, so `Checkpoint(directory)` finds the layout without being told.

    Args:
        model: the lab model (trained or not). directory: created if missing.
        max_shard_bytes: shard the tensors (see `save_checkpoint`); None writes one file.

    Returns:
        pathlib.Path of the directory.

    Example:
        The tiny lab model (2 layers, N = 4 experts, d = 32, f = 64), its shapes traced by `nnx.eval_shape`
        and its parameters set to zeros (a real initialisation compiles for seconds), exported in shards
        of at most 40 kB and read back:

        >>> import tempfile, jax
        >>> from flax import nnx
        >>> from sift_jax.checkpoints import Checkpoint
        >>> from sift_jax.moe.model import init_model, tiny_config
        >>> model = nnx.eval_shape(lambda: init_model(tiny_config()))
        >>> nnx.update(model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nnx.state(model, nnx.Param)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     ckpt = Checkpoint(export_lab(model, d, max_shard_bytes=40_000))
        ...     n_files, w1 = len(ckpt.files()), ckpt.read_layer(1).expert["w1"]
        >>> ckpt.layout.name, ckpt.layers, ckpt.config["n_experts"], n_files, w1.shape, w1.dtype
        ('sift-lab', ('blocks.0', 'blocks.1'), 4, 8, (4, 32, 64), dtype('float32'))
    """
    config = {"model_type": LAB_MODEL_TYPE, "architectures": ["MoELM"], **model.cfg.to_dict()}
    return save_checkpoint(lab_tensors(model), directory, config=config, max_shard_bytes=max_shard_bytes)
