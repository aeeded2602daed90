"""Test agents written as Microsoft's sample user programs are, run under Wine against the
built-in samples and against test filters (semantics §7)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fltemu.status import NtStatus
from fltemu.testing import DaemonThread
from fltemu.wine import WineBuild, WinePrefix, agent_argv, agent_environment

from .conftest import ANSWER_WAIT, Agent, AgentFactory

#: SCANNER_NOTIFICATION: BytesToScan, Reserved, Contents[1024].
NOTIFICATION = struct.Struct("<II1024s")
pytestmark = pytest.mark.timeout(240)


def fltemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fltemu", *args],
        capture_output=True,
        text=True,
        timeout=ANSWER_WAIT,
        check=False,
    )


@contextlib.contextmanager
def serve(socket_path: str, *args: str) -> Iterator[None]:
    """``fltemu serve`` in a subprocess, until the block ends."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fltemu", "serve", "--address", socket_path, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        assert "listening on" in daemon.stdout.readline()
        yield
    finally:
        daemon.terminate()
        daemon.communicate(timeout=ANSWER_WAIT)


def test_minispy_agent_polls_the_builtin_minispy(
    tmp_path: Path, socket_path: str, start_agent: AgentFactory
) -> None:
    watched = tmp_path / "spy"
    watched.mkdir()
    with serve(
        socket_path, "--filter", "minispy", "--set", f"minispy.source=dir:{watched}",
        "--set", "minispy.interval=0.05",
    ):  # fmt: skip
        agent = start_agent(socket_path, "spyagent")
        # No volume to list, consistently: FilterVolumeFindFirst says no more items.
        assert agent.expect("volumes") == "volumes: 0 (0x80070103)"
        assert agent.expect("version") == "version 0x00000000 2.0"
        (watched / "seen.txt").write_bytes(b"x")
        record = agent.expect("record")
        assert record.startswith("record seq=1 major=0 name=")  # IRP_MJ_CREATE
        assert record.endswith("seen.txt "), record  # "%wZ %wZ", an empty ECP text
        unloaded = fltemu("unload", "minispy", "--address", socket_path)
        assert unloaded.returncode == 0, unloaded.stderr
        assert agent.expect("The kernel component") == (
            "The kernel component of minispy has unloaded. Exiting"
        )
        assert agent.proc.wait(ANSWER_WAIT) == 0


def test_scanner_agent_against_the_builtin_scanner_via_fltemu_wine(
    tmp_path: Path, wine_build: WineBuild, wine_prefix: WinePrefix, socket_path: str
) -> None:
    watched = tmp_path / "scan"
    watched.mkdir()
    with serve(
        socket_path, "--filter", "scanner", "--set", f"scanner.source=dir:{watched}",
        "--set", "scanner.extensions=txt",
    ):  # fmt: skip
        env = dict(os.environ, WINEPREFIX=str(wine_prefix.path))
        argv = [
            sys.executable, "-m", "fltemu", "wine", "--build-dir", str(wine_build.directory),
            "--address", socket_path, "--", str(wine_build.agent("scanagent")),
        ]  # fmt: skip
        agent = Agent(argv, env)
        try:
            assert agent.expect("connected to") == "connected to \\ScannerPort"
            for name, content in (("foul.txt", b"some foul text\n"), ("ok.txt", b"clean\n")):
                staged = tmp_path / name
                staged.write_bytes(content)
                os.replace(staged, watched / name)  # no open yet: nothing to scan
                (watched / name).read_bytes()  # an open: ScannerPostCreate's scan
                verdict = agent.expect("Scanner: message")
                expected = "unsafe" if b"foul" in content else "safe"
                assert verdict.endswith(
                    f"(1048 bytes): scanned {len(content)} bytes: {expected}"
                ), verdict
            # Written in place, as README's step 4 does: scanned as Microsoft's scanner scans
            # (the open, the bytes written, the close after writing); how many of the write's
            # scans see the foul bytes depends on how Linux reports the writes, so only the
            # first two verdicts are waited for, and one of them must find it foul.
            (watched / "written.txt").write_bytes(b"some foul text\n")
            verdicts = [agent.expect("Scanner: message") for _ in range(2)]
            assert any(v.endswith("unsafe") for v in verdicts), verdicts
            unloaded = fltemu("unload", "scanner", "--address", socket_path)
            assert unloaded.returncode == 0, unloaded.stderr
            assert agent.expect("Scanner: Port is disconnected").endswith("unloading.")
            assert agent.proc.wait(ANSWER_WAIT) == 0
        finally:
            agent.close()


def test_a_reply_after_the_filter_closed_the_port_ends_the_scanner_as_unloading(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    """The filter closes the port (it unloads) while a message is being scanned: the reply
    fails with 0x80070006 and the agent ends as scanUser.c does, "Port is disconnected",
    exit 0 (this race made the scanner test above exit 1 now and then). ``-w 1``: the agent
    replies once it reads a line, so the close comes first every time."""
    harness = wine_daemon.create_port("\\ScannerPort")
    agent = start_agent(wine_daemon.address, "scanagent", "-t", "1", "-r", "1", "-w", "1")
    assert agent.expect("connected to") == "connected to \\ScannerPort"
    harness.wait_for_connection()
    body = b"some foul text"
    sent = wine_daemon.submit(
        harness.asend_message_coro(NOTIFICATION.pack(len(body), 0, body), 1, 60.0, None)
    )
    verdict = agent.expect("Scanner: message")
    assert verdict.endswith(f"scanned {len(body)} bytes: unsafe"), verdict
    harness.close_client_port()  # FltCloseClientPort, as the filter's unload does
    sent.result(ANSWER_WAIT)
    agent.send("reply")
    assert agent.line() == "Scanner: Error replying message. Error = 0x80070006"
    assert agent.line().endswith("Port is disconnected, probably due to scanner filter unloading.")
    assert agent.proc.wait(ANSWER_WAIT) == 0


def test_20_threads_x_5_overlapped_gets_under_load(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    """scanUser.c's shape at 20 x 5: 2,000 concurrent kernel messages, each answered once,
    with the right verdict, none lost."""
    count = 2000
    harness = wine_daemon.create_port("\\LoadPort")
    agent = start_agent(
        wine_daemon.address, "scanagent", "-t", "20", "-r", "5", "-p", "\\LoadPort",
        "-n", str(count),
    )  # fmt: skip
    assert agent.expect("connected to") == "connected to \\LoadPort"
    harness.wait_for_connection()

    def message(i: int) -> bytes:
        body = f"file {i} is {'foul' if i % 3 == 0 else 'fine'}".encode()
        return NOTIFICATION.pack(len(body), 0, body)

    async def flood() -> list[tuple[NtStatus, bytes | None]]:
        sends = [harness.asend_message_coro(message(i), 1, 60.0, None) for i in range(count)]
        return [(r.status, r.reply) for r in await asyncio.gather(*sends)]

    results = wine_daemon.run(flood(), timeout=180)
    wrong = [
        (i, r) for i, r in enumerate(results)
        if r != (NtStatus.STATUS_SUCCESS, b"\x00" if i % 3 == 0 else b"\x01")
    ]  # fmt: skip
    assert wrong == []
    assert agent.expect("replies") == f"replies {count} failures 0"
    verdicts = [line for line in agent.seen if line.startswith("Scanner: message")]
    ids = Counter(line.split()[3] for line in verdicts)
    assert len(ids) == count and set(ids.values()) == {1}


def test_fltemu_bench_drives_a_windows_agent(
    wine_build: WineBuild, wine_prefix: WinePrefix
) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "fltemu", "bench", "\\ScannerPort", "--size", "1032",
            "--reply-length", "1", "--count", "200", "--concurrency", "8", "--json",
            "--", sys.executable, "-m", "fltemu", "wine", "--prefix", str(wine_prefix.path),
            "--build-dir", str(wine_build.directory), "--", str(wine_build.agent("scanagent")),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["sent"], report["completed"], report["timeouts"]) == (200, 200, 0)
    assert report["statuses"] == {"STATUS_SUCCESS": 200}
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    # The agent's CPU counts the Wine processes that serve it, each by name.
    processes = report["agent"]["processes"]
    session = {p["name"] for p in processes if p["role"] == "session"}
    wine = {p["name"] for p in processes if p["role"] == "wine"}
    assert "scanagent.exe" in session, processes
    assert "winedevice.exe" in wine and any(n.startswith("wineserver") for n in wine), processes
    total = sum(p["cpu_seconds"] for p in processes)
    assert report["agent"]["cpu_seconds"] == pytest.approx(total, abs=0.01)


def test_an_agent_in_go(go_agent: Path, wine_daemon: DaemonThread, wine_prefix: WinePrefix) -> None:
    """Not only C: a Go program (GOOS=windows, syscall.NewLazyDLL) uses the same DLL."""

    def on_message(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        return NtStatus.STATUS_SUCCESS, data.upper()[:out_size]

    harness = wine_daemon.create_port("\\GoPort", message_notify=on_message)
    agent = Agent(
        agent_argv(str(go_agent), ["\\GoPort"]), agent_environment(wine_prefix, wine_daemon.address)
    )
    try:
        assert agent.expect("connected") == "connected"
        assert agent.expect("send") == "send 0x00000000 PING"
        harness.wait_for_connection()
        for text, verdict in ((b"a foul file", b"\x00"), (b"a clean file", b"\x01")):
            result = harness.send_message(text, reply_length=1)
            assert (result.status, result.reply) == (NtStatus.STATUS_SUCCESS, verdict)
        assert agent.expect("verdict id=1") == "verdict id=1 safe=0 reply=0x00000000"
        assert agent.expect("verdict id=2") == "verdict id=2 safe=1 reply=0x00000000"
        harness.close_client_port()
        assert agent.expect("disconnected") == "disconnected"
        assert agent.proc.wait(ANSWER_WAIT) == 0
    finally:
        agent.close()


def test_avscan_agent_maps_real_sections_of_the_builtin_avscan(
    tmp_path: Path, socket_path: str, start_agent: AgentFactory
) -> None:
    """userscan.c's shape: two ports with contexts, a section mapped per scan, and its
    shutdown: CancelIoEx(port, NULL) aborts every get, then the IOCP is closed."""
    watched = tmp_path / "av"
    watched.mkdir()
    with serve(
        socket_path, "--filter", "avscan", "--set", f"avscan.source=dir:{watched}",
        "--set", "avscan.interval=0.05",
    ):  # fmt: skip
        agent = start_agent(socket_path, "avagent", "2")
        assert agent.expect("connected") == "connected, 2 workers"
        for name, content, verdict in (
            ("bad.bin", b"MZ... a foul payload ...", "infected"),
            ("good.bin", b"MZ... nothing to see ...", "clean"),
        ):
            staged = tmp_path / name
            staged.write_bytes(content)
            os.replace(staged, watched / name)
            assert agent.expect("scan ").endswith(f": {verdict} (close 0x00000000)")
        agent.send("q")
        assert agent.expect("cancel scan port") == "cancel scan port 1"
        assert agent.expect("abort listener") == "abort listener: 0x800703e3"
        aborted = [agent.expect("worker: get completed") for _ in range(2)]
        assert aborted == ["worker: get completed with error 995"] * 2
        # Windows wakes threads waiting on a closed completion port with
        # ERROR_ABANDONED_WAIT_0 (735); Wine 8.0 does not (docs/wine.md). Should Wine start
        # to, this fails: then expect "worker: completion port gone, error 735" twice.
        assert agent.expect("workers still waiting") == (
            "workers still waiting after the completion port closed"
        )
        assert agent.expect("bye") == "bye"
        assert agent.proc.wait(ANSWER_WAIT) == 0


def test_misaligned_output_buffers_reach_the_samples_checks(
    socket_path: str, start_agent: AgentFactory
) -> None:
    # fltlib.dll sends lpOutBuffer's low bits (protocol §7.1), so minispy's and avscan's
    # IS_ALIGNED checks see the agent's real buffer: STATUS_DATATYPE_MISALIGNMENT reaches the
    # agent as fltlib translates it, HRESULT_FROM_WIN32(ERROR_NOACCESS).
    from fltemu.samples import avscan, minispy

    log = struct.pack("<II", minispy.MiniSpyCommand.GetMiniSpyLog, 0).hex()
    version = struct.pack("<II", minispy.MiniSpyCommand.GetMiniSpyVersion, 0).hex()
    create = struct.pack(
        "<I4xqI4xQ", avscan.AvScanCommand.AvCmdCreateSectionForDataScan, 99, 0, 0
    ).hex()
    with serve(socket_path, "--filter", "minispy", "--filter", "avscan"):
        spy = start_agent(socket_path)
        assert spy.cmd(f"connect {minispy.PORT_NAME}") == "connect 0x00000000"
        assert spy.cmd(f"sendat {log} 4096 4") == "sendat 0x800703e6 n=0 out="
        assert spy.cmd(f"sendat {log} 4096 8") == "sendat 0x80070103 n=0 out="  # aligned: empty
        assert spy.cmd(f"sendat {version} 4 2") == "sendat 0x800703e6 n=0 out="
        assert spy.cmd(f"sendat {version} 4 4") == "sendat 0x00000000 n=4 out=02000000"
        assert spy.cmd(f"send {version} 4") == "send 0x00000000 n=4 out=02000000"
        av = start_agent(socket_path)
        context = struct.pack("<I", avscan.AvConnectionType.AvConnectForScan).hex()
        assert av.cmd(f"connect {avscan.SCAN_PORT_NAME} {context}") == "connect 0x00000000"
        assert av.cmd(f"sendat {create} 8 12") == "sendat 0x800703e6 n=0 out="
        assert av.cmd(f"sendat {create} 8 0") == "sendat 0x80070490 n=0 out="  # STATUS_NOT_FOUND


def test_fltemu_bench_checks_the_windows_sides_own_limit(
    wine_build: WineBuild, wine_prefix: WinePrefix
) -> None:
    """Under fltemu wine, the limit check measures a Windows agent that does nothing
    (benchagent.exe get) under the same fltemu wine, not fltemu's Python agent."""
    command = [
        sys.executable, "-m", "fltemu", "bench", "\\ScannerPort", "--size", "1032",
        "--reply-length", "1", "--count", "100", "--concurrency", "4",
        "--", sys.executable, "-m", "fltemu", "wine", "--prefix", str(wine_prefix.path),
        "--build-dir", str(wine_build.directory), "--", str(wine_build.agent("scanagent")),
    ]  # fmt: skip
    done = subprocess.run(
        [*command[:5], "--json", *command[5:]],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    limit = report["limit"]
    assert report["under_wine"] is True
    assert limit["windows"] is True and limit["error"] is None, limit
    assert limit["throughput"] > 0 and (limit["mode"], limit["concurrency"]) == ("closed", 4)
    assert "benchagent.exe get" in limit["measured"] and "under Wine" in limit["measured"]
    assert limit["agent_cpu"] is not None  # Wine's processes included
    assert isinstance(report["near_limit"], bool)
    text = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert text.returncode == 0, text.stderr
    assert "the agent runs under Wine (fltemu wine): these figures are its speed under Wine" in (
        text.stdout
    )
    assert "the Windows side's own limit under Wine: " in text.stdout
    assert "against benchagent.exe get (overlapped gets on an I/O completion port" in text.stdout
