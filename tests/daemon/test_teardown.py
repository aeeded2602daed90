"""Teardown edges: the moment a client vanishes, cancelled callbacks, interrupted unloads,
and CloseHandle returning only after DisconnectNotify (§2.4, §6.4, §6.6)."""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
import weakref
from typing import Any

import pytest

import fltemu
import fltuser
from fltemu import NtStatus
from fltemu.daemon import Daemon
from fltemu.daemon.session import Session
from fltemu.kernel import ClientPort, FilterState
from fltemu.wire import NEED_DATA, PROTOCOL_VERSION, Connect, Control, Role, WireConnection
from fltemu.wire.framing import FrameReader

from ..helpers import until


async def _port(daemon: Daemon, **kwargs: Any) -> tuple[Any, list[ClientPort], list[object]]:
    flt = daemon.register_filter("t")
    clients: list[ClientPort] = []
    disconnects: list[object] = []

    def on_connect(cp: ClientPort, cookie: object, ctx: bytes) -> Any:
        clients.append(cp)
        return 0, cp.id

    kwargs.setdefault("disconnect_notify", disconnects.append)
    await flt.create_communication_port(
        "\\T", connect_notify=on_connect, max_connections=kwargs.pop("max_connections", 4), **kwargs
    )
    return flt, clients, disconnects


async def test_no_delivery_to_a_client_that_is_gone_2_4(daemon: Daemon) -> None:
    flt, clients, _ = await _port(daemon)
    port = await fltuser.aconnect("\\T", address=daemon.address)
    getter = asyncio.create_task(port.get_message(64))
    await until(lambda: bool(clients) and clients[0].queues.getter_count == 1)
    session = next(iter(daemon.sessions))
    assert session._transport is not None
    session._transport.abort()  # the process is gone
    while not session._closed:
        await asyncio.sleep(0)
    # Before any teardown task has run, the getter must already be unusable.
    result = await flt.send_message(clients[0], b"important", timeout=1)
    assert result.status == NtStatus.STATUS_PORT_DISCONNECTED
    getter.cancel()
    await port.aclose()


async def test_cancelled_inside_message_notify_still_answers(daemon: Daemon) -> None:
    async def on_message(cookie: object, data: bytes, n: int) -> Any:
        helper = asyncio.ensure_future(asyncio.sleep(10))
        asyncio.get_running_loop().call_later(0.01, helper.cancel)
        await helper  # something it waits on is cancelled by someone else
        return 0, b"never"

    await _port(daemon, message_notify=on_message)
    port = await fltuser.aconnect("\\T", address=daemon.address)
    with pytest.raises(fltuser.HResultError) as exc:
        await port.send(b"x", 16)
    assert exc.value.ntstatus == NtStatus.STATUS_UNSUCCESSFUL
    await port.aclose()


async def test_interrupted_unload_still_completes(daemon: Daemon) -> None:
    flt, _, _ = await _port(daemon)
    log: list[str] = []
    caller_gone = asyncio.Event()

    async def unload_callback(f: Any) -> None:
        log.append("start")
        await caller_gone.wait()
        log.append("done")

    flt.unload_callback = unload_callback
    reader, writer = await asyncio.open_unix_connection(daemon.address)
    writer.write(WireConnection(Role.USER).send(Control(PROTOCOL_VERSION, "unload", "t")))
    await until(lambda: log == ["start"])
    writer.close()  # Ctrl-C on `fltemu unload t`
    # The callback goes on only once the daemon has seen its caller leave.
    await until(lambda: not daemon.sessions)
    caller_gone.set()
    await until(lambda: flt.state is FilterState.UNLOADED)
    assert log == ["start", "done"]
    assert len(daemon.manager.namespace) == 0


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_close_returns_after_disconnect_notify_6_4(daemon: Daemon, flavour: str) -> None:
    # A DisconnectNotify that takes a while before releasing the slot: a reconnect right
    # after CloseHandle must still find the slot free (max_connections=1), every time.
    flt = daemon.register_filter("one")
    clients: list[ClientPort] = []

    def on_connect(cp: ClientPort, cookie: object, ctx: bytes) -> Any:
        clients.append(cp)
        return 0, cp

    async def on_disconnect(cookie: Any) -> None:
        await asyncio.sleep(0.005)
        await flt.close_client_port(cookie)

    await flt.create_communication_port(
        "\\One", connect_notify=on_connect, disconnect_notify=on_disconnect, max_connections=1
    )
    for _ in range(20):
        if flavour == "sync":
            port = await asyncio.to_thread(fltuser.connect, "\\One", b"", 0, daemon.address)
            await asyncio.to_thread(port.close)
        else:
            aport = await fltuser.aconnect("\\One", address=daemon.address)
            await aport.aclose()
    assert len(clients) == 20


@pytest.mark.parametrize("notify", [True, False])
async def test_disconnect_notify_after_close_client_port_is_a_port_option_9_1(
    daemon: Daemon, notify: bool
) -> None:
    flt, clients, disconnects = await _port(daemon, notify_after_close_client_port=notify)
    port = await fltuser.aconnect("\\T", address=daemon.address)
    await until(lambda: bool(clients))
    await flt.close_client_port(clients[0])  # the filter ends it first
    await port.aclose()  # then the user closes its handle
    assert disconnects == ([clients[0].id] if notify else [])


async def test_late_disconnect_notify_spares_the_newer_connection_9_1(daemon: Daemon) -> None:
    # scanner keeps one global ClientPort: A is closed by the kernel, B connects, then A's
    # handle closes. A's late DisconnectNotify must not close B.
    from fltemu.samples import scanner

    flt = daemon.register_filter("scanner")
    await scanner.setup(flt)
    a = await fltuser.aconnect("\\ScannerPort", address=daemon.address)
    state = scanner.state_of(flt)
    await until(lambda: state.client_port is not None)
    first = state.client_port
    assert first is not None
    await flt.close_client_port(first)
    b = await fltuser.aconnect("\\ScannerPort", address=daemon.address)
    await until(lambda: state.client_port is not None and state.client_port.is_connected)
    newer = state.client_port
    assert newer is not None
    await a.aclose()
    assert newer.is_connected and state.client_port is newer
    await b.aclose()
    await scanner.teardown(flt)


async def test_shutdown_does_not_hang_on_a_stuck_disconnect_notify(socket_path: str) -> None:
    async def stuck(cookie: object) -> None:
        await asyncio.Event().wait()  # never returns

    async with Daemon(address=socket_path, shutdown_grace=0.1) as d:
        flt = d.register_filter("stuck")
        await flt.create_communication_port(
            "\\Stuck", connect_notify=lambda *a: 0, disconnect_notify=stuck, max_connections=1
        )
        port = await fltuser.aconnect("\\Stuck", address=socket_path)
    # Leaving the block returned: the stuck callback was cancelled after the grace.
    assert flt.state is FilterState.UNLOADED
    await port.aclose()


async def test_a_closed_connection_is_freed_without_a_cyclic_gc(socket_path: str) -> None:
    """Session and ClientPort point at each other while they live; once the connection is
    closed and torn down, reference counting alone frees them (an idle daemon never runs a
    full collection, so a cycle would keep every closed connection's memory)."""
    async with fltemu.Daemon(address=socket_path) as daemon:
        flt = daemon.register_filter("cycles")
        await flt.create_communication_port(
            "\\Cycles",
            connect_notify=lambda *args: 0,
            disconnect_notify=lambda cookie: None,
            message_notify=lambda cookie, data, size: (0, data),
            max_connections=1,
        )
        gc.collect()
        gc.disable()
        try:
            port = await fltuser.aconnect("\\Cycles", address=socket_path)
            assert await port.send(b"x", 4) == b"x"
            getters = [asyncio.ensure_future(port.get_message(64)) for _ in range(50)]
            await until(lambda: daemon.sessions and len(flt.connections()) == 1)
            (session,) = daemon.sessions
            session_ref, port_ref = weakref.ref(session), weakref.ref(flt.connections()[0])
            del session
            for getter in getters:
                getter.cancel()
            await asyncio.gather(*getters, return_exceptions=True)
            await port.aclose()
            await until(lambda: session_ref() is None and port_ref() is None)
        finally:
            gc.enable()


_TORN_PREFIX = (16 << 20).to_bytes(4, "little")  # a 16 MiB frame, within the limit


async def _torn_frame(daemon: Daemon, body: memoryview, cut: int, handshake: bool) -> None:
    """Connect, send a 16 MiB frame's first ``cut`` bytes (length prefix included), leave."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, daemon.address)
        if handshake:
            user = WireConnection(Role.USER)
            await loop.sock_sendall(sock, user.send(Connect(PROTOCOL_VERSION, "\\T", b"", 0)))
            while user.next_event() is NEED_DATA:
                user.receive_data(await loop.sock_recv(sock, 4096))
        await loop.sock_sendall(sock, _TORN_PREFIX[:cut])
        if cut > len(_TORN_PREFIX):
            await loop.sock_sendall(sock, body[: cut - len(_TORN_PREFIX)])
    finally:
        sock.close()


def _live(*types: type) -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, types))


@pytest.mark.parametrize("handshake", [True, False], ids=["connected", "before-connect"])
async def test_torn_large_frames_leave_nothing_behind(socket_path: str, handshake: bool) -> None:
    """Connections closed in the middle of a large frame, however far it got: once they are
    gone, the daemon holds none of their sessions, wire state or buffered bytes, without a
    garbage collection (an idle daemon never runs one)."""
    body = memoryview(bytes(12 << 20))
    cuts = [2, 4, 5, 64 * 1024 + 1, len(body)]
    async with fltemu.Daemon(address=socket_path) as daemon:
        flt, clients, disconnects = await _port(daemon, max_connections=64)
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            sessions_before = _live(Session, WireConnection, FrameReader)
            refs: list[weakref.ref[Session]] = []
            for _ in range(4):
                await asyncio.gather(*(_torn_frame(daemon, body, cut, handshake) for cut in cuts))
                refs.extend(weakref.ref(s) for s in daemon.sessions)
                await until(lambda: not daemon.sessions and not flt.connections())
            await until(lambda: all(ref() is None for ref in refs))
            assert _live(Session, WireConnection, FrameReader) == sessions_before
            held = tracemalloc.get_traced_memory()[0] - baseline
            # 20 torn frames of up to 12 MiB each went through; what is left is noise.
            assert held < 1 << 20, f"{held} bytes still held"
        finally:
            tracemalloc.stop()
            gc.enable()
    if handshake:
        assert len(clients) == len(disconnects) == 4 * len(cuts)
