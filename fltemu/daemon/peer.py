"""Who is at the other end of a Unix socket: SO_PEERCRED, where the OS has it.

The daemon uses it to judge clients (port security, control commands). Not here: the
rules (``kernel.security``, ``wire.is_trusted_peer``), the clients' own check of the daemon
(``fltuser``).
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Final

from ..kernel import ProcessInfo

__all__ = ["socket_peer"]

_PEERCRED: Final = struct.Struct("3i")


def socket_peer(sock: socket.socket | None) -> ProcessInfo:
    """The peer's pid, uid and gid; all ``None`` where the platform does not say."""
    if sock is not None and sys.platform.startswith("linux"):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        except OSError:
            pass
        else:
            pid, uid, gid = _PEERCRED.unpack(raw)
            return ProcessInfo(pid, uid, gid)
    return ProcessInfo(None, None, None)
