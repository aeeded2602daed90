"""Where the benchmarks' files are, and the names of the benchmark filter's ports."""

from __future__ import annotations

from pathlib import Path
from typing import Final

BENCH_DIR: Final = Path(__file__).resolve().parent.parent
BUILD_DIR: Final = BENCH_DIR / "_build"
C_DIR: Final = BENCH_DIR / "c"
#: Headers the C programs include: the Windows side's wire encoder and decoder among them.
C_INCLUDE: Final = BENCH_DIR.parent / "client" / "windows" / "include"

#: The benchmark filter module the daemon loads (benchmarks/_bench_filter.py).
FILTER_MODULE: Final = "_bench_filter"
ECHO_PORT: Final = "\\BenchEcho"
K2U_PORT: Final = "\\BenchK2U"
CTL_PORT: Final = "\\BenchCtl"
