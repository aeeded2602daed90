r"""The ``scanner`` sample: the kernel half of Microsoft's scanner minifilter, over fltemu.

As ``filesys/miniFilter/scanner/filter/scanner.c`` does it (semantics §7.1): port
``\ScannerPort``, the default security descriptor (FLT_PORT_ALL_ACCESS for the admins:
root and the daemon's user), **MaxConnections 1**, ConnectNotify and DisconnectNotify, **no
MessageNotify** (so FilterSendMessage on the port fails with 0x80070001). ConnectNotify
remembers the connection and the connecting process and leaves the cookie NULL;
DisconnectNotify closes the client port (FltCloseClientPort).

A scan sends ``SCANNER_NOTIFICATION`` (1032 bytes: ``BytesToScan``, ``Reserved``, the first
1024 bytes of the file) with the notification buffer itself as the reply buffer, a reply
length of ``sizeof(SCANNER_REPLY)`` = 1 and **no timeout**. Only ``STATUS_SUCCESS`` counts:
then ``SafeToOpen`` is byte 0 of the reply buffer — which, when the user replied with no
payload, is still the low byte of ``BytesToScan``, as on Windows. Any other status
(``STATUS_BUFFER_OVERFLOW`` for a reply longer than 1 byte, a status the user put in its
reply, ``STATUS_PORT_DISCONNECTED``) lets the file through. With no client connected, or an
empty file, nothing is sent and the file is allowed, as the sample does.

Each verdict is logged at INFO (file, safe/unsafe, whether the I/O would be blocked) and kept
in ``ScannerState.verdicts`` (the latest ``history``). The state is reachable as
``flt.context`` (or ``state_of(flt)``).

Settings (``fltemu serve --filter scanner --set scanner.KEY=VALUE``):

* ``source`` — ``inject`` (the default: the sample scans nothing by itself, messages come
  from ``fltemu send`` or ``ScannerState.scan``), ``dir:PATH`` (files with a scanned
  extension under PATH, watched with Linux's inotify, ``_inotify``: every open is the
  post-create scan of the file's first 1024 bytes, every write the pre-write scan of the
  bytes it wrote, every close of a handle opened for write the pre-cleanup rescan of the
  file's first bytes; Linux only) or ``synthetic:RATE`` (RATE made-up ``.doc`` files a
  second, about one in four containing "foul").
* ``extensions`` — comma-separated, compared case-insensitively; default ``doc`` (the
  sample's default when its ``Extensions`` registry value is missing).
* ``interval`` — accepted for the other samples' sake; the scanner's ``dir:`` does not poll.
* ``seed`` — the ``synthetic:`` generator's seed (default 0).
* ``history`` — how many verdicts are kept (default 100).

Differences from Microsoft's code, and why (also in ``docs/fltmgr-semantics.md`` §7.5):

* inotify reports an open, a write and a close *after* they happened, so nothing is blocked
  (the verdict says what would be) and a scan may see later bytes than Windows would (an
  open's scan may already see what was written next).
* A write's bytes are not reported: the scan carries what the write(s) added at the end of
  the file (up to 1024 bytes), or, when the file did not grow (an overwrite in place), its
  first 1024 bytes. Writes inotify merged into one event are scanned as one; a truncation
  that leaves nothing sends nothing, like a zero-length write.
* Handles cannot be told apart: every write and every close after write of a scanned file is
  scanned, where Windows scans only handles opened after the filter attached, not by the
  scanner's own process, and whose open was found safe (an unsafe open is undone there, so
  its writes never happen). Identical opens that inotify merged are scanned once.
* The I/O of the scanner's own user process is scanned too: inotify does not say who acted.
  The filter's own reads of a file (to scan it) are recognised and cause no scan.
* A rename into the folder is no open and is not scanned (the Windows filter does not hook
  renames either). A file opened for write before the source started is still scanned at
  its writes and close (Windows has no handle context for it and would not).
* The 4096-byte read of a 4K-sector volume (the real filter reads ``max(1024, SectorSize)``
  bytes and may report ``BytesToScan`` above 1024): here the volume has 512-byte sectors, so
  ``BytesToScan`` is at most 1024.
Not here: the user half (``fltuser`` clients), the sources (``_sources``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from ..kernel import ClientPort, Filter, FilterState, ProcessInfo, ServerPort, ServerPortState
from ..status import NtStatus
from ._inotify import FileActivity, FileActivityKind
from ._sources import (
    DEFAULT_INTERVAL,
    MAX_INTERVAL,
    MIN_INTERVAL,
    SampleSettings,
    SourceRunner,
    parse_source,
    sample_state,
)
from ._structs import TraceDecoder

__all__ = [
    "FOUL_STRING",
    "MAX_CONNECTIONS",
    "PORT_NAME",
    "SCANNER_NOTIFICATION",
    "SCANNER_READ_BUFFER_SIZE",
    "SCANNER_REPLY",
    "TRACE_DECODERS",
    "ScanOperation",
    "ScanVerdict",
    "ScannerState",
    "describe_message",
    "setup",
    "state_of",
    "teardown",
]

log = logging.getLogger(__name__)

#: ScannerPortName (scanuk.h).
PORT_NAME: Final = "\\ScannerPort"
#: The sample's MaxConnections.
MAX_CONNECTIONS: Final = 1
#: SCANNER_READ_BUFFER_SIZE (scanuk.h).
SCANNER_READ_BUFFER_SIZE: Final = 1024
#: SCANNER_NOTIFICATION {ULONG BytesToScan; ULONG Reserved; UCHAR Contents[1024]}: 1032 bytes.
SCANNER_NOTIFICATION: Final = struct.Struct(f"<II{SCANNER_READ_BUFFER_SIZE}s")
#: SCANNER_REPLY {BOOLEAN SafeToOpen}: 1 byte (the user sends it as a 17-byte
#: SCANNER_REPLY_MESSAGE under #pragma pack(1)).
SCANNER_REPLY: Final = struct.Struct("<B")
#: What the sample's user program searches for (scanUser.c's FoulString).
FOUL_STRING: Final = b"foul"
#: The attribute of the Filter that holds the sample's state.


def describe_message(kind: str, data: bytes) -> str | None:
    """How ``fltemu trace`` shows the sample's messages: a SCANNER_NOTIFICATION's size and
    contents, a SCANNER_REPLY's verdict."""
    if kind in ("message", "deliver") and len(data) >= 8:
        bytes_to_scan, _ = struct.unpack_from("<II", data)
        contents = data[8 : 8 + bytes_to_scan]
        more = "..." if bytes_to_scan > len(contents) else ""
        return (
            f"SCANNER_NOTIFICATION BytesToScan={bytes_to_scan} "
            f"Contents={contents.decode('latin-1')!r}{more}"
        )
    if kind in ("reply", "message_done") and len(data) >= SCANNER_REPLY.size:
        (safe,) = SCANNER_REPLY.unpack_from(data)
        return f"SCANNER_REPLY SafeToOpen={safe} ({'safe' if safe else 'unsafe'})"
    return None


#: Its port's messages, as ``fltemu trace`` shows them.
TRACE_DECODERS: Final[dict[str, TraceDecoder]] = {PORT_NAME: describe_message}

#: The settings this sample reads.
SETTINGS: Final = ("source", "extensions", "interval", "seed", "history")
DEFAULT_SOURCE: Final = "inject"
DEFAULT_EXTENSIONS: Final = "doc"
DEFAULT_HISTORY: Final = 100
#: The most verdicts ``history`` may keep (a verdict is a few hundred bytes).
MAX_HISTORY: Final = 100_000

_SUCCESS: Final = NtStatus.STATUS_SUCCESS

_WORDS: Final = (
    b"lorem",
    b"ipsum",
    b"dolor",
    b"sit",
    b"amet",
    b"filter",
    b"manager",
    b"port",
    b"message",
    b"scan",
)


class ScanOperation(enum.Enum):
    """Which of the sample's scans this is, and what a "no" would block."""

    #: ScannerPostCreate: an unsafe file has its open undone (STATUS_ACCESS_DENIED).
    OPEN = "open"
    #: ScannerPreWrite: an unsafe write fails with STATUS_ACCESS_DENIED.
    WRITE = "write"
    #: ScannerPreCleanup's rescan: an unsafe file is only reported.
    CLEANUP = "cleanup"


#: Which scan each inotify activity stands for.
_OPERATIONS: Final = {
    FileActivityKind.OPENED: ScanOperation.OPEN,
    FileActivityKind.WRITTEN: ScanOperation.WRITE,
    FileActivityKind.CLOSED_AFTER_WRITE: ScanOperation.CLEANUP,
}

_BLOCKED_TEXT: Final = {
    ScanOperation.OPEN: "would be blocked: the open is undone with STATUS_ACCESS_DENIED",
    ScanOperation.WRITE: "would be blocked: the write fails with STATUS_ACCESS_DENIED",
}


@dataclass(frozen=True, slots=True)
class ScanVerdict:
    """What the scanner decided about one file.

    Attributes:
        name: the file (a path for ``dir:``, a made-up name otherwise).
        operation: which scan.
        sent: whether a SCANNER_NOTIFICATION went to user mode (not with no client
            connected, nor for an empty file).
        status: what FltSendMessage returned, when it was called.
        safe: SafeToOpen as the sample reads it (true whenever the status is not
            STATUS_SUCCESS).
        would_block: an unsafe open or write (a cleanup rescan only reports).
        bytes_to_scan: the notification's BytesToScan.
    """

    name: str
    operation: ScanOperation
    sent: bool
    status: NtStatus | None
    safe: bool
    would_block: bool
    bytes_to_scan: int = 0

    def describe(self) -> str:
        """One line for the log."""
        if not self.sent:
            why = "empty file" if self.bytes_to_scan == 0 else "no scanner connected"
            return f"allowed, not scanned ({why})"
        if self.status != _SUCCESS:
            return f"allowed: FltSendMessage returned {self.status}, only STATUS_SUCCESS counts"
        if self.safe:
            return "SAFE"
        return f"UNSAFE ({_BLOCKED_TEXT.get(self.operation, 'reported only')})"


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """One file to scan, from a source."""

    name: str
    content: bytes
    operation: ScanOperation


class ScannerState:
    """The sample's globals (ScannerData) and its verdicts.

    Args:
        flt: the filter.
        extensions: the scanned extensions, upper-cased.
        history: how many verdicts to keep.

    Attributes:
        client_port: the connection (ScannerData.ClientPort), ``None`` when nobody is connected.
        user_process: who connected (ScannerData.UserProcess).
        verdicts: the latest verdicts, oldest first.
        scanned: files whose notification was sent.
        unsafe: files found unsafe.
        not_sent: files allowed without a scan (no client, empty file).
        send_failures: sends that returned anything but STATUS_SUCCESS.
    """

    def __init__(self, flt: Filter, extensions: frozenset[str], history: int) -> None:
        self.flt = flt
        self.extensions = extensions
        self.server_port: ServerPort | None = None
        self.client_port: ClientPort | None = None
        self.user_process: ProcessInfo | None = None
        self.verdicts: deque[ScanVerdict] = deque(maxlen=history)
        self.scanned = 0
        self.unsafe = 0
        self.not_sent = 0
        self.send_failures = 0
        self.runner: SourceRunner[ScanRequest] | None = None

    def __repr__(self) -> str:
        return (
            f"<ScannerState client={self.client_port!r} scanned={self.scanned} "
            f"unsafe={self.unsafe} verdicts={len(self.verdicts)}>"
        )

    def is_scanned_name(self, name: str) -> bool:
        """ScannerpCheckExtension: does the file's extension make it one to scan?"""
        final = os.path.basename(name)
        dot = final.rfind(".")
        if dot < 0:
            return False
        extension = final[dot + 1 :]
        return bool(extension) and extension.upper() in self.extensions

    async def scan(
        self, name: str, content: bytes, operation: ScanOperation = ScanOperation.OPEN
    ) -> ScanVerdict:
        """ScannerpScanFileInUserMode: ask the user program whether ``content`` is safe.

        Sends a SCANNER_NOTIFICATION on the current connection and waits for the reply with
        no timeout, as the sample does (teardown cancels a scan that waits).

        Args:
            name: the file's name, for the verdict.
            content: the file's first bytes (or the written data); only 1024 are sent.
            operation: which scan this is.

        Returns:
            The verdict, also logged and kept in ``verdicts``.
        """
        port = self.client_port
        bytes_to_scan = min(len(content), SCANNER_READ_BUFFER_SIZE)
        if port is None or bytes_to_scan == 0:
            # "If not client port just return" / bytesRead == 0 / Write.Length == 0.
            verdict = ScanVerdict(name, operation, False, None, True, False, bytes_to_scan)
            self.not_sent += 1
            return self._record(verdict)
        notification = SCANNER_NOTIFICATION.pack(
            bytes_to_scan, 0, content[:SCANNER_READ_BUFFER_SIZE]
        )
        try:
            result = await self.flt.send_message(
                port, notification, reply_length=SCANNER_REPLY.size, timeout=None
            )
        except asyncio.CancelledError:
            log.info("scanner: %s %s: cancelled waiting for user mode", operation.value, name)
            raise
        self.scanned += 1
        if result.status == _SUCCESS:
            # The reply buffer *is* the notification buffer: what the reply did not
            # overwrite keeps the notification's bytes.
            reply_buffer = bytearray(notification[: SCANNER_REPLY.size])
            reply = result.reply or b""
            reply_buffer[: len(reply)] = reply
            safe = reply_buffer[0] != 0
        else:
            self.send_failures += 1
            safe = True
        would_block = not safe and operation is not ScanOperation.CLEANUP
        if not safe:
            self.unsafe += 1
        verdict = ScanVerdict(
            name, operation, True, result.status, safe, would_block, bytes_to_scan
        )
        return self._record(verdict)

    def _record(self, verdict: ScanVerdict) -> ScanVerdict:
        self.verdicts.append(verdict)
        log.info("scanner: %s %s: %s", verdict.operation.value, verdict.name, verdict.describe())
        return verdict

    # --- the port callbacks -------------------------------------------------------------------

    def connect_notify(
        self, client_port: ClientPort, server_port_cookie: object, context: bytes
    ) -> NtStatus:
        """ScannerPortConnect: remember the connection and its process; cookie NULL."""
        self.user_process = client_port.process
        self.client_port = client_port
        # The sample's DbgPrint of the port pointer; here its connection number and process.
        log.info("scanner: connected, port=#%d (pid %s)", client_port.id, client_port.process.pid)
        return _SUCCESS

    async def disconnect_notify(self, cookie: object) -> None:
        """ScannerPortDisconnect: FltCloseClientPort(&ScannerData.ClientPort)."""
        port = self.client_port
        log.info("scanner: disconnected, port=#%s", port.id if port is not None else "NULL")
        # A late DisconnectNotify (the user closed a handle whose connection was already
        # closed with close_client_port, §9.1) must not close a newer, live connection
        # that took the global since: the real sample has that hazard, fltemu's samples not.
        if self.client_port is not None and self.client_port.is_connected:
            return
        port, self.client_port = self.client_port, None
        await self.flt.close_client_port(port)
        self.user_process = None

    # --- sources ------------------------------------------------------------------------------

    def request_from_activity(self, activity: FileActivity) -> ScanRequest | None:
        """A ``dir:`` open, write or close after write, as the sample's three scans."""
        if activity.content is None:  # gone before it could be read
            return None
        return ScanRequest(activity.path, activity.content, _OPERATIONS[activity.kind])

    def synthesize(self, rng: random.Random, n: int) -> ScanRequest:
        """The n-th made-up file: random words, about one in four with "foul" in them."""
        extension = min(self.extensions) if self.extensions else "DOC"
        words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 150))]
        if rng.random() < 0.25:
            words.insert(rng.randrange(len(words) + 1), FOUL_STRING)
        content = b" ".join(words)[:SCANNER_READ_BUFFER_SIZE]
        return ScanRequest(f"synthetic-{n:06d}.{extension.lower()}", content, ScanOperation.OPEN)

    async def handle(self, request: ScanRequest) -> None:
        """Scan one request from the source."""
        await self.scan(request.name, request.content, request.operation)


def parse_extensions(value: str) -> frozenset[str]:
    """The ``extensions`` setting: ``"doc, .TXT"`` → ``{"DOC", "TXT"}``.

    Raises:
        ValueError: no extension given.
    """
    extensions = frozenset(
        part.strip().lstrip(".").upper() for part in value.split(",") if part.strip().lstrip(".")
    )
    if not extensions:
        raise ValueError(f"scanner.extensions names no extension: {value!r}")
    return extensions


def state_of(flt: Filter) -> ScannerState:
    """The scanner's state on ``flt`` (``flt.context``).

    Raises:
        LookupError: ``flt`` is not running this sample.
    """
    return sample_state(flt, ScannerState, "scanner")


async def setup(flt: Filter) -> None:
    """DriverEntry: create ``\\ScannerPort`` and start the configured source.

    Raises:
        ValueError: a bad setting (nothing is created then).
        StatusError: the port cannot be created (e.g. STATUS_OBJECT_NAME_COLLISION).
    """
    settings = SampleSettings("scanner", flt.settings, SETTINGS)
    source = parse_source(settings.text("source", DEFAULT_SOURCE))
    extensions = parse_extensions(settings.text("extensions", DEFAULT_EXTENSIONS))
    interval = settings.number(
        "interval", DEFAULT_INTERVAL, minimum=MIN_INTERVAL, maximum=MAX_INTERVAL
    )
    seed = settings.integer("seed", 0, minimum=-(2**63), maximum=2**63 - 1)
    history = settings.integer("history", DEFAULT_HISTORY, minimum=1, maximum=MAX_HISTORY)

    state = ScannerState(flt, extensions, history)
    runner = SourceRunner(
        "scanner",
        source,
        handle=state.handle,
        from_file=lambda event: None,  # unused: dir: is watched with inotify
        from_activity=state.request_from_activity,
        synthesize=state.synthesize,
        interval=interval,
        seed=seed,
        alive=lambda: flt.state is FilterState.REGISTERED,
        want=state.is_scanned_name,
        read_bytes=SCANNER_READ_BUFFER_SIZE,
    )
    state.server_port = await flt.create_communication_port(
        PORT_NAME,
        connect_notify=state.connect_notify,
        disconnect_notify=state.disconnect_notify,
        message_notify=None,
        max_connections=MAX_CONNECTIONS,
        case_insensitive=True,
        security=None,
    )
    flt.context = state
    await runner.start()
    state.runner = runner


async def teardown(flt: Filter) -> None:
    """ScannerUnload: stop the source (scans waiting for a reply are cancelled), close the port.

    The connection itself is disconnected by the filter's unload, which follows.
    """
    state = flt.context
    if not isinstance(state, ScannerState):
        return
    if state.runner is not None:
        await state.runner.stop()
    port = state.server_port
    if port is not None and port.state is ServerPortState.OPEN:
        await flt.close_communication_port(port)
