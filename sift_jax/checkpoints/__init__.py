"""Real MoE checkpoints: safetensors readers with a layout registry, and calibration from weights.

>>> import sift_jax.checkpoints as ck
>>> ck.layouts.names()
('gpt-oss', 'mixtral', 'qwen-moe', 'sift-lab', 'switch')

- `Checkpoint(path, layout=None)`: lazy reader, one MoE layer at a time (`reader`).
- `Layout`, `Tensor`, `register`, `get`, `names`: the layout registry (`layouts`).
- `calibrate_checkpoint`, `draw_hidden_states` (`calibrate`).
- `save_calibration`, `load_calibration`, `load_tables`: the output .npz (`tables`).
- `export_lab`, `save_checkpoint`: write checkpoints (`export`).
- `cli.calibrate`: the `sift-jax calibrate` command.
"""

from sift_jax.checkpoints import layouts
from sift_jax.checkpoints.calibrate import calibrate_checkpoint, draw_hidden_states
from sift_jax.checkpoints.export import export_lab, save_checkpoint
from sift_jax.checkpoints.layouts import Layout, Tensor, get, names, register
from sift_jax.checkpoints.reader import Checkpoint, LayerWeights
from sift_jax.checkpoints.tables import load_calibration, load_tables, save_calibration

__all__ = [
    "Checkpoint",
    "LayerWeights",
    "Layout",
    "Tensor",
    "calibrate_checkpoint",
    "draw_hidden_states",
    "export_lab",
    "get",
    "layouts",
    "load_calibration",
    "load_tables",
    "names",
    "register",
    "save_calibration",
    "save_checkpoint",
]
