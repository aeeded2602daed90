"""The messages of the fltemu wire protocol, as msgspec Structs.

Every message is a msgpack array whose first element is an integer tag; fields follow in
declaration order. New fields are only ever appended, with defaults, so an older decoder
ignores them and a newer one fills them in. ``docs/protocol.md`` is the prose version.
Not here: framing (``framing``) and who may send what when (``connection``).
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

__all__ = [
    "ATTACH_TOKEN_BYTES",
    "OPTION_ATTACH",
    "OPTION_DISCONNECT_NOTICE",
    "OPTION_SECTIONS",
    "OUT_ADDRESS_MODULUS",
    "TRACE_KINDS",
    "PROTOCOL_VERSION",
    "WINDOWS_OPTIONS",
    "Attach",
    "Connect",
    "ConnectResult",
    "ConnectionInfo",
    "Control",
    "ControlResult",
    "DaemonInfo",
    "Disconnected",
    "FilterInfo",
    "GetCancel",
    "GetRequest",
    "GetResult",
    "Goodbye",
    "KernelMessage",
    "PortInfo",
    "ReplyRequest",
    "ReplyResult",
    "Section",
    "SendRequest",
    "SendResult",
    "Trace",
    "TraceEvent",
    "UserMessage",
]

#: The protocol version this code speaks. The daemon accepts exactly this version; a client
#: that offers another gets STATUS_REVISION_MISMATCH and the connection is closed.
PROTOCOL_VERSION: Final = 1

#: The bits of ``Connect.options`` that are Windows' ``dwOptions`` (FLT_PORT_FLAG_SYNC_HANDLE).
WINDOWS_OPTIONS: Final = 0x0000_0001
#: ``Connect.options`` bits above those: what the client can take besides version 1's
#: messages. A client sets them only if it handles the messages they enable; the daemon sends
#: those messages only to clients that set them, so older clients and daemons are unaffected.
#: ``Disconnected`` when the filter ends the connection (protocol §10).
OPTION_DISCONNECT_NOTICE: Final = 0x8000_0000
#: ``Section`` frames for the section handles in MessageNotify's output (protocol §7.1).
OPTION_SECTIONS: Final = 0x4000_0000
#: An attach token in the ConnectResult, so that a second socket of the same process can
#: carry this connection's calls too (``Attach``, protocol §5b).
OPTION_ATTACH: Final = 0x2000_0000

#: Bytes of an attach token: random, so that it cannot be guessed (protocol §5b).
ATTACH_TOKEN_BYTES: Final = 16


#: ``SendRequest.out_address`` is the output buffer's address modulo this: its low 8 bits
#: answer every alignment check up to 256 bytes the way the real pointer would, and the
#: checks Microsoft's samples make need at most 8 (sizeof(PVOID), sizeof(HANDLE)).
OUT_ADDRESS_MODULUS: Final = 256


#: An unsigned 32-bit integer: statuses (NTSTATUS values are sent unsigned), ULONG sizes.
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
#: An unsigned 64-bit integer: request ids and message ids (ULONGLONG). msgpack integers
#: end at 2**64 - 1 and msgspec bounds must fit an int64, so only the sign is checked.
U64 = Annotated[int, msgspec.Meta(ge=0)]


class _Message(msgspec.Struct, frozen=True, array_like=True):
    pass


# --- user → kernel ----------------------------------------------------------------------------


class Connect(_Message, frozen=True, tag=1):
    """FilterConnectCommunicationPort: the first frame of a port connection (the handshake)."""

    version: U32
    port_name: str
    context: bytes = b""
    options: U32 = 0


class SendRequest(_Message, frozen=True, tag=2):
    """FilterSendMessage: ``data`` is the input buffer, ``out_size`` the output buffer size.

    ``out_address`` is ``lpOutBuffer`` modulo OUT_ADDRESS_MODULUS, for MessageNotify's
    alignment checks (protocol §7.1); 0 (aligned) when the client does not know the address,
    as the Python client does not.
    """

    rid: U64
    data: bytes
    out_size: U32
    out_address: Annotated[int, msgspec.Meta(ge=0, lt=OUT_ADDRESS_MODULUS)] = 0


class GetRequest(_Message, frozen=True, tag=3):
    """FilterGetMessage: parks a getter with a buffer of ``buffer_size`` bytes (header included)."""

    rid: U64
    buffer_size: U32


class ReplyRequest(_Message, frozen=True, tag=4):
    """FilterReplyMessage: ``status`` and ``message_id`` of the FILTER_REPLY_HEADER, then data."""

    rid: U64
    message_id: U64
    status: U32
    data: bytes


class GetCancel(_Message, frozen=True, tag=5):
    """CancelIoEx for one pending get: withdraw getter ``rid`` if it is still pending.

    It has no answer of its own: the getter's GetResult says what happened (STATUS_CANCELLED,
    or the message if one was already on its way).
    """

    rid: U64


class Attach(_Message, frozen=True, tag=8):
    """The first frame of a second socket for an open connection (protocol §5b).

    ``token`` is the ``attach_token`` of that connection's ConnectResult. The answer is a
    ConnectResult; once it succeeds, sends, replies and gets on this socket are calls on
    the same handle. ``options`` takes the capability bits of Connect.options.
    """

    version: U32
    token: bytes
    options: U32 = 0


class Control(_Message, frozen=True, tag=6):
    """A control command: the first and only request of a control connection.

    ``command`` is ``status`` (is the daemon ready: ``ControlResult.daemon``), ``ports``
    (list filters, ports and connections), ``send`` (FltSendMessage
    of ``data`` to connection ``connection`` of port ``target``, or its oldest connection),
    ``disconnect`` (FltCloseClientPort of that connection, or of all the port's connections)
    or ``unload`` (FltUnregisterFilter of filter ``target``). Only root and the daemon's user
    may send it.
    """

    version: U32
    command: str
    target: str = ""
    connection: U64 | None = None
    data: bytes = b""
    reply_length: U32 | None = None
    timeout: Annotated[float, msgspec.Meta(ge=0)] | None = None


#: The kinds of events a trace reports (``Trace.kinds``, ``TraceEvent.kind``), in the order
#: of a message's life.
TRACE_KINDS: Final = (
    "connect",
    "disconnect",
    "send",
    "get",
    "message",
    "deliver",
    "message_done",
    "reply",
)


class Trace(_Message, frozen=True, tag=7):
    """Start a trace connection: the first and only request of a connection that then receives
    a ``TraceEvent`` for each port operation, until either end closes it.

    ``port`` (exact name) and ``connection`` (id) narrow the events to one port or one
    connection; ``kinds`` to some kinds (empty: all). ``preview_bytes`` is how many leading
    bytes of each payload an event carries. Only root and the daemon's user may send it.
    """

    version: U32
    port: str = ""
    connection: U64 | None = None
    kinds: tuple[str, ...] = ()
    preview_bytes: U32 = 64


# --- kernel → user ----------------------------------------------------------------------------


class ConnectResult(_Message, frozen=True, tag=16):
    """The answer to Connect or Attach. Anything but success is followed by the daemon
    closing. ``attach_token`` is set when Connect.options asked for one (OPTION_ATTACH)."""

    version: U32
    status: U32
    max_message_bytes: U64 = 0
    attach_token: bytes = b""


class SendResult(_Message, frozen=True, tag=17):
    """The answer to SendRequest: the MessageNotify status and ``lpBytesReturned`` bytes."""

    rid: U64
    status: U32
    data: bytes = b""


class GetResult(_Message, frozen=True, tag=18):
    """The completion of a GetRequest.

    On success ``message_id`` and ``reply_length`` are the FILTER_MESSAGE_HEADER fields and
    ``data`` the message. On STATUS_BUFFER_TOO_SMALL ``required_size`` is the buffer size the
    message needs (its length + 16).
    """

    rid: U64
    status: U32
    message_id: U64 = 0
    reply_length: U32 = 0
    data: bytes = b""
    required_size: U64 = 0


class ReplyResult(_Message, frozen=True, tag=19):
    """The answer to ReplyRequest."""

    rid: U64
    status: U32


class Goodbye(_Message, frozen=True, tag=20):
    """The daemon's last frame before it closes a connection it cannot continue."""

    status: U32
    reason: str = ""


class Disconnected(_Message, frozen=True, tag=22):
    """The filter ended this connection (FltCloseClientPort, unload); the socket stays open
    and every later request is answered with ``status`` (STATUS_PORT_DISCONNECTED). Sent once,
    only to clients whose Connect set OPTION_DISCONNECT_NOTICE."""

    status: U32


class Section(_Message, frozen=True, tag=23):
    """A section handle in the output of the pending SendRequest ``rid``: the 8 bytes at
    ``offset`` of its SendResult's data stand for a section object of ``data``, opened in the
    caller's process (ZwCreateSection + ObOpenObjectByPointer). Sent before that SendResult,
    only to clients whose Connect set OPTION_SECTIONS."""

    rid: U64
    offset: U32
    data: bytes


class TraceEvent(_Message, frozen=True, tag=24):
    """One event of a trace connection (protocol §17.2).

    ``kind`` is ``start`` (the first event: tracing is on; ``text`` says what is traced),
    ``connect`` (FilterConnectCommunicationPort: ``status``, ``size`` of the context),
    ``disconnect`` (``text`` says who ended it), ``send`` (FilterSendMessage: ``size`` in,
    ``buffer`` the output buffer; ``status`` and ``reply_size`` out, ``latency`` of
    MessageNotify), ``get`` (FilterGetMessage issued with a ``buffer``-byte buffer; ``status``
    only when it failed at once), ``message`` (FltSendMessage started: ``size``, ``buffer``
    the reply length or ``None``, ``timeout``), ``message_done`` (its end: ``status``,
    ``message_id``, ``reply_size``, ``latency``), ``reply`` (FilterReplyMessage of
    ``message_id``: ``size``, ``reply_status`` the user's status, ``status`` the result) or
    ``dropped`` (``count`` events were not sent because this reader was too slow).
    ``data`` holds the first bytes of the payload. Times are seconds.
    """

    kind: str
    time: float
    port: str = ""
    connection: U64 = 0
    pid: int | None = None
    uid: int | None = None
    status: U32 | None = None
    message_id: U64 = 0
    size: U64 = 0
    buffer: U64 | None = None
    reply_size: U64 | None = None
    reply_status: U32 | None = None
    timeout: float | None = None
    latency: float | None = None
    data: bytes = b""
    count: U64 = 0
    text: str = ""


class DaemonInfo(msgspec.Struct, frozen=True):
    """What ``status`` tells about the daemon (a map on the wire, for readable JSON)."""

    version: str
    pid: int
    uid: int
    address: str
    loop: str
    ready: bool
    started: float
    filters: int
    ports: int
    connections: int


class ConnectionInfo(msgspec.Struct, frozen=True):
    """One connection in a ``ports`` listing (a map on the wire, for readable JSON)."""

    id: int
    pid: int | None
    uid: int | None
    gid: int | None
    state: str
    pending_getters: int
    blocked_senders: int
    awaiting_reply: int
    sends_from_user: int
    messages_delivered: int
    messages_timed_out: int


class PortInfo(msgspec.Struct, frozen=True):
    """One server port in a ``ports`` listing."""

    name: str
    state: str
    max_connections: int
    connection_count: int
    connections: tuple[ConnectionInfo, ...] = ()


class FilterInfo(msgspec.Struct, frozen=True):
    """One filter in a ``ports`` listing."""

    name: str
    state: str
    ports: tuple[PortInfo, ...] = ()


class ControlResult(_Message, frozen=True, tag=21):
    """The answer to Control; the daemon closes the connection after it.

    ``status`` is the command's NTSTATUS (for ``send``, what FltSendMessage returned),
    ``message`` explains a failure, ``reply`` is ``send``'s reply bytes, ``filters`` the
    ``ports`` listing, ``count`` how many connections ``disconnect`` closed and ``daemon``
    the ``status`` answer.
    """

    version: U32
    status: U32
    message: str = ""
    reply: bytes | None = None
    filters: tuple[FilterInfo, ...] = ()
    count: int = 0
    daemon: DaemonInfo | None = None


UserMessage = (
    Connect | SendRequest | GetRequest | ReplyRequest | GetCancel | Control | Trace | Attach
)
KernelMessage = (
    ConnectResult
    | SendResult
    | GetResult
    | ReplyResult
    | Goodbye
    | ControlResult
    | Disconnected
    | Section
    | TraceEvent
)
