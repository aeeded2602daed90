"""The fltemu wire protocol, sans-IO: framing, messages and the connection state machine.

Shared by the daemon and both client flavours. Imports neither asyncio nor socket nor
threading. Not here: ports and their semantics (``fltemu.kernel``), sockets (``fltemu.daemon``,
``fltuser``).
"""

from __future__ import annotations

from .._limits import FILTER_HEADER_BYTES, MAX_CONTEXT_BYTES
from .address import ENV_SOCKET, ENV_TRUST_UID, default_socket_dir, is_trusted_peer, resolve_address
from .connection import EOF, NEED_DATA, Role, State, WireConnection
from .framing import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_HEADER_BYTES,
    FRAME_OVERHEAD_BYTES,
    FrameReader,
    max_frame_bytes,
    write_frame,
)
from .messages import (
    OPTION_DISCONNECT_NOTICE,
    OPTION_SECTIONS,
    OUT_ADDRESS_MODULUS,
    PROTOCOL_VERSION,
    WINDOWS_OPTIONS,
    Connect,
    ConnectionInfo,
    ConnectResult,
    Control,
    ControlResult,
    Disconnected,
    FilterInfo,
    GetCancel,
    GetRequest,
    GetResult,
    Goodbye,
    KernelMessage,
    PortInfo,
    ReplyRequest,
    ReplyResult,
    Section,
    SendRequest,
    SendResult,
    UserMessage,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ENV_SOCKET",
    "ENV_TRUST_UID",
    "EOF",
    "FILTER_HEADER_BYTES",
    "FRAME_HEADER_BYTES",
    "FRAME_OVERHEAD_BYTES",
    "MAX_CONTEXT_BYTES",
    "NEED_DATA",
    "OPTION_DISCONNECT_NOTICE",
    "OPTION_SECTIONS",
    "OUT_ADDRESS_MODULUS",
    "PROTOCOL_VERSION",
    "WINDOWS_OPTIONS",
    "Connect",
    "ConnectResult",
    "ConnectionInfo",
    "Control",
    "ControlResult",
    "Disconnected",
    "FilterInfo",
    "FrameReader",
    "GetCancel",
    "GetRequest",
    "GetResult",
    "Goodbye",
    "KernelMessage",
    "PortInfo",
    "ReplyRequest",
    "ReplyResult",
    "Role",
    "Section",
    "SendRequest",
    "SendResult",
    "State",
    "UserMessage",
    "WireConnection",
    "default_socket_dir",
    "is_trusted_peer",
    "max_frame_bytes",
    "resolve_address",
    "write_frame",
]
