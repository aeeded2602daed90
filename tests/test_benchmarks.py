"""The benchmark scripts still run: each with ``--quick --json``, output parsed, keys checked.

Benchmarks are not tests (benchmarks/README.md): nothing here looks at a timing. These tests only
keep the scripts from rotting as the code they measure changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"

ENV_KEYS = {"python", "msgspec", "uvloop", "fltemu", "cpu_model", "cpu_count", "loadavg"}
RATE_KEYS = {"msgs_per_s", "runs_msgs_per_s", "spread_pct", "p50_us", "p99_us", "ratio_c"}
RUN_KEYS = {"impl", "client", "loop", "payload", "repeats", "pinned", "warmup_s", "measure_s"}


def run_script(name: str, *args: str, timeout: float = 55.0) -> list[dict[str, Any]]:
    """Run ``benchmarks/<name>`` with ``args``; it must exit 0 and print only JSON lines."""
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH_DIR.parent,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{name} printed nothing"
    rows = [json.loads(line) for line in lines]
    assert all(isinstance(row, dict) for row in rows)
    return rows


def check_env(rows: list[dict[str, Any]]) -> None:
    env = rows[0]
    assert env["bench"] == "env"
    assert ENV_KEYS <= env.keys()
    assert env["python"] and env["msgspec"]
    assert {"pinned", "note"} <= env["placement"].keys()


def of(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def test_versions() -> None:
    (env,) = run_script("baseline.py", "--versions", "--json")
    assert ENV_KEYS <= env.keys()


def test_baseline() -> None:
    rows = run_script("baseline.py", "--quick", "--json")
    check_env(rows)
    bare = of(rows, bench="baseline", impl="bare")
    assert {(r["loop"], r["client"]) for r in bare} == {
        ("uvloop", "async"),
        ("uvloop", "sync"),
        ("asyncio", "async"),
        ("asyncio", "sync"),
    }
    assert {r["scenario"] for r in bare} == {"seq", "pipe64", "conc8"}
    assert {r["payload"] for r in bare} == {64, 4096}
    for row in of(rows, bench="baseline"):
        assert RATE_KEYS | RUN_KEYS | {"scenario", "connections", "inflight"} <= row.keys()
        assert row["errors"] == 0


def test_roundtrip() -> None:
    rows = run_script("bench_roundtrip.py", "--quick", "--json")
    check_env(rows)
    fltemu = of(rows, bench="roundtrip", impl="fltemu")
    assert {(r["client"], r["scenario"], r["payload"]) for r in fltemu} == {
        (client, scenario, payload)
        for client in ("sync", "async")
        for scenario in ("seq", "pipe64", "conc8")
        for payload in (64, 4096)
    }
    for row in fltemu:
        assert RATE_KEYS | RUN_KEYS | {"ratio_bare", "bare_ref", "connections"} <= row.keys()
        assert row["errors"] == 0
        assert row["msgs_per_s"] > 0


def test_kernel_to_user() -> None:
    rows = run_script("bench_kernel_to_user.py", "--quick", "--json")
    check_env(rows)
    fltemu = of(rows, bench="kernel_to_user", impl="fltemu")
    assert {(r["client"], r["readers"], r["payload"]) for r in fltemu} == {
        (client, readers, payload)
        for client in ("sync", "async")
        for readers in (1, 64)
        for payload in (64, 4096)
    }
    for row in fltemu:
        assert (
            RATE_KEYS | RUN_KEYS | {"readers", "senders", "c_ref", "ratio_c_pipe64"} <= row.keys()
        )
        assert row["errors"] == 0
        assert row["msgs_per_s"] > 0


def test_connections() -> None:
    rows = run_script("bench_connections.py", "--quick", "--json", "--idle", "20")
    check_env(rows)
    (memory,) = of(rows, bench="connections", kind="memory")
    assert {"kib_per_connection", "anon_kib_per_connection", "idle", "loop"} <= memory.keys()
    assert memory["idle"] == 20
    throughput = of(rows, bench="connections", kind="throughput")
    assert {r["busy"] for r in throughput} == {"seq", "conc8", "pipe64", "k2u64"}
    for row in throughput:
        assert {"msgs_per_s_without", "msgs_per_s_with", "change_pct"} <= row.keys()
    (summary,) = of(rows, bench="connections", kind="summary")
    assert {"kib_per_connection", "max_abs_change_pct"} <= summary.keys()


def test_run_all() -> None:
    # baseline.py is covered above and no target needs it; HEAD as the CPU base exists in
    # every clone, shallow ones too.
    scripts = "daemon,roundtrip,kernel_to_user,connections"
    rows = run_script(
        "run_all.py", "--quick", "--json", "--scripts", scripts, "--base", "HEAD", timeout=110
    )
    check_env(rows)
    daemon = of(rows, bench="daemon", impl="fltemu")
    assert {(r["mode"], r["depth"]) for r in daemon} == {
        (m, d) for m in ("k2u", "send") for d in (1, 64)
    }
    for row in daemon:
        assert row["cpu_us_per_msg"] > 0
        assert row["cpu_ratio_base"] is not None
    assert of(rows, bench="daemon", impl="fltemu@HEAD")
    bare = of(rows, bench="daemon", impl="bare")
    assert {(r["mode"], r["depth"]) for r in bare} == {("send", 1), ("send", 64)}
    # (in --quick windows the bare server may burn less than one clock tick: no value then)
    assert all("cpu_ratio_bare" in r for r in daemon if r["mode"] == "send")
    targets = of(rows, bench="target")
    assert [t["id"] for t in targets] == [
        "cpu-k2u64",
        "cpu-send64",
        "k2u64",
        "k2u1",
        "k2u1-separate",
        "seq-sync",
        "seq-async",
        "conc8",
        "pipe64",
        "pipe64-sync",
        "k2u64-sync",
        "idle-mem",
        "idle-effect",
    ]
    for target in targets:
        assert {"what", "value", "target", "holds", "verdict"} <= target.keys()
        assert target["value"] is not None
        assert target["verdict"] in ("yes", "NO", "reported")


def test_text_output() -> None:
    # Without --json: the environment line, the script's table, the noise line.
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "bench_roundtrip.py"), "--quick", "--scenario", "seq"]
        + ["--payload", "64", "--client", "async", "--baseline", "bare"],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=BENCH_DIR.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# Python ")
    assert lines[1] == "# C reference not asked for"
    assert lines[2].startswith("| impl ") and lines[2].rstrip().endswith("| × bare |")
    assert [line.split("|")[1].strip() for line in lines[4:6]] == ["bare", "fltemu"]
    assert lines[6].startswith("# other processes used ")


def test_run_all_prints_each_script_s_own_tables() -> None:
    # run_all.py formats a script's JSON rows with the tables the script itself declares: the
    # kernel->user table tells the two reader kinds apart, as the script's own table does.
    code = """
import json, run_all, bench_kernel_to_user
row = {"bench": "kernel_to_user", "impl": "fltemu", "client": "async", "readers": 1}
rows = [{"bench": "env"}, dict(row, reader="reply_and_get"), dict(row, reader="reply, get")]
print(json.dumps([
    run_all.script_tables("kernel_to_user", rows),
    bench_kernel_to_user.TABLES[0].render(rows),
]))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=55, cwd=BENCH_DIR
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_run_all, from_script = json.loads(proc.stdout)
    assert from_run_all == from_script
    header, _, first, second = from_run_all.splitlines()
    assert "reader calls" in header
    assert "reply_and_get" in first and "reply, get" in second


def test_soak_torn_frames() -> None:
    rows = run_script("soak_torn_frames.py", "--quick", "--json")
    check_env(rows)
    soaks = of(rows, bench="soak_torn_frames")
    assert {r["loop"] for r in soaks} == {"uvloop", "asyncio"}
    for row in soaks:
        assert {"rss_start_kib", "rss_end_kib", "rss_max_kib", "growth_kib", "flat"} <= row.keys()
        assert row["torn_frames"] == 80
        assert len(row["rss_kib"]) == row["rounds"] == 10


def test_soak_smoke() -> None:
    # The long soak is not a test (30 minutes); a short run keeps the script working.
    rows = run_script("soak.py", "--quick", "--json", "--duration", "10", timeout=90)
    check_env(rows)
    (summary,) = of(rows, bench="soak", kind="summary")
    assert {"rss_start_kib", "rss_end_kib", "rss_max_kib", "fds_start", "fds_end"} <= summary.keys()
    assert summary["unexpected_errors"] == 0, summary["unexpected_first"]
    assert {"good_sends", "sigkilled", "torn_frames"} <= summary["counts"].keys()
    assert len(of(rows, bench="soak", kind="rest")) >= 2
