"""``fltemu bench`` against real agents in subprocesses (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fltemu.bench.histogram import LatencyHistogram
from fltemu.bench.plot import percentile_svg

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def bench(*args: str, agent: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fltemu", "bench", *args]
    if agent is not None:
        command += ["--", *agent]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def slow_agent(delay: float, port: str = "\\BenchPort") -> list[str]:
    return [sys.executable, str(EXAMPLES / "slow_agent.py"), "--port", port, "--delay", str(delay)]


def test_fast_agent_answers_everything(tmp_path: Path) -> None:
    plot = tmp_path / "latency.svg"
    proc = bench(
        "\\BenchPort",
        "--count",
        "200",
        "--concurrency",
        "4",
        "--reply-length",
        "1",
        "--json",
        "--plot",
        str(plot),
        agent=slow_agent(0),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["sent"] == report["completed"] == 200
    assert report["statuses"] == {"STATUS_SUCCESS": 200}
    assert report["timeouts"] == 0
    assert (
        0
        < report["latency_ms"]["p50"]
        <= report["latency_ms"]["p99"]
        <= report["latency_ms"]["max"]
    )
    assert report["agent"]["pid"] and report["agent"]["cpu_seconds"] is not None
    svg = plot.read_text()
    assert svg.startswith("<svg") and "polyline" in svg and "n=200" in svg


def test_slow_agent_shows_timeouts_in_the_report() -> None:
    # Each message takes the agent 0.5 s; the kernel waits 0.05 s: every one times out.
    proc = bench(
        "\\BenchPort",
        "--count",
        "4",
        "--reply-length",
        "1",
        "--timeout",
        "0.05",
        agent=slow_agent(0.5),
    )
    assert proc.returncode == 0, proc.stderr
    assert "STATUS_TIMEOUT 4" in proc.stdout
    assert "latency (ms):" in proc.stdout and "agent: pid" in proc.stdout


def test_open_loop_without_reply() -> None:
    proc = bench(
        "\\BenchPort",
        "--rate",
        "500",
        "--count",
        "100",
        "--random",
        "--size",
        "100",
        "--json",
        agent=slow_agent(0),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mode"] == "open" and report["completed"] == 100
    assert report["statuses"] == {"STATUS_SUCCESS": 100}


def test_agent_that_exits_before_connecting_is_an_error() -> None:
    proc = bench("\\BenchPort", "--count", "1", agent=[sys.executable, "-c", "raise SystemExit(3)"])
    assert proc.returncode == 1
    assert "exited with status 3 before connecting" in proc.stderr


def test_no_agent_within_the_connect_timeout(tmp_path: Path) -> None:
    proc = bench(
        "\\BenchPort",
        "--count",
        "1",
        "--connect-timeout",
        "0.2",
        "--address",
        str(tmp_path / "b.sock"),
    )
    assert proc.returncode == 1
    assert "no agent connected" in proc.stderr and "b.sock" in proc.stderr


def test_agent_that_dies_mid_run_ends_the_run() -> None:
    crash = [
        sys.executable,
        "-c",
        "import fltuser; p = fltuser.connect('\\\\BenchPort'); p.get_message(4096)",
    ]
    proc = bench("\\BenchPort", "--duration", "30", "--reply-length", "1", "--json", agent=crash)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["statuses"].get("STATUS_PORT_DISCONNECTED", 0) >= 1
    assert report["elapsed"] < 30  # stopped by the disconnect, not by the duration


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["\\P", "--rate", "0"], "must be > 0"),
        (["\\P", "--hex", "xyz"], "--hex"),
        (["\\P", "--concurrency", "2", "--rate", "5"], "not allowed with"),
    ],
)
def test_bad_arguments(args: list[str], text: str) -> None:
    proc = bench(*args)
    assert proc.returncode == 2
    assert text in proc.stderr


def test_histogram_percentiles_are_within_the_bucket_error() -> None:
    h = LatencyHistogram()
    values = [i * 997 for i in range(1, 10_001)]
    for v in values:
        h.record(v)
    for p in (50, 90, 99, 99.9):
        exact = values[int(len(values) * p / 100) - 1]
        assert abs(h.percentile(p) - exact) <= exact / 64 + 997
    assert h.percentile(100) == h.max == values[-1]
    other = LatencyHistogram()
    other.record(5)
    h.merge(other)
    assert h.min == 5 and h.count == 10_001


def test_empty_histogram_plots() -> None:
    svg = percentile_svg(LatencyHistogram(), "empty")
    assert "n=0" in svg


def test_bench_against_the_example_scanner_agent() -> None:
    # The scanner agent answers SCANNER_NOTIFICATIONs (1032 bytes, BytesToScan = 0 here) with
    # a 1-byte SafeToOpen, as issue 4's "works against the example scanner agent" asks.
    agent = [sys.executable, str(EXAMPLES / "scanner_agent.py")]
    proc = bench(
        "\\ScannerPort",
        "--size",
        "1032",
        "--reply-length",
        "1",
        "--count",
        "100",
        "--concurrency",
        "4",
        "--json",
        agent=agent,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["statuses"] == {"STATUS_SUCCESS": 100}
    assert report["agent"]["cpu_seconds"] is not None
