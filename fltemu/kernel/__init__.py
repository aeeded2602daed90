"""The kernel object model: the Filter Manager, filters and their communication ports.

This is the API that in-process "filter drivers" use (``Filter.create_communication_port``,
``Filter.send_message``, ...). It holds no sockets: it reaches a connected user-mode process
only through ``Channel``. Not here: the daemon that carries it over a socket
(``fltemu.daemon``), the wire format (``fltemu.wire``).
"""

from __future__ import annotations

from .callbacks import ConnectNotify, DisconnectNotify, MessageNotify
from .channel import Channel
from .manager import Filter, FilterManager, FilterState
from .messaging import SendMessageResult, timeout_from_large_integer
from .namespace import PortNamespace
from .ports import ClientPort, ClientPortState, ServerPort, ServerPortState
from .process import ProcessInfo
from .security import SecurityDescriptor

__all__ = [
    "Channel",
    "ClientPort",
    "ClientPortState",
    "ConnectNotify",
    "DisconnectNotify",
    "Filter",
    "FilterManager",
    "FilterState",
    "MessageNotify",
    "PortNamespace",
    "ProcessInfo",
    "SecurityDescriptor",
    "SendMessageResult",
    "ServerPort",
    "ServerPortState",
    "timeout_from_large_integer",
]
