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
        [sys.executable, str(BENCH), "--quick", "--json", "--prefix", str(wine_prefix.path)],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert rows[0]["bench"] == "env"
    impls = {row["impl"]: row for row in rows[1:]}
    assert set(impls) == {"nop", "send wine", "send python", "k2u wine", "k2u python"}
    assert all(row["msgs_per_s"] > 0 for row in impls.values())
    assert {"ratio_nop", "ratio_python"} <= impls["send wine"].keys()
    assert {"ratio_nop", "ratio_python"} <= impls["k2u wine"].keys()
