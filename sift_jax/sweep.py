"""Parameter sweeps: TOML specs, grid expansion, grouped vmapped evaluation, resume, xarray storage.

A spec (see README, "Sweep specs") names a preset, the curves (policy, or policy:bits under fast
fading), fixed overrides and one or more axes over Scenario fields. Points are grouped by their static
signature (fields that set shapes); each group's dynamic parameters are stacked and evaluated in
batches of `points_per_call` points as one compiled, vmapped, chunked call (the last batch is padded),
so a group compiles once however many points it has. Only the swept fields carry the point axis by
default (`point_axes="swept"`: draws and costs that do not depend on them are computed once per sample);
`point_axes="all"` stacks every dynamic field, so specs that differ only in which field they sweep share
one compiled program per curve (`quick` runs use it: compilation dominates them). Under fast fading the
curves of one policy are evaluated together (`curve_groups`): one selection per layer, loaded by each of
their bit loadings, so a SiftMoE figure with three bit loadings pays for one selection. Finished batches are
kept as checksummed parts in `<out>/<name>.parts/` by `sift_jax.store` (lock, manifest, atomic writes):
`resume=True` reuses them after a crash and refuses parts of another spec, sample count, seed, point axes
or code version; without it a run refuses earlier results unless `overwrite=True`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import os
import pathlib
import tomllib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax import distributed, inputs, montecarlo, presets, similarity, store
from sift_jax import metrics as metric_records
from sift_jax.errors import ConfigError
from sift_jax.provenance import provenance
from sift_jax.scenario import DYNAMIC_FIELDS, INTEGER_FIELDS, PER_HELPER_FIELDS, STATIC_FIELDS, TABLE_FIELDS, Scenario
from sift_jax.simulate import PAIRED_METRIC, REGIMES, TaskMetrics, check_policy
from sift_jax.stats import Stat

__all__ = ["Curve", "Spec", "curve_groups", "curve_pairs", "load_spec", "run", "scenario_of", "stack_scenarios"]

SPEC_KEYS = (
    "name",
    "title",
    "preset",
    "curves",
    "samples",
    "quick_samples",
    "seed",
    "chunk_size",
    "regime",
    "fading",
    "fixed",
    "quick_fixed",
    "axes",
    "mode",
    "points_per_call",
    "options",
    "tables",
    "router",
)
POINT_AXES = ("swept", "all")
STAT_FIELDS = ("mean", "ci_lo", "ci_hi", "n", "n_invalid", "p50", "p90", "p99", "tail_share", "reliable")


@dataclasses.dataclass(frozen=True)
class Curve:
    """One line of a figure: a policy, with a bit-loading rule under fast fading.

    Attributes:
        policy: a name from `sj.policies.names()`.
        bits: fast-fading bit loading ("uniform", "closed-form"/"dynamic", "dp") or None.

    Example:
        >>> Curve("siftmoe").label, Curve("siftmoe", "dynamic").label  # the `curve` coordinate of results
        ('siftmoe', 'siftmoe:dynamic')
    """

    policy: str
    bits: str | None = None

    @property
    def label(self) -> str:
        """ "policy" or "policy:bits", as written in the spec's `curves`."""
        return self.policy if self.bits is None else f"{self.policy}:{self.bits}"


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated sweep spec (see `load_spec`; the README's "Sweep specs" documents each key).

    Attributes:
        name, title, preset: output file stem, figure title, preset the points start from.
        curves: the policies (and bit loadings) to run at every point.
        samples, quick_samples, seed, chunk_size: Monte Carlo settings (quick_samples with `quick=True`).
        regime: "slow" or "fast" fading (spec key `regime`; `fading` is accepted as its former name).
            fixed, quick_fixed: Scenario overrides (quick_fixed only when quick).
        axes: ((field, values), ...) swept Scenario fields, in the field's unit (e.g. bandwidth_hz in Hz).
        mode: "product" (grid, last axis fastest) or "zip" (axes walked together).
        points_per_call: points per compiled call. options: policy options. text: the TOML source.
        tables, router: absolute paths of a mismatch-table file and a router log (`sift_jax.inputs`;
            spec keys `tables` and `router`, relative to the spec file's directory), or None (synthetic).

    Example:
        >>> spec = load_spec('''
        ... name = "demo"
        ... preset = "mixtral-8x7b"
        ... curves = ["siftmoe"]
        ... samples = 16
        ... points_per_call = 2
        ... fixed = {n_tokens = 1, n_layers = 1}
        ... axes = [{field = "eta", values = [0.0, 1.5]}]
        ... ''')
        >>> spec.name, spec.curves, spec.axes
        ('demo', (Curve(policy='siftmoe', bits=None),), (('eta', (0.0, 1.5)),))
        >>> spec.points()
        [{'eta': 0.0}, {'eta': 1.5}]
    """

    name: str
    title: str
    preset: str
    curves: tuple[Curve, ...]
    samples: int
    quick_samples: int
    seed: int
    chunk_size: int | None
    regime: str
    fixed: dict
    quick_fixed: dict
    axes: tuple[tuple[str, tuple], ...]
    mode: str
    points_per_call: int
    options: dict
    text: str
    tables: str | None = None
    router: str | None = None

    def points(self) -> list[dict]:
        """Field -> value of every point, in storage order (product: last axis fastest).

        Returns:
            A list of {field: value} dicts, one per point (product of the axes' lengths, or their common
            length for mode "zip").
        """
        names = [a for a, _ in self.axes]
        if self.mode == "zip":
            return [dict(zip(names, vals)) for vals in zip(*(v for _, v in self.axes))]
        return [dict(zip(names, vals)) for vals in itertools.product(*(v for _, v in self.axes))]


def _need(cond: bool, key: str, value, allowed: str):
    if not cond:
        raise ConfigError(f"spec.{key}", value, allowed)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def load_spec(source: str | os.PathLike) -> Spec:
    """Parse and validate a TOML sweep spec (a path, or TOML text containing a newline).

    Args:
        source: path to a .toml file, or the TOML text itself (recognised by a newline).

    Returns:
        The validated `Spec`; the first and last points are built as Scenarios to check field values.

    Raises:
        ConfigError: unreadable file, invalid TOML, unknown key, or a bad value (named as spec.<key>).

    Example:
        >>> spec = load_spec('name = "demo"\\npreset = "mixtral-8x7b"\\ncurves = ["siftmoe", "topk"]\\n'
        ...                  'samples = 100\\n[[axes]]\\nfield = "eta"\\nvalues = [0.5, 1.5]\\n')
        >>> [c.label for c in spec.curves], spec.points()
        (['siftmoe', 'topk'], [{'eta': 0.5}, {'eta': 1.5}])
        >>> load_spec('name = "demo"\\npreset = "mixtral-8x7b"\\ncurves = ["nope"]\\n')
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: policy = 'nope' is invalid: allowed is one of ...
    """
    text = str(source)
    where = pathlib.Path.cwd()  # relative file paths in the spec start here (the spec file's directory)
    if "\n" not in text:
        where = pathlib.Path(source).resolve().parent
        try:
            text = pathlib.Path(source).read_text()
        except OSError as err:
            raise ConfigError("spec", str(source), f"a readable TOML file ({err.strerror})") from None
        except UnicodeDecodeError as err:
            raise ConfigError("spec", str(source), f"a UTF-8 text file (byte {err.start} is not UTF-8)") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("spec", "TOML text", f"valid TOML ({err})") from None
    for key in raw:
        _need(key in SPEC_KEYS, key, raw[key], "a spec key (one of " + ", ".join(SPEC_KEYS) + ")")
    name = raw.get("name")
    _need(
        isinstance(name, str) and name.replace("-", "").replace("_", "").isalnum(),
        "name",
        name,
        "a string of letters, digits, '-' and '_'",
    )
    preset = raw.get("preset")
    _need(preset in presets.names(), "preset", preset, "one of " + ", ".join(presets.names()))
    _need(
        not ("fading" in raw and "regime" in raw),
        "fading",
        raw.get("fading"),
        "absent when regime is given (fading is the former name of regime)",
    )
    regime = raw.get("regime", raw.get("fading", "slow"))
    _need(regime in REGIMES, "regime", regime, "one of " + ", ".join(REGIMES))
    curves_raw = raw.get("curves")
    _need(
        isinstance(curves_raw, list) and curves_raw and all(isinstance(c, str) for c in curves_raw),
        "curves",
        curves_raw,
        "a non-empty list of 'policy' or 'policy:bits' strings",
    )
    curves = []
    for c in curves_raw:
        policy, _, bits = c.partition(":")
        check_policy(policy, regime, bits or None)
        curves.append(Curve(policy, bits or None))
    samples = raw.get("samples", 10_000)
    quick_samples = raw.get("quick_samples", min(samples, 256) if _is_int(samples) else 256)
    for key, val in (("samples", samples), ("quick_samples", quick_samples)):
        _need(_is_int(val) and 1 <= val <= 2**32 - 1, key, val, "an integer in [1, 2^32 - 1]")
    seed = raw.get("seed", 0)
    _need(_is_int(seed) and 0 <= seed <= 2**31 - 1, "seed", seed, "an integer in [0, 2^31 - 1]")
    chunk = raw.get("chunk_size")
    _need(chunk is None or (_is_int(chunk) and 1 <= chunk <= 2**24), "chunk_size", chunk, "an integer in [1, 2^24]")
    ppc = raw.get("points_per_call", 8)
    _need(_is_int(ppc) and 1 <= ppc <= 4096, "points_per_call", ppc, "an integer in [1, 4096]")
    known = STATIC_FIELDS + DYNAMIC_FIELDS
    fixed, quick_fixed = raw.get("fixed", {}), raw.get("quick_fixed", {})
    for key, table in (("fixed", fixed), ("quick_fixed", quick_fixed)):
        _need(isinstance(table, dict), key, table, "a table of Scenario field = value")
        for field in table:
            _need(field in known, f"{key}.{field}", table[field], "a Scenario field")
    axes_raw = raw.get("axes")
    _need(isinstance(axes_raw, list) and axes_raw, "axes", axes_raw, "a non-empty array of [[axes]] tables")
    axes = []
    for i, ax in enumerate(axes_raw):
        _need(
            isinstance(ax, dict) and set(ax) <= {"field", "values"},
            f"axes[{i}]",
            ax,
            "a table with keys field and values",
        )
        field, values = ax.get("field"), ax.get("values")
        _need(field in known and field != "fading", f"axes[{i}].field", field, "a Scenario field")
        _need(isinstance(values, list) and len(values) > 0, f"axes[{i}].values", values, "a non-empty list")
        _need(
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values),
            f"axes[{i}].values",
            values,
            "numbers",
        )
        _need(field not in fixed, f"axes[{i}].field", field, "a field not also in [fixed]")
        axes.append((field, tuple(values)))
    _need(len({a for a, _ in axes}) == len(axes), "axes", [a for a, _ in axes], "distinct fields")
    mode = raw.get("mode", "product")
    _need(mode in ("product", "zip"), "mode", mode, "product or zip")
    if mode == "zip":
        _need(len({len(v) for _, v in axes}) == 1, "axes", [len(v) for _, v in axes], "equal lengths for mode='zip'")
    options = raw.get("options", {})
    _need(isinstance(options, dict), "options", options, "a table of policy options")
    files = {}
    for key in ("tables", "router"):
        value = raw.get(key)
        _need(value is None or (isinstance(value, str) and value), key, value, "a file path (string)")
        if value is not None:
            path = where / value
            _need(path.exists(), key, value, f"an existing file (looked for {path})")
            files[key] = str(path)
    if "tables" in files:  # the file's tables do not depend on the synthetic table's fields
        swept = [f for f, _ in axes if f in TABLE_FIELDS]
        _need(not swept, "axes", swept, "no synthetic-table field when tables is a file (it would change nothing)")
    spec = Spec(
        name,
        raw.get("title", name),
        preset,
        tuple(curves),
        samples,
        quick_samples,
        seed,
        chunk,
        regime,
        dict(fixed),
        dict(quick_fixed),
        tuple(axes),
        mode,
        ppc,
        dict(options),
        text,
        **files,
    )
    for point in spec.points()[:1] + spec.points()[-1:]:
        scenario_of(spec, point, quick=False)  # validates field values early, naming the field
    return spec


def scenario_of(spec: Spec, point: dict, quick: bool, base: Scenario | None = None) -> Scenario:
    """The validated Scenario of one point: the preset, then `fixed`, then (quick) `quick_fixed`, then the point.

    Args:
        spec: the sweep spec.
        point: {field: value} of one point (an entry of `spec.points()`), in the fields' units.
        quick: also apply the spec's `[quick_fixed]` overrides.
        base: `unvalidated_base(spec, quick)`, to build many points without redoing the preset and fixed
            fields (the returned scenario is validated as a whole either way).

    Returns:
        The validated `Scenario` (integer fields given as floats, e.g. 2.0, become ints).

    Example:
        >>> spec = load_spec('''
        ... name = "demo"
        ... preset = "mixtral-8x7b"
        ... curves = ["siftmoe"]
        ... samples = 16
        ... points_per_call = 2
        ... fixed = {n_tokens = 1, n_layers = 1}
        ... axes = [{field = "eta", values = [0.0, 1.5]}]
        ... ''')
        >>> sc = scenario_of(spec, {"eta": 1.5}, quick=False)
        >>> float(sc.eta), sc.n_tokens, sc.n_layers, sc.top_k  # top_k from the preset
        (1.5, 1, 1, 2)
    """
    base = unvalidated_base(spec, quick) if base is None else base
    return base.replace(**_field_values(point))  # validates every field, not only the point's


def _field_values(fields: dict) -> dict:
    """TOML values as Scenario values: whole floats of integer fields as ints, lists as float arrays."""
    fields = {k: (int(v) if k in INTEGER_FIELDS and float(v).is_integer() else v) for k, v in fields.items()}
    return {k: (np.asarray(v, float) if isinstance(v, list) else v) for k, v in fields.items()}


def unvalidated_base(spec: Spec, quick: bool) -> Scenario:
    """The preset with the spec's `fixed` (and, quick, `quick_fixed`) fields, not yet validated: a point
    completes it (a fixed value may only be valid together with an axis value)."""
    fields = dict(spec.fixed)
    if quick:
        fields.update(spec.quick_fixed)
    for name, value in fields.items():
        if name not in STATIC_FIELDS + DYNAMIC_FIELDS:
            raise ConfigError(name, value, "a Scenario field (see sift_jax.scenario.FIELDS)")
    return dataclasses.replace(presets.get(spec.preset), **_field_values(fields))


def _static_signature(sc: Scenario) -> tuple:
    return tuple(getattr(sc, f) for f in STATIC_FIELDS)


def stack_scenarios(scs: list[Scenario], varying: set[str] | None = None) -> Scenario:
    """Stack scenarios with equal static fields into one with a leading point axis on every leaf
    (varying None), or only on the dynamic fields in `varying` (the others keep the first point's value).

    Args:
        scs: P scenarios with equal static fields (shapes).
        varying: names of the dynamic fields that get the point axis; None: all of them.

    Returns:
        One `Scenario` whose dynamic leaves are float[P] (float[P, N-1] for per-helper fields given as
        arrays), or unstacked for the fields outside `varying`; units unchanged.

    Example:
        >>> spec = load_spec('''
        ... name = "demo"
        ... preset = "mixtral-8x7b"
        ... curves = ["siftmoe"]
        ... samples = 16
        ... points_per_call = 2
        ... fixed = {n_tokens = 1, n_layers = 1}
        ... axes = [{field = "eta", values = [0.0, 1.5]}]
        ... ''')
        >>> scs = [scenario_of(spec, p, quick=False) for p in spec.points()]
        >>> stacked = stack_scenarios(scs)
        >>> stacked.eta.shape, stacked.eta.tolist(), stacked.bandwidth_hz.shape
        ((2,), [0.0, 1.5], (2,))
        >>> stack_scenarios(scs, varying={"eta"}).bandwidth_hz.shape  # shared by every point
        ()
    """
    first = scs[0]
    leaves = {}
    for name in DYNAMIC_FIELDS:
        stack = varying is None or name in varying
        vals = [np.asarray(getattr(sc, name), np.float64) for sc in (scs if stack else scs[:1])]
        shape = (first.n_helpers,) if name in PER_HELPER_FIELDS and any(v.ndim for v in vals) else ()
        stacked = np.stack([np.broadcast_to(v, shape) for v in vals])
        leaves[name] = jnp.asarray(stacked if stack else stacked[0], jnp.result_type(float))
    return dataclasses.replace(first, **leaves)


def point_params(scs: list[Scenario], varying: set[str], spec: Spec | None = None) -> tuple[tuple, tuple]:
    """(params (Scenario, tables[, router logits]), per-leaf point axes) for `montecarlo.run`: only the
    `varying` dynamic fields (and the synthetic tables, if a field they depend on varies) carry the point
    axis; the rest is shared, so draws and gates that do not depend on a varying field are computed once
    per sample. The spec's table file and router log (`Spec.tables`, `Spec.router`) are shared by all points."""
    files = _input_files(spec, scs[0])
    varying = set(varying) & set(DYNAMIC_FIELDS)
    if not varying:  # a batch of one point (padded): stack one field so vmap has an axis
        varying = {DYNAMIC_FIELDS[0]}
    stacked = stack_scenarios(scs, varying)
    marks = dataclasses.replace(stacked, **{f: (0 if f in varying else -1) for f in DYNAMIC_FIELDS})
    sc_axes = tuple(None if a == -1 else 0 for a in jax.tree.leaves(marks))
    vary_tables = bool(varying & TABLE_FIELDS) and "tables" not in files
    if "tables" in files:
        tables = files["tables"]
    elif vary_tables:
        in_axes = jax.tree.unflatten(jax.tree.structure(stacked), list(sc_axes))
        tables = jax.vmap(similarity.synthetic_tables, in_axes=(in_axes,))(stacked)
    else:
        tables = similarity.synthetic_tables(stacked)
    router = (files["router"],) if "router" in files else ()
    return (stacked, tables, *router), sc_axes + ((0 if vary_tables else None),) + (None,) * len(router)


def _input_files(spec: Spec | None, sc: Scenario) -> dict:
    """{"tables": float[L, N, N+1], "router": float32[L, T, N]} from the spec's files, checked against `sc`."""
    if spec is None:
        return {}
    sizes = (sc.n_nodes, sc.n_layers, sc.n_tokens)
    out = {}
    for key, path in (("tables", spec.tables), ("router", spec.router)):
        if path:
            stat = os.stat(path)  # a cheap identity per batch; the content hash is taken once per run (manifest)
            out[key] = _cached_input(key, path, sizes, (stat.st_mtime_ns, stat.st_size))
    return out


@functools.lru_cache(maxsize=8)
def _cached_input(kind: str, path: str, sizes: tuple[int, int, int], version: tuple[int, int]) -> jax.Array:
    """A checked input file's array (cached by path, sizes and the file's modification time and size)."""
    del version  # part of the cache key only: a rewritten file is read again
    n_nodes, n_layers, n_tokens = sizes
    sc = Scenario(n_nodes=n_nodes, n_layers=n_layers, n_tokens=n_tokens, top_k=1)
    return (inputs.load_tables if kind == "tables" else inputs.load_router)(path, sc)[0]


@functools.cache
def _code_hash() -> str:
    """Hash of the package's sources as imported by this process (what produced its results)."""
    root = pathlib.Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _encode(stats: list[dict[str, Stat]]) -> list[dict]:
    """A part's payload: [{metric: Stat as a dict}] per point."""
    return [{m: s.to_dict() for m, s in pt.items()} for pt in stats]


def _decode(payload: list[dict]) -> list[dict[str, Stat]]:
    """Inverse of `_encode` (a KeyError/TypeError marks the part damaged)."""
    return [
        {m: Stat(**(d | {"ci95": None if d["ci95"] is None else tuple(d["ci95"])})) for m, d in pt.items()}
        for pt in payload
    ]


def run(
    spec: Spec | str | os.PathLike,
    out: str | os.PathLike | None = "results",
    resume: bool = False,
    samples: int | None = None,
    quick: bool = False,
    progress: Callable[[int, int], None] | None = None,
    point_axes: str | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    merge: bool = False,
):
    """Run a sweep; returns an `xarray.Dataset` (also written to `<out>/<name>.nc` when `out` is set).

    Args:
        spec: a Spec or a path to a TOML spec. out: output directory (None: keep in memory, no resume).
        resume: reuse finished batches from `<out>/<name>.parts/` (refused if they belong to another
            spec, sample count, seed or code version; a damaged part is recomputed with a
            `store.StoreWarning`). samples: override the spec's sample count.
        quick: use `quick_samples` and the spec's `[quick_fixed]` overrides.
        progress: callback(done, total) in samples x points.
        point_axes: which dynamic fields carry the point axis: "swept" (only the spec's axes; whatever
            does not depend on them is computed once per sample, the fastest per sample) or "all" (every
            dynamic field, so every spec with the same preset, fading, curve, sizes and points_per_call
            reuses one compiled program in this process: fewer compilations, more work per sample).
            Values agree to float rounding. Default: "all" when `quick` (compilation dominates tiny
            runs), else "swept".
        overwrite: replace an earlier `<out>/<name>.nc` and its parts (refused otherwise, as is
            `resume` together with `overwrite`).
        shard: (I, N), 0 <= I < N: run only the batches k with k % N == I (a deterministic 1/N of the
            work, e.g. one task of a job array) into the shared `out`, joining parts other shards wrote
            (resume semantics, each shard with its own lock); the shard that finds every part present
            assembles `<name>.nc`. Without it every batch runs.
        merge: compute nothing: assemble `<name>.nc` from the parts in `out` (refused, listing what is
            missing, unless every part of this run is present and intact).

    Several processes (after `sift_jax.distributed.initialize_from_env()`, e.g. `sift-jax sweep --distributed`
    on N hosts) each call `run` with the same arguments: every process evaluates every batch over the global
    devices, process 0 alone opens the store, decides which parts to skip on `resume` and writes parts and
    the result; the others return None.

    Returns:
        An `xarray.Dataset` (None for a shard that leaves parts to other shards) with dims (curve, *axes) for product
        specs or (curve, point) for zipped
        ones, and one variable `<metric>_<stat>` per registered metric (`sj.metrics.names()`; in its unit)
        and stat (mean, ci_lo, ci_hi, n, n_invalid, p50, p90, p99, tail_share, reliable); attributes hold
        the spec, seed, samples, chunk size and provenance. Under fast fading also `energy_diff_j_<stat>`
        with dims (pair, *axes): for each pair "<a>|<b>" of curves of one policy, the per-sample energy
        difference E_a - E_b (J per token) on the same samples (`curve_pairs`), whose CI is the
        paired one (what `report.below` judges Dynamic against Uniform by).

    Raises:
        ConfigError: an invalid spec or run argument, a bad or locked `out`, earlier results without
            `resume` or `overwrite`, `resume`/`shard`/`merge` over parts of another run, or a `merge`
            with parts missing.
        store.Interrupted: SIGINT/SIGTERM while writing to `out` (finished batches are kept for `resume`).

    Example:
        A larger eta only adds allowed decisions, so it never makes more tasks infeasible (samples are
        keyed by index, so both points see the same tasks):

        >>> import pathlib, tempfile
        >>> spec = load_spec('''
        ... name = "demo"
        ... preset = "mixtral-8x7b"
        ... curves = ["siftmoe"]
        ... samples = 16
        ... points_per_call = 2
        ... fixed = {n_tokens = 1, n_layers = 1}
        ... axes = [{field = "eta", values = [0.0, 1.5]}]
        ... ''')
        >>> with tempfile.TemporaryDirectory() as out:
        ...     ds = run(spec, out=out)
        ...     sorted(p.name for p in pathlib.Path(out).iterdir())
        ['demo.nc', 'demo.parts']
        >>> dict(ds.sizes), ds["curve"].values.tolist()
        ({'curve': 1, 'eta': 2}, ['siftmoe'])
        >>> bool((ds["energy_per_token_j_n"] + ds["energy_per_token_j_n_invalid"] == 16).all())
        True
        >>> rate = ds["infeasible_rate_mean"].sel(curve="siftmoe")
        >>> bool(rate.sel(eta=1.5) <= rate.sel(eta=0.0))
        True
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    point_axes = point_axes or ("all" if quick else "swept")
    if point_axes not in POINT_AXES:
        raise ConfigError("point_axes", point_axes, "one of " + ", ".join(POINT_AXES))
    varying = set(DYNAMIC_FIELDS) if point_axes == "all" else {field for field, _ in spec.axes}
    n_samples = samples if samples is not None else (spec.quick_samples if quick else spec.samples)
    size = montecarlo.check_run_args(n_samples, spec.seed, spec.chunk_size)
    points = spec.points()
    base = unvalidated_base(spec, quick)
    scs = [scenario_of(spec, p, quick, base) for p in points]
    for prefilling in sorted({sc.n_tokens > 1 for sc in scs}):  # each curve's rule exists and takes the options
        for c in spec.curves:
            check_policy(c.policy, spec.regime, c.bits, spec.options, prefilling)
    manifest = {
        "spec_sha256": hashlib.sha256(spec.text.encode()).hexdigest(),
        "code": _code_hash(),
        "samples": n_samples,
        "seed": spec.seed,
        "quick": quick,
        "point_axes": point_axes,
        "metrics": list(metric_records.names()),
    }
    for key in ("tables", "router"):  # a changed input file makes the parts another run's (resume refuses)
        path = getattr(spec, key)
        if path:
            getattr(inputs, f"load_{key}")(path, scs[0])  # checked against the scenario before any work
            manifest[f"{key}_sha256"] = inputs.file_sha256(path)
    groups: dict[tuple, list[int]] = {}
    for i, sc in enumerate(scs):
        groups.setdefault(_static_signature(sc), []).append(i)
    batches = [
        (curves, idx[b : b + spec.points_per_call])
        for curves in curve_groups(spec)
        for idx in groups.values()
        for b in range(0, len(idx), spec.points_per_call)
    ]
    mine = _shard_batches(len(batches), shard, merge, out, resume, overwrite)
    total = len(mine) * n_samples * spec.points_per_call
    results: dict[tuple[str, int], dict[str, Stat]] = {}
    lock = None if shard is None else f"{spec.name}.shard-{shard[0]}-of-{shard[1]}"
    with contextlib.ExitStack() as stack:
        held: dict = {}

        def open_store() -> list[int]:
            """Process 0 only: open (lock, check) the store and load the finished batches; their indices."""
            if out is None:
                return []
            st = held["st"] = stack.enter_context(
                store.open_run(
                    out, spec.name, manifest, resume or shard is not None or merge, overwrite, lock_name=lock
                )
            )
            for k in mine:
                keys = _part_keys(*batches[k])
                loaded = (
                    {} if st.missing(keys.values()) else {label: st.load(key, _decode) for label, key in keys.items()}
                )
                if loaded and None not in loaded.values():  # present and intact (a damaged one is recomputed)
                    held.setdefault("loaded", {})[k] = loaded
            return sorted(held.get("loaded", {}))

        # every process of a multi-process run evaluates the same batches in step; process 0 decides which
        finished = set(distributed.on_writer(open_store))
        st = held.get("st")
        for done, k in enumerate(mine):
            curves, members = batches[k]
            if k in finished:
                by_curve = held.get("loaded", {}).get(k, {})  # empty outside process 0: nothing to keep
            else:
                by_curve = _evaluate(
                    spec, curves, [scs[i] for i in members], varying, n_samples, size, progress, done, total
                )
                if st is not None:
                    for label, key in _part_keys(curves, members).items():
                        st.save(key, _encode(by_curve[label]))
            for label, stats in by_curve.items():
                for i, stat in zip(members, stats):
                    results[(label, i)] = stat
            if progress is not None:
                progress((done + 1) * n_samples * spec.points_per_call, total)
        if not distributed.is_writer():
            return None  # process 0 builds and writes the result
        if shard is None and not merge:
            ds = to_dataset(spec, points, results, n_samples, size, quick, point_axes)
            if st is not None:
                st.write_result(ds.to_netcdf)
            return ds
    return _assemble(spec, out, manifest, batches, points, n_samples, size, quick, point_axes, merge)


def _part_keys(curves: tuple[Curve, ...], members: list[int]) -> dict[str, str]:
    """{curve or pair label: part key} of one batch."""
    return {
        label: f"{label.replace(':', '_').replace('|', '--')}__{members[0]}"
        for label in [c.label for c in curves] + curve_pairs(curves)
    }


def _shard_batches(n_batches: int, shard, merge: bool, out, resume: bool, overwrite: bool) -> list[int]:
    """The batch indices this process runs: all, a shard's k % N == I, or none (merge)."""
    if shard is None:
        return [] if merge else list(range(n_batches))
    if merge:
        raise ConfigError("merge", True, "not with shard (merge assembles what the shards wrote)")
    ok = (
        isinstance(shard, tuple)
        and len(shard) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
    )
    if not ok or not 0 <= shard[0] < shard[1] <= 100_000:
        raise ConfigError("shard", shard, "(I, N) integers with 0 <= I < N <= 100000 (CLI: --shard I/N)")
    if out is None or overwrite or resume:
        what = "out" if out is None else "overwrite" if overwrite else "resume"
        raise ConfigError(
            what,
            {"out": out, "overwrite": overwrite, "resume": resume}[what],
            "with shard: an output directory shared by the shards, without --overwrite (it would "
            "discard other shards' parts) and without --resume (shards always reuse finished parts)",
        )
    return [k for k in range(n_batches) if k % shard[1] == shard[0]]


def _assemble(
    spec: Spec,
    out,
    manifest: dict,
    batches: list,
    points: list,
    n_samples: int,
    size: int,
    quick: bool,
    point_axes: str,
    required: bool,
):
    """`<name>.nc` from the parts in `out` when every part is present and intact; else None, or (when
    `required`, i.e. --merge) a ConfigError naming what is missing."""
    if out is None:
        raise ConfigError("out", None, "an output directory holding the shards' parts (merge)")
    try:
        opened = store.open_run(out, spec.name, manifest, resume=True)
        st = opened.__enter__()
    except ConfigError:
        if required:
            raise
        return None  # another shard holds the result lock: it assembles
    try:
        results, missing = {}, []
        for curves, members in batches:
            for label, key in _part_keys(curves, members).items():
                stats = None if st.missing([key]) else st.load(key, _decode)
                if stats is None:
                    missing.append(key)
                    continue
                for i, stat in zip(members, stats):
                    results[(label, i)] = stat
        if missing:
            if required:
                raise ConfigError(
                    "merge",
                    str(st.parts),
                    f"every part of this run: {len(missing)} of "
                    f"{sum(len(_part_keys(*b)) for b in batches)} missing or damaged (e.g. "
                    f"{', '.join(missing[:3])}); run the shards that own them",
                )
            return None
        ds = to_dataset(spec, points, results, n_samples, size, quick, point_axes)
        st.write_result(ds.to_netcdf)
        return ds
    finally:
        opened.__exit__(None, None, None)


def curve_groups(spec: Spec) -> list[tuple[Curve, ...]]:
    """The spec's curves in evaluation groups: under fast fading the curves of one policy share a group (one
    selection per layer, loaded by each bit loading: `TaskMetrics` with a tuple of bits); else one per curve.

    Args:
        spec: a validated spec.

    Returns:
        Tuples of curves, in the spec's order of first appearance; every curve in exactly one tuple.

    Example:
        >>> spec = load_spec('name = "d"\\npreset = "switch-base-8"\\nregime = "fast"\\n'
        ...                  'curves = ["siftmoe:dynamic", "topk:uniform", "siftmoe:uniform"]\\n'
        ...                  '[[axes]]\\nfield = "eta"\\nvalues = [0.5]\\n')
        >>> [[c.label for c in group] for group in curve_groups(spec)]
        [['siftmoe:dynamic', 'siftmoe:uniform'], ['topk:uniform']]
    """
    if spec.regime != "fast":
        return [(c,) for c in spec.curves]
    by_policy: dict[str, list[Curve]] = {}
    for c in spec.curves:
        by_policy.setdefault(c.policy, []).append(c)
    return [tuple(group) for group in by_policy.values()]


def _evaluate(
    spec: Spec,
    curves: tuple[Curve, ...],
    scs: list[Scenario],
    varying: set[str],
    n_samples: int,
    size: int,
    progress,
    k: int,
    total: int,
) -> dict[str, list[dict[str, Stat]]]:
    """One batch of one curve group: pad to points_per_call, stack the `varying` fields, one compiled call
    per chunk. Returns {curve label: [{metric: Stat}] per real point}."""
    n_real = len(scs)
    padded = scs + [scs[-1]] * (spec.points_per_call - n_real)
    params, axes = point_params(padded, varying, spec)
    bits = tuple(c.bits for c in curves) if spec.regime == "fast" else None
    fn = TaskMetrics(
        policy=curves[0].policy, regime=spec.regime, bits=bits, options=tuple(sorted(spec.options.items()))
    )
    base = k * n_samples * spec.points_per_call
    cb = None if progress is None else (lambda done: progress(base + done * spec.points_per_call, total))
    stats = montecarlo.run(fn, params, spec.points_per_call, n_samples, spec.seed, size, cb, axes=axes)[:n_real]
    out = {c.label: [{m: pt[fn.key(c.bits, m)] for m in fn.metrics} for pt in stats] for c in curves}
    for (a, b), label in zip(fn.pairs, curve_pairs(curves)):
        out[label] = [{PAIRED_METRIC: pt[fn.pair_key(a, b)]} for pt in stats]
    return out


def curve_pairs(curves: tuple[Curve, ...]) -> list[str]:
    """Labels of the curve pairs of one evaluation group whose paired energy difference is measured.

    Args:
        curves: one group of `curve_groups` (the curves of one policy under fast fading).

    Returns:
        "<a>|<b>" for every two curves a before b in the group (`TaskMetrics.pairs`), in that order; the
        dataset's `energy_diff_j_*` variables hold E_a - E_b (J per token). Empty under slow fading.

    Example:
        >>> spec = load_spec('name = "d"\\npreset = "switch-base-8"\\nregime = "fast"\\n'
        ...                  'curves = ["siftmoe:dynamic", "siftmoe:uniform", "siftmoe:dp"]\\n'
        ...                  '[[axes]]\\nfield = "eta"\\nvalues = [0.5]\\n')
        >>> curve_pairs(curve_groups(spec)[0])
        ['siftmoe:dynamic|siftmoe:uniform', 'siftmoe:dynamic|siftmoe:dp', 'siftmoe:uniform|siftmoe:dp']
    """
    if len(curves) < 2 or curves[0].bits is None:
        return []
    return [f"{a.label}|{b.label}" for i, a in enumerate(curves) for b in curves[i + 1 :]]


def to_dataset(
    spec: Spec,
    points: list[dict],
    results: dict,
    n_samples: int,
    chunk_size: int,
    quick: bool,
    point_axes: str = "swept",
    metric_names: tuple[str, ...] | None = None,
):
    """Labelled results: dims (curve, *axes) for product specs or (curve, point) for zipped ones; one
    variable per metric of `metric_names` (default: every registered metric) and stat."""
    import xarray as xr

    metric_names = metric_records.names() if metric_names is None else metric_names

    curves = [c.label for c in spec.curves]
    if spec.mode == "product":
        dims = ("curve",) + tuple(a for a, _ in spec.axes)
        shape = (len(curves),) + tuple(len(v) for _, v in spec.axes)
        coords = {"curve": curves} | {a: list(v) for a, v in spec.axes}
    else:
        dims, shape = ("curve", "point"), (len(curves), len(points))
        coords = {"curve": curves, "point": np.arange(len(points))} | {a: ("point", list(v)) for a, v in spec.axes}

    def fields(s: Stat) -> tuple:  # in STAT_FIELDS order; None (no valid sample) becomes NaN
        lo, hi = s.ci95 if s.ci95 else (None, None)
        return (s.mean, lo, hi, s.n, s.n_invalid, s.p50, s.p90, s.p99, s.tail_share, float(s.reliable))

    data = {}
    for metric in metric_names:
        rows = [fields(results[(label, i)][metric]) for label in curves for i in range(len(points))]
        table = np.array(rows, dtype=float).reshape(shape + (len(STAT_FIELDS),))  # None -> nan
        for j, f in enumerate(STAT_FIELDS):
            data[f"{metric}_{f}"] = (dims, table[..., j])
    pairs = [label for group in curve_groups(spec) for label in curve_pairs(group)]
    if pairs:  # paired differences of fast-fading curves: dims (pair, *axes)
        rows = [fields(results[(label, i)][PAIRED_METRIC]) for label in pairs for i in range(len(points))]
        table = np.array(rows, dtype=float).reshape((len(pairs),) + shape[1:] + (len(STAT_FIELDS),))
        for j, f in enumerate(STAT_FIELDS):
            data[f"{PAIRED_METRIC}_{f}"] = (("pair",) + dims[1:], table[..., j])
        coords["pair"] = pairs
    attrs = {
        "spec_name": spec.name,
        "title": spec.title,
        "preset": spec.preset,
        "regime": spec.regime,
        "spec": spec.text,
        "seed": spec.seed,
        "samples": n_samples,
        "chunk_size": chunk_size,
        "quick": int(quick),
        "point_axes": point_axes,
        "code_sha256": _code_hash(),
    }
    for key in ("tables", "router"):
        path = getattr(spec, key)
        attrs[f"{key}_file"] = path or "synthetic"
        if path:
            attrs[f"{key}_sha256"] = inputs.file_sha256(path)
    attrs |= {k: (int(v) if isinstance(v, bool) else v) for k, v in provenance().items()}
    attrs["note"] = (
        "mean/ci/quantiles are NaN only where n == 0 (no valid sample, e.g. all infeasible); "
        "see the _n and _n_invalid variables"
    )
    return xr.Dataset(data, coords=coords, attrs=attrs)
