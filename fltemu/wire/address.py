"""Where the daemon listens: the one resolution rule shared by daemon, clients and CLI.

Reads the environment but performs no I/O. Not here: opening the socket.
"""

from __future__ import annotations

import os
import sys
from typing import Final

__all__ = ["ENV_SOCKET", "WINDOWS_PIPE", "resolve_address"]

#: Environment variable that names the socket when no explicit address is given.
ENV_SOCKET: Final = "FLTEMU_SOCKET"
#: The default address on Windows (a named pipe).
WINDOWS_PIPE: Final = "\\\\.\\pipe\\fltemu"


def resolve_address(address: str | os.PathLike[str] | None = None) -> str:
    """The address to use: ``address``, else ``$FLTEMU_SOCKET``, else
    ``$XDG_RUNTIME_DIR/fltemu.sock``, else ``/tmp/fltemu-<uid>.sock`` (API.md §2).
    """
    if address is not None and str(address):
        return os.fspath(address)
    env = os.environ.get(ENV_SOCKET)
    if env:
        return env
    if sys.platform == "win32":
        return WINDOWS_PIPE
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "fltemu.sock")
    return f"/tmp/fltemu-{os.getuid()}.sock"
