"""Chunked streaming Monte Carlo runner.

A metric function maps (key, params) for one sample to {name: (value, valid)} scalars. The runner
evaluates fixed-shape chunks of samples under one compiled `vmap` (over samples, and over a leading
axis of sweep points), keyed by `fold_in(key(seed), i)` for sample i. Each block of `inner_batch`
samples is summarised on the device (count, scaled sum and M2, min, max, count of values other than 0
and 1, and each value's histogram bin: `Summary`), and the host folds the summaries into float64 accumulators
(`stats.Accumulator.add_blocks`).
Memory is O(chunk), independent of the sample count, and results are bit-identical for any chunk size
(samples are keyed by index, blocks are fixed, and the host folds canonical groups of blocks in sample
order). The last chunk is padded to the fixed shape (the padding is masked out on the device), so one
compilation serves a whole run.

Several devices, also of several processes (`jax.distributed`, see `sift_jax.distributed`): each chunk's
samples are split over `jax.devices()` in order, and the summaries are gathered so that every process folds
the whole chunk into the same statistics.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax.errors import ConfigError
from sift_jax.stats import BINS_PER_DECADE, LOG10_LO, N_BINS, Accumulator, Stat

__all__ = ["Summary", "run", "sample_keys", "summarise"]

DEFAULT_CHUNK = 8192
BLOCK_MEMORY_BYTES = 2**31  # device memory a vmapped block of one point's samples may ask for (`block_width`)
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


def block_width(samples: int | None = None, sample_bytes: int = 0) -> int:
    """Samples per vmapped block: `inner_batch(samples)`, halved while width x sample_bytes exceeds
    `BLOCK_MEMORY_BYTES` (at least 1). Narrowed only for samples that need much memory (large prefill
    instances), so every other run keeps its block, and its bit-identical results.

    Args:
        samples: the run's sample count. sample_bytes: device memory one sample of one point needs, bytes.

    Returns:
        int, a power of two dividing `inner_batch(samples)`.

    Example:
        >>> block_width(100_000, 0) == inner_batch(100_000)
        True
        >>> block_width(100_000, 84_000_000) <= BLOCK_MEMORY_BYTES // 84_000_000
        True
    """
    width = inner_batch(samples)
    while width > 1 and width * sample_bytes > BLOCK_MEMORY_BYTES:
        width //= 2
    return width


def _in_axes(params, axes: tuple | None):
    """vmap in_axes over points: 0 for every leaf, or the per-leaf tuple `axes` (0 or None)."""
    return 0 if axes is None else jax.tree.unflatten(jax.tree.structure(params), list(axes))


class Summary(NamedTuple):
    """One metric over a chunk as the host statistics consume it (`stats.Accumulator.add_blocks`):
    per sample [P, S], per block [P, B] of `inner_batch` samples. Samples that are invalid, not finite
    or padding count nowhere. A block's values are scaled by a power of two (exact), summed to ~1e-11 as
    hi + lo (an exact sum of heads plus a sum of small tails), and their squared deviations taken around a
    float32 center; the host rebuilds mean = scale (hi + lo) / n and M2 in float64.

    Example:
        >>> import jax.numpy as jnp
        >>> s = summarise(jnp.array([[1.0, 3.0, jnp.inf, 5.0]]), jnp.array([[True, True, True, False]]))
        >>> s.value.tolist(), s.n.tolist(), s.min.tolist(), s.max.tolist()  # inf and the masked 5.0 do not count
        ([[1.0, 3.0, 0.0, 0.0]], [[2]], [[1.0]], [[3.0]])
        >>> s.n_nonbinary.tolist()  # 3.0 is neither 0 nor 1: not a 0/1 metric
        [[1]]
        >>> float(s.scale[0, 0] * (s.hi[0, 0] + s.lo[0, 0]) / s.n[0, 0])  # the mean
        2.0
    """

    value: jax.Array  # float[P, S]: the value where it counts, else 0
    bin: jax.Array  # int16[P, S]: its histogram bin (as stats._bin_index; 0 where it does not count)
    n: jax.Array  # int32[P, B]: samples that count
    scale: jax.Array  # float[P, B]: a power of two >= half their largest |value| (1 when all are 0)
    hi: jax.Array  # float[P, B]: exact sum of value / scale floored to the grid 2^(log2 W - 23) ...
    lo: jax.Array  # float[P, B]: ... plus the sum of the remainders (hi + lo: the sum to ~1e-11)
    center: jax.Array  # float[P, B]: float32 mean of value / scale, around which m2 is taken
    m2: jax.Array  # float[P, B]: sum of (value / scale - center)^2
    max: jax.Array  # float[P, B]: their largest value (-inf when none)
    min: jax.Array  # float[P, B]: their smallest value (+inf when none)
    n_nonbinary: jax.Array  # int32[P, B]: those whose value is neither 0 nor 1 (0: a 0/1 metric so far)


def _bins(x: jax.Array) -> jax.Array:
    """int16 histogram bin of each value: `stats._bin_index` computed on the device (float32)."""
    t = jnp.log10(jnp.clip(x.astype(jnp.float32), 1e-31, 1e31))
    return (jnp.clip(jnp.floor((t - LOG10_LO) * BINS_PER_DECADE), -1, N_BINS - 2) + 1).astype(jnp.int16)


def _exact_sum(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum of y float[..., W] (|y| < 2, W a power of two) over the last axis as hi + lo, to ~1e-11 relative.

    Each value is split exactly into a head on the grid 2^-g, g = 23 - log2 W (floor(y 2^g) 2^-g: scaling by
    a power of two and flooring are exact) and a tail below one grid step. Any sum of W heads is a multiple
    of 2^-g below 2W, which float32 holds exactly: hi is exact in any summation order. Only the tails'
    sum lo is rounded, relative to the tails' size. So means that differ by 1e-8 between sweep points stay
    ordered, which a float32 sum (1e-7) would not keep. (The textbook split (y + 1.5 W) - 1.5 W does not
    survive XLA's algebraic simplifier; float64 under x64 only makes the heads coarser than needed.)
    Returns (hi, lo) float[..., 1]."""
    grid = 2.0 ** (23 - int(math.log2(y.shape[-1])))
    head = jnp.floor(y * grid) / grid
    return jnp.sum(head, axis=-1, keepdims=True), jnp.sum(y - head, axis=-1, keepdims=True)


def summarise(value: jax.Array, ok: jax.Array) -> Summary:
    """Summary of one block of samples (what `_chunk` returns per block, B = 1).

    Args:
        value: float[P, W] metric values of W samples (W a power of two) for P points.
        ok: bool[P, W] the samples that count (valid and not padding); non-finite values never count.

    Returns:
        A `Summary` with per-sample fields [P, W] and per-block fields [P, 1].

    Example:
        Values spanning 1e30: the scale is a power of two, so value / scale is exact and cannot overflow.

        >>> import jax.numpy as jnp
        >>> s = summarise(jnp.array([[1e30, 3e30]]), jnp.array([[True, True]]))
        >>> float(s.scale[0, 0]) == 2.0 ** 101, round(float(s.scale[0, 0] * (s.hi[0, 0] + s.lo[0, 0]) / 2) / 2e30, 6)
        (True, 1.0)
    """
    ok = ok & jnp.isfinite(value)
    xz = jnp.where(ok, value, 0.0)
    n = jnp.sum(ok, axis=-1, dtype=jnp.int32, keepdims=True)
    largest = jnp.max(jnp.abs(xz), axis=-1, keepdims=True)
    _, exponent = jnp.frexp(largest)  # largest = m 2^e, m in [0.5, 1): |x| / 2^(e-1) < 2, exactly scaled
    scale = jnp.where(largest > 0, jnp.ldexp(jnp.ones_like(largest), exponent - 1), 1.0)
    y = xz / scale
    hi, lo = _exact_sum(y)
    center = (hi + lo) / jnp.maximum(n, 1)
    m2 = jnp.sum(jnp.where(ok, jnp.square(y - center), 0.0), axis=-1, keepdims=True)
    top = jnp.max(jnp.where(ok, value, -jnp.inf), axis=-1, keepdims=True)
    low = jnp.min(jnp.where(ok, value, jnp.inf), axis=-1, keepdims=True)
    nonbinary = jnp.sum((xz != 0) & (xz != 1), axis=-1, dtype=jnp.int32, keepdims=True)  # xz is 0 where not ok
    return Summary(xz, _bins(xz), n, scale, hi, lo, center, m2, top, low, nonbinary)


def raw_metrics(metric_fn: MetricFn, axes: tuple | None, params, idx, seed) -> dict:
    """{name: (value float[P, S], valid bool[P, S])} for sample indices idx uint32[S] and P stacked points.

    Leaves of `params` with axis None in `axes` are shared by all points: whatever depends only on them
    and on the sample key (random draws, gates, tables) is computed once per sample, not once per point.
    """
    per_sample = jax.vmap(metric_fn, in_axes=(0, None))
    return jax.vmap(per_sample, in_axes=(None, _in_axes(params, axes)))(sample_keys(seed, idx), params)


def _metrics_of(metric_fn: MetricFn, width: int, axes: tuple | None, params, idx, bounds, seed):
    """{name: Summary} of samples idx uint32[S] for P stacked points; only start <= i < limit count
    (bounds = uint32[2] (start, limit): the rest is padding, whose indices may wrap around 2^32).

    S is a multiple of `width` (`inner_batch(samples)`): samples are computed and summarised in blocks
    of that fixed width under `lax.map`, so XLA compiles the same per-block code whatever the chunk size
    or device count; this is what makes results bit-identical across chunk sizes and devices (XLA's CPU
    code for a vmapped batch depends on the batch width, down to the last ulp of exp/log).
    """
    TRACES["count"] += 1  # Python side effect: runs at trace time only

    def per_block(block):
        raw = raw_metrics(metric_fn, axes, params, block, seed)
        real = (block >= bounds[0]) & (block < bounds[1])
        return {name: summarise(value, valid & real) for name, (value, valid) in raw.items()}

    out = jax.lax.map(per_block, idx.reshape(-1, width))  # {name: Summary of [B, P, width or 1]}
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1).reshape(a.shape[1], -1), out)


@functools.partial(jax.jit, static_argnames=("metric_fn", "size", "width", "axes"))
def _chunk(
    metric_fn: MetricFn, params, start, limit, size: int, seed, width: int | None = None, axes: tuple | None = None
):
    """Summaries of samples start..start+size-1 on one device: {name: Summary}. start, limit: uint32
    scalars; samples from limit on are padding.

    width: samples per vmapped block (default `inner_batch()`); size must be a multiple of it."""
    idx = start + jnp.arange(size, dtype=jnp.uint32)
    return _metrics_of(metric_fn, width or inner_batch(), axes, params, idx, jnp.stack([start, limit]), seed)


def _mesh() -> jax.sharding.Mesh:
    """The 1-D mesh ("samples") over every device of every process, in `jax.devices()` order (the same in
    all processes); one device per process after `jax.distributed.initialize` on CPU."""
    return jax.sharding.Mesh(np.asarray(jax.devices()), ("samples",))


def _replicated(tree, mesh: jax.sharding.Mesh):
    """Every output leaf replicated on every device of `mesh` (an all-gather where it was split), so that
    each process can read the whole of it; a no-op for data movement only, so values are unchanged."""
    return jax.lax.with_sharding_constraint(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


@functools.partial(jax.jit, static_argnames=("metric_fn", "size", "width", "axes"))
def _chunk_shard_map(metric_fn: MetricFn, params, start, limit, size: int, seed, width: int, axes: tuple | None):
    """`_chunk` with the sample axis split over all devices (of all processes) by `jax.shard_map` on a 1-D
    mesh; the summaries are all-gathered (replicated) so every process reads the whole chunk.

    params, start, limit and seed are host values (NumPy, Python scalars or uncommitted arrays), equal in
    every process: jit places them replicated on the global mesh."""
    idx = start + jnp.arange(size, dtype=jnp.uint32)
    mesh = _mesh()
    spec = jax.sharding.PartitionSpec
    sharded = jax.shard_map(
        functools.partial(_metrics_of, metric_fn, width, axes),
        mesh=mesh,
        in_specs=(spec(), spec("samples"), spec(), spec()),
        out_specs=spec(None, "samples"),
    )
    return _replicated(sharded(params, idx, jnp.stack([start, limit]), seed), mesh)


@jax.jit
def _gather(global_parts):
    """Replicate summaries split over the global mesh (see `_launch`, several processes)."""
    return _replicated(global_parts, _mesh())


SHARDING_MODES = ("dispatch", "shard_map")


def _launch(metric_fn, device_params, start: int, limit: int, size: int, seed: int, mode: str, width: int, axes):
    """Start one chunk asynchronously; returns what `_collect` turns into host arrays.

    One device: `_chunk`. Several devices, mode "dispatch" (default): the same single-device program
    runs on each device's contiguous share of the samples (asynchronous dispatch, no host threads):
    bit-identical to one device. With several processes each runs the shares of its own devices
    (`device_params` holds its local devices' params, share i going to `jax.devices()[i]`), and the
    shares are assembled into global arrays and all-gathered (`_gather`): still bit-identical, and every
    process reads the same summaries. Mode "shard_map": one SPMD program over a 1-D mesh of all devices
    of all processes; XLA's partitioned CPU code differs from the single-device code in the last float32
    ulps (measured on jax 0.10.2: up to 2 ulps, in about half of the SiftMoE energies on Mixtral; bit-
    identical between 2 processes and 1 process with 2 devices), so it equals one device only to rounding.
    """
    start, limit = np.uint32(start), np.uint32(limit)  # traced as uint32: runs may reach 2^32 - 1 samples
    n_dev = jax.device_count()
    if n_dev == 1:
        return [_chunk(metric_fn, device_params[0][1], start, limit, size, seed, width, axes)]
    if mode == "shard_map":
        return [_chunk_shard_map(metric_fn, device_params, start, limit, size, seed, width, axes)]
    share = size // n_dev
    parts = [
        _chunk(metric_fn, p, start + np.uint32(i * share), limit, share, seed, width, axes) for i, p in device_params
    ]
    if jax.process_count() == 1:
        return parts
    sharding = jax.sharding.NamedSharding(_mesh(), jax.sharding.PartitionSpec(None, "samples"))

    def assemble(*shards):  # this process's shards of one leaf ([P, share] or [P, share / width] each)
        shape = (shards[0].shape[0], shards[0].shape[1] * n_dev)
        return jax.make_array_from_single_device_arrays(shape, sharding, list(shards))

    return [_gather(jax.tree.map(assemble, *parts))]


def _collect(parts) -> dict:
    host = jax.device_get(parts)
    if len(host) == 1:
        return host[0]
    return {k: host[0][k]._make(np.concatenate(f, axis=1) for f in zip(*(h[k] for h in host))) for k in host[0]}


def _device_params(params, mode: str) -> list:
    """What `_launch` takes as `device_params`. One device: [(0, params)]. "dispatch" over several: (i,
    params on device i) for each device i of `jax.devices()` that this process owns. "shard_map": params
    as host values (committed arrays fetched to NumPy), which jit places replicated on the global mesh."""
    devices = jax.devices()
    if len(devices) == 1:
        return [(0, params)]
    if mode == "shard_map":

        def host(leaf):
            committed = isinstance(leaf, jax.Array) and getattr(leaf, "_committed", False)
            return np.asarray(leaf) if committed and leaf.is_fully_addressable else leaf

        return jax.tree.map(host, params)
    me = jax.process_index()
    return [(i, jax.device_put(params, d)) for i, d in enumerate(devices) if d.process_index == me]


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


def run(
    metric_fn: MetricFn,
    params,
    n_points: int,
    samples: int,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    sharding: str = "dispatch",
    axes: tuple | None = None,
) -> list[dict[str, Stat]]:
    """Stream `samples` samples of `metric_fn` for each of `n_points` stacked parameter sets.

    Args:
        metric_fn: hashable callable (key, params_of_one_point) -> {name: (value, valid)}, with value a
            float scalar (the metric's unit) and valid a bool scalar; it is a static jit argument, so
            passing the same object again reuses the compiled program. If it has a method
            `sample_bytes(params) -> int` (the device memory of one sample of one point), the vmapped
            block of samples is narrowed so that one point's block fits `BLOCK_MEMORY_BYTES` (`block_width`;
            the n_points points of a call multiply it).
        params: pytree whose leaves carry a leading axis of size `n_points` (those with axis 0 in `axes`).
        n_points: number of stacked parameter sets P.
        samples: samples per point, in [1, 2^32 - 1]. seed: run seed in [0, 2^31 - 1]; sample i uses
            `sample_keys(seed, [i])`. chunk_size: samples per compiled call (memory only; rounded up to
            a multiple of devices x `inner_batch(samples)`); results do not depend on it.
        progress: optional callback with the number of samples finished per point.
        sharding: how samples are split over several devices: "dispatch" (the single-device program on
            each device's share: bit-identical to one device) or "shard_map" (one SPMD program over a 1-D
            mesh; equal to one device to float rounding: per-sample values within 2 float32 ulps on
            XLA:CPU). Both work across processes after `jax.distributed.initialize` (see
            `sift_jax.distributed`): every process must then make the same calls with the same arguments,
            the samples are split over the devices of all processes, and every process gets the same
            statistics (bit-identical to one device under "dispatch").
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
    device_params = _device_params(params, sharding)
    accs: dict[str, Accumulator] | None = None  # one accumulator per metric, vectorised over the points
    # per point, so a sweep point and `simulate` of the same scenario keep the same block (bit-identical);
    # the points of one call multiply the memory
    sample_bytes = metric_fn.sample_bytes(params) if hasattr(metric_fn, "sample_bytes") else 0
    width = block_width(samples, sample_bytes)
    if axes is not None and (len(axes) != len(jax.tree.leaves(params)) or 0 not in axes):
        raise ConfigError("axes", axes, "one entry (0 or None) per leaf of params, at least one 0")
    pending = _launch(
        metric_fn, device_params, 0, samples, size, seed, sharding, width, axes
    )  # ahead: host merges overlap compute
    for start in range(0, samples, size):
        out = pending
        if start + size < samples:
            pending = _launch(metric_fn, device_params, start + size, samples, size, seed, sharding, width, axes)
        host = _collect(out)
        take = min(size, samples - start)
        if accs is None:
            accs = {name: Accumulator(points=n_points) for name in host}
        for name, summary in host.items():
            accs[name].add_blocks(summary, take, width)
        if progress is not None:
            progress(start + take)
    per_metric = {name: acc.results() for name, acc in accs.items()}
    return [{name: stats[p] for name, stats in per_metric.items()} for p in range(n_points)]
