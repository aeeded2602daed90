"""Backpressure: one connection cannot make the daemon hold more than MAX_OUTSTANDING open
requests; past that its socket is not read (nothing is dropped or failed) until enough are
answered (protocol §1, flow control)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import fltuser
from fltemu import NtStatus
from fltemu.daemon import Daemon
from fltemu.daemon.session import MAX_OUTSTANDING
from fltemu.kernel import ClientPort
from fltemu.wire import (
    PROTOCOL_VERSION,
    Connect,
    ConnectResult,
    GetRequest,
    GetResult,
    SendRequest,
    SendResult,
)

from ..helpers import frame, until
from .test_server import RawClient, _encoder

PORT = "\\FlowPort"


@pytest.fixture
async def connections(daemon: Daemon) -> list[ClientPort]:
    flt = daemon.register_filter("flow")
    connected: list[ClientPort] = []

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
        connected.append(client_port)
        return NtStatus.STATUS_SUCCESS

    await flt.create_communication_port(
        PORT,
        connect_notify=on_connect,
        disconnect_notify=lambda cookie: None,
        max_connections=1,
    )
    return connected


async def test_pending_gets_past_the_bound_wait_in_the_socket(
    daemon: Daemon, connections: list[ClientPort]
) -> None:
    client = await RawClient.open(daemon.address)
    try:
        await client.send(Connect(PROTOCOL_VERSION, PORT))
        assert isinstance(await client.read(), ConnectResult)
        total = MAX_OUTSTANDING + MAX_OUTSTANDING // 2
        burst = b"".join(frame(_encoder.encode(GetRequest(rid, 64))) for rid in range(1, total + 1))
        await client.write(burst)
        (port,) = connections
        await until(lambda: port.queues.getter_count == MAX_OUTSTANDING)
        for _ in range(20):  # however long it waits, the daemon takes no more
            await asyncio.sleep(0.01)
        assert port.queues.getter_count == MAX_OUTSTANDING
        # The filter answers some: the connection is read again, and nothing was lost.
        answered = 3 * MAX_OUTSTANDING // 4  # leaves fewer than half of the bound open
        flt = port.server_port.filter

        async def read_answers() -> list[Any]:
            return [await client.read() for _ in range(answered)]

        reader = asyncio.create_task(read_answers())
        results = await asyncio.gather(
            *(flt.send_message(port, b"m", None, 10.0) for _ in range(answered))
        )
        assert all(r.status == NtStatus.STATUS_SUCCESS for r in results)
        answers = await reader
        assert all(isinstance(a, GetResult) and a.status == 0 for a in answers)
        await until(lambda: port.queues.getter_count == total - answered)
    finally:
        await client.close()


async def test_a_client_that_does_not_read_its_answers_is_not_served_ahead(
    daemon: Daemon,
) -> None:
    """Small requests with 64 KiB answers, none read: the daemon stops answering (and
    reading) at the transport's high-water mark instead of buffering every answer; reading
    them all later gets every one."""
    flt = daemon.register_filter("big")
    connected: list[ClientPort] = []

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
        connected.append(client_port)
        return NtStatus.STATUS_SUCCESS

    await flt.create_communication_port(
        "\\BigAnswers",
        connect_notify=on_connect,
        disconnect_notify=lambda cookie: None,
        message_notify=lambda cookie, data, size: (NtStatus.STATUS_SUCCESS, b"a" * size),
        max_connections=1,
    )
    await flt.create_communication_port(
        "\\Echo",
        connect_notify=lambda *args: NtStatus.STATUS_SUCCESS,
        disconnect_notify=lambda cookie: None,
        message_notify=lambda cookie, data, size: (NtStatus.STATUS_SUCCESS, data),
        max_connections=1,
    )
    client = await RawClient.open(daemon.address)
    try:
        await client.send(Connect(PROTOCOL_VERSION, "\\BigAnswers"))
        assert isinstance(await client.read(), ConnectResult)
        count = 2000
        burst = b"".join(
            frame(_encoder.encode(SendRequest(rid, b"x", 65536))) for rid in range(1, count + 1)
        )
        client.writer.write(burst)
        (port,) = connected
        await until(lambda: port.sends_from_user > 0)
        for _ in range(20):
            await asyncio.sleep(0.01)
        # A few answers fill the socket and the transport; the rest wait unanswered.
        assert port.sends_from_user < 64
        # Meanwhile another client is served as usual.
        other = await fltuser.aconnect("\\Echo", address=daemon.address)
        assert await other.send(b"ping", 4) == b"ping"
        await other.aclose()
        answers = [await client.read() for _ in range(count)]
        assert [a.rid for a in answers] == list(range(1, count + 1))
        assert all(isinstance(a, SendResult) and len(a.data) == 65536 for a in answers)
    finally:
        await client.close()
