"""Who is on the other end of a connection: ``ProcessInfo``.

A module of its own so that the callbacks, the ports and the security check can all use it
without importing one another. Not here: reading it from a socket (``fltemu.daemon.peer``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ProcessInfo"]


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """Who is on the other end of a connection, from the socket's peer credentials.

    Attributes:
        pid: process id, or ``None`` when the platform cannot tell.
        uid: user id, or ``None``.
        gid: group id, or ``None``.
    """

    pid: int | None
    uid: int | None
    gid: int | None
