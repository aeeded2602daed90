"""Kernel→user messages (§2.8, §3.3, §3.4, §6.1-§6.3) and MessageNotify (§2.5, §3.2)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from fltemu.errors import StatusError
from fltemu.kernel import Filter, FilterManager, SendMessageResult, timeout_from_large_integer
from fltemu.kernel.messaging import FILTER_HEADER_BYTES
from fltemu.kernel.ports import SendOutcome
from fltemu.status import NtStatus, nt_success
from tests.helpers import until

from .conftest import Connector, PortFactory, Recorder, User

S = NtStatus


@pytest.fixture
async def user(make_port: PortFactory, connect: Connector) -> User:
    await make_port()
    return await connect()


def start(flt: Filter, user: User, data: bytes, **kwargs: Any) -> asyncio.Task[SendMessageResult]:
    return asyncio.create_task(flt.send_message(user.port, data, **kwargs))


async def started(user: User, senders: int = 1) -> None:
    """Wait until ``senders`` FltSendMessage calls block waiting for a getter."""
    await until(lambda: user.port.queues.sender_count == senders)


async def settle() -> None:
    """Give every ready task a few turns (to show that something does *not* happen)."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- nothing is buffered (§1, §2.8) -------------------------------------------------------


async def test_send_waits_for_a_getter_1(flt: Filter, user: User) -> None:
    sender = start(flt, user, b"hello")
    await started(user)
    await settle()
    assert not sender.done()
    assert user.completions == []
    token = user.get(64)
    result = await sender
    assert result == SendMessageResult(S.STATUS_SUCCESS, None)
    [c] = user.completions
    assert (c.token, c.status, c.data) == (token, S.STATUS_SUCCESS, b"hello")


async def test_message_data_may_be_any_bytes_like_2_8(flt: Filter, user: User) -> None:
    for data in (bytearray(b"ba"), memoryview(b"mv")):
        user.get(64)
        assert (await flt.send_message(user.port, data)).status == S.STATUS_SUCCESS
    assert [c.data for c in user.completions] == [b"ba", b"mv"]
    assert all(type(c.data) is bytes for c in user.completions)


async def test_poll_without_getter_times_out_and_leaves_nothing_2_8(
    flt: Filter, user: User
) -> None:
    result = await flt.send_message(user.port, b"poll", timeout=0)
    assert result.status == S.STATUS_TIMEOUT
    assert result.reply is None
    assert nt_success(result.status)  # a success code: never test with == 0 alone
    # Nothing was buffered: a getter arriving later gets nothing.
    user.get(64)
    await settle()
    assert user.completions == []
    assert user.port.queues.getter_count == 1


async def test_poll_with_pending_getter_delivers_2_8(flt: Filter, user: User) -> None:
    token = user.get(64)
    result = await flt.send_message(user.port, b"now", timeout=0)
    assert result.status == S.STATUS_SUCCESS
    assert user.completions[0].token == token and user.completions[0].data == b"now"


async def test_poll_with_reply_times_out_after_delivery_2_8(flt: Filter, user: User) -> None:
    user.get(64)
    result = await flt.send_message(user.port, b"q", reply_length=4, timeout=0)
    # Delivered, but the reply wait is a poll too (the code, not the doc, §9.5).
    assert result.status == S.STATUS_TIMEOUT and result.reply is None
    [c] = user.completions
    assert c.status == S.STATUS_SUCCESS and c.message_id == 1
    assert user.port.user_reply(c.message_id, 0, b"late") == S.STATUS_FLT_NO_WAITER_FOR_REPLY


async def test_send_to_none_port_is_disconnected_2_6(flt: Filter) -> None:
    result = await flt.send_message(None, b"x", reply_length=1)
    assert result == SendMessageResult(S.STATUS_PORT_DISCONNECTED, None)


async def test_oversized_message_fails_with_insufficient_resources_6_5(
    make_port: PortFactory,
    connect: Connector,
    manager: FilterManager,
    flt: Filter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager.max_message_bytes = 100
    await make_port()
    u = await connect()
    u.get(4096)
    with caplog.at_level(logging.WARNING, logger="fltemu"):
        result = await flt.send_message(u.port, b"x" * 101)
    assert result.status == S.STATUS_INSUFFICIENT_RESOURCES
    assert "max-message-bytes" in caplog.text
    assert u.completions == []
    assert (await flt.send_message(u.port, b"x" * 100)).status == S.STATUS_SUCCESS
    assert u.completions[0].data == b"x" * 100


@pytest.mark.parametrize("kwargs", [{"timeout": -1}, {"reply_length": -1}])
async def test_negative_arguments_rejected(flt: Filter, user: User, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        await flt.send_message(user.port, b"x", **kwargs)
    assert user.port.queues.sender_count == 0


# --- getter selection (§6.1, §6.2, §9.3) ------------------------------------------------


async def test_getters_served_in_fifo_order_6_1(flt: Filter, user: User) -> None:
    tokens = [user.get(64) for _ in range(3)]
    for data in (b"one", b"two", b"three"):
        assert (await flt.send_message(user.port, data)).status == S.STATUS_SUCCESS
    assert [(c.token, c.data) for c in user.completions] == list(
        zip(tokens, [b"one", b"two", b"three"], strict=True)
    )


async def test_senders_served_in_fifo_order_6_2(flt: Filter, user: User) -> None:
    senders = []
    for i, data in enumerate((b"first", b"second", b"third")):
        senders.append(start(flt, user, data))
        await started(user, i + 1)
    for _ in range(3):
        user.get(64)
    await asyncio.gather(*senders)
    assert [c.data for c in user.completions] == [b"first", b"second", b"third"]


async def test_first_large_enough_getter_wins_6_1(flt: Filter, user: User) -> None:
    small = user.get(20)
    mid = user.get(116)
    big = user.get(300)
    await flt.send_message(user.port, b"m" * 100)  # needs exactly 116
    assert [(c.token, c.status) for c in user.completions] == [(mid, S.STATUS_SUCCESS)]
    await flt.send_message(user.port, b"n" * 150)  # needs 166: small is skipped again
    assert [(c.token, c.status) for c in user.completions][-1] == (big, S.STATUS_SUCCESS)
    assert user.port.queues.getter_count == 1  # small still waits
    assert all(c.token != small for c in user.completions)


async def test_no_getter_big_enough_bounces_the_oldest_6_1(flt: Filter, user: User) -> None:
    oldest = user.get(30)
    user.get(40)
    sender = start(flt, user, b"z" * 50, reply_length=2)
    await until(lambda: len(user.completions) == 1)
    [c] = user.completions
    assert (c.token, c.status) == (oldest, S.STATUS_BUFFER_TOO_SMALL)
    assert c.required_size == 50 + FILTER_HEADER_BYTES
    assert (c.data, c.message_id) == (b"", 0)  # nothing written
    # The message is not lost: the sender still waits (§3.3), the 40-byte getter is left alone.
    await settle()
    assert not sender.done()
    assert user.port.queues.getter_count == 1
    assert user.port.queues.sender_count == 1


@pytest.mark.parametrize("size", [1, 15, 16, 65])
async def test_bounce_reports_len_plus_16_3_3(flt: Filter, user: User, size: int) -> None:
    # Sizes 1..15 are accepted too (no header-size check) and bounced (§3.3).
    token = user.get(size)
    sender = start(flt, user, b"p" * 50)
    await until(lambda: len(user.completions) == 1)
    assert user.completions[0].token == token
    assert user.completions[0].status == S.STATUS_BUFFER_TOO_SMALL
    assert user.completions[0].required_size == 66
    # A buffer of exactly the required size takes it.
    exact = user.get(66)
    assert (await sender).status == S.STATUS_SUCCESS
    last = user.completions[-1]
    assert (last.token, last.status, last.data) == (exact, S.STATUS_SUCCESS, b"p" * 50)


async def test_bounced_message_goes_to_next_big_enough_getter_3_3(flt: Filter, user: User) -> None:
    sender = start(flt, user, b"B" * 100, reply_length=4)
    await started(user)
    user.get(10)  # bounced
    assert user.completions[-1].status == S.STATUS_BUFFER_TOO_SMALL
    also_small = user.get(50)  # still too small: stays pending, not bounced again
    await settle()
    assert len(user.completions) == 1
    big = user.get(116)
    await until(lambda: len(user.completions) == 2)
    c = user.completions[1]
    assert (c.token, c.status, c.data, c.message_id) == (big, S.STATUS_SUCCESS, b"B" * 100, 1)
    assert user.port.user_reply(1, 0, b"ok") == S.STATUS_SUCCESS
    assert (await sender) == SendMessageResult(S.STATUS_SUCCESS, b"ok")
    # The small getter is still pending and takes the next small message.
    assert (await flt.send_message(user.port, b"s")).status == S.STATUS_SUCCESS
    assert user.completions[-1].token == also_small


async def test_bounced_sender_does_not_block_smaller_messages_6_2(flt: Filter, user: User) -> None:
    big = start(flt, user, b"L" * 200)
    await started(user)
    user.get(32)  # bounced by the big message
    small_getter = user.get(32)  # waits: too small for the bounced sender
    small = await flt.send_message(user.port, b"tiny")
    assert small.status == S.STATUS_SUCCESS
    assert (user.completions[-1].token, user.completions[-1].data) == (small_getter, b"tiny")
    assert not big.done()
    user.get(216)
    assert (await big).status == S.STATUS_SUCCESS


# --- message ids, headers and replies (§2.8, §3.4, §4, §6.3) ----------------------------


async def test_message_ids_start_at_1_per_connection_6_3(
    make_port: PortFactory, connect: Connector, flt: Filter
) -> None:
    await make_port()
    a, b = await connect(), await connect()
    senders = []
    for user, count in ((a, 3), (b, 2)):
        for _ in range(count):
            user.get(64)
            senders.append(start(flt, user, b"m", reply_length=1))
    await until(lambda: len(a.completions) == 3 and len(b.completions) == 2)
    assert [c.message_id for c in a.completions] == [1, 2, 3]
    assert [c.message_id for c in b.completions] == [1, 2]
    # Replies match within the connection only: b's id 3 does not exist.
    assert b.port.user_reply(3, 0, b"") == S.STATUS_FLT_NO_WAITER_FOR_REPLY
    for user in (a, b):
        for c in user.completions:
            assert user.port.user_reply(c.message_id, 0, b"") == S.STATUS_SUCCESS
    for result in await asyncio.gather(*senders):
        assert result.status == S.STATUS_SUCCESS


async def test_no_reply_message_has_id_0_and_succeeds_at_delivery_2_8(
    flt: Filter, user: User
) -> None:
    user.get(64)
    result = await flt.send_message(user.port, b"fire and forget")
    assert result == SendMessageResult(S.STATUS_SUCCESS, None)
    c = user.completions[0]
    assert (c.message_id, c.reply_length) == (0, 0)
    assert user.port.queues.reply_waiter_count == 0
    # No-reply messages do not consume ids.
    user.get(64)
    sender = start(flt, user, b"q", reply_length=1)
    await until(lambda: len(user.completions) == 2)
    assert user.completions[1].message_id == 1
    assert user.port.user_reply(0, 0, b"x") == S.STATUS_FLT_NO_WAITER_FOR_REPLY
    assert user.port.user_reply(1, 0, b"x") == S.STATUS_SUCCESS
    assert (await sender).reply == b"x"


@pytest.mark.parametrize("reply_length", [0, 1, 4096])
async def test_header_reply_length_is_kernel_length_plus_16_4(
    flt: Filter, user: User, reply_length: int
) -> None:
    user.get(64)
    sender = start(flt, user, b"q", reply_length=reply_length)
    await until(lambda: len(user.completions) == 1)
    assert user.completions[0].reply_length == reply_length + 16
    assert user.port.user_reply(1, 0, b"") == S.STATUS_SUCCESS
    assert (await sender) == SendMessageResult(S.STATUS_SUCCESS, b"")


async def test_reply_data_and_status_pass_through_2_8(flt: Filter, user: User) -> None:
    user.get(64)
    sender = start(flt, user, b"q", reply_length=8)
    await until(lambda: len(user.completions) == 1)
    # The reply's Status is what FltSendMessage returns; shorter data is fine.
    assert user.port.user_reply(1, 0xC0000022, b"\x01\x02") == S.STATUS_SUCCESS
    result = await sender
    assert result.status == S.STATUS_ACCESS_DENIED
    assert int(result.status) == 0xC0000022
    assert result.reply == b"\x01\x02"


async def test_reply_status_in_signed_spelling_2_8(flt: Filter, user: User) -> None:
    user.get(64)
    sender = start(flt, user, b"q", reply_length=1)
    await until(lambda: len(user.completions) == 1)
    # FILTER_REPLY_HEADER.Status is a signed 32-bit field: -1073741790 is 0xC0000022.
    assert user.port.user_reply(1, -1073741790, b"") == S.STATUS_SUCCESS
    assert (await sender).status == S.STATUS_ACCESS_DENIED


async def test_unrepresentable_reply_status_keeps_the_waiter_3_4(flt: Filter, user: User) -> None:
    user.get(64)
    sender = start(flt, user, b"q", reply_length=1)
    await until(lambda: len(user.completions) == 1)
    with pytest.raises(ValueError):
        user.port.user_reply(1, 1 << 32, b"x")
    # The sender was not orphaned: a well-formed reply still reaches it.
    assert user.port.queues.reply_waiter_count == 1
    assert user.port.user_reply(1, 0, b"x") == S.STATUS_SUCCESS
    assert (await sender) == SendMessageResult(S.STATUS_SUCCESS, b"x")


async def test_reply_registered_before_delivery_6_2(flt: Filter, user: User) -> None:
    """A reply sent from inside complete_get (as fast as possible) finds its waiter."""
    replies: list[NtStatus] = []

    class ReplyingChannel:
        def complete_get(
            self,
            token: object,
            status: NtStatus,
            message_id: int = 0,
            reply_length: int = 0,
            data: bytes = b"",
            required_size: int = 0,
        ) -> None:
            replies.append(user.port.user_reply(message_id, 0, b"fast"))

        def kernel_disconnected(self) -> None:
            pass

    user.port.queues._channel = ReplyingChannel()
    user.port.user_get("t", 64)
    result = await flt.send_message(user.port, b"q", reply_length=4)
    assert replies == [S.STATUS_SUCCESS]
    assert result == SendMessageResult(S.STATUS_SUCCESS, b"fast")


async def test_reply_truncated_to_kernel_buffer_is_overflow_for_both_2_8(
    flt: Filter, user: User
) -> None:
    user.get(64)
    sender = start(flt, user, b"q", reply_length=3)
    await until(lambda: len(user.completions) == 1)
    assert user.port.user_reply(1, 0, b"abcdef") == S.STATUS_BUFFER_OVERFLOW
    result = await sender
    assert result.status == S.STATUS_BUFFER_OVERFLOW
    assert result.reply == b"abc"
    assert not nt_success(result.status)


async def test_reply_to_unknown_duplicate_or_zero_id_has_no_waiter_3_4(
    flt: Filter, user: User
) -> None:
    user.get(64)
    sender = start(flt, user, b"q", reply_length=1)
    await until(lambda: len(user.completions) == 1)
    assert user.port.user_reply(0, 0, b"") == S.STATUS_FLT_NO_WAITER_FOR_REPLY
    assert user.port.user_reply(99, 0, b"") == S.STATUS_FLT_NO_WAITER_FOR_REPLY
    assert user.port.user_reply(1, 0, b"1") == S.STATUS_SUCCESS
    assert user.port.user_reply(1, 0, b"2") == S.STATUS_FLT_NO_WAITER_FOR_REPLY
    assert (await sender).reply == b"1"


async def test_replies_in_any_order_6_3(flt: Filter, user: User) -> None:
    senders = []
    for i in range(3):
        user.get(64)
        senders.append(start(flt, user, bytes([i]), reply_length=1))
    await until(lambda: len(user.completions) == 3)
    for c in reversed(user.completions):
        assert user.port.user_reply(c.message_id, 0, c.data) == S.STATUS_SUCCESS
    results = await asyncio.gather(*senders)
    assert [r.reply for r in results] == [b"\x00", b"\x01", b"\x02"]


# --- timeouts (§2.8) --------------------------------------------------------------------


async def test_timeout_without_getter_2_8(flt: Filter, user: User) -> None:
    result = await flt.send_message(user.port, b"x", timeout=0.05)
    assert result == SendMessageResult(S.STATUS_TIMEOUT, None)
    assert nt_success(result.status)
    assert user.port.queues.sender_count == 0
    user.get(64)
    await settle()
    assert user.completions == []


async def test_reply_after_sender_timed_out_has_no_waiter_2_8(flt: Filter, user: User) -> None:
    user.get(64)
    result = await flt.send_message(user.port, b"q", reply_length=4, timeout=0.05)
    assert result == SendMessageResult(S.STATUS_TIMEOUT, None)
    assert user.completions[0].status == S.STATUS_SUCCESS  # it was delivered
    assert user.port.queues.reply_waiter_count == 0
    assert user.port.user_reply(1, 0, b"late") == S.STATUS_FLT_NO_WAITER_FOR_REPLY


async def test_one_timeout_covers_delivery_and_reply_2_8(flt: Filter, user: User) -> None:
    loop = asyncio.get_running_loop()
    before = loop.time()
    sender = start(flt, user, b"q", reply_length=4, timeout=30)
    await started(user)
    after = loop.time()
    [pending] = list(user.port.queues._senders)
    timer = pending.timer
    assert timer is not None
    deadline = timer.when()
    assert before + 30 <= deadline <= after + 30
    user.get(64)
    await until(lambda: len(user.completions) == 1)
    # Delivery did not restart the clock: the same deadline bounds the reply wait.
    assert pending.timer is timer and timer.when() == deadline and not timer.cancelled()
    assert user.port.user_reply(1, 0, b"r") == S.STATUS_SUCCESS
    assert (await sender).reply == b"r"
    assert timer.cancelled()


# --- cancellation (§2.8) ----------------------------------------------------------------


async def test_cancel_undelivered_send_withdraws_message_5a(flt: Filter, user: User) -> None:
    sender = start(flt, user, b"gone", reply_length=4)
    await started(user)
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    assert user.port.queues.sender_count == 0
    user.get(64)
    await settle()
    assert user.completions == []


async def test_cancel_then_immediate_getter_gets_nothing_5a(flt: Filter, user: User) -> None:
    """A getter that arrives right after cancel() (before the task runs again) gets nothing."""
    sender = start(flt, user, b"gone")
    await started(user)
    sender.cancel()
    token = user.get(64)
    with pytest.raises(asyncio.CancelledError):
        await sender
    await settle()
    assert user.completions == []
    assert user.port.queues.getter_count == 1
    # The getter is intact and takes the next message.
    assert (await flt.send_message(user.port, b"next")).status == S.STATUS_SUCCESS
    assert (user.completions[0].token, user.completions[0].data) == (token, b"next")


async def test_cancel_delivered_send_withdraws_reply_waiter_5a(flt: Filter, user: User) -> None:
    user.get(64)
    sender = start(flt, user, b"q", reply_length=4)
    await until(lambda: user.port.queues.reply_waiter_count == 1)
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    assert user.port.queues.reply_waiter_count == 0
    assert user.port.user_reply(1, 0, b"late") == S.STATUS_FLT_NO_WAITER_FOR_REPLY


async def test_cancel_then_immediate_reply_has_no_waiter_5a(flt: Filter, user: User) -> None:
    user.get(64)
    sender = start(flt, user, b"q", reply_length=4)
    await until(lambda: user.port.queues.reply_waiter_count == 1)
    sender.cancel()
    assert user.port.user_reply(1, 0, b"late") == S.STATUS_FLT_NO_WAITER_FOR_REPLY
    with pytest.raises(asyncio.CancelledError):
        await sender


async def test_cancel_bounced_send_withdraws_it_5a(flt: Filter, user: User) -> None:
    sender = start(flt, user, b"x" * 100, timeout=30)
    await started(user)
    user.get(8)  # bounce
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    user.get(4096)
    await settle()
    assert [c.status for c in user.completions] == [S.STATUS_BUFFER_TOO_SMALL]


# --- CancelIoEx on a getter (§3.5, §6.1) ---------------------------------------------------


async def test_user_cancel_get_completes_with_cancelled_3_5(flt: Filter, user: User) -> None:
    first = user.get(64)
    second = user.get(64)
    user.port.user_cancel_get(first)
    assert [(c.token, c.status) for c in user.completions] == [(first, S.STATUS_CANCELLED)]
    # A cancelled getter gets no message; the next one does.
    assert (await flt.send_message(user.port, b"m")).status == S.STATUS_SUCCESS
    assert (user.completions[1].token, user.completions[1].data) == (second, b"m")
    # Cancelling a completed or unknown getter does nothing.
    user.port.user_cancel_get(first)
    user.port.user_cancel_get(second)
    user.port.user_cancel_get("never issued")
    assert len(user.completions) == 2


async def test_user_get_rejects_empty_buffer_3_3(user: User) -> None:
    assert user.port.user_get("t", 0) == S.STATUS_INVALID_PARAMETER
    assert user.port.queues.getter_count == 0


# --- timeout_from_large_integer (§2.8) ---------------------------------------------------


def test_timeout_from_large_integer_2_8() -> None:
    now = time.time()
    assert timeout_from_large_integer(None, now) is None  # NULL: wait forever
    assert timeout_from_large_integer(0, now) == 0.0  # poll
    assert timeout_from_large_integer(-10_000_000, now) == 1.0  # relative: 1 s
    assert timeout_from_large_integer(-1, now) == pytest.approx(1e-7)
    assert timeout_from_large_integer(-25_000_000, 123.0) == 2.5
    # Positive: absolute system time in 100 ns since 1601-01-01 UTC.
    epoch_1601 = 11_644_473_600
    two_seconds_ahead = int((now + epoch_1601 + 2) * 10_000_000)
    assert timeout_from_large_integer(two_seconds_ahead, now) == pytest.approx(2.0, abs=1e-3)
    unix_epoch = epoch_1601 * 10_000_000
    assert timeout_from_large_integer(unix_epoch + 10_000_000 * 100, 40.0) == pytest.approx(60.0)
    # A deadline in the past is already expired: a poll.
    assert timeout_from_large_integer(unix_epoch, now) == 0.0
    assert timeout_from_large_integer(1, now) == 0.0


# --- MessageNotify / FilterSendMessage (§2.5, §3.2) ---------------------------------------


async def outcome(result: SendOutcome | asyncio.Task[SendOutcome]) -> tuple[NtStatus, bytes]:
    """A user_send outcome without sections, awaiting the Task a coroutine MessageNotify
    runs in."""
    if isinstance(result, asyncio.Task):
        result = await result
    assert len(result) == 2
    status, out = result[0], result[1]
    assert type(out) is bytes
    return status, out


def make_async(rec: Recorder) -> Any:
    async def message_notify(cookie: object, data: bytes, size: int) -> object:
        await asyncio.sleep(0)
        return rec.message_notify(cookie, data, size)

    return message_notify


@pytest.fixture(params=["sync", "async"])
async def mn_user(
    request: pytest.FixtureRequest, make_port: PortFactory, connect: Connector, rec: Recorder
) -> User:
    """A connection whose MessageNotify is ``rec.message_notify``, plain or as a coroutine."""
    notify = rec.message_notify if request.param == "sync" else make_async(rec)
    await make_port("\\MN", message_notify=notify)
    return await connect("\\MN")


async def test_message_notify_sync_runs_inline_2_5(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    rec.message = (S.STATUS_SUCCESS, b"out")
    rec.cookie = "ck"
    await make_port()
    user = await connect()
    assert user.port.user_send(b"in", 10) == (S.STATUS_SUCCESS, b"out")
    assert rec.messages == [("ck", b"in", 10)]


async def test_message_notify_async_runs_in_task_2_5(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    rec.message = (S.STATUS_SUCCESS, bytearray(b"out"))
    await make_port(message_notify=make_async(rec))
    user = await connect()
    result = user.port.user_send(b"in", 10)
    assert isinstance(result, asyncio.Task)
    assert await outcome(result) == (S.STATUS_SUCCESS, b"out")
    assert rec.messages == [(None, b"in", 10)]


async def test_plain_function_returning_awaitable_2_5(
    make_port: PortFactory, connect: Connector
) -> None:
    async def later() -> tuple[int, bytes]:
        return S.STATUS_SUCCESS, b"later"

    await make_port(message_notify=lambda cookie, data, size: later())
    user = await connect()
    assert await outcome(user.port.user_send(b"in", 10)) == (S.STATUS_SUCCESS, b"later")


async def test_message_notify_calls_run_concurrently_2_5(
    make_port: PortFactory, connect: Connector
) -> None:
    inside: list[bytes] = []
    release = asyncio.Event()

    async def on_message(cookie: object, data: bytes, size: int) -> tuple[int, bytes]:
        inside.append(data)
        await release.wait()
        return S.STATUS_SUCCESS, data

    await make_port(message_notify=on_message)
    user = await connect()
    a, b = user.port.user_send(b"a", 1), user.port.user_send(b"b", 1)
    await until(lambda: len(inside) == 2)  # both inside at once: no serialization
    release.set()
    assert await outcome(a) == (S.STATUS_SUCCESS, b"a")
    assert await outcome(b) == (S.STATUS_SUCCESS, b"b")


async def test_bare_status_return_means_no_output_2_5(mn_user: User, rec: Recorder) -> None:
    rec.message = S.STATUS_SUCCESS
    assert await outcome(mn_user.port.user_send(b"in", 10)) == (S.STATUS_SUCCESS, b"")
    rec.message = (S.STATUS_SUCCESS, None)
    assert await outcome(mn_user.port.user_send(b"in", 10)) == (S.STATUS_SUCCESS, b"")


async def test_empty_input_is_invalid_parameter_without_callback_2_5(
    mn_user: User, rec: Recorder
) -> None:
    assert await outcome(mn_user.port.user_send(b"", 10)) == (S.STATUS_INVALID_PARAMETER, b"")
    assert rec.messages == []


async def test_no_message_notify_is_invalid_device_request_2_5(
    make_port: PortFactory, connect: Connector
) -> None:
    await make_port(message_notify=None)
    user = await connect()
    assert user.port.user_send(b"x", 10) == (S.STATUS_INVALID_DEVICE_REQUEST, b"")


async def test_buffer_too_small_rewritten_2_5(mn_user: User, rec: Recorder) -> None:
    rec.message = S.STATUS_BUFFER_TOO_SMALL
    status, out = await outcome(mn_user.port.user_send(b"in", 4))
    assert status == S.STATUS_FLT_BUFFER_TOO_SMALL
    assert int(status) == 0x801C0001
    assert out == b""


@pytest.mark.parametrize(
    "status", [S.STATUS_ACCESS_DENIED, S.STATUS_INVALID_PARAMETER, S.STATUS_NOT_SUPPORTED]
)
async def test_error_status_returns_no_output_3_2(
    mn_user: User, rec: Recorder, status: NtStatus
) -> None:
    rec.message = (status, b"ignored")
    assert await outcome(mn_user.port.user_send(b"in", 64)) == (status, b"")


@pytest.mark.parametrize(
    "status",
    [S.STATUS_NO_MORE_ENTRIES, S.STATUS_BUFFER_OVERFLOW, S.STATUS_TIMEOUT],
)
async def test_warning_and_success_codes_keep_output_3_2(
    mn_user: User, rec: Recorder, status: NtStatus
) -> None:
    rec.message = (status, b"partial")
    assert await outcome(mn_user.port.user_send(b"in", 64)) == (status, b"partial")


async def test_output_longer_than_buffer_is_cut_and_logged_9_9(
    mn_user: User, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    rec.message = (S.STATUS_SUCCESS, b"0123456789")
    with caplog.at_level(logging.WARNING, logger="fltemu"):
        assert await outcome(mn_user.port.user_send(b"in", 4)) == (S.STATUS_SUCCESS, b"0123")
    assert "'\\MN'" in caplog.text and "10 bytes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fltemu"):
        assert await outcome(mn_user.port.user_send(b"in", 0)) == (S.STATUS_SUCCESS, b"")
        assert await outcome(mn_user.port.user_send(b"in", 10)) == (
            S.STATUS_SUCCESS,
            b"0123456789",
        )
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


async def test_status_error_raised_gives_that_status_5a(mn_user: User, rec: Recorder) -> None:
    def fail(cookie: object, data: bytes, size: int) -> object:
        raise StatusError(S.STATUS_DATATYPE_MISALIGNMENT)

    rec.message = fail
    assert await outcome(mn_user.port.user_send(b"in", 4)) == (
        S.STATUS_DATATYPE_MISALIGNMENT,
        b"",
    )


async def test_other_exception_is_unsuccessful_and_logged_5a(
    mn_user: User, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(cookie: object, data: bytes, size: int) -> object:
        raise KeyError("driver bug")

    rec.message = fail
    with caplog.at_level(logging.ERROR, logger="fltemu"):
        assert await outcome(mn_user.port.user_send(b"in", 4)) == (S.STATUS_UNSUCCESSFUL, b"")
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "'\\MN'" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    # The connection is unharmed.
    rec.message = (S.STATUS_SUCCESS, b"ok")
    assert await outcome(mn_user.port.user_send(b"in", 4)) == (S.STATUS_SUCCESS, b"ok")


async def test_status_pending_is_unsuccessful_2_5(
    mn_user: User, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # Documented deviation: Windows would leave the client hanging forever; fltemu never hangs.
    rec.message = (S.STATUS_PENDING, b"x")
    with caplog.at_level(logging.ERROR, logger="fltemu"):
        assert await outcome(mn_user.port.user_send(b"in", 4)) == (S.STATUS_UNSUCCESSFUL, b"")
    assert "STATUS_PENDING" in caplog.text


@pytest.mark.parametrize("bad", ["nope", (S.STATUS_SUCCESS, 5), (1, 2, 3), None])
async def test_malformed_result_is_unsuccessful_2_5(
    mn_user: User, rec: Recorder, bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    rec.message = lambda cookie, data, size: bad
    with caplog.at_level(logging.ERROR, logger="fltemu"):
        assert await outcome(mn_user.port.user_send(b"in", 4)) == (S.STATUS_UNSUCCESSFUL, b"")
    assert "MessageNotify" in caplog.text


async def test_user_send_counts_calls(mn_user: User, rec: Recorder) -> None:
    await outcome(mn_user.port.user_send(b"a", 1))
    await outcome(mn_user.port.user_send(b"", 1))
    assert mn_user.port.sends_from_user == 1
    assert len(rec.messages) == 1


@pytest.mark.parametrize("reply_length", [-1, 0xFFFFFFFF - 15])
async def test_reply_length_must_fit_the_header_ulong_4(reply_length: int) -> None:
    from fltemu.kernel import FilterManager

    flt = FilterManager().register_filter("f")
    with pytest.raises(ValueError, match="reply_length"):
        await flt.send_message(None, b"x", reply_length=reply_length)
