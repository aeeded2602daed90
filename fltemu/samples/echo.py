"""The ``echo`` sample: the smallest useful filter.

Port ``\\EchoPort`` (up to 64 connections, any local user of the daemon's default security):
FilterSendMessage gets its input back, cut to the output buffer; an empty output buffer gets
STATUS_BUFFER_TOO_SMALL (0x8007007A for the client).
"""

from __future__ import annotations

from typing import Final

from ..kernel import ClientPort, Filter
from ..status import NtStatus

PORT_NAME: Final = "\\EchoPort"
MAX_CONNECTIONS: Final = 64


async def setup(flt: Filter) -> None:
    """Create ``\\EchoPort``."""

    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> NtStatus:
        return NtStatus.STATUS_SUCCESS

    def on_disconnect(cookie: object) -> None:
        return None

    def on_message(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        if out_size == 0:
            return NtStatus.STATUS_BUFFER_TOO_SMALL, b""
        return NtStatus.STATUS_SUCCESS, data[:out_size]

    await flt.create_communication_port(
        PORT_NAME,
        connect_notify=on_connect,
        disconnect_notify=on_disconnect,
        message_notify=on_message,
        max_connections=MAX_CONNECTIONS,
    )
