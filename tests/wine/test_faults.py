"""Faults around a Windows agent under Wine: the daemon killed and restarted, the agent or
Wine's own processes killed with calls in flight, many connects and closes. None may hang
the agent or grow what it holds; each is asserted by what the agent and the daemon see,
never by time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fltemu.status import NtStatus
from fltemu.testing import DaemonThread, PortHarness
from fltemu.wine import WinePrefix

from .conftest import ANSWER_WAIT, AgentFactory, fields

#: A filter module whose MessageNotify writes a marker file and then never returns.
SLOW_FILTER = """
import asyncio, os, pathlib

async def setup(flt):
    async def on_message(cookie, data, out_size):
        pathlib.Path(os.environ["FLTEMU_TEST_MARK"]).write_text("in")
        await asyncio.Event().wait()

    await flt.create_communication_port(
        "\\\\SlowPort", connect_notify=lambda *args: 0, disconnect_notify=lambda cookie: None,
        message_notify=on_message, max_connections=4,
    )
"""


def wait_for(ready: object, what: str, timeout: float = ANSWER_WAIT, now: object = None) -> None:
    """Poll ``ready`` until it holds; on failure say what ``now`` reads."""
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            seen = f": {now()}" if now is not None else ""  # type: ignore[operator]
            raise AssertionError(f"no {what} within {timeout} s{seen}")
        time.sleep(0.01)


@pytest.fixture
def serve(tmp_path: Path, socket_path: str) -> Iterator[object]:
    """Start ``fltemu serve`` in a subprocess on the test's socket (again after a kill)."""
    (tmp_path / "slowfilter.py").write_text(SLOW_FILTER)
    started: list[subprocess.Popen[str]] = []

    def start(*filters: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "fltemu", "serve", "--address", socket_path]
        for name in filters:
            argv += ["--filter", name]
        env = dict(os.environ, FLTEMU_TEST_MARK=str(tmp_path / "mark"))
        daemon = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        started.append(daemon)
        assert daemon.stdout is not None and "listening on" in daemon.stdout.readline()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
        daemon.communicate(timeout=30)


def linux_pids(prefix: WinePrefix, program: str) -> list[int]:
    """The Linux processes of ``program`` (e.g. ``winedevice.exe``) in this prefix's session."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if program.encode() in cmdline and f"WINEPREFIX={prefix.path}\0".encode() in environ:
            found.append(int(entry))
    return found


def test_a_killed_daemon_ends_a_direct_send_and_a_new_one_serves(
    tmp_path: Path, socket_path: str, serve: object, start_agent: AgentFactory
) -> None:
    """A send blocked in MessageNotify over fltlib's own socket fails with 0x80070006 when
    the daemon dies, later calls fail at once, and a daemon restarted on the same socket
    serves a new connection."""
    daemon = serve("slowfilter", "echo")  # type: ignore[operator]
    agent = start_agent(socket_path)
    assert agent.cmd("connect \\SlowPort") == "connect 0x00000000"
    assert agent.cmd(f"tsend {b'x'.hex()} 8") == "tsend-started"
    wait_for((tmp_path / "mark").exists, "MessageNotify")
    daemon.kill()
    assert agent.expect("tsend ") == "tsend 0x80070006 n=0 out="
    assert agent.cmd(f"send {b'x'.hex()} 4") == "send 0x80070006 n=0 out="
    serve("echo")  # type: ignore[operator]
    assert agent.cmd("connect \\EchoPort") == "connect 0x00000000"
    assert agent.cmd(f"send {b'hi'.hex()} 4") == f"send 0x00000000 n=2 out={b'hi'.hex()}"


def _slow_port(daemon: DaemonThread) -> tuple[PortHarness, threading.Event, threading.Event]:
    entered, release = threading.Event(), threading.Event()

    async def slow(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        entered.set()
        await asyncio.to_thread(release.wait, 60)
        return NtStatus.STATUS_SUCCESS, b"late"

    return daemon.create_port("\\SlowPort", message_notify=slow), entered, release


def test_killed_agent_with_a_direct_send_in_flight(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    """The agent dies inside FilterSendMessage: the connection ends once, after MessageNotify
    (§2.4), and its slot is free again."""
    harness, entered, release = _slow_port(wine_daemon)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd("connect \\SlowPort") == "connect 0x00000000"
    assert agent.cmd(f"tsend {b'x'.hex()} 8") == "tsend-started"
    assert entered.wait(ANSWER_WAIT)
    agent.kill()
    harness.wait_for_closing()
    release.set()
    harness.wait_for_disconnect()
    other = start_agent(wine_daemon.address)
    assert other.cmd("connect \\SlowPort") == "connect 0x00000000"
    harness.wait_for_connection(2)
    assert len(harness.disconnects) == 1


def test_killed_winedevice_does_not_hang_the_agent(
    wine_daemon: DaemonThread, wine_prefix: WinePrefix, start_agent: AgentFactory
) -> None:
    """winedevice.exe (and fltemu.sys with it) dies under a connected agent with a send in
    flight: the daemon ends the connection once MessageNotify returns, the send gets its
    answer, and every later call fails at once."""
    harness, entered, release = _slow_port(wine_daemon)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd("connect \\SlowPort") == "connect 0x00000000"
    assert agent.cmd(f"tsend {b'x'.hex()} 8") == "tsend-started"
    assert entered.wait(ANSWER_WAIT)
    # Wine runs a winedevice.exe per service group; one of them hosts fltemu.sys.
    for winedevice in linux_pids(wine_prefix, "winedevice.exe"):
        os.kill(winedevice, signal.SIGKILL)
    harness.wait_for_closing()
    release.set()
    assert agent.expect("tsend ") == f"tsend 0x00000000 n=4 out={b'late'.hex()}"
    harness.wait_for_disconnect()
    assert fields(agent.cmd(f"send {b'x'.hex()} 4"))["n"] == "0"
    assert agent.cmd("oget 0 64").startswith("oget 0 0x8007")
    # A new session of the prefix brings the driver back for the next agent.
    subprocess.run(["wineserver", "-k"], env=wine_prefix.environment(), check=False)
    wine_prefix.start_session(persistent=True)


def test_a_killed_wine_session_ends_the_agent_and_its_connection(
    wine_daemon: DaemonThread, wine_prefix: WinePrefix, start_agent: AgentFactory
) -> None:
    harness = wine_daemon.create_port("\\P")
    agent = start_agent(wine_daemon.address)
    assert agent.cmd("connect \\P") == "connect 0x00000000"
    assert agent.cmd("oget 0 64") == "oget 0 0x800703e5"
    subprocess.run(["wineserver", "-k"], env=wine_prefix.environment(), check=False)
    agent.proc.wait(ANSWER_WAIT)  # ended with its session, not left hanging
    harness.wait_for_disconnect()
    assert len(harness.disconnects) == 1
    wine_prefix.start_session(persistent=True)


def _held(agent_pid: int, counts: str) -> tuple[int, ...]:
    """What the agent holds: Windows handles and threads, Linux descriptors and tasks."""
    answer = fields(counts)
    return (
        int(answer["handles"]),
        int(answer["threads"]),
        len(os.listdir(f"/proc/{agent_pid}/fd")),
        len(os.listdir(f"/proc/{agent_pid}/task")),
    )


def test_a_thousand_connects_and_closes_hold_nothing(
    wine_daemon: DaemonThread, wine_prefix: WinePrefix, start_agent: AgentFactory
) -> None:
    """1,000 connect, send and close cycles: afterwards the agent holds as many handles,
    threads, descriptors and tasks as after the first, and so does winedevice.exe. (Wine 8
    counts no handles for GetProcessHandleCount, so the threads, and the descriptors and
    tasks of the Linux processes, are what catch a leak.)"""
    harness = wine_daemon.create_port("\\Cycles", max_connections=1, message_notify=_echo)
    agent = start_agent(wine_daemon.address)
    devices = linux_pids(wine_prefix, "winedevice.exe")

    def device_held() -> tuple[int, int]:
        return (
            sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in devices),
            sum(len(os.listdir(f"/proc/{pid}/task")) for pid in devices),
        )

    def threads() -> int:
        return int(fields(agent.cmd("counts"))["threads"])

    alone = threads()  # the agent's own threads, before any connect
    # One cycle first: what Wine loads for the first connect stays, and is the baseline.
    assert agent.cmd("cycles 1 \\Cycles") == "cycles 1 0x00000000"
    harness.wait_for_disconnect(1)
    # Once the daemon has closed the connection's sockets, the DLL's reader thread ends.
    wine_daemon.wait_for_sessions(0)
    wait_for(lambda: threads() == alone, f"return to {alone} threads after one cycle")
    before = _held(agent.proc.pid, agent.cmd("counts"))
    device_before = device_held()
    assert agent.cmd("cycles 1000 \\Cycles", timeout=300) == "cycles 1000 0x00000000"
    harness.wait_for_disconnect(1001)
    wait_for(
        lambda: _held(agent.proc.pid, agent.cmd("counts")) == before,
        f"return to {before} (handles, threads, descriptors, tasks)",
        now=lambda: _held(agent.proc.pid, agent.cmd("counts")),
    )
    wait_for(
        lambda: device_held() == device_before,
        f"winedevice.exe's return to {device_before} (descriptors, tasks)",
        now=device_held,
    )
    assert len(harness.disconnects) == 1001


def _echo(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
    return NtStatus.STATUS_SUCCESS, data[:out_size]
