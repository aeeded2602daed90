"""One table of user-side scenarios, run through both client flavours and both loops.

Section numbers refer to docs/fltmgr-semantics.md.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

import pytest

import fltuser
from fltemu import NtStatus, SecurityDescriptor, StatusError
from fltemu.daemon import Daemon
from fltemu.kernel import ClientPort, Filter, SendMessageResult, ServerPort

from ..helpers import until

PORT = "\\TestPort"


@dataclass
class Harness:
    """A filter with one port whose callbacks record what happens."""

    flt: Filter
    server_port: ServerPort | None = None
    clients: list[ClientPort] = field(default_factory=list)
    contexts: list[bytes] = field(default_factory=list)
    disconnects: list[object] = field(default_factory=list)
    connect_status: int = 0
    message_result: Any = None  # None: echo

    async def create(self, name: str = PORT, **kwargs: Any) -> ServerPort:
        async def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
            self.clients.append(client_port)
            self.contexts.append(context)
            return self.connect_status, f"cookie-{len(self.clients)}"

        def on_disconnect(cookie: object) -> None:
            self.disconnects.append(cookie)

        def on_message(cookie: object, data: bytes, out_size: int) -> Any:
            if self.message_result is None:
                return 0, data[:out_size]
            if callable(self.message_result):
                return self.message_result(cookie, data, out_size)
            return self.message_result

        kwargs.setdefault("message_notify", on_message)
        kwargs.setdefault("max_connections", 4)
        self.server_port = await self.flt.create_communication_port(
            name, connect_notify=on_connect, disconnect_notify=on_disconnect, **kwargs
        )
        return self.server_port

    async def client(self, index: int = 0) -> ClientPort:
        await until(lambda: len(self.clients) > index and self.clients[index].is_connected)
        return self.clients[index]


@pytest.fixture
async def harness(daemon: Daemon) -> Harness:
    h = Harness(daemon.register_filter("test"))
    await h.create()
    return h


def hr(exc: pytest.ExceptionInfo[fltuser.HResultError]) -> int:
    return int(exc.value.hresult)


# --- connect (§2.3, §3.1) ---------------------------------------------------------------------


async def test_connect_unknown_port_is_file_not_found_3_1(driver: Any, harness: Harness) -> None:
    with pytest.raises(fltuser.HResultError) as exc:
        await driver.connect("\\NoSuchPort")
    assert hr(exc) == 0x80070002
    assert isinstance(exc.value, fltuser.FileNotFoundHResultError)


async def test_connect_name_is_case_sensitive_2_1(driver: Any, harness: Harness) -> None:
    with pytest.raises(fltuser.HResultError) as exc:
        await driver.connect(PORT.lower())
    assert hr(exc) == 0x80070002


@pytest.mark.parametrize(
    ("name", "expected"),
    [("", 0x8007007B), ("NoBackslash", 0x800700A1), ("\\Dir\\Port", 0x80070003)],
)
async def test_connect_bad_names_3_1(
    driver: Any, harness: Harness, name: str, expected: int
) -> None:
    with pytest.raises(fltuser.HResultError) as exc:
        await driver.connect(name)
    assert hr(exc) == expected


async def test_connect_passes_context_and_identity_2_3(driver: Any, harness: Harness) -> None:
    await driver.connect(PORT, context=b"\x01\x00\x00\x00")
    client = await harness.client()
    assert harness.contexts == [b"\x01\x00\x00\x00"]
    assert client.process.pid == os.getpid()
    assert client.process.uid == os.geteuid()


async def test_connect_without_context_gives_empty_bytes(driver: Any, harness: Harness) -> None:
    await driver.connect(PORT)
    assert harness.contexts == [b""]


async def test_connect_over_max_connections_3_1(driver: Any, daemon: Daemon) -> None:
    h = Harness(daemon.register_filter("one"))
    await h.create("\\One", max_connections=1)
    first = await driver.connect("\\One")
    with pytest.raises(fltuser.HResultError) as exc:
        await driver.connect("\\One")
    assert hr(exc) == 0x800704D6
    # Closing is synchronous with DisconnectNotify, so a sequential reconnect works (§6.4).
    await first.close()
    await until(lambda: h.server_port is not None and h.server_port.connection_count == 0)
    await driver.connect("\\One")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (NtStatus.STATUS_INVALID_PARAMETER_3, 0x80070057),
        (NtStatus.STATUS_INSUFFICIENT_RESOURCES, 0x800705AA),
        (NtStatus.STATUS_CONNECTION_REFUSED, 0x800704C9),
        (NtStatus.STATUS_ACCESS_DENIED, 0x80070005),
    ],
)
async def test_connect_notify_failure_reaches_client_translated_2_3(
    driver: Any, harness: Harness, status: NtStatus, expected: int
) -> None:
    harness.connect_status = status
    with pytest.raises(fltuser.HResultError) as exc:
        await driver.connect(PORT)
    assert hr(exc) == expected
    assert exc.value.ntstatus == status
    assert harness.server_port is not None and harness.server_port.connection_count == 0
    assert harness.disconnects == []  # no DisconnectNotify for a refused connection


async def test_security_refuses_other_users_2_2(driver: Any, daemon: Daemon) -> None:
    h = Harness(daemon.register_filter("locked"))
    await h.create(
        "\\Locked", security=SecurityDescriptor.allow(uids={12345}, include_default=False)
    )
    with pytest.raises(fltuser.HResultError) as exc:
        await driver.connect("\\Locked")
    assert hr(exc) == int(fltuser.HResult.E_ACCESSDENIED)


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [({"context": b"x" * 65536}, "context"), ({"options": 2}, "options")],
)
async def test_bad_connect_arguments_are_invalidarg_9_6(
    driver: Any, harness: Harness, kwargs: dict[str, Any], what: str
) -> None:
    with pytest.raises(fltuser.HResultError) as exc:
        await driver.connect(PORT, **kwargs)
    assert hr(exc) == int(fltuser.HResult.E_INVALIDARG)


async def test_largest_context_is_accepted_3_1(driver: Any, harness: Harness) -> None:
    """65511 bytes fit fltlib's FLTPORT attribute on x64; 65512 to 65535 do not and are
    refused with 0x80070005, as by the Windows side (§3.1 [INF], protocol §5)."""
    await driver.connect(PORT, context=b"c" * 65511)
    assert harness.contexts == [b"c" * 65511]
    for size in (65512, 65535):
        with pytest.raises(fltuser.HResultError) as exc:
            await driver.connect(PORT, context=b"c" * size)
        assert hr(exc) == 0x80070005
    assert harness.contexts == [b"c" * 65511]


async def test_sync_handle_option_is_accepted(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT, options=fltuser.FLT_PORT_FLAG_SYNC_HANDLE)
    assert await port.send(b"x", 1) == b"x"


# --- FilterSendMessage (§2.5, §3.2) -------------------------------------------------------------


async def test_send_returns_exactly_the_bytes_returned_3_2(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    assert await port.send(b"hello", 64) == b"hello"
    assert await port.send(b"hello", 2) == b"he"  # cut to the output buffer (§9.9)
    assert await port.send(b"hello") == b""


async def test_send_passes_connection_cookie_2_5(driver: Any, harness: Harness) -> None:
    seen: list[object] = []

    def record(cookie: object, data: bytes, n: int) -> int:
        seen.append(cookie)
        return 0

    harness.message_result = record
    port = await driver.connect(PORT)
    await port.send(b"x")
    assert seen == ["cookie-1"]


async def test_send_empty_input_is_invalidarg_3_2(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    with pytest.raises(fltuser.HResultError) as exc:
        await port.send(b"", 4)
    assert hr(exc) == int(fltuser.HResult.E_INVALIDARG)


async def test_send_without_message_notify_is_invalid_function_2_1(
    driver: Any, daemon: Daemon
) -> None:
    h = Harness(daemon.register_filter("mute"))
    await h.create("\\Mute", message_notify=None)
    port = await driver.connect("\\Mute")
    with pytest.raises(fltuser.HResultError) as exc:
        await port.send(b"x", 4)
    assert hr(exc) == 0x80070001


@pytest.mark.parametrize(
    ("result", "expected", "data"),
    [
        ((NtStatus.STATUS_NO_MORE_ENTRIES, b""), 0x80070103, b""),  # minispy's "no records"
        ((NtStatus.STATUS_BUFFER_OVERFLOW, b"part"), 0x800700EA, b"part"),  # warning keeps data
        ((NtStatus.STATUS_TIMEOUT, b""), 0x80070102, b""),  # a success code still fails
        # Rewritten to STATUS_FLT_BUFFER_TOO_SMALL, a warning: its output is kept (§2.5).
        ((NtStatus.STATUS_BUFFER_TOO_SMALL, b"zz"), 0x8007007A, b"zz"),
        ((NtStatus.STATUS_ACCESS_DENIED, b"zz"), 0x80070005, b""),
        ((0xC0DE0001, b""), int(fltuser.HResult.E_FAIL), b""),  # foreign facility
    ],
)
async def test_send_is_s_ok_only_for_status_success_3_2(
    driver: Any, harness: Harness, result: tuple[int, bytes], expected: int, data: bytes
) -> None:
    harness.message_result = result
    port = await driver.connect(PORT)
    with pytest.raises(fltuser.HResultError) as exc:
        await port.send(b"cmd", 16)
    assert hr(exc) == expected
    assert exc.value.data == data


async def test_raising_message_notify_fails_the_send_not_the_daemon(
    driver: Any, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(cookie: object, data: bytes, n: int) -> Any:
        raise ValueError("driver bug")

    harness.message_result = boom
    port = await driver.connect(PORT)
    with pytest.raises(fltuser.HResultError) as exc:
        await port.send(b"x", 1)
    assert hr(exc) == 0x8007001F  # STATUS_UNSUCCESSFUL -> ERROR_GEN_FAILURE
    assert PORT in caplog.text and "driver bug" in caplog.text
    harness.message_result = None
    assert await port.send(b"still", 8) == b"still"


async def test_status_error_from_message_notify_is_returned(driver: Any, harness: Harness) -> None:
    def refuse(cookie: object, data: bytes, n: int) -> Any:
        raise StatusError(NtStatus.STATUS_INVALID_PARAMETER)

    harness.message_result = refuse
    port = await driver.connect(PORT)
    with pytest.raises(fltuser.HResultError) as exc:
        await port.send(b"x", 1)
    assert hr(exc) == 0x80070057


async def test_async_message_notify(driver: Any, daemon: Daemon) -> None:
    h = Harness(daemon.register_filter("slow"))

    async def on_message(cookie: object, data: bytes, n: int) -> Any:
        await asyncio.sleep(0)
        return 0, data.upper()

    await h.create("\\Slow", message_notify=on_message)
    port = await driver.connect("\\Slow")
    assert await port.send(b"abc", 8) == b"ABC"


async def test_send_over_size_limit_is_insufficient_resources(
    socket_path: str,
) -> None:
    async with Daemon(address=socket_path + ".small", max_message_bytes=1024) as d:
        h = Harness(d.register_filter("small"))
        await h.create()
        for flavour in ("sync", "async"):
            from .conftest import Driver

            drv = Driver(flavour, d.address)
            port = await drv.connect(PORT)
            assert await port.send(b"x" * 1024, 2048) == b"x" * 1024
            with pytest.raises(fltuser.HResultError) as exc:
                await port.send(b"x" * 1025, 0)
            assert hr(exc) == 0x800705AA
            assert "--max-message-bytes" in str(exc.value)
            await drv.close_all()


# --- FilterGetMessage / FilterReplyMessage (§2.8, §3.3, §3.4) -----------------------------------


async def test_get_and_reply_round_trip_2_8(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    sent = asyncio.create_task(harness.flt.send_message(client, b"scan me", reply_length=1))
    msg = await port.get_message(1048)
    assert msg.message_id == 1
    assert msg.reply_length == 1 + 16
    assert msg.data == b"scan me"
    assert msg.size == len(b"scan me") + 16
    await port.reply(msg.message_id, b"\x01")
    result = await sent
    assert result.status == NtStatus.STATUS_SUCCESS
    assert result.reply == b"\x01"


async def test_message_without_reply_has_id_zero_2_8(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    sent = asyncio.create_task(harness.flt.send_message(client, b"note"))
    msg = await port.get_message(64)
    assert (msg.message_id, msg.reply_length, msg.data) == (0, 0, b"note")
    assert (await sent).status == NtStatus.STATUS_SUCCESS
    with pytest.raises(fltuser.HResultError) as exc:
        await port.reply(0, b"x")
    assert hr(exc) == 0x801F0020


async def test_reply_status_is_what_send_message_returns_2_8(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    sent = asyncio.create_task(harness.flt.send_message(client, b"q", reply_length=4))
    msg = await port.get_message(64)
    await port.reply(msg.message_id, b"", status=NtStatus.STATUS_ACCESS_DENIED)
    result = await sent
    assert result.status == NtStatus.STATUS_ACCESS_DENIED
    assert result.reply == b""


async def test_reply_twice_is_no_waiter_3_4(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    sent = asyncio.create_task(harness.flt.send_message(client, b"q", reply_length=4))
    msg = await port.get_message(64)
    await port.reply(msg.message_id, b"ok")
    with pytest.raises(fltuser.HResultError) as exc:
        await port.reply(msg.message_id, b"ok")
    assert hr(exc) == 0x801F0020
    assert isinstance(exc.value, fltuser.NoWaiterForReplyError)
    await sent


async def test_reply_and_get_is_a_reply_then_a_get_2_8_3_4(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    first = asyncio.create_task(harness.flt.send_message(client, b"one", reply_length=2))
    msg = await port.get_message(64)
    second = asyncio.create_task(harness.flt.send_message(client, b"two", reply_length=2))
    nxt = await port.reply_and_get(msg.message_id, b"ok", 64)
    assert await first == SendMessageResult(NtStatus.STATUS_SUCCESS, b"ok")
    assert (nxt.message_id, nxt.data) == (2, b"two")
    # The reply goes out even when no message follows; the get then times out and is withdrawn.
    with pytest.raises(TimeoutError):
        await port.reply_and_get(nxt.message_id, b"no", 64, NtStatus.STATUS_VIRUS_INFECTED, 0.05)
    assert await second == SendMessageResult(NtStatus.STATUS_VIRUS_INFECTED, b"no")
    await until(lambda: client.queues.getter_count == 0)
    await driver.close_all()


async def test_reply_and_get_whose_reply_fails_withdraws_the_get_3_4(
    driver: Any, harness: Harness
) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    with pytest.raises(fltuser.NoWaiterForReplyError):
        await port.reply_and_get(7, b"late", 64)
    await until(lambda: client.queues.getter_count == 0)
    # Nothing was lost or left behind: the next message goes to the next get.
    sent = asyncio.create_task(harness.flt.send_message(client, b"next"))
    assert (await port.get_message(64)).data == b"next"
    assert (await sent).status == NtStatus.STATUS_SUCCESS
    await driver.close_all()


async def test_reply_longer_than_kernel_buffer_overflows_3_4(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    sent = asyncio.create_task(harness.flt.send_message(client, b"q", reply_length=1))
    msg = await port.get_message(64)
    # sizeof(SCANNER_REPLY_MESSAGE) without pack(1) would send 8 bytes of payload (§7.1).
    with pytest.raises(fltuser.HResultError) as exc:
        await port.reply(msg.message_id, b"\x01" + b"\x00" * 7)
    assert hr(exc) == 0x800700EA
    result = await sent
    assert result.status == NtStatus.STATUS_BUFFER_OVERFLOW
    assert result.reply == b"\x01"


async def test_late_reply_after_timeout_is_no_waiter_2_8(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    sent = asyncio.create_task(harness.flt.send_message(client, b"q", reply_length=4, timeout=0.2))
    msg = await port.get_message(64)
    result = await sent
    assert result.status == NtStatus.STATUS_TIMEOUT
    assert result.reply is None
    with pytest.raises(fltuser.HResultError) as exc:
        await port.reply(msg.message_id, b"late")
    assert hr(exc) == 0x801F0020


async def test_buffer_too_small_keeps_the_message_3_3(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    sent = asyncio.create_task(harness.flt.send_message(client, b"x" * 100, reply_length=1))
    with pytest.raises(fltuser.HResultError) as exc:
        await port.get_message(64)
    assert hr(exc) == 0x8007007A
    assert isinstance(exc.value, fltuser.InsufficientBufferError)
    assert exc.value.required_size == 116
    msg = await port.get_message(exc.value.required_size)  # resize and re-issue (openEDR)
    assert msg.data == b"x" * 100
    await port.reply(msg.message_id, b"\x00")
    assert (await sent).status == NtStatus.STATUS_SUCCESS


async def test_get_message_bad_buffer_is_invalidarg_3_3(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    with pytest.raises(fltuser.HResultError) as exc:
        await port.get_message(0)
    assert hr(exc) == int(fltuser.HResult.E_INVALIDARG)


async def test_get_message_timeout_loses_nothing_5a(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    with pytest.raises(TimeoutError):
        await port.get_message(64, timeout=0.05)
    # The withdrawn getter must not swallow the next message.
    await until(lambda: client.queues.getter_count == 0)
    sent = asyncio.create_task(harness.flt.send_message(client, b"after", reply_length=2))
    msg = await port.get_message(64, timeout=5)
    assert msg.data == b"after"
    await port.reply(msg.message_id, b"ok")
    assert (await sent).reply == b"ok"


async def test_messages_go_to_getters_in_fifo_order_6_1(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    getters = [asyncio.create_task(port.get_message(64)) for _ in range(3)]
    await until(lambda: client.queues.getter_count == 3)
    for i in range(3):
        await harness.flt.send_message(client, b"m%d" % i)
    results = [await g for g in getters]
    assert sorted(m.data for m in results) == [b"m0", b"m1", b"m2"]


# --- disconnects (§6.6) ------------------------------------------------------------------------


async def test_close_client_port_disconnects_user_calls_2_6(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    pending = asyncio.create_task(port.get_message(64))
    await until(lambda: client.queues.getter_count == 1)
    await harness.flt.close_client_port(client)
    with pytest.raises(fltuser.HResultError) as exc:
        await pending
    assert hr(exc) == 0x80070006
    for call in (port.send(b"x", 1), port.get_message(64), port.reply(1, b"")):
        with pytest.raises(fltuser.HResultError) as exc:
            await call
        assert hr(exc) == 0x80070006
    result = await harness.flt.send_message(client, b"x")
    assert result.status == NtStatus.STATUS_PORT_DISCONNECTED
    await port.close()
    await until(lambda: harness.disconnects == ["cookie-1"])  # once, at user close (§9.1)


async def test_user_close_runs_disconnect_notify_and_fails_senders_2_4(
    driver: Any, harness: Harness
) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    sent = asyncio.create_task(harness.flt.send_message(client, b"never read", reply_length=1))
    await asyncio.sleep(0)
    await port.close()
    result = await sent
    assert result.status == NtStatus.STATUS_PORT_DISCONNECTED
    await until(lambda: harness.disconnects == ["cookie-1"])
    server_port = harness.server_port
    assert server_port is not None
    await until(lambda: server_port.connection_count == 0)


async def test_close_while_a_send_is_in_message_notify_2_4(driver: Any, harness: Harness) -> None:
    """CloseHandle from another thread while MessageNotify runs: the cleanup waits for it
    (§2.4 step 4) and the sender gets MessageNotify's answer, as on the Windows side; a get
    pending at the same moment fails with 0x80070006 (§3.5)."""
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(cookie: object, data: bytes, out_size: int) -> Any:
        entered.set()
        await release.wait()
        return 0, b"done!"

    await harness.create("\\SlowPort", message_notify=slow)
    port = await driver.connect("\\SlowPort")
    sent = asyncio.ensure_future(port.send(b"scan", 16))
    got = asyncio.ensure_future(port.get_message(64))
    await entered.wait()
    client = await harness.client()
    await until(lambda: client.queues.getter_count == 1)
    closing = asyncio.ensure_future(port.close())
    await until(lambda: not client.is_connected)
    with pytest.raises(fltuser.HResultError) as exc:
        await got
    assert hr(exc) == 0x80070006
    assert not sent.done() and not closing.done()
    release.set()
    assert await sent == b"done!"
    await closing
    assert harness.disconnects == ["cookie-1"]


async def test_use_after_close_is_closed_resource(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    await port.close()
    with pytest.raises(fltuser.PortClosedError) as exc:
        await port.send(b"x", 1)
    assert isinstance(exc.value, fltuser.ClosedResourceError)
    assert hr(exc) == int(fltuser.HResult.E_HANDLE)
    await port.close()  # closing twice is fine


async def test_unload_disconnects_everyone_6_6(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    client = await harness.client()
    pending = asyncio.create_task(port.get_message(64))
    await until(lambda: client.queues.getter_count == 1)
    await harness.flt.unload()
    with pytest.raises(fltuser.HResultError) as exc:
        await pending
    assert hr(exc) == 0x80070006
    assert harness.disconnects == ["cookie-1"]
    with pytest.raises(fltuser.HResultError) as exc:
        await port.send(b"x", 1)
    assert hr(exc) == 0x80070006
    with pytest.raises(fltuser.HResultError) as exc:
        await driver.connect(PORT)
    assert hr(exc) == 0x80070002


async def test_server_port_close_keeps_connections_2_7(driver: Any, harness: Harness) -> None:
    port = await driver.connect(PORT)
    assert harness.server_port is not None
    await harness.flt.close_communication_port(harness.server_port)
    assert await port.send(b"alive", 8) == b"alive"
    with pytest.raises(fltuser.HResultError) as exc:
        await driver.connect(PORT)
    assert hr(exc) == 0x80070002


async def test_daemon_shutdown_disconnects_clients(socket_path: str) -> None:
    from .conftest import Driver

    for flavour in ("sync", "async"):
        async with Daemon(address=socket_path) as d:
            h = Harness(d.register_filter("bye"))
            await h.create()
            drv = Driver(flavour, d.address)
            port = await drv.connect(PORT)
            pending = asyncio.create_task(port.get_message(64))
            await until(lambda h=h: bool(h.clients) and h.clients[0].queues.getter_count == 1)
        with pytest.raises(fltuser.HResultError) as exc:
            await pending
        assert hr(exc) == 0x80070006
        assert h.disconnects == ["cookie-1"]
        assert not port.is_connected
        await drv.close_all()


async def test_no_daemon_is_file_not_found(socket_path: str) -> None:
    from .conftest import Driver

    for flavour in ("sync", "async"):
        with pytest.raises(fltuser.HResultError) as exc:
            await Driver(flavour, socket_path).connect(PORT)
        assert hr(exc) == 0x80070002
        assert "fltemu serve" in str(exc.value)


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_no_daemon_names_the_socket_tried_and_where_it_came_from(
    flavour: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refusal(address: str | None) -> str:
        with pytest.raises(fltuser.HResultError) as exc:
            if flavour == "sync":
                fltuser.connect(PORT, address=address)
            else:
                await fltuser.aconnect(PORT, address=address)
        assert hr(exc) == 0x80070002
        return str(exc.value)

    missing = str(tmp_path / "nowhere.sock")
    monkeypatch.setenv("FLTEMU_SOCKET", missing)
    text = await refusal(None)
    assert f"no fltemu daemon is listening on {missing} (FLTEMU_SOCKET): " in text
    assert "No such file or directory" in text and "fltemu serve" in text
    monkeypatch.setenv("FLTEMU_SOCKET", str(tmp_path))
    assert f"on {tmp_path} (FLTEMU_SOCKET): that is a folder, not a socket" in await refusal(None)
    assert f"on {missing} (the address given)" in await refusal(missing)
    monkeypatch.delenv("FLTEMU_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    default = os.path.join(str(tmp_path), "fltemu.sock")
    assert f"on {default} (the default socket)" in await refusal(None)
