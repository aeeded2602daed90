r"""The ``avscan`` sample: the kernel half of Microsoft's avscan minifilter, over fltemu.

As ``filesys/miniFilter/avscan/filter/{avscan.c, communication.c, scan.c}`` do it (semantics
§7.3): three ports, ``\MicrosoftAvSampleFilterScanPort``, ``…AbortPort`` and ``…QueryPort``,
the default security descriptor, **MaxConnections 1** each, the same three callbacks on all.

**Connecting.** ConnectNotify wants a 4-byte ``AV_CONNECTION_CONTEXT {Type}``: 1 scan,
2 abort, 3 query. No context, a context shorter than 4 bytes, or another type →
STATUS_INVALID_PARAMETER_3 (the client sees 0x80070057). Bytes past the first 4 are ignored.
The type does **not** have to match the port: AvConnectNotifyCallback switches on the
context alone and stores the connection in the global for that type (ScanClientPort,
AbortClientPort, QueryClientPort), whichever port it came through. So a client on the query
port with type 1 receives the scan requests. A second connection of the same type through
another port replaces the first in that global, and when either disconnects,
AvDisconnectNotifyCallback closes whatever the global holds — the sample's hazard,
reproduced, not fixed. The cookie is the type.

**Scanning** (AvScanInUser). An empty file is not sent: AvScan marks it not infected (a
verdict with ScanId 0 and the result clean). Otherwise a scan gets the next ScanId (from 1)
and sends
``AV_SCANNER_NOTIFICATION {Message=AvMsgStartScanning, Reason, ScanId, ScanThreadId=0}``
(24 bytes) on the scan global, with a 4-byte reply buffer (the user's scan thread id) and the
``scan_timeout`` (the sample's LocalScanTimeout, 30 s). A failed send, or STATUS_TIMEOUT, ends
the scan (the file is let through). Then it waits, again up to ``scan_timeout``, for the user
to finish: the user sends ``AvCmdCreateSectionForDataScan`` and ``AvCmdCloseSectionForDataScan``
(below). If the wait times out, ``AV_SCANNER_NOTIFICATION {AvMsgAbortScanning, 0, ScanId,
ScanThreadId}`` goes to the abort global, without a reply buffer and with a 1-second timeout;
if that was delivered the scan waits one more second, and otherwise the scan is marked aborted
and its section closed by the kernel. Infected on open: the open fails with
STATUS_VIRUS_INFECTED; infected on cleanup: the file is marked infected (later opens fail).

**Commands** (user → kernel, FilterSendMessage on any of the three connections: the sample
does not check which). ``COMMAND_MESSAGE {AVSCAN_COMMAND Command; LONGLONG ScanId; ULONG
ScanThreadId; union {HANDLE FileHandle; AVSCAN_RESULT ScanResult}}``, 32 bytes on x64:

* input under 4 bytes, or an unknown command → STATUS_INVALID_PARAMETER;
* ``AvCmdCreateSectionForDataScan`` (1): output under 8 bytes → STATUS_INVALID_PARAMETER;
  an unknown ScanId → STATUS_NOT_FOUND; a scan the kernel gave up on → STATUS_CANCELLED;
  otherwise a section handle (8 bytes). A client that can open sections (fltemu's Windows
  side, protocol §7.1) gets a real section of the file's bytes (the ``content`` given to
  ``scan``, else the file read from disk), mapped with MapViewOfFile as on Windows; the
  others get a made-up value (from 0x100, in steps of 4, never AV_INVALID_SECTION_HANDLE).
  Either way it is recorded in ``AvScanState.sections`` with the file, until the scan ends;
* ``AvCmdCloseSectionForDataScan`` (2): an unknown ScanId → STATUS_NOT_FOUND; otherwise the
  result (0 undetermined, 1 infected, 2 clean; another value changes nothing, as in the
  sample) is applied if a section was created for the scan (only create-section puts the
  file in the scanning state; without it the sample drops the result and the open
  proceeds), the scan's sections are closed and the waiting scan released;
  STATUS_SUCCESS, no output. As in the sample, it names the scan by ScanId and does not
  take the section handle (the user closes its handle itself);
* ``AvIsFileModified`` (0): output under 1 byte → STATUS_INVALID_PARAMETER; the FileHandle
  is a handle of the *user's* process, which does not cross the socket: every handle is
  invalid to the emulated kernel → STATUS_INVALID_HANDLE.

The sample reads ScanId (offset 8), ScanResult (24) and FileHandle (24, 8 bytes) even when the
input is shorter — undefined on Windows (garbage or an access violation); fltemu answers
STATUS_INVALID_PARAMETER for an input that ends before a field the command reads. The output
pointer's alignment is checked where the sample checks it: create-section wants it
HANDLE-aligned (8 bytes) after the size check and before the ScanId lookup, else
STATUS_DATATYPE_MISALIGNMENT (0x800703E6 for the client); the check of AvIsFileModified
(BOOLEAN, 1 byte) never fails. The address is the low bits the client sends (protocol §7.1):
fltemu's fltlib.dll sends the real ones, the Python client none (aligned).

**Unloading** (AvUnload, run by ``teardown``): new scans fail with STATUS_FLT_DELETING_OBJECT
(nothing is sent), then ``{AvMsgFilterUnloading}`` goes to the abort global with a 4-byte
reply buffer. Windows waits for that reply forever; fltemu waits ``unload_timeout`` seconds
(default 5; ``none`` waits forever, like Windows). Then, as AvInstanceTeardownStart does,
every scan still running gets AvMsgAbortScanning and, if that is not delivered, is finalized
by the kernel; acknowledged scans get up to a second to end, the source's scans still running
after that are cancelled, and the three ports are closed.

Settings (``fltemu serve --filter avscan --set avscan.KEY=VALUE``):

* ``source`` — ``inject`` (the default: nothing is scanned by itself; scans come from
  ``fltemu send`` or ``AvScanState.scan``), ``dir:PATH`` (a file that appears is scanned with
  reason AvScanOnOpen, one that changes with AvScanOnCleanup — after a write, the sample
  rescans at cleanup) or ``synthetic:RATE`` (RATE made-up files a second).
* ``scan_timeout`` — seconds, default 30 (LocalScanTimeout = 30000 ms).
* ``unload_timeout`` — seconds or ``none``, default 5.
* ``interval``, ``seed``, ``history`` — as for the scanner (0.2 s, 0, 100 verdicts).

Verdicts are logged at INFO and kept in ``AvScanState.verdicts``; the state is reachable as
``flt.context`` (or ``state_of(flt)``).
Not here: the user half, the sources (``_sources``).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import random
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from ..kernel import ClientPort, Filter, FilterState, ServerPort, ServerPortState
from ..status import NtStatus, nt_success
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
from ._structs import HANDLE, ULONG, TraceDecoder, enum_name, is_aligned, pad, read_u32, read_u64

__all__ = [
    "ABORT_PORT_NAME",
    "AV_CONNECTION_CONTEXT",
    "AV_SCANNER_NOTIFICATION",
    "COMMAND_MESSAGE",
    "MAX_CONNECTIONS",
    "PORT_NAMES",
    "QUERY_PORT_NAME",
    "SCAN_PORT_NAME",
    "STATUS_NOT_FOUND",
    "STATUS_VIRUS_INFECTED",
    "TRACE_DECODERS",
    "AvConnectionType",
    "AvScanCommand",
    "AvScanMessage",
    "AvScanReason",
    "AvScanResult",
    "AvScanState",
    "AvVerdict",
    "describe_message",
    "setup",
    "state_of",
    "teardown",
]

log = logging.getLogger(__name__)

#: AV_SCAN_PORT_NAME, AV_ABORT_PORT_NAME, AV_QUERY_PORT_NAME (avlib.h).
SCAN_PORT_NAME: Final = "\\MicrosoftAvSampleFilterScanPort"
ABORT_PORT_NAME: Final = "\\MicrosoftAvSampleFilterAbortPort"
QUERY_PORT_NAME: Final = "\\MicrosoftAvSampleFilterQueryPort"
#: The sample's maxConnections, for each port.
MAX_CONNECTIONS: Final = 1

#: AV_CONNECTION_CONTEXT {AVSCAN_CONNECTION_TYPE Type}: 4 bytes.
AV_CONNECTION_CONTEXT: Final = struct.Struct("<I")
#: AV_SCANNER_NOTIFICATION {AVSCAN_MESSAGE Message; AVSCAN_REASON Reason; LONGLONG ScanId;
#: ULONG ScanThreadId; (4 bytes of tail padding)}: 24 bytes.
AV_SCANNER_NOTIFICATION: Final = struct.Struct("<IIqI4x")
#: COMMAND_MESSAGE {AVSCAN_COMMAND Command; (4 pad) LONGLONG ScanId; ULONG ScanThreadId;
#: (4 pad) union {HANDLE FileHandle; AVSCAN_RESULT ScanResult}}: 32 bytes on x64.
COMMAND_MESSAGE: Final = struct.Struct("<I4xqI4xQ")
_SCAN_ID_OFFSET: Final = 8
_UNION_OFFSET: Final = 24
#: The reply to a scan request or the unloading message: the user thread's id (a ULONG).
_THREAD_ID_REPLY_BYTES: Final = ULONG.size

#: STATUS_NOT_FOUND: AvMessageNotifyCallback's answer for an unknown ScanId.
STATUS_NOT_FOUND: Final = NtStatus(0xC0000225)
#: STATUS_VIRUS_INFECTED: what an infected file's open fails with (AvPostCreate).
STATUS_VIRUS_INFECTED: Final = NtStatus(0xC0000906)
#: AV_INVALID_SECTION_HANDLE ((HANDLE)-1): never handed out.
AV_INVALID_SECTION_HANDLE: Final = 0xFFFFFFFFFFFFFFFF
#: The first made-up section handle, and the step (user-mode handles are multiples of 4).
_FIRST_SECTION_HANDLE: Final = 0x100
_SECTION_HANDLE_STEP: Final = 4
#: Sections one scan may hold at once; a client asking for more gets
#: STATUS_INSUFFICIENT_RESOURCES (bounds the table; the real user program asks once).
MAX_SECTIONS_PER_SCAN: Final = 16
#: The abort message's timeout and the wait after it (AvScanInUser: 1 s each).
ABORT_TIMEOUT: Final = 1.0

#: The attribute of the Filter that holds the sample's state.
#: The settings this sample reads.
SETTINGS: Final = (
    "source",
    "scan_timeout",
    "unload_timeout",
    "interval",
    "seed",
    "history",
)
DEFAULT_SOURCE: Final = "inject"
#: Globals.LocalScanTimeout = 30000 ms.
DEFAULT_SCAN_TIMEOUT: Final = 30.0
#: How long teardown waits for the reply to AvMsgFilterUnloading (Windows: forever).
DEFAULT_UNLOAD_TIMEOUT: Final = 5.0
DEFAULT_HISTORY: Final = 100
MAX_HISTORY: Final = 100_000
#: The longest timeout accepted, in seconds (a day).
MAX_TIMEOUT: Final = 86_400.0

_SUCCESS: Final = NtStatus.STATUS_SUCCESS
_INVALID_PARAMETER: Final = NtStatus.STATUS_INVALID_PARAMETER


class AvConnectionType(enum.IntEnum):
    """AVSCAN_CONNECTION_TYPE: the AV_CONNECTION_CONTEXT's Type."""

    AvConnectForScan = 1
    AvConnectForAbort = 2
    AvConnectForQuery = 3


class AvScanCommand(enum.IntEnum):
    """AVSCAN_COMMAND: COMMAND_MESSAGE.Command."""

    AvIsFileModified = 0
    AvCmdCreateSectionForDataScan = 1
    AvCmdCloseSectionForDataScan = 2


class AvScanMessage(enum.IntEnum):
    """AVSCAN_MESSAGE: AV_SCANNER_NOTIFICATION.Message."""

    AvMsgStartScanning = 0
    AvMsgAbortScanning = 1
    AvMsgFilterUnloading = 2


class AvScanReason(enum.IntEnum):
    """AVSCAN_REASON: AV_SCANNER_NOTIFICATION.Reason."""

    AvScanOnOpen = 0
    AvScanOnCleanup = 1


class AvScanResult(enum.IntEnum):
    """AVSCAN_RESULT: COMMAND_MESSAGE.ScanResult."""

    AvScanResultUndetermined = 0
    AvScanResultInfected = 1
    AvScanResultClean = 2


_CONNECTION_TYPES: Final = frozenset(int(t) for t in AvConnectionType)

#: Which port each connection type is for (the port a well-behaved client uses).
PORT_NAMES: Final = {
    AvConnectionType.AvConnectForScan: SCAN_PORT_NAME,
    AvConnectionType.AvConnectForAbort: ABORT_PORT_NAME,
    AvConnectionType.AvConnectForQuery: QUERY_PORT_NAME,
}


def describe_message(kind: str, data: bytes) -> str | None:
    """How ``fltemu trace`` shows the sample's messages: an AV_SCANNER_NOTIFICATION's fields,
    a COMMAND_MESSAGE's command and what its union holds."""
    if kind in ("message", "deliver") and len(data) >= AV_SCANNER_NOTIFICATION.size:
        message, reason, scan_id, thread = AV_SCANNER_NOTIFICATION.unpack_from(data)
        return (
            f"AV_SCANNER_NOTIFICATION Message={enum_name(AvScanMessage, message)} "
            f"Reason={enum_name(AvScanReason, reason)} ScanId={scan_id} "
            f"ScanThreadId={thread}"
        )
    if kind == "send" and len(data) >= COMMAND_MESSAGE.size:
        command, scan_id, thread, union = COMMAND_MESSAGE.unpack_from(data)
        if command == AvScanCommand.AvCmdCloseSectionForDataScan:
            last = f"ScanResult={enum_name(AvScanResult, union)}"
        else:
            last = f"FileHandle={union:#x}"
        return (
            f"COMMAND_MESSAGE Command={enum_name(AvScanCommand, command)} ScanId={scan_id} "
            f"ScanThreadId={thread} {last}"
        )
    return None


#: Its ports' messages, as ``fltemu trace`` shows them.
TRACE_DECODERS: Final[dict[str, TraceDecoder]] = dict.fromkeys(
    PORT_NAMES.values(), describe_message
)


@dataclass(eq=False)
class ScanContext:
    """AV_SCAN_CONTEXT: one scan in progress."""

    scan_id: int
    name: str
    reason: AvScanReason
    done: asyncio.Event = field(default_factory=asyncio.Event)
    scan_thread_id: int = 0
    sections: list[int] = field(default_factory=list)
    #: A section was created: the file is in the scanning state, the only one in which a
    #: close-section's result is applied (communication.c, AvCmdCloseSectionForDataScan).
    scanning: bool = False
    #: What the file holds, for the sections (None: read the file ``name`` when asked).
    content: bytes | None = None
    result: int | None = None
    #: IoWaitOnScanCompleteNotificationAborted: the kernel gave up on this scan.
    aborted: bool = False
    #: The request was delivered and acknowledged: the scan waits for the user to finish.
    acknowledged: bool = False
    #: Set when the scan has ended (its verdict is recorded).
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class Section:
    """A made-up section handle and the file it would map."""

    handle: int
    scan_id: int
    name: str


@dataclass(frozen=True, slots=True)
class AvVerdict:
    """How one scan ended.

    Attributes:
        name: the file.
        reason: on open or on cleanup.
        scan_id: the ScanId (0 when the scan never started: unloading).
        status: the scan's status: STATUS_SUCCESS when the user finished it, the failed
            FltSendMessage status, STATUS_TIMEOUT, or STATUS_FLT_DELETING_OBJECT.
        result: the ScanResult the user sent, ``None`` when none came.
        would_block: an infected file on open, found in time (the open fails with
            STATUS_VIRUS_INFECTED; after a timeout AvPostCreate lets this open through).
        aborted: the kernel sent AvMsgAbortScanning for it.
    """

    name: str
    reason: AvScanReason
    scan_id: int
    status: NtStatus
    result: int | None
    would_block: bool
    aborted: bool = False

    def describe(self) -> str:
        """One line for the log."""
        if self.result is None:
            return f"allowed, not scanned ({self.status}{', aborted' if self.aborted else ''})"
        if self.result == AvScanResult.AvScanResultInfected:
            if self.would_block:
                return "INFECTED: would be blocked, the open fails with STATUS_VIRUS_INFECTED"
            return "INFECTED: marked infected, later opens would fail with STATUS_VIRUS_INFECTED"
        if self.result == AvScanResult.AvScanResultClean:
            return "clean"
        if self.result == AvScanResult.AvScanResultUndetermined:
            return "undetermined: allowed, marked modified (rescanned on the next open)"
        return f"allowed: unknown scan result {self.result} (nothing changes)"


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """One file to scan, from a source."""

    name: str
    reason: AvScanReason


class AvScanState:
    """The sample's globals (Globals in avscan.c): ports, scans, sections, verdicts.

    Args:
        flt: the filter.
        scan_timeout: seconds (LocalScanTimeout).
        unload_timeout: seconds to wait for the unloading reply, ``None`` for ever.
        history: how many verdicts to keep.

    Attributes:
        client_ports: ScanClientPort, AbortClientPort, QueryClientPort, by connection type.
        scans: the scans in progress (Globals.ScanCtxList), by ScanId.
        sections: the made-up section handles in use.
        unloading: Globals.Unloading.
        verdicts: the latest verdicts, oldest first.
    """

    def __init__(
        self, flt: Filter, scan_timeout: float, unload_timeout: float | None, history: int
    ) -> None:
        self.flt = flt
        self.scan_timeout = scan_timeout
        self.unload_timeout = unload_timeout
        self.server_ports: list[ServerPort] = []
        self.client_ports: dict[AvConnectionType, ClientPort | None] = dict.fromkeys(
            AvConnectionType
        )
        self.scans: dict[int, ScanContext] = {}
        self.sections: dict[int, Section] = {}
        self.unloading = False
        self.verdicts: deque[AvVerdict] = deque(maxlen=history)
        self.unload_status: NtStatus | None = None
        self.runner: SourceRunner[ScanRequest] | None = None
        self._scan_ids = itertools.count(1)
        self._handles = itertools.count(_FIRST_SECTION_HANDLE, _SECTION_HANDLE_STEP)

    def __repr__(self) -> str:
        ports = {t.name: p is not None for t, p in self.client_ports.items()}
        return f"<AvScanState ports={ports} scans={len(self.scans)} sections={len(self.sections)}>"

    # --- scanning -----------------------------------------------------------------------------

    async def scan(
        self,
        name: str,
        reason: AvScanReason = AvScanReason.AvScanOnOpen,
        content: bytes | None = None,
    ) -> AvVerdict:
        """AvScanInUser: ask the user-mode scanner to scan ``name`` and wait for its verdict.

        ``content`` is what the file holds, which a section of the scan maps (default: read
        the file ``name``, if it is one).

        Returns:
            The verdict, also logged and kept in ``verdicts``.
        """
        if self.unloading:
            verdict = AvVerdict(name, reason, 0, NtStatus.STATUS_FLT_DELETING_OBJECT, None, False)
            return self._record(verdict)
        if _is_empty(name, content):
            # AvScan skips empty files: nothing is sent, the file is marked not infected
            # (avscan.c, before AvScanInUser).
            clean = AvScanResult.AvScanResultClean
            return self._record(AvVerdict(name, reason, 0, _SUCCESS, clean, False))
        ctx = ScanContext(next(self._scan_ids), name, reason, content=content)
        self.scans[ctx.scan_id] = ctx
        try:
            return self._record(await self._scan(ctx))
        except asyncio.CancelledError:
            log.info("avscan: scan %d %s: cancelled", ctx.scan_id, name)
            raise
        finally:
            self.scans.pop(ctx.scan_id, None)
            self._close_sections(ctx)
            ctx.finished.set()

    async def _scan(self, ctx: ScanContext) -> AvVerdict:
        notification = AV_SCANNER_NOTIFICATION.pack(
            AvScanMessage.AvMsgStartScanning, ctx.reason, ctx.scan_id, 0
        )
        sent = await self.flt.send_message(
            self.client_ports[AvConnectionType.AvConnectForScan],
            notification,
            reply_length=_THREAD_ID_REPLY_BYTES,
            timeout=self.scan_timeout,
        )
        if not nt_success(sent.status) or sent.status == NtStatus.STATUS_TIMEOUT:
            return AvVerdict(ctx.name, ctx.reason, ctx.scan_id, sent.status, None, False)
        # A reply shorter than a ULONG leaves the rest of the (uninitialised) variable: 0 here.
        ctx.scan_thread_id = ULONG.unpack(pad(sent.reply or b"", ULONG.size))[0]
        ctx.acknowledged = True
        status = _SUCCESS
        if not await _wait(ctx.done, self.scan_timeout):
            status = NtStatus.STATUS_TIMEOUT
            abort = await self._send_abort(ctx)
            completed = False
            if nt_success(abort) and abort != NtStatus.STATUS_TIMEOUT:
                completed = await _wait(ctx.done, ABORT_TIMEOUT)
            if not completed:
                ctx.aborted = True
                self._finalize(ctx)  # the service is presumably dead: close the section here
        result = ctx.result
        # AvPostCreate skips its IS_FILE_INFECTED check when AvScan returned STATUS_TIMEOUT:
        # a file found infected only after the abort still opens this once.
        would_block = (
            status == _SUCCESS
            and result == AvScanResult.AvScanResultInfected
            and ctx.reason is AvScanReason.AvScanOnOpen
        )
        return AvVerdict(
            ctx.name, ctx.reason, ctx.scan_id, status, result, would_block, aborted=ctx.aborted
        )

    async def _send_abort(self, ctx: ScanContext) -> NtStatus:
        """AvSendAbortToUser: tell the abort connection to stop scan ``ctx``."""
        notification = AV_SCANNER_NOTIFICATION.pack(
            AvScanMessage.AvMsgAbortScanning, 0, ctx.scan_id, ctx.scan_thread_id
        )
        result = await self.flt.send_message(
            self.client_ports[AvConnectionType.AvConnectForAbort],
            notification,
            reply_length=None,
            timeout=ABORT_TIMEOUT,
        )
        log.info("avscan: abort of scan %d: %s", ctx.scan_id, result.status)
        return result.status

    async def send_unloading(self) -> NtStatus:
        """AvSendUnloadingToUser: ``{AvMsgFilterUnloading}`` to the abort connection.

        Waits ``unload_timeout`` for the reply (Windows: forever).
        """
        notification = AV_SCANNER_NOTIFICATION.pack(AvScanMessage.AvMsgFilterUnloading, 0, 0, 0)
        result = await self.flt.send_message(
            self.client_ports[AvConnectionType.AvConnectForAbort],
            notification,
            reply_length=_THREAD_ID_REPLY_BYTES,
            timeout=self.unload_timeout,
        )
        self.unload_status = result.status
        # No agent connected is the usual case at shutdown, not news.
        quiet = result.status == NtStatus.STATUS_PORT_DISCONNECTED
        log.log(
            logging.DEBUG if quiet else logging.INFO, "avscan: unloading message: %s", result.status
        )
        return result.status

    async def abort_all_scans(self) -> None:
        """AvInstanceTeardownStart: abort every scan still running.

        Each gets AvMsgAbortScanning on the abort connection; one whose abort was not
        delivered is finalized by the kernel (its waiter released, its sections closed). The
        sample sends them one after another; fltemu sends them together. Then the scans that
        were acknowledged get up to ABORT_TIMEOUT to end (the user closing its section, or the
        finalized ones recording their verdicts); on Windows the filter's unload waits for
        them as long as their own timeouts last.
        """
        scans = list(self.scans.values())
        statuses = await asyncio.gather(*(self._send_abort(ctx) for ctx in scans))
        for ctx, status in zip(scans, statuses, strict=True):
            if not nt_success(status) or status == NtStatus.STATUS_TIMEOUT:
                ctx.aborted = True
                self._finalize(ctx)
        waiting = [ctx.finished.wait() for ctx in scans if ctx.acknowledged]
        if waiting:
            try:
                async with asyncio.timeout(ABORT_TIMEOUT):
                    await asyncio.gather(*waiting)
            except TimeoutError:
                pass

    def _record(self, verdict: AvVerdict) -> AvVerdict:
        self.verdicts.append(verdict)
        log.info(
            "avscan: scan %d (%s) %s: %s",
            verdict.scan_id,
            "open" if verdict.reason is AvScanReason.AvScanOnOpen else "cleanup",
            verdict.name,
            verdict.describe(),
        )
        return verdict

    def _finalize(self, ctx: ScanContext) -> None:
        """AvFinalizeScanAndSection: close the scan's sections and release its waiter."""
        self._close_sections(ctx)
        ctx.done.set()

    def _close_sections(self, ctx: ScanContext) -> None:
        for handle in ctx.sections:
            self.sections.pop(handle, None)
        ctx.sections.clear()

    # --- the port callbacks -------------------------------------------------------------------

    def connect_notify(
        self, client_port: ClientPort, server_port_cookie: object, context: bytes
    ) -> NtStatus | tuple[NtStatus, AvConnectionType]:
        """AvConnectNotifyCallback: store the connection in the global for its type."""
        raw = read_u32(context, 0)
        if raw is None or raw not in _CONNECTION_TYPES:
            log.info("avscan: refused a connection with context %r", context[:8])
            return NtStatus.STATUS_INVALID_PARAMETER_3
        kind = AvConnectionType(raw)
        self.client_ports[kind] = client_port
        log.info("avscan: %s connected through %s", kind.name, client_port.server_port.name)
        return _SUCCESS, kind

    async def disconnect_notify(self, cookie: object) -> None:
        """AvDisconnectNotifyCallback: FltCloseClientPort on the global for the cookie's type."""
        if not isinstance(cookie, AvConnectionType):
            return
        # As the sample does (communication.c, AvDisconnectNotifyCallback): whatever the
        # global holds is closed, even a newer connection of the same type that took it
        # since, through another port or after a close_client_port (§9.1). The hazard is
        # Microsoft's, reproduced.
        port, self.client_ports[cookie] = self.client_ports[cookie], None
        await self.flt.close_client_port(port)
        log.info("avscan: %s disconnected", cookie.name)

    def message_notify(
        self, cookie: object, data: bytes, out_size: int, output_buffer_address: int = 0
    ) -> tuple[Any, ...]:
        """AvMessageNotifyCallback: the user's commands; see the module docstring."""
        try:
            return self._message(data, out_size, output_buffer_address)
        except Exception:
            log.exception("avscan: AvMessageNotifyCallback failed")
            return NtStatus.STATUS_UNSUCCESSFUL, b""

    def _message(self, data: bytes, out_size: int, out_address: int) -> tuple[Any, ...]:
        command = read_u32(data, 0)
        if command is None:
            return _INVALID_PARAMETER, b""
        raw_scan_id = read_u64(data, _SCAN_ID_OFFSET)
        if command == AvScanCommand.AvCmdCreateSectionForDataScan:
            if raw_scan_id is None or out_size < HANDLE.size:
                return _INVALID_PARAMETER, b""
            if not is_aligned(out_address, HANDLE.size):  # IS_ALIGNED(OutputBuffer, HANDLE)
                return NtStatus.STATUS_DATATYPE_MISALIGNMENT, b""
            ctx = self.scans.get(_signed64(raw_scan_id))
            if ctx is None:
                return STATUS_NOT_FOUND, b""
            if ctx.aborted:
                return NtStatus.STATUS_CANCELLED, b""
            if len(ctx.sections) >= MAX_SECTIONS_PER_SCAN:
                return NtStatus.STATUS_INSUFFICIENT_RESOURCES, b""
            handle = next(self._handles)
            ctx.scanning = True
            ctx.sections.append(handle)
            self.sections[handle] = Section(handle, ctx.scan_id, ctx.name)
            content = self._section_content(ctx)
            if content:
                # A client that can map sections gets a real one of the file's bytes in place
                # of the made-up handle (protocol §7.1).
                return _SUCCESS, HANDLE.pack(handle), {0: content}
            return _SUCCESS, HANDLE.pack(handle)
        if command == AvScanCommand.AvCmdCloseSectionForDataScan:
            scan_result = read_u32(data, _UNION_OFFSET)
            if raw_scan_id is None or scan_result is None:
                return _INVALID_PARAMETER, b""
            ctx = self.scans.get(_signed64(raw_scan_id))
            if ctx is None:
                return STATUS_NOT_FOUND, b""
            if ctx.scanning:
                ctx.result = scan_result
            else:  # no section was created: the sample drops the result; the open proceeds
                log.info(
                    "avscan: scan %d: result %d dropped (no section)", ctx.scan_id, scan_result
                )
            self._finalize(ctx)
            return _SUCCESS, b""
        if command == AvScanCommand.AvIsFileModified:
            if read_u64(data, _UNION_OFFSET) is None or out_size < 1:
                return _INVALID_PARAMETER, b""
            # IS_ALIGNED(OutputBuffer, sizeof(BOOLEAN)) holds for every address.
            return NtStatus.STATUS_INVALID_HANDLE, b""
        return _INVALID_PARAMETER, b""

    def _section_content(self, ctx: ScanContext) -> bytes:
        """What a section of the scanned file maps: the content given to ``scan``, else the
        file's bytes (up to the daemon's message limit), else nothing."""
        if ctx.content is not None:
            return ctx.content
        limit = self.flt.manager.max_message_bytes
        try:
            with open(ctx.name, "rb") as f:
                return f.read(limit)
        except OSError:
            return b""

    # --- sources ------------------------------------------------------------------------------

    def request_from_file(self, event: FileEvent) -> ScanRequest | None:
        """A ``dir:`` change: created → scan on open, changed → scan on cleanup."""
        if event.kind is FileEventKind.CREATED:
            return ScanRequest(event.path, AvScanReason.AvScanOnOpen)
        if event.kind is FileEventKind.CHANGED:
            return ScanRequest(event.path, AvScanReason.AvScanOnCleanup)
        return None

    def synthesize(self, rng: random.Random, n: int) -> ScanRequest:
        """The n-th made-up file; about one in four is a rescan at cleanup."""
        reason = AvScanReason.AvScanOnCleanup if rng.random() < 0.25 else AvScanReason.AvScanOnOpen
        return ScanRequest(f"synthetic-{n:06d}.bin", reason)

    async def handle(self, request: ScanRequest) -> None:
        """Scan one request from the source."""
        await self.scan(request.name, request.reason)


def _is_empty(name: str, content: bytes | None) -> bool:
    """The file to scan holds nothing: ``content`` is empty, or, with none given, ``name`` is
    an empty file (a name that is not a file is scanned as the user program sees fit)."""
    if content is not None:
        return not content
    try:
        return os.path.getsize(name) == 0
    except OSError:
        return False


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """FltCancellableWaitForSingleObject with a relative timeout: True if signalled."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


def state_of(flt: Filter) -> AvScanState:
    """The avscan state on ``flt`` (``flt.context``).

    Raises:
        LookupError: ``flt`` is not running this sample.
    """
    return sample_state(flt, AvScanState, "avscan")


async def setup(flt: Filter) -> None:
    """DriverEntry: create the three ports and start the configured source.

    Raises:
        ValueError: a bad setting (nothing is created then).
        StatusError: a port cannot be created (e.g. STATUS_OBJECT_NAME_COLLISION).
    """
    settings = SampleSettings("avscan", flt.settings, SETTINGS)
    source = parse_source(settings.text("source", DEFAULT_SOURCE))
    scan_timeout = settings.number(
        "scan_timeout", DEFAULT_SCAN_TIMEOUT, minimum=0.0, maximum=MAX_TIMEOUT
    )
    unload_timeout = settings.seconds_or_forever(
        "unload_timeout", DEFAULT_UNLOAD_TIMEOUT, maximum=MAX_TIMEOUT
    )
    interval = settings.number(
        "interval", DEFAULT_INTERVAL, minimum=MIN_INTERVAL, maximum=MAX_INTERVAL
    )
    seed = settings.integer("seed", 0, minimum=-(2**63), maximum=2**63 - 1)
    history = settings.integer("history", DEFAULT_HISTORY, minimum=1, maximum=MAX_HISTORY)

    state = AvScanState(flt, scan_timeout, unload_timeout, history)
    runner = SourceRunner(
        "avscan",
        source,
        handle=state.handle,
        from_file=state.request_from_file,
        synthesize=state.synthesize,
        interval=interval,
        seed=seed,
        alive=lambda: flt.state is FilterState.REGISTERED,
    )
    for name in (SCAN_PORT_NAME, ABORT_PORT_NAME, QUERY_PORT_NAME):
        port = await flt.create_communication_port(
            name,
            connect_notify=state.connect_notify,
            disconnect_notify=state.disconnect_notify,
            message_notify=state.message_notify,
            max_connections=MAX_CONNECTIONS,
            case_insensitive=True,
            security=None,
        )
        state.server_ports.append(port)
    flt.context = state
    await runner.start()
    state.runner = runner


async def teardown(flt: Filter) -> None:
    """AvUnload: refuse new scans, tell the abort connection, cancel scans, close the ports."""
    state = flt.context
    if not isinstance(state, AvScanState):
        return
    state.unloading = True
    if state.runner is not None:
        await state.runner.stop_producing()
    await state.send_unloading()
    await state.abort_all_scans()
    if state.runner is not None:
        await state.runner.stop()
    for port in state.server_ports:
        if port.state is ServerPortState.OPEN:
            await flt.close_communication_port(port)
