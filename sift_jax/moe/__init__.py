"""The Flax NNX MoE lab: a small byte-level MoE language model trained on the Python standard library,
its calibration tables and the tightness of the paper's bounds on it.

Modules: `data` (corpus), `model` (MoELM), `train` (AdamW + orbax checkpoints), `calibrate`
(Fbar tables, B_max / beta estimates), `tightness` (Prop. 1 / Thm. 1 checks, accuracy vs eta) and
`cli` (the `sift-jax moe` commands). Import the submodules directly; this package imports nothing heavy.
"""
