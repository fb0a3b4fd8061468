"""`sift-jax calibrate`: mismatch tables and B_max / Lipschitz estimates from a safetensors checkpoint.

The lead registers it in the main CLI with ``cli.add_command(calibrate)``; the main entry point
turns a `ConfigError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import click
import numpy as np

from sift_jax.checkpoints import layouts
from sift_jax.checkpoints.calibrate import DEFAULT_DRAWN_TOKENS, calibrate_checkpoint
from sift_jax.checkpoints.tables import save_calibration

__all__ = ["calibrate"]


@click.command("calibrate")
@click.option("--checkpoint", required=True, help="safetensors checkpoint directory (or one .safetensors file)")
@click.option(
    "--layout",
    default=None,
    help=f"checkpoint layout: {', '.join(layouts.names())} (default: from config.json model_type)",
)
@click.option(
    "--hidden-states",
    "hidden_states",
    default=None,
    help="each MoE layer's inputs, .npy/.npz float[L, T, d] or float[T, d] (default: drawn, an approximation)",
)
@click.option("--out", default="tables.npz", show_default=True, help="output .npz")
@click.option(
    "--tokens",
    default=None,
    type=int,
    help=f"tokens used: a seeded subset of the hidden states (default all), or how many to draw "
    f"(default {DEFAULT_DRAWN_TOKENS})",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-lipschitz", "no_lipschitz", is_flag=True, help="skip the Lipschitz estimates (NaN)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def calibrate(checkpoint, layout, hidden_states, out, tokens, seed, no_lipschitz, quiet):
    """Calibration tables Fbar [L, N, N+1] (column N = skip), B_max and Lipschitz estimates per MoE layer.

    Reads one layer at a time. Prints one summary line; the .npz holds the arrays and provenance.
    """
    result = calibrate_checkpoint(
        checkpoint,
        hidden_states,
        layout=layout,
        tokens=tokens,
        seed=seed,
        lipschitz=not no_lipschitz,
        progress=not quiet and sys.stderr.isatty(),
    )
    path = save_calibration(out, result)
    tables = result["tables"]
    n = tables.shape[1]
    beta = "not estimated" if no_lipschitz else f"{float(np.max(result['beta_max'])):.4g}"
    click.echo(
        f"{path}: tables {tables.shape[0]} layers x {n} experts ({result['layout']}) from "
        f"{result['n_tokens']} tokens, {'supplied' if hidden_states else 'drawn'} hidden states; "
        f"mean skip cost {float(np.mean(tables[:, :, n])):.4g}, max B_max {float(np.max(result['b_max'])):.4g}, "
        f"max beta {beta}"
    )
