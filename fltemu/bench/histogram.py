"""A log-linear latency histogram in the manner of HdrHistogram: bounded memory, ~1.6% error.

Values are nanoseconds. Each power-of-two range is split into ``SUB_BUCKETS`` linear
buckets, so the relative error of any reported percentile is at most 1/SUB_BUCKETS, while a
whole benchmark run costs a few kilobytes whatever its length. Pure Python, no I/O.
Not here: drawing (``plot``), measuring (``load``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Final

__all__ = ["SUB_BUCKETS", "LatencyHistogram", "percentile_distribution"]

#: Linear buckets per power of two: 64 gives ≤ 1.6 % relative error per value.
SUB_BUCKETS: Final = 64
_SHIFT: Final = SUB_BUCKETS.bit_length() - 1  # log2(SUB_BUCKETS)


def _index(value: int) -> int:
    if value < SUB_BUCKETS:
        return value
    exponent = value.bit_length() - 1 - _SHIFT
    return (exponent + 1) * SUB_BUCKETS + ((value >> exponent) - SUB_BUCKETS)


def _lower_bound(index: int) -> int:
    if index < SUB_BUCKETS:
        return index
    exponent = index // SUB_BUCKETS - 1
    return (SUB_BUCKETS + index % SUB_BUCKETS) << exponent


def _upper_bound(index: int) -> int:
    return _lower_bound(index + 1) - 1


class LatencyHistogram:
    """Counts of latencies; percentiles come from bucket upper bounds, capped at the max.

    >>> h = LatencyHistogram()
    >>> for v in range(1, 101):
    ...     h.record(v * 1000)
    >>> h.count, h.min, h.max
    (100, 1000, 100000)
    >>> abs(h.percentile(50) - 50_000) <= 50_000 / 64
    True
    """

    __slots__ = ("_counts", "count", "max", "min", "total")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value_ns: int) -> None:
        """Add one value (negative values count as 0)."""
        value = max(0, int(value_ns))
        index = _index(value)
        self._counts[index] = self._counts.get(index, 0) + 1
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's counts to this one."""
        for index, n in other._counts.items():
            self._counts[index] = self._counts.get(index, 0) + n
        if other.count:
            self.min = other.min if self.count == 0 else min(self.min, other.min)
            self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    @property
    def mean(self) -> float:
        """The exact mean (0 when empty)."""
        return self.total / self.count if self.count else 0.0

    def percentile(self, percent: float) -> int:
        """The value at or below which ``percent`` % of the values fall (0 when empty)."""
        if not self.count:
            return 0
        if percent >= 100:
            return self.max
        rank = max(1, -(-int(percent * self.count * 1000) // 100_000))  # ceil(p/100 * count)
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                return min(_upper_bound(index), self.max)
        return self.max

    def buckets(self) -> Iterator[tuple[int, int, int]]:
        """(lower bound, upper bound, count) of every non-empty bucket, in order."""
        for index in sorted(self._counts):
            yield _lower_bound(index), _upper_bound(index), self._counts[index]

    def percentile_curve(self, points: int = 200) -> list[tuple[float, int]]:
        """(percentile, value) pairs for a percentile plot, dense toward the tail."""
        curve = []
        for i in range(points + 1):
            # 0 .. 99.999 on a log scale of 1/(1-p), as HdrHistogram plots do.
            fraction = 1 - 10 ** (-5 * i / points)
            curve.append((fraction * 100, self.percentile(fraction * 100)))
        curve.append((100.0, self.max))
        return curve


def _levels(ticks_per_half_distance: int = 5) -> Iterator[float]:
    """The percentile levels HdrHistogram's percentile distribution reports: ever finer
    toward 100 (each halving of the remaining distance gets as many steps)."""
    level = 0.0
    while level < 100.0:
        yield level
        halvings = int(math.log2(100.0 / (100.0 - level))) + 1
        level += 100.0 / (ticks_per_half_distance * 2**halvings)
        if 100.0 - level < 1e-9:
            break


def percentile_distribution(histogram: LatencyHistogram, unit_ns: float = 1e6) -> str:
    """The histogram as HdrHistogram's ``outputPercentileDistribution`` text (the ``.hgrm``
    format that HdrHistogram's plotter and wrk2 use), values in ``unit_ns`` nanoseconds
    (default: milliseconds).

    >>> h = LatencyHistogram()
    >>> for v in (1_000_000, 2_000_000):
    ...     h.record(v)
    >>> print(percentile_distribution(h).splitlines()[2])
           1.000 0.000000000000          1           1.00
    """
    lines = [f"{'Value':>12} {'Percentile':>14} {'TotalCount':>10} {'1/(1-Percentile)':>14}", ""]
    count = histogram.count
    if count:
        for level in _levels():
            value = histogram.percentile(level) if level > 0 else histogram.min
            seen = max(1, math.ceil(level / 100 * count))
            lines.append(
                f"{value / unit_ns:12.3f} {level / 100:2.12f} {seen:10d} "
                f"{1 / (1 - level / 100):14.2f}"
            )
            if seen >= count and level > 0:
                break
        lines.append(f"{histogram.max / unit_ns:12.3f} {1.0:2.12f} {count:10d}")
    values = list(histogram.buckets())
    mean = histogram.mean / unit_ns
    variance = (
        sum(n * ((lo + hi) / 2 / unit_ns - mean) ** 2 for lo, hi, n in values) / count
        if count
        else 0.0
    )
    lines += [
        f"#[Mean    = {mean:12.3f}, StdDeviation   = {math.sqrt(variance):12.3f}]",
        f"#[Max     = {histogram.max / unit_ns:12.3f}, Total count    = {count:12d}]",
        f"#[Buckets = {len(values):12d}, SubBuckets     = {SUB_BUCKETS:12d}]",
    ]
    return "\n".join(lines) + "\n"
