"""What the Filter Manager tells a tracer: one ``TraceRecord`` per port operation.

The kernel model calls ``FilterManager.tracer`` (when it is not ``None``) at each connect,
disconnect, FilterSendMessage, FilterGetMessage, FilterReplyMessage and FltSendMessage. When
nobody traces, the cost is one ``is None`` test per operation. The tracer runs inline, on the
loop, so it must be quick and must not raise: the daemon's only queues the record.
Not here: subscribers, filters, bounded queues and the wire (``fltemu.daemon.trace``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .process import ProcessInfo

__all__ = ["TraceRecord", "Traced", "Tracer", "record"]


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One port operation, as ``fltemu trace`` shows it.

    Attributes:
        kind: ``connect``, ``disconnect``, ``send`` (FilterSendMessage), ``get``
            (FilterGetMessage), ``reply`` (FilterReplyMessage), ``message`` (FltSendMessage
            started) or ``message_done`` (FltSendMessage returned).
        time: wall-clock time (``time.time()``).
        port: the server port's name.
        connection: the connection id (``ClientPort.id``; 0 when no connection was made).
        pid, uid: the user process.
        status: the NTSTATUS of the outcome, when there is one yet.
        message_id: the message id (``message_done``, ``reply``).
        size: payload bytes (the message, the input buffer, the reply, the context).
        buffer: the other side's buffer: FilterSendMessage's output buffer, FilterGetMessage's
            buffer, FltSendMessage's reply length (``None``: no reply wanted).
        reply_size: bytes returned: MessageNotify's output, the reply FltSendMessage received.
        reply_status: the status a FilterReplyMessage carried.
        timeout: FltSendMessage's timeout in seconds (``None``: forever).
        latency: seconds the operation took (MessageNotify; FltSendMessage from start to end).
        data: the payload (not copied: the tracer keeps what it needs).
        text: a few words more (who ended a connection).
    """

    kind: str
    time: float
    port: str
    connection: int = 0
    pid: int | None = None
    uid: int | None = None
    status: int | None = None
    message_id: int = 0
    size: int = 0
    buffer: int | None = None
    reply_size: int | None = None
    reply_status: int | None = None
    timeout: float | None = None
    latency: float | None = None
    data: bytes = b""
    text: str = ""


#: What ``FilterManager.tracer`` holds: called with each record, inline.
Tracer = Callable[[TraceRecord], None]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class Traced(Protocol):
    """What a record is about: a connection (``ClientPort`` is one)."""

    @property
    def id(self) -> int:
        """The connection id."""
        ...

    @property
    def process(self) -> ProcessInfo:
        """Who connected."""
        ...

    @property
    def server_port(self) -> _Named:
        """The server port it was made through (its name is recorded)."""
        ...


def record(kind: str, client_port: Traced, **fields: object) -> TraceRecord:
    """A record of ``kind`` about ``client_port``'s connection, stamped now."""
    process = client_port.process
    return TraceRecord(
        kind,
        time.time(),
        client_port.server_port.name,
        client_port.id,
        process.pid,
        process.uid,
        **fields,  # type: ignore[arg-type]
    )
