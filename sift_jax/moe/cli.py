"""`sift-jax moe train | calibrate | tightness`: the Flax MoE lab on the command line.

Outputs:
    train      CKPT/ (orbax params/, config.json), CKPT/train_summary.json, CKPT/train_curve.png
    calibrate  CKPT/calibration.npz, CKPT/calibration.json, CKPT/calibration_tables.png
    tightness  OUT/tightness.json, OUT/accuracy_vs_eta.png, OUT/energy_vs_eta.png,
               OUT/prop1_ratio.png, OUT/thm1_ratio.png   (OUT defaults to CKPT/tightness)

Bad input raises `ConfigError`; the main `sift-jax` entry point turns it into one stderr line, exit 2.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
import warnings

import click
import numpy as np

from sift_jax.errors import ConfigError

__all__ = ["main", "moe", "write_json"]


def _echo(quiet: bool, text: str):
    """Progress line on stderr: only on a terminal and without --quiet."""
    if not quiet and sys.stderr.isatty():
        click.echo(text, err=True)


def write_json(path: pathlib.Path, doc: dict) -> None:
    """Write `doc` as indented JSON, NumPy scalars and arrays as plain numbers and lists.

    Args:
        path: the file to write. doc: a dict of JSON-ready values, NumPy scalars or arrays.

    Returns:
        None.

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_json(pathlib.Path(d) / "x.json", {"a": np.float32(1.5), "b": np.arange(2)})
        ...     (pathlib.Path(d) / "x.json").read_text().split()
        ['{', '"a":', '1.5,', '"b":', '[', '0,', '1', ']', '}']
    """

    def default(o):
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o).__name__)

    path.write_text(json.dumps(doc, indent=2, default=default))


def _subplots(*grid, **kw):
    """(Figure, axes) without pyplot, so the caller's backend (e.g. a notebook's inline one) is left alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kw.pop("figsize", None))
    return fig, fig.subplots(*grid, **kw)


# ------------------------------------------------------------------------------------------- figures


def plot_train_curve(history: dict, summary: dict, path) -> None:
    """Training cross-entropy per step and the validation points."""
    fig, ax = _subplots(figsize=(5, 3.2))
    ce = np.asarray(history["ce"])
    ax.plot(np.arange(1, ce.size + 1), ce, lw=0.8, label="train CE")
    ev = summary.get("evals", [])
    ax.plot([e["step"] for e in ev], [e["loss"] for e in ev], "o-", label="val CE")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / byte")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_tables(table: np.ndarray, path) -> None:
    """Heatmaps of the calibration tables Fbar[l] (column N = skip)."""
    n_l = table.shape[0]
    fig, axes = _subplots(1, n_l, figsize=(2.6 * n_l, 2.6), squeeze=False)
    for l, ax in enumerate(axes[0]):
        im = ax.imshow(table[l], cmap="viridis")
        ax.set_title(f"layer {l + 1}")
        ax.set_xlabel("substitute j (last = skip)")
        ax.set_ylabel("expert i")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_tightness(res: dict, out: pathlib.Path) -> list[str]:
    """The lab's four figures; returns their file names."""
    etas = np.asarray(res["etas"])
    names = []
    fig, axes = _subplots(1, 2, figsize=(9, 3.4))
    for ax, metric, label in ((axes[0], "accuracy", "next-byte accuracy"), (axes[1], "loss", "test loss (nats/byte)")):
        d = res[metric]
        per = np.asarray(d["siftmoe_per_draw"])
        ax.plot(etas, d["siftmoe"], "o-", label="SiftMoE")
        if per.shape[1] > 1:
            ax.fill_between(etas, per.min(1), per.max(1), alpha=0.2)
        ax.axhline(d["topk-ideal"], color="k", ls="--", label="Top-K ideal")
        ax.axhline(d["topk"], color="r", ls=":", label="Top-K practical")
        ax.set_xlabel("max tolerable error per layer eta")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_eta.png", dpi=120)
    names.append("accuracy_vs_eta.png")

    fig, ax = _subplots(figsize=(5, 3.4))
    d = res["energy_per_token_j"]
    ax.plot(etas, d["siftmoe"], "o-", label="SiftMoE")
    ax.axhline(d["topk"], color="r", ls=":", label="Top-K practical")
    ax.axhline(d["topk-ideal"], color="k", ls="--", label="Top-K ideal (finite part)")
    ax.set_xlabel("max tolerable error per layer eta")
    ax.set_ylabel("energy per token, all layers (J)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "energy_vs_eta.png", dpi=120)
    names.append("energy_vs_eta.png")

    r = res["ratios"]
    fig, axes = _subplots(1, 2, figsize=(9, 3.4))
    if r["prop1_exact"].size:
        axes[0].hist(r["prop1_exact"], bins=51, range=(0, 1.02), alpha=0.6, label="exact F (must be <= 1)")
        hi = max(1.0, float(np.quantile(r["prop1_table"], 0.99)))
        axes[0].hist(np.minimum(r["prop1_table"], hi), bins=50, range=(0, hi), alpha=0.6, label="table Fbar")
        axes[0].axvline(1.0, color="k", lw=0.8)
        step = max(1, r["delta"].size // 20_000)  # a deterministic subsample keeps the scatter light
        axes[1].loglog(r["bound_f"][::step], r["delta"][::step], ".", ms=1, alpha=0.3, label="vs exact-F bound")
        axes[1].loglog(r["bound_t"][::step], r["delta"][::step], ".", ms=1, alpha=0.3, label="vs table bound")
        lo = max(1e-6, float(min(r["bound_f"].min(), r["delta"][r["delta"] > 0].min(initial=1.0))))
        top = float(max(r["bound_f"].max(), r["bound_t"].max()))
        axes[1].plot([lo, top], [lo, top], "k-", lw=0.8)
    axes[0].set_xlabel("actual delta / Prop. 1 bound")
    axes[0].set_ylabel("layer-tokens")
    axes[0].legend()
    axes[1].set_xlabel("Prop. 1 bound")
    axes[1].set_ylabel("actual layer deviation delta")
    axes[1].legend(markerscale=8)
    fig.tight_layout()
    fig.savefig(out / "prop1_ratio.png", dpi=120)
    names.append("prop1_ratio.png")

    fig, ax = _subplots(figsize=(5, 3.4))
    ax.hist(r["thm1"], bins=50, alpha=0.8)
    ax.set_xlabel("final MoE-layer deviation e^(L) / Thm. 1 bound")
    ax.set_ylabel("tokens x runs")
    fig.tight_layout()
    fig.savefig(out / "thm1_ratio.png", dpi=120)
    names.append("thm1_ratio.png")
    return names


# ------------------------------------------------------------------------------------------ pipeline


def do_train(out, cfg, tc, quiet: bool = True, corpus=None) -> dict:
    """Train, save the checkpoint to `out` and write the summary and curve. Returns the summary.

    Calibration files left in `out` by an earlier model are removed (with a `StoreWarning`): they describe
    that model, and `--table OUT` would otherwise use them silently.
    """
    from sift_jax.moe import calibrate as cal_lib
    from sift_jax.moe import data as data_lib
    from sift_jax.moe import train as train_lib
    from sift_jax.store import StoreWarning, check_dir

    out = check_dir(out)
    corpus = corpus or data_lib.load_corpus(max_bytes_per_split=tc.max_bytes_per_split)
    cpu0 = time.process_time()

    def progress(step, m):
        _echo(
            quiet,
            f"step {step}/{tc.steps}  train CE {m['train_loss']:.3f}  val CE {m['loss']:.3f}  "
            f"val acc {m['accuracy']:.3f}  {m['time_s']:.0f} s",
        )

    res = train_lib.train(cfg, tc, corpus=corpus, progress=progress)
    summary = dict(res.summary, cpu_time_s=time.process_time() - cpu0)
    test = train_lib.evaluate(res.model, corpus.test, n_windows=min(256, (corpus.test.size - 1) // cfg.context))
    summary["test_loss"], summary["test_accuracy"] = test["loss"], test["accuracy"]
    train_lib.save_checkpoint(out, res.model, {"train": tc.to_dict(), "metrics": summary, "corpus": corpus.describe()})
    stale = [
        p for p in (cal_lib.CALIBRATION_NPZ, cal_lib.CALIBRATION_JSON, "calibration_tables.png") if (out / p).exists()
    ]
    for name in stale:
        (out / name).unlink()
    if stale:
        warnings.warn(
            f"{out}: removed {', '.join(stale)} of the previous model; run `sift-jax moe calibrate {out}`",
            StoreWarning,
            stacklevel=2,
        )
    write_json(out / "train_summary.json", summary)
    plot_train_curve(res.history, summary, out / "train_curve.png")
    return summary


def do_calibrate(ckpt, n_windows: int = 64, seed: int = 0, quiet: bool = True, corpus=None, **kw) -> dict:
    """Calibrate the checkpoint at `ckpt` and save the tables next to it. Returns the JSON summary."""
    from sift_jax.moe import calibrate as cal_lib
    from sift_jax.moe import data as data_lib
    from sift_jax.moe import train as train_lib

    ckpt = pathlib.Path(ckpt)
    model, meta = train_lib.load_checkpoint(ckpt)
    if corpus is None:
        corpus = data_lib.load_corpus(max_bytes_per_split=meta.get("train", {}).get("max_bytes_per_split"))
    _echo(quiet, f"calibrating on {n_windows} windows of the train split ...")
    cal = cal_lib.calibrate(model, corpus.train, n_windows=n_windows, seed=seed, **kw)
    cal_lib.save_calibration(ckpt, cal)
    plot_tables(cal["table"], ckpt / "calibration_tables.png")
    return cal_lib.summarize(cal)


def do_tightness(
    ckpt,
    out=None,
    preset: str = "mixtral-8x7b",
    overrides: dict | None = None,
    tc=None,
    quiet: bool = True,
    corpus=None,
) -> dict:
    """Run the tightness lab on a calibrated checkpoint; write JSON and figures to `out`."""
    from sift_jax.moe import calibrate as cal_lib
    from sift_jax.moe import data as data_lib
    from sift_jax.moe import tightness as tight_lib
    from sift_jax.moe import train as train_lib

    ckpt = pathlib.Path(ckpt)
    out = pathlib.Path(out) if out is not None else ckpt / "tightness"
    out.mkdir(parents=True, exist_ok=True)
    model, meta = train_lib.load_checkpoint(ckpt)
    cal = cal_lib.load_calibration(ckpt)
    if corpus is None:
        corpus = data_lib.load_corpus(max_bytes_per_split=meta.get("train", {}).get("max_bytes_per_split"))
    sc = tight_lib.lab_scenario(model.cfg, preset, **(overrides or {}))
    tc = tc or tight_lib.TightnessConfig()
    t0 = time.perf_counter()
    res = tight_lib.run(
        model,
        cal["table"],
        cal["b_max"],
        cal["beta_max"],
        corpus.test,
        sc,
        tc,
        progress=lambda d, n: _echo(quiet, f"tightness: {d}/{n} windows"),
    )
    res["time_s"] = time.perf_counter() - t0
    res["preset"] = preset
    res["overrides"] = {k: (v if np.isscalar(v) else np.asarray(v).tolist()) for k, v in (overrides or {}).items()}
    res["figures"] = plot_tightness(res, out)
    doc = {k: v for k, v in res.items() if k != "ratios"}
    write_json(out / "tightness.json", doc)
    return doc


# ----------------------------------------------------------------------------------------------- CLI


def _parse_sets(items) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set", item, "FIELD=VALUE (a Scenario field)")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ConfigError(k.strip(), v, "a number") from None
    return out


def _floats(text: str | None, name: str):
    if text is None:
        return None
    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(name, text, "a comma-separated list of numbers") from None
    if not vals:
        raise ConfigError(name, text, "a non-empty comma-separated list of numbers")
    return vals


@click.group("moe", context_settings={"help_option_names": ["-h", "--help"]})
def moe():
    """The Flax MoE lab: train a byte-level MoE LM, calibrate Fbar tables, measure bound tightness."""


@moe.command("train")
@click.option("--out", default="results/moe", show_default=True, help="checkpoint directory")
@click.option("--tiny", is_flag=True, help="tiny model and schedule (tests / quick runs)")
@click.option("--steps", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--d-model", type=int, default=None)
@click.option("--d-ff", type=int, default=None)
@click.option("--n-layers", type=int, default=None)
@click.option("--n-experts", type=int, default=None)
@click.option("--top-k", type=int, default=None)
@click.option("--context", type=int, default=None)
@click.option("--gate-norm", default=None, help="topk | softmax | auto")
@click.option("--max-bytes", type=int, default=None, help="truncate each corpus split")
@click.option("--quiet", is_flag=True)
def train_cmd(
    out,
    tiny,
    steps,
    batch_size,
    lr,
    seed,
    d_model,
    d_ff,
    n_layers,
    n_experts,
    top_k,
    context,
    gate_norm,
    max_bytes,
    quiet,
):
    """Train the MoE language model on the stdlib byte corpus and save an orbax checkpoint."""
    from sift_jax.moe.model import MoEConfig, tiny_config
    from sift_jax.moe.train import TrainConfig, tiny_train_config
    from sift_jax.store import check_dir

    check_dir(out)  # before the work: a file or read-only --out fails now, not after training
    m_over = {
        k: v
        for k, v in dict(
            d_model=d_model,
            d_ff=d_ff,
            n_layers=n_layers,
            n_experts=n_experts,
            top_k=top_k,
            context=context,
            gate_norm=gate_norm,
        ).items()
        if v is not None
    }
    if "d_model" in m_over and not tiny:
        m_over.setdefault("n_heads", max(1, m_over["d_model"] // 32))
    t_over = {
        k: v
        for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, max_bytes_per_split=max_bytes).items()
        if v is not None
    }
    cfg = tiny_config(**m_over) if tiny else MoEConfig(**m_over)
    tc = tiny_train_config(seed=seed, **t_over) if tiny else TrainConfig(seed=seed, **t_over)
    summary = do_train(out, cfg, tc, quiet=quiet)
    click.echo(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "steps",
                    "train_time_s",
                    "cpu_time_s",
                    "val_loss",
                    "val_accuracy",
                    "test_loss",
                    "test_accuracy",
                )
            }
        )
    )


@moe.command("calibrate")
@click.argument("checkpoint")
@click.option("--windows", type=int, default=64, show_default=True, help="calibration windows (train split)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--lipschitz-points", type=int, default=256, show_default=True, help="finite-difference points")
@click.option("--power-points", type=int, default=16, show_default=True, help="power-iteration points")
@click.option("--power-iters", type=int, default=50, show_default=True)
@click.option("--quiet", is_flag=True)
def calibrate_cmd(checkpoint, windows, seed, lipschitz_points, power_points, power_iters, quiet):
    """Write Fbar tables, B_max and beta estimates and gate statistics next to CHECKPOINT."""
    for name, v in (
        ("windows", windows),
        ("lipschitz_points", lipschitz_points),
        ("power_points", power_points),
        ("power_iters", power_iters),
    ):
        if v < 1:
            raise ConfigError(name, v, "a positive integer")
    summary = do_calibrate(
        checkpoint,
        n_windows=windows,
        seed=seed,
        quiet=quiet,
        n_lipschitz_points=lipschitz_points,
        n_power_points=power_points,
        power_iters=power_iters,
    )
    click.echo(
        json.dumps(
            {k: summary[k] for k in ("n_tokens", "b_max_per_layer", "beta_max_per_layer", "mean_skip_cost_per_layer")}
        )
    )


@moe.command("tightness")
@click.argument("checkpoint")
@click.option("--out", default=None, help="output directory (default CHECKPOINT/tightness)")
@click.option("--preset", default="mixtral-8x7b", show_default=True, help="radio/compute numbers of the scenario")
@click.option("--set", "sets", multiple=True, help="Scenario override FIELD=VALUE (repeatable)")
@click.option("--windows", type=int, default=32, show_default=True, help="test windows")
@click.option("--draws", type=int, default=4, show_default=True, help="channel draws per token")
@click.option("--etas", default=None, help="absolute eta grid, comma separated")
@click.option("--eta-fractions", default=None, help="eta grid as fractions of the mean skip cost")
@click.option("--fallback", default="topk", show_default=True, help="SiftMoE infeasible: topk | skip")
@click.option("--grid-batch", type=int, default=4, show_default=True, help="runs vmapped together")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True)
def tightness_cmd(
    checkpoint, out, preset, sets, windows, draws, etas, eta_fractions, fallback, grid_batch, seed, quiet
):
    """Bound tightness (Proposition 1, Theorem 1) and accuracy vs eta on the test split (figures + JSON)."""
    from sift_jax.moe.tightness import DEFAULT_ETA_FRACTIONS, TightnessConfig

    tc = TightnessConfig(
        n_windows=windows,
        n_draws=draws,
        etas=_floats(etas, "etas"),
        eta_fractions=_floats(eta_fractions, "eta_fractions") or DEFAULT_ETA_FRACTIONS,
        infeasible_fallback=fallback,
        grid_batch=grid_batch,
        seed=seed,
    )
    doc = do_tightness(checkpoint, out, preset, _parse_sets(sets), tc, quiet=quiet)
    click.echo(
        json.dumps(
            {
                "etas": doc["etas"],
                "accuracy": {k: doc["accuracy"][k] for k in ("siftmoe", "topk-ideal", "topk")},
                "prop1_exact_max_ratio": doc["prop1_exact"]["max_ratio"],
                "prop1_table": doc["prop1_table"]["all"],
                "thm1": doc["thm1"]["measured_delta"],
            }
        )
    )


def main(argv=None):  # pragma: no cover - convenience for `python -m sift_jax.moe.cli`
    """Run the `moe` command group (as `python -m sift_jax.moe.cli`); ``sift-jax moe`` runs the same group.

    Args:
        argv: command-line arguments (list of str); None = ``sys.argv[1:]``.

    Raises:
        SystemExit: code 2 after bad input (`ConfigError`, printed as one ``error: ...`` line on stderr).

    Example:
        >>> main(["--help"])
        Usage: ... [OPTIONS] COMMAND [ARGS]...
        ...
        Commands:
          calibrate  Write Fbar tables...
          tightness  Bound tightness...
          train      Train the MoE...
        >>> main(["calibrate", "no/such/checkpoint"])                  # not a checkpoint: exit code 2
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    try:
        moe.main(args=argv, standalone_mode=False)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
