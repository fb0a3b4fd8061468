"""The `sift-jax` command line.

Every `ConfigError` becomes one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import warnings

import click
import numpy as np

from sift_jax import policies, presets
from sift_jax.errors import ConfigError
from sift_jax.policies import fastfading
from sift_jax.scenario import DYNAMIC_FIELDS, FIELDS, INTEGER_FIELDS, PER_HELPER_FIELDS, STATIC_FIELDS, Scenario

__all__ = ["cli", "load_plugins", "main", "parse_shard"]

DEFAULT_PRESET = "mixtral-8x7b"


def _parse_field(name: str, text: str):
    """CLI text -> field value: int for integer statics, str for `fading`, float (or a comma list for
    per-helper fields) otherwise; bad text raises ConfigError naming the field."""
    if name == "fading":
        return text
    try:
        if name in INTEGER_FIELDS:
            return int(text)
        if name in PER_HELPER_FIELDS and "," in text:
            return tuple(float(t) for t in text.split(","))
        return float(text)
    except ValueError:
        kind = "an integer" if name in INTEGER_FIELDS else "a number"
        raise ConfigError(name, text, kind) from None


def scenario_options(func):
    """Decorate a command with one `--field-name VALUE` option per Scenario field."""
    from sift_jax import fading

    default = presets.get(DEFAULT_PRESET)
    for name in reversed(STATIC_FIELDS + DYNAMIC_FIELDS):
        info = FIELDS[name]
        unit = f" [{info.unit}]" if info.unit != "-" else ""
        allowed = ("one of " + ", ".join(fading.names())) if name == "fading" else info.describe()
        value = np.asarray(getattr(default, name)).tolist()
        help_text = (
            f"{info.meaning}{unit}; {allowed}; {DEFAULT_PRESET}: {value:g}"
            if isinstance(value, float)
            else f"{info.meaning}{unit}; {allowed}; {DEFAULT_PRESET}: {value}"
        )
        if name in PER_HELPER_FIELDS:
            help_text += " (scalar or comma list, one per helper)"
        flag = "--fading-family" if name == "fading" else "--" + name.replace("_", "-")  # --fading = slow|fast
        func = click.option(flag, name, type=str, default=None, help=help_text)(func)
    return func


def build_scenario(preset: str, overrides: dict) -> Scenario:
    """A preset with the given CLI overrides applied and validated."""
    from sift_jax import presets

    sc = presets.get(preset)
    fields = {k: _parse_field(k, v) for k, v in overrides.items() if v is not None}
    fields = {k: (np.asarray(v) if isinstance(v, tuple) else v) for k, v in fields.items()}
    return sc.replace(**fields) if fields else sc


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isinf(x) or x == 0):
        return f"{x:g}"
    return f"{x:.4g}"


def metrics_table(metrics: dict) -> str:
    """Plain-text table of {name: Stat}."""
    rows = [("metric", "mean", "95% CI", "p50", "p90", "p99", "n", "invalid", "reliable")]
    for name, s in metrics.items():
        ci = f"[{_fmt(s.ci95[0])}, {_fmt(s.ci95[1])}]" if s.ci95 else "-"
        rows.append(
            (
                name,
                _fmt(s.mean),
                ci,
                _fmt(s.p50),
                _fmt(s.p90),
                _fmt(s.p99),
                str(s.n),
                str(s.n_invalid),
                "yes" if s.reliable else "NO",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


class _Progress:
    """tqdm bar on a terminal, silent otherwise or with --quiet."""

    def __init__(self, total: int, quiet: bool, desc: str):
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="sample", leave=False)
        self.done = 0

    def __call__(self, done: int):
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.close()


def load_plugins(modules) -> list[str]:
    """Import user modules that register policies, fading families or metrics (`--plugin`, `SIFT_JAX_PLUGINS`).

    Args:
        modules: module names (importable from PYTHONPATH); also read from the comma-separated environment
            variable SIFT_JAX_PLUGINS.

    Returns:
        The module names imported, in order.

    Raises:
        ConfigError: a module that cannot be imported.

    Example:
        >>> load_plugins(["json"])
        ['json']
        >>> load_plugins(["no_such_plugin_module"])
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: plugin = 'no_such_plugin_module' is invalid: allowed is an importable module ...
    """
    import importlib
    import os

    names = [m for m in os.environ.get("SIFT_JAX_PLUGINS", "").split(",") if m.strip()] + list(modules)
    for name in names:
        try:
            importlib.import_module(name.strip())
        except ImportError as err:
            raise ConfigError("plugin", name, f"an importable module that registers records ({err})") from None
    return [n.strip() for n in names]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sift-jax")
    except PackageNotFoundError:
        return "unknown (not installed)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="sift-jax")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    help="module to import first: registers policies, fading families or metrics (repeatable; also "
    "SIFT_JAX_PLUGINS=a,b)",
)
def cli(plugins):
    """SiftMoE engine: energy-efficient expert selection for wireless distributed MoE inference."""
    load_plugins(plugins)


@cli.command()
@click.option(
    "--preset",
    default=DEFAULT_PRESET,
    show_default=True,
    help=" | ".join(presets.names()) + " (plain names: fitted to the paper; *-4090: data sheets)",
)
@click.option(
    "--policy",
    default="siftmoe",
    show_default=True,
    help=" | ".join(f"{n} ({policies.record(n).description})" for n in policies.names()),
)
@click.option("--samples", default=10_000, show_default=True, type=int, help="Monte Carlo samples (tasks)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--chunk-size", default=None, type=int, help="samples per compiled call (memory only)")
@click.option(
    "--regime",
    "--fading",
    "regime",
    default="slow",
    show_default=True,
    help="fading regime: slow (one gain per layer) | fast (per-slot gains); --fading is its former name, "
    "the fading family is --fading-family",
)
@click.option(
    "--bits",
    default=None,
    help="fast-fading bit loading: "
    + " | ".join([*fastfading.BITS, *(f"{a} (= {b})" for a, b in fastfading.ALIASES.items())]),
)
@click.option(
    "--table",
    "table_path",
    default=None,
    help="mismatch tables [L,N,N+1]: .npz of `sift-jax calibrate`, .npy, or a MoE-lab calibration dir",
)
@click.option(
    "--router",
    "router_path",
    default=None,
    help="router log: .npy of logits [L,T,N] (or [T,N]); each task takes M consecutive logged tokens",
)
@click.option("--float64", is_flag=True, help="run in float64 (jax_enable_x64)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--quiet", is_flag=True, help="no progress bar")
@scenario_options
def simulate(
    preset, policy, samples, seed, chunk_size, regime, bits, table_path, router_path, float64, as_json, quiet, **fields
):
    """Monte Carlo metrics of one policy on a preset (any Scenario field can be overridden)."""
    import jax

    if float64:
        jax.config.update("jax_enable_x64", True)
    from sift_jax.simulate import simulate as run_simulation

    sc = build_scenario(preset, fields)
    progress = _Progress(samples, quiet or as_json, f"{preset}/{policy}")
    try:
        res = run_simulation(
            sc,
            policy=policy,
            samples=samples,
            seed=seed,
            chunk_size=chunk_size,
            table=table_path,
            regime=regime,
            bits=bits,
            progress=progress,
            router=router_path,
        )
    except ConfigError as err:
        if policy == "oracle" and err.field == "method":  # its advice names Python options the CLI lacks
            raise ConfigError(
                "policy",
                policy,
                f"an instance small enough for the exact oracle "
                f"({err.allowed.split('; use ')[0]}): lower --n-tokens, --n-nodes or --top-k, "
                f"or choose another --policy",
            ) from None
        raise
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(res.to_dict(preset=preset)))
    else:
        click.echo(f"{preset} / {policy}: {samples} samples, seed {seed}, {regime} fading")
        click.echo(metrics_table(res.metrics))


@cli.command()
@click.argument("spec_path")
@click.option("--out", default="results", show_default=True, help="output directory")
@click.option("--resume", is_flag=True, help="finish an interrupted run from its saved parts")
@click.option("--overwrite", is_flag=True, help="replace earlier results of this spec in OUT")
@click.option("--samples", default=None, type=int, help="override the spec's sample count")
@click.option("--quick", is_flag=True, help="quick sizes: the spec's quick_samples and [quick_fixed]")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option(
    "--shard",
    default=None,
    help="I/N: run the I-th of N deterministic shares of the batches into a "
    "shared OUT (job arrays); the shard that completes the set writes NAME.nc",
)
@click.option("--merge", is_flag=True, help="compute nothing: assemble NAME.nc from the shards' parts in OUT")
@click.option(
    "--distributed",
    is_flag=True,
    help="one of several processes of a multi-host JAX job (SIFT_JAX_COORDINATOR, "
    "SIFT_JAX_NUM_PROCESSES, SIFT_JAX_PROCESS_ID, or what jax.distributed detects: SLURM, MPI, TPU); "
    "process 0 writes",
)
def sweep(spec_path, out, resume, overwrite, samples, quick, quiet, shard, merge, distributed):
    """Run a TOML sweep spec; writes OUT/NAME.nc (xarray) and OUT/NAME.png."""
    from sift_jax import distributed as multi
    from sift_jax import plots, store
    from sift_jax import sweep as sweeps

    if distributed:
        multi.initialize_from_env()  # before anything uses a JAX device
    writer = multi.is_writer()
    spec = sweeps.load_spec(spec_path)
    out = store.check_dir(out)
    ds = _run_sweep(spec, out, resume, samples, quick, quiet or not writer, overwrite, parse_shard(shard), merge)
    if not writer:
        return
    if ds is None:
        click.echo(
            f"shard {shard}: parts written to {out / spec.name}.parts; NAME.nc comes when every shard is done "
            f"(the last one writes it, or run `sift-jax sweep {spec_path} --out {out} --merge`)"
        )
        return
    png = plots.plot_dataset(ds, out / f"{spec.name}.png")
    click.echo(f"wrote {out / spec.name}.nc and {png}")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`--shard I/N` as (I, N); None stays None.

    Args:
        text: "I/N" with integers 0 <= I < N, or None.

    Returns:
        (I, N) or None.

    Raises:
        ConfigError: anything else.

    Example:
        >>> parse_shard("2/8"), parse_shard(None)
        ((2, 8), None)
        >>> parse_shard("8/8")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: shard = '8/8' is invalid: allowed is I/N with integers 0 <= I < N <= 100000
        (e.g. 0/4)
    """
    if text is None:
        return None
    i, _, n = str(text).partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        i = n = -1
    if not 0 <= i < n <= 100_000:
        raise ConfigError("shard", text, "I/N with integers 0 <= I < N <= 100000 (e.g. 0/4)")
    return i, n


def _run_sweep(spec, out, resume, samples, quick, quiet, overwrite=False, shard=None, merge=False):
    from sift_jax import sweep as sweeps

    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc=spec.name, unit="sample", leave=False)

    def progress(done, total):
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        return sweeps.run(
            spec,
            out=out,
            resume=resume,
            samples=samples,
            quick=quick,
            progress=progress,
            overwrite=overwrite,
            shard=shard,
            merge=merge,
        )
    finally:
        if bar is not None:
            bar.close()


@cli.command()
@click.argument("nc_path")
@click.option("--metric", default="energy_per_token_j", show_default=True)
@click.option(
    "--out", "png", default=None, help="PNG path, or a directory for NAME_METRIC.png (default: next to the .nc)"
)
def plot(nc_path, metric, png):
    """Draw a PNG of a sweep result (.nc) in the paper's style."""
    import xarray as xr

    from sift_jax import plots
    from sift_jax.simulate import PAIRED_METRIC

    try:
        ds = xr.load_dataset(nc_path)
    except (OSError, ValueError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError("file", nc_path, f"a sweep result .nc file ({why})") from None
    metrics = [str(v)[: -len("_mean")] for v in ds.data_vars if str(v).endswith("_mean")]
    metrics = [m for m in metrics if m != PAIRED_METRIC and all(f"{m}_{s}" in ds for s in ("ci_lo", "ci_hi"))]
    if "curve" not in ds.dims or len(ds.dims) < 2 or not metrics:
        raise ConfigError(
            "file",
            nc_path,
            "a sweep result .nc file (written by `sift-jax sweep`: a curve "
            "dimension, a swept axis and <metric>_mean/_ci_lo/_ci_hi variables)",
        )
    if metric not in metrics:
        raise ConfigError("metric", metric, f"one of {', '.join(metrics)}")
    name = pathlib.Path(nc_path).name.removesuffix(".nc") + f"_{metric}.png"
    if png is None:
        png = pathlib.Path(nc_path).with_name(name)
    elif pathlib.Path(png).is_dir():
        png = pathlib.Path(png) / name
    path = plots.plot_dataset(ds, png, metric)
    click.echo(f"wrote {path}")


@cli.command()
@click.option("--quick", is_flag=True, help="tiny sample counts and sizes: checks the pipeline in minutes")
@click.option("--out", default="results", show_default=True)
@click.option("--specs", "spec_dir", default=None, help="directory of specs (default: the repo's sweeps/)")
@click.option("--only", default=None, help="comma list of spec names to run")
@click.option("--samples", default=None, type=int, help="samples per point for every spec (default: each spec's)")
@click.option("--overwrite", is_flag=True, help="replace earlier results of these specs in OUT")
@click.option("--quiet", is_flag=True)
def reproduce(quick, out, spec_dir, only, samples, overwrite, quiet):
    """Run every paper spec: netCDF files, PNGs and REPORT.md with the paper's claims checked."""
    from sift_jax import reproduce as repro
    from sift_jax import store

    store.check_dir(out)
    path = repro.reproduce(
        out=out,
        quick=quick,
        spec_dir=spec_dir,
        only=only.split(",") if only else None,
        echo=None if quiet else click.echo,
        samples=samples,
        overwrite=overwrite,
    )
    click.echo(f"wrote {path}")


@cli.command("fit-paper")
@click.option("--model", default="all", show_default=True, help="switch-base-8 | mixtral-8x7b | all")
@click.option("--samples", default=3000, show_default=True, type=int, help="Monte Carlo samples per anchor point")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per model")
@click.option("--quiet", is_flag=True, help="no per-combination lines")
@click.option(
    "--table",
    is_flag=True,
    help="fit the mismatch-table scale (output_norm) to SiftMoE's fall across "
    "the eta panel (Fig. 3(b), 4(b)) instead, on the preset's radio",
)
def fit_paper(model, samples, seed, as_json, quiet, table):
    """Fit the constants the paper omits (uplink loss, M, user load power) to its Top-K curves."""
    from sift_jax import fit, presets

    models = list(fit.PROBLEMS) if model == "all" else [model]
    if table:
        for name in models:
            res = fit.fit_table(name, samples=samples, seed=seed)
            if as_json:
                click.echo(json.dumps(res.to_dict()))
                continue
            grid = ", ".join(f"{res.norm_ref / s:.4g}: {r:.3f}" for s, r in zip(res.stretches, res.ratios))
            click.echo(
                f"{name}: output_norm = {res.output_norm:.4g} (preset {res.norm_ref:.4g}) makes SiftMoE fall to "
                f"{res.checked:.3f} of its eta = 0 energy across {res.panel} (paper {res.target:.3f}, log "
                f"residual {res.log_residual:+.3f})" + ("; at the edge of the grid" if res.at_bound else "")
            )
            click.echo(f"  ratio by scale: {grid}")
        return
    for name in models:
        res = fit.fit(name, samples=samples, seed=seed, progress=None if quiet or as_json else click.echo)
        if as_json:
            click.echo(json.dumps(res.to_dict()))
            continue
        values = ", ".join(f"{k} = {v:.4g}" for k, v in res.values.items())
        click.echo(
            f"{name}: {values} (uplink loss {res.gain_db:.1f} dB), uplink share at the default "
            f"{res.uplink_share:.0%}, loss {res.loss:.3g}"
            + (f"; at the edge of its range: {', '.join(res.at_bound)}" if res.at_bound else "")
        )
        click.echo(f"  the preset {name!r} uses {presets.FITTED.get(name)}")
        for anchor, value, log_ratio in res.residuals:
            where = "paper default" if anchor.kind == "level" else f"{anchor.field} {anchor.x:g} / {anchor.x2:g}"
            click.echo(
                f"  {anchor.kind:5s} {anchor.panel}: {where}: paper {anchor.y:.4g}, model {value:.4g}, "
                f"log ratio {log_ratio:+.3f}"
            )


@cli.command()
@click.option("--quick", is_flag=True, help="small batches (a smoke run, not a measurement)")
@click.option("--only", default=None, help="comma list: foundation, decode, prefill, fastfading, sweep, memory")
def bench(quick, only):
    """Run the benchmarks in the repository's benchmarks/ folder (markdown tables on stdout)."""
    import pathlib
    import runpy

    root = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    names = only.split(",") if only else ["foundation", "decode", "prefill", "fastfading", "sweep", "memory"]
    for name in names:
        script = root / f"bench_{name}.py"
        if not script.exists():
            raise ConfigError("only", name, f"a benchmark in {root} (bench_<name>.py)")
        click.echo(f"## {name}\n")
        argv = sys.argv
        sys.argv = [str(script)] + (["--quick"] if quick else [])
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv = argv


try:  # the Flax MoE lab's commands (sift-jax moe train | calibrate | tightness)
    from sift_jax.moe.cli import moe as _moe_group

    cli.add_command(_moe_group)
except ImportError:  # pragma: no cover - the lab is part of the package; this guards partial installs
    pass

from sift_jax.checkpoints.cli import calibrate as _calibrate_command  # noqa: E402  (sift-jax calibrate --checkpoint)

cli.add_command(_calibrate_command)


def main(argv=None):
    """Entry point: run the CLI, turning ConfigError into one stderr line and exit status 2.

    The `sift-jax` console script calls it with no arguments (argv from `sys.argv`).

    Args:
        argv: command-line arguments without the program name (list of str); None reads `sys.argv`.

    Raises:
        SystemExit: status 2 on a ConfigError (one "error: ..." line on stderr), 130 when aborted (128 +
            the signal's number after SIGINT/SIGTERM in a sweep, with a line saying how to resume), click's
            status on a usage error.

    Example:
        >>> import contextlib, io
        >>> out = io.StringIO()
        >>> with contextlib.redirect_stdout(out):
        ...     main(["--help"])
        >>> all(command in out.getvalue() for command in ("simulate", "sweep", "plot", "reproduce"))
        True
        >>> err = io.StringIO()
        >>> with contextlib.redirect_stderr(err):
        ...     try:
        ...         main(["simulate", "--eta", "abc"])
        ...     except SystemExit as exit:
        ...         print("exit status", exit.code)
        exit status 2
        >>> print(err.getvalue().strip())
        error: eta = 'abc' is invalid: allowed is a number
    """
    from sift_jax.store import Interrupted, StoreWarning

    def one_line(message, category, *args, **kwargs):  # a damaged part or a stale lock: "warning: <path>: ..."
        if issubclass(category, StoreWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    shown = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            cli.main(args=argv, standalone_mode=False)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as err:
        cause = err.__cause__
        click.echo(str(cause) if isinstance(cause, Interrupted) else "aborted", err=True)
        sys.exit(128 + cause.signum if isinstance(cause, Interrupted) else 130)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
