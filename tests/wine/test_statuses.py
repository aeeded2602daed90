"""Every status of the Windows-agent contract, as a Windows program under Wine sees it
through fltemu's fltlib.dll and fltemu.sys (semantics §3, §5.2).

Each test drives ``probe.exe`` (``client/windows/agents/probe.c``) line by line against a
port created by the test, and asserts the HRESULT, the completion's Win32 error and byte
count, and what the kernel side saw.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fltemu.kernel.security import SecurityDescriptor
from fltemu.status import NtStatus
from fltemu.testing import DaemonThread, PortHarness

from .conftest import ANSWER_WAIT, Agent, AgentFactory, fields

PORT = "\\WinePort"
#: The first test also builds the Windows side and creates the prefix.
pytestmark = pytest.mark.timeout(240)


def _echo(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
    return NtStatus.STATUS_SUCCESS, data.upper()[:out_size]


def bound_agent(
    daemon: DaemonThread, start_agent: AgentFactory, **port: Any
) -> tuple[PortHarness, Agent]:
    """A port on ``daemon`` and a probe connected to it, its handle bound to a completion
    port (key 7), as scanuser.exe does."""
    harness = daemon.create_port(PORT, **port)
    agent = start_agent(daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    assert agent.cmd("bind") == "bind 1"
    return harness, agent


# --- §3.1 FilterConnectCommunicationPort ---------------------------------------------------


def test_connect_results_3_1(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    harness = wine_daemon.create_port(PORT, max_connections=1, message_notify=_echo)
    wine_daemon.create_port("\\Refuser", connect_status=NtStatus.STATUS_CONNECTION_REFUSED)
    wine_daemon.create_port("\\Nobody", security=SecurityDescriptor(uids=frozenset({12345})))
    agent = start_agent(wine_daemon.address)
    other = start_agent(wine_daemon.address)
    assert agent.cmd("connect \\NoSuchPort") == "connect 0x80070002"
    assert agent.cmd("connect NoBackslash") == "connect 0x800700a1"
    assert agent.cmd("connect \\Refuser") == "connect 0x800704c9"
    assert agent.cmd("connect \\Nobody") == "connect 0x80070005"
    assert agent.cmd("connectbad") == "connectbad 0x80070057"
    assert agent.cmd(f"connect {PORT} 0102a0ff") == "connect 0x00000000"
    assert harness.contexts == [b"\x01\x02\xa0\xff"]
    assert harness.wait_for_connection().process.uid is not None
    # max_connections = 1: the second client is refused, §3.1.
    assert other.cmd(f"connect {PORT}") == "connect 0x800704d6"


def test_context_size_limits_3_1(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    """65511 bytes is the most an x64 fltlib carries; 65512 to 65535 are refused with
    0x80070005, as by the Python clients (§3.1 [INF], protocol §5)."""
    harness = wine_daemon.create_port(PORT, max_connections=5)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connectsize {PORT} 65511") == "connectsize 0x00000000"
    assert agent.cmd(f"connectsize {PORT} 65512") == "connectsize 0x80070005"
    assert agent.cmd(f"connectsize {PORT} 65535") == "connectsize 0x80070005"
    assert [len(c) for c in harness.contexts] == [65511]


def test_an_agent_that_exits_right_after_connecting_exits_cleanly(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    """A connect returns once fltlib's reader thread runs, so an agent that exits at once
    does not end its process while Wine still sets that thread up (Wine then printed "wine
    client error: ... sendmsg: Socket operation on non-socket" on the agent's output, in 12 of
    60 tries): its output is its own, to the last line."""
    wine_daemon.create_port(PORT, max_connections=64)
    for _ in range(30):
        agent = start_agent(wine_daemon.address)
        assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
        agent.send("exit 3")
        assert agent.line() == "bye"
        assert agent.proc.wait(ANSWER_WAIT) == 3
        assert agent.lines.get(timeout=ANSWER_WAIT) is None, "more output after the last line"


def test_no_daemon_is_file_not_found(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    agent = start_agent(wine_daemon.address + ".missing")
    assert agent.cmd(f"connect {PORT}") == "connect 0x80070002"


# --- §3.2 FilterSendMessage ----------------------------------------------------------------


def test_send_results_3_2(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    def notify(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        statuses = {
            b"overflow": NtStatus.STATUS_BUFFER_OVERFLOW,
            b"nomore": NtStatus.STATUS_NO_MORE_ENTRIES,
            b"timeout": NtStatus.STATUS_TIMEOUT,
            b"fail": NtStatus.STATUS_INVALID_PARAMETER,
            b"small": NtStatus.STATUS_BUFFER_TOO_SMALL,
        }
        return statuses.get(data, NtStatus.STATUS_SUCCESS), data.upper()[:out_size]

    wine_daemon.create_port(PORT, message_notify=notify)
    wine_daemon.create_port("\\Mute", filter_name="mute")
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    assert agent.cmd(f"send {b'hello'.hex()} 64") == f"send 0x00000000 n=5 out={b'HELLO'.hex()}"
    assert agent.cmd(f"send {b'hello'.hex()} 3") == f"send 0x00000000 n=3 out={b'HEL'.hex()}"
    assert agent.cmd(f"send {b'hello'.hex()} 0") == "send 0x00000000 n=0 out="
    # Warnings keep their output; failures return nothing (§3.2).
    assert agent.cmd(f"send {b'overflow'.hex()} 64") == (
        f"send 0x800700ea n=8 out={b'OVERFLOW'.hex()}"
    )
    assert agent.cmd(f"send {b'nomore'.hex()} 64").startswith("send 0x80070103 n=6")
    assert agent.cmd(f"send {b'timeout'.hex()} 64").startswith("send 0x80070102")
    assert agent.cmd(f"send {b'fail'.hex()} 64") == "send 0x80070057 n=0 out="
    # STATUS_BUFFER_TOO_SMALL becomes the warning STATUS_FLT_BUFFER_TOO_SMALL (protocol §7.1).
    assert agent.cmd(f"send {b'small'.hex()} 64") == f"send 0x8007007a n=5 out={b'SMALL'.hex()}"
    assert agent.cmd("sendnull") == "sendnull 0x80070057"
    mute = start_agent(wine_daemon.address)
    assert mute.cmd("connect \\Mute") == "connect 0x00000000"
    assert mute.cmd(f"send {b'x'.hex()} 4") == "send 0x80070001 n=0 out="


# --- §3.3 FilterGetMessage and §3.4 FilterReplyMessage -------------------------------------


def test_overlapped_get_and_reply_3_3(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    harness, agent = bound_agent(wine_daemon, start_agent)
    assert agent.cmd("oget 0 1048") == "oget 0 0x800703e5"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(harness.send_message, b"scan me", 1)
        done = agent.cmd("wait 20000")
        assert (
            done
            == f"done 0 ok=1 err=0 bytes=23 key=7 0x00000000 rl=17 id=1 data={b'scan me'.hex()}"
        )
        assert agent.cmd("reply 1 0 01") == "reply 0x00000000"
        result = sent.result(20)
    assert result.status == NtStatus.STATUS_SUCCESS
    assert result.reply == b"\x01"
    # A message that expects no reply has id 0 and ReplyLength 0.
    assert agent.cmd("oget 1 64") == "oget 1 0x800703e5"
    assert harness.send_message(b"note").status == NtStatus.STATUS_SUCCESS
    assert (
        agent.cmd("wait 20000")
        == f"done 1 ok=1 err=0 bytes=20 key=7 0x00000000 rl=0 id=0 data={b'note'.hex()}"
    )


def test_buffer_too_small_keeps_the_message_3_3(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    harness, agent = bound_agent(wine_daemon, start_agent)
    assert agent.cmd("oget 0 20") == "oget 0 0x800703e5"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(harness.send_message, b"a message of 30 bytes exactly!", None)
        # ERROR_INSUFFICIENT_BUFFER, the byte count is the size needed (46 = 30 + 16).
        assert agent.cmd("wait 20000").startswith("done 0 ok=0 err=122 bytes=46")
        assert agent.cmd("oget 1 100") == "oget 1 0x800703e5"
        done = agent.cmd("wait 20000")
        assert done.startswith("done 1 ok=1 err=0 bytes=46")
        assert fields(done)["data"] == b"a message of 30 bytes exactly!".hex()
        assert sent.result(20).status == NtStatus.STATUS_SUCCESS
    # A synchronous get too small: 0x8007007A, message kept for the next getter.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(harness.send_message, b"0123456789", None)
        assert agent.cmd("get 20") == "get 0x8007007a"
        assert agent.cmd("get 64") == f"get 0x00000000 rl=0 id=0 data={b'0123456789'.hex()}"
        assert sent.result(20).status == NtStatus.STATUS_SUCCESS


def test_reply_results_3_4(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    harness = wine_daemon.create_port(PORT)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    assert agent.cmd("replyshort") == "replyshort 0x80070057"
    assert agent.cmd("reply 99 0 00") == "reply 0x801f0020"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The kernel sender gives up after 0.5 s: the reply comes too late (§3.4).
        sent = pool.submit(harness.send_message, b"hurry", 4, 0.5)
        got = agent.cmd("get 64")
        assert got.startswith("get 0x00000000 rl=20 id=1")
        assert sent.result(20).status == NtStatus.STATUS_TIMEOUT
        assert agent.cmd("reply 1 0 01020304") == "reply 0x801f0020"
        # A reply longer than the kernel's buffer is cut: ERROR_MORE_DATA for the agent.
        sent = pool.submit(harness.send_message, b"again", 2)
        assert agent.cmd("get 64").startswith("get 0x00000000 rl=18 id=2")
        assert agent.cmd("reply 2 0 01020304") == "reply 0x800700ea"
        result = sent.result(20)
        assert (result.status, result.reply) == (NtStatus.STATUS_BUFFER_OVERFLOW, b"\x01\x02")


# --- §3.5 cancellation, disconnects, CloseHandle ------------------------------------------


def test_cancel_3_5(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    harness, agent = bound_agent(wine_daemon, start_agent)
    assert agent.cmd("oget 0 64") == "oget 0 0x800703e5"
    assert agent.cmd("cancel 0") == "cancel 1 err=0"
    assert agent.cmd("wait 20000") == "done 0 ok=0 err=995 bytes=0 key=7 0x80004005"
    # A finished request cannot be cancelled: ERROR_NOT_FOUND.
    assert agent.cmd("cancel 0") == "cancel 0 err=1168"
    for slot in (1, 2):
        assert agent.cmd(f"oget {slot} 64") == f"oget {slot} 0x800703e5"
    assert agent.cmd("cancelall") == "cancelall 1 err=0"
    done = sorted(agent.cmd("wait 20000") for _ in range(2))
    assert [line.split()[1] for line in done] == ["1", "2"]
    assert all("ok=0 err=995 bytes=0" in line for line in done), done
    # A synchronous get on another thread, cancelled by CancelIoEx(h, NULL): 0x800703E3.
    assert agent.cmd("tget 5 64") == "tget-started 5"
    harness.wait_for_getters(1)
    assert agent.cmd("cancelall") == "cancelall 1 err=0"
    assert agent.expect("tget 5") == "tget 5 0x800703e3"
    # Nothing was lost: the port still works.
    assert agent.cmd("oget 3 64") == "oget 3 0x800703e5"
    assert harness.send_message(b"after").status == NtStatus.STATUS_SUCCESS
    assert agent.cmd("wait 20000").startswith("done 3 ok=1 err=0 bytes=21")


def test_kernel_disconnect_3_5(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    harness, agent = bound_agent(wine_daemon, start_agent, message_notify=_echo)
    assert agent.cmd("oget 0 64") == "oget 0 0x800703e5"
    harness.wait_for_connection()
    harness.close_client_port()  # FltCloseClientPort
    assert agent.cmd("wait 20000") == "done 0 ok=0 err=6 bytes=0 key=7 0x80004005"
    # From now on every call fails at once with E_HANDLE, and no packet is queued.
    assert agent.cmd("oget 1 64") == "oget 1 0x80070006"
    assert agent.cmd(f"send {b'x'.hex()} 4") == "send 0x80070006 n=0 out="
    assert agent.cmd("reply 1 0 00") == "reply 0x80070006"
    assert agent.cmd("get 64") == "get 0x80070006"
    assert agent.cmd("wait 500") == "wait ok=0 err=258 nullovl"


def test_kernel_disconnect_with_nothing_pending_3_3(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    """The first call after FltCloseClientPort fails at once, even an overlapped get."""
    harness, agent = bound_agent(wine_daemon, start_agent)
    assert agent.cmd("dup") == "dup 1"
    harness.wait_for_connection()
    harness.close_client_port()
    # A send on the duplicate travels through the driver's connection, whose frames arrive in
    # order: once it is answered, the daemon's Disconnected notice has reached the driver (a
    # send's answer does not mark the connection ended by itself, a get's would).
    assert agent.cmd("usedup") == "usedup 1"
    assert agent.cmd(f"send {b'x'.hex()} 4") == "send 0x80070006 n=0 out="
    assert agent.cmd("usedup") == "usedup 1"
    assert agent.cmd("oget 0 64") == "oget 0 0x80070006"
    assert agent.cmd("wait 500") == "wait ok=0 err=258 nullovl"


def test_close_handle_with_gets_pending_3_5(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    """Gets pending when the handle closes end with ERROR_INVALID_HANDLE: fltmgr's cleanup
    runs the disconnect sequence (§3.5, §2.4), which completes every pending getter with
    STATUS_PORT_DISCONNECTED, overlapped (packets still reach the IOCP) or synchronous on
    another thread, as the Python clients give."""
    harness, agent = bound_agent(wine_daemon, start_agent)
    assert agent.cmd("oget 0 64") == "oget 0 0x800703e5"
    assert agent.cmd("oget 1 64") == "oget 1 0x800703e5"
    assert agent.cmd("tget 2 64") == "tget-started 2"
    harness.wait_for_getters(3)
    assert agent.cmd("close") == "close 1"
    completions = [agent.cmd("wait 20000") for _ in range(2)]
    assert all("err=6 " in line for line in completions), completions
    assert agent.expect("tget 2") == "tget 2 0x80070006"
    harness.wait_for_disconnect()
    # Once the daemon has no socket of the agent left, no other teardown can come.
    wine_daemon.wait_for_sessions(0)
    assert len(harness.disconnects) == 1
    # The slot is free again: a new connection is admitted.
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"


@pytest.mark.parametrize("path", ["direct", "device"])
def test_close_while_a_send_is_in_message_notify_2_4(
    wine_daemon: DaemonThread, start_agent: AgentFactory, path: str
) -> None:
    """CloseHandle on one thread while another's FilterSendMessage is inside MessageNotify:
    the cleanup waits for MessageNotify (§2.4 step 4) and the sender gets its answer, as the
    Python clients do. ``device``: the send travels through fltemu.sys (a duplicate handle,
    which the DLL did not connect itself)."""
    entered = threading.Event()
    release = threading.Event()

    async def slow(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        entered.set()
        await asyncio.to_thread(release.wait, 30)
        return NtStatus.STATUS_SUCCESS, b"done!"

    harness = wine_daemon.create_port(PORT, message_notify=slow)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    if path == "device":
        assert agent.cmd("dup") == "dup 1"
        assert agent.cmd("close") == "close 1"
        assert agent.cmd("usedup") == "usedup 1"
    assert agent.cmd(f"tsend {b'scan'.hex()} 16") == "tsend-started"
    assert entered.wait(ANSWER_WAIT)
    assert agent.cmd("close") == "close 1"
    harness.wait_for_closing()
    release.set()
    assert agent.expect("tsend ") == f"tsend 0x00000000 n=5 out={b'done!'.hex()}"
    harness.wait_for_disconnect()


def test_duplicate_handle(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    harness = wine_daemon.create_port(PORT, message_notify=_echo)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    assert agent.cmd("dup") == "dup 1"
    assert agent.cmd("close") == "close 1"
    assert agent.cmd("usedup") == "usedup 1"
    # The connection lives while a handle to it does.
    assert agent.cmd(f"send {b'dup'.hex()} 8") == f"send 0x00000000 n=3 out={b'DUP'.hex()}"
    assert harness.disconnects == []
    assert agent.cmd("close") == "close 1"
    harness.wait_for_disconnect()


def test_killed_agent_disconnects_once(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    harness, agent = bound_agent(wine_daemon, start_agent)
    assert agent.cmd("oget 0 64") == "oget 0 0x800703e5"
    agent.kill()
    harness.wait_for_disconnect()
    wine_daemon.wait_for_sessions(0)
    assert len(harness.disconnects) == 1


def test_daemon_stops_while_the_agent_waits(start_agent: AgentFactory) -> None:
    daemon = DaemonThread()
    daemon.start()
    try:
        harness = daemon.create_port(PORT)
        agent = start_agent(daemon.address)
        assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
        assert agent.cmd("bind") == "bind 1"
        assert agent.cmd("oget 0 64") == "oget 0 0x800703e5"
        assert agent.cmd("tget 1 64") == "tget-started 1"
        harness.wait_for_getters(2)
    finally:
        daemon.stop()
    assert agent.cmd("wait 20000") == "done 0 ok=0 err=6 bytes=0 key=7 0x80004005"
    assert agent.expect("tget 1") == "tget 1 0x80070006"
    assert agent.cmd(f"send {b'x'.hex()} 4") == "send 0x80070006 n=0 out="
    assert agent.cmd("oget 2 64") == "oget 2 0x80070006"


def test_bad_arguments_and_handles(wine_daemon: DaemonThread, start_agent: AgentFactory) -> None:
    wine_daemon.create_port(PORT)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    agent.send("badhandle")
    # A handle that is not a port (an event): STATUS_OBJECT_TYPE_MISMATCH -> E_HANDLE.
    assert agent.expect("badsend ") == "badsend 0x80070006"
    assert agent.expect("badget ") == "badget 0x80070006"
    assert agent.expect("badget-null") == "badget-null 0x80070057"
    assert agent.expect("badget-zero") == "badget-zero 0x80070057"
    assert agent.expect("badsend-closed") == "badsend-closed 0x80070006"


def test_management_functions_answer_for_the_daemons_filters(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    wine_daemon.filter("scanner")
    wine_daemon.filter("minispy")
    agent = start_agent(wine_daemon.address)
    agent.send("filters")
    for info_class, header in ((0, 14), (1, 24), (2, 28)):
        need = header + 2 * len("scanner")  # the first filter registered
        assert agent.expect(f"small {info_class}") == f"small {info_class} 0x8007007a n={need}"
        names = {agent.expect(f"filter {info_class}").split()[2] for _ in range(2)}
        assert names == {"scanner", "minispy"}
        assert agent.expect(f"filters {info_class}") == (
            f"filters {info_class} 0x80070103 close 0x00000000"
        )
    agent.send("misc ScAnNeR")  # filter names compare case-insensitively
    expected = {
        "FilterVolumeFindFirst": "0x80070103",  # no volume, consistently
        "FilterVolumeInstanceFindFirst": "0x801f0014",
        "FilterGetDosName": "0x801f0014",
        "FilterLoad-loaded": "0x80070420",  # ERROR_SERVICE_ALREADY_RUNNING
        "FilterLoad": "0x80070002",
        "FilterUnload": "0x801f0013",
        "FilterInstanceFindFirst-loaded": "0x80070103",
        "FilterInstanceFindFirst": "0x801f0013",
        "FilterAttach-loaded": "0x801f0014",
        "FilterAttach": "0x801f0013",
        "FilterDetach": "0x801f0013",
        "FilterCreate": "0x801f0013",
        "FilterCreate-loaded": "0x00000000",
    }
    got = dict(agent.line().split() for _ in expected)
    assert got == expected
    assert agent.line() == "FilterGetInformation 0x00000000 n=28 name=scanner"
    assert agent.line() == "FilterClose 0x00000000"
    assert agent.line() == "FilterClose-again 0x80070006"
    assert agent.line() == "FilterFindNext-bad 0x80070006"
    # FilterUnload of a loaded filter is FltUnregisterFilter in the daemon.
    assert agent.cmd("unload minispy") == "unload 0x00000000"
    agent.send("filters")
    assert agent.expect("filter 0") == "filter 0 scanner"
    assert agent.expect("filters 0") == "filters 0 0x80070103 close 0x00000000"


def test_management_functions_without_a_daemon(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    agent = start_agent(wine_daemon.address + ".missing")
    agent.send("filters")
    assert agent.expect("small 0") == "small 0 0x80070103 n=0"
    assert agent.expect("filters 0") == "filters 0 0x80070103 close 0x00000000"


# --- sections (avscan's AvCmdCreateSectionForDataScan) -------------------------------------


def test_a_section_handle_in_the_output_maps_the_content(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    content = b"the scanned file's bytes, foul or not"

    def notify(cookie: object, data: bytes, out_size: int) -> object:
        # A made-up handle value at offset 8; the Windows side puts a real one there.
        return NtStatus.STATUS_SUCCESS, b"header--" + (0x104).to_bytes(8, "little"), {8: content}

    wine_daemon.create_port(PORT, message_notify=notify)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    got = fields(agent.cmd(f"sendmap {b'map'.hex()} 16 8 {len(content)}"))
    assert agent.seen[-1].startswith("sendmap 0x00000000 ")
    assert got == {"view": "1", "data": content.hex(), "size": "4096", "closed": "1"}


# --- more of the port handle: sync handles, GetOverlappedResult, CancelIo, limits ------------


def test_sync_handle_and_get_overlapped_result_3_1(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    harness = wine_daemon.create_port(PORT, max_connections=2)
    agent = start_agent(wine_daemon.address)
    # FLT_PORT_FLAG_SYNC_HANDLE: a synchronous handle; a get blocks until the message.
    assert agent.cmd(f"connect {PORT} - 1") == "connect 0x00000000"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(harness.send_message, b"sync", None)
        assert agent.cmd("get 64") == f"get 0x00000000 rl=0 id=0 data={b'sync'.hex()}"
        assert sent.result(20).status == NtStatus.STATUS_SUCCESS
    other = start_agent(wine_daemon.address)
    assert other.cmd(f"connect {PORT}") == "connect 0x00000000"
    # An overlapped get on a handle with no completion port: GetOverlappedResult waits.
    assert other.cmd("oget 0 64") == "oget 0 0x800703e5"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(harness.send_message, b"ovl", None, 20.0, harness.connections[-1])
        assert other.cmd("result 0") == "result 0 ok=1 err=0 bytes=19"
        assert sent.result(20).status == NtStatus.STATUS_SUCCESS
    # CancelIo cancels this thread's pending gets.
    assert other.cmd("oget 1 64") == "oget 1 0x800703e5"
    assert other.cmd("cancelio") == "cancelio 1"
    assert other.cmd("result 1") == "result 1 ok=0 err=995 bytes=0"


def test_a_send_over_the_daemons_limit_14(start_agent: AgentFactory) -> None:
    with DaemonThread(max_message_bytes=1024) as daemon:
        daemon.create_port(PORT, message_notify=_echo)
        agent = start_agent(daemon.address)
        assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
        assert agent.cmd(f"send {(b'x' * 2000).hex()} 16") == "send 0x800705aa n=0 out="
        assert agent.cmd(f"send {b'fits'.hex()} 16") == f"send 0x00000000 n=4 out={b'FITS'.hex()}"


def test_no_memory_for_an_answer_fails_that_send_only(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    """fltlib's reader has no memory for one send's answer (``FLTEMU_FAULT_ALLOC_LIMIT``
    makes its allocations over 4096 bytes fail): that FilterSendMessage fails with
    0x800705AA (STATUS_INSUFFICIENT_RESOURCES), while a send in flight on another thread gets
    its own answer, and the handle's direct connection goes on."""
    entered = threading.Event()
    release = threading.Event()

    async def notify(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        if data == b"wait":
            entered.set()
            await asyncio.to_thread(release.wait, 30)
            return NtStatus.STATUS_SUCCESS, b"done!"
        return NtStatus.STATUS_SUCCESS, data.upper()[:out_size]

    wine_daemon.create_port(PORT, message_notify=notify)
    agent = start_agent(wine_daemon.address, env={"FLTEMU_FAULT_ALLOC_LIMIT": "4096"})
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    assert agent.cmd(f"tsend {b'wait'.hex()} 16") == "tsend-started"
    assert entered.wait(ANSWER_WAIT)
    assert agent.cmd(f"send {(b'x' * 6000).hex()} 6000") == "send 0x800705aa n=0 out="
    release.set()
    assert agent.expect("tsend ") == f"tsend 0x00000000 n=5 out={b'done!'.hex()}"
    assert agent.cmd(f"send {b'fits'.hex()} 16") == f"send 0x00000000 n=4 out={b'FITS'.hex()}"
    # The driver's socket and the DLL's own: the direct path did not end.
    wine_daemon.wait_for_sessions(2)


def test_connect_while_the_filter_unloads_3_1(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    flt = wine_daemon.filter("leaving")

    async def on_connect(client_port: object, cookie: object, context: bytes) -> NtStatus:
        # The filter starts unloading while ConnectNotify runs (semantics §2.3).
        asyncio.get_running_loop().create_task(flt.unload())
        await asyncio.sleep(0.2)
        return NtStatus.STATUS_SUCCESS

    async def create() -> None:
        await flt.create_communication_port(
            "\\LeavingPort",
            connect_notify=on_connect,
            disconnect_notify=lambda cookie: None,
            max_connections=1,
        )

    wine_daemon.run(create())
    agent = start_agent(wine_daemon.address)
    assert agent.cmd("connect \\LeavingPort") == "connect 0x801f000b"


def _wait_for_pending_gets(address: str, count: int) -> None:
    """Until the daemon (another process) has ``count`` gets pending, by ``fltemu ports``."""
    deadline = time.monotonic() + ANSWER_WAIT
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "fltemu", "ports", "--json", "--address", address],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        pending = sum(
            connection["pending_getters"]
            for flt in json.loads(done.stdout)
            for port in flt["ports"]
            for connection in port["connections"]
        )
        if pending >= count:
            return
        assert time.monotonic() < deadline, f"{pending} gets pending, not {count}"


def test_a_killed_daemon_fails_every_wait(
    tmp_path: Path, socket_path: str, start_agent: AgentFactory
) -> None:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fltemu", "serve", "--filter", "echo", "--address", socket_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert daemon.stdout is not None and "listening on" in daemon.stdout.readline()
        agent = start_agent(socket_path)
        assert agent.cmd("connect \\EchoPort") == "connect 0x00000000"
        assert agent.cmd("bind") == "bind 1"
        assert agent.cmd("oget 0 64") == "oget 0 0x800703e5"
        assert agent.cmd("tget 1 64") == "tget-started 1"
        _wait_for_pending_gets(socket_path, 2)
        daemon.kill()
        assert agent.cmd("wait 20000") == "done 0 ok=0 err=6 bytes=0 key=7 0x80004005"
        assert agent.expect("tget 1") == "tget 1 0x80070006"
        assert agent.cmd(f"send {b'x'.hex()} 4") == "send 0x80070006 n=0 out="
    finally:
        daemon.kill()
        daemon.communicate(timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_daemon_of_another_user_is_refused(start_agent: AgentFactory) -> None:
    """Protocol §1: the Windows side, too, talks only to a daemon of its user, root, or
    FLTEMU_TRUST_UID."""
    folder = Path(tempfile.mkdtemp(prefix="fltemu-shared-"))
    folder.chmod(0o1777)
    path = folder / "impostor.sock"
    # Answers every connection with ConnectResult(1, STATUS_OBJECT_NAME_NOT_FOUND).
    script = f"""
import os, socket
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX); s.bind({str(path)!r}); s.listen(8)
print("ready", flush=True)
while True:
    c = s.accept()[0]
    try:  # a refusing client closes at once: then there is no one to answer
        if c.recv(4096):
            c.sendall(bytes.fromhex("090000009410" "01ce c0000034 00".replace(" ", "")))
    except OSError:
        pass
    c.close()
"""
    impostor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout is not None and impostor.stdout.readline() == "ready\n"
        agent = start_agent(str(path))
        assert agent.cmd(f"connect {PORT}") == "connect 0x80070005"
        agent.send("filters")
        assert agent.expect("small 0") == "small 0 0x80070005 n=0"
        trusting = start_agent(str(path), "probe", env={"FLTEMU_TRUST_UID": "65534"})
        assert trusting.cmd(f"connect {PORT}") == "connect 0x80070002"  # it was asked
    finally:
        impostor.kill()
        impostor.communicate()
        shutil.rmtree(folder)


@pytest.mark.parametrize("keep_a_duplicate", [False, True], ids=["only-handle", "duplicated"])
def test_a_closed_handles_value_reused_is_not_the_port(
    wine_daemon: DaemonThread, start_agent: AgentFactory, keep_a_duplicate: bool
) -> None:
    """FilterSendMessage on a value whose handle was closed and whose number now names an
    event: 0x80070006, as on Windows, never a call on the old connection, even while a
    duplicate keeps that connection open (fltlib's direct path checks the handle)."""
    seen: list[bytes] = []

    def record(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        seen.append(data)
        return NtStatus.STATUS_SUCCESS, data

    wine_daemon.create_port(PORT, message_notify=record)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    assert agent.cmd(f"send {b'one'.hex()} 8") == f"send 0x00000000 n=3 out={b'one'.hex()}"
    if keep_a_duplicate:
        assert agent.cmd("dup") == "dup 1"
    assert agent.cmd("closereuse") == "closereuse 1 reused=1 send 0x80070006"
    assert seen == [b"one"]


def test_a_thread_that_exits_cancels_its_overlapped_get_3_5(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    """A thread that exits with an overlapped get pending on a handle with no completion
    port: the get is cancelled (ERROR_OPERATION_ABORTED), and once its event is set the
    OVERLAPPED says so, every time (§3.5)."""
    harness = wine_daemon.create_port(PORT)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    results = []
    for _ in range(10):
        assert agent.cmd("xget 0 64") == "xget-started 0"
        harness.wait_for_getters(1)  # the get waits in the daemon when its thread exits
        results.append(agent.cmd("xexit 0"))
        harness.wait_for_getters(0, exactly=True)
    assert results == ["xexit 0 signalled=1 ok=0 err=995"] * 10


def test_threads_that_exit_at_once_cancel_their_overlapped_gets_3_5(
    wine_daemon: DaemonThread, start_agent: AgentFactory
) -> None:
    """Many threads in a row issue an overlapped get with an event on a handle with no
    completion port and exit at once; the agent waits for the event only, then calls
    GetOverlappedResult without waiting: ERROR_OPERATION_ABORTED every time (§3.5), never
    ERROR_IO_INCOMPLETE. Wine cancels an exiting thread's I/O while the thread still runs, and
    a completion that reaches wineserver before the thread's death goes to that thread as an
    APC it never runs: the event is set, the OVERLAPPED never written (without fltlib's own
    cancel at thread detach, a quarter of the exits on an idle machine, most of them with the
    CPUs busy and the exiting threads at SCHED_IDLE)."""
    wine_daemon.create_port(PORT)
    agent = start_agent(wine_daemon.address)
    assert agent.cmd(f"connect {PORT}") == "connect 0x00000000"
    for spin, idle in ((0, 0), (2, 1)):
        assert agent.cmd(f"xloop 100 {spin} {idle}", timeout=120) == (
            "xloop 100 aborted=100 incomplete=0 other=0 first=-"
        )
