"""The I/O-free client core against a hand-driven KERNEL wire end: routing, no loss."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

import fltuser
from fltemu.status import NtStatus
from fltemu.wire import (
    PROTOCOL_VERSION,
    ConnectResult,
    GetCancel,
    GetRequest,
    GetResult,
    Goodbye,
    Role,
    SendRequest,
    SendResult,
    WireConnection,
)
from fltuser._base import Message, PortCore, PortState

from ..helpers import drain


class Waiter:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class Kernel:
    """The daemon's end, driven by hand."""

    def __init__(self, core: PortCore) -> None:
        self.core = core
        self.wire = WireConnection(Role.KERNEL)
        self.wire.receive_data(core.connect_request(Waiter("connect")))
        drain(self.wire)
        done, _ = core.receive(self.wire.send(ConnectResult(PROTOCOL_VERSION, 0, 1 << 20)))
        assert core.state is PortState.CONNECTED and done[0][2] is None

    def requests(self, data: bytes | bytearray) -> list[Any]:
        self.wire.receive_data(data)
        return drain(self.wire)

    def answer(self, message: object) -> tuple[list[Any], list[Any]]:
        done, out = self.core.receive(self.wire.send(message))
        return done, self.requests(out) if out else []


@pytest.fixture
def kernel() -> Kernel:
    return Kernel(PortCore("\\P", b"", 0, "/nowhere"))


def get(kernel: Kernel, size: int, name: str) -> tuple[int, Waiter]:
    waiter = Waiter(name)
    rid, frame = kernel.core.get_request(size, waiter)
    assert kernel.requests(frame) == [GetRequest(rid, size)]
    return rid, waiter


def test_message_for_an_abandoned_get_goes_to_the_next_live_get_5a() -> None:
    k = Kernel(PortCore("\\P", b"", 0, "/nowhere"))
    rid1, _ = get(k, 64, "first")
    rid2, second = get(k, 64, "second")
    assert k.requests(k.core.abandon_get(rid1) or b"") == [GetCancel(rid1)]
    # The message was already on its way to the first getter.
    done, sent = k.answer(GetResult(rid1, 0, 5, 17, b"hello"))
    assert done == [(second, Message(5, 17, b"hello"), None)]
    # The second getter's own request in the daemon is withdrawn in turn.
    assert sent == [GetCancel(rid2)]
    done, sent = k.answer(GetResult(rid2, int(NtStatus.STATUS_CANCELLED)))
    assert done == [] and sent == []


def test_message_for_an_abandoned_get_is_stashed_for_the_next_reader(kernel: Kernel) -> None:
    rid, _ = get(kernel, 64, "gone")
    kernel.core.abandon_get(rid)
    done, sent = kernel.answer(GetResult(rid, 0, 0, 0, b"note"))
    assert done == [] and sent == []
    with pytest.raises(fltuser.InsufficientBufferError) as exc:
        kernel.core.take_stashed(8)  # too small: kept (§3.3)
    assert exc.value.required_size == 20
    assert kernel.core.take_stashed(20) == Message(0, 0, b"note")
    assert kernel.core.take_stashed(20) is None


def test_orphan_too_big_for_every_live_get_bounces_the_oldest(kernel: Kernel) -> None:
    rid1, _ = get(kernel, 1024, "gone")
    rid2, small = get(kernel, 16, "small")
    kernel.core.abandon_get(rid1)
    done, sent = kernel.answer(GetResult(rid1, 0, 1, 17, b"x" * 100))
    assert len(done) == 1 and done[0][0] is small
    assert isinstance(done[0][2], fltuser.InsufficientBufferError)
    assert done[0][2].required_size == 116
    assert sent == [GetCancel(rid2)]
    assert kernel.core.take_stashed(116) == Message(1, 17, b"x" * 100)


def test_bounce_for_an_abandoned_get_is_dropped(kernel: Kernel) -> None:
    rid, _ = get(kernel, 8, "gone")
    kernel.core.abandon_get(rid)
    done, sent = kernel.answer(
        GetResult(rid, int(NtStatus.STATUS_BUFFER_TOO_SMALL), required_size=40)
    )
    assert done == [] and sent == []
    assert kernel.core.take_stashed(64) is None


def test_disconnected_answer_marks_the_handle_disconnected_6_6(kernel: Kernel) -> None:
    rid, waiter = get(kernel, 64, "g")
    done, _ = kernel.answer(GetResult(rid, int(NtStatus.STATUS_PORT_DISCONNECTED)))
    assert done[0][0] is waiter and done[0][2].hresult == 0x80070006
    assert kernel.core.state is PortState.DISCONNECTED
    with pytest.raises(fltuser.InvalidHandleError):
        kernel.core.send_request(b"x", 0, Waiter("s"))


def test_goodbye_fails_everything_outstanding(kernel: Kernel) -> None:
    _, g = get(kernel, 64, "g")
    s = Waiter("s")
    kernel.requests(kernel.core.send_request(b"x", 4, s))
    done, _ = kernel.answer(Goodbye(int(NtStatus.STATUS_PORT_DISCONNECTED), "shutting down"))
    assert {d[0] for d in done} == {g, s}
    assert all(d[2].hresult == 0x80070006 and "shutting down" in str(d[2]) for d in done)
    assert kernel.core.state is PortState.DISCONNECTED


def test_close_fails_outstanding_with_closed_resource(kernel: Kernel) -> None:
    _, g = get(kernel, 64, "g")
    done = kernel.core.close()
    assert done[0][0] is g and isinstance(done[0][2], fltuser.PortClosedError)
    with pytest.raises(fltuser.ClosedResourceError):
        kernel.core.get_request(64, Waiter("late"))


def test_send_result_warning_carries_its_data(kernel: Kernel) -> None:
    s = Waiter("s")
    frame = kernel.core.send_request(b"cmd", 16, s)
    (request,) = kernel.requests(frame)
    done, _ = kernel.answer(SendResult(request.rid, int(NtStatus.STATUS_BUFFER_OVERFLOW), b"part"))
    assert done[0][2].hresult == 0x800700EA and done[0][2].data == b"part"


def test_daemon_breaking_the_protocol_ends_the_handle(kernel: Kernel) -> None:
    s = Waiter("s")
    kernel.requests(kernel.core.send_request(b"x", 0, s))
    done, _ = kernel.core.receive(b"\x03\x00\x00\x00\xc1\xc1\xc1")
    error = done[0][2]
    assert done[0][0] is s and isinstance(error, fltuser.HResultError)
    assert error.hresult == 0x80070006 and "protocol" in str(error)
    assert kernel.core.state is PortState.DISCONNECTED


@pytest.mark.parametrize(
    "call",
    [
        lambda core: core.send_request(b"x", 2**32, Waiter("s")),
        lambda core: core.send_request(b"x", -1, Waiter("s")),
        lambda core: core.take_stashed(2**32),
        lambda core: core.reply_request(1, 2**32, b"", Waiter("r")),
        lambda core: core.reply_request(1, -(2**31) - 1, b"", Waiter("r")),
        lambda core: core.reply_request(-1, 0, b"", Waiter("r")),
    ],
)
def test_out_of_range_arguments_are_invalidarg_locally(kernel: Kernel, call: Any) -> None:
    with pytest.raises(fltuser.InvalidArgumentError):
        call(kernel.core)
    assert kernel.core.state is PortState.CONNECTED  # nothing reached the daemon


@pytest.mark.parametrize(
    "call",
    [
        lambda core, out: core.send_request(b"x", 16.0, Waiter("s"), out),
        lambda core, out: core.send_request(b"x", Fraction(16), Waiter("s"), out),
        lambda core, out: core.send_request(5, 16, Waiter("s"), out),  # bytes(5): 5 NULs
        lambda core, out: core.send_request("text", 16, Waiter("s"), out),
        lambda core, out: core.get_request(None, Waiter("g"), out),
        lambda core, out: core.take_stashed("64"),
        lambda core, out: core.reply_request(1.0, 0, b"", Waiter("r"), out),
        lambda core, out: core.reply_request(1, 0.0, b"", Waiter("r"), out),
        lambda core, out: core.reply_request(1, 0, [1], Waiter("r"), out),
    ],
)
def test_arguments_of_the_wrong_type_are_invalidarg_and_write_nothing(
    kernel: Kernel, call: Any
) -> None:
    # A frame encoded straight into a shared write buffer must not leave half of itself
    # there: the next write would carry it and break the whole connection.
    out = bytearray(b"earlier")
    with pytest.raises(fltuser.InvalidArgumentError):
        call(kernel.core, out)
    assert out == b"earlier"
    assert kernel.core.outstanding == 0
    # The handle goes on working.
    frame = kernel.core.send_request(b"x", 16, Waiter("s"), out)
    assert kernel.requests(frame[len(b"earlier") :]) == [SendRequest(1, b"x", 16)]


def test_integer_like_arguments_are_accepted(kernel: Kernel) -> None:
    frame = kernel.core.send_request(b"x", NtStatus.STATUS_SUCCESS, Waiter("s"))
    assert kernel.requests(frame) == [SendRequest(1, b"x", 0)]


def test_a_message_put_back_goes_to_the_front_of_the_stash(kernel: Kernel) -> None:
    # reply_and_get took the first stashed message, then its reply failed: the message goes
    # back where it was, so the kernel's order holds.
    for message_id in (1, 2):
        rid, _ = get(kernel, 64, "gone")
        kernel.core.abandon_get(rid)
        kernel.answer(GetResult(rid, 0, message_id, 17, b"m"))
    first = kernel.core.take_stashed(64)
    assert first is not None and first.message_id == 1
    kernel.core.requeue(first, front=True)
    assert [kernel.core.take_stashed(64).message_id for _ in range(2)] == [1, 2]  # type: ignore[union-attr]


def test_signed_reply_status_is_sent_unsigned(kernel: Kernel) -> None:
    frame = kernel.core.reply_request(1, -1073741790, b"", Waiter("r"))
    (request,) = kernel.requests(frame)
    assert request.status == 0xC0000022


def test_abandoning_an_answered_get_says_so(kernel: Kernel) -> None:
    # None tells the caller the answer is on its way to its waiter: take it, do not drop it.
    rid, _ = get(kernel, 64, "g")
    kernel.answer(GetResult(rid, 0, 0, 0, b"m"))
    assert kernel.core.abandon_get(rid) is None
