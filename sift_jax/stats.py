"""Streaming, mergeable statistics in float64 on the host: moments (Chan's merge), min and max, a
log-spaced histogram for quantiles and tail diagnostics, and 95% confidence intervals (Wilson's for 0/1
metrics, the normal approximation otherwise).

Two ways in. `Accumulator.add` takes raw values and masks (any split into calls). `add_blocks` takes what
the Monte Carlo runner's compiled chunks return (`montecarlo.Summary`): per block of `width` samples the
count, the sum (as hi + lo, to ~1e-11) and the sum of squared deviations, computed on the device after an
exact power-of-two scaling (so heavy tails cannot overflow float32), the min, max and number of values
other than 0 and 1, plus each sample's value and histogram bin. Either way samples are folded in canonical
groups of `BLOCK` samples (of whole blocks) in sample order, so every statistic is bit-identical whatever
chunk size produced the samples.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

__all__ = ["Accumulator", "Stat"]

BLOCK = 4096
LOG10_LO, LOG10_HI, BINS_PER_DECADE = -30, 30, 40
N_BINS = (LOG10_HI - LOG10_LO) * BINS_PER_DECADE + 2  # + [0 or below 1e-30] + [above 1e30]
TAIL_FRACTION = 1e-3  # tail share: part of the sum carried by the top 0.1% of samples
RELIABLE_TAIL_SHARE = 0.5  # the CI is flagged unreliable when the top 0.1% carry more than this
MIN_RELIABLE_N = 30  # fewer valid samples: the CI is flagged unreliable (usual rule for a normal approximation)
Z95 = 1.959963984540054  # Phi^-1(0.975): the two-sided 95% quantile of the standard normal

ROW_GROUP = 16  # points folded together: [16, BLOCK] float64 temporaries (512 KiB) stay in cache


@dataclasses.dataclass(frozen=True)
class Stat:
    """Summary of one metric over the valid samples (what `SimResult.metrics[name]` holds).

    Values are in the metric's own unit (J, s, or a fraction); `Accumulator.result` builds them.

    Attributes:
        mean: sample mean (None when n == 0); exact for constant data, and k / n for a 0/1 metric.
        ci95: (lo, hi) 95% CI of the mean. For a 0/1 metric (every valid value is exactly 0 or 1, e.g.
            `infeasible_rate`; detected from the data, see `Accumulator`) Wilson's score interval for
            k ones in n, which stays inside [0, 1] and is not [0, 0] or [1, 1] when k = 0 or n (it is
            also a sound interval for any [0, 1]-valued metric that was only ever 0 or 1). Otherwise the
            normal approximation mean -+ `Z95` std / sqrt(n) (zero width for constant data).
        n: valid samples. n_invalid: samples where the metric was undefined (e.g. infeasible) or not finite.
        std: sample standard deviation. p50, p90, p99: quantiles from the log histogram, interpolated
            linearly within their bin and clamped to the data's [min, max]: always within the observed
            range, exact for constant data and for 0/1 data, else within one bin (rel. 6%) of the order
            statistic x_(ceil(q n)); values <= 1e-30 (zero, negatives) share one bin, read as lying
            between min and 0. max: largest value.
        tail_share: fraction of the sum carried by the top 0.1% of samples.
        reliable: whether the CI can be trusted. 0/1 metrics: n >= `MIN_RELIABLE_N` (30; Wilson's interval
            needs no tail check: rare events are what it is for). Other metrics: n >= `MIN_RELIABLE_N` and tail_share
            <= `RELIABLE_TAIL_SHARE` (0.5), else the mean is driven by a few samples; or all n >= 2 values
            equal (a deterministic metric, whose zero-width CI is exact).

    Example:
        100 equal values: zero spread, so the CI collapses onto the mean and every quantile is the value;
        the top 0.1% (one sample) carries 1/100 of the sum.

        >>> import numpy as np
        >>> acc = Accumulator()
        >>> acc.add(np.full(100, 7.0), np.ones(100, bool))
        >>> s = acc.result()
        >>> s.mean, s.ci95, s.n, s.std, s.max, (s.p50, s.p90, s.p99)
        (7.0, (7.0, 7.0), 100, 0.0, 7.0, (7.0, 7.0, 7.0))
        >>> round(s.tail_share, 6), s.reliable
        (0.01, True)
        >>> s.to_dict()["ci95"]  # JSON-ready: the CI as a list
        [7.0, 7.0]

        A rate that was never 1 in 100 samples: Wilson's interval, not [0, 0].

        >>> acc = Accumulator()
        >>> acc.add(np.zeros(100), np.ones(100, bool))
        >>> r = acc.result()
        >>> r.mean, r.ci95[0], round(r.ci95[1], 4), r.p99
        (0.0, 0.0, 0.037, 0.0)
    """

    mean: float | None
    ci95: tuple[float, float] | None
    n: int
    n_invalid: int
    std: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    tail_share: float | None
    reliable: bool

    def to_dict(self) -> dict:
        """The JSON form: a plain dict of the fields, `ci95` as a list (or None)."""
        d = dataclasses.asdict(self)
        d["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return d


def _bin_index(x: np.ndarray) -> np.ndarray:
    """Histogram bin of each value: 0 for x <= 1e-30 (incl. 0), last for x > 1e30.

    Computed in float32 (half the cost of float64): a value is misbinned only within ~1e-5 (relative) of
    a bin edge, far inside the bins' 6% width."""
    t = np.log10(np.clip(x, 1e-31, 1e31, dtype=np.float32))
    t -= LOG10_LO
    t *= BINS_PER_DECADE
    np.floor(t, out=t)
    np.clip(t, -1, N_BINS - 2, out=t)
    return t.astype(np.int64) + 1


@functools.cache
def _bin_edges() -> np.ndarray:
    return 10.0 ** (LOG10_LO + np.arange(N_BINS - 1) / BINS_PER_DECADE)


class Accumulator:
    """Streaming statistics of one metric; feed values and validity masks in sample order.

    Memory is O(`N_BINS`) whatever the sample count: values are folded in canonical blocks of `BLOCK`
    samples (Chan's merge of mean and M2, min, max, a log-spaced histogram), so the result does not depend
    on how the samples were split into `add` calls. Invalid samples (mask False, or NaN/inf values) are
    only counted (`Stat.n_invalid`). A metric is treated as 0/1 (Wilson CI) when every valid value is
    exactly 0 or 1: the fold counts the valid values that are neither, so one other value anywhere makes
    it an ordinary metric. This needs no declaration per metric, and a [0, 1] fraction that happens to be
    only 0 or 1 in a run (e.g. always 0) gets a Wilson interval, which is sound for it too.

    Args:
        points: None for one series (`add` float[n], `result()`), or P to fold P series at once (`add`
            float[P, n], `results()`): what a sweep does with its points, with array operations over them.

    Example:
        Mean 2.5 and sample standard deviation sqrt(5/3) of 1, 2, 3, 4; the masked-out value and the
        NaN are counted as invalid:

        >>> import numpy as np
        >>> acc = Accumulator()
        >>> acc.add(np.array([1.0, 2.0, 99.0]), np.array([True, True, False]))
        >>> acc.add(np.array([3.0, 4.0, np.nan]), np.ones(3, bool))
        >>> s = acc.result()
        >>> s.mean, s.n, s.n_invalid, s.max, round(s.std, 6) == round((5 / 3) ** 0.5, 6)
        (2.5, 4, 2, 4.0, True)
        >>> s.reliable  # fewer than MIN_RELIABLE_N valid samples
        False
        >>> x = np.random.default_rng(0).exponential(size=10_000)
        >>> one, two = Accumulator(), Accumulator()
        >>> one.add(x, np.ones(x.size, bool))
        >>> for part in np.array_split(x, 7):  # any split into calls gives bit-identical statistics
        ...     two.add(part, np.ones(part.size, bool))
        >>> one.result() == two.result()
        True
        >>> both = Accumulator(points=2)  # two series at once, each exactly as on its own
        >>> both.add(np.stack([x, 2 * x]), np.ones((2, x.size), bool))
        >>> first, second = both.results()
        >>> first == one.result(), second.mean / first.mean
        (True, 2.0)
    """

    def __init__(self, points: int | None = None):
        self.points = points
        p = 1 if points is None else int(points)
        self.n = np.zeros(p, np.int64)
        self.n_invalid = np.zeros(p, np.int64)
        self.mean = np.zeros(p)
        self.m2 = np.zeros(p)
        self.max = np.full(p, -math.inf)
        self.min = np.full(p, math.inf)
        self.n_nonbinary = np.zeros(p, np.int64)  # valid values other than 0 and 1
        self.counts = np.zeros((p, N_BINS), np.int64)
        self.sums = np.zeros((p, N_BINS), np.float64)
        self._buf_x: list[np.ndarray] = []
        self._buf_v: list[np.ndarray] = []
        self._buf_blocks: list = []  # add_blocks: summaries not yet folded (less than a group)
        self._mode, self._width = None, 0  # fed by add ("raw") or add_blocks ("blocks")
        self._buffered = 0

    def add(self, values: np.ndarray, valid: np.ndarray) -> None:
        """Append samples in sample order.

        Args:
            values: float[n] metric values (any shape; flattened), or float[P, n] with `points=P`, in the
                metric's unit.
            valid: bool mask of the same shape as `values`.
        """
        if self._mode == "blocks":
            raise ValueError("add after add_blocks: feed an accumulator one way")
        self._mode = "raw"
        rows = len(self.n)
        self._buf_x.append(np.asarray(values, np.float64).reshape(rows, -1))
        self._buf_v.append(np.asarray(valid, bool).reshape(rows, -1))
        self._buffered += self._buf_x[-1].shape[1]
        if self._buffered >= BLOCK:
            x, v = (
                (self._buf_x[0], self._buf_v[0])
                if len(self._buf_x) == 1
                else (np.concatenate(self._buf_x, axis=1), np.concatenate(self._buf_v, axis=1))
            )
            full = (x.shape[1] // BLOCK) * BLOCK
            for start in range(0, full, BLOCK):
                self._block(x[:, start : start + BLOCK], v[:, start : start + BLOCK])
            self._buf_x, self._buf_v = [x[:, full:]], [v[:, full:]]
            self._buffered = x.shape[1] - full

    def _block(self, x: np.ndarray, v: np.ndarray) -> None:
        """Fold one block x float[P, b] (mask v) into every point's moments and histogram, `ROW_GROUP`
        points at a time (the temporaries then stay in cache)."""
        for r0 in range(0, x.shape[0], ROW_GROUP):
            rows = slice(r0, r0 + ROW_GROUP)
            self._block_rows(rows, x[rows], v[rows])

    def _block_rows(self, rows: slice, x: np.ndarray, v: np.ndarray) -> None:
        """Invalid entries are zeroed rather than compacted away (fewer passes over the block); they land
        in bin 0 with weight 0 and are taken out of its count."""
        v = v & np.isfinite(x)
        n_b = np.count_nonzero(v, axis=1)
        xz = np.where(v, x, 0.0)
        mean_b = xz.sum(axis=1) / np.maximum(n_b, 1)
        dev = np.where(v, xz - mean_b[:, None], 0.0)
        self._merge(
            rows,
            n_b,
            mean_b,
            np.einsum("ij,ij->i", dev, dev),
            np.max(x, axis=1, where=v, initial=-math.inf),
            np.min(x, axis=1, where=v, initial=math.inf),
            np.count_nonzero((xz != 0.0) & (xz != 1.0), axis=1),
        )
        self._histogram(rows, _bin_index(xz), xz, x.shape[1] - n_b)

    def _merge(self, rows, n_b, mean_b, m2_b, max_b, min_b, nonbinary_b) -> None:
        """Chan's merge of one group's moments (per point: count, mean, M2) into the running ones; max, min
        and the count of values other than 0 and 1 merge exactly."""
        n_a, mean_a = self.n[rows], self.mean[rows]
        n = n_a + n_b
        some = n_b > 0
        delta = mean_b - mean_a
        self.mean[rows] = np.where(some, mean_a + delta * n_b / np.maximum(n, 1), mean_a)
        self.m2[rows] = np.where(
            some, self.m2[rows] + m2_b + delta * delta * n_a * n_b / np.maximum(n, 1), self.m2[rows]
        )
        self.n[rows] = n
        self.max[rows] = np.maximum(self.max[rows], max_b)
        self.min[rows] = np.minimum(self.min[rows], min_b)
        self.n_nonbinary[rows] += nonbinary_b

    def _histogram(self, rows, bins: np.ndarray, xz: np.ndarray, n_out: np.ndarray) -> None:
        """Add one group's samples (bins int[k, b], values xz with the invalid ones zeroed, in bin 0) to
        the histograms of points `rows`; n_out[k] invalid samples are taken out of bin 0's count."""
        k = xz.shape[0]
        idx = (bins.astype(np.intp) + (np.arange(k) * N_BINS)[:, None]).ravel()
        self.counts[rows] += np.bincount(idx, minlength=k * N_BINS).reshape(k, N_BINS)
        self.counts[rows, 0] -= n_out
        self.n_invalid[rows] += n_out
        self.sums[rows] += np.bincount(idx, weights=xz.ravel(), minlength=k * N_BINS).reshape(k, N_BINS)

    def add_blocks(self, blocks, take: int, width: int) -> None:
        """Append `take` samples summarised by a compiled chunk (`montecarlo.Summary`), in sample order.

        Args:
            blocks: a `montecarlo.Summary` of host arrays: value float[P, S] (0 where invalid), bin int[P, S],
                and per block of `width` samples n int[P, B], scale, hi, lo, center, m2, max, min float[P, B],
                n_nonbinary int[P, B].
            take: how many of the S samples are real (the rest is padding, which the blocks exclude).
            width: samples per block (a divisor of `BLOCK` or a multiple of it).
        """
        if self._mode == "raw":
            raise ValueError("add_blocks after add: feed an accumulator one way")
        self._mode, self._width = "blocks", width
        self._buf_blocks.append(_cut(blocks, 0, take, width))
        self._buffered += take
        if self._buffered >= max(BLOCK, width):
            self._fold_blocks(final=False)

    def _fold_blocks(self, final: bool) -> None:
        """Fold the buffered blocks group by group (the last, partial group only when `final`)."""
        width = self._width
        group = max(BLOCK, width)  # whole blocks, and canonical: it depends on the sample count only
        parts = self._buf_blocks
        merged = parts[0] if len(parts) == 1 else parts[0]._make(np.concatenate(a, axis=1) for a in zip(*parts))
        total = merged.value.shape[1]
        stop = total if final else (total // group) * group
        per = group // width
        for g0 in range(0, stop, group):
            s = slice(g0, min(g0 + group, stop))
            b = slice(g0 // width, g0 // width + per)
            n_blk = merged.n[:, b].astype(np.int64)
            scale = merged.scale[:, b].astype(np.float64)  # float64 from here on
            mean_y = (merged.hi[:, b].astype(np.float64) + merged.lo[:, b]) / np.maximum(n_blk, 1)
            # m2 was taken around the float32 center: sum (y - c)^2 = M2 + n (mean - c)^2
            m2_y = np.maximum(merged.m2[:, b] - n_blk * (mean_y - merged.center[:, b]) ** 2, 0.0)
            mean_blk = scale * mean_y
            n_b = n_blk.sum(axis=1)
            mean_b = (n_blk * mean_blk).sum(axis=1) / np.maximum(n_b, 1)
            m2_b = (scale * scale * m2_y).sum(axis=1) + (n_blk * (mean_blk - mean_b[:, None]) ** 2).sum(axis=1)
            self._merge(
                slice(None),
                n_b,
                mean_b,
                m2_b,
                merged.max[:, b].max(axis=1).astype(np.float64),
                merged.min[:, b].min(axis=1).astype(np.float64),
                merged.n_nonbinary[:, b].sum(axis=1),
            )
            n_out = (s.stop - s.start) - n_b
            for r0 in range(0, len(n_b), ROW_GROUP):
                rows = slice(r0, r0 + ROW_GROUP)
                self._histogram(rows, merged.bin[rows, s], merged.value[rows, s].astype(np.float64), n_out[rows])
        self._buf_blocks = [_cut(merged, stop, total, width)] if stop < total else []
        self._buffered = total - stop

    def _flush(self) -> None:
        if self._buf_blocks:
            self._fold_blocks(final=True)
        elif self._buffered:
            self._block(np.concatenate(self._buf_x, axis=1), np.concatenate(self._buf_v, axis=1))
            self._buf_x, self._buf_v, self._buffered = [], [], 0

    def result(self) -> Stat:
        """Flush the partial last block and summarise (an accumulator made without `points`).

        Returns:
            The `Stat` of every sample added so far (mean etc. None when no sample was valid).
        """
        if self.points is not None:
            raise ValueError("an accumulator of several points: use results()")
        self._flush()
        return self._summaries()[0]

    def results(self) -> list[Stat]:
        """Flush the partial last block and summarise each point (an accumulator made with `points=P`).

        Returns:
            P `Stat`s, in point order.
        """
        self._flush()
        return self._summaries()

    def _summaries(self) -> list[Stat]:
        """One Stat per point; the quantiles and tail shares of all points are computed at once."""
        n = self.n
        constant = self.min == self.max
        binary = self.n_nonbinary == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            std = np.where((n > 1) & ~constant, np.sqrt(self.m2 / np.maximum(n - 1, 1)), 0.0)
            half = Z95 * std / np.sqrt(np.maximum(n, 1))
            ones = n - self.counts[:, 0]  # for a 0/1 metric: bin 0 holds exactly its valid zeros
            mean = np.where(binary, ones / np.maximum(n, 1), np.where(constant, self.min, self.mean))
            w_lo, w_hi = _wilson(ones, n)
            ci_lo = np.where(binary, w_lo, mean - half)
            ci_hi = np.where(binary, w_hi, mean + half)
        # only the bins between the lowest and highest occupied ones (plus an empty one below) matter
        used = np.flatnonzero(self.counts.any(axis=0))
        first, stop = (max(int(used[0]) - 1, 0), int(used[-1]) + 1) if used.size else (0, 1)
        counts, sums = self.counts[:, first:stop], self.sums[:, first:stop]
        cum = np.cumsum(counts, axis=1)
        with np.errstate(invalid="ignore"):  # points without samples (min inf, max -inf) give NaN, unused
            p50, p90, p99 = (
                _quantiles(counts, cum, n, self.min, self.max, q, first).tolist() for q in (0.5, 0.9, 0.99)
            )
        tail = _tail_shares(counts, sums, n, cum)
        enough = n >= MIN_RELIABLE_N
        reliable = np.where(binary, enough, (enough & (tail <= RELIABLE_TAIL_SHARE)) | (constant & (n >= 2)))
        out = []
        for p, (n_p, mu, lo, hi, sd, top) in enumerate(
            zip(n.tolist(), mean.tolist(), ci_lo.tolist(), ci_hi.tolist(), std.tolist(), self.max.tolist())
        ):
            if n_p == 0:
                out.append(Stat(None, None, 0, int(self.n_invalid[p]), None, None, None, None, None, None, False))
                continue
            out.append(
                Stat(
                    mean=mu,
                    ci95=(lo, hi),
                    n=n_p,
                    n_invalid=int(self.n_invalid[p]),
                    std=sd,
                    p50=p50[p],
                    p90=p90[p],
                    p99=p99[p],
                    max=top,
                    tail_share=float(tail[p]),
                    reliable=bool(reliable[p]),
                )
            )
        return out


PER_SAMPLE = ("value", "bin")  # the fields of a block summary with one column per sample


def _cut(summary, start: int, stop: int, width: int):
    """Samples start..stop-1 of a block summary (start a multiple of width) and the blocks they touch."""
    blocks = slice(start // width, -(-stop // width))
    return summary._make(
        a[:, start:stop] if f in PER_SAMPLE else a[:, blocks] for f, a in zip(summary._fields, summary)
    )


def _row(a: np.ndarray, i: np.ndarray) -> np.ndarray:
    """a[p, i[p]] for every row p."""
    return np.take_along_axis(a, i[:, None], axis=1)[:, 0]


def _wilson(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score 95% interval (lo, hi), float[P] each, for k[P] successes in n[P] trials:
    (k + z^2/2 -+ z sqrt(k (n - k) / n + z^2/4)) / (n + z^2), z = `Z95`; exactly 0 (1) at k = 0 (k = n)."""
    k, n = k.astype(np.float64), n.astype(np.float64)
    z2 = Z95 * Z95
    with np.errstate(divide="ignore", invalid="ignore"):
        center = (k + z2 / 2) / (n + z2)
        half = Z95 * np.sqrt(np.maximum(k * (n - k) / n, 0.0) + z2 / 4) / (n + z2)
    lo = np.where(k <= 0, 0.0, np.clip(center - half, 0.0, 1.0))
    hi = np.where(k >= n, 1.0, np.clip(center + half, 0.0, 1.0))
    return lo, hi


def _quantiles(
    counts: np.ndarray, cum: np.ndarray, n: np.ndarray, low: np.ndarray, top: np.ndarray, q: float, first: int = 0
) -> np.ndarray:
    """Quantile q of every point, float[P], from histograms counts int[P, W] (cumulative sums `cum`) of
    n[P] samples with minima low[P] and maxima top[P]. The quantile's bin is the one holding the order
    statistic x_(ceil(q n)); within it the value is interpolated linearly between the bin's edges narrowed
    to [low, top] (bin 0, values <= 1e-30: between low and 0 clamped to [low, top]), then clamped to
    [low, top]: so constant data give the value exactly. The W columns are bins first..first+W-1: every
    bin below is empty, and so is bin `first` when first > 0."""
    target = q * n
    b = first + np.count_nonzero(cum < target[:, None], axis=1)  # = searchsorted(cum, target, "left") per row
    edges = _bin_edges()  # edges[i - 1], edges[i]: bin i's lower and upper edge (1 <= i < N_BINS - 1)
    bi = np.clip(b, 1, N_BINS - 1)
    edge_hi = np.where(bi < edges.size, edges[np.minimum(bi, edges.size - 1)], np.inf)
    lo = np.where(b == 0, low, np.maximum(edges[bi - 1], low))
    hi = np.where(b == 0, np.minimum(np.maximum(0.0, low), top), np.minimum(edge_hi, top))
    local = np.clip(b - first, 0, cum.shape[1] - 1)  # the quantile's column
    before = np.where(local > 0, _row(cum, np.maximum(local - 1, 0)), 0)
    frac = np.clip((target - before) / np.maximum(_row(counts, local), 1), 0.0, 1.0)
    return np.minimum(np.maximum(lo + frac * (hi - lo), low), top)


def _tail_shares(counts: np.ndarray, sums: np.ndarray, n: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """Share of the sum carried by the top ceil(0.1% n) samples of every point, float[P], from the
    histograms counts, sums [P, W] (cum: cumulative counts; any window of bins outside which all are
    empty): whole bins from the top, and the needed fraction of the last bin (its samples taken at their
    mean value); 0 where the sum is <= 0."""
    suffix = np.concatenate([np.cumsum(sums[:, ::-1], axis=1)[:, ::-1], np.zeros((len(n), 1))], axis=1)
    total = suffix[:, 0]  # summed from the top bin down: the same for any window
    need = np.maximum(1, np.ceil(TAIL_FRACTION * n))
    at_or_above = n[:, None] - cum + counts  # samples in bin i or higher (exact integers)
    last = np.maximum(np.count_nonzero(at_or_above >= need[:, None], axis=1) - 1, 0)  # lowest bin needed
    above = _row(at_or_above, last) - _row(counts, last)
    head = _row(suffix, last + 1)  # sum of the values in the bins above the last one
    with np.errstate(divide="ignore", invalid="ignore"):
        part = head + _row(sums, last) * (need - above) / _row(counts, last)
        share = np.minimum(part / total, 1.0)
    return np.where(total > 0, share, 0.0)
