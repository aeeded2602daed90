"""Attached sockets (protocol §5b): a second socket of the same process carries calls of an
open connection, as the Windows side's fltlib.dll does for the handle that its driver opened.
The calls are the handle's: one port connection, one MaxConnections slot, one message queue,
one disconnect."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from fltemu import NtStatus
from fltemu.daemon import Daemon
from fltemu.kernel import ClientPort
from fltemu.wire import (
    ATTACH_TOKEN_BYTES,
    OPTION_ATTACH,
    OPTION_DISCONNECT_NOTICE,
    PROTOCOL_VERSION,
    Attach,
    Connect,
    ConnectResult,
    Disconnected,
    GetCancel,
    GetRequest,
    GetResult,
    Goodbye,
    ReplyRequest,
    ReplyResult,
    SendRequest,
    SendResult,
)

from ..helpers import until
from .test_server import RawClient

PORT = "\\AttachPort"


class Port:
    def __init__(self) -> None:
        self.connected: list[ClientPort] = []
        self.disconnects = 0
        self.in_notify = asyncio.Event()
        self.release = asyncio.Event()


@pytest.fixture
async def port(daemon: Daemon) -> Port:
    state = Port()
    flt = daemon.register_filter("attach")

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
        state.connected.append(client_port)
        return NtStatus.STATUS_SUCCESS

    def on_disconnect(cookie: object) -> None:
        state.disconnects += 1

    async def on_message(cookie: object, data: bytes, out_size: int) -> Any:
        if data == b"block":
            state.in_notify.set()
            await state.release.wait()
        return NtStatus.STATUS_SUCCESS, data[:out_size]

    await flt.create_communication_port(
        PORT,
        connect_notify=on_connect,
        disconnect_notify=on_disconnect,
        message_notify=on_message,
        max_connections=1,
    )
    return state


async def open_pair(daemon: Daemon, options: int = 0) -> tuple[RawClient, RawClient]:
    """A connection that asked for a token, and a second socket attached with it."""
    first = await RawClient.open(daemon.address)
    await first.send(Connect(PROTOCOL_VERSION, PORT, b"", OPTION_ATTACH | options))
    result = await first.read()
    assert isinstance(result, ConnectResult) and result.status == 0
    assert len(result.attach_token) == ATTACH_TOKEN_BYTES
    second = await RawClient.open(daemon.address)
    await second.send(Attach(PROTOCOL_VERSION, result.attach_token, options))
    assert await second.read() == ConnectResult(PROTOCOL_VERSION, 0, daemon.max_message_bytes)
    return first, second


async def test_no_token_without_the_option(daemon: Daemon, port: Port) -> None:
    client = await RawClient.open(daemon.address)
    try:
        result = await client.connect(PORT)
        assert result.status == 0 and result.attach_token == b""
    finally:
        await client.close()


async def test_calls_on_the_attached_socket_are_the_handles(daemon: Daemon, port: Port) -> None:
    first, second = await open_pair(daemon)
    try:
        # One connection (MaxConnections is 1, and the attach took no slot).
        assert len(port.connected) == 1
        client_port = port.connected[0]
        await second.send(SendRequest(1, b"hello", 3))
        assert await second.read() == SendResult(1, 0, b"hel")
        # A get on the connection's own socket, a reply on the attached one.
        await first.send(GetRequest(1, 1024))
        flt = daemon.manager.filters["attach"]
        sent = asyncio.ensure_future(flt.send_message(client_port, b"scan", reply_length=2))
        got = await first.read()
        assert isinstance(got, GetResult) and got.status == 0 and got.data == b"scan"
        await second.send(ReplyRequest(2, got.message_id, 0, b"ok"))
        assert await second.read() == ReplyResult(2, 0)
        result = await sent
        assert result.status == NtStatus.STATUS_SUCCESS and result.reply == b"ok"
        # A get on the attached socket receives the next message.
        await second.send(GetRequest(3, 1024))
        sent = asyncio.ensure_future(flt.send_message(client_port, b"two", reply_length=None))
        got = await second.read()
        assert isinstance(got, GetResult) and got.rid == 3 and got.data == b"two"
        assert (await sent).status == NtStatus.STATUS_SUCCESS
    finally:
        await second.close()
        await first.close()
    await until(lambda: port.disconnects == 1)


async def test_a_wrong_token_or_user_is_refused(daemon: Daemon, port: Port) -> None:
    stranger = await RawClient.open(daemon.address)
    try:
        await stranger.send(Attach(PROTOCOL_VERSION, os.urandom(ATTACH_TOKEN_BYTES)))
        assert await stranger.read() == ConnectResult(
            PROTOCOL_VERSION, NtStatus.STATUS_ACCESS_DENIED
        )
        assert await stranger.at_eof()
    finally:
        await stranger.close()


async def test_closing_the_attached_socket_withdraws_its_gets(daemon: Daemon, port: Port) -> None:
    """Its getters go; the next message goes to the connection's own reader (§3.3), and the
    connection lives on: no DisconnectNotify."""
    first, second = await open_pair(daemon)
    try:
        client_port = port.connected[0]
        await second.send(GetRequest(1, 1024))
        await until(lambda: client_port.queues.getter_count == 1)
        await second.close()
        await until(lambda: client_port.queues.getter_count == 0)
        await first.send(GetRequest(1, 1024))
        flt = daemon.manager.filters["attach"]
        sent = asyncio.ensure_future(flt.send_message(client_port, b"next", reply_length=None))
        got = await first.read()
        assert isinstance(got, GetResult) and got.data == b"next"
        assert (await sent).status == NtStatus.STATUS_SUCCESS
        assert port.disconnects == 0
    finally:
        await first.close()
    await until(lambda: port.disconnects == 1)


async def test_a_cancel_on_the_attached_socket(daemon: Daemon, port: Port) -> None:
    first, second = await open_pair(daemon)
    try:
        await second.send(GetRequest(5, 1024))
        await until(lambda: port.connected[0].queues.getter_count == 1)
        await second.send(GetCancel(5))
        assert await second.read() == GetResult(5, NtStatus.STATUS_CANCELLED)
    finally:
        await second.close()
        await first.close()


async def test_the_connection_ends_for_both_sockets(daemon: Daemon, port: Port) -> None:
    """The handle's close (its own socket's EOF) ends the attached socket too; a send that
    MessageNotify was running when the handle closed gets its own answer first (§2.4)."""
    first, second = await open_pair(daemon, OPTION_DISCONNECT_NOTICE)
    try:
        await second.send(SendRequest(1, b"block", 5))
        await port.in_notify.wait()
        first.writer.write_eof()
        await until(lambda: not port.connected[0].is_connected)
        port.release.set()
        assert await second.read() == SendResult(1, 0, b"block")
        bye = await second.read()
        assert isinstance(bye, Goodbye) and bye.status == NtStatus.STATUS_PORT_DISCONNECTED
        assert await second.at_eof()
        assert await first.at_eof()
        assert port.disconnects == 1
    finally:
        await second.close()
        await first.close()


async def test_the_filter_closing_the_port_tells_both(daemon: Daemon, port: Port) -> None:
    first, second = await open_pair(daemon, OPTION_DISCONNECT_NOTICE)
    try:
        await daemon.manager.filters["attach"].close_client_port(port.connected[0])
        disconnected = Disconnected(NtStatus.STATUS_PORT_DISCONNECTED)
        assert await first.read() == disconnected
        assert await second.read() == disconnected
        await second.send(SendRequest(1, b"late", 4))
        assert await second.read() == SendResult(1, NtStatus.STATUS_PORT_DISCONNECTED)
    finally:
        await second.close()
        await first.close()


async def test_a_protocol_error_on_the_attached_socket_ends_only_that_socket(
    daemon: Daemon, port: Port
) -> None:
    """The attached socket is the DLL's, not the handle: a malformed frame on it closes it
    alone; the connection and its pending get live on, and DisconnectNotify runs once, at
    the handle's close."""
    first, second = await open_pair(daemon)
    try:
        client_port = port.connected[0]
        await first.send(GetRequest(1, 1024))
        await until(lambda: client_port.queues.getter_count == 1)
        await second.write(b"\x02\x00\x00\x00\xc1\xc1")  # not msgpack
        bye = await second.read()
        assert isinstance(bye, Goodbye) and bye.status == NtStatus.STATUS_INVALID_PARAMETER
        assert await second.at_eof()
        assert client_port.is_connected and client_port.queues.getter_count == 1
        flt = daemon.manager.filters["attach"]
        sent = asyncio.ensure_future(flt.send_message(client_port, b"still", reply_length=None))
        got = await first.read()
        assert isinstance(got, GetResult) and got.data == b"still"
        assert (await sent).status == NtStatus.STATUS_SUCCESS
        assert port.disconnects == 0
    finally:
        await second.close()
        await first.close()
    await until(lambda: port.disconnects == 1)


async def test_a_token_is_refused_once_its_connection_ends(daemon: Daemon, port: Port) -> None:
    first = await RawClient.open(daemon.address)
    await first.send(Connect(PROTOCOL_VERSION, PORT, b"", OPTION_ATTACH))
    result = await first.read()
    await first.close()
    await until(lambda: port.disconnects == 1)
    late = await RawClient.open(daemon.address)
    try:
        await late.send(Attach(PROTOCOL_VERSION, result.attach_token))
        assert await late.read() == ConnectResult(PROTOCOL_VERSION, NtStatus.STATUS_ACCESS_DENIED)
    finally:
        await late.close()
