"""Trace connections against a live in-process daemon: what each port operation reports, the
filters, access, and a reader too slow to keep up (bounded, with a count of what it lost)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import fltuser
from fltemu import NtStatus
from fltemu.daemon import Daemon
from fltemu.daemon.trace import MAX_QUEUED_EVENTS
from fltemu.kernel import ClientPort
from fltemu.kernel.trace import TraceRecord
from fltemu.wire import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Goodbye,
    Role,
    Trace,
    TraceEvent,
    WireConnection,
)

from ..helpers import until

PORT = "\\TracePort"


@pytest.fixture
async def traced(daemon: Daemon) -> dict[str, Any]:
    flt = daemon.register_filter("traced")
    state: dict[str, Any] = {"clients": [], "filter": flt}

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
        state["clients"].append(client_port)
        return NtStatus.STATUS_SUCCESS

    await flt.create_communication_port(
        PORT,
        connect_notify=on_connect,
        disconnect_notify=lambda cookie: None,
        message_notify=lambda cookie, data, n: (0, data.upper()),
        max_connections=4,
    )
    return state


class Reader:
    """A raw trace connection, read on demand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wire = WireConnection(Role.USER)

    @classmethod
    async def open(cls, daemon: Daemon, request: Trace, rcvbuf: int | None = None) -> Reader:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, daemon.address)
        reader = cls(sock)
        await asyncio.get_running_loop().sock_sendall(sock, reader.wire.send(request))
        return reader

    async def events(self, until_kind: str, limit: float = 10.0) -> list[Any]:
        """Events up to and including the first of ``until_kind`` (or a Goodbye)."""
        loop = asyncio.get_running_loop()
        seen: list[Any] = []
        async with asyncio.timeout(limit):
            while True:
                while (event := self.wire.next_event()) is not NEED_DATA:
                    seen.append(event)
                    if isinstance(event, Goodbye) or getattr(event, "kind", None) == until_kind:
                        return seen
                data = await loop.sock_recv(self.sock, 65536)
                self.wire.receive_data(data)
                if not data:
                    return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def readers() -> AsyncIterator[list[Reader]]:
    opened: list[Reader] = []
    yield opened
    for reader in opened:
        reader.close()


async def test_a_scripted_exchange_is_traced_event_by_event(
    daemon: Daemon, traced: dict[str, Any], readers: list[Reader]
) -> None:
    reader = await Reader.open(daemon, Trace(PROTOCOL_VERSION, preview_bytes=4))
    readers.append(reader)
    (start,) = await reader.events("start")
    assert start.text == "everything"
    port = await fltuser.aconnect(PORT, context=b"ctx", address=daemon.address)
    assert await port.send(b"hello", 16) == b"HELLO"
    getter = asyncio.create_task(port.get_message(64))
    await until(lambda: traced["clients"][0].queues.getter_count == 1)
    sender = asyncio.create_task(
        traced["filter"].send_message(traced["clients"][0], b"kernel says", 2, timeout=5)
    )
    message = await getter
    await port.reply(message.message_id, b"ok")
    result = await sender
    assert result.status == NtStatus.STATUS_SUCCESS
    await port.aclose()
    events = await reader.events("disconnect")
    me = (PORT, traced["clients"][0].id)
    assert all((e.port, e.connection) == me for e in events)
    summary = [
        (e.kind, e.status, e.message_id, e.size, e.buffer, e.reply_size, e.data) for e in events
    ]
    assert summary == [
        ("connect", 0, 0, 3, None, None, b""),
        ("send", 0, 0, 5, 16, 5, b"hell"),
        ("get", None, 0, 0, 64, None, b""),
        ("message", None, 1, 11, 2, None, b"kern"),  # a getter took it at once: its id
        ("reply", 0, 1, 2, None, None, b"ok"),
        ("message_done", 0, 1, 11, 2, 2, b"ok"),
        ("disconnect", None, 0, 0, None, None, b""),
    ]
    assert events[0].pid is not None and events[0].uid is not None
    assert events[-1].text == "the user closed its handle (CloseHandle)"
    assert events[1].latency is not None and events[5].latency is not None
    assert events[3].timeout == 5


async def test_messages_in_flight_are_matched_to_their_replies_by_id(
    daemon: Daemon, traced: dict[str, Any], readers: list[Reader]
) -> None:
    reader = await Reader.open(daemon, Trace(PROTOCOL_VERSION, kinds=("message", "deliver",
        "reply", "message_done")))  # fmt: skip
    readers.append(reader)
    await reader.events("start")
    port = await fltuser.aconnect(PORT, address=daemon.address)
    await until(lambda: bool(traced["clients"]))
    client = traced["clients"][0]
    flt = traced["filter"]
    # Two messages before any getter: they wait, and get their ids when taken.
    first = asyncio.create_task(flt.send_message(client, b"first", 8, timeout=5))
    second = asyncio.create_task(flt.send_message(client, b"second", 8, timeout=5))
    await until(lambda: client.queues.sender_count == 2)
    one = await port.get_message(64)
    two = await port.get_message(64)
    await port.reply(two.message_id, b"2")  # answered in the other order
    await port.reply(one.message_id, b"1")
    assert (await first).reply == b"1" and (await second).reply == b"2"
    events = [e for e in await reader.events("message_done") if isinstance(e, TraceEvent)]
    events += [e for e in await reader.events("message_done") if isinstance(e, TraceEvent)]
    summary = [(e.kind, e.message_id, e.data, e.text) for e in events]
    waiting = "waiting for a FilterGetMessage"
    assert summary == [
        ("message", 0, b"first", waiting),
        ("message", 0, b"second", waiting),
        ("deliver", one.message_id, b"first", ""),
        ("deliver", two.message_id, b"second", ""),
        ("reply", two.message_id, b"2", ""),
        ("message_done", two.message_id, b"2", ""),
        ("reply", one.message_id, b"1", ""),
        ("message_done", one.message_id, b"1", ""),
    ]
    assert {one.message_id, two.message_id} == {1, 2}
    await port.aclose()


async def test_filters_by_port_connection_and_kind(
    daemon: Daemon, traced: dict[str, Any], readers: list[Reader]
) -> None:
    first = await fltuser.aconnect(PORT, address=daemon.address)
    second = await fltuser.aconnect(PORT, address=daemon.address)
    wanted = traced["clients"][1].id
    reader = await Reader.open(
        daemon, Trace(PROTOCOL_VERSION, PORT, wanted, ("send",)), rcvbuf=None
    )
    other_port = await Reader.open(daemon, Trace(PROTOCOL_VERSION, "\\Elsewhere"))
    readers.extend([reader, other_port])
    (start,) = await reader.events("start")
    assert start.text == f"port {PORT}, connection #{wanted}, send events"
    await other_port.events("start")
    await first.send(b"one", 8)
    await second.send(b"two", 8)
    await second.aclose()
    await first.aclose()
    (event,) = await reader.events("send")
    assert (event.connection, event.data) == (wanted, b"two")
    daemon.trace_hub.close_all("done")
    assert [type(e) for e in await reader.events("never")] == [Goodbye]
    assert [type(e) for e in await other_port.events("never")] == [Goodbye]


async def test_tracing_costs_nothing_once_the_last_reader_left(
    daemon: Daemon, readers: list[Reader]
) -> None:
    assert daemon.manager.tracer is None
    reader = await Reader.open(daemon, Trace(PROTOCOL_VERSION))
    await reader.events("start")
    assert daemon.manager.tracer is not None
    reader.close()
    await until(lambda: daemon.manager.tracer is None)


async def test_a_reader_that_does_not_read_loses_events_and_is_told_how_many(
    daemon: Daemon, readers: list[Reader]
) -> None:
    reader = await Reader.open(daemon, Trace(PROTOCOL_VERSION, preview_bytes=4096), rcvbuf=4096)
    readers.append(reader)
    await reader.events("start")
    (subscriber,) = daemon.trace_hub.subscribers
    record = TraceRecord("message", time.time(), PORT, 1, data=b"x" * 4096)
    published = 0
    # Publish until the socket buffers and the queue are full and events are being dropped,
    # letting the loop write in between as it would between messages.
    while subscriber.dropped < 100:
        for _ in range(64):
            daemon.trace_hub.publish(record)
            published += 1
            assert subscriber.queued <= MAX_QUEUED_EVENTS
        await asyncio.sleep(0)
        assert published < 100_000, "nothing was ever dropped"
    dropped_so_far = subscriber.dropped
    events = await reader.events("dropped", limit=30)
    messages = [e for e in events if isinstance(e, TraceEvent) and e.kind == "message"]
    assert events[-1].kind == "dropped" and events[-1].count >= dropped_so_far
    assert len(messages) + events[-1].count <= published
    assert all(len(e.data) == 4096 for e in messages)


async def test_tracing_is_for_root_and_the_daemons_user(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, readers: list[Reader]
) -> None:
    import fltemu.daemon.session as session

    monkeypatch.setattr(session, "may_control", lambda process: False)
    reader = await Reader.open(daemon, Trace(PROTOCOL_VERSION))
    readers.append(reader)
    (goodbye,) = await reader.events("start")
    assert isinstance(goodbye, Goodbye)
    assert goodbye.status == NtStatus.STATUS_ACCESS_DENIED
    assert goodbye.reason == "tracing is for root and the daemon's own user"
    assert daemon.manager.tracer is None


async def test_bytes_that_follow_the_trace_request_end_it_17_2(
    daemon: Daemon, readers: list[Reader]
) -> None:
    # Sent in one write with the Trace: they would be left unread when the trace takes the
    # connection over, so the trace is refused instead.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, daemon.address)
    reader = Reader(sock)
    readers.append(reader)
    extra = struct.pack("<I", 3) + b"\x92\x05\x01"  # a GetCancel frame
    await loop.sock_sendall(sock, reader.wire.send(Trace(PROTOCOL_VERSION)) + extra)
    (goodbye,) = await reader.events("start")
    assert isinstance(goodbye, Goodbye)
    assert goodbye.status == NtStatus.STATUS_INVALID_PARAMETER
    assert goodbye.reason == "nothing may follow Trace on its connection"
    assert daemon.manager.tracer is None
