"""What only one flavour can show: asyncio cancellation races, threads sharing a sync Port."""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import select
import socket
import sys
import tempfile
import threading
from typing import Any

import pytest

import fltuser
from fltemu import NtStatus, SecurityDescriptor
from fltemu.daemon import Daemon
from fltemu.kernel import ClientPort
from fltemu.wire import NEED_DATA, PROTOCOL_VERSION, Connect, ConnectResult, Role, WireConnection

from ..helpers import connect_as_nobody, until

PORT = "\\FlavourPort"


@pytest.fixture
async def port_clients(daemon: Daemon) -> tuple[Any, list[ClientPort]]:
    flt = daemon.register_filter("flavours")
    clients: list[ClientPort] = []

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> int:
        clients.append(client_port)
        return 0

    await flt.create_communication_port(
        PORT,
        connect_notify=on_connect,
        disconnect_notify=lambda cookie: None,
        message_notify=lambda cookie, data, n: (0, data[:n]),
        max_connections=8,
    )
    return flt, clients


async def test_cancelled_get_hands_an_arriving_message_to_the_next_reader_5a(
    daemon: Daemon, port_clients: tuple[Any, list[ClientPort]]
) -> None:
    flt, clients = port_clients
    port = await fltuser.aconnect(PORT, address=daemon.address)
    getter = asyncio.create_task(port.get_message(64))
    await until(lambda: bool(clients) and clients[0].queues.getter_count == 1)
    # Delivered to the pending getter synchronously; its answer is still in flight...
    result = await flt.send_message(clients[0], b"on its way")
    assert result.status == NtStatus.STATUS_SUCCESS
    getter.cancel()  # ...when the caller gives up.
    with pytest.raises(asyncio.CancelledError):
        await getter
    msg = await port.get_message(64, timeout=5)
    assert msg.data == b"on its way"
    await port.aclose()


async def test_cancelled_get_is_withdrawn_from_the_daemon_5a(
    daemon: Daemon, port_clients: tuple[Any, list[ClientPort]]
) -> None:
    flt, clients = port_clients
    port = await fltuser.aconnect(PORT, address=daemon.address)
    getter = asyncio.create_task(port.get_message(64))
    await until(lambda: bool(clients) and clients[0].queues.getter_count == 1)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    await until(lambda: clients[0].queues.getter_count == 0)
    # Nothing waits now: the kernel's poll finds no getter (nothing is buffered, §1).
    result = await flt.send_message(clients[0], b"x", timeout=0)
    assert result.status == NtStatus.STATUS_TIMEOUT
    await port.aclose()


async def test_threads_share_one_sync_port(
    daemon: Daemon, port_clients: tuple[Any, list[ClientPort]]
) -> None:
    flt, clients = port_clients
    port = await asyncio.to_thread(fltuser.connect, PORT, b"", 0, daemon.address)
    await until(lambda: bool(clients))
    errors: list[BaseException] = []
    received: list[bytes] = []

    def sender(n: int) -> None:
        try:
            for i in range(50):
                data = b"%d-%d" % (n, i)
                assert port.send(data, 64) == data
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(10):
                msg = port.get_message(64, timeout=20)
                received.append(msg.data)
                port.reply(msg.message_id, msg.data.upper())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(6)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    results = await asyncio.gather(
        *(flt.send_message(clients[0], b"k%d" % i, reply_length=8, timeout=20) for i in range(20))
    )
    for t in threads:
        await asyncio.to_thread(t.join, 30)
    assert not errors
    assert sorted(received) == sorted(b"k%d" % i for i in range(20))
    assert sorted(r.reply for r in results) == sorted(b"K%d" % i for i in range(20))
    await asyncio.to_thread(port.close)


async def test_close_wakes_a_thread_blocked_in_get_message(
    daemon: Daemon, port_clients: tuple[Any, list[ClientPort]]
) -> None:
    _, clients = port_clients
    port = await asyncio.to_thread(fltuser.connect, PORT, b"", 0, daemon.address)
    blocked = asyncio.create_task(asyncio.to_thread(port.get_message, 64))
    await until(lambda: bool(clients) and clients[0].queues.getter_count == 1)
    await asyncio.to_thread(port.close)
    with pytest.raises(fltuser.HResultError) as exc:
        await blocked
    assert exc.value.hresult == 0x80070006


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
async def test_default_security_refuses_other_users_2_2() -> None:
    # The default descriptor admits root and the daemon's user only. The socket and its
    # directory are opened up so that the port's own check is what refuses.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        await _refuse_and_admit(os.path.join(tmp, "d.sock"))


async def _refuse_and_admit(socket_path: str) -> None:
    async with Daemon(address=socket_path, socket_mode=0o666) as d:
        flt = d.register_filter("private")
        for name, security in [
            ("\\Private", None),
            ("\\Open", SecurityDescriptor.allow(uids={65534})),
        ]:
            await flt.create_communication_port(
                name,
                connect_notify=lambda *a: 0,
                disconnect_notify=lambda c: None,
                max_connections=1,
                security=security,
            )
        refused = await asyncio.to_thread(connect_as_nobody, "\\Private", socket_path)
        assert refused.startswith("0x80070005 <NtStatus.STATUS_ACCESS_DENIED"), refused
        assert "no permission to reach" not in refused  # the port refused, not the file system
        admitted = await asyncio.to_thread(connect_as_nobody, "\\Open", socket_path)
        assert admitted == "connected"


async def _recording_port(daemon: Daemon, name: str) -> tuple[Any, list[ClientPort], list[str]]:
    """A port whose MessageNotify records each send it sees in ``events``, as "send"."""
    flt = daemon.register_filter("serial")
    clients: list[ClientPort] = []
    events: list[str] = []

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> int:
        clients.append(client_port)
        return 0

    def on_message(cookie: object, data: bytes, out_size: int) -> tuple[int, bytes]:
        events.append("send")
        return 0, data[:out_size]

    await flt.create_communication_port(
        name,
        connect_notify=on_connect,
        disconnect_notify=lambda cookie: None,
        message_notify=on_message,
        max_connections=1,
    )
    return flt, clients, events


def _parked_on_the_handle(thread: threading.Thread) -> bool:
    """Whether ``thread`` waits for its turn on a synchronous handle (§9.7).

    That is, its innermost Python frame is fltuser's serializing wrapper, blocked acquiring
    the handle's lock: it has not started its call (a call under way is deeper down).
    """
    frame = sys._current_frames().get(thread.ident or -1)
    return (
        frame is not None
        and frame.f_code.co_name == "wrapper"
        and frame.f_code.co_filename == inspect.getfile(fltuser.Port)
    )


def _task_parked_on_the_handle(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` waits for its turn on a synchronous handle (an ``asyncio.Lock``)."""
    coro: object = task.get_coro()
    while inspect.iscoroutine(getattr(coro, "cr_await", None)):
        coro = coro.cr_await  # type: ignore[attr-defined]
    return getattr(coro, "cr_code", None) is asyncio.Lock.acquire.__code__


async def test_sync_handle_serializes_calls_9_7(daemon: Daemon) -> None:
    # On a FLT_PORT_FLAG_SYNC_HANDLE handle a thread blocked in FilterGetMessage holds up the
    # other threads' calls, as the I/O manager serializes a synchronous file object: the send
    # reaches the filter only once the get has left.
    flt, clients, events = await _recording_port(daemon, "\\SerialPort")
    options = fltuser.FLT_PORT_FLAG_SYNC_HANDLE
    port = await asyncio.to_thread(fltuser.connect, "\\SerialPort", b"", options, daemon.address)
    await until(lambda: bool(clients))
    getter = asyncio.create_task(asyncio.to_thread(port.get_message, 64))
    await until(lambda: clients[0].queues.getter_count == 1)
    sent: list[bytes] = []
    sender = threading.Thread(target=lambda: sent.append(port.send(b"x", 1)))
    sender.start()
    # Either the send waits for its turn, or (serializing broken) it reaches the filter.
    await until(lambda: _parked_on_the_handle(sender) or "send" in events)
    events.append("get released")
    await flt.send_message(clients[0], b"release")
    assert (await getter).data == b"release"
    await asyncio.to_thread(sender.join, 10)
    assert sent == [b"x"]
    assert events == ["get released", "send"]
    await asyncio.to_thread(port.close)


async def test_async_sync_handle_serializes_calls_9_7(daemon: Daemon) -> None:
    flt, clients, events = await _recording_port(daemon, "\\SerialPort")
    port = await fltuser.aconnect(
        "\\SerialPort", options=fltuser.FLT_PORT_FLAG_SYNC_HANDLE, address=daemon.address
    )
    await until(lambda: bool(clients))
    getter = asyncio.create_task(port.get_message(64))
    await until(lambda: clients[0].queues.getter_count == 1)
    sender = asyncio.create_task(port.send(b"x", 1))
    await until(lambda: _task_parked_on_the_handle(sender) or "send" in events)
    events.append("get released")
    await flt.send_message(clients[0], b"release")
    assert (await getter).data == b"release"
    assert await sender == b"x"
    assert events == ["get released", "send"]
    await port.aclose()


def _daemon_that_goes_away(path: str, unread: bool) -> threading.Thread:
    """A daemon's end that accepts one port connection, then goes away.

    With ``unread``, it waits for the client's next request and leaves it unread: closing a
    Unix socket with unread data resets the connection, so the client's read fails with
    ECONNRESET. Without, it closes at once, and the client's next write fails with EPIPE.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        with listener, listener.accept()[0] as conn:
            wire = WireConnection(Role.KERNEL)
            while (event := wire.next_event()) is NEED_DATA:
                wire.receive_data(conn.recv(4096))
            assert isinstance(event, Connect)
            conn.sendall(wire.send(ConnectResult(PROTOCOL_VERSION, 0, 1 << 20)))
            if unread:
                select.select([conn], [], [], 10)  # the client's request has arrived

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("unread", "error", "code"),
    [(True, ConnectionResetError, errno.ECONNRESET), (False, BrokenPipeError, errno.EPIPE)],
    ids=["read-fails", "write-fails"],
)
def test_sync_port_keeps_the_socket_error_as_the_cause(
    unread: bool, error: type[OSError], code: int
) -> None:
    # The call fails as on any lost connection (the HRESULT is unchanged); the OSError
    # behind it stays chained as its cause, its errno readable.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = os.path.join(tmp, "d.sock")
        server = _daemon_that_goes_away(path, unread)
        port = fltuser.connect("\\Gone", address=path)
        if not unread:
            server.join()  # the daemon's end is closed before the client writes
        with pytest.raises(fltuser.HResultError) as info:
            port.get_message(64)
        server.join()
        port.close()
    assert info.value.hresult == 0x80070006  # E_HANDLE, as for any connection that ends
    cause = info.value.__cause__
    assert isinstance(cause, error)
    assert cause.errno == code
    assert f"[Errno {code}]" in str(info.value)


async def test_async_port_keeps_the_socket_error_as_the_cause() -> None:
    # The async flavour shares the core's rule: the reset behind a lost connection is the
    # failure's cause.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = os.path.join(tmp, "d.sock")
        server = _daemon_that_goes_away(path, unread=True)
        port = await fltuser.aconnect("\\Gone", address=path)
        try:
            with pytest.raises(fltuser.HResultError) as info:
                await port.get_message(64)
        finally:
            await asyncio.to_thread(server.join)
            await port.aclose()
    assert info.value.hresult == 0x80070006
    cause = info.value.__cause__
    assert isinstance(cause, ConnectionResetError)
    assert cause.errno == errno.ECONNRESET
