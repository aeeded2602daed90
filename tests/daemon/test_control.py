"""Control commands against a live in-process daemon (``fltemu ports/send/disconnect/unload``)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import fltemu
import fltuser
from fltemu import NtStatus
from fltemu.daemon import Daemon
from fltemu.kernel import ClientPort
from fltemu.wire import PROTOCOL_VERSION, Control, ControlResult
from fltuser.control import ControlError, ControlTimeoutError, call, wait_ready

from ..helpers import until

PORT = "\\CtlPort"


@pytest.fixture
async def ctl(daemon: Daemon) -> dict[str, Any]:
    flt = daemon.register_filter("ctl")
    state: dict[str, Any] = {"clients": [], "disconnected": [], "filter": flt}

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
        state["clients"].append(client_port)
        return 0, client_port.id

    await flt.create_communication_port(
        PORT,
        connect_notify=on_connect,
        disconnect_notify=state["disconnected"].append,
        message_notify=lambda cookie, data, n: (0, data),
        max_connections=4,
    )
    return state


async def control(daemon: Daemon, *args: Any, **kwargs: Any) -> ControlResult:
    return await asyncio.to_thread(call, Control(PROTOCOL_VERSION, *args, **kwargs), daemon.address)


async def test_ports_lists_filters_ports_and_connections(
    daemon: Daemon, ctl: dict[str, Any]
) -> None:
    port = await fltuser.aconnect(PORT, address=daemon.address)
    getter = asyncio.create_task(port.get_message(64))
    await until(lambda: bool(ctl["clients"]) and ctl["clients"][0].queues.getter_count == 1)
    result = await control(daemon, "ports")
    assert result.status == 0
    (flt,) = result.filters
    assert (flt.name, flt.state) == ("ctl", "registered")
    (info,) = flt.ports
    assert (info.name, info.max_connections, info.connection_count) == (PORT, 4, 1)
    (conn,) = info.connections
    assert conn.pid == os.getpid() and conn.uid == os.geteuid()
    assert conn.pending_getters == 1 and conn.state == "connected"
    getter.cancel()
    await port.aclose()


async def test_send_delivers_and_returns_the_reply(daemon: Daemon, ctl: dict[str, Any]) -> None:
    port = await fltuser.aconnect(PORT, address=daemon.address)
    await until(lambda: bool(ctl["clients"]))
    sent = asyncio.create_task(control(daemon, "send", PORT, None, b"hello", 4, 5.0))
    msg = await port.get_message(64)
    assert (msg.data, msg.reply_length) == (b"hello", 20)
    await port.reply(msg.message_id, b"ok")
    result = await sent
    assert result.status == NtStatus.STATUS_SUCCESS and result.reply == b"ok"
    await port.aclose()


async def test_send_times_out_as_fltsendmessage(daemon: Daemon, ctl: dict[str, Any]) -> None:
    port = await fltuser.aconnect(PORT, address=daemon.address)
    await until(lambda: bool(ctl["clients"]))
    result = await control(daemon, "send", PORT, None, b"nobody reads", None, 0.0)
    assert result.status == NtStatus.STATUS_TIMEOUT
    await port.aclose()


async def test_send_with_a_reply_length_out_of_range_is_answered(
    daemon: Daemon, ctl: dict[str, Any]
) -> None:
    port = await fltuser.aconnect(PORT, address=daemon.address)
    await until(lambda: bool(ctl["clients"]))
    result = await control(daemon, "send", PORT, None, b"x", 0xFFFFFFFF, 1.0)
    assert result.status == NtStatus.STATUS_INVALID_PARAMETER
    assert "reply_length" in result.message
    await port.aclose()


@pytest.mark.parametrize(
    ("args", "status", "text"),
    [
        (("send", "\\Nope"), NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, "no port named"),
        (("send", PORT), NtStatus.STATUS_PORT_DISCONNECTED, "no connected client"),
        (("send", PORT, 999), NtStatus.STATUS_INVALID_PARAMETER, "no connection #999"),
        (("disconnect", PORT, 999), NtStatus.STATUS_INVALID_PARAMETER, "no connection #999"),
        (("unload", "nosuch"), NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, "loaded: ctl"),
        (("bogus",), NtStatus.STATUS_INVALID_PARAMETER, "unknown command"),
    ],
)
async def test_bad_targets_say_what_is_wrong(
    daemon: Daemon, ctl: dict[str, Any], args: tuple[Any, ...], status: NtStatus, text: str
) -> None:
    result = await control(daemon, *args)
    assert result.status == status
    assert text in result.message


async def test_disconnect_closes_one_or_all_connections(
    daemon: Daemon, ctl: dict[str, Any]
) -> None:
    ports = [await fltuser.aconnect(PORT, address=daemon.address) for _ in range(3)]
    await until(lambda: len(ctl["clients"]) == 3)
    first = ctl["clients"][0]
    result = await control(daemon, "disconnect", PORT, first.id)
    assert (result.status, result.count) == (0, 1)
    with pytest.raises(fltuser.HResultError) as exc:
        await ports[0].send(b"x", 1)
    assert exc.value.hresult == 0x80070006
    assert await ports[1].send(b"y", 1) == b"y"
    result = await control(daemon, "disconnect", PORT)
    assert (result.status, result.count) == (0, 2)
    for port in ports:
        await port.aclose()
    await until(lambda: len(ctl["disconnected"]) == 3)


async def test_unload_disconnects_and_removes_the_filter(
    daemon: Daemon, ctl: dict[str, Any]
) -> None:
    port = await fltuser.aconnect(PORT, address=daemon.address)
    result = await control(daemon, "unload", "ctl")
    assert result.status == 0
    assert "ctl" not in daemon.manager.filters
    with pytest.raises(fltuser.HResultError) as exc:
        await port.send(b"x", 1)
    assert exc.value.hresult == 0x80070006
    assert (await control(daemon, "ports")).filters == ()
    await port.aclose()


async def test_caller_leaving_withdraws_its_message(daemon: Daemon, ctl: dict[str, Any]) -> None:
    # A `fltemu send` interrupted with Ctrl-C must not leave its message behind.
    port = await fltuser.aconnect(PORT, address=daemon.address)
    await until(lambda: bool(ctl["clients"]))
    client = ctl["clients"][0]
    reader, writer = await asyncio.open_unix_connection(daemon.address)
    from fltemu.wire import Role, WireConnection

    writer.write(
        WireConnection(Role.USER).send(Control(PROTOCOL_VERSION, "send", PORT, None, b"x"))
    )
    await until(lambda: client.queues.sender_count == 1)
    writer.close()
    await until(lambda: client.queues.sender_count == 0)
    with pytest.raises(TimeoutError):
        await port.get_message(64, timeout=0.1)
    await port.aclose()


async def test_no_daemon_is_a_clear_error(socket_path: str) -> None:
    with pytest.raises(ControlError, match="no fltemu daemon is listening"):
        await asyncio.to_thread(call, Control(PROTOCOL_VERSION, "ports"), socket_path)


async def test_control_connection_cannot_become_a_port(daemon: Daemon, ctl: Any) -> None:
    # One command per connection: anything after it is a protocol error, not a second command.
    from fltemu.wire import NEED_DATA, Connect, Role, WireConnection

    reader, writer = await asyncio.open_unix_connection(daemon.address)
    user = WireConnection(Role.USER)
    writer.write(user.send(Control(PROTOCOL_VERSION, "ports")))
    forged = WireConnection(Role.USER).send(Connect(PROTOCOL_VERSION, PORT))
    writer.write(forged)
    user.receive_data(await reader.read())  # everything until the daemon closes
    user.receive_data(b"")
    events = []
    try:
        while (event := user.next_event()) is not NEED_DATA:
            events.append(type(event).__name__)
    except fltemu.RemoteProtocolError:
        events.append("error")  # a Goodbye after the result is not for a control connection
    assert events[0] in ("ControlResult", "Goodbye")
    assert "ConnectResult" not in events
    writer.close()


def _ports_as_nobody(address: str) -> int:
    """Fork a child that drops to uid 65534 and asks for ``ports``; return the status."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            result = call(Control(PROTOCOL_VERSION, "ports"), address)
            os.write(write_fd, str(result.status).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    return int(report)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
async def test_control_is_for_root_and_the_daemon_user_only() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        async with Daemon(address=os.path.join(tmp, "d.sock"), socket_mode=0o666) as d:
            status = await asyncio.to_thread(_ports_as_nobody, d.address)
    assert status == NtStatus.STATUS_ACCESS_DENIED


def test_status_and_wait_are_bounded_by_a_daemon_that_never_answers(tmp_path: Path) -> None:
    # A socket that accepts (its backlog does) but never answers: a wedged or busy daemon.
    # A health check and `fltemu wait --timeout` must come back, not hang.
    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(8)
        with pytest.raises(ControlTimeoutError):
            call(Control(PROTOCOL_VERSION, "status"), path, timeout=0.2)
        with pytest.raises(TimeoutError) as exc:
            wait_ready(path, timeout=0.3)
        assert "did not answer in time" in str(exc.value)
