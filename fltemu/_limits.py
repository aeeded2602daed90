"""Limits shared by the wire protocol and the kernel model (stdlib only, so both may import it)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FILTER_HEADER_BYTES",
    "MAX_CONNECT_CONTEXT_BYTES",
    "MAX_CONTEXT_BYTES",
]

#: Default limit on one message's payload (data of a send, get or reply). Windows has no
#: limit but 32-bit lengths (§6.5); a daemon has to bound what one peer can make it buffer.
#: 16 MiB covers every real minifilter protocol by orders of magnitude (scanner: 1 KiB,
#: minispy: 4 KiB pages); ``--max-message-bytes`` raises it.
DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

#: FilterConnectCommunicationPort's context size is a WORD (§3.1): the most a caller can ask.
MAX_CONTEXT_BYTES: Final = 0xFFFF

#: The most ConnectNotify can receive from an x64 caller (§3.1): fltlib sends the context in
#: the FLTPORT extended attribute, whose value (a 24-byte header, then the context) has a
#: USHORT length, so 65535 - 24 bytes. A longer context leaves an attribute that fltmgr's
#: check refuses with STATUS_ACCESS_DENIED, before it looks the port name up (the name is in
#: the attribute). Inferred [INF]; fltemu's rule for every client side.
MAX_CONNECT_CONTEXT_BYTES: Final = 0xFFFF - 24

#: sizeof(FILTER_MESSAGE_HEADER) == sizeof(FILTER_REPLY_HEADER) (§4): a getter's buffer holds
#: this header before the message, and the kernel's reply length is advertised plus this.
FILTER_HEADER_BYTES: Final = 16
