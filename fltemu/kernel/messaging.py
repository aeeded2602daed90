"""Kernel→user messages of one connection: the getter FIFO, blocked senders, reply waiters.

This is FltSendMessage / FilterGetMessage / FilterReplyMessage as fltmgr does them
(semantics §2.8, §3.3, §3.4, §6.1-§6.3). Nothing is buffered: a message exists only while its
sender waits, and it is handed straight to a pending getter.
Not here: connection lifecycle and callbacks (``ports``), the socket (``fltemu.daemon``).

Theory of operation
-------------------
* Getters (pending FilterGetMessage requests) wait in a FIFO, each with its buffer size and
  the token the channel gave it. Senders (blocked FltSendMessage calls) wait in a FIFO too.
* Whenever a getter or a sender arrives, ``_pump`` matches them: a sender takes the *first
  getter whose buffer is large enough*, else the *oldest* getter, which it bounces with
  STATUS_BUFFER_TOO_SMALL and the size it needs (§6.1); a bounced sender then waits for a
  getter that can hold its message and has no priority over other senders (§6.2, §9.3).
* A message that wants a reply gets the next message id of the connection (first 1, §6.3)
  and its reply waiter is registered *before* the getter is completed, so no reply can
  arrive before its waiter exists (§6.2). A message without reply carries id 0 and its
  sender returns STATUS_SUCCESS at delivery.
* One timer per sender bounds delivery and reply together (§2.8); on expiry the sender is
  withdrawn from wherever it waits and returns STATUS_TIMEOUT (a success code). A reply that
  comes later finds no waiter: ERROR_FLT_NO_WAITER_FOR_REPLY for the replier (§3.4).
* ``fail_all`` (disconnect) completes every getter and every sender with
  STATUS_PORT_DISCONNECTED and refuses newcomers with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from .._limits import FILTER_HEADER_BYTES
from ..status import NtStatus
from .channel import DETACHED, Channel

__all__ = [
    "FILTER_HEADER_BYTES",
    "MessageQueues",
    "PendingSend",
    "SendMessageResult",
    "timeout_from_large_integer",
]


_SUCCESS: Final = NtStatus.STATUS_SUCCESS
_TIMEOUT: Final = NtStatus.STATUS_TIMEOUT
_DISCONNECTED: Final = NtStatus.STATUS_PORT_DISCONNECTED
_TOO_SMALL: Final = NtStatus.STATUS_BUFFER_TOO_SMALL
_OVERFLOW: Final = NtStatus.STATUS_BUFFER_OVERFLOW
_NO_WAITER: Final = NtStatus.STATUS_FLT_NO_WAITER_FOR_REPLY
#: The enum's own value map: a lookup costs a tenth of NtStatus(value).
_STATUS_MEMBERS: Final = cast("dict[object, NtStatus]", NtStatus._value2member_map_)


@dataclass(frozen=True, slots=True)
class SendMessageResult:
    """What FltSendMessage returned (an immutable value; compares by its fields).

    Attributes:
        status: the NTSTATUS. STATUS_TIMEOUT is a success code: test with ``nt_success`` and
            compare with the statuses you expect, never with ``== 0`` alone.
        reply: the reply bytes the kernel buffer received (at most ``reply_length``), or
            ``None`` when no reply was asked for or none came.
    """

    status: NtStatus
    reply: bytes | None = None


_HUNDRED_NS_PER_SECOND: Final = 10_000_000
_EPOCH_1601_TO_1970_SECONDS: Final = 11_644_473_600


def timeout_from_large_integer(value: int | None, now_unix: float) -> float | None:
    """Convert a Windows ``PLARGE_INTEGER Timeout`` into fltemu's seconds (§2.8).

    Windows counts in 100-ns units: ``None`` (a NULL pointer) waits forever, a negative value is
    relative (``-10_000_000`` is one second from now), a positive value is an absolute system
    time since 1601-01-01 UTC, and 0 means "already expired", a poll. fltemu's ``timeout``
    arguments are ``None`` (forever) or seconds from now (0 polls); this is the one place the
    two meet.

    >>> timeout_from_large_integer(-10_000_000, 0.0)
    1.0
    >>> timeout_from_large_integer(0, 0.0)
    0.0
    """
    if value is None:
        return None
    if value < 0:
        return -value / _HUNDRED_NS_PER_SECOND
    if value == 0:
        return 0.0
    deadline_unix = value / _HUNDRED_NS_PER_SECOND - _EPOCH_1601_TO_1970_SECONDS
    return max(0.0, deadline_unix - now_unix)


class PendingSend:
    """One blocked FltSendMessage: its message, its reply buffer size and its outcome."""

    __slots__ = (
        "bounced",
        "data",
        "future",
        "message_id",
        "need",
        "on_deliver",
        "reply_length",
        "timer",
    )

    def __init__(
        self, data: bytes, reply_length: int | None, future: asyncio.Future[SendMessageResult]
    ) -> None:
        self.data = data
        self.need = len(data) + FILTER_HEADER_BYTES
        self.reply_length = reply_length
        self.future = future
        self.bounced = False
        self.message_id = 0
        self.timer: asyncio.TimerHandle | None = None
        #: Called when a getter takes the message, its id set (the tracer's "deliver").
        self.on_deliver: Callable[[PendingSend], None] | None = None

    def resolve(self, status: NtStatus, reply: bytes | None = None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.future.done():
            self.future.set_result(SendMessageResult(status, reply))


class MessageQueues:
    """The getter FIFO, the sender FIFO and the reply waiters of one connection.

    Args:
        channel: where getter completions go.
        on_event: optional observer called with a short event name ("deliver", "bounce",
            "timeout"); never on the hot path's critical decisions. The counts of delivered
            and timed-out messages are kept here without it.
    """

    __slots__ = (
        "_channel",
        "_getters",
        "_next_message_id",
        "_replies",
        "_senders",
        "delivered",
        "is_failed",
        "on_event",
        "timed_out",
    )

    def __init__(self, channel: Channel, on_event: Callable[[str], None] | None = None) -> None:
        self._channel = channel
        # token -> buffer size, in arrival order (dicts keep insertion order).
        self._getters: dict[object, int] = {}
        # Blocked senders in arrival order; the value is unused.
        self._senders: dict[PendingSend, None] = {}
        self._replies: dict[int, PendingSend] = {}
        self._next_message_id = 1
        self.is_failed = False
        self.on_event = on_event
        #: Messages handed to a getter, and senders that timed out.
        self.delivered = 0
        self.timed_out = 0

    def __repr__(self) -> str:
        return (
            f"<MessageQueues getters={len(self._getters)} senders={len(self._senders)} "
            f"awaiting_reply={len(self._replies)}>"
        )

    @property
    def getter_count(self) -> int:
        """Pending FilterGetMessage requests."""
        return len(self._getters)

    @property
    def sender_count(self) -> int:
        """FltSendMessage calls waiting for a getter."""
        return len(self._senders)

    @property
    def reply_waiter_count(self) -> int:
        """Delivered messages whose sender waits for a reply."""
        return len(self._replies)

    # --- the user side ----------------------------------------------------------------------

    def add_getter(self, token: object, buffer_size: int) -> NtStatus | None:
        """FilterGetMessage: queue a getter; ``None`` means pending (completion via the channel).

        Returns:
            STATUS_PORT_DISCONNECTED at once when the connection is gone (§3.3), else
            ``None``; the getter may already have been completed through the channel.
        """
        if self.is_failed:
            return _DISCONNECTED
        self._getters[token] = buffer_size
        if self._senders:
            self._pump()
        return None

    def cancel_getter(self, token: object) -> bool:
        """CancelIoEx for one getter: complete it with STATUS_CANCELLED if still pending."""
        if self._getters.pop(token, None) is None:
            return False
        self._channel.complete_get(token, NtStatus.STATUS_CANCELLED)
        return True

    def reply(self, message_id: int, status: int, data: bytes) -> NtStatus:
        """FilterReplyMessage: hand a reply to the sender waiting for ``message_id`` (§3.4).

        Returns:
            STATUS_SUCCESS; STATUS_BUFFER_OVERFLOW when the data was cut to the kernel's reply
            buffer (the sender gets the same status); STATUS_FLT_NO_WAITER_FOR_REPLY when
            nobody waits for that id; STATUS_PORT_DISCONNECTED once the connection is gone.
        """
        waiter = self._replies.get(message_id)
        if waiter is None or waiter.future.done():
            # A done future here was cancelled: its task has not run ``withdraw`` yet, but the
            # sender is gone all the same (§2.8: a later reply finds no waiter).
            return _DISCONNECTED if self.is_failed else _NO_WAITER
        # Converted before the waiter is unlinked: a value that is no 32-bit NTSTATUS raises
        # ValueError and leaves the sender waiting for a valid reply, not orphaned forever.
        reply_status = _STATUS_MEMBERS.get(status)
        if reply_status is None:
            reply_status = NtStatus(status)
        del self._replies[message_id]
        limit = waiter.reply_length or 0
        if len(data) > limit:
            waiter.resolve(_OVERFLOW, data[:limit])
            return _OVERFLOW
        waiter.resolve(reply_status, data)
        return _SUCCESS

    # --- the kernel side --------------------------------------------------------------------

    def start_send(
        self,
        data: bytes,
        reply_length: int | None,
        timeout: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> PendingSend:
        """Begin one FltSendMessage; await ``pending.future`` for its result.

        Delivery to a getter that is already waiting happens here, synchronously.
        """
        pending = PendingSend(data, reply_length, loop.create_future())
        if self.is_failed:
            pending.resolve(_DISCONNECTED)
            return pending
        getters = self._getters
        if getters and not self._senders:
            # Nobody waits before this sender: it takes the first getter large enough, as
            # _pump would, without queueing.
            need = pending.need
            for token, size in getters.items():
                if size >= need:
                    del getters[token]
                    self._deliver(token, pending)
                    break
        if not pending.message_id and not pending.future.done():
            self._senders[pending] = None
            self._pump()
        if pending.future.done():
            return pending
        if timeout is not None:
            if timeout <= 0:
                # A zero timeout polls both phases (§2.8, following the code, not the doc):
                # a message that found no getter, or that now waits for a reply, times out.
                self._expire(pending)
            else:
                pending.timer = loop.call_later(timeout, self._expire, pending)
        return pending

    def withdraw(self, pending: PendingSend) -> None:
        """Take a sender out of every queue (its task was cancelled)."""
        self._senders.pop(pending, None)
        if pending.message_id and self._replies.get(pending.message_id) is pending:
            del self._replies[pending.message_id]
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None

    def detach(self) -> None:
        """The user half is gone for good: drop the channel and the observer (and so the
        cycles through them: the session, the connection's bound method)."""
        self._channel = DETACHED
        self.on_event = None

    def fail_all(self) -> None:
        """Disconnect: every sender and getter gets STATUS_PORT_DISCONNECTED, newcomers too."""
        self.is_failed = True
        senders = list(self._senders)
        self._senders.clear()
        waiters = list(self._replies.values())
        self._replies.clear()
        getters = list(self._getters)
        self._getters.clear()
        for pending in senders + waiters:
            pending.resolve(_DISCONNECTED)
        for token in getters:
            self._channel.complete_get(token, _DISCONNECTED)

    # --- matching ---------------------------------------------------------------------------

    def _expire(self, pending: PendingSend) -> None:
        pending.timer = None
        self.withdraw(pending)
        self.timed_out += 1
        if self.on_event is not None:
            self.on_event("timeout")
        pending.resolve(_TIMEOUT)

    def _pump(self) -> None:
        getters = self._getters
        senders = self._senders
        while getters and senders:
            for pending in senders:
                if pending.future.done():
                    continue  # cancelled, not yet withdrawn by its task: never deliver it
                if not pending.bounced or self._has_getter_for(pending.need):
                    break
            else:
                return  # only bounced senders, and no getter big enough for any of them
            token, size = self._take_getter(pending.need)
            if size < pending.need:
                self._bounce(token, pending)
                continue
            del senders[pending]
            self._deliver(token, pending)

    def _has_getter_for(self, need: int) -> bool:
        for size in self._getters.values():
            if size >= need:
                return True
        return False

    def _take_getter(self, need: int) -> tuple[object, int]:
        # First getter large enough, else the oldest (§6.1).
        getters = self._getters
        for token, size in getters.items():
            if size >= need:
                del getters[token]
                return token, size
        token = next(iter(getters))
        return token, getters.pop(token)

    def _bounce(self, token: object, pending: PendingSend) -> None:
        # fltmgr keeps the smallest need of bounced senders (MinWaiterLen) to decide whom a
        # new getter wakes; matching each bounced sender against its own need is the same.
        pending.bounced = True
        if self.on_event is not None:
            self.on_event("bounce")
        self._channel.complete_get(token, _TOO_SMALL, required_size=pending.need)

    def _deliver(self, token: object, pending: PendingSend) -> None:
        if pending.reply_length is None:
            if pending.on_deliver is not None:
                pending.on_deliver(pending)
            self._channel.complete_get(token, _SUCCESS, 0, 0, pending.data)
            pending.resolve(_SUCCESS)
        else:
            message_id = self._next_message_id
            self._next_message_id = message_id + 1
            pending.message_id = message_id
            self._replies[message_id] = pending  # registered before the getter completes
            if pending.on_deliver is not None:
                pending.on_deliver(pending)
            self._channel.complete_get(
                token,
                _SUCCESS,
                message_id,
                pending.reply_length + FILTER_HEADER_BYTES,
                pending.data,
            )
        self.delivered += 1
        if self.on_event is not None:
            self.on_event("deliver")
