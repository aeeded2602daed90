"""One measured window's result, percentiles, and how repeats are summed up and paired."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunResult:
    """One measured window: completions, its length and latency percentiles."""

    count: int
    elapsed_ns: int
    p50_ns: float | None = None
    p99_ns: float | None = None
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Completions per second."""
        return self.count * 1e9 / self.elapsed_ns if self.elapsed_ns else 0.0

    @classmethod
    def from_latencies(
        cls, count: int, elapsed_ns: int, latencies: list[int], errors: int = 0
    ) -> RunResult:
        """Build one from raw per-call latencies (ns)."""
        p50, p99 = percentiles(latencies, (50, 99))
        return cls(count, elapsed_ns, p50, p99, errors)


def percentiles(values: list[int], pcts: Sequence[float]) -> list[float | None]:
    """Nearest-rank percentiles of ``values`` (None when empty)."""
    if not values:
        return [None for _ in pcts]
    ordered = sorted(values)
    n = len(ordered)
    return [float(ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))]) for p in pcts]


def summarize(runs: list[RunResult]) -> dict[str, Any]:
    """Median rate of the runs, their spread and median latency percentiles."""
    rates = [r.rate for r in runs]
    median = statistics.median(rates) if rates else 0.0
    spread = (max(rates) - min(rates)) / 2 / median * 100 if median else None
    p50s = [r.p50_ns for r in runs if r.p50_ns is not None]
    p99s = [r.p99_ns for r in runs if r.p99_ns is not None]
    return {
        "msgs_per_s": round(median, 1),
        "runs_msgs_per_s": [round(x, 1) for x in rates],
        "spread_pct": round(spread, 1) if spread is not None else None,
        "p50_us": round(statistics.median(p50s) / 1000, 1) if p50s else None,
        "p99_us": round(statistics.median(p99s) / 1000, 1) if p99s else None,
        "errors": sum(r.errors for r in runs),
    }


def paired_ratio(runs: list[RunResult], refs: list[RunResult]) -> float | None:
    """Median over repeats of run/ref, pairing runs of the same repeat (robust to drift)."""
    ratios = [r.rate / ref.rate for r, ref in zip(runs, refs, strict=False) if ref.rate > 0]
    return round(statistics.median(ratios), 3) if ratios else None
