"""``benchmarks/bench_wine.py`` still runs (``--quick --json``); no timing is looked at."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fltemu.wine import WinePrefix

pytestmark = pytest.mark.timeout(240)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_wine.py"


def test_bench_wine_quick(wine_prefix: WinePrefix) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--json",
            "--threads",
            "1,4",
            "--prefix",
            str(wine_prefix.path),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert rows[0]["bench"] == "env"
    impls = {row["impl"]: row for row in rows[1:]}
    assert set(impls) == {
        "nop", "iocp ping-pong", "send wine", "send wine unchecked", "send python",
        "k2u wine 1T", "k2u wine 4T", "k2u python",
    }  # fmt: skip
    assert all(row["msgs_per_s"] > 0 for row in impls.values())
    for impl in ("send wine", "send wine unchecked", "k2u wine 1T", "k2u wine 4T"):
        assert {"ratio_nop", "ratio_python"} <= impls[impl].keys()


def test_wine_requests_counts(wine_build: object) -> None:
    """``benchmarks/wine_requests.py`` runs and reports a count per operation."""
    script = BENCH.parent / "wine_requests.py"
    done = subprocess.run(
        [sys.executable, str(script), "--calls", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [row["operation"] for row in rows] == ["nop", "send", "send unchecked", "k2u"]
    assert all(isinstance(row["requests_per_call"], float) for row in rows)
