"""fltemu: the kernel side of Windows Filter Manager communication ports, emulated.

``fltemu.Daemon`` hosts named server ports whose callbacks are Python functions; user-mode
programs reach them with ``fltuser``. Status codes and exceptions are imported eagerly;
the daemon and the kernel model load on first use, so that importing ``fltemu.status`` (as
``fltuser`` does) pulls in no event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    ClosedResourceError,
    FltEmuError,
    HResultError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    StatusError,
    error_for,
)
from .status import (
    HResult,
    NtStatus,
    Win32Error,
    flt_hresult_from_ntstatus,
    hresult_from_win32,
    nt_success,
)

if TYPE_CHECKING:
    from .daemon import Daemon
    from .kernel import (
        ClientPort,
        Filter,
        FilterManager,
        ProcessInfo,
        SecurityDescriptor,
        SendMessageResult,
        ServerPort,
        timeout_from_large_integer,
    )

__all__ = [
    "ClientPort",
    "ClosedResourceError",
    "Daemon",
    "Filter",
    "FilterManager",
    "FltEmuError",
    "HResult",
    "HResultError",
    "LocalProtocolError",
    "NtStatus",
    "ProcessInfo",
    "ProtocolError",
    "RemoteProtocolError",
    "SecurityDescriptor",
    "SendMessageResult",
    "ServerPort",
    "StatusError",
    "Win32Error",
    "__version__",
    "error_for",
    "flt_hresult_from_ntstatus",
    "hresult_from_win32",
    "nt_success",
    "timeout_from_large_integer",
]

_LAZY = {
    "Daemon": "fltemu.daemon",
    "ClientPort": "fltemu.kernel",
    "Filter": "fltemu.kernel",
    "FilterManager": "fltemu.kernel",
    "ProcessInfo": "fltemu.kernel",
    "SecurityDescriptor": "fltemu.kernel",
    "SendMessageResult": "fltemu.kernel",
    "ServerPort": "fltemu.kernel",
    "timeout_from_large_integer": "fltemu.kernel",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fltemu' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
