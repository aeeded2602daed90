"""fltuser: the user-mode side of Filter Manager communication ports (fltlib, emulated).

``connect`` / ``aconnect`` are FilterConnectCommunicationPort; a ``Port`` / ``AsyncPort`` has
``send`` (FilterSendMessage), ``get_message`` (FilterGetMessage), ``reply``
(FilterReplyMessage) and ``close`` / ``aclose`` (CloseHandle). Every failure raises
``HResultError`` carrying the HRESULT fltlib would return.
"""

from __future__ import annotations

from fltemu import __version__
from fltemu.errors import (
    AccessDeniedHResultError,
    ClosedResourceError,
    ConnectionCountLimitHResultError,
    FileNotFoundHResultError,
    HResultError,
    InsufficientBufferError,
    InvalidArgumentError,
    InvalidHandleError,
    NoWaiterForReplyError,
    OperationAbortedError,
    PortClosedError,
    UnknownHResultError,
)
from fltemu.status import (
    HResult,
    NtStatus,
    Win32Error,
    flt_hresult_from_ntstatus,
    hresult_failed,
    hresult_from_win32,
    hresult_succeeded,
    nt_success,
)

from ._async import AsyncPort, aconnect
from ._base import FILTER_HEADER_BYTES, FLT_PORT_FLAG_SYNC_HANDLE, Message
from ._sync import Port, connect

__all__ = [
    "FILTER_HEADER_BYTES",
    "FLT_PORT_FLAG_SYNC_HANDLE",
    "AccessDeniedHResultError",
    "AsyncPort",
    "ClosedResourceError",
    "ConnectionCountLimitHResultError",
    "FileNotFoundHResultError",
    "HResult",
    "HResultError",
    "InsufficientBufferError",
    "InvalidArgumentError",
    "InvalidHandleError",
    "Message",
    "NoWaiterForReplyError",
    "NtStatus",
    "OperationAbortedError",
    "Port",
    "PortClosedError",
    "UnknownHResultError",
    "Win32Error",
    "__version__",
    "aconnect",
    "connect",
    "flt_hresult_from_ntstatus",
    "hresult_failed",
    "hresult_from_win32",
    "hresult_succeeded",
    "nt_success",
]
