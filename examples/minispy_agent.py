r"""The user half of Microsoft's minispy sample (mspyUser.c, mspyLog.c), written against fltuser.

Minispy's kernel half never sends anything: it buffers one LOG_RECORD per file-system
operation, and the user program polls for them. Run it against the built-in sample:

    fltemu serve --filter minispy --set minispy.source=dir:/tmp/spy
    python examples/minispy_agent.py

How it maps onto the Microsoft program:

* mspyUser.c connects to ``\MiniSpyPort`` with no context; a failed connect prints the
  HRESULT (here as 0x%08x) and exits (here with status 2: 0x80070002 when the daemon or the
  minispy filter is not there). This program also asks once for the filter's version
  (``COMMAND_MESSAGE {GetMiniSpyVersion}``, 4-byte MINISPYVER output) and prints it.
* mspyLog.c's RetrieveLogRecords is the one logging loop: FilterSendMessage with the 8-byte
  ``COMMAND_MESSAGE {GetMiniSpyLog, 0}`` and a 4096-byte output buffer;
  - 0x80070006 (HRESULT_FROM_WIN32(ERROR_INVALID_HANDLE)): the kernel component has
    unloaded: print it and exit 0 (ExitProcess(0));
  - 0x80070103 (ERROR_NO_MORE_ITEMS, from STATUS_NO_MORE_ENTRIES): no records; sleep 200 ms
    and ask again;
  - any other failure: print "UNEXPECTED ERROR", sleep 200 ms, ask again;
  - success: walk the records packed in the output while a whole 152-byte x64 header fits,
    each ``Length`` bytes long (at least the header and a UTF-16 NUL), and print one line per
    record (ScreenDump's fields: IRP/FIO/FSF, sequence number, times, process.thread, the
    major function's name, IRP flags, status:information, the file name); sleep 200 ms when
    nothing came back.
* The parts of mspyUser.c that attach the filter to volumes (FilterAttach, FilterDetach,
  volume enumeration) have no counterpart: fltemu has no volumes; the sample's ``source``
  setting says where operations come from.

Records are the x64 LOG_RECORD of minispy.h: ``{ULONG Length; ULONG SequenceNumber; ULONG
RecordType; ULONG Reserved; RECORD_DATA Data (136 bytes); WCHAR Name[]}``.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import struct
import sys
import time
from types import FrameType

import fltuser

PORT_NAME = "\\MiniSpyPort"
#: MINISPY_COMMAND.
GET_MINISPY_LOG = 0
GET_MINISPY_VERSION = 1
#: COMMAND_MESSAGE {MINISPY_COMMAND Command; ULONG Reserved; UCHAR Data[]}: 8 bytes.
COMMAND_MESSAGE = struct.Struct("<II")
#: MINISPYVER {USHORT Major; USHORT Minor}.
MINISPYVER = struct.Struct("<HH")
#: mspyLog.c's BUFFER_SIZE and POLL_INTERVAL.
BUFFER_SIZE = 4096
POLL_INTERVAL = 0.2
#: LOG_RECORD's header on x64: Length, SequenceNumber, RecordType, Reserved, then RECORD_DATA:
#: OriginatingTime, CompletionTime (LARGE_INTEGER); DeviceObject, FileObject, Transaction,
#: ProcessId, ThreadId (FILE_ID = ULONG_PTR); Information (ULONG_PTR); Status (NTSTATUS);
#: IrpFlags, Flags (ULONG); CallbackMajorId, CallbackMinorId, Reserved[2] (UCHAR);
#: Arg1..Arg5 (PVOID); Arg6 (LARGE_INTEGER); EcpCount, KnownEcpMask (ULONG). 152 bytes.
LOG_RECORD = struct.Struct("<IIII qq5QQ iII BB2x 5Q q II")
#: sizeof(WCHAR): the smallest name is its NUL.
WCHAR_BYTES = 2
#: RecordType bits (minispy.h).
RECORD_TYPE_FILETAG = 0x00000004
RECORD_TYPE_FLAG_EXCEED_MEMORY_ALLOWANCE = 0x20000000
RECORD_TYPE_FLAG_OUT_OF_MEMORY = 0x10000000
#: RECORD_DATA.Flags: how the operation came (FLT_CALLBACK_DATA_*_OPERATION).
FLT_CALLBACK_DATA_IRP_OPERATION = 0x00000001
FLT_CALLBACK_DATA_FAST_IO_OPERATION = 0x00000002
FLT_CALLBACK_DATA_FS_FILTER_OPERATION = 0x00000004
#: IRP flags ScreenDump spells out.
IRP_NOCACHE = 0x00000001
IRP_PAGING_IO = 0x00000002
IRP_SYNCHRONOUS_API = 0x00000004
IRP_SYNCHRONOUS_PAGING_IO = 0x00000040
#: HRESULTs the loop tells apart.
E_HANDLE = 0x80070006  # HRESULT_FROM_WIN32(ERROR_INVALID_HANDLE)
NO_MORE_ITEMS = 0x80070103  # HRESULT_FROM_WIN32(ERROR_NO_MORE_ITEMS)
#: 100-ns intervals from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
EPOCH_1601_OFFSET_100NS = 116_444_736_000_000_000

#: IRP_MJ_* (wdm.h) and the Filter Manager's negative callback ids, as mspyLog.c names them.
MAJOR_FUNCTIONS = {
    0x00: "IRP_MJ_CREATE",
    0x01: "IRP_MJ_CREATE_NAMED_PIPE",
    0x02: "IRP_MJ_CLOSE",
    0x03: "IRP_MJ_READ",
    0x04: "IRP_MJ_WRITE",
    0x05: "IRP_MJ_QUERY_INFORMATION",
    0x06: "IRP_MJ_SET_INFORMATION",
    0x07: "IRP_MJ_QUERY_EA",
    0x08: "IRP_MJ_SET_EA",
    0x09: "IRP_MJ_FLUSH_BUFFERS",
    0x0A: "IRP_MJ_QUERY_VOLUME_INFORMATION",
    0x0B: "IRP_MJ_SET_VOLUME_INFORMATION",
    0x0C: "IRP_MJ_DIRECTORY_CONTROL",
    0x0D: "IRP_MJ_FILE_SYSTEM_CONTROL",
    0x0E: "IRP_MJ_DEVICE_CONTROL",
    0x0F: "IRP_MJ_INTERNAL_DEVICE_CONTROL",
    0x10: "IRP_MJ_SHUTDOWN",
    0x11: "IRP_MJ_LOCK_CONTROL",
    0x12: "IRP_MJ_CLEANUP",
    0x13: "IRP_MJ_CREATE_MAILSLOT",
    0x14: "IRP_MJ_QUERY_SECURITY",
    0x15: "IRP_MJ_SET_SECURITY",
    0x16: "IRP_MJ_POWER",
    0x17: "IRP_MJ_SYSTEM_CONTROL",
    0x18: "IRP_MJ_DEVICE_CHANGE",
    0x19: "IRP_MJ_QUERY_QUOTA",
    0x1A: "IRP_MJ_SET_QUOTA",
    0x1B: "IRP_MJ_PNP",
    0xFF: "IRP_MJ_ACQUIRE_FOR_SECTION_SYNCHRONIZATION",
    0xFE: "IRP_MJ_RELEASE_FOR_SECTION_SYNCHRONIZATION",
    0xFD: "IRP_MJ_ACQUIRE_FOR_MOD_WRITE",
    0xFC: "IRP_MJ_RELEASE_FOR_MOD_WRITE",
    0xFB: "IRP_MJ_ACQUIRE_FOR_CC_FLUSH",
    0xFA: "IRP_MJ_RELEASE_FOR_CC_FLUSH",
    0xF9: "IRP_MJ_QUERY_OPEN",
    0xF3: "IRP_MJ_FAST_IO_CHECK_IF_POSSIBLE",
    0xF2: "IRP_MJ_NETWORK_QUERY_OPEN",
    0xF1: "IRP_MJ_MDL_READ",
    0xF0: "IRP_MJ_MDL_READ_COMPLETE",
    0xEF: "IRP_MJ_PREPARE_MDL_WRITE",
    0xEE: "IRP_MJ_MDL_WRITE_COMPLETE",
    0xED: "IRP_MJ_VOLUME_MOUNT",
    0xEC: "IRP_MJ_VOLUME_DISMOUNT",
}


def say(line: str) -> None:
    """One line on stdout, flushed (people and tests read it as it comes)."""
    print(line, flush=True)


def major_name(major: int) -> str:
    """PrintIrpCode's major function name."""
    return MAJOR_FUNCTIONS.get(major, f"Unknown Irp major function ({major})")


def format_time(filetime: int) -> str:
    """FormatSystemTime of the local time: hours:minutes:seconds:milliseconds."""
    try:
        seconds = (filetime - EPOCH_1601_OFFSET_100NS) / 10_000_000
        t = datetime.datetime.fromtimestamp(seconds)
    except (OverflowError, OSError, ValueError):
        return "time error"
    return f"{t:%H:%M:%S}:{t.microsecond // 1000:03d}"


def operation_kind(flags: int) -> str:
    """IRP, fast I/O, file-system filter callback, or ERR."""
    if flags & FLT_CALLBACK_DATA_IRP_OPERATION:
        return "IRP"
    if flags & FLT_CALLBACK_DATA_FAST_IO_OPERATION:
        return "FIO"
    if flags & FLT_CALLBACK_DATA_FS_FILTER_OPERATION:
        return "FSF"
    return "ERR"


def format_record(sequence: int, fields: tuple[int, ...], name: str) -> str:
    """ScreenDump, on one line."""
    (
        originating,
        completion,
        _device_object,
        file_object,
        _transaction,
        process_id,
        thread_id,
        information,
        status,
        irp_flags,
        flags,
        major,
        _minor,
        *_args,
    ) = fields
    irp_letters = "".join(
        letter if irp_flags & bit else "-"
        for letter, bit in (
            ("N", IRP_NOCACHE),
            ("P", IRP_PAGING_IO),
            ("S", IRP_SYNCHRONOUS_API),
            ("Y", IRP_SYNCHRONOUS_PAGING_IO),
        )
    )
    return (
        f"{operation_kind(flags)} {sequence:08X} {format_time(originating):<12} "
        f"{format_time(completion):<12} {process_id:8x}.{thread_id:<4x} "
        f"{major_name(major):<35} {irp_flags:08x} {irp_letters} {file_object:016x} "
        f"{status & 0xFFFFFFFF:08x}:{information:016x} {name}"
    )


def parse_records(buffer: bytes) -> list[tuple[bool, str]]:
    """RetrieveLogRecords' walk over one GetMiniSpyLog output.

    Returns:
        The lines to print, each with whether it is a record's line.
    """
    lines: list[tuple[bool, str]] = []
    used = 0
    while used + LOG_RECORD.size <= len(buffer):
        length, sequence, record_type, _reserved, *fields = LOG_RECORD.unpack_from(buffer, used)
        if length < LOG_RECORD.size + WCHAR_BYTES:
            lines.append(
                (
                    False,
                    f"UNEXPECTED LOG_RECORD->Length: length={length} "
                    f"expected>={LOG_RECORD.size + WCHAR_BYTES}",
                )
            )
            break
        if used + length > len(buffer):
            lines.append(
                (False, f"UNEXPECTED LOG_RECORD size: used={used + length} bytes={len(buffer)}")
            )
            break
        record = buffer[used : used + length]
        used += length
        if record_type & RECORD_TYPE_FILETAG:
            continue  # a reparse-point tag record; the emulated filter makes none
        raw_name = record[LOG_RECORD.size :]
        end = next(
            (i for i in range(0, len(raw_name) - 1, 2) if raw_name[i : i + 2] == b"\0\0"),
            len(raw_name) & ~1,
        )
        name = raw_name[:end].decode("utf-16-le", "replace")
        lines.append((True, format_record(sequence, tuple(fields), name)))
        if record_type & RECORD_TYPE_FLAG_OUT_OF_MEMORY:
            lines.append((False, f"M:  {sequence:08X} System Out of Memory"))
        elif record_type & RECORD_TYPE_FLAG_EXCEED_MEMORY_ALLOWANCE:
            lines.append((False, f"M:  {sequence:08X} Exceeded Maximum Allowed Memory Buffers"))
    return lines


def query_version(port: fltuser.Port) -> None:
    """GetMiniSpyVersion: print the filter's MINISPYVER."""
    try:
        out = port.send(COMMAND_MESSAGE.pack(GET_MINISPY_VERSION, 0), MINISPYVER.size)
    except fltuser.HResultError as exc:
        say(f"Minispy: GetMiniSpyVersion failed: 0x{exc.hresult:08x}")
        return
    if len(out) < MINISPYVER.size:
        say(f"Minispy: GetMiniSpyVersion returned {len(out)} bytes")
        return
    major, minor = MINISPYVER.unpack_from(out)
    say(f"Minispy: filter version {major}.{minor}")


def log_loop(port: fltuser.Port, count: int | None) -> int:
    """RetrieveLogRecords: poll for records until the filter unloads (or ``count`` records)."""
    command = COMMAND_MESSAGE.pack(GET_MINISPY_LOG, 0)
    printed = 0
    while True:
        try:
            out = port.send(command, BUFFER_SIZE)
        except fltuser.HResultError as exc:
            if exc.hresult == E_HANDLE:
                say("Minispy: kernel component has unloaded. Exiting")
                return 0
            if exc.hresult != NO_MORE_ITEMS:
                say(f"UNEXPECTED ERROR received: 0x{exc.hresult:08x}")
            time.sleep(POLL_INTERVAL)
            continue
        for is_record, line in parse_records(out):
            say(line)
            printed += is_record
            if count is not None and printed >= count:
                return 0
        if not out:
            time.sleep(POLL_INTERVAL)  # "If we didn't get any data, pause"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "The user half of Microsoft's minispy minifilter sample (mspyUser.c, mspyLog.c) "
            "over fltemu: connects to \\MiniSpyPort, prints the filter's version, then polls "
            "with GetMiniSpyLog (8-byte command, 4096-byte output) and prints one line per "
            "LOG_RECORD until the filter unloads."
        ),
        epilog=(
            "example: fltemu serve --filter minispy --set minispy.source=dir:/tmp/spy & "
            "python examples/minispy_agent.py. Exit status: 0 when the kernel component "
            "unloads (0x80070006), on Ctrl-C or after --count records; 2 when the connect "
            "fails (0x80070002: no daemon or no minispy filter)."
        ),
    )
    parser.add_argument(
        "--address",
        default=None,
        help="the daemon's socket (default: $FLTEMU_SOCKET, else the default socket)",
    )
    parser.add_argument("--count", type=int, default=None, metavar="N", help="exit after N records")
    args = parser.parse_args(argv)
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")

    try:
        port = fltuser.connect(PORT_NAME, address=args.address)
    except fltuser.HResultError as exc:
        say(f"Could not connect to filter: 0x{exc.hresult:08x} ({exc})")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    with port:
        try:
            say(f"Minispy: connected to {PORT_NAME}")
            query_version(port)
            return log_loop(port, args.count)
        except KeyboardInterrupt:
            say("Log: Shutting down")
            return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
