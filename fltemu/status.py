"""Windows status codes: NTSTATUS, HRESULT and Win32 errors, and fltlib's translation.

Values are stored unsigned 32-bit, as Microsoft's documentation prints them. Unknown values
still decode: the enums synthesise a pseudo-member, so compare statuses with ``==``, never ``is``.
Not here: exceptions built from these codes (``fltemu.errors``).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "HResult",
    "NtStatus",
    "Win32Error",
    "flt_hresult_from_ntstatus",
    "hresult_failed",
    "hresult_from_nt",
    "hresult_from_win32",
    "hresult_succeeded",
    "nt_error",
    "nt_information",
    "nt_success",
    "nt_warning",
    "rtl_ntstatus_to_dos_error",
]

_U32: Final = 0xFFFFFFFF


class _Code(enum.IntEnum):
    """An IntEnum of unsigned 32-bit codes that also accepts values it has no name for."""

    @classmethod
    def _missing_(cls, value: object) -> _Code | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        if value < 0:
            if value < -0x8000_0000:
                return None  # not a signed 32-bit value: do not wrap it into one
            value &= _U32  # accept the signed spelling of a negative code
            try:
                return cls(value)
            except ValueError:
                pass
        if not 0 <= value <= _U32:
            return None
        member = int.__new__(cls, value)
        member._name_ = cls._unknown_name(value)
        member._value_ = value
        return member

    @classmethod
    def _unknown_name(cls, value: int) -> str:
        return f"{cls.__name__}(0x{value:08X})"

    @property
    def signed(self) -> int:
        """The value as a signed 32-bit integer (how C declares NTSTATUS and HRESULT)."""
        v = int(self)
        return v - 0x1_0000_0000 if v & 0x80000000 else v

    @classmethod
    def from_signed(cls, value: int) -> _Code:
        """Build a code from its signed 32-bit spelling (``-1073741771`` for ``0xC0000035``)."""
        return cls(value)  # _missing_ maps the negative half; out-of-range values raise

    @property
    def facility(self) -> int:
        """The facility field (bits 16..27 for NTSTATUS, 16..26 for HRESULT)."""
        return (int(self) >> 16) & 0xFFF

    @property
    def code(self) -> int:
        """The code field (low 16 bits)."""
        return int(self) & 0xFFFF

    def __str__(self) -> str:
        return f"{self.name} (0x{int(self):08X})"

    def __format__(self, spec: str) -> str:
        return int.__format__(int(self), spec) if spec else str(self)


class NtStatus(_Code):
    """NTSTATUS values that fltemu's kernel side returns or passes through.

    >>> NtStatus(0xC0000037).name
    'STATUS_PORT_DISCONNECTED'
    >>> nt_success(NtStatus.STATUS_TIMEOUT)
    True
    >>> NtStatus(0xC0DE0001)
    <NtStatus.NtStatus(0xC0DE0001): 3235774465>
    """

    #: Success.
    STATUS_SUCCESS = 0x00000000
    #: ``send_message``: the timeout expired. A *success* code (§2.8).
    STATUS_TIMEOUT = 0x00000102
    #: Never returned by fltemu; a MessageNotify returning it is a driver bug (§2.5).
    STATUS_PENDING = 0x00000103
    #: Warning: a buffer is not aligned (minispy's GetMiniSpyLog).
    STATUS_DATATYPE_MISALIGNMENT = 0x80000002
    #: Warning: a reply was longer than the kernel's reply buffer and was cut (§2.8, §3.4).
    STATUS_BUFFER_OVERFLOW = 0x80000005
    #: Warning: nothing to return (minispy's empty log, §7.2).
    STATUS_NO_MORE_ENTRIES = 0x8000001A
    #: A filter callback raised something other than ``StatusError``.
    STATUS_UNSUCCESSFUL = 0xC0000001
    #: Not implemented.
    STATUS_NOT_IMPLEMENTED = 0xC0000002
    #: Invalid handle.
    STATUS_INVALID_HANDLE = 0xC0000008
    #: Bad arguments: empty input, zero-sized buffers, ``max_connections <= 0`` (§2.1, §3.2).
    STATUS_INVALID_PARAMETER = 0xC000000D
    #: ``send`` on a port created without a MessageNotify (§2.1).
    STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
    #: The port's security descriptor does not admit the caller (§2.2).
    STATUS_ACCESS_DENIED = 0xC0000022
    #: A getter's buffer cannot hold the message (§3.3).
    STATUS_BUFFER_TOO_SMALL = 0xC0000023
    #: Empty port name (§3.1).
    STATUS_OBJECT_NAME_INVALID = 0xC0000033
    #: No server port has that name (§3.1).
    STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
    #: A server port with that name already exists (§2.1).
    STATUS_OBJECT_NAME_COLLISION = 0xC0000035
    #: The connection is gone: either end closed it or the filter unloaded (§6.6).
    STATUS_PORT_DISCONNECTED = 0xC0000037
    #: Malformed object path.
    STATUS_OBJECT_PATH_INVALID = 0xC0000039
    #: A directory in the port name does not exist (``\\Foo\\Bar``, §3.1).
    STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
    #: The port name does not start with a backslash (§3.1).
    STATUS_OBJECT_PATH_SYNTAX_BAD = 0xC000003B
    #: The sending thread is being terminated (§2.8).
    STATUS_THREAD_IS_TERMINATING = 0xC000004B
    #: The client speaks a wire-protocol version the daemon does not.
    STATUS_REVISION_MISMATCH = 0xC0000059
    #: Out of resources; also a message over the daemon's size limit.
    STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
    #: An I/O timeout.
    STATUS_IO_TIMEOUT = 0xC00000B5
    #: Not supported.
    STATUS_NOT_SUPPORTED = 0xC00000BB
    #: avscan's ConnectNotify rejects an unknown context with it (§7.3).
    STATUS_INVALID_PARAMETER_3 = 0xC00000F1
    #: A getter was withdrawn (CancelIo, §3.5).
    STATUS_CANCELLED = 0xC0000120
    #: avscan: a command names a scan id that does not exist (§7.3).
    STATUS_NOT_FOUND = 0xC0000225
    #: A ConnectNotify refused the connection.
    STATUS_CONNECTION_REFUSED = 0xC0000236
    #: The server port already has ``max_connections`` connections (§2.3).
    STATUS_CONNECTION_COUNT_LIMIT = 0xC0000246
    #: avscan: the file is infected (its post-create fails the open with it, §7.3).
    STATUS_VIRUS_INFECTED = 0xC0000906
    #: MessageNotify's STATUS_BUFFER_TOO_SMALL as fltmgr rewrites it (§2.5).
    STATUS_FLT_BUFFER_TOO_SMALL = 0x801C0001
    #: The filter is being unloaded (§2.1, §3.1).
    STATUS_FLT_DELETING_OBJECT = 0xC01C000B
    #: A reply matched no waiting sender (§3.4).
    STATUS_FLT_NO_WAITER_FOR_REPLY = 0xC01C0020


class Win32Error(_Code):
    """Win32 error codes (``GetLastError`` values) that fltlib's HRESULTs are built from."""

    ERROR_SUCCESS = 0
    ERROR_INVALID_FUNCTION = 1
    ERROR_FILE_NOT_FOUND = 2
    ERROR_PATH_NOT_FOUND = 3
    ERROR_ACCESS_DENIED = 5
    ERROR_INVALID_HANDLE = 6
    ERROR_NOT_ENOUGH_MEMORY = 8
    ERROR_GEN_FAILURE = 31
    ERROR_NOT_SUPPORTED = 50
    ERROR_INVALID_PARAMETER = 87
    ERROR_SEM_TIMEOUT = 121
    ERROR_INSUFFICIENT_BUFFER = 122
    ERROR_INVALID_NAME = 123
    ERROR_BAD_PATHNAME = 161
    ERROR_ALREADY_EXISTS = 183
    ERROR_VIRUS_INFECTED = 225
    ERROR_MORE_DATA = 234
    WAIT_TIMEOUT = 258
    ERROR_NO_MORE_ITEMS = 259
    ERROR_MR_MID_NOT_FOUND = 317
    ERROR_ABANDONED_WAIT_0 = 735
    ERROR_OPERATION_ABORTED = 995
    ERROR_IO_PENDING = 997
    ERROR_NOACCESS = 998
    ERROR_CONNECTION_REFUSED = 1225
    ERROR_CONNECTION_COUNT_LIMIT = 1238
    ERROR_NOT_FOUND = 1168
    ERROR_REVISION_MISMATCH = 1306
    ERROR_NO_SYSTEM_RESOURCES = 1450
    ERROR_TIMEOUT = 1460


class HResult(_Code):
    """HRESULT values as fltlib returns them (§5).

    Only codes with an SDK name are members. Others, such as ``0x80070002``, decode to a
    pseudo-member named after their construction:

    >>> HResult(0x80070002).name
    'HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND)'
    >>> HResult(0x80070006) == HResult.E_HANDLE
    True
    """

    #: Success.
    S_OK = 0x00000000
    #: Not implemented.
    E_NOTIMPL = 0x80004001
    #: Unspecified failure; fltlib's answer to a non-filter facility NTSTATUS (§3.6).
    E_FAIL = 0x80004005
    #: Access denied (STATUS_ACCESS_DENIED, §2.2).
    E_ACCESSDENIED = 0x80070005
    #: Invalid handle: the port is disconnected (STATUS_PORT_DISCONNECTED, §6.6).
    E_HANDLE = 0x80070006
    #: Out of memory.
    E_OUTOFMEMORY = 0x8007000E
    #: Invalid argument: empty input, zero-sized buffer, bad context arguments (§3).
    E_INVALIDARG = 0x80070057
    #: The filter is being unloaded (§3.1).
    ERROR_FLT_DELETING_OBJECT = 0x801F000B
    #: A reply for a message nobody waits for (§3.4).
    ERROR_FLT_NO_WAITER_FOR_REPLY = 0x801F0020

    @classmethod
    def _unknown_name(cls, value: int) -> str:
        if value & 0xFFFF0000 == 0x80070000:
            return f"HRESULT_FROM_WIN32({Win32Error(value & 0xFFFF).name})"
        return super()._unknown_name(value)


# --- predicates: the NT_SUCCESS family of macros --------------------------------------------


def nt_success(status: int) -> bool:
    """``NT_SUCCESS``: true for success *and* information codes (``STATUS_TIMEOUT`` too).

    >>> nt_success(0), nt_success(0x102), nt_success(0x80000005), nt_success(0xC0000037)
    (True, True, False, False)
    """
    return (status & _U32) < 0x80000000


def nt_information(status: int) -> bool:
    """``NT_INFORMATION``: severity bits ``01``."""
    return (status & _U32) >> 30 == 1


def nt_warning(status: int) -> bool:
    """``NT_WARNING``: severity bits ``10``."""
    return (status & _U32) >> 30 == 2


def nt_error(status: int) -> bool:
    """``NT_ERROR``: severity bits ``11``."""
    return (status & _U32) >> 30 == 3


def hresult_succeeded(hr: int) -> bool:
    """``SUCCEEDED``: the high bit is clear."""
    return (hr & _U32) < 0x80000000


def hresult_failed(hr: int) -> bool:
    """``FAILED``: the high bit is set (``0x800703E5``, ERROR_IO_PENDING, counts as failed)."""
    return not hresult_succeeded(hr)


def hresult_from_win32(error: int) -> HResult:
    """``HRESULT_FROM_WIN32``: facility 7 with the high bit set; 0 and negatives pass through.

    >>> hex(hresult_from_win32(Win32Error.ERROR_FILE_NOT_FOUND))
    '0x80070002'
    """
    error &= _U32
    if error == 0 or error & 0x80000000:
        return HResult(error)
    return HResult(0x80070000 | (error & 0xFFFF))


def hresult_from_nt(status: int) -> HResult:
    """``HRESULT_FROM_NT``: sets the facility-NT bit. fltlib never uses it (§3.6).

    >>> hex(hresult_from_nt(0xC0000037))
    '0xd0000037'
    """
    return HResult((status & _U32) | 0x10000000)


# RtlNtStatusToDosError for every status fltemu produces or documents (§5.1). Windows
# answers ERROR_MR_MID_NOT_FOUND for a status its table lacks; so do we.
_NT_TO_DOS: Final[dict[int, int]] = {
    0x00000000: 0,
    0x00000102: 1460,  # STATUS_TIMEOUT -> ERROR_TIMEOUT (fltlib special-cases it, see below)
    0x00000103: 997,  # STATUS_PENDING -> ERROR_IO_PENDING
    0x80000002: 998,  # STATUS_DATATYPE_MISALIGNMENT -> ERROR_NOACCESS
    0x80000005: 234,  # STATUS_BUFFER_OVERFLOW -> ERROR_MORE_DATA
    0x8000001A: 259,  # STATUS_NO_MORE_ENTRIES -> ERROR_NO_MORE_ITEMS
    0xC0000001: 31,  # STATUS_UNSUCCESSFUL -> ERROR_GEN_FAILURE
    0xC0000002: 1,  # STATUS_NOT_IMPLEMENTED -> ERROR_INVALID_FUNCTION
    0xC0000008: 6,  # STATUS_INVALID_HANDLE -> ERROR_INVALID_HANDLE
    0xC000000D: 87,  # STATUS_INVALID_PARAMETER -> ERROR_INVALID_PARAMETER
    0xC0000010: 1,  # STATUS_INVALID_DEVICE_REQUEST -> ERROR_INVALID_FUNCTION
    0xC0000022: 5,  # STATUS_ACCESS_DENIED -> ERROR_ACCESS_DENIED
    0xC0000023: 122,  # STATUS_BUFFER_TOO_SMALL -> ERROR_INSUFFICIENT_BUFFER
    0xC0000033: 123,  # STATUS_OBJECT_NAME_INVALID -> ERROR_INVALID_NAME
    0xC0000034: 2,  # STATUS_OBJECT_NAME_NOT_FOUND -> ERROR_FILE_NOT_FOUND
    0xC0000035: 183,  # STATUS_OBJECT_NAME_COLLISION -> ERROR_ALREADY_EXISTS
    0xC0000037: 6,  # STATUS_PORT_DISCONNECTED -> ERROR_INVALID_HANDLE
    0xC0000039: 161,  # STATUS_OBJECT_PATH_INVALID -> ERROR_BAD_PATHNAME
    0xC000003A: 3,  # STATUS_OBJECT_PATH_NOT_FOUND -> ERROR_PATH_NOT_FOUND
    0xC000003B: 161,  # STATUS_OBJECT_PATH_SYNTAX_BAD -> ERROR_BAD_PATHNAME
    0xC000004B: 5,  # STATUS_THREAD_IS_TERMINATING -> ERROR_ACCESS_DENIED
    0xC0000059: 1306,  # STATUS_REVISION_MISMATCH -> ERROR_REVISION_MISMATCH
    0xC000009A: 1450,  # STATUS_INSUFFICIENT_RESOURCES -> ERROR_NO_SYSTEM_RESOURCES
    0xC00000B5: 121,  # STATUS_IO_TIMEOUT -> ERROR_SEM_TIMEOUT
    0xC00000BB: 50,  # STATUS_NOT_SUPPORTED -> ERROR_NOT_SUPPORTED
    0xC00000F1: 87,  # STATUS_INVALID_PARAMETER_3 -> ERROR_INVALID_PARAMETER
    0xC0000120: 995,  # STATUS_CANCELLED -> ERROR_OPERATION_ABORTED
    0xC0000225: 1168,  # STATUS_NOT_FOUND -> ERROR_NOT_FOUND
    0xC0000236: 1225,  # STATUS_CONNECTION_REFUSED -> ERROR_CONNECTION_REFUSED
    0xC0000246: 1238,  # STATUS_CONNECTION_COUNT_LIMIT -> ERROR_CONNECTION_COUNT_LIMIT
    0xC0000906: 225,  # STATUS_VIRUS_INFECTED -> ERROR_VIRUS_INFECTED
}


def rtl_ntstatus_to_dos_error(status: int) -> Win32Error:
    """``RtlNtStatusToDosError`` for the statuses fltemu knows (§5.1).

    A status missing from the table gives ``ERROR_MR_MID_NOT_FOUND``, as Windows does.
    """
    return Win32Error(_NT_TO_DOS.get(status & _U32, Win32Error.ERROR_MR_MID_NOT_FOUND))


_FACILITY_FILTER_MANAGER: Final = 0x1C


def flt_hresult_from_ntstatus(status: int) -> HResult:
    """fltlib's NTSTATUS → HRESULT translation (§3.6), the only one the user side uses.

    It is *not* ``HRESULT_FROM_NT``: filter-manager codes become facility 0x1F, other
    facilities become ``E_FAIL``, ``STATUS_TIMEOUT`` becomes ``HRESULT_FROM_WIN32(WAIT_TIMEOUT)``
    and everything else goes through ``RtlNtStatusToDosError``.

    >>> str(flt_hresult_from_ntstatus(NtStatus.STATUS_PORT_DISCONNECTED))
    'E_HANDLE (0x80070006)'
    >>> hex(flt_hresult_from_ntstatus(NtStatus.STATUS_FLT_NO_WAITER_FOR_REPLY))
    '0x801f0020'
    >>> hex(flt_hresult_from_ntstatus(NtStatus.STATUS_TIMEOUT))
    '0x80070102'
    """
    status &= _U32
    if status == 0:
        return HResult.S_OK
    facility = (status >> 16) & 0xFFF
    if facility:
        if facility == _FACILITY_FILTER_MANAGER:
            if status == NtStatus.STATUS_FLT_BUFFER_TOO_SMALL:
                return hresult_from_win32(Win32Error.ERROR_INSUFFICIENT_BUFFER)
            return HResult((status & 0x8000FFFF) | 0x001F0000)
        return HResult.E_FAIL
    if status == NtStatus.STATUS_TIMEOUT:
        return hresult_from_win32(Win32Error.WAIT_TIMEOUT)
    return hresult_from_win32(_NT_TO_DOS.get(status, Win32Error.ERROR_MR_MID_NOT_FOUND))
