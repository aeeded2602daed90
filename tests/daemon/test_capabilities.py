"""Connect.options capabilities (protocol §5, §7.1, §10): Disconnected and Section frames go
only to clients that asked for them, so version-1 clients see exactly what they always did."""

from __future__ import annotations

from typing import Any

import pytest

from fltemu import NtStatus
from fltemu.daemon import Daemon
from fltemu.kernel import ClientPort
from fltemu.wire import (
    OPTION_DISCONNECT_NOTICE,
    OPTION_SECTIONS,
    PROTOCOL_VERSION,
    Connect,
    ConnectResult,
    Disconnected,
    GetRequest,
    GetResult,
    Section,
    SendRequest,
    SendResult,
)

from ..helpers import until
from .test_server import RawClient

PORT = "\\CapsPort"
HANDLE = (0x104).to_bytes(8, "little")


@pytest.fixture
async def ports(daemon: Daemon) -> list[ClientPort]:
    """A port whose MessageNotify answers ``section`` with a section handle at offset 8."""
    flt = daemon.register_filter("caps")
    connected: list[ClientPort] = []

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
        connected.append(client_port)
        return NtStatus.STATUS_SUCCESS

    def on_message(cookie: object, data: bytes, out_size: int) -> Any:
        if data == b"section":
            return NtStatus.STATUS_SUCCESS, b"hdr-----" + HANDLE, {8: b"file content"}
        if data == b"bad offset":
            return NtStatus.STATUS_SUCCESS, HANDLE, {4: b"x"}
        return NtStatus.STATUS_SUCCESS, data

    await flt.create_communication_port(
        PORT,
        connect_notify=on_connect,
        disconnect_notify=lambda cookie: None,
        message_notify=on_message,
        max_connections=10,
    )
    return connected


async def open_client(daemon: Daemon, options: int) -> RawClient:
    client = await RawClient.open(daemon.address)
    await client.send(Connect(PROTOCOL_VERSION, PORT, b"", options))
    result = await client.read()
    assert isinstance(result, ConnectResult) and result.status == 0
    return client


async def test_sections_reach_only_clients_that_take_them(
    daemon: Daemon, ports: list[ClientPort]
) -> None:
    plain = await open_client(daemon, 0)
    able = await open_client(daemon, OPTION_SECTIONS | 1)  # with FLT_PORT_FLAG_SYNC_HANDLE
    try:
        await plain.send(SendRequest(1, b"section", 64))
        assert await plain.read() == SendResult(1, 0, b"hdr-----" + HANDLE)
        await able.send(SendRequest(1, b"section", 64))
        assert await able.read() == Section(1, 8, b"file content")
        assert await able.read() == SendResult(1, 0, b"hdr-----" + HANDLE)
        # An offset whose 8 bytes are not inside the output is dropped (and logged).
        await able.send(SendRequest(2, b"bad offset", 64))
        assert await able.read() == SendResult(2, 0, HANDLE)
    finally:
        await plain.close()
        await able.close()


@pytest.mark.parametrize("how", ["close_client_port", "unload"])
async def test_disconnected_reaches_only_clients_that_asked(
    daemon: Daemon, ports: list[ClientPort], how: str
) -> None:
    plain = await open_client(daemon, 0)
    able = await open_client(daemon, OPTION_DISCONNECT_NOTICE)
    try:
        await able.send(GetRequest(1, 64))
        await until(lambda: ports[1].queues.getter_count == 1)
        flt = daemon.manager.filters[ports[0].server_port.filter.name]
        if how == "unload":
            await flt.unload()
        else:
            for client_port in ports:
                await flt.close_client_port(client_port)
        # The pending get fails first, then the notice; later requests still get answers.
        assert await able.read() == GetResult(1, int(NtStatus.STATUS_PORT_DISCONNECTED))
        assert await able.read() == Disconnected(int(NtStatus.STATUS_PORT_DISCONNECTED))
        await able.send(SendRequest(2, b"x", 4))
        assert await able.read() == SendResult(2, int(NtStatus.STATUS_PORT_DISCONNECTED))
        await plain.send(SendRequest(1, b"x", 4))
        assert await plain.read() == SendResult(1, int(NtStatus.STATUS_PORT_DISCONNECTED))
    finally:
        await plain.close()
        await able.close()


async def test_closed_during_connect_notify_is_announced_2_6(daemon: Daemon) -> None:
    flt = daemon.register_filter("closer")

    async def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
        await flt.close_client_port(client_port)  # FltCloseClientPort from ConnectNotify
        return NtStatus.STATUS_SUCCESS

    await flt.create_communication_port(
        "\\CloserPort",
        connect_notify=on_connect,
        disconnect_notify=lambda cookie: None,
        max_connections=1,
    )
    client = await RawClient.open(daemon.address)
    try:
        await client.send(Connect(PROTOCOL_VERSION, "\\CloserPort", b"", OPTION_DISCONNECT_NOTICE))
        result = await client.read()
        assert isinstance(result, ConnectResult) and result.status == 0
        assert await client.read() == Disconnected(int(NtStatus.STATUS_PORT_DISCONNECTED))
    finally:
        await client.close()


async def test_message_notify_gets_the_output_buffer_address_when_it_asks(daemon: Daemon) -> None:
    # SendRequest.out_address (protocol §7.1) reaches a MessageNotify that declares
    # output_buffer_address, sync or async; one without the parameter gets three arguments.
    flt = daemon.register_filter("address")
    seen: list[tuple[str, int | None]] = []

    def plain(cookie: object, data: bytes, out_size: int) -> Any:
        seen.append(("plain", None))
        return NtStatus.STATUS_SUCCESS

    def sync(cookie: object, data: bytes, out_size: int, *, output_buffer_address: int = 0) -> Any:
        seen.append(("sync", output_buffer_address))
        return NtStatus.STATUS_SUCCESS

    async def coro(
        cookie: object, data: bytes, out_size: int, output_buffer_address: int = 0
    ) -> Any:
        seen.append(("async", output_buffer_address))
        return NtStatus.STATUS_SUCCESS

    for name, notify in (("\\Plain", plain), ("\\Sync", sync), ("\\Async", coro)):
        await flt.create_communication_port(
            name,
            connect_notify=lambda client_port, cookie, context: NtStatus.STATUS_SUCCESS,
            disconnect_notify=lambda cookie: None,
            message_notify=notify,
            max_connections=1,
        )
        client = await RawClient.open(daemon.address)
        try:
            await client.send(Connect(PROTOCOL_VERSION, name))
            assert (await client.read()).status == 0
            await client.send(SendRequest(1, b"x", 8, 0x3C))
            assert await client.read() == SendResult(1, 0)
            await client.send(SendRequest(2, b"x", 8))  # no address: aligned
            assert await client.read() == SendResult(2, 0)
        finally:
            await client.close()
    assert seen == [
        ("plain", None),
        ("plain", None),
        ("sync", 0x3C),
        ("sync", 0),
        ("async", 0x3C),
        ("async", 0),
    ]
