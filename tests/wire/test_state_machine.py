"""The connection state machine against an independent model, over every (state, sender, message).

``legal()`` below restates the rules of ``fltemu/wire/connection.py``'s theory-of-operation block
without looking at its transition table; every (state, our role, direction, message type) is
checked against it, with Hypothesis choosing field values, how each state was reached, and
multi-step sequences. ``WirePair`` conversations then check that the receiver sees exactly what
was sent however the bytes are chunked. No event loop.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fltemu.errors import LocalProtocolError, RemoteProtocolError
from fltemu.wire import (
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
)
from tests.helpers import WirePair, drain, frame

SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, database=None)

USER_TYPES: tuple[type, ...] = (
    Connect,
    SendRequest,
    GetRequest,
    ReplyRequest,
    GetCancel,
    Control,
    Trace,
    Attach,
)
KERNEL_TYPES: tuple[type, ...] = (
    ConnectResult,
    SendResult,
    GetResult,
    ReplyResult,
    Goodbye,
    ControlResult,
    Disconnected,
    Section,
    TraceEvent,
)
ALL_TYPES = USER_TYPES + KERNEL_TYPES
REQUESTS: dict[type, type] = {
    SendRequest: SendResult,
    GetRequest: GetResult,
    ReplyRequest: ReplyResult,
}
RESULTS = frozenset(REQUESTS.values())

# The requests a connection driven to OPEN has outstanding.
OPEN_OUTSTANDING: dict[int, type] = {1: SendResult, 2: GetResult, 3: ReplyResult}

CLOSED_ROUTES = ("goodbye", "failed-connect", "eof", "eof-before-connect")
ERROR_ROUTES = ("send-failed", "illegal-send", "illegal-receive", "oversize", "eof-mid-frame")


def encode(message: Any) -> bytes:
    return frame(msgspec.msgpack.encode(message))


# --- the model ---------------------------------------------------------------------------------


def legal(state: State, sender: Role, message: Any, outstanding: dict[int, type]) -> State | None:
    """The state after ``sender`` sends ``message`` in ``state``, or None if it is illegal."""
    cls = type(message)
    if cls is Goodbye and sender is Role.KERNEL:
        return State.ERROR if state is State.ERROR else State.CLOSED
    if state is State.IDLE:
        if cls is Connect and sender is Role.USER and message.version >= 1:
            return State.CONNECTING
        if cls is Control and sender is Role.USER and message.version >= 1:
            return State.CONTROL
        if cls is Trace and sender is Role.USER and message.version >= 1:
            return State.TRACE
        if cls is Attach and sender is Role.USER and message.version >= 1:
            return State.CONNECTING
        return None
    if state is State.TRACE:
        # The daemon streams events; the user only listens (and closes).
        return State.TRACE if cls is TraceEvent and sender is Role.KERNEL else None
    if state is State.CONTROL:
        # One command, one answer, then the connection is over.
        return State.CLOSED if cls is ControlResult and sender is Role.KERNEL else None
    if state is State.CONNECTING:
        if cls is ConnectResult and sender is Role.KERNEL:
            return State.OPEN if message.status < 0x8000_0000 else State.CLOSED
        return None
    if state is State.OPEN:
        if sender is Role.USER and cls in REQUESTS:
            return None if message.rid in outstanding else State.OPEN
        if sender is Role.USER and cls is GetCancel:
            return State.OPEN
        if sender is Role.KERNEL and cls in RESULTS:
            return State.OPEN if outstanding.get(message.rid) is cls else None
        if sender is Role.KERNEL and cls is Disconnected:
            return State.OPEN
        if sender is Role.KERNEL and cls is Section:
            # Before the SendResult of a pending send, which stays pending.
            return State.OPEN if outstanding.get(message.rid) is SendResult else None
        return None
    if state is State.DRAINING:
        # The user half-closed: the kernel answers what it had been asked, nothing else.
        if sender is Role.KERNEL and cls in RESULTS:
            return State.DRAINING if outstanding.get(message.rid) is cls else None
        if sender is Role.KERNEL and cls is Section:
            return State.DRAINING if outstanding.get(message.rid) is SendResult else None
        return None
    return None  # CLOSED and ERROR accept nothing but the kernel's Goodbye


def update_outstanding(message: Any, outstanding: dict[int, type]) -> None:
    if type(message) in REQUESTS:
        outstanding[message.rid] = REQUESTS[type(message)]
    elif type(message) in RESULTS:
        del outstanding[message.rid]


# --- driving a connection to a state -----------------------------------------------------------


def drive(role: Role, state: State, route: str = "") -> WireConnection:
    """A ``role`` connection brought to ``state`` through real traffic; ``route`` picks how."""
    conn = WireConnection(role)

    def from_user(message: Any) -> None:
        if role is Role.USER:
            conn.send(message)
        else:
            conn.receive_data(encode(message))
            assert drain(conn) == [message]

    def from_kernel(message: Any) -> None:
        if role is Role.KERNEL:
            conn.send(message)
        else:
            conn.receive_data(encode(message))
            assert drain(conn) == [message]

    def to_open() -> None:
        from_user(Connect(1, "\\P"))
        from_kernel(ConnectResult(1, 0))
        from_user(SendRequest(1, b"s", 8))
        from_user(GetRequest(2, 64))
        from_user(ReplyRequest(3, 77, 0, b"r"))

    if state is State.CONNECTING:
        from_user(Connect(1, "\\P"))
    elif state is State.CONTROL:
        from_user(Control(1, "ports"))
    elif state is State.TRACE:
        from_user(Trace(1))
    elif state is State.OPEN:
        to_open()
    elif state is State.DRAINING:
        # Only the kernel's end drains: the user's EOF with requests outstanding.
        assert role is Role.KERNEL
        to_open()
        conn.receive_data(b"")
        assert drain(conn) == [EOF]
    elif state is State.CLOSED:
        route = route or CLOSED_ROUTES[0]
        if route == "failed-connect":
            from_user(Connect(1, "\\P"))
            from_kernel(ConnectResult(1, 0xC0000034))
        elif route == "eof-before-connect":
            conn.receive_data(b"")
            assert drain(conn) == [EOF]
        else:
            to_open()
            if route == "goodbye":
                from_kernel(Goodbye(0xC0000037, "bye"))
            else:
                if role is Role.KERNEL:
                    # With nothing outstanding the user's EOF closes (else it drains).
                    from_kernel(SendResult(1, 0))
                    from_kernel(GetResult(2, 0))
                    from_kernel(ReplyResult(3, 0))
                conn.receive_data(b"")
                assert drain(conn) == [EOF]
    elif state is State.ERROR:
        route = route or ERROR_ROUTES[0]
        to_open()
        if route == "send-failed":
            conn.send_failed()
        elif route == "illegal-send":
            with pytest.raises(LocalProtocolError):
                conn.send(Connect(1, "\\P"))
        elif route == "illegal-receive":
            conn.receive_data(encode(Connect(1, "\\P")))
            with pytest.raises(RemoteProtocolError):
                conn.next_event()
        elif route == "oversize":
            conn.receive_data(b"\xff\xff\xff\xff")
            with pytest.raises(RemoteProtocolError):
                conn.next_event()
        else:
            conn.receive_data(b"\x05\x00")
            conn.receive_data(b"")
            with pytest.raises(RemoteProtocolError):
                conn.next_event()
    assert conn.state is state
    return conn


def expected_outstanding(state: State, route: str, role: Role = Role.USER) -> dict[int, type]:
    if state is State.CLOSED and route == "eof" and role is Role.KERNEL:
        return {}
    if state in (State.OPEN, State.DRAINING) or (
        state is State.CLOSED and route in ("goodbye", "eof")
    ):
        return dict(OPEN_OUTSTANDING)
    if state is State.ERROR:
        return dict(OPEN_OUTSTANDING)
    return {}


# --- one step, checked against the model --------------------------------------------------------


def check_step(conn: WireConnection, direction: str, message: Any, model: dict[int, type]) -> None:
    """Send or receive ``message`` on ``conn`` and check the outcome against ``legal()``.

    ``model`` is the outstanding table the model expects; it is updated in place.
    """
    before = conn.state
    sender = conn.our_role if direction == "send" else conn.their_role
    # Receiving in ERROR is refused outright: the data is dropped and next_event raises.
    if direction == "receive" and before is State.ERROR:
        after = None
    else:
        after = legal(before, sender, message, model)
    if direction == "send":
        if after is None:
            with pytest.raises(LocalProtocolError):
                conn.send(message)
        else:
            assert conn.send(message) == encode(message)
    else:
        conn.receive_data(encode(message))
        if after is None:
            with pytest.raises(RemoteProtocolError):
                conn.next_event()
        else:
            event = conn.next_event()
            assert type(event) is type(message)
            assert event == message
            assert conn.next_event() is NEED_DATA
    if after is None:
        assert conn.state is State.ERROR, f"{direction} {message!r} in {before} left {conn.state}"
        check_error_is_sticky(conn)
    else:
        assert conn.state is after
        if before in (State.OPEN, State.DRAINING):
            update_outstanding(message, model)
        assert conn.outstanding == model


def check_error_is_sticky(conn: WireConnection) -> None:
    """Every later receive and every later send (but the daemon's Goodbye) fails; ERROR stays."""
    assert conn.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    for message in (Goodbye(0), SendResult(1, 0), GetCancel(1), Connect(1, "\\P")):
        conn.receive_data(encode(message))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert conn.state is State.ERROR
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        conn.send(GetCancel(1) if conn.our_role is Role.USER else SendResult(1, 0))
    assert conn.state is State.ERROR


# --- every (state, role, direction, message type), deterministically ---------------------------


def representatives(cls: type) -> list[Any]:
    """Messages of ``cls`` that hit both sides of each rule (fresh vs outstanding ids...)."""
    table: dict[type, list[Any]] = {
        Connect: [Connect(1, "\\P"), Connect(0, "\\P")],
        Attach: [Attach(1, b"t"), Attach(0, b"t")],
        SendRequest: [SendRequest(4, b"x", 1), SendRequest(1, b"x", 1)],
        GetRequest: [GetRequest(4, 16), GetRequest(2, 16)],
        ReplyRequest: [ReplyRequest(4, 1, 0, b""), ReplyRequest(3, 1, 0, b"")],
        GetCancel: [GetCancel(2), GetCancel(99)],
        ConnectResult: [ConnectResult(1, 0), ConnectResult(1, 0xC0000022)],
        SendResult: [SendResult(1, 0), SendResult(2, 0), SendResult(99, 0)],
        GetResult: [GetResult(2, 0), GetResult(3, 0), GetResult(99, 0)],
        ReplyResult: [ReplyResult(3, 0), ReplyResult(1, 0), ReplyResult(99, 0)],
        Goodbye: [Goodbye(0), Goodbye(0xC0000037, "x")],
        Control: [Control(1, "ports"), Control(0, "send", "\\P", 3, b"x", 1, 0.5)],
        ControlResult: [ControlResult(1, 0), ControlResult(1, 0xC0000034, "no port")],
        Disconnected: [Disconnected(0xC0000037)],
        Section: [Section(1, 0, b"x"), Section(2, 8, b""), Section(99, 0, b"x")],
        Trace: [Trace(1), Trace(0, "\\P", 3, ("send",), 16)],
        TraceEvent: [TraceEvent("start", 1.5), TraceEvent("dropped", 2.0, count=7)],
    }
    return table[cls]


PAIRS = [
    (state, role, direction, cls)
    for state in State
    for role in Role
    for direction in ("send", "receive")
    for cls in ALL_TYPES
    # A user's end never drains: its own EOF is not something it receives.
    if not (state is State.DRAINING and role is Role.USER)
]


@pytest.mark.parametrize(
    ("state", "role", "direction", "cls"),
    PAIRS,
    ids=[f"{s.value}-{r.value}-{d}-{c.__name__}" for s, r, d, c in PAIRS],
)
def test_every_state_role_and_message(state: State, role: Role, direction: str, cls: type) -> None:
    routes = {State.CLOSED: CLOSED_ROUTES, State.ERROR: ERROR_ROUTES}.get(state, ("",))
    for route in routes:
        for message in representatives(cls):
            conn = drive(role, state, route)
            model = expected_outstanding(state, route, role)
            assert conn.outstanding == model
            check_step(conn, direction, message, model)


def test_the_model_allows_something_in_every_live_state() -> None:
    # Guard against a model that refuses everything (which the checks above would accept).
    for state in (State.IDLE, State.CONNECTING, State.CONTROL, State.OPEN, State.TRACE):
        allowed = [
            (role, m)
            for role in Role
            for cls in ALL_TYPES
            for m in representatives(cls)
            if cls is not Goodbye and legal(state, role, m, dict(OPEN_OUTSTANDING))
        ]
        assert allowed, state


# --- the same with Hypothesis choosing the fields ------------------------------------------------

rids = st.one_of(st.sampled_from([1, 2, 3, 4]), st.integers(min_value=0, max_value=2**64 - 1))
statuses = st.one_of(
    st.sampled_from([0, 0x102, 0x4000_0000, 0x8000_0005, 0xC000_0034, 0xC01C_0020]),
    st.integers(min_value=0, max_value=0xFFFF_FFFF),
)
payloads = st.binary(max_size=64)
u32 = st.integers(min_value=0, max_value=0xFFFF_FFFF)

MESSAGE_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    Connect: st.builds(Connect, st.integers(-2, 3), st.text(max_size=20), payloads, u32),
    SendRequest: st.builds(SendRequest, rids, payloads, u32),
    GetRequest: st.builds(GetRequest, rids, u32),
    ReplyRequest: st.builds(ReplyRequest, rids, st.integers(0, 2**64 - 1), statuses, payloads),
    GetCancel: st.builds(GetCancel, rids),
    Attach: st.builds(Attach, st.integers(-2, 3), payloads, u32),
    ConnectResult: st.builds(ConnectResult, st.integers(0, 3), statuses, u32),
    SendResult: st.builds(SendResult, rids, statuses, payloads),
    GetResult: st.builds(GetResult, rids, statuses, u32, u32, payloads, u32),
    ReplyResult: st.builds(ReplyResult, rids, statuses),
    Goodbye: st.builds(Goodbye, statuses, st.text(max_size=20)),
    Control: st.builds(
        Control,
        st.integers(-2, 3),
        st.sampled_from(["ports", "send", "disconnect", "unload", "bogus"]),
        st.text(max_size=20),
        st.one_of(st.none(), st.integers(0, 2**64 - 1)),
        payloads,
        st.one_of(st.none(), u32),
        st.one_of(st.none(), st.floats(0, 10)),
    ),
    ControlResult: st.builds(ControlResult, st.integers(0, 3), statuses, st.text(max_size=20)),
    Disconnected: st.builds(Disconnected, statuses),
    Section: st.builds(Section, rids, u32, payloads),
    Trace: st.builds(
        Trace,
        st.integers(-2, 3),
        st.text(max_size=20),
        st.one_of(st.none(), st.integers(0, 2**64 - 1)),
        st.lists(st.sampled_from(["send", "get", "bogus"]), max_size=3).map(tuple),
        u32,
    ),
    TraceEvent: st.builds(
        TraceEvent,
        st.sampled_from(["start", "send", "message", "dropped"]),
        st.floats(0, 2e9),
        st.text(max_size=20),
        st.integers(0, 2**64 - 1),
        status=st.one_of(st.none(), statuses),
        data=payloads,
    ),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())


# Each example already covers all 200 pairs, so fewer examples suffice.
@settings(SETTINGS, max_examples=50)
@given(
    fields=st.fixed_dictionaries(MESSAGE_STRATEGIES),
    closed_route=st.sampled_from(CLOSED_ROUTES),
    error_route=st.sampled_from(ERROR_ROUTES),
)
def test_every_pair_with_drawn_fields(
    fields: dict[type, Any], closed_route: str, error_route: str
) -> None:
    # Each example visits every (state, role, direction, type) with one drawn message per type.
    for state, role, direction, cls in PAIRS:
        route = {State.CLOSED: closed_route, State.ERROR: error_route}.get(state, "")
        conn = drive(role, state, route)
        check_step(conn, direction, fields[cls], expected_outstanding(state, route, role))


@SETTINGS
@given(
    state=st.sampled_from(State),
    role=st.sampled_from(Role),
    route=st.data(),
    steps=st.lists(st.tuples(st.sampled_from(["send", "receive"]), messages), max_size=12),
)
def test_sequences_follow_the_model(
    state: State, role: Role, route: st.DataObject, steps: list[tuple[str, Any]]
) -> None:
    chosen = ""
    if state is State.CLOSED:
        chosen = route.draw(st.sampled_from(CLOSED_ROUTES))
    elif state is State.ERROR:
        chosen = route.draw(st.sampled_from(ERROR_ROUTES))
    if state is State.DRAINING:
        role = Role.KERNEL
    conn = drive(role, state, chosen)
    model = expected_outstanding(state, chosen, role)
    for direction, message in steps:
        check_step(conn, direction, message, model)
        if conn.state is State.ERROR:
            check_error_is_sticky(conn)


# --- conversations: the receiver sees exactly what was sent --------------------------------------

request_kinds = st.sampled_from([SendRequest, GetRequest, ReplyRequest])


@st.composite
def conversations(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=8, unique=True))
    requests: list[Any] = []
    for rid in ids:
        kind = draw(request_kinds)
        if kind is SendRequest:
            requests.append(SendRequest(rid, draw(st.binary(max_size=300)), draw(u32)))
        elif kind is GetRequest:
            requests.append(GetRequest(rid, draw(u32)))
        else:
            requests.append(
                ReplyRequest(rid, draw(st.integers(0, 2**64 - 1)), draw(statuses), draw(payloads))
            )
    order = draw(st.permutations(range(len(requests))))
    results: list[Any] = []
    for i in order:
        request = requests[i]
        if isinstance(request, SendRequest):
            results.append(SendResult(request.rid, draw(statuses), draw(st.binary(max_size=300))))
        elif isinstance(request, GetRequest):
            results.append(
                GetResult(
                    request.rid,
                    draw(statuses),
                    draw(st.integers(0, 2**64 - 1)),
                    draw(u32),
                    draw(st.binary(max_size=300)),
                    draw(u32),
                )
            )
        else:
            results.append(ReplyResult(request.rid, draw(statuses)))
    return {
        "connect": Connect(1, draw(st.text(max_size=40)), draw(st.binary(max_size=100)), draw(u32)),
        "requests": requests,
        "cancels": [
            GetCancel(draw(st.integers(0, 2**64 - 1))) for _ in range(draw(st.integers(0, 3)))
        ],
        "results": results,
        "goodbye": draw(st.none() | st.builds(Goodbye, statuses, st.text(max_size=20))),
        "chunk": draw(st.integers(1, 64)),
    }


def states(pair: WirePair) -> tuple[State, State]:
    return pair.user.state, pair.kernel.state


def deliver(receiver: WireConnection, data: bytes, chunk: int) -> list[Any]:
    events: list[Any] = []
    for i in range(0, len(data), chunk):
        receiver.receive_data(data[i : i + chunk])
        events += drain(receiver)
    return events


@SETTINGS
@given(conversations())
def test_conversation_receiver_sees_what_was_sent(conv: dict[str, Any]) -> None:
    pair = WirePair()
    chunk = conv["chunk"]
    assert deliver(pair.kernel, pair.user.send(conv["connect"]), chunk) == [conv["connect"]]
    ok = ConnectResult(1, 0, 1 << 20)
    assert deliver(pair.user, pair.kernel.send(ok), chunk) == [ok]

    # All requests (and some cancels) in one batch, delivered in chunks.
    out = bytearray()
    for message in conv["requests"] + conv["cancels"]:
        pair.user.send_into(message, out)
    received = deliver(pair.kernel, bytes(out), chunk)
    assert received == conv["requests"] + conv["cancels"]
    assert [type(m) for m in received] == [type(m) for m in conv["requests"] + conv["cancels"]]
    expected_table = {r.rid: REQUESTS[type(r)] for r in conv["requests"]}
    assert pair.user.outstanding == pair.kernel.outstanding == expected_table

    # Results in a drawn order, one write each.
    for result in conv["results"]:
        assert deliver(pair.user, pair.kernel.send(result), chunk) == [result]
        del expected_table[result.rid]
        assert pair.user.outstanding == pair.kernel.outstanding == expected_table
    assert states(pair) == (State.OPEN, State.OPEN)

    if conv["goodbye"] is not None:
        assert deliver(pair.user, pair.kernel.send(conv["goodbye"]), chunk) == [conv["goodbye"]]
        assert states(pair) == (State.CLOSED, State.CLOSED)
    pair.user.receive_data(b"")
    pair.kernel.receive_data(b"")
    assert drain(pair.user) == [EOF]
    assert drain(pair.kernel) == [EOF]
    assert states(pair) == (State.CLOSED, State.CLOSED)


@SETTINGS
@given(data=st.binary(max_size=2048), rid=st.integers(0, 2**64 - 1), mid=st.integers(0, 2**64 - 1))
def test_request_and_result_round_trip(data: bytes, rid: int, mid: int) -> None:
    pair = WirePair()
    pair.user_sends(Connect(1, "\\P"))
    pair.kernel_sends(ConnectResult(1, 0))
    send: Any
    [send] = pair.user_sends(SendRequest(rid, data, len(data)))
    assert send.data == data and send.rid == rid
    [result] = pair.kernel_sends(SendResult(rid, 0, data[::-1]))
    assert result == SendResult(rid, 0, data[::-1])
    [get] = pair.user_sends(GetRequest(rid, len(data) + 16))
    assert get == GetRequest(rid, len(data) + 16)
    message = GetResult(rid, 0, mid, len(data) + 16, data)
    assert pair.kernel_sends(message) == [message]
    reply = ReplyRequest(rid, mid, 0, data)
    assert pair.user_sends(reply) == [reply]
    assert pair.kernel_sends(ReplyResult(rid, 0)) == [ReplyResult(rid, 0)]
    assert pair.user.outstanding == pair.kernel.outstanding == {}
