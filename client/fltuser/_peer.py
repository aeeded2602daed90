"""Who serves a socket: the peer credentials both client flavours check (protocol §1).

Not here: the rule itself (``fltemu.wire.is_trusted_peer``), the error (``_base``).
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Final

__all__ = ["peer_uid"]

_PEERCRED: Final = struct.Struct("3i")


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED), ``None``
    where the platform has no peer credentials, or -1 when reading them failed (a uid that
    ``is_trusted_peer`` refuses: the check fails closed)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return -1
    return int(_PEERCRED.unpack(raw)[1])
