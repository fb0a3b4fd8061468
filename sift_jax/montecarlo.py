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

DEFAULT_CHUNK = 8192
MetricFn = Callable[[jax.Array, Any], dict]


def sample_keys(seed, idx) -> jax.Array:
    """Typed keys of samples idx (uint32[S]): `fold_in(key(seed), i)`."""
    base = jax.random.key(jnp.asarray(seed, jnp.uint32))
    return jax.vmap(functools.partial(jax.random.fold_in, base))(jnp.asarray(idx, jnp.uint32))


def _metrics_of(metric_fn: MetricFn, params, idx, seed):
    """{name: (float[P, S], bool[P, S])} for sample indices idx uint32[S] and P stacked points."""
    keys = sample_keys(seed, idx)
    per_sample = jax.vmap(metric_fn, in_axes=(0, None))
    return jax.vmap(per_sample, in_axes=(None, 0))(keys, params)


@functools.partial(jax.jit, static_argnames=("metric_fn", "size"))
def _chunk(metric_fn: MetricFn, params, start, size: int, seed):
    """Metrics of samples start..start+size-1 for every sweep point: {name: (float[P, size], bool[P, size])}.

    With several devices the sample axis is split over a 1-D mesh with `jax.shard_map` (size must be a
    multiple of the device count); each sample's computation is unchanged, so results are bit-identical
    to one device.
    """
    idx = jnp.asarray(start, jnp.uint32) + jnp.arange(size, dtype=jnp.uint32)
    n_dev = jax.device_count()
    if n_dev == 1:
        return _metrics_of(metric_fn, params, idx, seed)
    mesh = jax.make_mesh((n_dev,), ("samples",))
    spec = jax.sharding.PartitionSpec
    sharded = jax.shard_map(functools.partial(_metrics_of, metric_fn), mesh=mesh,
                            in_specs=(spec(), spec("samples"), spec()), out_specs=spec(None, "samples"))
    return sharded(params, idx, seed)


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
    n_dev = jax.device_count()
    return -(-size // n_dev) * n_dev  # a multiple of the device count (samples are split over devices)


def run(metric_fn: MetricFn, params, n_points: int, samples: int, seed: int = 0, chunk_size: int | None = None,
        progress: Callable[[int], None] | None = None) -> list[dict[str, Stat]]:
    """Stream `samples` samples of `metric_fn` for each of `n_points` stacked parameter sets.

    Args:
        metric_fn: hashable callable (key, params_of_one_point) -> {name: (value, valid)} (scalars).
        params: pytree whose leaves carry a leading axis of size `n_points`.
        samples: samples per point. seed: run seed. chunk_size: samples per compiled call.
        progress: optional callback with the number of samples finished per point.

    Returns:
        One {name: Stat} per point.
    """
    size = check_run_args(samples, seed, chunk_size)
    accs: list[dict[str, Accumulator]] | None = None
    pending = _chunk(metric_fn, params, 0, size, seed)  # dispatch ahead: host merges overlap device work
    for start in range(0, samples, size):
        out = pending
        if start + size < samples:
            pending = _chunk(metric_fn, params, start + size, size, seed)
        host = jax.device_get(out)
        take = min(size, samples - start)
        if accs is None:
            accs = [{name: Accumulator() for name in host} for _ in range(n_points)]
        for p in range(n_points):
            for name, (value, valid) in host.items():
                accs[p][name].add(value[p, :take], valid[p, :take])
        if progress is not None:
            progress(start + take)
    return [{name: acc.result() for name, acc in point.items()} for point in accs]
