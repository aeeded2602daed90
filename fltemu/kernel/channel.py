"""The one interface through which the kernel model reaches a connected user-mode process.

The daemon's session implements it over a socket; tests plug in a fake.
Not here: the socket itself (``fltemu.daemon.session``).
"""

from __future__ import annotations

from typing import Final, Protocol

from ..status import NtStatus

__all__ = ["DETACHED", "Channel"]


class Channel(Protocol):
    """What a connection's kernel half needs from its user half."""

    def complete_get(
        self,
        token: object,
        status: NtStatus,
        message_id: int = 0,
        reply_length: int = 0,
        data: bytes = b"",
        required_size: int = 0,
    ) -> None:
        """Complete the pending FilterGetMessage identified by ``token``.

        On STATUS_SUCCESS, ``message_id`` and ``reply_length`` are the FILTER_MESSAGE_HEADER
        fields and ``data`` the message; on STATUS_BUFFER_TOO_SMALL, ``required_size`` is the
        buffer size needed. Must not block and must not call back into the kernel model.
        """
        ...

    def kernel_disconnected(self) -> None:
        """The filter ended the connection (FltCloseClientPort, unload) while the user's
        handle stays open: every later call of the user fails with STATUS_PORT_DISCONNECTED.

        Called once, after the pending getters were completed. Must not block and must not
        call back into the kernel model.
        """
        ...


class _Detached:
    """The channel of a connection whose user half is gone: everything is dropped.

    A finished connection is given this one instead of its session, so that the session and
    the connection, which point at each other while they live, part without a cyclic garbage
    collection (an idle daemon never runs one).
    """

    def complete_get(
        self,
        token: object,
        status: NtStatus,
        message_id: int = 0,
        reply_length: int = 0,
        data: bytes = b"",
        required_size: int = 0,
    ) -> None:
        pass

    def kernel_disconnected(self) -> None:
        pass


#: The channel of a connection that has been torn down.
DETACHED: Final[Channel] = _Detached()
