"""The daemon over a real Unix socket: bad input, dying peers, races, backpressure, shutdown.

A bad peer affects only its own connection: it gets a Goodbye with a status where possible,
its connection is closed, and everyone else is served on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
from typing import Any

import msgspec
import pytest

import fltuser
from fltemu import NtStatus
from fltemu.daemon import Daemon, DaemonAddressInUseError
from fltemu.kernel import ClientPort
from fltemu.wire import (
    PROTOCOL_VERSION,
    Connect,
    ConnectResult,
    GetRequest,
    GetResult,
    Goodbye,
    KernelMessage,
    SendRequest,
    SendResult,
)

from ..helpers import frame, raw_frame, until

PORT = "\\RawPort"
_decoder = msgspec.msgpack.Decoder(KernelMessage)
_encoder = msgspec.msgpack.Encoder()


class RawClient:
    """A hand-driven client: writes any bytes, reads whole frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str) -> RawClient:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: object) -> None:
        await self.write(frame(_encoder.encode(message)))

    async def read(self) -> Any:
        async with asyncio.timeout(5):
            (size,) = struct.unpack("<I", await self.reader.readexactly(4))
            return _decoder.decode(await self.reader.readexactly(size))

    async def at_eof(self) -> bool:
        async with asyncio.timeout(5):
            return await self.reader.read(1) == b""

    async def connect(self, port: str = PORT) -> ConnectResult:
        await self.send(Connect(PROTOCOL_VERSION, port))
        result = await self.read()
        assert isinstance(result, ConnectResult)
        return result

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


@pytest.fixture
async def port_events(daemon: Daemon) -> dict[str, list[Any]]:
    """An echo-like port on the daemon that records connects and disconnects."""
    events: dict[str, list[Any]] = {"connected": [], "disconnected": []}
    flt = daemon.register_filter("raw")

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
        events["connected"].append(client_port)
        return 0, client_port.id

    def on_disconnect(cookie: object) -> None:
        events["disconnected"].append(cookie)

    def on_message(cookie: object, data: bytes, out_size: int) -> Any:
        if data == b"raise":
            raise RuntimeError("filter bug")
        return 0, data * (out_size // max(len(data), 1))

    await flt.create_communication_port(
        PORT,
        connect_notify=on_connect,
        disconnect_notify=on_disconnect,
        message_notify=on_message,
        max_connections=100,
    )
    events["filter"] = [flt]
    return events


async def assert_still_serving(daemon: Daemon) -> None:
    port = await fltuser.aconnect(PORT, address=daemon.address)
    assert await port.send(b"ok", 2) == b"ok"
    await port.aclose()


# --- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "status"),
    [
        (b"\xff" * 64, NtStatus.STATUS_INSUFFICIENT_RESOURCES),  # absurd length prefix
        (frame(b"\xc1\xc1\xc1"), NtStatus.STATUS_INVALID_PARAMETER),  # not msgpack
        (raw_frame([99, 1, 2]), NtStatus.STATUS_INVALID_PARAMETER),  # unknown tag
        (raw_frame([1, "one", "\\RawPort"]), NtStatus.STATUS_INVALID_PARAMETER),  # bad type
        (frame(b""), NtStatus.STATUS_INVALID_PARAMETER),  # empty payload
        (raw_frame([2, 1, b"x", 4]), NtStatus.STATUS_INVALID_PARAMETER),  # request first
        (raw_frame([1, 1, b"\xa1\xff"]), NtStatus.STATUS_INVALID_PARAMETER),  # bad UTF-8 str
    ],
)
async def test_malformed_frame_gets_goodbye_and_close(
    daemon: Daemon,
    port_events: dict[str, list[Any]],
    garbage: bytes,
    status: NtStatus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await RawClient.open(daemon.address)
    await client.write(garbage)
    goodbye = await client.read()
    assert isinstance(goodbye, Goodbye)
    assert goodbye.status == status
    assert goodbye.reason
    assert await client.at_eof()
    await client.close()
    assert "protocol error" in caplog.text and "pid" in caplog.text
    await assert_still_serving(daemon)


async def test_reused_request_id_is_a_protocol_error(
    daemon: Daemon, port_events: dict[str, list[Any]]
) -> None:
    client = await RawClient.open(daemon.address)
    assert (await client.connect()).status == 0
    await client.send(GetRequest(7, 64))
    await client.send(GetRequest(7, 64))
    goodbye = await client.read()
    # The first get was completed with STATUS_PORT_DISCONNECTED during the teardown or the
    # goodbye comes first; either way the connection ends and DisconnectNotify runs.
    while isinstance(goodbye, GetResult):
        goodbye = await client.read()
    assert isinstance(goodbye, Goodbye)
    assert "reused" in goodbye.reason
    assert await client.at_eof()
    await until(lambda: len(port_events["disconnected"]) == 1)
    await client.close()


async def test_out_of_range_integers_are_refused(
    daemon: Daemon, port_events: dict[str, list[Any]]
) -> None:
    client = await RawClient.open(daemon.address)
    assert (await client.connect()).status == 0
    await client.write(raw_frame([4, 1, 1, 2**40, b""]))  # ReplyRequest, status > 32 bits
    goodbye = await client.read()
    assert isinstance(goodbye, Goodbye)
    assert await client.at_eof()
    await client.close()
    await assert_still_serving(daemon)


async def test_version_mismatch_is_refused(daemon: Daemon, port_events: Any) -> None:
    client = await RawClient.open(daemon.address)
    await client.send(Connect(PROTOCOL_VERSION + 1, PORT))
    result = await client.read()
    assert isinstance(result, ConnectResult)
    assert result.status == NtStatus.STATUS_REVISION_MISMATCH
    assert result.version == PROTOCOL_VERSION
    assert await client.at_eof()
    await client.close()


async def test_daemon_enforces_its_message_limit(socket_path: str) -> None:
    async with Daemon(address=socket_path, max_message_bytes=100) as d:
        flt = d.register_filter("lim")
        await flt.create_communication_port(
            PORT,
            connect_notify=lambda *a: 0,
            disconnect_notify=lambda c: None,
            message_notify=lambda c, data, n: (0, b"y" * n),
            max_connections=1,
        )
        client = await RawClient.open(d.address)
        result = await client.connect()
        assert result.max_message_bytes == 100
        await client.send(
            SendRequest(1, b"x" * 101, 0)
        )  # under the frame limit, over the payload limit
        answer = await client.read()
        assert isinstance(answer, SendResult)
        assert answer.status == NtStatus.STATUS_INSUFFICIENT_RESOURCES
        await client.send(SendRequest(2, b"x", 1000))  # MessageNotify output over the limit
        answer = await client.read()
        assert isinstance(answer, SendResult)
        assert answer.status == NtStatus.STATUS_INSUFFICIENT_RESOURCES
        await client.send(SendRequest(3, b"x", 5))  # and the connection lives on
        answer = await client.read()
        assert (answer.status, answer.data) == (0, b"yyyyy")
        await client.close()


# --- dying peers ------------------------------------------------------------------------------


async def test_peer_vanishing_mid_request_fails_the_sender(
    daemon: Daemon, port_events: dict[str, list[Any]]
) -> None:
    client = await RawClient.open(daemon.address)
    assert (await client.connect()).status == 0
    await client.send(GetRequest(1, 64))
    await until(lambda: bool(port_events["connected"]))
    kernel_port = port_events["connected"][0]
    flt = port_events["filter"][0]
    sent = asyncio.create_task(flt.send_message(kernel_port, b"q", reply_length=4))
    message = await client.read()
    assert isinstance(message, GetResult) and message.message_id == 1
    client.writer.transport.abort()  # gone without a word, reply pending
    result = await sent
    assert result.status == NtStatus.STATUS_PORT_DISCONNECTED
    await until(lambda: port_events["disconnected"] == [kernel_port.id])
    await assert_still_serving(daemon)


async def test_killed_client_process_is_disconnected(
    daemon: Daemon, port_events: dict[str, list[Any]]
) -> None:
    # A real process blocked in FilterGetMessage is killed (process exit = CloseHandle, §3.5).
    code = textwrap.dedent(
        f"""
        import fltuser, sys, time
        port = fltuser.connect({PORT!r}, address={daemon.address!r})
        print("connected", flush=True)
        port.get_message(64)  # takes the message and never replies
        time.sleep(60)
        """
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        assert (await proc.stdout.readline()).strip() == b"connected"
    await until(lambda: bool(port_events["connected"]))
    kernel_port = port_events["connected"][0]
    await until(lambda: kernel_port.queues.getter_count == 1)
    assert kernel_port.process.pid == proc.pid
    flt = port_events["filter"][0]
    blocked = asyncio.create_task(flt.send_message(kernel_port, b"scan me", reply_length=1))
    await until(lambda: kernel_port.queues.reply_waiter_count == 1)  # delivered, awaiting reply
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert (await blocked).status == NtStatus.STATUS_PORT_DISCONNECTED
    await until(lambda: port_events["disconnected"] == [kernel_port.id])


async def test_raising_callbacks_never_kill_the_daemon(
    daemon: Daemon, port_events: dict[str, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    port = await fltuser.aconnect(PORT, address=daemon.address)
    with pytest.raises(fltuser.HResultError) as exc:
        await port.send(b"raise", 4)
    assert exc.value.hresult == 0x8007001F
    assert "filter bug" in caplog.text and PORT in caplog.text
    assert await port.send(b"ok", 2) == b"ok"
    await port.aclose()


async def test_concurrent_connects_race_for_the_last_slots_6_4(daemon: Daemon) -> None:
    flt = daemon.register_filter("race")
    admitted: list[int] = []

    async def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> int:
        await asyncio.sleep(0.01)  # the slot is held while ConnectNotify runs
        admitted.append(client_port.id)
        return 0

    await flt.create_communication_port(
        "\\Race",
        connect_notify=on_connect,
        disconnect_notify=lambda c: None,
        max_connections=3,
    )
    results = await asyncio.gather(
        *(fltuser.aconnect("\\Race", address=daemon.address) for _ in range(10)),
        return_exceptions=True,
    )
    ports = [r for r in results if isinstance(r, fltuser.AsyncPort)]
    refused = [r for r in results if isinstance(r, fltuser.HResultError)]
    assert len(ports) == 3 and len(admitted) == 3
    assert len(refused) == 7
    assert {e.hresult for e in refused} == {0x800704D6}
    for port in ports:
        await port.aclose()


# --- backpressure ------------------------------------------------------------------------------


async def test_slow_reader_is_paused_not_buffered_without_bound(
    daemon: Daemon, port_events: dict[str, list[Any]]
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await asyncio.get_running_loop().sock_connect(sock, daemon.address)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    client = RawClient(reader, writer)
    assert (await client.connect()).status == 0
    session = next(iter(daemon.sessions))
    # Each request asks for 256 KiB of output; the client reads nothing.
    count = 200
    for rid in range(1, count + 1):
        client.writer.write(frame(_encoder.encode(SendRequest(rid, b"x", 256 * 1024))))
    await until(lambda: not session._transport.is_reading())  # type: ignore[union-attr]
    for rid in range(1, count + 1):
        answer = await client.read()
        assert isinstance(answer, SendResult) and answer.rid == rid
        assert answer.data == b"x" * 256 * 1024
    await client.close()


# --- the socket file ----------------------------------------------------------------------------


async def test_socket_file_is_private(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.address).st_mode) == 0o600


async def test_stale_socket_is_replaced(socket_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path)
    stale.close()  # the file stays, nothing listens
    async with Daemon(address=socket_path) as d:
        flt = d.register_filter("f")
        await flt.create_communication_port(
            PORT, connect_notify=lambda *a: 0, disconnect_notify=lambda c: None, max_connections=1
        )
        port = await fltuser.aconnect(PORT, address=socket_path)
        await port.aclose()


async def test_live_socket_is_not_stolen(daemon: Daemon) -> None:
    with pytest.raises(DaemonAddressInUseError):
        async with Daemon(address=daemon.address):
            pass
    assert os.path.exists(daemon.address)  # the first daemon's socket survives


async def test_regular_file_is_not_removed(socket_path: str) -> None:
    with open(socket_path, "w") as f:
        f.write("precious")
    with pytest.raises(OSError, match="not a socket"):
        async with Daemon(address=socket_path):
            pass
    with open(socket_path) as f:
        assert f.read() == "precious"


# --- shutdown ---------------------------------------------------------------------------------


async def test_shutdown_with_connections_open(socket_path: str) -> None:
    disconnected: list[object] = []
    async with Daemon(address=socket_path) as d:
        flt = d.register_filter("f")
        await flt.create_communication_port(
            PORT,
            connect_notify=lambda cp, c, ctx: (0, ctx),
            disconnect_notify=disconnected.append,
            max_connections=5,
        )
        clients = [await RawClient.open(socket_path) for _ in range(3)]
        for i, client in enumerate(clients):
            await client.send(Connect(PROTOCOL_VERSION, PORT, b"%d" % i))
            assert (await client.read()).status == 0
    assert sorted(disconnected) == [b"0", b"1", b"2"]  # type: ignore[type-var]
    for client in clients:
        goodbye = await client.read()
        assert isinstance(goodbye, Goodbye)
        assert goodbye.status == NtStatus.STATUS_PORT_DISCONNECTED
        assert await client.at_eof()
        await client.close()
    assert not os.path.exists(socket_path)


async def test_shutdown_cancels_a_stuck_message_notify_after_the_grace(socket_path: str) -> None:
    release = asyncio.Event()
    disconnected: list[object] = []

    async def stuck(cookie: object, data: bytes, out_size: int) -> int:
        await release.wait()
        return 0

    async with Daemon(address=socket_path, shutdown_grace=0.1) as d:
        flt = d.register_filter("stuck")
        await flt.create_communication_port(
            PORT,
            connect_notify=lambda *a: 0,
            disconnect_notify=disconnected.append,
            message_notify=stuck,
            max_connections=1,
        )
        port = await fltuser.aconnect(PORT, address=socket_path)
        call = asyncio.create_task(port.send(b"x", 1))
        await until(lambda: bool(next(iter(flt.connections()))._inflight))
    with pytest.raises(fltuser.HResultError):
        await call
    assert disconnected == [None]
    await port.aclose()
