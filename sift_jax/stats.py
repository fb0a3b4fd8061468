"""Streaming, mergeable statistics in float64 on the host: moments (Chan's merge), a log-spaced
histogram for quantiles and tail diagnostics, and 95% confidence intervals.

Samples are consumed in canonical blocks of `BLOCK` samples in sample order, so every statistic is
bit-identical whatever chunk size produced the samples.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

BLOCK = 4096
LOG10_LO, LOG10_HI, BINS_PER_DECADE = -30, 30, 40
N_BINS = (LOG10_HI - LOG10_LO) * BINS_PER_DECADE + 2  # + [0 or below 1e-30] + [above 1e30]
TAIL_FRACTION = 1e-3  # tail share: part of the sum carried by the top 0.1% of samples
RELIABLE_TAIL_SHARE = 0.5  # the CI is flagged unreliable when the top 0.1% carry more than this


@dataclasses.dataclass(frozen=True)
class Stat:
    """Summary of one metric over the valid samples.

    Attributes:
        mean: sample mean (None when n == 0). ci95: (lo, hi) normal-approximation 95% CI of the mean.
        n: valid samples. n_invalid: samples where the metric was undefined (e.g. infeasible) or not finite.
        std: sample standard deviation. p50, p90, p99: quantiles from the log histogram (rel. error <= 6%).
        max: largest value. tail_share: fraction of the sum carried by the top 0.1% of samples.
        reliable: False when n < 30 or tail_share > 0.5: the mean is then driven by a few samples and the
            CI should not be trusted.
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
        d = dataclasses.asdict(self)
        d["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return d


def _bin_index(x: np.ndarray) -> np.ndarray:
    """Histogram bin of each value: 0 for x <= 1e-30 (incl. 0), last for x > 1e30."""
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = np.floor((np.log10(np.maximum(x, 1e-300)) - LOG10_LO) * BINS_PER_DECADE).astype(np.int64) + 1
    return np.clip(pos, 0, N_BINS - 1)


def _bin_edges() -> np.ndarray:
    return 10.0 ** (LOG10_LO + np.arange(N_BINS - 1) / BINS_PER_DECADE)


class Accumulator:
    """Streaming statistics of one metric; feed values and validity masks in sample order."""

    def __init__(self):
        self.n = 0
        self.n_invalid = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.max = -math.inf
        self.counts = np.zeros(N_BINS, np.int64)
        self.sums = np.zeros(N_BINS, np.float64)
        self._buf_x: list[np.ndarray] = []
        self._buf_v: list[np.ndarray] = []
        self._buffered = 0

    def add(self, values: np.ndarray, valid: np.ndarray) -> None:
        """Append samples (float[n]) with validity (bool[n]) in sample order."""
        self._buf_x.append(np.asarray(values, np.float64).ravel())
        self._buf_v.append(np.asarray(valid, bool).ravel())
        self._buffered += self._buf_x[-1].size
        if self._buffered >= BLOCK:
            x, v = np.concatenate(self._buf_x), np.concatenate(self._buf_v)
            full = (x.size // BLOCK) * BLOCK
            for start in range(0, full, BLOCK):
                self._block(x[start:start + BLOCK], v[start:start + BLOCK])
            self._buf_x, self._buf_v = [x[full:]], [v[full:]]
            self._buffered = x.size - full

    def _block(self, x: np.ndarray, v: np.ndarray) -> None:
        v = v & np.isfinite(x)
        self.n_invalid += int(x.size - v.sum())
        x = x[v]
        if x.size == 0:
            return
        mean_b = float(x.mean())
        m2_b = float(np.square(x - mean_b).sum())
        n_a, n_b = self.n, x.size
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.n = n
        self.max = max(self.max, float(x.max()))
        idx = _bin_index(x)
        self.counts += np.bincount(idx, minlength=N_BINS)
        self.sums += np.bincount(idx, weights=x, minlength=N_BINS)

    def result(self) -> Stat:
        """Flush the partial last block and summarise."""
        if self._buffered:
            self._block(np.concatenate(self._buf_x), np.concatenate(self._buf_v))
            self._buf_x, self._buf_v, self._buffered = [], [], 0
        if self.n == 0:
            return Stat(None, None, 0, self.n_invalid, None, None, None, None, None, None, False)
        std = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        half = 1.959963984540054 * std / math.sqrt(self.n)
        total = float(self.sums.sum())
        tail = self._tail_share(total)
        return Stat(
            mean=self.mean, ci95=(self.mean - half, self.mean + half), n=self.n, n_invalid=self.n_invalid,
            std=std, p50=self._quantile(0.5), p90=self._quantile(0.9), p99=self._quantile(0.99), max=self.max,
            tail_share=tail, reliable=bool(self.n >= 30 and tail <= RELIABLE_TAIL_SHARE),
        )

    def _quantile(self, q: float) -> float:
        """Quantile from the histogram, geometric interpolation inside the bin, capped by the max."""
        cum = np.cumsum(self.counts)
        target = q * self.n
        b = int(np.searchsorted(cum, target, side="left"))
        if b == 0:
            return 0.0
        edges = _bin_edges()
        lo = edges[b - 1]
        hi = edges[b] if b < len(edges) else self.max
        before = cum[b - 1] if b > 0 else 0
        frac = (target - before) / max(self.counts[b], 1)
        value = lo * (hi / lo) ** min(max(frac, 0.0), 1.0)
        return float(min(value, self.max))

    def _tail_share(self, total: float) -> float:
        """Share of the sum carried by the top ceil(0.1% n) samples, from the histogram: whole bins from the
        top, and the needed fraction of the last bin (its samples taken at their mean value)."""
        if total <= 0:
            return 0.0
        need = max(1, math.ceil(TAIL_FRACTION * self.n))
        counts, sums = self.counts[::-1], self.sums[::-1]
        cum = np.cumsum(counts)
        last = int(np.searchsorted(cum, need, side="left"))
        before = int(cum[last - 1]) if last > 0 else 0
        part = sums[:last].sum() + sums[last] * (need - before) / counts[last]
        return float(min(part / total, 1.0))
