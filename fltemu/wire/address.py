"""Where the daemon listens: the one resolution rule shared by daemon, clients and CLI.

Reads the environment but performs no I/O. Not here: opening the socket.
"""

from __future__ import annotations

import os
import sys
from typing import Final

__all__ = [
    "ENV_SOCKET",
    "ENV_TRUST_UID",
    "WINDOWS_PIPE",
    "default_socket_dir",
    "is_trusted_peer",
    "resolve_address",
]

#: Environment variable that names the socket when no explicit address is given.
ENV_SOCKET: Final = "FLTEMU_SOCKET"
#: Environment variable naming one more uid whose daemon a client may talk to.
ENV_TRUST_UID: Final = "FLTEMU_TRUST_UID"
#: The default address on Windows (a named pipe).
WINDOWS_PIPE: Final = "\\\\.\\pipe\\fltemu"


def resolve_address(address: str | os.PathLike[str] | None = None) -> str:
    """The address to use: ``address``, else ``$FLTEMU_SOCKET``, else
    ``$XDG_RUNTIME_DIR/fltemu.sock``, else ``/tmp/fltemu-<uid>/fltemu.sock`` (protocol §1): a
    private folder, never a bare path in world-writable ``/tmp`` (the daemon creates it with
    mode 0700 and refuses one that is not the user's own).
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
    return os.path.join(default_socket_dir(), "fltemu.sock")


def default_socket_dir(uid: int | None = None) -> str:
    """The private folder of the fallback socket: ``/tmp/fltemu-<uid>``, the effective uid
    (the one that owns what the daemon creates, and that SO_PEERCRED reports)."""
    return f"/tmp/fltemu-{os.geteuid() if uid is None else uid}"


def is_trusted_peer(uid: int | None) -> bool:
    """May a client talk to a daemon whose socket peer (SO_PEERCRED) is ``uid``? Its own
    (effective) user, root, or the uid in ``$FLTEMU_TRUST_UID``. ``None`` (a platform with no
    peer credentials) is trusted, as there is nothing to check; a uid that could not be read
    where the platform has them is passed as -1 and refused (the check fails closed). The
    Windows side applies the same rule (``client/windows/include/linux_syscall.h``)."""
    if uid is None or uid == 0 or uid == os.geteuid():
        return True
    trusted = os.environ.get(ENV_TRUST_UID, "").strip()
    return trusted.isascii() and trusted.isdecimal() and int(trusted) == uid
