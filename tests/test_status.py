"""Status codes: code tables, fltlib's translation, predicates, unknown values, errors registry.

The expected values are written out by hand from the semantics doc §5.1 (authoritative) and
``ntstatus.h`` / ``winerror.h`` / ``fltWinError.h``; nothing here is computed with the code under
test.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fltemu.errors import (
    AccessDeniedHResultError,
    AccessDeniedStatusError,
    ClosedResourceError,
    ConnectionCountLimitError,
    ConnectionCountLimitHResultError,
    FileNotFoundHResultError,
    FltDeletingObjectError,
    FltEmuError,
    HResultError,
    InsufficientBufferError,
    InsufficientResourcesError,
    InvalidArgumentError,
    InvalidHandleError,
    InvalidParameterError,
    LocalProtocolError,
    NoWaiterForReplyError,
    ObjectNameCollisionError,
    ObjectNameNotFoundError,
    OperationAbortedError,
    PortClosedError,
    PortDisconnectedError,
    ProtocolError,
    RemoteProtocolError,
    StatusError,
    UnknownHResultError,
    UnknownStatusError,
    error_for,
    hresult_error_for,
    hresult_error_from_ntstatus,
)
from fltemu.status import (
    HResult,
    NtStatus,
    Win32Error,
    flt_hresult_from_ntstatus,
    hresult_failed,
    hresult_from_nt,
    hresult_from_win32,
    hresult_succeeded,
    nt_error,
    nt_information,
    nt_success,
    nt_warning,
    rtl_ntstatus_to_dos_error,
)


def _id(value: object) -> str | None:
    """Readable parametrize ids: names for codes and classes, hex for plain ints."""
    if isinstance(value, (NtStatus, HResult, Win32Error)):
        return value.name
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, type):
        return value.__name__
    return None


# --- the §5.1 table ------------------------------------------------------------------------------


class Row(NamedTuple):
    name: str
    value: int
    win32: int | None  # RtlNtStatusToDosError; None where §5.1 has "—" (filter-manager codes)
    flt_hresult: int  # fltlib's HRESULT
    from_nt: int | None  # HRESULT_FROM_NT; None where §5.1 has "—"


# One row per line of the semantics doc §5.1, in its order.
SEMANTICS_5_1: list[Row] = [
    # §5.1 prints HRESULT_FROM_NT(0) as 0, but winerror.h ORs the NT bit in unconditionally
    # (0x10000000, see test_hresult_from_nt_sets_only_the_nt_bit); fltlib never uses it.
    Row("STATUS_SUCCESS", 0x00000000, 0, 0x00000000, None),
    Row("STATUS_TIMEOUT", 0x00000102, 1460, 0x80070102, 0x10000102),
    Row("STATUS_PENDING", 0x00000103, 997, 0x800703E5, None),
    Row("STATUS_DATATYPE_MISALIGNMENT", 0x80000002, 998, 0x800703E6, 0x90000002),
    Row("STATUS_BUFFER_OVERFLOW", 0x80000005, 234, 0x800700EA, 0x90000005),
    Row("STATUS_NO_MORE_ENTRIES", 0x8000001A, 259, 0x80070103, 0x9000001A),
    Row("STATUS_UNSUCCESSFUL", 0xC0000001, 31, 0x8007001F, 0xD0000001),
    Row("STATUS_INVALID_HANDLE", 0xC0000008, 6, 0x80070006, 0xD0000008),
    Row("STATUS_INVALID_PARAMETER", 0xC000000D, 87, 0x80070057, 0xD000000D),
    Row("STATUS_INVALID_DEVICE_REQUEST", 0xC0000010, 1, 0x80070001, 0xD0000010),
    Row("STATUS_ACCESS_DENIED", 0xC0000022, 5, 0x80070005, 0xD0000022),
    Row("STATUS_BUFFER_TOO_SMALL", 0xC0000023, 122, 0x8007007A, 0xD0000023),
    Row("STATUS_OBJECT_NAME_INVALID", 0xC0000033, 123, 0x8007007B, 0xD0000033),
    Row("STATUS_OBJECT_NAME_NOT_FOUND", 0xC0000034, 2, 0x80070002, 0xD0000034),
    Row("STATUS_OBJECT_NAME_COLLISION", 0xC0000035, 183, 0x800700B7, 0xD0000035),
    Row("STATUS_PORT_DISCONNECTED", 0xC0000037, 6, 0x80070006, 0xD0000037),
    Row("STATUS_OBJECT_PATH_INVALID", 0xC0000039, 161, 0x800700A1, 0xD0000039),
    Row("STATUS_OBJECT_PATH_NOT_FOUND", 0xC000003A, 3, 0x80070003, 0xD000003A),
    Row("STATUS_OBJECT_PATH_SYNTAX_BAD", 0xC000003B, 161, 0x800700A1, 0xD000003B),
    # §5.1 says "(kernel only)"; the §3.6 algorithm gives HRESULT_FROM_WIN32(ERROR_ACCESS_DENIED).
    Row("STATUS_THREAD_IS_TERMINATING", 0xC000004B, 5, 0x80070005, 0xD000004B),
    Row("STATUS_INSUFFICIENT_RESOURCES", 0xC000009A, 1450, 0x800705AA, 0xD000009A),
    Row("STATUS_IO_TIMEOUT", 0xC00000B5, 121, 0x80070079, 0xD00000B5),
    Row("STATUS_NOT_SUPPORTED", 0xC00000BB, 50, 0x80070032, 0xD00000BB),
    Row("STATUS_INVALID_PARAMETER_3", 0xC00000F1, 87, 0x80070057, 0xD00000F1),
    Row("STATUS_CANCELLED", 0xC0000120, 995, 0x800703E3, 0xD0000120),
    Row("STATUS_CONNECTION_REFUSED", 0xC0000236, 1225, 0x800704C9, 0xD0000236),
    Row("STATUS_CONNECTION_COUNT_LIMIT", 0xC0000246, 1238, 0x800704D6, 0xD0000246),
    Row("STATUS_FLT_BUFFER_TOO_SMALL", 0x801C0001, None, 0x8007007A, 0x901C0001),
    Row("STATUS_FLT_DELETING_OBJECT", 0xC01C000B, None, 0x801F000B, 0xD01C000B),
    Row("STATUS_FLT_NO_WAITER_FOR_REPLY", 0xC01C0020, None, 0x801F0020, 0xD01C0020),
]

# Members the enum has beyond §5.1, checked against ntstatus.h / Wine's error.c.
NTSTATUS_H_ONLY: list[Row] = [
    Row("STATUS_NOT_IMPLEMENTED", 0xC0000002, 1, 0x80070001, 0xD0000002),
    Row("STATUS_REVISION_MISMATCH", 0xC0000059, 1306, 0x8007051A, 0xD0000059),
    Row("STATUS_NOT_FOUND", 0xC0000225, 1168, 0x80070490, 0xD0000225),
    Row("STATUS_VIRUS_INFECTED", 0xC0000906, 225, 0x800700E1, 0xD0000906),
]

ALL_ROWS = SEMANTICS_5_1 + NTSTATUS_H_ONLY
ROW_IDS = [row.name for row in ALL_ROWS]

# winerror.h values of every Win32Error member.
WIN32_VALUES: dict[str, int] = {
    "ERROR_SUCCESS": 0,
    "ERROR_INVALID_FUNCTION": 1,
    "ERROR_FILE_NOT_FOUND": 2,
    "ERROR_PATH_NOT_FOUND": 3,
    "ERROR_ACCESS_DENIED": 5,
    "ERROR_INVALID_HANDLE": 6,
    "ERROR_NOT_ENOUGH_MEMORY": 8,
    "ERROR_GEN_FAILURE": 31,
    "ERROR_NOT_SUPPORTED": 50,
    "ERROR_INVALID_PARAMETER": 87,
    "ERROR_SEM_TIMEOUT": 121,
    "ERROR_INSUFFICIENT_BUFFER": 122,
    "ERROR_INVALID_NAME": 123,
    "ERROR_BAD_PATHNAME": 161,
    "ERROR_ALREADY_EXISTS": 183,
    "ERROR_VIRUS_INFECTED": 225,
    "ERROR_MORE_DATA": 234,
    "WAIT_TIMEOUT": 258,
    "ERROR_NO_MORE_ITEMS": 259,
    "ERROR_MR_MID_NOT_FOUND": 317,
    "ERROR_ABANDONED_WAIT_0": 735,
    "ERROR_OPERATION_ABORTED": 995,
    "ERROR_IO_PENDING": 997,
    "ERROR_NOACCESS": 998,
    "ERROR_CONNECTION_REFUSED": 1225,
    "ERROR_CONNECTION_COUNT_LIMIT": 1238,
    "ERROR_NOT_FOUND": 1168,
    "ERROR_REVISION_MISMATCH": 1306,
    "ERROR_NO_SYSTEM_RESOURCES": 1450,
    "ERROR_TIMEOUT": 1460,
}

# winerror.h / fltWinError.h values of every HResult member (§5.1 "Other user-side constants").
HRESULT_VALUES: dict[str, int] = {
    "S_OK": 0x00000000,
    "E_NOTIMPL": 0x80004001,
    "E_FAIL": 0x80004005,
    "E_ACCESSDENIED": 0x80070005,
    "E_HANDLE": 0x80070006,
    "E_OUTOFMEMORY": 0x8007000E,
    "E_INVALIDARG": 0x80070057,
    "ERROR_FLT_DELETING_OBJECT": 0x801F000B,
    "ERROR_FLT_NO_WAITER_FOR_REPLY": 0x801F0020,
}


def test_every_ntstatus_member_is_in_the_table() -> None:
    # A new member needs a row here (B12), and no row names a member that does not exist.
    assert sorted(NtStatus.__members__) == sorted(ROW_IDS)


def test_semantics_table_rows_are_unique() -> None:
    assert len({row.value for row in ALL_ROWS}) == len(ALL_ROWS)


@pytest.mark.parametrize("row", ALL_ROWS, ids=ROW_IDS)
def test_ntstatus_value(row: Row) -> None:
    member = NtStatus[row.name]
    assert int(member) == row.value
    assert NtStatus(row.value) is member
    assert member.name == row.name


@pytest.mark.parametrize("row", ALL_ROWS, ids=ROW_IDS)
def test_flt_hresult_column(row: Row) -> None:
    hr = flt_hresult_from_ntstatus(NtStatus[row.name])
    assert isinstance(hr, HResult)
    assert int(hr) == row.flt_hresult
    # The plain int and the signed spelling translate the same way.
    assert flt_hresult_from_ntstatus(row.value) == row.flt_hresult
    assert flt_hresult_from_ntstatus(NtStatus[row.name].signed) == row.flt_hresult


@pytest.mark.parametrize("row", [r for r in ALL_ROWS if r.win32 is not None], ids=lambda r: r.name)
def test_rtl_ntstatus_to_dos_error_column(row: Row) -> None:
    err = rtl_ntstatus_to_dos_error(row.value)
    assert isinstance(err, Win32Error)
    assert int(err) == row.win32


@pytest.mark.parametrize(
    "row", [r for r in ALL_ROWS if r.from_nt is not None], ids=lambda r: r.name
)
def test_hresult_from_nt_column(row: Row) -> None:
    assert int(hresult_from_nt(row.value)) == row.from_nt


@pytest.mark.parametrize("row", [r for r in ALL_ROWS if r.value != 0], ids=lambda r: r.name)
def test_fltlib_never_uses_hresult_from_nt(row: Row) -> None:
    hr = flt_hresult_from_ntstatus(row.value)
    assert hr != hresult_from_nt(row.value)
    assert not int(hr) & 0x10000000  # the facility-NT bit is never set


def test_rtl_unknown_status_gives_mr_mid_not_found() -> None:
    assert rtl_ntstatus_to_dos_error(0xC0000999) == Win32Error.ERROR_MR_MID_NOT_FOUND
    assert int(rtl_ntstatus_to_dos_error(0xC0000999)) == 317


@pytest.mark.parametrize(("name", "value"), sorted(WIN32_VALUES.items()))
def test_win32_error_values(name: str, value: int) -> None:
    assert int(Win32Error[name]) == value


def test_every_win32_member_is_pinned() -> None:
    assert sorted(Win32Error.__members__) == sorted(WIN32_VALUES)


@pytest.mark.parametrize(("name", "value"), sorted(HRESULT_VALUES.items()))
def test_hresult_values(name: str, value: int) -> None:
    assert int(HResult[name]) == value


def test_every_hresult_member_is_pinned() -> None:
    assert sorted(HResult.__members__) == sorted(HRESULT_VALUES)


# --- fltlib's special cases (§3.6) ---------------------------------------------------------------


def test_status_timeout_is_wait_timeout_not_error_timeout() -> None:
    # RtlNtStatusToDosError says ERROR_TIMEOUT (1460), but fltlib special-cases WAIT_TIMEOUT (258).
    assert rtl_ntstatus_to_dos_error(NtStatus.STATUS_TIMEOUT) == Win32Error.ERROR_TIMEOUT
    assert flt_hresult_from_ntstatus(NtStatus.STATUS_TIMEOUT) == 0x80070102
    assert flt_hresult_from_ntstatus(NtStatus.STATUS_TIMEOUT) != 0x800705B4


def test_flt_buffer_too_small_is_insufficient_buffer() -> None:
    hr = flt_hresult_from_ntstatus(NtStatus.STATUS_FLT_BUFFER_TOO_SMALL)
    assert hr == 0x8007007A
    assert hr == hresult_from_win32(Win32Error.ERROR_INSUFFICIENT_BUFFER)


@pytest.mark.parametrize(
    "status",
    [
        0xC0190001,  # facility 0x19 (transaction)
        0xC0010001,  # facility 1 (debugger)
        0x80130001,  # a warning in facility 0x13 (cluster)
        0x40020001,  # an information code in facility 2
        0xC0FFFFFF,  # facility 0xFF
        0xCFFF0001,  # the highest facility
        0xC01D0001,  # one past the filter manager's facility
        0xC01B0001,  # one before it
    ],
    ids=_id,
)
def test_other_facility_is_e_fail(status: int) -> None:
    assert flt_hresult_from_ntstatus(status) is HResult.E_FAIL
    assert int(flt_hresult_from_ntstatus(status)) == 0x80004005


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0xC01C000B, 0x801F000B),
        (0xC01C0020, 0x801F0020),
        (0xC01C0004, 0x801F0004),  # STATUS_FLT_INVALID_CONTEXT: not a member, same rule
        (0xC01CFFFF, 0x801FFFFF),
        (0x801C0002, 0x801F0002),  # a filter-manager warning keeps its high bit
        (0x401C0005, 0x001F0005),  # an informational one loses the severity bits
    ],
    ids=_id,
)
def test_filter_manager_facility_becomes_facility_1f(status: int, expected: int) -> None:
    hr = flt_hresult_from_ntstatus(status)
    assert int(hr) == expected
    assert hr.facility == 0x1F


def test_unmapped_facility_zero_status_goes_through_rtl() -> None:
    # RtlNtStatusToDosError answers ERROR_MR_MID_NOT_FOUND (317 = 0x13D) for a status it lacks.
    assert flt_hresult_from_ntstatus(0xC0000999) == 0x8007013D


def test_success_is_s_ok() -> None:
    assert flt_hresult_from_ntstatus(0) is HResult.S_OK


# --- predicates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "success", "information", "warning", "error"),
    [
        (0x00000000, True, False, False, False),
        (0x00000102, True, False, False, False),  # STATUS_TIMEOUT: success, not information
        (0x3FFFFFFF, True, False, False, False),
        (0x40000000, True, True, False, False),
        (0x7FFFFFFF, True, True, False, False),
        (0x80000000, False, False, True, False),
        (0x80000005, False, False, True, False),
        (0xBFFFFFFF, False, False, True, False),
        (0xC0000000, False, False, False, True),
        (0xC0000037, False, False, False, True),
        (0xFFFFFFFF, False, False, False, True),
        (-1, False, False, False, True),  # the signed spelling of 0xFFFFFFFF
        (-1073741769, False, False, False, True),  # signed STATUS_PORT_DISCONNECTED
    ],
    ids=_id,
)
def test_nt_predicates(
    status: int, success: bool, information: bool, warning: bool, error: bool
) -> None:
    assert nt_success(status) is success
    assert nt_information(status) is information
    assert nt_warning(status) is warning
    assert nt_error(status) is error


def test_status_timeout_is_a_success_code() -> None:
    assert nt_success(NtStatus.STATUS_TIMEOUT)
    assert not nt_error(NtStatus.STATUS_TIMEOUT)
    assert not nt_success(NtStatus.STATUS_BUFFER_OVERFLOW)  # a warning is not a success


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_severity_classes_partition_the_codes(status: int) -> None:
    severity = status >> 30
    assert nt_success(status) is (severity in (0, 1))
    assert [nt_information(status), nt_warning(status), nt_error(status)].count(True) == (
        0 if severity == 0 else 1
    )


@pytest.mark.parametrize(
    ("hr", "succeeded"),
    [
        (0x00000000, True),
        (0x00000001, True),  # S_FALSE
        (0x001F0005, True),
        (0x7FFFFFFF, True),
        (0x80000000, False),
        (0x800703E5, False),  # HRESULT_FROM_WIN32(ERROR_IO_PENDING) counts as failed
        (0x80070006, False),
        (0xFFFFFFFF, False),
        (-2147024890, False),  # signed E_HANDLE
    ],
    ids=_id,
)
def test_hresult_predicates(hr: int, succeeded: bool) -> None:
    assert hresult_succeeded(hr) is succeeded
    assert hresult_failed(hr) is (not succeeded)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (0, 0x00000000),  # 0 stays 0: S_OK, not 0x80070000
        (1, 0x80070001),
        (2, 0x80070002),
        (6, 0x80070006),
        (87, 0x80070057),
        (122, 0x8007007A),
        (258, 0x80070102),
        (997, 0x800703E5),
        (0xFFFF, 0x8007FFFF),
        (0x12345, 0x80072345),  # the macro keeps only the low 16 bits
        (0x80070005, 0x80070005),  # already an HRESULT (negative as signed): passes through
        (-2147024891, 0x80070005),  # the same, spelled signed
    ],
    ids=_id,
)
def test_hresult_from_win32(error: int, expected: int) -> None:
    hr = hresult_from_win32(error)
    assert isinstance(hr, HResult)
    assert int(hr) == expected


def test_hresult_from_win32_zero_is_s_ok() -> None:
    assert hresult_from_win32(Win32Error.ERROR_SUCCESS) is HResult.S_OK


def test_hresult_from_nt_sets_only_the_nt_bit() -> None:
    # winerror.h: #define HRESULT_FROM_NT(x) ((HRESULT) ((x) | FACILITY_NT_BIT)), even for 0.
    assert hresult_from_nt(0) == 0x10000000
    assert hresult_from_nt(0xC0000037) == 0xD0000037


# --- unknown values, str, signed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "value", "name"),
    [
        (NtStatus, 0xC0DE0001, "NtStatus(0xC0DE0001)"),
        (NtStatus, 0x00000001, "NtStatus(0x00000001)"),
        (NtStatus, 0xFFFFFFFF, "NtStatus(0xFFFFFFFF)"),
        (Win32Error, 1234, "Win32Error(0x000004D2)"),
        (HResult, 0x12345678, "HResult(0x12345678)"),
        (HResult, 0x80070002, "HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND)"),
        (HResult, 0x800703E5, "HRESULT_FROM_WIN32(ERROR_IO_PENDING)"),
        (HResult, 0x8007FFFF, "HRESULT_FROM_WIN32(Win32Error(0x0000FFFF))"),
    ],
    ids=_id,
)
def test_unknown_values_decode_to_pseudo_members(cls: Any, value: int, name: str) -> None:
    before = list(cls)
    code = cls(value)
    assert isinstance(code, cls)
    assert code.name == name
    assert code.value == value
    assert int(code) == value
    # Compare with ==: every lookup builds a fresh object, and the member list does not grow.
    again = cls(value)
    assert code == again == value
    assert hash(code) == hash(value)
    assert list(cls) == before
    assert name not in cls.__members__


def test_unknown_values_work_with_the_functions() -> None:
    status = NtStatus(0xC0DE0001)
    assert nt_error(status)
    assert flt_hresult_from_ntstatus(status) is HResult.E_FAIL
    assert str(status) == "NtStatus(0xC0DE0001) (0xC0DE0001)"


@pytest.mark.parametrize(
    "bad", [0x1_0000_0000, 2**64, -0x8000_0001, -(2**40), "0xC0000037", 1.0, None, b"\x00"]
)
def test_values_that_are_not_32_bit_codes_are_rejected(bad: Any) -> None:
    with pytest.raises(ValueError):
        NtStatus(bad)
    with pytest.raises(ValueError):
        HResult(bad)


def test_negative_values_are_the_signed_spelling() -> None:
    assert NtStatus(-1073741769) is NtStatus.STATUS_PORT_DISCONNECTED
    assert HResult(-2147024890) is HResult.E_HANDLE
    assert NtStatus(-0x8000_0000) == 0x80000000
    assert NtStatus(-1) == 0xFFFFFFFF


@pytest.mark.parametrize(
    ("member", "signed"),
    [
        (NtStatus.STATUS_SUCCESS, 0),
        (NtStatus.STATUS_TIMEOUT, 0x102),
        (NtStatus.STATUS_OBJECT_NAME_COLLISION, -1073741771),
        (NtStatus.STATUS_PORT_DISCONNECTED, -1073741769),
        (NtStatus.STATUS_BUFFER_OVERFLOW, -2147483643),
        (NtStatus.STATUS_FLT_NO_WAITER_FOR_REPLY, -1071906784),
        (HResult.E_HANDLE, -2147024890),
        (HResult.E_FAIL, -2147467259),
    ],
    ids=_id,
)
def test_signed_and_from_signed(member: NtStatus | HResult, signed: int) -> None:
    assert member.signed == signed
    assert type(member).from_signed(signed) is member


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.integers(min_value=-0x8000_0000, max_value=0x7FFF_FFFF))
def test_signed_round_trip(signed: int) -> None:
    for cls in (NtStatus, HResult):
        code = cls.from_signed(signed)
        assert 0 <= int(code) <= 0xFFFFFFFF
        assert code.signed == signed
        assert code == signed & 0xFFFFFFFF


@pytest.mark.parametrize("bad", [0x1_0000_0000, -0x8000_0001, 2**63])
def test_from_signed_rejects_values_outside_32_bits(bad: int) -> None:
    with pytest.raises(ValueError):
        NtStatus.from_signed(bad)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (NtStatus.STATUS_SUCCESS, "STATUS_SUCCESS (0x00000000)"),
        (NtStatus.STATUS_TIMEOUT, "STATUS_TIMEOUT (0x00000102)"),
        (NtStatus.STATUS_PORT_DISCONNECTED, "STATUS_PORT_DISCONNECTED (0xC0000037)"),
        (HResult.E_HANDLE, "E_HANDLE (0x80070006)"),
        (HResult(0x80070002), "HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND) (0x80070002)"),
        (Win32Error.ERROR_INVALID_HANDLE, "ERROR_INVALID_HANDLE (0x00000006)"),
    ],
    ids=_id,
)
def test_str_shows_name_and_hex(code: NtStatus | HResult | Win32Error, text: str) -> None:
    assert str(code) == text
    assert f"{code}" == text


def test_format_spec_formats_the_number() -> None:
    assert f"{NtStatus.STATUS_PORT_DISCONNECTED:#010x}" == "0xc0000037"
    assert f"{HResult.E_HANDLE:08X}" == "80070006"
    assert f"{Win32Error.ERROR_INVALID_PARAMETER:d}" == "87"


def test_facility_and_code_fields() -> None:
    assert NtStatus.STATUS_FLT_NO_WAITER_FOR_REPLY.facility == 0x1C
    assert NtStatus.STATUS_FLT_NO_WAITER_FOR_REPLY.code == 0x0020
    assert NtStatus.STATUS_PORT_DISCONNECTED.facility == 0
    assert NtStatus.STATUS_PORT_DISCONNECTED.code == 0x0037
    assert HResult.E_HANDLE.facility == 7
    assert HResult.E_HANDLE.code == 6
    assert HResult.ERROR_FLT_NO_WAITER_FOR_REPLY.facility == 0x1F


# --- the errors registry --------------------------------------------------------------------------

STATUS_CLASSES: list[tuple[NtStatus, type[StatusError]]] = [
    (NtStatus.STATUS_INVALID_PARAMETER, InvalidParameterError),
    (NtStatus.STATUS_ACCESS_DENIED, AccessDeniedStatusError),
    (NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, ObjectNameNotFoundError),
    (NtStatus.STATUS_OBJECT_NAME_COLLISION, ObjectNameCollisionError),
    (NtStatus.STATUS_PORT_DISCONNECTED, PortDisconnectedError),
    (NtStatus.STATUS_INSUFFICIENT_RESOURCES, InsufficientResourcesError),
    (NtStatus.STATUS_CONNECTION_COUNT_LIMIT, ConnectionCountLimitError),
    (NtStatus.STATUS_FLT_DELETING_OBJECT, FltDeletingObjectError),
]

HRESULT_CLASSES: list[tuple[int, type[HResultError]]] = [
    (0x80070002, FileNotFoundHResultError),
    (0x80070005, AccessDeniedHResultError),
    (0x80070006, InvalidHandleError),
    (0x80070057, InvalidArgumentError),
    (0x8007007A, InsufficientBufferError),
    (0x800703E3, OperationAbortedError),
    (0x800704D6, ConnectionCountLimitHResultError),
    (0x801F0020, NoWaiterForReplyError),
]


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES, ids=_id)
def test_error_for_picks_the_registered_class(status: NtStatus, cls: type[StatusError]) -> None:
    exc = error_for(status)
    assert type(exc) is cls
    assert exc.status is status
    assert cls.code is status
    assert str(exc) == str(status)
    # A plain int and the signed spelling find the same class.
    assert type(error_for(int(status))) is cls
    assert type(error_for(status.signed)) is cls
    assert error_for(status.signed).status == status
    # The class alone knows its status.
    assert cls().status is status


@pytest.mark.parametrize(("hr", "cls"), HRESULT_CLASSES, ids=_id)
def test_hresult_error_for_picks_the_registered_class(hr: int, cls: type[HResultError]) -> None:
    exc = hresult_error_for(hr)
    assert type(exc) is cls
    assert exc.hresult == hr
    assert isinstance(exc.hresult, HResult)
    assert exc.ntstatus is None
    assert exc.data == b""
    assert cls().hresult == hr


@pytest.mark.parametrize(
    "status",
    [NtStatus.STATUS_UNSUCCESSFUL, NtStatus.STATUS_TIMEOUT, 0xC0DE0001],
    ids=_id,
)
def test_unknown_status_gives_unknown_status_error(status: int) -> None:
    exc = error_for(status, "boom")
    assert type(exc) is UnknownStatusError
    assert exc.status == status
    assert str(exc) == "boom"


@pytest.mark.parametrize("hr", [HResult.E_FAIL, 0x80070001, 0x801F000B, 0x12345678], ids=_id)
def test_unknown_hresult_gives_unknown_hresult_error(hr: int) -> None:
    exc = hresult_error_for(hr, ntstatus=0xC0000001, data=b"xy")
    assert type(exc) is UnknownHResultError
    assert exc.hresult == hr
    assert exc.ntstatus is NtStatus.STATUS_UNSUCCESSFUL
    assert exc.data == b"xy"


def test_generic_classes_need_a_code() -> None:
    with pytest.raises(TypeError):
        StatusError()
    with pytest.raises(TypeError):
        UnknownStatusError()
    with pytest.raises(TypeError):
        HResultError()
    with pytest.raises(TypeError):
        UnknownHResultError()


def test_hresult_error_from_ntstatus_translates_as_fltlib() -> None:
    exc = hresult_error_from_ntstatus(NtStatus.STATUS_PORT_DISCONNECTED)
    assert type(exc) is InvalidHandleError
    assert exc.hresult is HResult.E_HANDLE
    assert exc.ntstatus is NtStatus.STATUS_PORT_DISCONNECTED
    assert str(exc) == "E_HANDLE (0x80070006) from STATUS_PORT_DISCONNECTED (0xC0000037)"
    timeout = hresult_error_from_ntstatus(NtStatus.STATUS_TIMEOUT)
    assert type(timeout) is UnknownHResultError
    assert timeout.hresult == 0x80070102
    no_waiter = hresult_error_from_ntstatus(NtStatus.STATUS_FLT_NO_WAITER_FOR_REPLY)
    assert type(no_waiter) is NoWaiterForReplyError


def test_duplicate_status_registration_raises() -> None:
    # Only codes that are already taken: the failing registration must not touch the registry.
    with pytest.raises(RuntimeError, match="STATUS_PORT_DISCONNECTED"):

        class AnotherDisconnected(StatusError):
            code = NtStatus.STATUS_PORT_DISCONNECTED

    assert type(error_for(NtStatus.STATUS_PORT_DISCONNECTED)) is PortDisconnectedError


def test_duplicate_hresult_registration_raises() -> None:
    with pytest.raises(RuntimeError, match="E_HANDLE"):

        class AnotherInvalidHandle(HResultError):
            code = HResult.E_HANDLE

    with pytest.raises(RuntimeError):

        class AnotherNoWaiter(HResultError):
            code = HResult.ERROR_FLT_NO_WAITER_FOR_REPLY

    assert type(hresult_error_for(HResult.E_HANDLE)) is InvalidHandleError
    assert type(hresult_error_for(0x801F0020)) is NoWaiterForReplyError


def test_subclass_without_its_own_code_is_not_a_duplicate() -> None:
    class SpecialDisconnected(PortDisconnectedError):
        pass

    assert SpecialDisconnected().status is NtStatus.STATUS_PORT_DISCONNECTED
    assert type(error_for(NtStatus.STATUS_PORT_DISCONNECTED)) is PortDisconnectedError


def test_insufficient_buffer_error_carries_required_size() -> None:
    exc = InsufficientBufferError(required_size=1048, ntstatus=NtStatus.STATUS_BUFFER_TOO_SMALL)
    assert exc.required_size == 1048
    assert exc.hresult == 0x8007007A
    assert exc.ntstatus is NtStatus.STATUS_BUFFER_TOO_SMALL
    assert InsufficientBufferError().required_size == 0
    assert type(hresult_error_from_ntstatus(NtStatus.STATUS_BUFFER_TOO_SMALL)) is (
        InsufficientBufferError
    )


def test_port_closed_error_is_closed_resource_and_invalid_handle() -> None:
    exc = PortClosedError()
    assert isinstance(exc, ClosedResourceError)
    assert isinstance(exc, InvalidHandleError)
    assert isinstance(exc, HResultError)
    assert isinstance(exc, FltEmuError)
    assert exc.hresult is HResult.E_HANDLE
    # Not registered: E_HANDLE from the daemon means "disconnected", not "you closed it".
    assert type(hresult_error_for(HResult.E_HANDLE)) is InvalidHandleError
    with pytest.raises(ClosedResourceError):
        raise exc


def test_protocol_errors() -> None:
    local = LocalProtocolError("bad")
    remote = RemoteProtocolError("worse", status_hint=NtStatus.STATUS_INSUFFICIENT_RESOURCES)
    assert isinstance(local, ProtocolError) and isinstance(remote, ProtocolError)
    assert not isinstance(local, RemoteProtocolError)
    assert not isinstance(remote, (StatusError, HResultError))
    assert local.status_hint is NtStatus.STATUS_INVALID_PARAMETER
    assert remote.status_hint is NtStatus.STATUS_INSUFFICIENT_RESOURCES
