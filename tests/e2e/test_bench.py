"""``fltemu bench`` against real agents in subprocesses (no timing assertions)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from fltemu.bench.command import format_report, plot_report
from fltemu.bench.histogram import LatencyHistogram
from fltemu.bench.load import BenchConfig, BenchReport, LimitCheck
from fltemu.bench.plot import percentile_svg

from ..helpers import LineProcess

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def bench(
    *args: str,
    agent: list[str] | None = None,
    limit_check: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    # The limit check costs a calibration run; only the tests about it ask for one.
    command = [sys.executable, "-m", "fltemu", "bench", *args]
    if not limit_check:
        command.append("--no-limit-check")
    if agent is not None:
        command += ["--", *agent]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def silent_agent(port: str = "\\BenchPort") -> list[str]:
    """An agent that takes every message and never replies."""
    code = f"import fltuser\np = fltuser.connect({port!r})\nwhile True:\n    p.get_message(4096)\n"
    return [sys.executable, "-c", code]


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
    assert report["sent"] == report["completed"] == report["answered"] == 200
    assert report["not_answered"] == report["in_flight"] == 0
    assert report["statuses"] == {"STATUS_SUCCESS": 200}
    assert report["failures"] == {}
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
    assert proc.returncode == 1, proc.stderr  # nothing answered: no working agent measured
    assert "FAILED: no message was answered" in proc.stdout
    assert "exit status 1: no message was answered" in proc.stderr
    assert "not answered 4: STATUS_TIMEOUT 4 (100.0% of sent" in proc.stdout
    assert "answered 0\n" in proc.stdout and "none answered" in proc.stdout
    assert "throughput 0.0 msg/s" in proc.stdout and "agent: pid" in proc.stdout


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
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["statuses"].get("STATUS_PORT_DISCONNECTED", 0) >= 1
    assert report["elapsed"] < 30  # stopped by the disconnect, not by the duration
    assert report["ended_early"] == "the agent exited with status 0"
    assert report["exit_status"] == 1
    assert report["problems"] == [
        "the agent exited with status 0 during the run",
        "no message was answered",
    ]
    text = bench("\\BenchPort", "--duration", "30", "--reply-length", "1", agent=crash)
    assert text.returncode == 1
    headline = text.stdout.splitlines()[1]
    assert headline.startswith("  ENDED EARLY after ") and "s of 30 s: the agent exited" in headline


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["\\P", "--rate", "0"], "must be > 0"),
        (["\\P", "--hex", "xyz"], "--hex"),
        (["\\P", "--concurrency", "2", "--rate", "5"], "not allowed with"),
        (["\\P", "--fail-if", "p99=2ms"], "is not a threshold: METRIC<VALUE"),
        (["\\P", "--fail-if", "latency>2ms"], "unknown metric 'latency'"),
        (["\\P", "--fail-if", "throughput<5ms"], "a throughput is in msg/s"),
        (["\\P", "--fail-if", "p100>1"], "a percentile is above 0 and below 100"),
        (["\\P", "--baseline", "/nonexistent.json"], "--baseline /nonexistent.json: cannot read"),
        (["\\P", "--max-regression", "0.8"], "must be >= 1"),
        (
            ["ScannerPort"],
            "bad port name 'ScannerPort': STATUS_OBJECT_PATH_SYNTAX_BAD: a port name starts with "
            "a backslash: did you mean '\\ScannerPort'? (quote the backslash in your shell)",
        ),
        (["\\P", "--size", "20000000"], "the message is 20,000,000 bytes: fltemu's daemon"),
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


def test_timed_out_messages_are_not_answered(tmp_path: Path) -> None:
    # An agent that never replies: every message times out, none is answered.
    plot = tmp_path / "p.svg"
    proc = bench(
        "\\BenchPort",
        "--count",
        "5",
        "--reply-length",
        "1",
        "--timeout",
        "0.05",
        "--json",
        "--plot",
        str(plot),
        agent=silent_agent(),
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["sent"], report["completed"], report["answered"]) == (5, 5, 0)
    assert report["not_answered"] == report["timeouts"] == 5
    assert report["failures"]["STATUS_TIMEOUT"]["count"] == 5
    assert report["failures"]["STATUS_TIMEOUT"]["share_of_sent"] == 1.0
    assert report["throughput"] == 0
    assert report["latency_ms"]["count"] == 0 and report["latency_ms"]["p50"] == 0
    svg = plot.read_text()
    assert "n=0" in svg and "STATUS_TIMEOUT 5 (100.0%)" in svg and "<polyline" not in svg


@pytest.mark.parametrize("mode", [["--concurrency", "3"], ["--rate", "20"]])
def test_messages_in_flight_at_the_end_are_reported(mode: list[str]) -> None:
    # The agent never replies and the timeout is longer than the run: whatever was sent is
    # still in flight when the run stops, and nothing is counted after it.
    proc = bench(
        "\\BenchPort",
        *mode,
        "--duration",
        "1",
        "--timeout",
        "100",
        "--reply-length",
        "1",
        "--json",
        agent=silent_agent(),
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["sent"] >= 1
    assert report["in_flight"] == report["sent"]
    assert report["completed"] == report["answered"] == 0 and report["statuses"] == {}
    if mode[0] == "--concurrency":
        assert report["sent"] == 3


def test_agent_command_that_does_not_exist() -> None:
    proc = bench("\\BenchPort", "--count", "1", agent=["fltemu-no-such-agent", "--x"])
    assert proc.returncode == 1
    assert "cannot start the agent 'fltemu-no-such-agent'" in proc.stderr
    assert "not found on PATH" in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_plot_is_refused_before_the_run(tmp_path: Path) -> None:
    marker = tmp_path / "agent-ran"
    agent = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    proc = bench(
        "\\BenchPort", "--count", "1", "--plot", str(tmp_path / "no" / "x.svg"), agent=agent
    )
    assert proc.returncode == 2
    assert "--plot" in proc.stderr and "No such file or directory" in proc.stderr
    assert not marker.exists()


def test_plot_that_is_not_svg_is_refused(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    proc = bench("\\BenchPort", "--count", "1", "--plot", str(png), agent=silent_agent())
    assert proc.returncode == 2
    assert "must end in .svg" in proc.stderr
    assert not png.exists()


def test_agent_output_is_shown_when_it_fails_to_connect() -> None:
    agent = [
        sys.executable,
        "-c",
        "import sys; print('ERROR: Connecting to filter port: 0x80070002'); sys.exit(2)",
    ]
    proc = bench("\\BenchPort", "--count", "1", agent=agent)
    assert proc.returncode == 1
    assert "the agent exited with status 2 before connecting to \\BenchPort" in proc.stderr
    assert "| ERROR: Connecting to filter port: 0x80070002" in proc.stderr


def test_agent_output_is_shown_when_it_dies_mid_run() -> None:
    crash = [
        sys.executable,
        "-c",
        "import fltuser; p = fltuser.connect('\\\\BenchPort'); p.get_message(4096); "
        "raise RuntimeError('the agent broke here')",
    ]
    proc = bench("\\BenchPort", "--duration", "30", "--reply-length", "1", agent=crash)
    assert proc.returncode == 1, proc.stderr
    assert "exited with status 1\n" in proc.stdout
    assert "| RuntimeError: the agent broke here" in proc.stdout


def test_the_temporary_socket_is_printed() -> None:
    proc = bench("\\BenchPort", "--count", "1", "--connect-timeout", "0.2")
    assert proc.returncode == 1
    found = re.search(r"serving \\BenchPort on (/\S+/fltemu\.sock);", proc.stderr)
    assert found, proc.stderr
    assert f"FLTEMU_SOCKET={found[1]}" in proc.stderr


def test_agent_cpu_counts_the_run_only_and_its_exit_is_in_words() -> None:
    # The agent burns 0.5 s of CPU before it connects: start-up, not the run's.
    code = (
        "import time, fltuser\n"
        "while time.process_time() < 0.5: pass\n"
        "p = fltuser.connect('\\\\BenchPort')\n"
        "while True:\n"
        "    m = p.get_message(4096)\n"
        "    p.reply(m.message_id, b'1')\n"
    )
    args = ("\\BenchPort", "--count", "5", "--reply-length", "1")
    proc = bench(*args, "--json", agent=[sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    agent = json.loads(proc.stdout)["agent"]
    assert agent["startup_cpu_seconds"] >= 0.4  # /proc counts in ticks
    assert agent["cpu_seconds"] < agent["startup_cpu_seconds"]
    assert agent["exit"] == -signal.SIGTERM and agent["exit_text"] == "stopped by fltemu (SIGTERM)"
    assert agent["failed"] is False
    text = bench(*args, agent=slow_agent(0)).stdout
    assert "stopped by fltemu (SIGTERM)" in text and "exit status -15" not in text


def test_python_in_the_agent_command_is_fltemus_own(tmp_path: Path) -> None:
    # As the documented example has it: `fltemu bench ... -- python examples/...`, run from a
    # shell where the virtual environment is not activated.
    env = {**os.environ, "PATH": os.pathsep.join([str(tmp_path), "/usr/bin", "/bin"])}
    env.pop("VIRTUAL_ENV", None)
    agent = ["python", str(EXAMPLES / "slow_agent.py"), "--port", "\\BenchPort", "--delay", "0"]
    proc = bench(
        "\\BenchPort", "--count", "20", "--reply-length", "1", "--json", agent=agent, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answered"] == 20


def test_limit_check_runs_after_the_run_and_says_what_it_measured() -> None:
    args = ("\\BenchPort", "--count", "50", "--concurrency", "2", "--reply-length", "1")
    proc = bench(*args, "--json", agent=slow_agent(0), limit_check=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    limit = report["limit"]
    assert limit["error"] is None and limit["throughput"] > 0
    assert (limit["mode"], limit["concurrency"]) == ("closed", 2)
    assert "instant-reply agent in a process of its own" in limit["measured"]
    assert limit["fltemu_cpu"] is not None
    assert isinstance(report["near_limit"], bool)
    assert report["answered"] == 50  # the calibration's messages are not the run's
    text = bench(*args, agent=slow_agent(0), limit_check=True).stdout
    assert "fltemu's own limit: " in text and "msg/s with these settings" in text
    off = bench(*args, "--json", agent=slow_agent(0))
    assert json.loads(off.stdout)["limit"] is None


def test_limit_check_in_open_loop_offers_more_than_the_run() -> None:
    args = ("\\BenchPort", "--rate", "50", "--count", "10", "--reply-length", "1", "--json")
    proc = bench(*args, agent=slow_agent(0), limit_check=True)
    assert proc.returncode == 0, proc.stderr
    limit = json.loads(proc.stdout)["limit"]
    assert (limit["mode"], limit["offered_rate"], limit["error"]) == ("open", 200.0, None)


def _report(**fields: object) -> BenchReport:
    config = BenchConfig("\\P", rate=300.0, reply_length=1, timeout=0.05, duration=4.0)
    report = BenchReport(config, "/tmp/x.sock", elapsed=4.0, connections=1)
    for name, value in fields.items():
        setattr(report, name, value)
    return report


def test_report_counts_answered_only_and_failures_beside_them() -> None:
    report = _report(
        sent=1200,
        completed=1192,
        answered=2,
        statuses=Counter(STATUS_TIMEOUT=1186, STATUS_PORT_DISCONNECTED=4, STATUS_SUCCESS=2),
        failures=Counter(STATUS_TIMEOUT=1186, STATUS_PORT_DISCONNECTED=4),
    )
    report.latency.record(2_000_000)
    report.latency.record(3_000_000)
    text = format_report(report)
    assert "throughput 0.5 msg/s (answered messages only)" in text
    assert "answered 2: STATUS_SUCCESS 2" in text
    assert "STATUS_TIMEOUT 1186 (98.8% of sent, 296.5/s)" in text
    assert "in flight at the end 8 (withdrawn" in text
    svg = plot_report(report)
    assert "open loop at 300 msg/s, 64-byte messages, reply 1 bytes, timeout 0.05 s, 4 s" in svg
    assert "0.5 answered msg/s" in svg and "n=2" in svg
    assert "STATUS_TIMEOUT 1186 (98.8%)" in svg
    # What the curve leaves out is a warning (red); messages in flight are a note (grey).
    assert '<text x="80" y="500" fill="#c00">not answered, not in the curve: ' in svg
    assert 'fill="#555">in flight at the end, withdrawn, not in the curve: 8</text>' in svg
    assert "latency (ms, log scale)" in svg
    assert "the offered rate was not reached: 300 msg/s offered, 0 answered (0%)" in text


def test_short_run_gets_no_share_of_a_core() -> None:
    report = _report(elapsed=0.03, agent_pid=1, agent_cpu_seconds=0.21, agent_exit=0)
    text = format_report(report)
    assert "CPU 0.21 s during the run (too short a run for a share" in text
    assert "% of one core" not in text


@pytest.mark.parametrize(
    ("limit", "warned"),
    [
        (LimitCheck(1000.0, seconds=1.0, concurrency=1), True),  # 600 * 2 >= 1000
        (LimitCheck(1300.0, seconds=1.0, concurrency=1), False),
        (LimitCheck(None, error="the agent exited with status 1"), False),
        (LimitCheck(1000.0, seconds=1.0, concurrency=1, windows=True), True),
        (LimitCheck(1300.0, seconds=1.0, concurrency=1, windows=True), False),
    ],
)
def test_warning_within_twice_the_limit(limit: LimitCheck, warned: bool) -> None:
    report = _report(sent=2400, completed=2400, answered=2400, limit=limit)
    assert report.throughput == 600
    assert report.near_limit is warned
    text = format_report(report)
    assert ("WARNING: the agent's 600 msg/s is within 2x" in text) is warned
    whose = "Wine" if limit.windows else "fltemu"
    assert (f"may be {whose}'s ceiling" in text) is warned
    assert (f"may be {whose}" in plot_report(report)) is warned
    if limit.windows:
        assert "the Windows side's own limit under Wine: 1,000 msg/s" in text or not warned
        assert "against benchagent.exe get" in text
    if limit.error:
        assert "fltemu's own limit: not measured: the agent exited with status 1" in text


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["\\P", "--address", "/nonexistent/b.sock"], "cannot serve on /nonexistent/b.sock: "),
    ],
)
def test_unusable_port_or_address_is_an_error(args: list[str], text: str) -> None:
    proc = bench(*args, "--count", "1", "--connect-timeout", "0.1")
    assert proc.returncode == 1
    assert f"fltemu bench: error: {text}" in proc.stderr and "Traceback" not in proc.stderr


def test_fail_if_thresholds_gate_the_exit_status() -> None:
    args = ("\\BenchPort", "--count", "50", "--reply-length", "1", "--json")
    passing = ("--fail-if", "throughput<0.001", "--fail-if", "p99>60s")
    proc = bench(*args, *passing, "--fail-if", "timeouts>0", agent=slow_agent(0))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [c["fails_if"] for c in report["checks"]] == [
        "throughput < 0.001 msg/s",
        "p99 > 60000 ms",
        "timeouts > 0",
    ]
    assert not any(c["failed"] for c in report["checks"]) and report["exit_status"] == 0
    failing = ("--fail-if", "p50>=0ms", "--fail-if", "failures>=0%")
    proc = bench(*args[:-1], *failing, agent=slow_agent(0))
    assert proc.returncode == 3, proc.stderr
    assert "FAIL: fails if p50 >= 0 ms: " in proc.stdout
    assert "FAIL: fails if failures >= 0%: 0 (0.00% of sent)" in proc.stdout
    assert "exit status 3: p50 >= 0 ms: " in proc.stderr


def test_baseline_comparison(tmp_path: Path) -> None:
    args = ("\\BenchPort", "--count", "50", "--reply-length", "1")
    saved = bench(*args, "--json", agent=slow_agent(0))
    assert saved.returncode == 0, saved.stderr
    base = json.loads(saved.stdout)
    # A baseline far slower than any run: no regression.
    slow = tmp_path / "slow.json"
    base_slow = {**base, "throughput": 0.001}
    base_slow["latency_ms"] = {**base["latency_ms"], "p50": 60_000.0, "p99": 60_000.0}
    slow.write_text(json.dumps(base_slow))
    proc = bench(*args, "--baseline", str(slow), agent=slow_agent(0))
    assert proc.returncode == 0, proc.stderr
    assert "pass: fails if throughput < 0.0 / 1.2 (baseline)" in proc.stdout
    # A baseline far faster than any run, with other settings: a regression, and a warning.
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps({**base, "throughput": 1e12, "message_bytes": 1032}))
    proc = bench(*args, "--baseline", str(fast), "--max-regression", "1.5", agent=slow_agent(0))
    assert proc.returncode == 3, proc.stderr
    assert "FAIL: fails if throughput < 1,000,000,000,000.0 / 1.5 (baseline)" in proc.stdout
    assert "WARNING: the baseline ran with message_bytes 1032, this run with 64" in proc.stdout


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("not json", "not JSON"),
        ('{"throughput": 5}', "not a report of fltemu bench --json"),
        (
            '{"throughput": 0, "answered": 0, "latency_ms": {"p50": 0, "p99": 0}}',
            "answered no message",
        ),
    ],
)
def test_unusable_baseline_is_refused_before_the_run(
    tmp_path: Path, content: str, text: str
) -> None:
    path = tmp_path / "base.json"
    path.write_text(content)
    proc = bench("\\BenchPort", "--count", "1", "--baseline", str(path))
    assert proc.returncode == 2
    assert text in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_prints_what_ran_and_writes_the_files(tmp_path: Path) -> None:
    plot = tmp_path / "p.svg"
    command = [sys.executable, "-m", "fltemu", "bench", "\\BenchPort", "--duration", "600"]
    command += ["--reply-length", "1", "--progress", "--plot", str(plot), "--json"]
    run = LineProcess([*command, "--", *slow_agent(0.001)], wait=60)
    try:
        # The progress line shows answers: the run is under way.
        run.wait_for(lambda line: re.search(r"answered [1-9]", line) is not None, "answers")
        run.proc.send_signal(signal.SIGINT)
        assert run.wait_exit() == 130
    finally:
        run.stop()
    report = json.loads(next(line for line in run.lines if line.startswith("{")))
    assert report["interrupted"] is True and report["ended_early"] == "interrupted (Ctrl-C)"
    assert report["answered"] > 0 and report["exit_status"] == 130
    assert report["agent"]["exit_text"] == "stopped by fltemu (SIGTERM)"
    assert "interrupted: stopping the agent and summing up" in run.output
    assert "ENDED EARLY" in plot.read_text()


def test_ctrl_c_before_an_agent_connects() -> None:
    command = [sys.executable, "-m", "fltemu", "bench", "\\BenchPort", "--count", "1"]
    run = LineProcess(command, wait=60)
    try:
        run.wait_for(lambda line: "waiting 30 s for an agent" in line, "the wait")
        run.proc.send_signal(signal.SIGINT)
        assert run.wait_exit() == 130
    finally:
        run.stop()
    assert "interrupted while waiting for an agent to connect to \\BenchPort" in run.output
    assert "Traceback" not in run.output


def test_open_loop_counts_the_backlog_at_its_age_and_warns(tmp_path: Path) -> None:
    # The agent takes 0.05 s a message, one at a time: at most 20 a second of the 200 offered.
    args = ("\\BenchPort", "--rate", "200", "--duration", "1", "--reply-length", "1")
    proc = bench(*args, "--timeout", "100", "--json", agent=slow_agent(0.05))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    latency = report["latency_ms"]
    assert report["in_flight"] > 0 and latency["in_flight_counted"] == report["in_flight"]
    assert latency["count"] == report["answered"] + report["in_flight"]
    assert latency["of"].startswith("answered messages, and the ")
    assert report["offered_shortfall"].startswith("the offered rate was not reached: ")
    # The oldest message still waiting is at least as old as the answered ones' typical wait.
    assert latency["max"] >= latency["p50"]
    text = bench(*args, "--timeout", "100", agent=slow_agent(0.05)).stdout
    assert "WARNING: the offered rate was not reached: " in text
    assert "(withdrawn when the run stopped; counted in the latency at their age)" in text


def test_warmup_is_left_out_and_stages_run_in_turn(tmp_path: Path) -> None:
    hdr = tmp_path / "run.hgrm"
    proc = bench(
        "\\BenchPort", "--warmup", "0.3", "--stages", "0.3s:1,300ms:4", "--reply-length", "1",
        "--percentiles", "75,99.99", "--hdr", str(hdr), "--json", agent=slow_agent(0),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mode"] == "closed" and report["warmup"] == 0.3
    assert report["warmup_sent"] >= 1  # sent in the warm-up, counted nowhere
    stages = report["stages"]
    assert [s["target"] for s in stages] == [1, 4]
    assert sum(s["sent"] for s in stages) == report["sent"]
    assert sum(s["answered"] for s in stages) == report["answered"] > 0
    assert sum(w["answered"] for w in report["series"]) == report["answered"]
    assert sum(w["sent"] for w in report["series"]) == report["sent"]
    assert [w["second"] for w in report["series"]] == list(range(len(report["series"])))
    assert report["percentiles"] == [75, 99.99]
    assert {"p50", "p75", "p99", "p99.99", "max"} <= set(report["latency_ms"])
    assert set(stages[0]["latency_ms"]) == {"p75", "p99.99", "max"}
    text = hdr.read_text()
    assert text.startswith("       Value     Percentile TotalCount 1/(1-Percentile)\n\n")
    assert f"Total count    = {report['answered']:12d}]" in text
    last = [line for line in text.splitlines() if not line.startswith("#")][-1].split()
    assert last[1:] == ["1.000000000000", str(report["answered"])]
    human = bench(
        "\\BenchPort", "--warmup", "0.2", "--stages", "0.2:2", "--reply-length", "1",
        "--percentiles", "75", agent=slow_agent(0),
    )  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert "closed loop in 1 stages (2 in flight for 0.2 s)" in human.stdout
    assert "after a 0.2 s warm-up" in human.stdout and "messages, not counted" in human.stdout
    assert "  stage 1: 2 in flight for " in human.stdout and "ms: p75 " in human.stdout


def test_open_loop_stages_and_the_limit_check_at_the_peak() -> None:
    proc = bench(
        "\\BenchPort", "--stages", "0.3s:50/s,0.3s:100/s", "--reply-length", "1", "--json",
        agent=slow_agent(0), limit_check=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mode"] == "open" and report["rate"] == 50
    assert [s["target"] for s in report["stages"]] == [50, 100]
    assert report["limit"]["offered_rate"] == 400  # the peak stage's rate x 4


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--stages", "10"], "is not DURATION:TARGET"),
        (["--stages", "1s:10/s,1s:4"], "every stage is a rate"),
        (["--stages", "1s:2.5"], "messages in flight are a whole number"),
        (["--stages", "0s:5"], "must be > 0"),
        (["--stages", "1s:5", "--rate", "5"], "--stages sets the targets and durations: drop"),
        (["--stages", "1s:5", "--duration", "5"], "drop --duration"),
        (["--percentiles", "50,100"], "each percentile is above 0 and below 100"),
        (["--percentiles", "fifty"], "not a list of percentiles"),
        (["--hdr", "/nonexistent/x.hgrm"], "--hdr /nonexistent/x.hgrm: cannot write it"),
    ],
)
def test_bad_load_shapes_are_refused(args: list[str], text: str) -> None:
    proc = bench("\\P", *args)
    assert proc.returncode == 2
    assert text in proc.stderr and "Traceback" not in proc.stderr


def test_agent_cpu_counts_processes_that_exited_during_the_run() -> None:
    # The agent answers on a thread; a child it waits for burns 0.5 s of CPU and exits, then
    # the agent burns 0.3 s itself and exits: the run ends early, and every process counts.
    code = (
        "import subprocess, sys, threading, time, fltuser\n"
        "p = fltuser.connect('\\\\BenchPort')\n"
        "def answer():\n"
        "    while True:\n"
        "        m = p.get_message(4096)\n"
        "        p.reply(m.message_id, b'1')\n"
        "threading.Thread(target=answer, daemon=True).start()\n"
        "burn = 'import time\\nwhile time.process_time() < 0.5: pass'\n"
        "subprocess.run([sys.executable, '-c', burn], check=True)\n"
        "start = time.process_time()\n"
        "while time.process_time() - start < 0.3: pass\n"
    )
    args = ("\\BenchPort", "--duration", "60", "--reply-length", "1", "--json")
    proc = bench(*args, agent=[sys.executable, "-c", code])
    assert proc.returncode == 1, proc.stderr  # the agent exited first
    report = json.loads(proc.stdout)
    agent = report["agent"]
    assert agent["exit"] == 0 and report["ended_early"] == "the agent exited with status 0"
    processes = agent["processes"]
    assert {p["role"] for p in processes} == {"session"}
    child = [p for p in processes if p["pid"] != agent["pid"]]
    assert len(child) == 1 and child[0]["exited"] is True and child[0]["cpu_seconds"] > 0
    assert agent["cpu_seconds"] >= 0.7  # /proc counts in ticks: 0.8 s less a little
    assert agent["cpu_seconds"] == pytest.approx(sum(p["cpu_seconds"] for p in processes), abs=0.01)


def test_an_agent_faster_than_the_measured_ceiling_is_warned_about() -> None:
    limit = LimitCheck(500.0, seconds=1.0, concurrency=1, windows=True)
    report = _report(sent=2400, completed=2400, answered=2400, limit=limit)
    text = format_report(report)
    assert "WARNING: the agent's 600 msg/s is not below what a Windows agent that does nothing" in (
        text
    )


def test_ctrl_c_in_the_warm_up_reports_an_empty_run() -> None:
    command = [sys.executable, "-m", "fltemu", "bench", "\\BenchPort", "--warmup", "600"]
    command += ["--duration", "1", "--reply-length", "1", "--progress", "--json"]
    run = LineProcess([*command, "--", *slow_agent(0.001)], wait=60)
    try:
        run.wait_for(lambda line: re.search(r"warm-up .* answered [1-9]", line) is not None, "")
        run.proc.send_signal(signal.SIGINT)
        assert run.wait_exit() == 130
    finally:
        run.stop()
    report = json.loads(next(line for line in run.lines if line.startswith("{")))
    assert (report["sent"], report["elapsed"], report["stages"]) == (0, 0.0, None)
    assert report["warmup_sent"] > 0 and report["ended_early"] == "interrupted (Ctrl-C)"
    assert "Traceback" not in run.output
