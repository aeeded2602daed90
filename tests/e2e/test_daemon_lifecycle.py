"""Starting, watching and stopping ``fltemu serve`` from scripts and CI: one line when ready and
nothing else by default, details with -v, --quiet, JSON logs, ``fltemu wait``, ``fltemu
status``, ``--ready-file`` and ``--version`` everywhere."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fltuser

from .test_cli import start


def fltemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fltemu", *args], capture_output=True, text=True, timeout=60
    )


def test_start_and_stop_print_one_line_and_log_nothing(socket_path: str) -> None:
    s = start(["--address", socket_path])  # every built-in sample, no agent
    code, err = s.stop(signal.SIGINT)
    assert code == 0
    assert s.line.startswith(f"fltemu: listening on {socket_path} (loop: ")
    # No start-up details, no "unloading message" at shutdown: only that it shuts down.
    assert [line.split(" ", 2)[2] for line in err.splitlines()] == [
        "INFO fltemu.daemon.runner: shutting down"
    ]


def test_verbose_logs_the_details(socket_path: str) -> None:
    s = start(["--address", socket_path, "--filter", "echo", "-v"])
    code, err = s.stop()
    assert code == 0
    assert "DEBUG fltemu.daemon.loader: loaded filter echo (fltemu.samples.echo)" in err


def test_quiet_prints_nothing_and_wait_tells_when_it_is_ready(socket_path: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fltemu", "serve", "--address", socket_path, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        waited = fltemu("wait", "--address", socket_path, "--timeout", "30")
        assert waited.returncode == 0, waited.stderr
        assert waited.stdout == f"fltemu: daemon ready on {socket_path}\n"
        with fltuser.connect("\\EchoPort", address=socket_path) as port:  # ready means ready
            assert port.send(b"x", 1) == b"x"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert (out, err) == ("", "")  # --quiet: warnings and errors only


def test_json_logs_for_collectors(socket_path: str, tmp_path: Path) -> None:
    s = start(["--address", socket_path, "--filter", "echo", "-v", "--log-format", "json"])
    code, err = s.stop()
    assert code == 0
    records = [json.loads(line) for line in err.splitlines()]
    assert records and all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    assert {
        "level": "DEBUG",
        "logger": "fltemu.daemon.loader",
        "message": "loaded filter echo (fltemu.samples.echo)",
    } in [{k: r[k] for k in ("level", "logger", "message")} for r in records]


def test_wait_gives_up_after_its_timeout(socket_path: str) -> None:
    proc = fltemu("wait", "--address", socket_path, "--timeout", "0.3")
    assert proc.returncode == 1
    assert proc.stderr.startswith("fltemu: error: no daemon ready after 0.3 s: no fltemu daemon")


def test_status_exits_0_when_a_daemon_answers(socket_path: str) -> None:
    down = fltemu("status", "--address", socket_path)
    assert down.returncode == 1 and "no fltemu daemon is listening" in down.stderr
    s = start(["--address", socket_path, "--filter", "echo"])
    try:
        with fltuser.connect("\\EchoPort", address=socket_path):
            up = fltemu("status", "--address", socket_path)
            as_json = fltemu("status", "--address", socket_path, "--json")
    finally:
        assert s.stop()[0] == 0
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert lines[0] == f"fltemu {fltuser.__version__} daemon on {socket_path}: ready"
    assert lines[1].startswith(f"pid {s.proc.pid}, uid ")
    assert lines[2] == "1 filters, 1 ports, 1 connections"
    document = json.loads(as_json.stdout)
    assert (document["ready"], document["pid"], document["ports"]) == (True, s.proc.pid, 1)


def test_ready_file_is_written_when_ready_and_removed_at_exit(
    socket_path: str, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    s = start(["--address", socket_path, "--filter", "echo", "--ready-file", str(ready)])
    try:
        assert ready.read_text() == s.line
    finally:
        assert s.stop()[0] == 0
    assert not ready.exists()


@pytest.mark.parametrize(
    "command",
    ["serve", "status", "wait", "trace", "ports", "send", "disconnect", "unload", "bench"],
)
def test_every_command_has_version(command: str) -> None:
    proc = fltemu(command, "--version")
    assert proc.returncode == 0
    assert proc.stdout == f"fltemu {fltuser.__version__}\n"


def test_an_unwritable_ready_file_is_named(socket_path: str, tmp_path: Path) -> None:
    ready = tmp_path / "missing" / "ready"
    proc = fltemu("serve", "--address", socket_path, "--filter", "echo", "--ready-file", str(ready))
    assert proc.returncode == 1
    assert proc.stderr.endswith(f"fltemu: error: --ready-file {ready}: No such file or directory\n")
    assert not Path(socket_path).exists()
