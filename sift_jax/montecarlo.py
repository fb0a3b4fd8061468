"""Chunked streaming Monte Carlo runner.

A metric function maps (key, params) for one sample to {name: (value, valid)} scalars. The runner
evaluates fixed-shape chunks of samples under one compiled `vmap` (over samples, and over a leading
axis of sweep points), keyed by `fold_in(key(seed), i)` for sample i, and streams the values into
host float64 accumulators (`stats.Accumulator`). Memory is O(chunk), independent of the sample
count, and results are bit-identical for any chunk size (samples are keyed by index, and the host
statistics run over canonical blocks of the sample sequence). The last chunk is padded to the
fixed shape, so one compilation serves a whole run.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.stats import Accumulator, Stat

__all__ = ["run", "sample_keys"]

DEFAULT_CHUNK = 8192
TRACES = {"count": 0}  # times a chunk function was traced (compiled); tests assert one per static shape
MetricFn = Callable[[jax.Array, Any], dict]


def sample_keys(seed, idx) -> jax.Array:
    """Typed keys of samples idx (uint32[S]): `fold_in(key(seed), i)`.

    Sample i of a run always gets this key, whatever the chunk size or device count, so a single sample
    of a run can be recomputed on its own.

    Args:
        seed: run seed, an integer in [0, 2^31 - 1].
        idx: int[S] sample indices (anything `jnp.asarray` turns into a 1-D integer array).

    Returns:
        A typed PRNG key array of shape [S], one key per index.

    Example:
        >>> import jax
        >>> keys = sample_keys(0, [3, 4, 5])
        >>> keys.shape, jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
        ((3,), True)
        >>> same = jax.random.key_data(sample_keys(0, [5])[0]) == jax.random.key_data(keys[2])
        >>> bool(same.all())  # a sample's key depends on its index only
        True
    """
    base = jax.random.key(jnp.asarray(seed, jnp.uint32))
    return jax.vmap(functools.partial(jax.random.fold_in, base))(jnp.asarray(idx, jnp.uint32))


def inner_batch(samples: int | None = None) -> int:
    """Samples per vmapped block: 256 on CPU, 16384 on accelerators (which want wide batches).

    With `samples` given and smaller, the next power of two >= samples (at least 8), so that short runs
    (quick sweeps, tests) are not padded to a full block. It depends on the sample count only, never on
    the chunk size or device count, so those still leave results bit-identical.
    """
    base = 256 if jax.default_backend() == "cpu" else 16384
    if samples is None:
        return base
    return min(base, max(8, 1 << (int(samples) - 1).bit_length()))


def _in_axes(params, axes: tuple | None):
    """vmap in_axes over points: 0 for every leaf, or the per-leaf tuple `axes` (0 or None)."""
    return 0 if axes is None else jax.tree.unflatten(jax.tree.structure(params), list(axes))


def _metrics_of(metric_fn: MetricFn, width: int, axes: tuple | None, params, idx, seed):
    """{name: (float[P, S], bool[P, S])} for sample indices idx uint32[S] and P stacked points.

    Leaves of `params` with axis None in `axes` are shared by all points: whatever depends only on them
    and on the sample key (random draws, gates, tables) is computed once per sample, not once per point.
    S is a multiple of `width` (`inner_batch(samples)`): samples are computed in blocks of that fixed width under
    `lax.map`, so XLA compiles the same per-block code whatever the chunk size or device count; this is
    what makes results bit-identical across chunk sizes and devices (XLA's CPU code for a vmapped
    batch depends on the batch width, down to the last ulp of exp/log).
    """
    TRACES["count"] += 1  # Python side effect: runs at trace time only
    per_sample = jax.vmap(metric_fn, in_axes=(0, None))
    in_axes = _in_axes(params, axes)
    per_block = lambda block: jax.vmap(per_sample, in_axes=(None, in_axes))(sample_keys(seed, block), params)  # noqa: E731
    out = jax.lax.map(per_block, idx.reshape(-1, width))  # {name: ([B, P, width], [B, P, width])}
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1).reshape(a.shape[1], -1), out)


@functools.partial(jax.jit, static_argnames=("metric_fn", "size", "width", "axes"))
def _chunk(metric_fn: MetricFn, params, start, size: int, seed, width: int | None = None, axes: tuple | None = None):
    """Metrics of samples start..start+size-1 on one device: {name: (float[P, size], bool[P, size])}.

    width: samples per vmapped block (default `inner_batch()`); size must be a multiple of it."""
    idx = jnp.asarray(start, jnp.uint32) + jnp.arange(size, dtype=jnp.uint32)
    return _metrics_of(metric_fn, width or inner_batch(), axes, params, idx, seed)


@functools.partial(jax.jit, static_argnames=("metric_fn", "size", "width", "axes"))
def _chunk_shard_map(metric_fn: MetricFn, params, start, size: int, seed, width: int, axes: tuple | None):
    """`_chunk` with the sample axis split over all devices by `jax.shard_map` on a 1-D mesh."""
    idx = jnp.asarray(start, jnp.uint32) + jnp.arange(size, dtype=jnp.uint32)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("samples",))
    spec = jax.sharding.PartitionSpec
    sharded = jax.shard_map(functools.partial(_metrics_of, metric_fn, width, axes), mesh=mesh,
                            in_specs=(spec(), spec("samples"), spec()), out_specs=spec(None, "samples"))
    return sharded(params, idx, seed)


SHARDING_MODES = ("dispatch", "shard_map")


def _launch(metric_fn, device_params, start: int, size: int, seed: int, mode: str, width: int, axes):
    """Start one chunk asynchronously; returns what `_collect` turns into host arrays.

    One device: `_chunk`. Several devices, mode "dispatch" (default): the same single-device program
    runs on each device's contiguous share of the samples (asynchronous dispatch, no host threads):
    bit-identical to one device. Mode "shard_map": one SPMD program over a 1-D mesh, the path for
    multi-host runs; XLA's partitioned CPU code was measured to differ from the single-device code in
    the last ulp for ~3% of samples, so it is equal to one device only to float rounding.
    """
    n_dev = len(device_params)
    if n_dev == 1:
        return [_chunk(metric_fn, device_params[0], start, size, seed, width, axes)]
    if mode == "shard_map":
        return [_chunk_shard_map(metric_fn, device_params[0], start, size, seed, width, axes)]
    share = size // n_dev
    return [_chunk(metric_fn, p, start + i * share, share, seed, width, axes) for i, p in enumerate(device_params)]


def _collect(parts) -> dict:
    host = jax.device_get(parts)
    if len(host) == 1:
        return host[0]
    return {k: tuple(np.concatenate([h[k][j] for h in host], axis=1) for j in (0, 1)) for k in host[0]}


def check_run_args(samples, seed, chunk_size) -> int:
    """Validate the sample count, seed and chunk size; returns the chunk size to use."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 1 <= samples <= 2**32 - 1:
        raise ConfigError("samples", samples, "an integer in [1, 2^32 - 1]")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= 2**31 - 1:
        raise ConfigError("seed", seed, "an integer in [0, 2^31 - 1]")
    if chunk_size is None:
        size = int(min(samples, DEFAULT_CHUNK))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or not 1 <= chunk_size <= 2**24:
        raise ConfigError("chunk_size", chunk_size, "an integer in [1, 2^24]")
    else:
        size = int(min(chunk_size, samples))
    unit = jax.device_count() * inner_batch(samples)
    return -(-size // unit) * unit  # a multiple of (devices x inner block); see _metrics_of


def run(metric_fn: MetricFn, params, n_points: int, samples: int, seed: int = 0, chunk_size: int | None = None,
        progress: Callable[[int], None] | None = None, sharding: str = "dispatch",
        axes: tuple | None = None) -> list[dict[str, Stat]]:
    """Stream `samples` samples of `metric_fn` for each of `n_points` stacked parameter sets.

    Args:
        metric_fn: hashable callable (key, params_of_one_point) -> {name: (value, valid)}, with value a
            float scalar (the metric's unit) and valid a bool scalar; it is a static jit argument, so
            passing the same object again reuses the compiled program.
        params: pytree whose leaves carry a leading axis of size `n_points` (those with axis 0 in `axes`).
        n_points: number of stacked parameter sets P.
        samples: samples per point, in [1, 2^32 - 1]. seed: run seed in [0, 2^31 - 1]; sample i uses
            `sample_keys(seed, [i])`. chunk_size: samples per compiled call (memory only; rounded up to
            a multiple of devices x `inner_batch(samples)`); results do not depend on it.
        progress: optional callback with the number of samples finished per point.
        sharding: how samples are split over several local devices: "dispatch" (bit-identical to one
            device) or "shard_map" (one SPMD program; use with `jax.distributed.initialize` on several hosts).
        axes: per leaf of params (flattened order) 0 (stacked over points) or None (one value shared by
            all points, without the point axis); default: every leaf stacked.

    Returns:
        A list of P dicts {name: Stat}, one per point, over all `samples` samples.

    Raises:
        ConfigError: bad samples, seed, chunk_size, sharding or axes.

    Example:
        A uniform draw scaled per point, valid only below half the scale: both points see the same
        draws (sample i is keyed by i), so they report the same valid count:

        >>> import jax, jax.numpy as jnp
        >>> def metric(key, scale):
        ...     u = jax.random.uniform(key)
        ...     return {"x": (scale * u, u < 0.5)}
        >>> a, b = run(metric, jnp.array([1.0, 10.0]), n_points=2, samples=300, seed=0)
        >>> a["x"].n + a["x"].n_invalid, a["x"].n == b["x"].n, 0 <= a["x"].mean < 0.5
        (300, True, True)
        >>> round(b["x"].mean / a["x"].mean, 4)
        10.0
        >>> again = run(metric, jnp.array([1.0, 10.0]), 2, 300, seed=0, chunk_size=100)
        >>> again[0]["x"] == a["x"]  # bit-identical for any chunk size
        True
        >>> run(metric, jnp.array([1.0]), 1, samples=0)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: samples = 0 is invalid: allowed is an integer in [1, 2^32 - 1]
    """
    size = check_run_args(samples, seed, chunk_size)
    if sharding not in SHARDING_MODES:
        raise ConfigError("sharding", sharding, "one of " + ", ".join(SHARDING_MODES))
    devices = jax.devices() if sharding == "dispatch" else jax.devices()[:1]
    device_params = [jax.device_put(params, d) for d in devices] if len(devices) > 1 else [params]
    accs: dict[str, Accumulator] | None = None  # one accumulator per metric, vectorised over the points
    width = inner_batch(samples)
    if axes is not None and (len(axes) != len(jax.tree.leaves(params)) or 0 not in axes):
        raise ConfigError("axes", axes, "one entry (0 or None) per leaf of params, at least one 0")
    pending = _launch(metric_fn, device_params, 0, size, seed, sharding, width, axes)  # ahead: host merges overlap compute
    for start in range(0, samples, size):
        out = pending
        if start + size < samples:
            pending = _launch(metric_fn, device_params, start + size, size, seed, sharding, width, axes)
        host = _collect(out)
        take = min(size, samples - start)
        if accs is None:
            accs = {name: Accumulator(points=n_points) for name in host}
        for name, (value, valid) in host.items():
            accs[name].add(value[:, :take], valid[:, :take])
        if progress is not None:
            progress(start + take)
    per_metric = {name: acc.results() for name, acc in accs.items()}
    return [{name: stats[p] for name, stats in per_metric.items()} for p in range(n_points)]
