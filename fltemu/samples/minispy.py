r"""The ``minispy`` sample: the kernel half of Microsoft's minispy minifilter, over fltemu.

As ``filesys/miniFilter/minispy/filter/minispy.c`` and ``mspyLib.c`` do it (semantics §7.2):
port ``\MiniSpyPort``, the default security descriptor, **MaxConnections 1**, SpyConnect /
SpyDisconnect (which closes the client port) / SpyMessage. Pure polling: the filter never
calls FltSendMessage; the user program asks with FilterSendMessage and a ``COMMAND_MESSAGE``:

* input shorter than the 4-byte ``Command`` → STATUS_INVALID_PARAMETER;
* ``GetMiniSpyLog`` (0): no output buffer (``out_size`` 0) → STATUS_INVALID_PARAMETER;
  otherwise as many whole ``LOG_RECORD``\ s as fit, packed back to back, each ``Length``
  bytes (a multiple of 8): STATUS_SUCCESS with the bytes; STATUS_NO_MORE_ENTRIES (the client
  sees 0x80070103) when there are none; STATUS_BUFFER_TOO_SMALL (fltmgr turns it into
  STATUS_FLT_BUFFER_TOO_SMALL, the client sees 0x8007007A) when the first does not fit;
* ``GetMiniSpyVersion`` (1): output under 4 bytes → STATUS_INVALID_PARAMETER; otherwise
  ``MINISPYVER {2, 0}``, 4 bytes;
* any other command → STATUS_INVALID_PARAMETER.

After those size checks, the sample checks that the *output pointer* is aligned
(pointer-aligned, 8 bytes, for the log; ULONG-aligned for the version) and answers
STATUS_DATATYPE_MISALIGNMENT (the client sees 0x800703E6) otherwise. The user's buffer never
crosses the socket, but its address's low bits do (``output_buffer_address``, protocol §7.1):
fltemu's fltlib.dll sends the real ones, the Python client none (its buffers count as
aligned).

Records are the x64 ``LOG_RECORD``: a 152-byte header (``Length``, ``SequenceNumber``,
``RecordType``, ``Reserved``, the 136-byte ``RECORD_DATA``) and the NUL-terminated UTF-16
name, cut to 427 characters (``MAX_NAME_SPACE`` of a 1024-byte ``RECORD_SIZE``). They are
logged whether or not a client is connected, and kept for the next client. At most
``max_records`` are buffered (the sample's ``MaxRecords``, default 500); past that one more
record goes into the sample's static buffer with ``RECORD_TYPE_FLAG_STATIC |
RECORD_TYPE_FLAG_EXCEED_MEMORY_ALLOWANCE`` (the user program prints "Exceeded Maximum
Allowed Memory Buffers"), and further operations are dropped and counted in
``MiniSpyState.dropped`` until the client drains the buffer. Sequence numbers count the
records kept, as in the sample.

Settings (``fltemu serve --filter minispy --set minispy.KEY=VALUE``):

* ``source`` — ``inject`` (the default: like the real minispy before its user program
  attaches it to a volume, nothing is logged; records come from ``fltemu send`` or
  ``MiniSpyState.log_operation``), ``dir:PATH`` (every file that appears under PATH is logged
  as an IRP_MJ_CREATE, every change as an IRP_MJ_WRITE of the file's size, every removal as
  an IRP_MJ_SET_INFORMATION with FileDispositionInformation; the name is the file's path,
  ``FileObject`` its inode, process and thread ids 0 because polling cannot tell) or
  ``synthetic:RATE`` (RATE made-up operations a second).
* ``max_records`` — the record limit (default 500).
* ``interval`` — seconds between two polls of ``dir:`` (default 0.2).
* ``seed`` — the ``synthetic:`` generator's seed (default 0).

Names are what the Vista-and-later build (every build of the sample today) writes: a create's
is formatted ``"%wZ %wZ"`` with the ECP text, which is empty because fltemu has no extra
create parameters, so **a create's name ends in one space** and the user program prints it
so; other operations carry the bare name (``record_name``).

The state is reachable as ``flt.context`` (or ``state_of(flt)``).

Differences from Microsoft's code, and why (also in ``docs/fltmgr-semantics.md`` §7.5):

* No ECPs (EcpCount 0, KnownEcpMask 0, empty ECP text) and no FILETAG records: a Linux
  directory has neither extra create parameters nor reparse tags.
* The alignment checks see only what the client says of its output buffer: the low bits of
  its address when the client knows them (fltemu's fltlib.dll, protocol §7.1), "aligned"
  from the Python client. The 32-bit-process case (ULONG alignment under IoIs32bitProcess)
  is not modelled: every caller is checked as a 64-bit one.
* ``dir:`` operations have process and thread ids 0 and no pre/post times of their own:
  polling sees a change after the fact, not who made it.
Not here: the user half, the sources (``_sources``).
"""

from __future__ import annotations

import enum
import logging
import random
import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from ..kernel import ClientPort, Filter, FilterState, ServerPort, ServerPortState
from ..status import NtStatus
from ._sources import (
    DEFAULT_INTERVAL,
    MAX_INTERVAL,
    MIN_INTERVAL,
    FileEvent,
    FileEventKind,
    SampleSettings,
    SourceRunner,
    parse_source,
    sample_state,
)
from ._structs import (
    POINTER_BYTES,
    ULONG,
    TraceDecoder,
    enum_name,
    is_aligned,
    read_u32,
    round_to_size,
    system_time_now,
)

__all__ = [
    "COMMAND_MESSAGE",
    "LOG_RECORD",
    "MAX_CONNECTIONS",
    "MAX_LOG_RECORD_LENGTH",
    "MAX_NAME_SPACE",
    "MINISPYVER",
    "PORT_NAME",
    "RECORD_DATA",
    "TRACE_DECODERS",
    "MiniSpyCommand",
    "MiniSpyState",
    "SpyOperation",
    "build_log_record",
    "describe_message",
    "record_name",
    "setup",
    "state_of",
    "teardown",
]

log = logging.getLogger(__name__)

#: MINISPY_PORT_NAME (minispy.h).
PORT_NAME: Final = "\\MiniSpyPort"
#: The sample's MaxConnections.
MAX_CONNECTIONS: Final = 1
#: MINISPY_MAJ_VERSION, MINISPY_MIN_VERSION.
MINISPY_MAJ_VERSION: Final = 2
MINISPY_MIN_VERSION: Final = 0

#: COMMAND_MESSAGE {MINISPY_COMMAND Command; ULONG Reserved; UCHAR Data[]}: 8 bytes + Data.
COMMAND_MESSAGE: Final = struct.Struct("<II")
#: MINISPYVER {USHORT Major; USHORT Minor}: 4 bytes.
MINISPYVER: Final = struct.Struct("<HH")
#: RECORD_DATA, x64: LARGE_INTEGER OriginatingTime, CompletionTime; FILE_ID (ULONG_PTR)
#: DeviceObject, FileObject, Transaction, ProcessId, ThreadId; ULONG_PTR Information;
#: NTSTATUS Status (@64); ULONG IrpFlags, Flags; UCHAR CallbackMajorId, CallbackMinorId,
#: Reserved[2]; PVOID Arg1..Arg5 (@80); LARGE_INTEGER Arg6 (@120); ULONG EcpCount,
#: KnownEcpMask: 136 bytes.
_RECORD_DATA_FORMAT: Final = "qq5QQiIIBB2x5QqII"
RECORD_DATA: Final = struct.Struct("<" + _RECORD_DATA_FORMAT)
#: LOG_RECORD {ULONG Length; ULONG SequenceNumber; ULONG RecordType; ULONG Reserved;
#: RECORD_DATA Data; WCHAR Name[]}: a 152-byte header before the name.
LOG_RECORD: Final = struct.Struct("<IIII" + _RECORD_DATA_FORMAT)
#: RECORD_SIZE: the buffer a record lives in, LIST_ENTRY included.
RECORD_SIZE: Final = 1024
#: sizeof(LIST_ENTRY) on x64: RECORD_LIST's header before the LOG_RECORD.
_LIST_ENTRY_BYTES: Final = 16
#: MAX_LOG_RECORD_LENGTH = RECORD_SIZE - FIELD_OFFSET(RECORD_LIST, LogRecord): 1008.
MAX_LOG_RECORD_LENGTH: Final = RECORD_SIZE - _LIST_ENTRY_BYTES
#: MAX_NAME_SPACE = ROUND_TO_SIZE(RECORD_SIZE - sizeof(RECORD_LIST), sizeof(PVOID)): 856.
MAX_NAME_SPACE: Final = round_to_size(
    RECORD_SIZE - (_LIST_ENTRY_BYTES + LOG_RECORD.size), POINTER_BYTES
)
#: MAX_NAME_WCHARS_LESS_NULL: the longest name kept, in UTF-16 code units (427).
MAX_NAME_WCHARS_LESS_NULL: Final = (MAX_NAME_SPACE - 2) // 2

#: RecordType values and flags (minispy.h).
RECORD_TYPE_NORMAL: Final = 0x00000000
RECORD_TYPE_FILETAG: Final = 0x00000004
RECORD_TYPE_FLAG_STATIC: Final = 0x80000000
RECORD_TYPE_FLAG_EXCEED_MEMORY_ALLOWANCE: Final = 0x20000000
RECORD_TYPE_FLAG_OUT_OF_MEMORY: Final = 0x10000000

#: IRP major function codes (wdm.h) the emulated operations use.
IRP_MJ_CREATE: Final = 0x00
IRP_MJ_CLOSE: Final = 0x02
IRP_MJ_READ: Final = 0x03
IRP_MJ_WRITE: Final = 0x04
IRP_MJ_SET_INFORMATION: Final = 0x06
IRP_MJ_CLEANUP: Final = 0x12
#: IRP flags (wdm.h) for the operation kinds.
IRP_SYNCHRONOUS_API: Final = 0x00000004
IRP_CREATE_OPERATION: Final = 0x00000080
IRP_READ_OPERATION: Final = 0x00000100
IRP_WRITE_OPERATION: Final = 0x00000200
IRP_CLOSE_OPERATION: Final = 0x00000400
#: FLTFL_CALLBACK_DATA_IRP_OPERATION: the operation came as an IRP.
FLTFL_CALLBACK_DATA_IRP_OPERATION: Final = 0x00000001
#: FILE_CREATE disposition (in Create.Options' top byte) and FILE_CREATED (Information).
FILE_CREATE: Final = 0x00000002
FILE_CREATED: Final = 0x00000002
#: FileDispositionInformation, and sizeof(FILE_DISPOSITION_INFORMATION).
FILE_DISPOSITION_INFORMATION_CLASS: Final = 13
FILE_DISPOSITION_INFORMATION_BYTES: Final = 1

#: The attribute of the Filter that holds the sample's state.
#: The settings this sample reads.
SETTINGS: Final = ("source", "max_records", "interval", "seed")
DEFAULT_SOURCE: Final = "inject"
#: DEFAULT_MAX_RECORDS_TO_ALLOCATE (mspyKern.h).
DEFAULT_MAX_RECORDS: Final = 500
#: The largest ``max_records`` accepted: 100 000 records of at most 1008 bytes, ~100 MB.
MAX_MAX_RECORDS: Final = 100_000

#: The ECP text of a create that carried no extra create parameters (an empty UNICODE_STRING).
_NO_ECP_DATA: Final = ""

_SUCCESS: Final = NtStatus.STATUS_SUCCESS
_INVALID_PARAMETER: Final = NtStatus.STATUS_INVALID_PARAMETER
_MISALIGNED: Final = NtStatus.STATUS_DATATYPE_MISALIGNMENT


class MiniSpyCommand(enum.IntEnum):
    """MINISPY_COMMAND."""

    GetMiniSpyLog = 0
    GetMiniSpyVersion = 1


def describe_message(kind: str, data: bytes) -> str | None:
    """How ``fltemu trace`` shows the sample's messages: a COMMAND_MESSAGE's command."""
    if kind == "send" and len(data) >= COMMAND_MESSAGE.size:
        command, _ = COMMAND_MESSAGE.unpack_from(data)
        return f"COMMAND_MESSAGE Command={enum_name(MiniSpyCommand, command)}"
    return None


#: Its port's messages, as ``fltemu trace`` shows them.
TRACE_DECODERS: Final[dict[str, TraceDecoder]] = {PORT_NAME: describe_message}


@dataclass(frozen=True, slots=True)
class SpyOperation:
    """One observed file-system operation: what SpyLogPreOperationData and
    SpyLogPostOperationData copy into a record.

    Attributes mirror RECORD_DATA's fields; times are Windows system times (100-ns since
    1601), 0 meaning "now".
    """

    name: str | None
    major: int
    minor: int = 0
    status: int = 0
    information: int = 0
    irp_flags: int = 0
    flags: int = FLTFL_CALLBACK_DATA_IRP_OPERATION
    device_object: int = 0
    file_object: int = 0
    transaction: int = 0
    process_id: int = 0
    thread_id: int = 0
    args: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    arg6: int = 0
    originating_time: int = 0
    completion_time: int = 0


def _u64(value: int) -> int:
    return value & 0xFFFFFFFFFFFFFFFF


def _i64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def record_name(op: SpyOperation) -> str | None:
    """The text SpySetRecordNameAndEcpData puts in a record's ``Name``, before the cut.

    The Vista-and-later build (every build of the sample today) formats a create's name as
    ``"%wZ %wZ"`` with the ECP string that SpyParseEcps built, which is empty when the create
    carried no ECPs (always here: fltemu has no ECPs): the name and one space. Other
    operations get the name alone (``"%wZ"``). When the result is longer than
    MAX_NAME_WCHARS_LESS_NULL, ``_snwprintf`` fails and the sample keeps that many code
    units, so a long create name loses its space with the rest.
    """
    if op.name is None:
        return None
    if op.major == IRP_MJ_CREATE:
        return f"{op.name} {_NO_ECP_DATA}"
    return op.name


def build_log_record(sequence: int, record_type: int, op: SpyOperation) -> bytes:
    """A LOG_RECORD as SpyNewRecord, SpySetRecordNameAndEcpData and SpyGetLog leave it.

    The name (``record_name``: a create's ends in a space) is cut to
    MAX_NAME_WCHARS_LESS_NULL code units and NUL-terminated; ``Length`` covers header, name
    and NUL, rounded up to 8 bytes; a record without a name gets an empty one, as SpyGetLog
    gives it.
    """
    now = system_time_now()
    a1, a2, a3, a4, a5 = op.args
    text = record_name(op)
    status = op.status & 0xFFFFFFFF
    if text is None:
        name = b""
        length = LOG_RECORD.size + round_to_size(2, POINTER_BYTES)
    else:
        encoded = text.encode("utf-16-le", "surrogatepass")
        name = encoded[: MAX_NAME_WCHARS_LESS_NULL * 2]
        length = round_to_size(LOG_RECORD.size + len(name) + 2, POINTER_BYTES)
    header = LOG_RECORD.pack(
        length,
        sequence & 0xFFFFFFFF,
        record_type & 0xFFFFFFFF,
        0,
        _i64(op.originating_time or now),
        _i64(op.completion_time or now),
        _u64(op.device_object),
        _u64(op.file_object),
        _u64(op.transaction),
        _u64(op.process_id),
        _u64(op.thread_id),
        _u64(op.information),
        status - (1 << 32) if status >= 1 << 31 else status,
        op.irp_flags & 0xFFFFFFFF,
        op.flags & 0xFFFFFFFF,
        op.major & 0xFF,
        op.minor & 0xFF,
        _u64(a1),
        _u64(a2),
        _u64(a3),
        _u64(a4),
        _u64(a5),
        _i64(op.arg6),
        0,  # EcpCount
        0,  # KnownEcpMask
    )
    return (header + name).ljust(length, b"\0")


class MiniSpyState:
    """The sample's globals (MiniSpyData): the record list and its limits.

    Args:
        flt: the filter.
        max_records: MaxRecordsToAllocate.

    Attributes:
        client_port: the connection (MiniSpyData.ClientPort).
        records: the output list, oldest first: encoded LOG_RECORDs.
        records_allocated: records in the list that count against ``max_records`` (the
            static one does not).
        static_buffer_in_use: the static out-of-memory record is in the list.
        sequence: the last sequence number given.
        dropped: operations not logged because the limit was reached and the static record
            was taken.
    """

    def __init__(self, flt: Filter, max_records: int) -> None:
        self.flt = flt
        self.max_records = max_records
        self.server_port: ServerPort | None = None
        self.client_port: ClientPort | None = None
        self.records: deque[tuple[bytes, bool]] = deque()
        self.records_allocated = 0
        self.static_buffer_in_use = False
        self.sequence = 0
        self.dropped = 0
        self.runner: SourceRunner[SpyOperation] | None = None

    def __repr__(self) -> str:
        return (
            f"<MiniSpyState records={len(self.records)}/{self.max_records} "
            f"sequence={self.sequence} dropped={self.dropped}>"
        )

    # --- logging ------------------------------------------------------------------------------

    def log_operation(self, op: SpyOperation) -> bool:
        """SpyNewRecord + SpyLog: buffer one operation's record.

        Returns:
            False when it was dropped (limit reached, static record taken).
        """
        record_type = RECORD_TYPE_NORMAL
        is_static = False
        if self.records_allocated < self.max_records:
            self.records_allocated += 1
        elif not self.static_buffer_in_use:
            self.static_buffer_in_use = True
            is_static = True
            record_type = RECORD_TYPE_FLAG_EXCEED_MEMORY_ALLOWANCE | RECORD_TYPE_FLAG_STATIC
        else:
            self.dropped += 1
            return False
        self.sequence = (self.sequence + 1) & 0xFFFFFFFF
        self.records.append((build_log_record(self.sequence, record_type, op), is_static))
        return True

    def get_log(self, out_size: int) -> tuple[NtStatus, bytes]:
        """SpyGetLog: as many whole records as fit in ``out_size`` bytes."""
        out = bytearray()
        remaining = out_size
        records_available = False
        while self.records and remaining > 0:
            records_available = True
            record, is_static = self.records[0]
            if remaining < len(record):
                break  # put back: the first record that does not fit stays first
            self.records.popleft()
            self._free(is_static)
            out += record
            remaining -= len(record)
        if not out and records_available:
            return NtStatus.STATUS_BUFFER_TOO_SMALL, b""
        if out:
            return _SUCCESS, bytes(out)
        return NtStatus.STATUS_NO_MORE_ENTRIES, b""

    def empty_output_buffer_list(self) -> None:
        """SpyEmptyOutputBufferList: free every record (at unload)."""
        while self.records:
            _, is_static = self.records.popleft()
            self._free(is_static)

    def _free(self, is_static: bool) -> None:
        # SpyFreeRecord: the static buffer becomes free again, or one allocation is returned.
        if is_static:
            self.static_buffer_in_use = False
        else:
            self.records_allocated -= 1

    # --- the port callbacks -------------------------------------------------------------------

    def connect_notify(
        self, client_port: ClientPort, server_port_cookie: object, context: bytes
    ) -> NtStatus:
        """SpyConnect: remember the connection; cookie NULL."""
        self.client_port = client_port
        return _SUCCESS

    async def disconnect_notify(self, cookie: object) -> None:
        """SpyDisconnect: FltCloseClientPort(&MiniSpyData.ClientPort)."""
        # A late DisconnectNotify (the user closed a handle whose connection was already
        # closed with close_client_port, §9.1) must not close a newer, live connection
        # that took the global since: the real sample has that hazard, fltemu's samples not.
        if self.client_port is not None and self.client_port.is_connected:
            return
        port, self.client_port = self.client_port, None
        await self.flt.close_client_port(port)

    def message_notify(
        self, cookie: object, data: bytes, out_size: int, output_buffer_address: int = 0
    ) -> tuple[NtStatus, bytes]:
        """SpyMessage: GetMiniSpyLog and GetMiniSpyVersion; see the module docstring."""
        try:
            command = read_u32(data, 0)
            if command is None:
                return _INVALID_PARAMETER, b""
            if command == MiniSpyCommand.GetMiniSpyLog:
                if out_size == 0:  # OutputBuffer == NULL || OutputBufferSize == 0
                    return _INVALID_PARAMETER, b""
                # IS_ALIGNED(OutputBuffer, sizeof(PVOID)) (a 64-bit caller's check).
                if not is_aligned(output_buffer_address, POINTER_BYTES):
                    return _MISALIGNED, b""
                return self.get_log(out_size)
            if command == MiniSpyCommand.GetMiniSpyVersion:
                if out_size < MINISPYVER.size:
                    return _INVALID_PARAMETER, b""
                if not is_aligned(output_buffer_address, ULONG.size):
                    return _MISALIGNED, b""
                return _SUCCESS, MINISPYVER.pack(MINISPY_MAJ_VERSION, MINISPY_MIN_VERSION)
            return _INVALID_PARAMETER, b""
        except Exception:
            log.exception("minispy: SpyMessage failed")
            return NtStatus.STATUS_UNSUCCESSFUL, b""

    # --- sources ------------------------------------------------------------------------------

    def operation_from_file(self, event: FileEvent) -> SpyOperation:
        """A ``dir:`` change as the operation minispy would have logged."""
        if event.kind is FileEventKind.CREATED:
            return SpyOperation(
                event.path,
                IRP_MJ_CREATE,
                information=FILE_CREATED,
                irp_flags=IRP_CREATE_OPERATION | IRP_SYNCHRONOUS_API,
                file_object=event.inode,
                args=(0, FILE_CREATE << 24, 0, 0, 0),
            )
        if event.kind is FileEventKind.CHANGED:
            return SpyOperation(
                event.path,
                IRP_MJ_WRITE,
                information=event.size,
                irp_flags=IRP_WRITE_OPERATION,
                file_object=event.inode,
                args=(event.size & 0xFFFFFFFF, 0, 0, 0, 0),
            )
        return SpyOperation(
            event.path,
            IRP_MJ_SET_INFORMATION,
            irp_flags=IRP_SYNCHRONOUS_API,
            file_object=event.inode,
            args=(FILE_DISPOSITION_INFORMATION_BYTES, FILE_DISPOSITION_INFORMATION_CLASS, 0, 0, 0),
        )

    def synthesize(self, rng: random.Random, n: int) -> SpyOperation:
        """The n-th made-up operation on one of a few made-up files."""
        major, irp_flags = rng.choice(
            (
                (IRP_MJ_CREATE, IRP_CREATE_OPERATION | IRP_SYNCHRONOUS_API),
                (IRP_MJ_READ, IRP_READ_OPERATION),
                (IRP_MJ_WRITE, IRP_WRITE_OPERATION),
                (IRP_MJ_CLEANUP, 0),
                (IRP_MJ_CLOSE, IRP_CLOSE_OPERATION),
            )
        )
        length = rng.randrange(1, 65536) if major in (IRP_MJ_READ, IRP_MJ_WRITE) else 0
        return SpyOperation(
            f"\\Device\\HarddiskVolume1\\synthetic\\file{rng.randrange(16):02d}.txt",
            major,
            information=length,
            irp_flags=irp_flags,
            file_object=0xFFFF_8000_0000_0000 | (rng.randrange(1 << 20) << 4),
            process_id=rng.randrange(4, 65536, 4),
            thread_id=rng.randrange(4, 65536, 4),
            args=(length, 0, 0, 0, 0),
        )

    async def handle(self, op: SpyOperation) -> None:
        """Log one operation from the source."""
        self.log_operation(op)


def state_of(flt: Filter) -> MiniSpyState:
    """The minispy state on ``flt`` (``flt.context``).

    Raises:
        LookupError: ``flt`` is not running this sample.
    """
    return sample_state(flt, MiniSpyState, "minispy")


async def setup(flt: Filter) -> None:
    """DriverEntry: create ``\\MiniSpyPort`` and start the configured source.

    Raises:
        ValueError: a bad setting (nothing is created then).
        StatusError: the port cannot be created (e.g. STATUS_OBJECT_NAME_COLLISION).
    """
    settings = SampleSettings("minispy", flt.settings, SETTINGS)
    source = parse_source(settings.text("source", DEFAULT_SOURCE))
    max_records = settings.integer(
        "max_records", DEFAULT_MAX_RECORDS, minimum=1, maximum=MAX_MAX_RECORDS
    )
    interval = settings.number(
        "interval", DEFAULT_INTERVAL, minimum=MIN_INTERVAL, maximum=MAX_INTERVAL
    )
    seed = settings.integer("seed", 0, minimum=-(2**63), maximum=2**63 - 1)

    state = MiniSpyState(flt, max_records)
    runner = SourceRunner(
        "minispy",
        source,
        handle=state.handle,
        from_file=state.operation_from_file,
        synthesize=state.synthesize,
        interval=interval,
        seed=seed,
        alive=lambda: flt.state is FilterState.REGISTERED,
        concurrent=False,  # logging a record never waits
    )
    state.server_port = await flt.create_communication_port(
        PORT_NAME,
        connect_notify=state.connect_notify,
        disconnect_notify=state.disconnect_notify,
        message_notify=state.message_notify,
        max_connections=MAX_CONNECTIONS,
        case_insensitive=True,
        security=None,
    )
    flt.context = state
    await runner.start()
    state.runner = runner


async def teardown(flt: Filter) -> None:
    """SpyFilterUnload: stop the source, close the port, free the buffered records."""
    state = flt.context
    if not isinstance(state, MiniSpyState):
        return
    if state.runner is not None:
        await state.runner.stop()
    port = state.server_port
    if port is not None and port.state is ServerPortState.OPEN:
        await flt.close_communication_port(port)
    state.empty_output_buffer_list()
