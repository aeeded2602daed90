"""WireConnection: bytes in, events out, the request-id tables, EOF, limits, stickiness.

Also the address resolution rule (``fltemu.wire.address``). No event loop anywhere.
"""

from __future__ import annotations

import gc
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fltemu.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from fltemu.status import NtStatus
from fltemu.wire import (
    ENV_SOCKET,
    EOF,
    NEED_DATA,
    Attach,
    Connect,
    ConnectResult,
    Control,
    ControlResult,
    Disconnected,
    GetCancel,
    GetRequest,
    GetResult,
    Goodbye,
    ReplyRequest,
    ReplyResult,
    Role,
    Section,
    SendRequest,
    SendResult,
    State,
    Trace,
    TraceEvent,
    WireConnection,
    max_frame_bytes,
    resolve_address,
)
from tests.helpers import WirePair, drain, frame, raw_frame
from tests.wire.test_messages import USER_TYPES, WIRE_CASES, _case_id

INVALID_PARAMETER = NtStatus.STATUS_INVALID_PARAMETER
TOO_BIG = NtStatus.STATUS_INSUFFICIENT_RESOURCES


def encode(message: Any) -> bytes:
    """A frame for ``message`` built without any WireConnection rules."""
    return frame(msgspec.msgpack.encode(message))


def states(pair: WirePair) -> tuple[State, State]:
    """Both ends' states (a function call, so type checkers do not narrow across steps)."""
    return pair.user.state, pair.kernel.state


def open_pair(max_message_bytes: int = 0) -> WirePair:
    pair = WirePair()
    assert pair.user_sends(Connect(1, "\\P")) == [Connect(1, "\\P")]
    result = ConnectResult(1, 0, max_message_bytes)
    assert pair.kernel_sends(result) == [result]
    assert states(pair) == (State.OPEN, State.OPEN)
    return pair


def user_in(state: State) -> WireConnection:
    """A USER connection driven to ``state`` through legal traffic (or a violation for ERROR)."""
    conn = WireConnection(Role.USER)
    if state is State.IDLE:
        return conn
    conn.send(Connect(1, "\\P"))
    if state is State.CONNECTING:
        return conn
    conn.receive_data(encode(ConnectResult(1, 0)))
    assert drain(conn) == [ConnectResult(1, 0)]
    if state is State.OPEN:
        return conn
    if state is State.CLOSED:
        conn.receive_data(encode(Goodbye(0)))
        assert drain(conn) == [Goodbye(0)]
    else:
        conn.receive_data(encode(SendResult(99, 0)))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
    assert conn.state is state
    return conn


def kernel_in(state: State) -> WireConnection:
    conn = WireConnection(Role.KERNEL)
    if state is State.IDLE:
        return conn
    conn.receive_data(encode(Connect(1, "\\P")))
    assert drain(conn) == [Connect(1, "\\P")]
    if state is State.CONNECTING:
        return conn
    conn.send(ConnectResult(1, 0))
    if state is State.OPEN:
        return conn
    if state is State.CLOSED:
        conn.send(Goodbye(0))
    else:
        conn.receive_data(encode(Connect(1, "\\P")))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
    assert conn.state is state
    return conn


_REQUEST_FOR: dict[type, Callable[[int], Any]] = {
    SendResult: lambda rid: SendRequest(rid, b"", 0),
    GetResult: lambda rid: GetRequest(rid, 16),
    ReplyResult: lambda rid: ReplyRequest(rid, 1, 0, b""),
    Section: lambda rid: SendRequest(rid, b"", 0),  # a Section belongs to a pending send
}


def receiver_for(message: Any) -> WireConnection:
    """A connection at the receiving end of ``message``, in a state where it is legal."""
    if isinstance(message, USER_TYPES):
        first = isinstance(message, Connect | Control | Trace | Attach)
        return kernel_in(State.IDLE if first else State.OPEN)
    if isinstance(message, ConnectResult):
        return user_in(State.CONNECTING)
    if isinstance(message, TraceEvent):
        conn = WireConnection(Role.USER)
        conn.send(Trace(1))
        return conn
    if isinstance(message, ControlResult):
        conn = WireConnection(Role.USER)
        conn.send(Control(1, "ports"))
        return conn
    conn = user_in(State.OPEN)
    if type(message) in _REQUEST_FOR:
        conn.send(_REQUEST_FOR[type(message)](message.rid))
    return conn


def sender_for(message: Any) -> WireConnection:
    """A connection at the sending end of ``message``, in a state where it is legal."""
    if isinstance(message, USER_TYPES):
        first = isinstance(message, Connect | Control | Trace | Attach)
        return user_in(State.IDLE if first else State.OPEN)
    if isinstance(message, ConnectResult):
        return kernel_in(State.CONNECTING)
    if isinstance(message, TraceEvent):
        conn = WireConnection(Role.KERNEL)
        conn.receive_data(encode(Trace(1)))
        assert len(drain(conn)) == 1
        return conn
    if isinstance(message, ControlResult):
        conn = WireConnection(Role.KERNEL)
        conn.receive_data(encode(Control(1, "ports")))
        assert len(drain(conn)) == 1
        return conn
    conn = kernel_in(State.OPEN)
    if type(message) in _REQUEST_FOR:
        conn.receive_data(encode(_REQUEST_FOR[type(message)](message.rid)))
        assert len(drain(conn)) == 1
    return conn


def expected_state_after(message: Any) -> State:
    if isinstance(message, Connect | Attach):
        return State.CONNECTING
    if isinstance(message, Control):
        return State.CONTROL
    if isinstance(message, Trace | TraceEvent):
        return State.TRACE
    if isinstance(message, ControlResult):
        return State.CLOSED
    if isinstance(message, ConnectResult):
        return State.OPEN if message.status < 0x80000000 else State.CLOSED
    if isinstance(message, Goodbye):
        return State.CLOSED
    return State.OPEN


def assert_error_is_sticky(conn: WireConnection) -> None:
    assert conn.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn.receive_data(encode(Goodbye(0)))
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(GetCancel(1) if conn.our_role is Role.USER else SendResult(1, 0))
    assert conn.state is State.ERROR


# --- every message through a connection --------------------------------------------------------


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_send_produces_the_pinned_bytes(case: tuple[Any, bytes]) -> None:
    message, data = case
    conn = sender_for(message)
    assert conn.send(message) == data
    assert conn.state is expected_state_after(message)


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_receive_whole(case: tuple[Any, bytes]) -> None:
    message, data = case
    conn = receiver_for(message)
    conn.receive_data(data)
    assert conn.next_event() == message
    assert conn.next_event() is NEED_DATA
    assert conn.state is expected_state_after(message)


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_receive_one_byte_at_a_time(case: tuple[Any, bytes]) -> None:
    message, data = case
    conn = receiver_for(message)
    state_before = conn.state
    for i in range(len(data) - 1):
        conn.receive_data(data[i : i + 1])
        assert conn.next_event() is NEED_DATA, f"event after {i + 1} of {len(data)} bytes"
        assert conn.state is state_before
    conn.receive_data(data[-1:])
    assert conn.next_event() == message
    assert conn.next_event() is NEED_DATA
    assert conn.state is expected_state_after(message)


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_receive_with_trailing_bytes(case: tuple[Any, bytes]) -> None:
    message, data = case
    conn = receiver_for(message)
    trailing = bytes.fromhex("03000000 92")  # the start of another frame
    conn.receive_data(data + trailing)
    assert conn.next_event() == message
    assert conn.next_event() is NEED_DATA
    # The partial frame is still buffered: EOF now is a truncation, not a clean close.
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="5 bytes buffered"):
        conn.next_event()
    assert_error_is_sticky(conn)


def test_several_frames_in_one_read() -> None:
    pair = open_pair()
    out = bytearray()
    messages = [
        SendRequest(1, b"a", 1),
        GetRequest(2, 100),
        GetCancel(2),
        ReplyRequest(3, 7, 0, b""),
    ]
    for m in messages:
        pair.user.send_into(m, out)
    pair.kernel.receive_data(out)
    assert drain(pair.kernel) == messages
    assert pair.kernel.outstanding == {1: SendResult, 2: GetResult, 3: ReplyResult}


def test_handshake_and_roles() -> None:
    pair = WirePair()
    assert pair.user.our_role is Role.USER and pair.user.their_role is Role.KERNEL
    assert pair.kernel.our_role is Role.KERNEL and pair.kernel.their_role is Role.USER
    assert states(pair) == (State.IDLE, State.IDLE)
    assert pair.user_sends(Connect(1, "\\P", b"ctx")) == [Connect(1, "\\P", b"ctx")]
    assert states(pair) == (State.CONNECTING, State.CONNECTING)
    assert pair.kernel_sends(ConnectResult(1, 0, 4096)) == [ConnectResult(1, 0, 4096)]
    assert states(pair) == (State.OPEN, State.OPEN)


def test_repr_names_role_state_and_outstanding() -> None:
    pair = open_pair()
    pair.user.send(GetRequest(1, 32))
    assert repr(pair.user) == "<WireConnection user open outstanding=1>"
    assert repr(WireConnection(Role.KERNEL)) == "<WireConnection kernel idle outstanding=0>"


# --- EOF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.IDLE, State.CONNECTING, State.OPEN, State.CLOSED])
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_clean_eof_gives_eof_then_closed(role: Role, state: State) -> None:
    conn = user_in(state) if role is Role.USER else kernel_in(state)
    conn.receive_data(b"")
    assert conn.next_event() is EOF
    assert conn.state is State.CLOSED
    assert conn.next_event() is NEED_DATA
    assert conn.state is State.CLOSED


def test_messages_before_eof_come_first() -> None:
    pair = open_pair()
    pair.kernel.receive_data(pair.user.send(GetRequest(1, 32)) + pair.user.send(GetCancel(1)))
    pair.kernel.receive_data(b"")
    assert drain(pair.kernel) == [GetRequest(1, 32), GetCancel(1), EOF]
    # The get is still outstanding: its answer may still go out (below).
    assert pair.kernel.state is State.DRAINING


def test_after_the_users_eof_the_kernel_answers_only_what_was_asked() -> None:
    """CloseHandle with a send in MessageNotify: the answer still goes out (§2.4 step 4),
    nothing new does; Goodbye ends it."""
    pair = open_pair()
    pair.kernel.receive_data(
        pair.user.send(SendRequest(1, b"x", 8)) + pair.user.send(GetRequest(2, 64))
    )
    pair.kernel.receive_data(b"")
    assert drain(pair.kernel)[-1] is EOF
    assert pair.kernel.state is State.DRAINING
    pair.kernel.send(Section(1, 0, b"s"))
    pair.kernel.send(SendResult(1, 0, b"done"))
    pair.kernel.send(GetResult(2, NtStatus.STATUS_PORT_DISCONNECTED))
    with pytest.raises(LocalProtocolError):
        pair.kernel.send(SendResult(1, 0, b"again"))
    assert pair.kernel.state in {State.ERROR}  # (a set: mypy keeps the DRAINING above)


def test_eof_with_nothing_outstanding_closes() -> None:
    pair = open_pair()
    pair.kernel.receive_data(b"")
    assert drain(pair.kernel) == [EOF]
    assert pair.kernel.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.kernel.send(Disconnected(NtStatus.STATUS_PORT_DISCONNECTED))


def test_draining_ends_with_goodbye() -> None:
    pair = open_pair()
    pair.kernel.receive_data(pair.user.send(GetRequest(1, 32)))
    pair.kernel.receive_data(b"")
    drain(pair.kernel)
    with pytest.raises(LocalProtocolError):
        pair.kernel.send(Disconnected(NtStatus.STATUS_PORT_DISCONNECTED))
    pair = open_pair()
    pair.kernel.receive_data(pair.user.send(GetRequest(1, 32)))
    pair.kernel.receive_data(b"")
    drain(pair.kernel)
    pair.kernel.send(Goodbye(NtStatus.STATUS_PORT_DISCONNECTED))
    assert pair.kernel.state is State.CLOSED


@pytest.mark.parametrize("cut", [1, 3, 4, 6], ids=lambda n: f"{n}-bytes")
def test_eof_in_the_middle_of_a_frame(cut: int) -> None:
    pair = open_pair()
    good = pair.user.send(GetRequest(1, 32))
    partial = pair.user.send(SendRequest(2, b"abc", 0))[:cut]
    pair.kernel.receive_data(good + partial)
    pair.kernel.receive_data(b"")
    assert pair.kernel.next_event() == GetRequest(1, 32)
    with pytest.raises(RemoteProtocolError, match="middle of a frame") as info:
        pair.kernel.next_event()
    assert info.value.status_hint is INVALID_PARAMETER
    assert_error_is_sticky(pair.kernel)


_TORN: dict[str, bytes] = {
    # A large frame cut short by the close, a frame over the limit, a frame that does not decode.
    "eof": struct.pack("<I", 1 << 20) + bytes(256 * 1024),
    "oversize": struct.pack("<I", 1 << 30) + bytes(1024),
    "malformed": frame(b"\xc1" * 16) + struct.pack("<I", 1 << 20) + bytes(1024),
    # A legal frame at the wrong time, a partial one behind it.
    "illegal": WireConnection(Role.USER).send(Connect(1, "\\P")) + struct.pack("<I", 1 << 20),
}


def _fail_connection(how: str) -> None:
    pair = open_pair()
    kernel = pair.kernel
    kernel.receive_data(_TORN[how])
    if how == "eof":
        kernel.receive_data(b"")
    failures = []
    for _ in range(2):
        try:
            drain(kernel)
        except RemoteProtocolError as exc:
            failures.append(exc.status_hint)
    assert len(failures) == 2
    assert kernel.state is State.ERROR


@pytest.mark.parametrize("how", list(_TORN))
def test_a_failed_connection_keeps_no_bytes_and_no_cycle(how: str) -> None:
    # The daemon never runs a full garbage collection while idle: a failed connection that
    # pointed back at itself (through a traceback kept with its error) would stay, with the
    # session around it and the frame it was reading.
    _fail_connection(how)  # once first: what the first use of anything leaves is not ours
    gc.collect()
    gc.disable()
    try:
        _fail_connection(how)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_eof_queued_behind_a_violation_does_not_end_error() -> None:
    # A bad frame and the EOF arrive before the caller drains: ERROR must stay ERROR.
    conn = kernel_in(State.IDLE)
    conn.receive_data(encode(SendRequest(1, b"", 0)))  # illegal before Connect
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert_error_is_sticky(conn)


def test_frames_queued_behind_a_violation_are_not_delivered() -> None:
    conn = user_in(State.OPEN)
    conn.send(GetRequest(1, 32))
    conn.receive_data(encode(SendResult(5, 0)) + encode(GetResult(1, 0)) + encode(Goodbye(0)))
    with pytest.raises(RemoteProtocolError, match="not outstanding"):
        conn.next_event()
    assert_error_is_sticky(conn)


# --- malformed input at the connection -----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        frame(b""),
        raw_frame([99, 1]),
        raw_frame([16, 1, 0]),  # a kernel message sent to the kernel
        raw_frame([2, "1", b"", 0]),
        raw_frame([3, 1]),
        frame(b"\xc1"),
    ],
    ids=["zero-length", "unknown-tag", "wrong-direction", "wrong-type", "missing-field", "junk"],
)
def test_malformed_frames_fail_the_kernel_end(data: bytes) -> None:
    conn = kernel_in(State.OPEN)
    conn.receive_data(encode(GetCancel(1)) + data)
    assert conn.next_event() == GetCancel(1)
    with pytest.raises(RemoteProtocolError, match="malformed frame") as info:
        conn.next_event()
    assert info.value.status_hint is INVALID_PARAMETER
    assert_error_is_sticky(conn)


@pytest.mark.parametrize(
    "data",
    [frame(b""), raw_frame([1, 1, "\\P"]), raw_frame([17, 1, "0"]), raw_frame([20])],
    ids=["zero-length", "wrong-direction", "wrong-type", "missing-field"],
)
def test_malformed_frames_fail_the_user_end(data: bytes) -> None:
    conn = user_in(State.OPEN)
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="malformed frame"):
        conn.next_event()
    assert_error_is_sticky(conn)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_oversize_frame_fails_without_buffering(role: Role) -> None:
    conn = WireConnection(role, max_message_bytes=0)
    conn.receive_data(struct.pack("<I", 0xFFFFFFFF))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.status_hint is TOO_BIG
    conn.receive_data(b"\x00" * 65536)  # the body that follows is dropped, not collected
    assert_error_is_sticky(conn)


def test_frame_at_the_limit_is_accepted_one_over_is_not() -> None:
    for extra, ok in [(0, True), (1, False)]:
        conn = kernel_in(State.OPEN)
        conn.set_max_message_bytes(0)
        # Grow the data so the payload is exactly max_frame_bytes(0) (+ extra) bytes.
        overhead = len(encode(SendRequest(1, b"x" * 70000, 0))) - 70000
        size = max_frame_bytes(0) - (overhead - 4) + extra
        data = encode(SendRequest(1, b"x" * size, 0))
        assert len(data) - 4 == max_frame_bytes(0) + extra
        conn.receive_data(data)
        if ok:
            assert conn.next_event() == SendRequest(1, b"x" * size, 0)
        else:
            with pytest.raises(RemoteProtocolError) as info:
                conn.next_event()
            assert info.value.status_hint is TOO_BIG


# --- request ids ----------------------------------------------------------------------------------


def test_next_request_id_counts_from_one() -> None:
    conn = WireConnection(Role.USER)
    assert [conn.next_request_id() for _ in range(3)] == [1, 2, 3]


def test_outstanding_tables_track_both_ends() -> None:
    pair = open_pair()
    pair.user_sends(SendRequest(1, b"in", 8))
    pair.user_sends(GetRequest(2, 64))
    pair.user_sends(ReplyRequest(3, 1, 0, b""))
    expected = {1: SendResult, 2: GetResult, 3: ReplyResult}
    assert pair.user.outstanding == pair.kernel.outstanding == expected
    # Results may come in any order.
    assert pair.kernel_sends(ReplyResult(3, 0)) == [ReplyResult(3, 0)]
    assert pair.kernel_sends(SendResult(1, 0, b"out")) == [SendResult(1, 0, b"out")]
    assert pair.user.outstanding == pair.kernel.outstanding == {2: GetResult}
    assert pair.kernel_sends(GetResult(2, 0, 1, 0, b"m")) == [GetResult(2, 0, 1, 0, b"m")]
    assert pair.user.outstanding == pair.kernel.outstanding == {}
    # An id is free again once answered.
    assert pair.user_sends(GetRequest(2, 64)) == [GetRequest(2, 64)]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (SendRequest(1, b"", 0), SendRequest(1, b"", 0)),
        (GetRequest(1, 16), GetRequest(1, 16)),
        (ReplyRequest(1, 1, 0, b""), ReplyRequest(1, 2, 0, b"")),
        (SendRequest(1, b"", 0), GetRequest(1, 16)),  # ids are shared across request types
        (GetRequest(1, 16), ReplyRequest(1, 1, 0, b"")),
    ],
    ids=lambda m: type(m).__name__,
)
def test_duplicate_outstanding_rid(first: Any, second: Any) -> None:
    # At the KERNEL end it is the peer's violation.
    kernel = kernel_in(State.OPEN)
    kernel.receive_data(encode(first) + encode(second))
    assert kernel.next_event() == first
    with pytest.raises(RemoteProtocolError, match="reused"):
        kernel.next_event()
    assert_error_is_sticky(kernel)
    # At the USER end it is ours.
    user = user_in(State.OPEN)
    user.send(first)
    with pytest.raises(LocalProtocolError, match="reused"):
        user.send(second)
    assert_error_is_sticky(user)


@pytest.mark.parametrize(
    ("request_", "result", "reason"),
    [
        (None, SendResult(1, 0), "not outstanding"),
        (GetRequest(1, 16), GetResult(2, 0), "not outstanding"),
        (GetRequest(1, 16), SendResult(1, 0), "wants GetResult"),
        (SendRequest(1, b"", 0), ReplyResult(1, 0), "wants SendResult"),
        (ReplyRequest(1, 1, 0, b""), GetResult(1, 0), "wants ReplyResult"),
    ],
    ids=["nothing-asked", "other-rid", "send-for-get", "reply-for-send", "get-for-reply"],
)
def test_unexpected_result(request_: Any, result: Any, reason: str) -> None:
    # At the USER end a result it did not ask for is the peer's violation.
    user = user_in(State.OPEN)
    if request_ is not None:
        user.send(request_)
    user.receive_data(encode(result))
    with pytest.raises(RemoteProtocolError, match=reason):
        user.next_event()
    assert_error_is_sticky(user)
    # A KERNEL that tries to send it has a bug of its own.
    kernel = kernel_in(State.OPEN)
    if request_ is not None:
        kernel.receive_data(encode(request_))
        assert drain(kernel) == [request_]
    with pytest.raises(LocalProtocolError, match=reason):
        kernel.send(result)
    assert_error_is_sticky(kernel)


def test_second_result_for_the_same_rid() -> None:
    pair = open_pair()
    pair.user_sends(GetRequest(1, 16))
    pair.kernel_sends(GetResult(1, 0xC0000120))
    with pytest.raises(LocalProtocolError, match="not outstanding"):
        pair.kernel.send(GetResult(1, 0))
    pair.user.receive_data(encode(GetResult(1, 0)))
    with pytest.raises(RemoteProtocolError, match="not outstanding"):
        pair.user.next_event()


def test_get_cancel_for_an_unknown_rid_is_not_an_error() -> None:
    pair = open_pair()
    assert pair.user_sends(GetCancel(42)) == [GetCancel(42)]
    pair.user_sends(GetRequest(1, 16))
    assert pair.user_sends(GetCancel(1)) == [GetCancel(1)]
    assert pair.user_sends(GetCancel(1)) == [GetCancel(1)]  # twice is harmless too
    # A cancel has no answer of its own: the getter still waits for its GetResult.
    assert pair.user.outstanding == pair.kernel.outstanding == {1: GetResult}
    assert pair.kernel_sends(GetResult(1, NtStatus.STATUS_CANCELLED)) == [GetResult(1, 0xC0000120)]
    assert pair.user_sends(GetCancel(1)) == [GetCancel(1)]  # after completion as well
    assert states(pair) == (State.OPEN, State.OPEN)


def test_reply_to_an_unknown_message_id_is_not_a_wire_error() -> None:
    # Message ids are port semantics: the daemon answers ERROR_FLT_NO_WAITER_FOR_REPLY.
    pair = open_pair()
    assert pair.user_sends(ReplyRequest(1, 12345, 0, b"")) == [ReplyRequest(1, 12345, 0, b"")]
    status = NtStatus.STATUS_FLT_NO_WAITER_FOR_REPLY
    assert pair.kernel_sends(ReplyResult(1, status)) == [ReplyResult(1, status)]
    assert pair.user.state is State.OPEN


# --- the handshake -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        NtStatus.STATUS_OBJECT_NAME_NOT_FOUND,
        NtStatus.STATUS_ACCESS_DENIED,
        NtStatus.STATUS_CONNECTION_COUNT_LIMIT,
        NtStatus.STATUS_REVISION_MISMATCH,
        NtStatus.STATUS_FLT_DELETING_OBJECT,
        NtStatus.STATUS_BUFFER_OVERFLOW,  # a warning is not a success either
    ],
    ids=lambda s: s.name,
)
def test_failed_connect_result_closes(status: NtStatus) -> None:
    pair = WirePair()
    pair.user_sends(Connect(1, "\\P"))
    assert pair.kernel_sends(ConnectResult(1, status)) == [ConnectResult(1, status)]
    assert states(pair) == (State.CLOSED, State.CLOSED)
    with pytest.raises(LocalProtocolError):
        pair.user.send(GetRequest(1, 16))
    assert pair.user.state is State.ERROR


@pytest.mark.parametrize("status", [0, NtStatus.STATUS_TIMEOUT, 0x40000001], ids=hex)
def test_success_connect_result_opens(status: int) -> None:
    pair = WirePair()
    pair.user_sends(Connect(1, "\\P"))
    pair.kernel_sends(ConnectResult(1, status))
    assert states(pair) == (State.OPEN, State.OPEN)


def test_protocol_versions_start_at_one() -> None:
    user = WireConnection(Role.USER)
    with pytest.raises(LocalProtocolError, match="start at 1"):
        user.send(Connect(0, "\\P"))
    assert_error_is_sticky(user)
    kernel = WireConnection(Role.KERNEL)
    kernel.receive_data(encode(Connect(0, "\\P")))
    with pytest.raises(RemoteProtocolError, match="start at 1"):
        kernel.next_event()
    assert_error_is_sticky(kernel)


def test_a_newer_version_is_left_to_the_daemon() -> None:
    # The wire accepts any version >= 1; the daemon answers STATUS_REVISION_MISMATCH.
    pair = WirePair()
    assert pair.user_sends(Connect(2, "\\P")) == [Connect(2, "\\P")]
    mismatch = NtStatus.STATUS_REVISION_MISMATCH
    assert pair.kernel_sends(ConnectResult(1, mismatch)) == [ConnectResult(1, mismatch)]
    assert pair.user.state is State.CLOSED


def test_requests_before_the_handshake_completes_are_illegal() -> None:
    user = user_in(State.CONNECTING)
    with pytest.raises(LocalProtocolError, match="connecting"):
        user.send(SendRequest(1, b"", 0))
    kernel = kernel_in(State.CONNECTING)
    kernel.receive_data(encode(GetRequest(1, 16)))
    with pytest.raises(RemoteProtocolError, match="connecting"):
        kernel.next_event()


# --- Goodbye -------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.IDLE, State.CONNECTING, State.OPEN, State.CLOSED])
def test_goodbye_from_the_kernel_in_every_state(state: State) -> None:
    kernel = kernel_in(state)
    data = kernel.send(Goodbye(0xC0000037, "unloading"))
    assert kernel.state is State.CLOSED
    user = user_in(state)
    user.receive_data(data)
    assert user.next_event() == Goodbye(0xC0000037, "unloading")
    assert user.state is State.CLOSED


def test_goodbye_after_an_error_keeps_error() -> None:
    # The daemon tells the peer why it is being dropped, after the violation.
    kernel = kernel_in(State.OPEN)
    kernel.receive_data(encode(ConnectResult(1, 0)))
    with pytest.raises(RemoteProtocolError) as info:
        kernel.next_event()
    data = kernel.send(Goodbye(info.value.status_hint, str(info.value)))
    assert data.startswith(struct.pack("<I", len(data) - 4) + b"\x93\x14")
    assert kernel.state is State.ERROR
    assert kernel.send(Goodbye(0)) == encode(Goodbye(0))  # and again
    assert_error_is_sticky(kernel)


def test_goodbye_is_not_the_users_to_send() -> None:
    user = user_in(State.OPEN)
    with pytest.raises(LocalProtocolError):
        user.send(Goodbye(0))
    assert_error_is_sticky(user)


# --- closed and error are sticky -----------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_closed_is_sticky(role: Role) -> None:
    conn = user_in(State.CLOSED) if role is Role.USER else kernel_in(State.CLOSED)
    bad = GetRequest(1, 16) if role is Role.USER else SendResult(1, 0)
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(bad)
    assert_error_is_sticky(conn)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_receiving_after_closed_is_a_violation(role: Role) -> None:
    conn = user_in(State.CLOSED) if role is Role.USER else kernel_in(State.CLOSED)
    conn.receive_data(encode(ReplyResult(1, 0) if role is Role.USER else GetCancel(1)))
    with pytest.raises(RemoteProtocolError, match="closed"):
        conn.next_event()
    assert_error_is_sticky(conn)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_send_failed_makes_error(role: Role) -> None:
    conn = user_in(State.OPEN) if role is Role.USER else kernel_in(State.OPEN)
    conn.send_failed()
    assert_error_is_sticky(conn)


def test_local_protocol_error_is_not_remote() -> None:
    conn = WireConnection(Role.USER)
    with pytest.raises(ProtocolError) as info:
        conn.send(ConnectResult(1, 0))
    assert type(info.value) is LocalProtocolError


# --- limits --------------------------------------------------------------------------------------


def test_set_max_message_bytes_limits_both_directions() -> None:
    pair = open_pair()
    pair.user.set_max_message_bytes(1000)
    assert pair.user.max_message_bytes == 1000
    big = b"x" * (max_frame_bytes(1000) + 1)
    # Sending: refused before anything is written, and the batch so far is kept intact.
    out = bytearray(b"keep")
    with pytest.raises(LocalProtocolError, match="over the limit") as info:
        pair.user.send_into(SendRequest(1, big, 0), out)
    assert info.value.status_hint is TOO_BIG
    assert out == b"keep"
    assert pair.user.state is State.ERROR
    # Receiving: a frame over the announced limit is the peer's violation.
    user = user_in(State.OPEN)
    user.send(SendRequest(1, b"", 0))
    user.set_max_message_bytes(1000)
    user.receive_data(encode(SendResult(1, 0, big)))
    with pytest.raises(RemoteProtocolError) as rinfo:
        user.next_event()
    assert rinfo.value.status_hint is TOO_BIG


def test_raising_the_limit_lets_bigger_frames_through() -> None:
    pair = WirePair()
    pair.user = WireConnection(Role.USER, max_message_bytes=0)
    pair.kernel = WireConnection(Role.KERNEL, max_message_bytes=0)
    pair.user_sends(Connect(1, "\\P"))
    limit = 1 << 20
    pair.kernel_sends(ConnectResult(1, 0, limit))
    pair.user.set_max_message_bytes(limit)
    pair.kernel.set_max_message_bytes(limit)
    data = b"y" * (max_frame_bytes(0) + 10)
    assert pair.user_sends(SendRequest(1, data, 0)) == [SendRequest(1, data, 0)]
    assert pair.kernel_sends(SendResult(1, 0, data)) == [SendResult(1, 0, data)]


def test_constructor_limit_applies_to_send() -> None:
    conn = WireConnection(Role.USER, max_message_bytes=0)
    with pytest.raises(LocalProtocolError) as info:
        conn.send(Connect(1, "\\P", b"c" * (max_frame_bytes(0) + 1)))
    assert info.value.status_hint is TOO_BIG
    assert conn.state is State.ERROR


def test_send_into_batches_frames() -> None:
    pair = open_pair()
    out = bytearray()
    pair.kernel.receive_data(pair.user.send(GetRequest(1, 16)) + pair.user.send(GetRequest(2, 16)))
    drain(pair.kernel)
    pair.kernel.send_into(GetResult(1, 0, 1, 0, b"a"), out)
    pair.kernel.send_into(GetResult(2, 0, 2, 0, b"b"), out)
    assert bytes(out) == encode(GetResult(1, 0, 1, 0, b"a")) + encode(GetResult(2, 0, 2, 0, b"b"))
    pair.user.receive_data(out)
    assert drain(pair.user) == [GetResult(1, 0, 1, 0, b"a"), GetResult(2, 0, 2, 0, b"b")]


# --- where the daemon listens ------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(ENV_SOCKET, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")  # the POSIX rules, wherever this runs
    return monkeypatch


def test_env_socket_name() -> None:
    assert ENV_SOCKET == "FLTEMU_SOCKET"


def test_explicit_address_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(ENV_SOCKET, "/env/sock")
    clean_env.setenv("XDG_RUNTIME_DIR", "/run/user/1")
    assert resolve_address("/explicit.sock") == "/explicit.sock"
    assert resolve_address(Path("/explicit/p.sock")) == "/explicit/p.sock"


def test_fltemu_socket_is_next(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(ENV_SOCKET, "/env/sock")
    clean_env.setenv("XDG_RUNTIME_DIR", "/run/user/1")
    assert resolve_address() == "/env/sock"
    assert resolve_address(None) == "/env/sock"
    assert resolve_address("") == "/env/sock"  # an empty explicit address means "not given"


def test_xdg_runtime_dir_is_next(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("XDG_RUNTIME_DIR", "/run/user/1")
    assert resolve_address() == "/run/user/1/fltemu.sock"
    clean_env.setenv(ENV_SOCKET, "")  # empty means unset
    assert resolve_address() == "/run/user/1/fltemu.sock"


def test_tmp_fallback(clean_env: pytest.MonkeyPatch) -> None:
    assert resolve_address() == f"/tmp/fltemu-{os.getuid()}/fltemu.sock"
    clean_env.setenv("XDG_RUNTIME_DIR", "")
    assert resolve_address() == f"/tmp/fltemu-{os.getuid()}/fltemu.sock"


def test_windows_default_is_a_named_pipe(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(sys, "platform", "win32")
    clean_env.setenv("XDG_RUNTIME_DIR", "/run/user/1")
    assert resolve_address() == "\\\\.\\pipe\\fltemu"
    clean_env.setenv(ENV_SOCKET, "/env/sock")
    assert resolve_address() == "/env/sock"


@pytest.mark.parametrize("side", ["user", "kernel"])
def test_a_message_that_cannot_be_encoded_leaves_nothing_behind(side: str) -> None:
    # A field msgspec cannot encode: no partial frame in the caller's buffer, the request id
    # bookkeeping as before, and the connection still open.
    pair = open_pair()
    pair.user_sends(SendRequest(1, b"x", 4))
    conn = pair.user if side == "user" else pair.kernel
    bad = SendRequest(2, object(), 4) if side == "user" else SendResult(1, 0, object())  # type: ignore[arg-type]
    out = bytearray(b"before")
    before = dict(conn.outstanding)
    with pytest.raises((TypeError, msgspec.EncodeError)):
        conn.send_into(bad, out)
    assert out == b"before"
    assert conn.outstanding == before
    assert states(pair) == (State.OPEN, State.OPEN)
    assert pair.kernel_sends(SendResult(1, 0, b"ok")) == [SendResult(1, 0, b"ok")]
