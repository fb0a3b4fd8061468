"""The best candidate within a deviation budget, for one eta or a whole axis of them (custom vmap).

A decision picks, among candidates with keys (energy, dev), the lexicographic minimum of those with
dev <= eta (first index on exact ties). The candidates do not depend on eta, so under `vmap` over eta
alone (a sweep's eta axis) they are ranked once: candidate c is the answer exactly for
dev_c <= eta < hi_c, where hi_c is the least dev among the candidates that beat c in the order
(energy, dev, index) (the staircase of the Pareto front; the interval is empty off the front). A point
of the axis then costs two comparisons per candidate and one gather instead of the masked two-key
search. Everywhere else (one eta, or eta and candidates batched together) the masked search runs.

Both loops of `_staircase` are `lax.fori_loop`s on purpose: XLA's CPU fusion otherwise duplicates the
elementwise chains into every consumer (the hi chain into each point, the count into each gather),
which measured 2-20x slower; a loop's result is materialised once (BENCHMARKS.md, "Sweeps").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["STAIRCASE_MIN_POINTS", "best_within"]

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
    lo = jnp.where(jnp.isfinite(energy), dev, jnp.inf)  # an infinite energy is never a candidate
    e_t, d_t = jnp.moveaxis(energy, -1, 0), jnp.moveaxis(lo, -1, 0)  # [C, ...]: rows of candidates
    index = jnp.arange(c).reshape((c,) + (1,) * (e_t.ndim - 1))

    def lower_stair(j, hi):  # hi[c] = min(hi[c], dev_j) for every c that candidate j beats
        e_j, d_j = e_t[j], d_t[j]
        beats = (e_j < e_t) | ((e_j == e_t) & ((d_j < d_t) | ((d_j == d_t) & (j < index))))
        return jnp.minimum(hi, jnp.where(beats, d_j, jnp.inf))

    hi = jax.lax.fori_loop(0, c, lower_stair, jnp.full(e_t.shape, jnp.inf, lo.dtype))

    def add_winner(i, pick):  # pick = 1 + the candidate whose interval holds eta (0: none)
        return pick + jnp.where((d_t[i] <= eta) & (eta < hi[i]), i + 1, 0)

    shape = jnp.broadcast_shapes(eta.shape, lo.shape[:-1])
    pick = jax.lax.fori_loop(0, c, add_winner, jnp.zeros(shape, jnp.int32))
    lead = energy.shape[:-1]
    pad = lambda x, v: jnp.concatenate([jnp.full(lead + (1,), v, x.dtype), x], axis=-1).reshape(-1)  # noqa: E731
    flat = jnp.arange(math.prod(lead), dtype=jnp.int32).reshape(lead) * (c + 1) + pick
    return (jnp.take(pad(energy, jnp.inf), flat), jnp.take(pad(lo, jnp.inf), flat), jnp.take(pad(code, 0), flat))


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
        (energy, dev, code) of the chosen candidate, scalars; (inf, inf, 0) when none qualifies. A
        candidate with an infinite dev never qualifies, not even for eta = inf.

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
    # eta = inf (allowed) means "any finite deviation": clamped, so an infinite dev never qualifies,
    # and the staircase's half-open intervals [dev, hi) keep the front's last step (hi = inf)
    eta = jnp.minimum(jnp.asarray(eta, energy.dtype), jnp.finfo(energy.dtype).max)
    return _best(eta, energy, dev, code)
