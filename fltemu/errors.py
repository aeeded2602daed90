"""Exceptions that fltemu and fltuser raise on purpose, and the code → class registries.

::

    FltEmuError                        base for everything fltemu raises on purpose
    ├── StatusError                    .status: NtStatus (kernel-side API, daemon internals)
    │   ├── InvalidParameterError      STATUS_INVALID_PARAMETER
    │   ├── AccessDeniedStatusError    STATUS_ACCESS_DENIED
    │   ├── ObjectNameNotFoundError    STATUS_OBJECT_NAME_NOT_FOUND
    │   ├── ObjectNameCollisionError   STATUS_OBJECT_NAME_COLLISION
    │   ├── PortDisconnectedError      STATUS_PORT_DISCONNECTED
    │   ├── InsufficientResourcesError STATUS_INSUFFICIENT_RESOURCES
    │   ├── ConnectionCountLimitError  STATUS_CONNECTION_COUNT_LIMIT
    │   ├── FltDeletingObjectError     STATUS_FLT_DELETING_OBJECT
    │   └── UnknownStatusError         fallback for codes with no class
    ├── HResultError                   .hresult: HResult, .ntstatus: NtStatus | None (user side)
    │   ├── FileNotFoundHResultError   0x80070002: no port with that name
    │   ├── AccessDeniedHResultError   E_ACCESSDENIED
    │   ├── InvalidHandleError         E_HANDLE: the port is disconnected
    │   │   └── PortClosedError        also ClosedResourceError: used after *you* closed it
    │   ├── InvalidArgumentError       E_INVALIDARG
    │   ├── InsufficientBufferError    0x8007007A; .required_size, the message is kept
    │   ├── OperationAbortedError      0x800703E3: a getter was withdrawn
    │   ├── ConnectionCountLimitHResultError 0x800704D6
    │   ├── NoWaiterForReplyError      ERROR_FLT_NO_WAITER_FOR_REPLY (0x801F0020)
    │   └── UnknownHResultError        fallback for codes with no class
    ├── ProtocolError                  wire violation (not a Windows status)
    │   ├── LocalProtocolError         we tried to send something illegal (a bug in the caller)
    │   └── RemoteProtocolError        the peer sent malformed or illegal data; .status_hint
    └── ClosedResourceError            used after *you* closed it

``error_for(status)`` and ``hresult_error_for(hresult)`` are the only places that build an
exception from a code; message text is never used for dispatch.
Not here: the code values themselves (``fltemu.status``).
"""

from __future__ import annotations

from typing import ClassVar

from .status import HResult, NtStatus, flt_hresult_from_ntstatus

__all__ = [
    "AccessDeniedHResultError",
    "AccessDeniedStatusError",
    "ClosedResourceError",
    "ConnectionCountLimitError",
    "ConnectionCountLimitHResultError",
    "FileNotFoundHResultError",
    "FltDeletingObjectError",
    "FltEmuError",
    "HResultError",
    "InsufficientBufferError",
    "InsufficientResourcesError",
    "InvalidArgumentError",
    "InvalidHandleError",
    "InvalidParameterError",
    "LocalProtocolError",
    "NoWaiterForReplyError",
    "ObjectNameCollisionError",
    "ObjectNameNotFoundError",
    "OperationAbortedError",
    "PortClosedError",
    "PortDisconnectedError",
    "ProtocolError",
    "RemoteProtocolError",
    "StatusError",
    "UnknownHResultError",
    "UnknownStatusError",
    "error_for",
    "hresult_error_for",
    "hresult_error_from_ntstatus",
]


class FltEmuError(Exception):
    """Base class for every exception fltemu and fltuser raise on purpose."""


# --- kernel side ------------------------------------------------------------------------------

_STATUS_REGISTRY: dict[int, type[StatusError]] = {}


class StatusError(FltEmuError):
    """A kernel-side operation failed with an NTSTATUS.

    Raise it from a filter callback to fail the caller with that exact status.

    Attributes:
        status: the NTSTATUS.
    """

    #: The status a subclass stands for; ``None`` on the generic classes.
    code: ClassVar[NtStatus | None] = None

    def __init__(self, status: int | None = None, message: str | None = None) -> None:
        if status is None:
            if self.code is None:
                raise TypeError(f"{type(self).__name__} needs a status")
            status = self.code
        self.status = NtStatus(status)
        super().__init__(message or str(self.status))

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is not None:
            if int(code) in _STATUS_REGISTRY:
                raise RuntimeError(f"two exception classes for {code!s}")
            _STATUS_REGISTRY[int(code)] = cls


class UnknownStatusError(StatusError):
    """A status with no dedicated class."""


class InvalidParameterError(StatusError):
    """STATUS_INVALID_PARAMETER: bad arguments (§2.1)."""

    code = NtStatus.STATUS_INVALID_PARAMETER


class AccessDeniedStatusError(StatusError):
    """STATUS_ACCESS_DENIED."""

    code = NtStatus.STATUS_ACCESS_DENIED


class ObjectNameNotFoundError(StatusError):
    """STATUS_OBJECT_NAME_NOT_FOUND: no such port."""

    code = NtStatus.STATUS_OBJECT_NAME_NOT_FOUND


class ObjectNameCollisionError(StatusError):
    """STATUS_OBJECT_NAME_COLLISION: a port with that name exists (§2.1)."""

    code = NtStatus.STATUS_OBJECT_NAME_COLLISION


class PortDisconnectedError(StatusError):
    """STATUS_PORT_DISCONNECTED: the connection is gone (§6.6)."""

    code = NtStatus.STATUS_PORT_DISCONNECTED


class InsufficientResourcesError(StatusError):
    """STATUS_INSUFFICIENT_RESOURCES."""

    code = NtStatus.STATUS_INSUFFICIENT_RESOURCES


class ConnectionCountLimitError(StatusError):
    """STATUS_CONNECTION_COUNT_LIMIT: the port has max_connections connections (§2.3)."""

    code = NtStatus.STATUS_CONNECTION_COUNT_LIMIT


class FltDeletingObjectError(StatusError):
    """STATUS_FLT_DELETING_OBJECT: the filter is being unloaded (§2.1)."""

    code = NtStatus.STATUS_FLT_DELETING_OBJECT


def error_for(status: int, message: str | None = None) -> StatusError:
    """Build the exception for an NTSTATUS: its registered class, else ``UnknownStatusError``."""
    cls = _STATUS_REGISTRY.get(int(status) & 0xFFFFFFFF, UnknownStatusError)
    return cls(status, message)


# --- user side ----------------------------------------------------------------------------------

_HRESULT_REGISTRY: dict[int, type[HResultError]] = {}


class HResultError(FltEmuError):
    """A user-side call failed with the HRESULT that fltlib would return (§5.2).

    Attributes:
        hresult: the HRESULT.
        ntstatus: the NTSTATUS it was translated from, when the daemon reported one.
        data: bytes that came with a warning status (FilterSendMessage's output on, say,
            STATUS_BUFFER_OVERFLOW); empty otherwise.
    """

    code: ClassVar[HResult | None] = None
    #: Whether ``__init_subclass__`` registers the class for its code.
    _registered: ClassVar[bool] = True

    def __init__(
        self,
        hresult: int | None = None,
        message: str | None = None,
        *,
        ntstatus: int | None = None,
        data: bytes = b"",
    ) -> None:
        if hresult is None:
            if self.code is None:
                raise TypeError(f"{type(self).__name__} needs an HRESULT")
            hresult = self.code
        self.hresult = HResult(hresult)
        self.ntstatus = NtStatus(ntstatus) if ntstatus is not None else None
        self.data = data
        text = message or str(self.hresult)
        if self.ntstatus is not None and message is None:
            text = f"{text} from {self.ntstatus}"
        super().__init__(text)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is not None and cls.__dict__.get("_registered", True):
            if int(code) in _HRESULT_REGISTRY:
                raise RuntimeError(f"two exception classes for {code!s}")
            _HRESULT_REGISTRY[int(code)] = cls


class UnknownHResultError(HResultError):
    """An HRESULT with no dedicated class."""


class FileNotFoundHResultError(HResultError):
    """0x80070002: no server port has that name (or the filter is not loaded, §3.1)."""

    code = HResult(0x80070002)


class AccessDeniedHResultError(HResultError):
    """E_ACCESSDENIED (0x80070005): the port's security does not admit this process (§2.2)."""

    code = HResult.E_ACCESSDENIED


class InvalidHandleError(HResultError):
    """E_HANDLE (0x80070006): the port is disconnected (ERROR_INVALID_HANDLE, §6.6)."""

    code = HResult.E_HANDLE


class InvalidArgumentError(HResultError):
    """E_INVALIDARG (0x80070057)."""

    code = HResult.E_INVALIDARG


class InsufficientBufferError(HResultError):
    """0x8007007A: the buffer cannot hold the message; the message is kept (§3.3).

    Attributes:
        required_size: the buffer size that would have worked (header included for
            ``get_message``), as GetOverlappedResult reports it.
    """

    code = HResult(0x8007007A)

    def __init__(
        self,
        hresult: int | None = None,
        message: str | None = None,
        *,
        ntstatus: int | None = None,
        data: bytes = b"",
        required_size: int = 0,
    ) -> None:
        super().__init__(hresult, message, ntstatus=ntstatus, data=data)
        self.required_size = required_size


class OperationAbortedError(HResultError):
    """0x800703E3 (ERROR_OPERATION_ABORTED): a pending get was cancelled (§3.5)."""

    code = HResult(0x800703E3)


class ConnectionCountLimitHResultError(HResultError):
    """0x800704D6: the port already has its maximum number of connections (§3.1)."""

    code = HResult(0x800704D6)


class NoWaiterForReplyError(HResultError):
    """ERROR_FLT_NO_WAITER_FOR_REPLY (0x801F0020): nobody waits for that message id (§3.4)."""

    code = HResult.ERROR_FLT_NO_WAITER_FOR_REPLY


def hresult_error_for(
    hresult: int,
    message: str | None = None,
    *,
    ntstatus: int | None = None,
    data: bytes = b"",
) -> HResultError:
    """Build the exception for an HRESULT: its registered class, else ``UnknownHResultError``."""
    cls = _HRESULT_REGISTRY.get(int(hresult) & 0xFFFFFFFF, UnknownHResultError)
    return cls(hresult, message, ntstatus=ntstatus, data=data)


def hresult_error_from_ntstatus(
    status: int, message: str | None = None, *, data: bytes = b""
) -> HResultError:
    """Translate a kernel status as fltlib does (§3.6) and build the matching exception."""
    return hresult_error_for(flt_hresult_from_ntstatus(status), message, ntstatus=status, data=data)


# --- protocol and resource errors -------------------------------------------------------------


class ProtocolError(FltEmuError):
    """A violation of the wire protocol, not a Windows status.

    Attributes:
        status_hint: the NTSTATUS to report to the peer before the connection is closed.
    """

    def __init__(
        self, message: str, *, status_hint: int = NtStatus.STATUS_INVALID_PARAMETER
    ) -> None:
        super().__init__(message)
        self.status_hint = NtStatus(status_hint)


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer sent malformed or illegal data; the connection cannot continue."""


class ClosedResourceError(FltEmuError):
    """The object was used after *you* closed it (trio's semantics)."""


class PortClosedError(ClosedResourceError, InvalidHandleError):
    """A fltuser port used after ``close()``: CloseHandle'd handles give E_HANDLE on Windows."""

    _registered = False
