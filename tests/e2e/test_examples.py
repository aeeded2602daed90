"""The example agents in ``examples/`` against the built-in samples, all in subprocesses.

Each test runs ``python -m fltemu serve`` with one sample on a temporary socket, makes the
sample produce work (files written into its watched directory, or its synthetic source),
runs the agent as a user would, and checks what the agent prints (and, where it matters,
what the kernel half logged). Every wait is bounded; nothing is timed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import LineProcess
from .test_cli import Served, start

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
#: How long any one expected line may take to show up.
WAIT = 20.0


class Agent(LineProcess):
    """An example agent in a subprocess, its stdout read line by line on a thread."""

    def __init__(self, script: str, *args: str) -> None:
        super().__init__([sys.executable, str(EXAMPLES / script), *args], wait=WAIT)

    def kill(self) -> None:
        self.stop(kill=True)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.kill()


@pytest.fixture
def servers() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        if served.proc.poll() is None:
            served.stop()


def serve(servers: list[Served], socket_path: str, *args: str) -> Served:
    served = start(["--address", socket_path, *args])
    servers.append(served)
    return served


def fltemu(*args: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fltemu", *args, "--address", address],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def connections(address: str) -> int:
    """How many connections the daemon's ports have (``fltemu ports --json``)."""
    proc = fltemu("ports", "--json", address=address)
    assert proc.returncode == 0, proc.stderr
    return sum(len(port["connections"]) for f in json.loads(proc.stdout) for port in f["ports"])


def drop(directory: Path, name: str, content: bytes, staging: Path) -> Path:
    """Make ``directory/name`` appear whole: written elsewhere, then renamed in."""
    staging.mkdir(exist_ok=True)
    temporary = staging / name
    temporary.write_bytes(content)
    target = directory / name
    os.replace(temporary, target)
    return target


# --- scanner ----------------------------------------------------------------------------------


def test_scanner_agent_judges_foul_files_unsafe(
    socket_path: str, tmp_path: Path, servers: list[Served], agents: list[Agent]
) -> None:
    watched = tmp_path / "scan"
    watched.mkdir()
    served = serve(
        servers,
        socket_path,
        "--filter",
        "scanner",
        "--set",
        f"scanner.source=dir:{watched}",
        "--set",
        "scanner.extensions=doc,txt",
    )
    agent = Agent("scanner_agent.py", "--address", socket_path)
    agents.append(agent)
    agent.wait_for(lambda line: "connected to \\ScannerPort" in line, "the connect line")

    # examples/README.md's scanner walkthrough: the same files, the same lines.
    foul = b"some foul text\n"  # 15 bytes
    clean = b"nothing wrong here\n"  # 19 bytes
    # A rename into the folder is no open; reading the file is (ScannerPostCreate).
    drop(watched, "a.txt", foul, tmp_path / "staging").read_bytes()
    first = agent.wait_for(lambda line: line.startswith("Scanner: message"), "a verdict")
    drop(watched, "b.txt", clean, tmp_path / "staging").read_bytes()
    second = agent.wait_for(lambda line: line.startswith("Scanner: message"), "a verdict")
    assert first == "Scanner: message 1 (1048 bytes): scanned 15 bytes: unsafe", first
    assert second == "Scanner: message 2 (1048 bytes): scanned 19 bytes: safe", second

    unloaded = fltemu("unload", "scanner", address=socket_path)
    assert unloaded.returncode == 0, unloaded.stderr
    assert agent.wait_exit() == 0, agent.output
    assert "Port is disconnected, probably due to scanner filter unloading" in agent.output

    code, log = served.stop()
    assert code == 0, log
    assert f"open {watched / 'a.txt'}: UNSAFE (would be blocked" in log
    assert f"open {watched / 'b.txt'}: SAFE" in log


def test_scanner_agent_reports_a_malformed_notification_and_keeps_serving(
    socket_path: str, servers: list[Served], agents: list[Agent]
) -> None:
    serve(servers, socket_path, "--filter", "scanner")
    agent = Agent("scanner_agent.py", "--address", socket_path)
    agents.append(agent)
    agent.wait_for(lambda line: "connected to \\ScannerPort" in line, "the connect line")
    # "some" read as BytesToScan is 0x656d6f73: far over the 1024 bytes a notification holds.
    sent = fltemu(
        "send", "\\ScannerPort", "--data", "some foul text", "--reply-length", "1",
        "--timeout", str(WAIT), address=socket_path,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "reply: 1 bytes: 00" in sent.stdout  # fails closed: unsafe
    line = agent.wait_for(lambda line: "malformed" in line, "the report")
    assert line == "Scanner: message 1: malformed notification: BytesToScan 1701670771 > 1024"
    short = fltemu(
        "send", "\\ScannerPort", "--hex", "0f000000", "--reply-length", "1",
        "--timeout", str(WAIT), address=socket_path,
    )  # fmt: skip
    assert short.returncode == 0 and "reply: 1 bytes: 00" in short.stdout
    agent.wait_for(
        lambda line: line.endswith("4 bytes, shorter than its 8-byte header"), "the 2nd report"
    )
    # And it still serves well-formed ones.
    good = (15).to_bytes(4, "little") + bytes(4) + b"nothing wrong here"
    ok = fltemu(
        "send", "\\ScannerPort", "--hex", good.hex(), "--reply-length", "1",
        "--timeout", str(WAIT), address=socket_path,
    )  # fmt: skip
    assert ok.returncode == 0 and "reply: 1 bytes: 01" in ok.stdout
    verdict = agent.wait_for(lambda line: "bytes: safe" in line, "a verdict")
    assert verdict == "Scanner: message 3 (42 bytes): scanned 15 bytes: safe"
    assert agent.proc.poll() is None


def test_scanner_agent_count_with_synthetic_files(
    socket_path: str, servers: list[Served], agents: list[Agent]
) -> None:
    serve(
        servers,
        socket_path,
        "--filter",
        "scanner",
        "--set",
        "scanner.source=synthetic:50",
        "--log-level",
        "WARNING",
    )
    agent = Agent("scanner_agent.py", "--address", socket_path, "--count", "8", "--threads", "3")
    agents.append(agent)
    assert agent.wait_exit() == 0, agent.output
    verdicts = [line for line in agent.lines if line.startswith("Scanner: message")]
    assert len(verdicts) == 8, agent.output
    assert all(line.endswith((": safe", ": unsafe")) for line in verdicts), agent.output
    assert "3 threads x 5 requests" in agent.output


# --- minispy ----------------------------------------------------------------------------------


def test_minispy_agent_logs_records_until_unload(
    socket_path: str, tmp_path: Path, servers: list[Served], agents: list[Agent]
) -> None:
    watched = tmp_path / "spy"
    watched.mkdir()
    serve(
        servers,
        socket_path,
        "--filter",
        "minispy",
        "--set",
        f"minispy.source=dir:{watched}",
        "--set",
        "minispy.interval=0.05",
    )
    agent = Agent("minispy_agent.py", "--address", socket_path)
    agents.append(agent)
    agent.wait_for(lambda line: line == "Minispy: filter version 2.0", "the version")

    first = drop(watched, "first.txt", b"one", tmp_path / "staging")
    second = drop(watched, "second.txt", b"two", tmp_path / "staging")
    seen: dict[str, str] = {}
    while len(seen) < 2:
        line = agent.wait_for(lambda line: line.startswith("IRP "), "a record")
        for path in (first, second):
            if line.endswith(f" {path} "):  # a create's name ends in its empty ECP text
                seen[path.name] = line
    for line in seen.values():
        fields = line.split()
        assert int(fields[1], 16) >= 1  # the sequence number
        assert "IRP_MJ_CREATE" in fields
        assert "00000000:0000000000000002" in fields  # STATUS_SUCCESS : FILE_CREATED

    first.unlink()
    line = agent.wait_for(lambda line: line.endswith(f" {first}"), "the delete record")
    assert "IRP_MJ_SET_INFORMATION" in line.split()

    unloaded = fltemu("unload", "minispy", address=socket_path)
    assert unloaded.returncode == 0, unloaded.stderr
    assert agent.wait_exit() == 0, agent.output
    assert "kernel component has unloaded" in agent.output
    assert "UNEXPECTED" not in agent.output


# --- avscan -----------------------------------------------------------------------------------


def test_avscan_agent_infected_clean_and_unloading(
    socket_path: str, tmp_path: Path, servers: list[Served], agents: list[Agent]
) -> None:
    watched = tmp_path / "av"
    watched.mkdir()
    view = tmp_path / "view.bin"
    served = serve(
        servers,
        socket_path,
        "--filter",
        "avscan",
        "--set",
        f"avscan.source=dir:{watched}",
        "--set",
        "avscan.interval=0.05",
    )
    agent = Agent("avscan_agent.py", "--address", socket_path, "--view-file", str(view))
    agents.append(agent)
    agent.wait_for(lambda line: line == "press Ctrl-C to quit", "the ready line")

    def verdict() -> str:
        return agent.wait_for(lambda line: line.startswith("scan "), "a verdict")

    view.write_bytes(b"header ... message to be found ... trailer")
    drop(watched, "eicar.com", b"x", tmp_path / "staging")
    infected = verdict()
    assert infected.startswith("scan 1 (open) thread "), infected
    assert ": infected (" in infected

    view.write_bytes(b"nothing to see here")
    drop(watched, "notes.txt", b"y", tmp_path / "staging")
    clean = verdict()
    assert clean.startswith("scan 2 (open) ") and ": clean (" in clean, clean

    view.unlink()  # the stand-in for MapViewOfFile fails: undetermined, as in userscan.c
    drop(watched, "other.bin", b"z", tmp_path / "staging")
    undetermined = verdict()
    assert undetermined.startswith("scan 3 (open) ") and ": undetermined (" in undetermined

    # Shutting the daemon down runs AvUnload: AvMsgFilterUnloading on the abort port.
    code, log = served.stop()
    assert code == 0, log
    assert agent.wait_exit() == 0, agent.output
    assert "The filter is unloading, exit!" in agent.output
    assert "unloading message: STATUS_SUCCESS" in log
    assert f"{watched / 'eicar.com'}: INFECTED: would be blocked" in log
    assert f"{watched / 'notes.txt'}: clean" in log
    assert f"{watched / 'other.bin'}: undetermined" in log


def test_avscan_agent_stops_cleanly_on_ctrl_c(
    socket_path: str, servers: list[Served], agents: list[Agent]
) -> None:
    served = serve(servers, socket_path, "--filter", "avscan")
    agent = Agent("avscan_agent.py", "--address", socket_path)
    agents.append(agent)
    agent.wait_for(lambda line: line == "press Ctrl-C to quit", "the ready line")
    agent.proc.send_signal(signal.SIGINT)
    assert agent.wait_exit() == 0, agent.output
    assert "avscan: closed the ports, exiting" in agent.output
    assert "Traceback" not in agent.output
    # Its three connections are gone (DisconnectNotify ran): another agent can connect.
    deadline = time.monotonic() + WAIT
    while connections(socket_path):
        assert time.monotonic() < deadline, "the agent's connections outlived it"
        time.sleep(0.05)
    again = Agent("avscan_agent.py", "--address", socket_path, "--count", "1")
    agents.append(again)
    again.wait_for(lambda line: line == "press Ctrl-C to quit", "the ready line")
    code, log = served.stop()
    assert code == 0, log
    assert again.wait_exit() == 0, again.output


# --- all of them ------------------------------------------------------------------------------

AGENTS = ["scanner_agent.py", "minispy_agent.py", "avscan_agent.py"]


def test_agents_exit_2_when_the_port_does_not_exist(
    socket_path: str, servers: list[Served]
) -> None:
    serve(servers, socket_path, "--filter", "echo")
    for script in AGENTS:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / script), "--address", socket_path],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert proc.returncode == 2, (script, proc.stdout, proc.stderr)
        assert "0x80070002" in proc.stdout, (script, proc.stdout)


def test_agents_exit_2_without_a_daemon(tmp_path: Path) -> None:
    for script in AGENTS:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / script), "--address", str(tmp_path / "none.sock")],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert proc.returncode == 2, (script, proc.stdout, proc.stderr)
        assert "0x80070002" in proc.stdout, (script, proc.stdout)


@pytest.mark.parametrize(
    ("script", "mirrors"),
    [
        ("scanner_agent.py", "scanUser.c"),
        ("minispy_agent.py", "mspyLog.c"),
        ("avscan_agent.py", "userscan.c"),
    ],
)
def test_agent_help_says_what_it_mirrors(script: str, mirrors: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--help"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 0, proc.stderr
    assert mirrors in proc.stdout
    assert "--address" in proc.stdout and "--count" in proc.stdout
