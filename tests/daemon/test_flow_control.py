"""Bounds per connection (protocol §1, §14): at most MAX_OUTSTANDING open requests (one
more fails at once), and no answers piled up for a client that does not read them."""

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
    GetCancel,
    GetRequest,
    GetResult,
    ReplyRequest,
    ReplyResult,
    SendRequest,
    SendResult,
)

from ..helpers import frame, until
from .test_server import RawClient, _encoder

PORT = "\\FlowPort"
_NO_RESOURCES = int(NtStatus.STATUS_INSUFFICIENT_RESOURCES)


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


async def test_requests_past_the_bound_fail_and_replies_still_get_through(
    daemon: Daemon, connections: list[ClientPort]
) -> None:
    """MAX_OUTSTANDING open requests: the next get fails at once with
    STATUS_INSUFFICIENT_RESOURCES, while a reply (which frees nothing by itself) is still
    read and delivered, as are cancels and the close."""
    client = await RawClient.open(daemon.address)
    try:
        await client.send(Connect(PROTOCOL_VERSION, PORT))
        assert isinstance(await client.read(), ConnectResult)
        burst = b"".join(
            frame(_encoder.encode(GetRequest(rid, 64))) for rid in range(1, MAX_OUTSTANDING + 3)
        )
        await client.write(burst)
        # The two over the bound fail at once, in order; the others stay pending.
        assert await client.read() == GetResult(MAX_OUTSTANDING + 1, _NO_RESOURCES)
        assert await client.read() == GetResult(MAX_OUTSTANDING + 2, _NO_RESOURCES)
        (port,) = connections
        assert port.queues.getter_count == MAX_OUTSTANDING
        # A message with a reply: delivered to the oldest getter; the reply is read and
        # reaches the filter although the connection is at its bound again.
        flt = port.server_port.filter
        sent = asyncio.create_task(flt.send_message(port, b"hello", 4, 10.0))
        delivered = await client.read()
        assert isinstance(delivered, GetResult) and delivered.rid == 1
        await client.send(GetRequest(MAX_OUTSTANDING + 3, 64))  # back at the bound
        await client.send(ReplyRequest(MAX_OUTSTANDING + 4, delivered.message_id, 0, b"ok"))
        assert await client.read() == ReplyResult(MAX_OUTSTANDING + 4, 0)
        result = await sent
        assert (result.status, result.reply) == (NtStatus.STATUS_SUCCESS, b"ok")
        # A cancel gets through too.
        await client.send(GetCancel(2))
        assert await client.read() == GetResult(2, int(NtStatus.STATUS_CANCELLED))
    finally:
        await client.close()
    await until(lambda: not connections[0].is_connected)


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
        # Meanwhile another client is served as usual: its connect and send take the loop
        # several turns, in each of which a daemon without the bound would go on reading and
        # answering the burst (every request of it has been written).
        other = await fltuser.aconnect("\\Echo", address=daemon.address)
        assert await other.send(b"ping", 4) == b"ping"
        await other.aclose()
        # A few answers fill the socket and the transport; the rest wait unanswered.
        assert port.sends_from_user < 64
        answers = [await client.read() for _ in range(count)]
        assert [a.rid for a in answers] == list(range(1, count + 1))
        assert all(isinstance(a, SendResult) and len(a.data) == 65536 for a in answers)
    finally:
        await client.close()
