"""The best candidate within a deviation budget, for one eta or a whole axis of them (custom vmap).

A decision picks, among candidates with keys (energy, dev), the lexicographic minimum of those with
dev <= eta. The candidates do not depend on eta, so under `vmap` over eta alone (a sweep's eta axis)
they are ranked once: sorted by (energy, dev, index), the running minimum of dev is a staircase, and
the answer for eta is the first sorted candidate where the staircase is <= eta. A point of the axis
then costs one comparison per candidate instead of the masked two-key search (measured on Mixtral:
see BENCHMARKS.md, "Sweeps"). Everywhere else (one eta, or eta and candidates batched together) the
masked search runs directly.
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp

__all__ = ["best_within", "STAIRCASE_MIN_POINTS"]

STAIRCASE_MIN_POINTS = 4  # a batch of etas at least this large over shared candidates uses the staircase


def _masked(eta, energy, dev, code):
    """Masked search: eta float[...] (broadcast with the candidates' leading dims), candidates [..., C]."""
    valid = dev <= eta[..., None]
    e_min = jnp.min(jnp.where(valid, energy, jnp.inf), axis=-1, keepdims=True)
    tie = valid & (energy == e_min)
    d_min = jnp.min(jnp.where(tie, dev, jnp.inf), axis=-1, keepdims=True)
    first = jnp.argmax(tie & (dev == d_min), axis=-1)
    picked = jnp.take_along_axis(jnp.broadcast_to(code, tie.shape), first[..., None], axis=-1)[..., 0]
    found = jnp.isfinite(e_min[..., 0])
    return e_min[..., 0], jnp.where(found, d_min[..., 0], jnp.inf), jnp.where(found, picked, 0)


def _staircase(eta, energy, dev, code):
    """eta float[P, ...] against shared candidates [..., C]: outputs [P, ...] (see the module docstring)."""
    c = energy.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), energy.shape)
    e_s, d_s, _, c_s = jax.lax.sort((energy, dev, idx, code), dimension=-1, num_keys=3)
    stairs = jax.lax.cummin(jnp.where(jnp.isfinite(e_s), d_s, jnp.inf), axis=energy.ndim - 1)
    # pos[P, ...] = steps above eta (c = none qualifies), summed step by step: elementwise over the
    # points and samples (a reduction over the minor candidate axis is ~10x slower on CPU)
    pos = functools.reduce(operator.add, [(stairs[..., j] > eta).astype(jnp.int32) for j in range(c)])
    lead = energy.shape[:-1]
    pad = lambda x, v: jnp.concatenate([x, jnp.full(lead + (1,), v, x.dtype)], axis=-1).reshape(-1)  # noqa: E731
    row = jnp.arange(math.prod(lead), dtype=jnp.int32).reshape(lead) * (c + 1)
    flat = jnp.broadcast_to(row, pos.shape) + pos
    return (jnp.take(pad(e_s, jnp.inf), flat), jnp.take(pad(d_s, jnp.inf), flat), jnp.take(pad(c_s, 0), flat))


@jax.custom_batching.custom_vmap
def _best(eta, energy, dev, code):
    return _masked(eta, energy, dev, code)


@_best.def_vmap
def _best_vmap(axis_size, in_batched, eta, energy, dev, code):
    eta_b, *cand_b = in_batched
    if eta_b and not any(cand_b) and axis_size >= STAIRCASE_MIN_POINTS:
        return _staircase(eta, energy, dev, code), (True, True, True)
    # peel this level off: the batch axis becomes a leading dim of every argument (size 1 if unbatched),
    # and `_best` is bound again one level down, where an eta axis may still be handled as a staircase
    lift = lambda x, b: x if b else x[None]  # noqa: E731
    out = _best(*(lift(x, b) for x, b in zip((eta, energy, dev, code), in_batched)))
    return tuple(jnp.broadcast_to(x, (axis_size,) + x.shape[1:]) for x in out), (True, True, True)


def best_within(eta, energy, dev, code):
    """Lexicographic minimum of (energy, dev) over the candidates with dev <= eta; first index on ties.

    Args:
        eta: float[] deviation budget (may be traced; batched under vmap).
        energy: float[C] candidate energies (J; inf = not a candidate).
        dev: float[C] candidate deviations (the bound's unit).
        code: int32[C] what to report for each candidate (e.g. an encoded slot assignment).

    Returns:
        (energy, dev, code) of the chosen candidate, scalars; (inf, inf, 0) when none qualifies.

    Example:
        Three candidates; the cheapest one is too far from the Top-K output for eta = 0.5, and the two
        others tie in energy, so the lower deviation wins. Under vmap over eta alone the candidates are
        ranked once (the staircase) with the same answers:

        >>> import jax, jax.numpy as jnp
        >>> energy, dev = jnp.array([1.0, 3.0, 3.0]), jnp.array([0.9, 0.4, 0.2])
        >>> code = jnp.array([10, 11, 12], jnp.int32)
        >>> [int(best_within(jnp.float32(eta), energy, dev, code)[2]) for eta in (0.1, 0.3, 0.5, 1.0)]
        [0, 12, 12, 10]
        >>> batch = jax.vmap(best_within, in_axes=(0, None, None, None))
        >>> batch(jnp.array([0.1, 0.3, 0.5, 1.0]), energy, dev, code)[2].tolist()
        [0, 12, 12, 10]
        >>> float(best_within(jnp.float32(0.1), energy, dev, code)[0])  # nothing within 0.1
        inf
    """
    return _best(jnp.asarray(eta, energy.dtype), energy, dev, code)
