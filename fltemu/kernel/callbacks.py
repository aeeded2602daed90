"""The three port callbacks (connect, disconnect, message notify): their types and invocation.

Callbacks may be plain functions or coroutine functions. They are classified once, when the
port is created (``ports.is_async_callable``), so the hot path does not inspect them again: a
plain MessageNotify runs inline, with no Task; a coroutine one runs in a Task of its own.
Not here: when they are called (``ports``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol, TypeAlias

from .ports import ClientPort
from .process import ProcessInfo

__all__ = [
    "ConnectNotify",
    "ConnectResult",
    "DisconnectNotify",
    "MessageNotify",
    "MessageResult",
    "ProcessInfo",
]


#: What ConnectNotify returns: a status, or a status and the ConnectionPortCookie.
ConnectResult: TypeAlias = "int | tuple[int, object]"
#: What MessageNotify returns: a status, or a status and the output bytes.
MessageResult: TypeAlias = "int | tuple[int, bytes | bytearray | memoryview | None]"


class ConnectNotify(Protocol):
    """PFLT_CONNECT_NOTIFY (§2.3): accept or refuse a connection.

    Return STATUS_SUCCESS, or ``(status, connection_port_cookie)``; a failure status refuses the
    connection and is what the client sees (translated by fltlib's rules). Raising
    ``StatusError`` refuses it with that status.
    """

    def __call__(
        self, client_port: ClientPort, server_port_cookie: object, connection_context: bytes
    ) -> ConnectResult | Awaitable[ConnectResult]: ...


class DisconnectNotify(Protocol):
    """PFLT_DISCONNECT_NOTIFY (§2.4): the connection is gone; call close_client_port here."""

    def __call__(self, connection_port_cookie: object) -> None | Awaitable[None]: ...


class MessageNotify(Protocol):
    """PFLT_MESSAGE_NOTIFY (§2.5): answer a FilterSendMessage.

    Return STATUS_SUCCESS or ``(status, output)``; ``len(output)`` is ReturnOutputBufferLength.
    Raising ``StatusError`` fails the send with its status; any other exception is logged and
    fails it with STATUS_UNSUCCESSFUL.

    A callback that declares a parameter ``output_buffer_address`` (a keyword, with a
    default) also gets the caller's ``OutputBuffer`` address modulo 256, for the alignment
    checks a driver makes with ``IS_ALIGNED(OutputBuffer, n)``: ``address % n`` is what the
    real pointer would give for any n up to 256. It is 0 (aligned) when the client does not
    know its address (the Python client); fltemu's fltlib.dll sends the real low bits
    (protocol §7.1). Callbacks without the parameter are called with three arguments.
    """

    def __call__(
        self, port_cookie: object, input_buffer: bytes, output_buffer_length: int
    ) -> MessageResult | Awaitable[MessageResult]: ...
