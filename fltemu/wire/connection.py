"""WireConnection: the sans-IO protocol state machine shared by the daemon and both clients.

Bytes in, messages out: ``receive_data`` takes what the socket read (``b""`` for EOF) and
``next_event`` hands out decoded messages; ``send`` turns a message into the bytes to write.
It never reads, writes, sleeps or logs. Not here: waiting (each adapter maps request ids to
its own futures), and port semantics (``fltemu.kernel``).

Theory of operation
-------------------
One connection carries one port handle. Its two ends are ``Role.USER`` (the client library,
which plays fltlib) and ``Role.KERNEL`` (the daemon, which plays fltmgr). Both ends share one
``State``::

    IDLE --USER sends Connect or Attach--> CONNECTING --KERNEL sends ConnectResult--> OPEN
                                                    (failure status)  --> CLOSED
    OPEN: USER sends SendRequest / GetRequest / ReplyRequest / GetCancel,
          KERNEL sends SendResult / GetResult / ReplyResult.
    IDLE --USER sends Control--> CONTROL --KERNEL sends ControlResult--> CLOSED
    IDLE --USER sends Trace--> TRACE: KERNEL sends TraceEvent, until either end closes
    OPEN --EOF from USER, requests outstanding--> DRAINING: KERNEL sends only the results
          of those requests (and Section for a pending send), then Goodbye or its own close
    any --KERNEL sends Goodbye--> CLOSED (ERROR stays ERROR)        any other --EOF--> CLOSED
    any --illegal input--> ERROR

``CLOSED`` and ``ERROR`` are sticky: every later send or receive raises. An illegal message
received is a ``RemoteProtocolError`` (with a ``status_hint`` for the Goodbye the daemon sends);
an illegal message we try to send is a ``LocalProtocolError``.

Requests: every request carries a request id (``rid``) chosen by the USER end, unique among
its outstanding requests. Both ends keep the table of outstanding ids, keyed by id, valued by
the result type that answers it: the USER end raises on a result for an id it is not waiting
for or of the wrong type, the KERNEL end on a request id reused while still outstanding, and
refuses to send a result for an id nobody asked. ``GetCancel`` refers to an outstanding
GetRequest and has no answer of its own; one that arrives after its getter completed is
harmless, so it is not checked against the table. Windows message ids (FILTER_MESSAGE_HEADER
``MessageId``) are port semantics, not wire semantics: a reply to an unknown message id is an
ordinary ReplyResult with ERROR_FLT_NO_WAITER_FOR_REPLY, never a protocol error.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final, NoReturn

import msgspec

from ..errors import LocalProtocolError, RemoteProtocolError
from ..status import NtStatus, nt_success
from .framing import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FrameReader,
    max_frame_bytes,
    write_frame,
)
from .messages import (
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
    KernelMessage,
    ReplyRequest,
    ReplyResult,
    Section,
    SendRequest,
    SendResult,
    Trace,
    TraceEvent,
    UserMessage,
)

__all__ = ["EOF", "NEED_DATA", "Role", "State", "WireConnection"]


class Role(enum.Enum):
    """Which end of a connection we are."""

    # Members are singletons compared by identity; hashing by identity (in C) instead of
    # Enum's Python-level __hash__ halves the cost of the transition-table lookups.
    __hash__ = object.__hash__

    USER = "user"
    KERNEL = "kernel"


class State(enum.Enum):
    """The connection's phase, the same at both ends."""

    __hash__ = object.__hash__  # see Role

    IDLE = "idle"
    CONNECTING = "connecting"
    CONTROL = "control"
    TRACE = "trace"
    OPEN = "open"
    #: The user half-closed (CloseHandle) with requests outstanding: the kernel may still
    #: answer them, as fltmgr's cleanup lets the MessageNotify in flight finish (§2.4).
    DRAINING = "draining"
    CLOSED = "closed"
    ERROR = "error"


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: ``next_event`` returns this when no complete message is buffered.
NEED_DATA: Final = _NeedData()

_U = Role.USER
_K = Role.KERNEL
_OPEN: Final = State.OPEN

# (state, sender, message type) -> next state. Absent pairs are illegal.
_TRANSITIONS: Final[dict[tuple[State, Role, type], State]] = {
    (State.IDLE, _U, Connect): State.CONNECTING,
    (State.IDLE, _U, Attach): State.CONNECTING,
    (State.IDLE, _U, Control): State.CONTROL,
    (State.CONTROL, _K, ControlResult): State.CLOSED,
    (State.IDLE, _U, Trace): State.TRACE,
    (State.TRACE, _K, TraceEvent): State.TRACE,
    (State.CONNECTING, _K, ConnectResult): State.OPEN,  # CLOSED when the status is a failure
    (State.OPEN, _U, SendRequest): State.OPEN,
    (State.OPEN, _U, GetRequest): State.OPEN,
    (State.OPEN, _U, ReplyRequest): State.OPEN,
    (State.OPEN, _U, GetCancel): State.OPEN,
    (State.OPEN, _K, SendResult): State.OPEN,
    (State.OPEN, _K, GetResult): State.OPEN,
    (State.OPEN, _K, ReplyResult): State.OPEN,
    # Only to clients that asked for them in Connect.options (protocol §10, §7.1).
    (State.OPEN, _K, Disconnected): State.OPEN,
    (State.OPEN, _K, Section): State.OPEN,
    # After the user's EOF (results are checked against the table in _process).
    (State.DRAINING, _K, Section): State.DRAINING,
}

# Which result answers which request.
_RESULT_FOR: Final[dict[type, type]] = {
    SendRequest: SendResult,
    GetRequest: GetResult,
    ReplyRequest: ReplyResult,
}
_RESULT_TYPES: Final = frozenset(_RESULT_FOR.values())

# The same table nested, state -> sender -> type: the hot path looks up without building a
# tuple key per message.
_RULES: Final[dict[State, dict[Role, dict[type, State]]]] = {
    state: {role: {} for role in Role} for state in State
}
for (_state, _role, _cls), _next in _TRANSITIONS.items():
    _RULES[_state][_role][_cls] = _next

_encoder: Final = msgspec.msgpack.Encoder()


class WireConnection:
    """One end of a fltemu wire connection. See the module docstring for the rules.

    Args:
        role: which end we are.
        max_message_bytes: the payload limit; frames over ``max_frame_bytes`` of it are
            refused in both directions. The USER end adopts the limit the daemon announces
            in its ConnectResult.
    """

    __slots__ = (
        "_events",
        "_max_frame_bytes",
        "_next_rid",
        "_outstanding",
        "_pending_error",
        "_reader",
        "max_message_bytes",
        "our_role",
        "state",
        "their_role",
    )

    def __init__(self, role: Role, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.our_role = role
        self.their_role = _K if role is _U else _U
        self.state = State.IDLE
        self.max_message_bytes = max_message_bytes
        self._max_frame_bytes = max_frame_bytes(max_message_bytes)
        decoder = msgspec.msgpack.Decoder(KernelMessage if role is _U else UserMessage)
        self._reader = FrameReader(decoder.decode, self._max_frame_bytes)
        self._events: deque[object] = deque()
        self._pending_error: RemoteProtocolError | None = None
        self._outstanding: dict[int, type] = {}
        self._next_rid = 1

    def __repr__(self) -> str:
        return (
            f"<WireConnection {self.our_role.value} {self.state.value} "
            f"outstanding={len(self._outstanding)}>"
        )

    # --- requests --------------------------------------------------------------------------

    def next_request_id(self) -> int:
        """A fresh request id for a USER-side request (ids start at 1 and never repeat)."""
        rid = self._next_rid
        self._next_rid = rid + 1
        return rid

    @property
    def outstanding(self) -> dict[int, type]:
        """Request ids still waiting for their result, with the result type that answers each."""
        return self._outstanding

    def set_max_message_bytes(self, max_message_bytes: int) -> None:
        """Change the payload limit (the USER end calls it with the daemon's announced limit)."""
        self.max_message_bytes = max_message_bytes
        self._max_frame_bytes = self._reader.max_frame_bytes = max_frame_bytes(max_message_bytes)

    # --- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed its end (EOF).

        Messages become available through ``next_event``. A protocol violation is raised by
        ``next_event`` once the messages before it have been handed out.
        """
        if self._pending_error is not None or self.state is State.ERROR:
            return
        if not data:
            if self._reader.buffered:
                self._pending_error = RemoteProtocolError(
                    f"connection closed in the middle of a frame "
                    f"({self._reader.buffered} bytes buffered)"
                )
                # The rest of that frame will never come: free what it had (up to 16 MiB).
                self._reader.clear()
            else:
                self._events.append(_EOF)
            return
        try:
            self._reader.feed(data, self._events.append)
        except RemoteProtocolError as exc:
            # Kept without its traceback: its frames hold this connection (a cycle that
            # only a garbage collection would free, with all it pins) and the bytes read.
            self._pending_error = RemoteProtocolError(str(exc), status_hint=exc.status_hint)
            self._reader.clear()

    def next_event(self) -> object:
        """The next message received, ``NEED_DATA``, or ``EOF`` once after the peer closed.

        Raises:
            RemoteProtocolError: the peer broke the protocol; the state is now ERROR.
        """
        if self._events:
            event = self._events.popleft()
            if event is _EOF:
                if self.state is _OPEN and self.our_role is _K and self._outstanding:
                    self.state = State.DRAINING
                else:
                    self.state = State.CLOSED
                return event
            try:
                self._process(self.their_role, event)
            except LocalProtocolError as exc:
                # Raised internally as local, converted here at the one inbound entry point.
                self.state = State.ERROR
                # Drop what was queued behind it (a queued EOF would turn ERROR into CLOSED),
                # as receive_data drops everything that arrives after the failure.
                self._events.clear()
                self._reader.clear()
                raise RemoteProtocolError(str(exc), status_hint=exc.status_hint) from None
            return event
        error = self._pending_error
        if error is not None:
            self.state = State.ERROR
            self._events.clear()
            # A copy each time: the one kept here never gets a traceback, whose frames
            # would hold this connection in a reference cycle.
            raise RemoteProtocolError(str(error), status_hint=error.status_hint)
        if self.state is State.ERROR:
            raise RemoteProtocolError("the connection already failed")
        return NEED_DATA

    # --- sending ---------------------------------------------------------------------------

    def send(self, message: object) -> bytes:
        """Return the bytes of one frame carrying ``message``.

        Raises:
            LocalProtocolError: the message is illegal now; the state becomes ERROR.
        """
        out = bytearray()
        self.send_into(message, out)
        return bytes(out)

    def send_into(self, message: object, out: bytearray) -> None:
        """Append one frame carrying ``message`` to ``out`` (to batch several in one write).

        Raises:
            LocalProtocolError: the message is illegal now; the state becomes ERROR.
        """
        state = self.state
        try:
            self._process(self.our_role, message)
        except LocalProtocolError:
            self.state = State.ERROR
            raise
        start = len(out)
        try:
            size = write_frame(_encoder, message, out)
        except BaseException:
            # A field msgspec cannot encode (a caller's bad argument): nothing was sent, so
            # leave no partial frame behind and undo the bookkeeping; the connection lives on.
            del out[start:]
            self.state = state
            cls = type(message)
            if cls in _RESULT_FOR:
                del self._outstanding[message.rid]  # type: ignore[attr-defined]
            elif cls in _RESULT_TYPES:
                self._outstanding[message.rid] = cls  # type: ignore[attr-defined]
            raise
        if size > self._max_frame_bytes:
            del out[len(out) - size - 4 :]
            self.state = State.ERROR
            raise LocalProtocolError(
                f"frame of {size} bytes is over the limit", status_hint=_TOO_BIG
            )

    def send_failed(self) -> None:
        """Tell the connection that writing failed; it cannot be used any more."""
        self.state = State.ERROR

    # --- the rules -------------------------------------------------------------------------

    def _process(self, sender: Role, message: object) -> None:
        # Raises LocalProtocolError for any violation; callers convert on the inbound path.
        state = self.state
        cls = type(message)
        if state is _OPEN:
            # The traffic of an open connection, checked without the general table: a request
            # from the user registers its id, a result from the kernel retires one.
            if sender is _U:
                result_type = _RESULT_FOR.get(cls)
                if result_type is not None:
                    rid = message.rid  # type: ignore[attr-defined]
                    if rid in self._outstanding:
                        raise LocalProtocolError(f"request id {rid} reused while still outstanding")
                    self._outstanding[rid] = result_type
                    return
            elif cls in _RESULT_TYPES:
                rid = message.rid  # type: ignore[attr-defined]
                expected = self._outstanding.pop(rid, None)
                if expected is cls:
                    return
                self._retire_failed(rid, cls, expected)
        if state is State.DRAINING and sender is _K and cls in _RESULT_TYPES:
            # After the user's EOF: answers to what it asked before, nothing new.
            rid = message.rid  # type: ignore[attr-defined]
            expected = self._outstanding.pop(rid, None)
            if expected is not cls:
                self._retire_failed(rid, cls, expected)
            return
        if cls is Goodbye and sender is _K:
            # The daemon may say goodbye in any state, even after a failure, to tell the
            # peer why it is being disconnected.
            if state is not State.ERROR:
                self.state = State.CLOSED
            return
        new_state = _RULES[state][sender].get(cls)
        if new_state is None:
            if state is State.ERROR or state is State.CLOSED:
                raise LocalProtocolError(f"{cls.__name__} on a {state.value} connection")
            raise LocalProtocolError(
                f"{sender.value} may not send {cls.__name__} while the connection is {state.value}"
            )
        # Requests and results are legal only on an open connection, from their own end: the
        # fast path above has taken every legal one.
        if cls is Section:
            rid = message.rid  # type: ignore[attr-defined]
            if self._outstanding.get(rid) is not SendResult:
                raise LocalProtocolError(
                    f"Section for request id {rid}, which is not a pending send"
                )
        elif cls is ConnectResult:
            if not nt_success(message.status):  # type: ignore[attr-defined]
                new_state = State.CLOSED
        elif (
            cls is Connect or cls is Control or cls is Trace or cls is Attach
        ) and message.version < 1:  # type: ignore[attr-defined]
            raise LocalProtocolError("protocol versions start at 1")
        self.state = new_state

    def _retire_failed(self, rid: int, cls: type, expected: type | None) -> NoReturn:
        # A result for an id that is not outstanding, or of the wrong type: put back what was
        # popped and raise.
        if expected is not None:
            self._outstanding[rid] = expected
        raise LocalProtocolError(
            f"{cls.__name__} for request id {rid}, which "
            + ("is not outstanding" if expected is None else f"wants {expected.__name__}")
        )


class _Eof:
    __slots__ = ()

    def __repr__(self) -> str:
        return "EOF"


#: ``next_event`` returns this once when the peer has closed its end cleanly.
EOF: Final = _Eof()
_EOF: Final = EOF

_TOO_BIG: Final = NtStatus.STATUS_INSUFFICIENT_RESOURCES
