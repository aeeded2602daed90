"""``fltemu bench``: load against a user's agent through a port fltemu hosts.

Not here: the benchmarks of fltemu's own speed (``benchmarks/`` in the repository).
"""

from __future__ import annotations

from .histogram import LatencyHistogram
from .load import BenchConfig, BenchReport, run_bench

__all__ = ["BenchConfig", "BenchReport", "LatencyHistogram", "run_bench"]
