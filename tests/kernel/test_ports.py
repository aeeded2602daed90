"""Connections and their teardown (§2.2-§2.4, §2.6, §6.4, §6.6, §9.1, §9.2)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from fltemu.errors import StatusError
from fltemu.kernel import (
    ClientPortState,
    Filter,
    FilterManager,
    ProcessInfo,
    SecurityDescriptor,
)
from fltemu.status import NtStatus, nt_success
from tests.helpers import until

from .conftest import ME, Connector, PortFactory, Recorder, User

S = NtStatus


async def expect_status(status: NtStatus, awaitable: object) -> StatusError:
    with pytest.raises(StatusError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.status == status, info.value.status
    return info.value


# --- access check (§2.2) ------------------------------------------------------------------


async def test_default_descriptor_admits_root_and_daemon_user_2_2(
    make_port: PortFactory, connect: Connector
) -> None:
    await make_port()
    for uid in {0, os.geteuid()}:
        user = await connect(process=ProcessInfo(pid=1, uid=uid, gid=99999))
        assert user.port.is_connected


async def test_default_descriptor_refuses_other_users_2_2(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    await make_port()
    stranger = 54321 if os.geteuid() != 54321 else 54322
    await expect_status(
        S.STATUS_ACCESS_DENIED, connect(process=ProcessInfo(pid=1, uid=stranger, gid=stranger))
    )
    await expect_status(
        S.STATUS_ACCESS_DENIED, connect(process=ProcessInfo(pid=1, uid=None, gid=None))
    )
    assert rec.connects == []


async def test_descriptor_for_one_uid_refuses_root_2_2(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    port = await make_port(security=SecurityDescriptor.allow([12345], include_default=False))
    await expect_status(S.STATUS_ACCESS_DENIED, connect(process=ProcessInfo(1, 0, 0)))
    await expect_status(S.STATUS_ACCESS_DENIED, connect(process=ME))
    assert port.connection_count == 0
    assert rec.connects == []
    user = await connect(process=ProcessInfo(1, 12345, 12345))
    assert user.port.process.uid == 12345


async def test_descriptor_admits_by_gid_2_2(make_port: PortFactory, connect: Connector) -> None:
    await make_port(security=SecurityDescriptor.allow(gids=[777], include_default=False))
    await expect_status(S.STATUS_ACCESS_DENIED, connect(process=ProcessInfo(1, 50000, 778)))
    user = await connect(process=ProcessInfo(1, 50000, 777))
    assert user.port.is_connected


async def test_descriptor_everyone_admits_anyone_2_2(
    make_port: PortFactory, connect: Connector
) -> None:
    await make_port(security=SecurityDescriptor.allow(everyone=True, include_default=False))
    user = await connect(process=ProcessInfo(None, None, None))
    assert user.port.is_connected


async def test_allow_includes_default_principals_2_2() -> None:
    sd = SecurityDescriptor.allow([12345])
    assert sd.admits(ProcessInfo(1, 0, 0))
    assert sd.admits(ProcessInfo(1, os.geteuid(), 0))
    assert sd.admits(ProcessInfo(1, 12345, 0))


# --- connection slots (§2.3 step 3, §6.4) ------------------------------------------------


async def test_connection_limit_2_3(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    port = await make_port(max_connections=2)
    await connect()
    await connect()
    await expect_status(S.STATUS_CONNECTION_COUNT_LIMIT, connect())
    assert len(rec.connects) == 2
    assert port.connection_count == 2


async def test_slot_reserved_before_connect_notify_6_4(
    flt: Filter, connect: Connector, rec: Recorder
) -> None:
    release = asyncio.Event()
    calls: list[bytes] = []

    async def slow_connect(client_port: object, cookie: object, context: bytes) -> int:
        calls.append(context)
        await release.wait()
        return S.STATUS_ACCESS_DENIED if context == b"first" else S.STATUS_SUCCESS

    port = await flt.create_communication_port(
        "\\P",
        connect_notify=slow_connect,
        disconnect_notify=rec.disconnect_notify,
        max_connections=1,
    )
    first = asyncio.create_task(connect(context=b"first"))
    await until(lambda: calls == [b"first"])
    assert port.connection_count == 1
    # The in-progress connect holds the only slot: refused at once, no ConnectNotify.
    await expect_status(S.STATUS_CONNECTION_COUNT_LIMIT, connect(context=b"second"))
    assert calls == [b"first"]
    release.set()
    await expect_status(S.STATUS_ACCESS_DENIED, first)
    # Refused: the slot is free again and no DisconnectNotify ran (§2.3).
    assert port.connection_count == 0
    user = await connect(context=b"third")
    assert user.port.is_connected
    assert calls == [b"first", b"third"]
    assert rec.disconnects == []


async def test_cancelled_connect_releases_slot_6_4(flt: Filter, connect: Connector) -> None:
    started = asyncio.Event()

    async def hang(client_port: object, cookie: object, context: bytes) -> int:
        started.set()
        await asyncio.Event().wait()
        return S.STATUS_SUCCESS

    port = await flt.create_communication_port(
        "\\P", connect_notify=hang, disconnect_notify=lambda c: None, max_connections=1
    )
    task = asyncio.create_task(connect())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert port.connection_count == 0


# --- ConnectNotify (§2.3) ----------------------------------------------------------------


async def test_connect_notify_failure_status_propagated_exactly_2_3(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    port = await make_port(max_connections=1)
    rec.connect_status = S.STATUS_INVALID_PARAMETER_3
    err = await expect_status(S.STATUS_INVALID_PARAMETER_3, connect())
    assert isinstance(err, StatusError)
    assert len(rec.connects) == 1
    assert rec.disconnects == []
    assert port.connection_count == 0
    assert port.connections == set()
    refused = rec.connects[0][0]
    assert refused.state is ClientPortState.DISCONNECTED
    # The slot is back: with max_connections=1 the next connect succeeds.
    rec.connect_status = S.STATUS_SUCCESS
    await connect()
    assert port.connection_count == 1


async def test_connect_notify_raising_status_error_2_3(
    flt: Filter, connect: Connector, rec: Recorder
) -> None:
    def refuse(client_port: object, cookie: object, context: bytes) -> int:
        raise StatusError(S.STATUS_CONNECTION_REFUSED)

    port = await flt.create_communication_port(
        "\\P", connect_notify=refuse, disconnect_notify=rec.disconnect_notify, max_connections=1
    )
    await expect_status(S.STATUS_CONNECTION_REFUSED, connect())
    assert port.connection_count == 0
    assert rec.disconnects == []


async def test_connect_notify_raising_other_exception_2_3(
    flt: Filter, connect: Connector, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(client_port: object, cookie: object, context: bytes) -> int:
        raise RuntimeError("boom")

    port = await flt.create_communication_port(
        "\\Broken",
        connect_notify=broken,
        disconnect_notify=rec.disconnect_notify,
        max_connections=1,
    )
    with caplog.at_level(logging.ERROR, logger="fltemu"):
        await expect_status(S.STATUS_UNSUCCESSFUL, connect("\\Broken"))
    assert any("'\\Broken'" in r.getMessage() and r.exc_info is not None for r in caplog.records), (
        caplog.text
    )
    assert port.connection_count == 0
    assert rec.disconnects == []


async def test_connect_notify_runs_before_connect_returns_2_3(
    flt: Filter, connect: Connector, rec: Recorder
) -> None:
    seen: list[ClientPortState] = []

    async def on_connect(client_port: object, cookie: object, context: bytes) -> int:
        await asyncio.sleep(0)
        seen.append(client_port.state)  # type: ignore[attr-defined]
        return S.STATUS_SUCCESS

    await flt.create_communication_port(
        "\\P", connect_notify=on_connect, disconnect_notify=rec.disconnect_notify, max_connections=1
    )
    user = await connect()
    assert seen == [ClientPortState.CONNECTING]
    assert user.port.state is ClientPortState.CONNECTED


@pytest.mark.parametrize("context", [b"", b"\x01\x00\x00\x00", bytes(range(256)) * 4])
async def test_connect_context_passed_2_3(
    make_port: PortFactory, connect: Connector, rec: Recorder, context: bytes
) -> None:
    await make_port(server_port_cookie="spc")
    user = await connect(context=context)
    assert rec.connects == [(user.port, "spc", context)]
    assert type(rec.connects[0][2]) is bytes


async def test_oversized_context_refused_3_1(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    """65511 bytes is the most an x64 fltlib's FLTPORT attribute carries; longer is refused
    as fltmgr refuses the attribute, before the name is looked up (§3.1 [INF])."""
    port = await make_port()
    await connect(context=b"x" * 65511)
    for size in (65512, 0xFFFF, 0x10000):
        await expect_status(S.STATUS_ACCESS_DENIED, connect(context=b"x" * size))
    await expect_status(S.STATUS_ACCESS_DENIED, connect(name="\\NoSuchPort", context=b"x" * 65512))
    assert len(rec.connects) == 1
    assert port.connection_count == 1


async def test_cookie_defaults_to_none_2_3(
    make_port: PortFactory, connect: Connector, rec: Recorder, flt: Filter
) -> None:
    await make_port()
    user = await connect()
    assert user.port.cookie is None
    assert user.port.user_send(b"x", 0) == (S.STATUS_SUCCESS, b"")
    assert rec.messages == [(None, b"x", 0)]
    await user.port.user_close()
    assert rec.disconnects == [None]


async def test_cookie_reaches_message_and_disconnect_notify_2_3(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    await make_port()
    cookie = object()
    rec.cookie = cookie
    user = await connect()
    assert user.port.cookie is cookie
    user.port.user_send(b"hi", 8)
    assert rec.messages[0][0] is cookie
    await user.port.user_close()
    assert len(rec.disconnects) == 1 and rec.disconnects[0] is cookie


async def test_each_connection_has_its_own_cookie_2_3(flt: Filter, connect: Connector) -> None:
    got: list[object] = []
    counter = iter(range(100))

    await flt.create_communication_port(
        "\\P",
        connect_notify=lambda cp, spc, ctx: (S.STATUS_SUCCESS, f"conn{next(counter)}"),
        disconnect_notify=got.append,
        message_notify=lambda cookie, data, size: (S.STATUS_SUCCESS, str(cookie).encode()),
        max_connections=2,
    )
    a, b = await connect(), await connect()
    assert a.port.user_send(b"?", 10) == (S.STATUS_SUCCESS, b"conn0")
    assert b.port.user_send(b"?", 10) == (S.STATUS_SUCCESS, b"conn1")
    await b.port.user_close()
    await a.port.user_close()
    assert got == ["conn1", "conn0"]


async def test_process_info_reaches_client_port_2_3(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    await make_port()
    who = ProcessInfo(pid=31337, uid=0, gid=5)
    user = await connect(process=who)
    assert user.port.process == who
    assert rec.connects[0][0].process == who


async def test_connect_while_unloading_is_deleting_object_3_1(
    flt: Filter, connect: Connector, rec: Recorder
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(client_port: object, cookie: object, context: bytes) -> int:
        entered.set()
        await release.wait()
        return S.STATUS_SUCCESS

    port = await flt.create_communication_port(
        "\\P", connect_notify=slow, disconnect_notify=rec.disconnect_notify, max_connections=1
    )
    task = asyncio.create_task(connect())
    await entered.wait()
    await flt.unload()
    release.set()
    await expect_status(S.STATUS_FLT_DELETING_OBJECT, task)
    assert rec.disconnects == []
    assert port.connection_count == 0


# --- user close (§2.4, §3.5, §6.6 row 1) -------------------------------------------------


class Blocked:
    """One connection with a sender waiting for a reply, one waiting for a getter (it was
    bounced once) and one pending getter: everything a teardown has to wake (§6.6)."""

    def __init__(
        self,
        for_reply: asyncio.Task[object],
        for_getter: asyncio.Task[object],
        getter: object,
    ) -> None:
        self.for_reply = for_reply
        self.for_getter = for_getter
        self.getter = getter


async def block_everything(flt: Filter, user: User) -> Blocked:
    queues = user.port.queues
    for_reply = asyncio.create_task(flt.send_message(user.port, b"r", reply_length=8))
    await until(lambda: queues.sender_count == 1)
    user.get(4096)
    assert queues.reply_waiter_count == 1 and queues.sender_count == 0
    for_getter = asyncio.create_task(flt.send_message(user.port, b"g" * 100))
    await until(lambda: queues.sender_count == 1)
    user.get(20)  # bounced: too small for 100 + 16
    assert user.completions[-1].status == S.STATUS_BUFFER_TOO_SMALL
    getter = user.get(20)  # stays pending: the bounced sender waits for a bigger one
    assert queues.getter_count == 1 and queues.sender_count == 1
    return Blocked(for_reply, for_getter, getter)


def assert_all_disconnected(user: User, blocked: Blocked) -> None:
    assert blocked.for_reply.done() and blocked.for_getter.done()
    assert blocked.for_reply.result().status == S.STATUS_PORT_DISCONNECTED  # type: ignore[attr-defined]
    assert blocked.for_getter.result().status == S.STATUS_PORT_DISCONNECTED  # type: ignore[attr-defined]
    assert blocked.for_reply.result().reply is None  # type: ignore[attr-defined]
    last = user.completions[-1]
    assert (last.token, last.status) == (blocked.getter, S.STATUS_PORT_DISCONNECTED)
    q = user.port.queues
    assert (q.getter_count, q.sender_count, q.reply_waiter_count) == (0, 0, 0)


def assert_user_calls_disconnected(user: User) -> None:
    assert user.port.user_get("late", 4096) == S.STATUS_PORT_DISCONNECTED
    assert user.port.user_send(b"x", 8) == (S.STATUS_PORT_DISCONNECTED, b"")
    assert user.port.user_reply(1, 0, b"") == S.STATUS_PORT_DISCONNECTED


async def test_user_close_wakes_senders_and_getters_2_4(
    make_port: PortFactory, connect: Connector, rec: Recorder, flt: Filter
) -> None:
    port = await make_port(max_connections=1)
    rec.cookie = "c1"
    user = await connect()
    blocked = await block_everything(flt, user)
    await user.port.user_close()
    await asyncio.sleep(0)
    assert_all_disconnected(user, blocked)
    assert rec.disconnects == ["c1"]
    assert user.port.state is ClientPortState.DISCONNECTED
    assert port.connections == set()
    assert port.connection_count == 0
    # Later FltSendMessage on the (not NULLed) port variable: disconnected at once (§6.6).
    assert (await flt.send_message(user.port, b"late", timeout=None)).status == (
        S.STATUS_PORT_DISCONNECTED
    )
    # The slot is free: a new connection to the max_connections=1 port succeeds.
    await connect()
    # CloseHandle twice does not notify twice.
    await user.port.user_close()
    assert rec.disconnects == ["c1"]


async def test_disconnect_notify_after_inflight_message_notify_2_4(
    flt: Filter, connect: Connector
) -> None:
    events: list[str] = []
    release = asyncio.Event()

    async def on_message(cookie: object, data: bytes, size: int) -> tuple[int, bytes]:
        events.append("message start")
        await release.wait()
        events.append("message end")
        return S.STATUS_SUCCESS, b"answer"

    def on_disconnect(cookie: object) -> None:
        events.append("disconnect")

    port = await flt.create_communication_port(
        "\\P",
        connect_notify=lambda cp, spc, ctx: S.STATUS_SUCCESS,
        disconnect_notify=on_disconnect,
        message_notify=on_message,
        max_connections=1,
    )
    user = await connect()
    inflight = user.port.user_send(b"q", 16)
    assert isinstance(inflight, asyncio.Task)
    await until(lambda: events == ["message start"])

    closing = asyncio.create_task(user.port.user_close())
    await until(lambda: user.port.state is ClientPortState.DISCONNECTING)
    for _ in range(5):
        await asyncio.sleep(0)
    # Rundown: DisconnectNotify waits for the in-flight MessageNotify; the slot stays taken.
    assert events == ["message start"]
    assert not closing.done()
    assert port.connection_count == 1
    # New requests are refused while running down (§2.5 pre-checks).
    assert user.port.user_send(b"q", 16) == (S.STATUS_PORT_DISCONNECTED, b"")
    assert user.port.user_get("t", 64) == S.STATUS_PORT_DISCONNECTED

    release.set()
    await closing
    assert events == ["message start", "message end", "disconnect"]
    # The in-flight call was allowed to finish with its own result.
    assert await inflight == (S.STATUS_SUCCESS, b"answer")
    assert port.connection_count == 0


async def test_slot_released_after_disconnect_notify_returns_9_2(
    flt: Filter, connect: Connector
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def on_disconnect(cookie: object) -> None:
        entered.set()
        await release.wait()

    port = await flt.create_communication_port(
        "\\P",
        connect_notify=lambda cp, spc, ctx: S.STATUS_SUCCESS,
        disconnect_notify=on_disconnect,
        max_connections=1,
    )
    user = await connect()
    closing = asyncio.create_task(user.port.user_close())
    await entered.wait()
    # The minifilter never called close_client_port; until DisconnectNotify returns the old
    # connection holds the slot: 0x800704D6 for a reconnect (§9.2).
    await expect_status(S.STATUS_CONNECTION_COUNT_LIMIT, connect())
    release.set()
    await closing
    assert port.connection_count == 0
    await connect()


async def test_cancelled_close_does_not_abort_teardown_2_4(flt: Filter, connect: Connector) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    done: list[object] = []

    async def on_disconnect(cookie: object) -> None:
        entered.set()
        await release.wait()
        done.append(cookie)

    port = await flt.create_communication_port(
        "\\P",
        connect_notify=lambda cp, spc, ctx: S.STATUS_SUCCESS,
        disconnect_notify=on_disconnect,
        max_connections=1,
    )
    user = await connect()
    closing = asyncio.create_task(user.port.user_close())
    await entered.wait()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    release.set()
    await until(lambda: port.connection_count == 0)
    assert done == [None]
    assert user.port.state is ClientPortState.DISCONNECTED


async def test_disconnect_notify_that_raises_is_logged_2_4(
    flt: Filter, connect: Connector, caplog: pytest.LogCaptureFixture
) -> None:
    async def on_disconnect(cookie: object) -> None:
        raise RuntimeError("driver bug")

    port = await flt.create_communication_port(
        "\\Raising",
        connect_notify=lambda cp, spc, ctx: S.STATUS_SUCCESS,
        disconnect_notify=on_disconnect,
        max_connections=1,
    )
    user = await connect("\\Raising")
    with caplog.at_level(logging.ERROR, logger="fltemu"):
        await user.port.user_close()
    assert any(
        "DisconnectNotify" in r.getMessage() and "'\\Raising'" in r.getMessage() and r.exc_info
        for r in caplog.records
    ), caplog.text
    assert user.port.state is ClientPortState.DISCONNECTED
    assert port.connection_count == 0
    await connect("\\Raising")


async def test_rundown_timeout_cancels_hung_message_notify_2_4(
    flt: Filter, connect: Connector, manager: FilterManager, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()
    disconnects: list[object] = []

    async def hang(cookie: object, data: bytes, size: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return S.STATUS_SUCCESS

    await flt.create_communication_port(
        "\\P",
        connect_notify=lambda cp, spc, ctx: S.STATUS_SUCCESS,
        disconnect_notify=disconnects.append,
        message_notify=hang,
        max_connections=1,
    )
    manager.rundown_timeout = 0.05  # the timeout is the behaviour under test
    user = await connect()
    inflight = user.port.user_send(b"q", 0)
    assert isinstance(inflight, asyncio.Task)
    await started.wait()
    with caplog.at_level(logging.WARNING, logger="fltemu"):
        await user.port.user_close()
    assert inflight.cancelled()
    assert disconnects == [None]
    assert "cancelling 1 MessageNotify" in caplog.text


# --- FltCloseClientPort (§2.6, §6.6 row 3, §9.1) -----------------------------------------


async def test_close_client_port_disconnects_at_once_2_6(
    make_port: PortFactory, connect: Connector, rec: Recorder, flt: Filter
) -> None:
    port = await make_port(max_connections=1)
    rec.cookie = "cookie"
    user = await connect()
    blocked = await block_everything(flt, user)

    await flt.close_client_port(user.port)
    assert user.port.is_kernel_closed
    await asyncio.sleep(0)
    assert_all_disconnected(user, blocked)
    # The user's handle stays open but every call on it fails (0x80070006).
    assert_user_calls_disconnected(user)
    # FltSendMessage on it: STATUS_PORT_DISCONNECTED immediately, even with no timeout.
    result = await flt.send_message(user.port, b"x", reply_length=4, timeout=None)
    assert result.status == S.STATUS_PORT_DISCONNECTED and result.reply is None
    # The slot is released now: a new connection fits in max_connections=1.
    assert port.connection_count == 0
    other = await connect()
    assert other.port.is_connected
    # No DisconnectNotify yet: the user has not closed its handle (§9.1 policy).
    assert rec.disconnects == []
    # Twice, or with None (a NULL variable): nothing happens.
    await flt.close_client_port(user.port)
    await flt.close_client_port(None)
    assert port.connection_count == 1
    assert other.port.is_connected

    await user.port.user_close()
    assert rec.disconnects == ["cookie"]
    assert port.connection_count == 1  # the new connection's slot is untouched
    await user.port.user_close()
    assert rec.disconnects == ["cookie"]


async def test_close_client_port_from_disconnect_notify_2_6(
    flt: Filter, connect: Connector
) -> None:
    """The samples' pattern: DisconnectNotify calls FltCloseClientPort (§7.1)."""
    ports: list[object] = []
    closed: list[object] = []

    def on_connect(client_port: object, spc: object, ctx: bytes) -> tuple[int, object]:
        ports.append(client_port)
        return S.STATUS_SUCCESS, client_port

    async def on_disconnect(cookie: object) -> None:
        await flt.close_client_port(cookie)  # type: ignore[arg-type]
        await flt.close_client_port(cookie)  # type: ignore[arg-type]
        closed.append(cookie)

    port = await flt.create_communication_port(
        "\\P", connect_notify=on_connect, disconnect_notify=on_disconnect, max_connections=1
    )
    user = await connect()
    await user.port.user_close()
    assert closed == [user.port] == ports
    assert user.port.is_kernel_closed
    assert user.port.state is ClientPortState.DISCONNECTED
    assert port.connection_count == 0
    assert port.connections == set()
    await connect()
    assert port.connection_count == 1


async def test_close_client_port_with_inflight_message_notify_9_8(
    flt: Filter, connect: Connector
) -> None:
    release = asyncio.Event()
    events: list[str] = []

    async def on_message(cookie: object, data: bytes, size: int) -> tuple[int, bytes]:
        await release.wait()
        events.append("message end")
        return S.STATUS_SUCCESS, b"late"

    await flt.create_communication_port(
        "\\P",
        connect_notify=lambda cp, spc, ctx: S.STATUS_SUCCESS,
        disconnect_notify=lambda cookie: events.append("disconnect"),
        message_notify=on_message,
        max_connections=1,
    )
    user = await connect()
    inflight = user.port.user_send(b"q", 8)
    assert isinstance(inflight, asyncio.Task)
    await flt.close_client_port(user.port)
    # New sends are refused at once (§9.8); the one in flight is allowed to finish.
    assert user.port.user_send(b"q", 8) == (S.STATUS_PORT_DISCONNECTED, b"")
    closing = asyncio.create_task(user.port.user_close())
    for _ in range(5):
        await asyncio.sleep(0)
    assert events == []
    release.set()
    await closing
    assert events == ["message end", "disconnect"]
    assert await inflight == (S.STATUS_SUCCESS, b"late")


# --- FltCloseCommunicationPort (§2.7, §6.6 row 4) ----------------------------------------


async def test_server_port_close_leaves_connections_working_2_7(
    make_port: PortFactory, connect: Connector, rec: Recorder, flt: Filter
) -> None:
    port = await make_port("\\Live", max_connections=1)
    rec.message = (S.STATUS_SUCCESS, b"pong")
    user = await connect("\\Live")
    await flt.close_communication_port(port)
    assert user.port.is_connected
    assert user.port.user_send(b"ping", 8) == (S.STATUS_SUCCESS, b"pong")
    user.get(64)
    sender = asyncio.create_task(flt.send_message(user.port, b"m", reply_length=2))
    await until(lambda: len(user.completions) == 1)
    assert user.port.user_reply(user.completions[0].message_id, 0, b"ok") == S.STATUS_SUCCESS
    assert (await sender).reply == b"ok"
    await user.port.user_close()
    assert rec.disconnects == [None]
    assert port.connection_count == 0


# --- filter unload (§6.6 row 5) ---------------------------------------------------------


async def test_unload_disconnects_every_connection_6_6(
    flt: Filter, connect: Connector, manager: FilterManager
) -> None:
    recs = [Recorder(cookie="a"), Recorder(cookie="b")]
    ports = []
    for i, r in enumerate(recs):
        ports.append(
            await flt.create_communication_port(
                f"\\U{i}",
                connect_notify=r.connect_notify,
                disconnect_notify=r.disconnect_notify,
                message_notify=r.message_notify,
                max_connections=2,
            )
        )
    u0a, u0b, u1 = await connect("\\U0"), await connect("\\U0"), await connect("\\U1")
    blocked = await block_everything(flt, u0a)
    u1_sender = asyncio.create_task(flt.send_message(u1.port, b"x", reply_length=1))
    await until(lambda: u1.port.queues.sender_count == 1)
    # One connection the filter already closed from its side still gets its notify.
    await flt.close_client_port(u0b.port)

    await flt.unload()
    await asyncio.sleep(0)
    assert_all_disconnected(u0a, blocked)
    assert (await u1_sender).status == S.STATUS_PORT_DISCONNECTED
    assert recs[0].disconnects == ["a", "a"]
    assert recs[1].disconnects == ["b"]
    assert [p.connection_count for p in ports] == [0, 0]
    assert len(manager.namespace) == 0
    for name in ("\\U0", "\\U1"):
        await expect_status(S.STATUS_OBJECT_NAME_NOT_FOUND, connect(name))
    for user in (u0a, u0b, u1):
        assert_user_calls_disconnected(user)
        assert (await flt.send_message(user.port, b"x", timeout=0)).status == (
            S.STATUS_PORT_DISCONNECTED
        )
    # The users close their handles later: no second DisconnectNotify.
    for user in (u0a, u0b, u1):
        await user.port.user_close()
    assert recs[0].disconnects == ["a", "a"]
    assert recs[1].disconnects == ["b"]
    assert "testflt" not in manager.filters


async def test_unload_drains_inflight_message_notify_6_6(flt: Filter, connect: Connector) -> None:
    release = asyncio.Event()
    events: list[str] = []

    async def on_message(cookie: object, data: bytes, size: int) -> int:
        events.append("message start")
        await release.wait()
        events.append("message end")
        return S.STATUS_SUCCESS

    await flt.create_communication_port(
        "\\P",
        connect_notify=lambda cp, spc, ctx: S.STATUS_SUCCESS,
        disconnect_notify=lambda cookie: events.append("disconnect"),
        message_notify=on_message,
        max_connections=1,
    )
    user = await connect()
    inflight = user.port.user_send(b"q", 8)
    await until(lambda: events == ["message start"])
    unloading = asyncio.create_task(flt.unload())
    for _ in range(5):
        await asyncio.sleep(0)
    assert events == ["message start"]
    assert not unloading.done()
    release.set()
    await unloading
    assert events == ["message start", "message end", "disconnect"]
    assert await inflight == (S.STATUS_SUCCESS, b"")  # type: ignore[misc]


async def test_unload_with_raising_disconnect_notify_still_tears_down_6_6(
    flt: Filter, connect: Connector, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[object] = []

    def on_disconnect(cookie: object) -> None:
        seen.append(cookie)
        if cookie == "bad":
            raise ValueError("driver bug")

    cookies = iter(["bad", "good"])
    port = await flt.create_communication_port(
        "\\P",
        connect_notify=lambda cp, spc, ctx: (S.STATUS_SUCCESS, next(cookies)),
        disconnect_notify=on_disconnect,
        max_connections=2,
    )
    bad, good = await connect(), await connect()
    with caplog.at_level(logging.ERROR, logger="fltemu"):
        await flt.unload()
    assert sorted(seen) == ["bad", "good"]  # type: ignore[type-var]
    assert "DisconnectNotify" in caplog.text
    assert port.connection_count == 0
    assert bad.port.state is good.port.state is ClientPortState.DISCONNECTED


async def test_unload_concurrent_with_user_close_notifies_once_6_6(
    make_port: PortFactory, connect: Connector, rec: Recorder, flt: Filter
) -> None:
    await make_port()
    user = await connect()
    await asyncio.gather(user.port.user_close(), flt.unload(), user.port.user_close())
    assert rec.disconnects == [None]


async def test_unload_twice_is_harmless_6_6(
    make_port: PortFactory, connect: Connector, rec: Recorder, flt: Filter
) -> None:
    await make_port()
    await connect()
    await flt.unload()
    await flt.unload()
    assert rec.disconnects == [None]


# --- more ConnectNotify edges (§2.3) -----------------------------------------------------


@pytest.mark.parametrize(
    ("returned", "accepted"),
    [
        (S.STATUS_TIMEOUT, True),  # any non-negative NTSTATUS passes fltmgr's < 0 check
        (0x40000000, True),  # an information code
        (S.STATUS_BUFFER_OVERFLOW, False),  # a warning is negative as a signed NTSTATUS
        (-0x3FFFFFF3, False),  # STATUS_INVALID_PARAMETER spelled signed, as C would
    ],
)
async def test_connect_notify_status_sign_decides_2_3(
    make_port: PortFactory, connect: Connector, rec: Recorder, returned: int, accepted: bool
) -> None:
    port = await make_port(max_connections=1)
    rec.connect_status = returned
    if accepted:
        user = await connect()
        assert user.port.is_connected
        assert port.connection_count == 1
    else:
        await expect_status(NtStatus(returned), connect())
        assert port.connection_count == 0
    assert nt_success(returned) is accepted


async def test_sends_on_a_refused_connection_do_not_hang_2_3(
    flt: Filter, connect: Connector
) -> None:
    """A filter that sends on the ClientPort from ConnectNotify and then refuses it: the
    port is freed (§2.3), so the send ends with STATUS_PORT_DISCONNECTED, as do later ones."""
    kept: list[object] = []
    senders: list[asyncio.Task[object]] = []

    async def on_connect(client_port: object, spc: object, ctx: bytes) -> int:
        kept.append(client_port)
        senders.append(asyncio.create_task(flt.send_message(client_port, b"hi", reply_length=1)))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        return S.STATUS_ACCESS_DENIED

    port = await flt.create_communication_port(
        "\\P", connect_notify=on_connect, disconnect_notify=lambda c: None, max_connections=1
    )
    await expect_status(S.STATUS_ACCESS_DENIED, connect())
    async with asyncio.timeout(5):
        assert (await senders[0]).status == S.STATUS_PORT_DISCONNECTED  # type: ignore[attr-defined]
        later = await flt.send_message(kept[0], b"again")  # type: ignore[arg-type]
    assert later.status == S.STATUS_PORT_DISCONNECTED
    assert port.connection_count == 0


async def test_close_client_port_inside_connect_notify_2_6(flt: Filter, connect: Connector) -> None:
    disconnects: list[object] = []

    async def on_connect(client_port: object, spc: object, ctx: bytes) -> int:
        await flt.close_client_port(client_port)  # type: ignore[arg-type]
        return S.STATUS_SUCCESS

    port = await flt.create_communication_port(
        "\\P", connect_notify=on_connect, disconnect_notify=disconnects.append, max_connections=1
    )
    user = await connect()
    # Connected, but the kernel end is already closed: every user call fails.
    assert_user_calls_disconnected(user)
    assert port.connection_count == 0
    await user.port.user_close()
    assert disconnects == [None]
