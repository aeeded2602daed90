r"""The user half of Microsoft's avscan sample (avscan.c, userscan.c), written against fltuser.

It connects to the avscan filter's three ports, each with its AV_CONNECTION_CONTEXT, answers
every scan request the filter sends, performs the scan through the filter's commands and
prints one line per verdict. Run it against the built-in sample:

    fltemu serve --filter avscan --set avscan.source=dir:/tmp/av
    python examples/avscan_agent.py --view-file /tmp/eicar.txt

How it maps onto userscan.c:

* Connections: ``\MicrosoftAvSampleFilterScanPort`` with ``{Type = AvConnectForScan (1)}``,
  ``\MicrosoftAvSampleFilterAbortPort`` with ``{AvConnectForAbort (2)}`` and, unlike
  userscan.c (which never opens it), ``\MicrosoftAvSampleFilterQueryPort`` with
  ``{AvConnectForQuery (3)}``, held open and unused. A failed connect prints the HRESULT as
  0x%08x and exits 2 (0x80070002 when the daemon or the avscan filter is not there).
* Scan workers: userscan.c runs USER_SCAN_THREAD_COUNT (6) workers on an I/O completion port
  with 6 overlapped FilterGetMessage calls of 40 bytes (FILTER_MESSAGE_HEADER 16 +
  AV_SCANNER_NOTIFICATION 24). fltuser's ``Port`` has no OVERLAPPED I/O, and there is one
  pending read per worker, so here each of the 6 worker threads blocks in
  ``get_message(40)`` itself. For AvMsgStartScanning a worker records the ScanId, replies with
  its thread id (FILTER_REPLY_HEADER + ULONG: exactly 20 bytes, ``reply(id, <4 bytes>)``),
  then UserScanHandleStartScanMsg: FilterSendMessage ``AvCmdCreateSectionForDataScan``
  (COMMAND_MESSAGE, 32 bytes on x64; an 8-byte HANDLE comes back), map a view of the
  section and search it for the sample's signature (the XOR-decoded
  AV_DEFAULT_SEARCH_PATTERN, "message to be found"), then ``AvCmdCloseSectionForDataScan``
  with the AVSCAN_RESULT (1 infected, 2 clean, 0 undetermined).
* What the emulation offers for the data scan: fltemu's avscan hands out a section handle
  that stands for the file but cannot be mapped into another process, and no command returns
  the file's bytes. So, as userscan.c does when MapViewOfFile fails, the result stays
  AvScanResultUndetermined (the filter lets the file through and marks it modified). To see
  the infected and clean paths, ``--view-file PATH`` stands in for MapViewOfFile: every view
  then shows PATH's current bytes.
* Abort listener: a thread of its own reads the abort port with a synchronous
  ``get_message(40)``. AvMsgAbortScanning sets the Aborted flag of the worker whose thread id
  and ScanId match (the scan loop then gives up with "undetermined"). AvMsgFilterUnloading
  cancels the workers, replies with its thread id (20 bytes), closes the ports and exits 0.
* Shutdown (Ctrl-C or SIGTERM, ``--count``, or 0x80070006 when the ports are disconnected):
  UserScanFinalize: mark every worker aborted, let scans in progress close their sections,
  then close the scan port (CancelIoEx's part: the workers' pending reads end), wait for the
  workers, close the other ports. Exit status 0.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import threading
from dataclasses import dataclass, field
from types import FrameType

import fltuser

SCAN_PORT_NAME = "\\MicrosoftAvSampleFilterScanPort"
ABORT_PORT_NAME = "\\MicrosoftAvSampleFilterAbortPort"
QUERY_PORT_NAME = "\\MicrosoftAvSampleFilterQueryPort"

#: AVSCAN_CONNECTION_TYPE.
AV_CONNECT_FOR_SCAN = 1
AV_CONNECT_FOR_ABORT = 2
AV_CONNECT_FOR_QUERY = 3
#: AVSCAN_MESSAGE.
AV_MSG_START_SCANNING = 0
AV_MSG_ABORT_SCANNING = 1
AV_MSG_FILTER_UNLOADING = 2
#: AVSCAN_REASON.
REASONS = {0: "open", 1: "cleanup"}
#: AVSCAN_COMMAND.
AV_CMD_CREATE_SECTION_FOR_DATA_SCAN = 1
AV_CMD_CLOSE_SECTION_FOR_DATA_SCAN = 2
#: AVSCAN_RESULT.
AV_SCAN_RESULT_UNDETERMINED = 0
AV_SCAN_RESULT_INFECTED = 1
AV_SCAN_RESULT_CLEAN = 2
RESULT_NAMES = {
    AV_SCAN_RESULT_UNDETERMINED: "undetermined",
    AV_SCAN_RESULT_INFECTED: "infected",
    AV_SCAN_RESULT_CLEAN: "clean",
}

#: AV_CONNECTION_CONTEXT {AVSCAN_CONNECTION_TYPE Type}.
AV_CONNECTION_CONTEXT = struct.Struct("<I")
#: AV_SCANNER_NOTIFICATION {Message; Reason; LONGLONG ScanId; ULONG ScanThreadId; (pad)}: 24.
AV_SCANNER_NOTIFICATION = struct.Struct("<IIqI4x")
#: COMMAND_MESSAGE {Command; (pad) LONGLONG ScanId; ULONG ScanThreadId; (pad)
#: union {HANDLE FileHandle; AVSCAN_RESULT ScanResult}}: 32 bytes on x64.
COMMAND_MESSAGE = struct.Struct("<I4xqI4xQ")
#: A HANDLE (the section) and a ULONG (the thread id replied).
HANDLE = struct.Struct("<Q")
ULONG = struct.Struct("<I")
#: SCANNER_MESSAGE_SIZE: FILTER_MESSAGE_HEADER + AV_SCANNER_NOTIFICATION = 40.
SCANNER_MESSAGE_SIZE = fltuser.FILTER_HEADER_BYTES + AV_SCANNER_NOTIFICATION.size
#: USER_SCAN_THREAD_COUNT.
USER_SCAN_THREAD_COUNT = 6
#: HRESULT_FROM_WIN32(ERROR_INVALID_HANDLE): the port was disconnected.
E_HANDLE = 0x80070006

#: AV_DEFAULT_SEARCH_PATTERN, stored XOR-ed with AV_DEFAULT_PATTERN_XOR_KEY as avlib.h does.
AV_DEFAULT_SEARCH_PATTERN = b"7?));=?z.5z8?z<5/4>"
AV_DEFAULT_PATTERN_XOR_KEY = 90
SIGNATURE = bytes(b ^ AV_DEFAULT_PATTERN_XOR_KEY for b in AV_DEFAULT_SEARCH_PATTERN)
#: How many bytes are searched between two looks at the Aborted flag.
SCAN_CHUNK = 64 * 1024

_print_lock = threading.Lock()


def say(line: str) -> None:
    """One whole line on stdout, flushed (several threads print; people and tests read it)."""
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


@dataclass(eq=False)
class ThreadContext:
    """SCANNER_THREAD_CONTEXT: one scan worker."""

    index: int
    thread_id: int = 0
    scan_id: int = 0
    aborted: bool = False
    #: Between receiving a scan request and closing its section.
    busy: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: threading.Event = field(default_factory=threading.Event)


def scan_memory(view: bytes, ctx: ThreadContext) -> int:
    """UserScanMemoryStream: look for the signature; give up (undetermined) when aborted."""
    overlap = len(SIGNATURE) - 1
    for start in range(0, max(len(view) - overlap, 1), SCAN_CHUNK):
        with ctx.lock:
            if ctx.aborted:
                ctx.aborted = False
                return AV_SCAN_RESULT_UNDETERMINED
        if SIGNATURE in view[start : start + SCAN_CHUNK + overlap]:
            return AV_SCAN_RESULT_INFECTED
    return AV_SCAN_RESULT_CLEAN


class UserScan:
    """USER_SCAN_CONTEXT: the ports, the workers, the abort listener."""

    def __init__(
        self,
        scan_port: fltuser.Port,
        abort_port: fltuser.Port,
        query_port: fltuser.Port,
        view_file: str | None,
        count: int | None,
    ) -> None:
        self.scan_port = scan_port
        self.abort_port = abort_port
        self.query_port = query_port
        self.view_file = view_file
        self.count = count
        self.contexts = [ThreadContext(i) for i in range(USER_SCAN_THREAD_COUNT)]
        self.workers: list[threading.Thread] = []
        self.abort_thread: threading.Thread | None = None
        self.cv = threading.Condition()
        self.finalized = False
        self.finalize_lock = threading.Lock()
        self.stop = threading.Event()
        self.verdicts = 0

    # --- scan workers -------------------------------------------------------------------------

    def worker(self, ctx: ThreadContext) -> None:
        """UserScanWorker: one pending read of 40 bytes, handled and re-issued."""
        ctx.thread_id = threading.get_native_id() & 0xFFFFFFFF
        ctx.started.set()
        say(f"Current thread id:{ctx.thread_id}")
        while True:
            try:
                msg = self.scan_port.get_message(SCANNER_MESSAGE_SIZE)
            except fltuser.PortClosedError:
                say("Completion port becomes unavailable.")  # we closed the handle
                break
            except fltuser.HResultError as exc:
                if exc.hresult == E_HANDLE:
                    say("Scan port disconnected (0x80070006), probably the filter unloading")
                    self.request_stop()
                else:
                    say(f"[UserScanWorker]: Failed to get message: 0x{exc.hresult:08x}")
                break
            with self.cv:
                if self.finalized:
                    break  # finalizing: leave the request to the kernel's own timeout
                ctx.busy = True
            try:
                if not self.handle(ctx, msg):
                    break
            finally:
                with self.cv:
                    ctx.busy = False
                    self.cv.notify_all()
            if self.finalized:
                break
        say(f"***Thread id {ctx.thread_id} exiting")

    def handle(self, ctx: ThreadContext, msg: fltuser.Message) -> bool:
        """One scan request; False when the worker must stop (its reply failed)."""
        body = msg.data.ljust(AV_SCANNER_NOTIFICATION.size, b"\0")
        message, reason, scan_id, _thread = AV_SCANNER_NOTIFICATION.unpack_from(body)
        if message != AV_MSG_START_SCANNING:
            say(f"[UserScanWorker]: unexpected message {message} on the scan port")
            return True
        with ctx.lock:
            ctx.aborted = False
            ctx.scan_id = scan_id
        try:
            # SCANNER_REPLY_MESSAGE: FILTER_REPLY_HEADER + ULONG ThreadId = 20 bytes.
            self.scan_port.reply(msg.message_id, ULONG.pack(ctx.thread_id))
        except fltuser.HResultError as exc:
            say(
                f"[UserScanWorker]: Failed to reply thread id to the minifilter: "
                f"0x{exc.hresult:08x}"
            )
            return False
        self.handle_start_scan(ctx, scan_id, REASONS.get(reason, f"reason {reason}"))
        return True

    def handle_start_scan(self, ctx: ThreadContext, scan_id: int, reason: str) -> None:
        """UserScanHandleStartScanMsg: create the section, scan its view, close it."""
        create = COMMAND_MESSAGE.pack(
            AV_CMD_CREATE_SECTION_FOR_DATA_SCAN, scan_id, ctx.thread_id, 0
        )
        try:
            out = self.scan_port.send(create, HANDLE.size)
        except fltuser.HResultError as exc:
            say(f"scan {scan_id} ({reason}): create section failed: 0x{exc.hresult:08x}")
            return
        (section,) = HANDLE.unpack(out.ljust(HANDLE.size, b"\0"))
        view, why = self.map_view(section)
        if view is None:
            # MapViewOfFile failed: ScanResult stays 0, AvScanResultUndetermined.
            result, detail = AV_SCAN_RESULT_UNDETERMINED, why
        else:
            result = scan_memory(view, ctx)
            detail = f"{len(view)} bytes scanned"
            if result == AV_SCAN_RESULT_UNDETERMINED:
                detail += ", aborted"
        # CloseHandle(sectionHandle): nothing to close in this process.
        close = COMMAND_MESSAGE.pack(
            AV_CMD_CLOSE_SECTION_FOR_DATA_SCAN, scan_id, ctx.thread_id, result
        )
        try:
            self.scan_port.send(close, 0)
        except fltuser.HResultError as exc:
            say(f"scan {scan_id} ({reason}): close section failed: 0x{exc.hresult:08x}")
            return
        with self.cv:
            if self.count is not None and self.verdicts >= self.count:
                return
            self.verdicts += 1
            say(
                f"scan {scan_id} ({reason}) thread {ctx.thread_id} section 0x{section:x}: "
                f"{RESULT_NAMES[result]} ({detail})"
            )
            if self.count is not None and self.verdicts >= self.count:
                self.request_stop()

    def map_view(self, section: int) -> tuple[bytes | None, str]:
        """MapViewOfFile: the section's bytes, or ``None`` and why not."""
        if self.view_file is None:
            return None, f"cannot map section 0x{section:x}: fltemu passes no file data"
        try:
            with open(self.view_file, "rb") as f:
                return f.read(), ""
        except OSError as exc:
            return None, f"cannot read --view-file: {exc.strerror}"

    # --- the abort listener -------------------------------------------------------------------

    def listen_abort(self) -> None:
        """UserScanListenAbortProc: synchronous reads on the abort port."""
        this_thread = threading.get_native_id() & 0xFFFFFFFF
        while True:
            try:
                msg = self.abort_port.get_message(SCANNER_MESSAGE_SIZE)
            except fltuser.PortClosedError:
                say("[UserScanListenAbortProc]: FilterGetMessage aborted.")
                return
            except fltuser.HResultError as exc:
                if exc.hresult == E_HANDLE:
                    say("Abort port disconnected (0x80070006), probably the filter unloading")
                    self.request_stop()
                    return
                say(f"[UserScanListenAbortProc]: Failed to get message: 0x{exc.hresult:08x}")
                if self.stop.wait(0.2):
                    return
                continue
            body = msg.data.ljust(AV_SCANNER_NOTIFICATION.size, b"\0")
            message, _reason, scan_id, scan_thread_id = AV_SCANNER_NOTIFICATION.unpack_from(body)
            if message == AV_MSG_ABORT_SCANNING:
                self.abort_scan(scan_id, scan_thread_id)
            elif message == AV_MSG_FILTER_UNLOADING:
                self.finalize()
                say("The filter is unloading, exit!")
                try:
                    self.abort_port.reply(msg.message_id, ULONG.pack(this_thread))
                except fltuser.HResultError as exc:
                    say(
                        f"[UserScanListenAbortProc]: FilterReplyMessage failed: 0x{exc.hresult:08x}"
                    )
                self.request_stop()
                return
            else:
                say(f"[UserScanListenAbortProc]: unexpected message {message}")

    def abort_scan(self, scan_id: int, scan_thread_id: int) -> None:
        for ctx in self.contexts:
            if ctx.thread_id == scan_thread_id:
                with ctx.lock:
                    if ctx.scan_id == scan_id:
                        ctx.aborted = True
                        say(f"[UserScanListenAbortProc]: scan {scan_id} aborted")
                    else:
                        say(
                            f"[UserScanListenAbortProc]: tried to abort {scan_id}, but current "
                            f"scan in this thread is {ctx.scan_id}"
                        )
                return
        say(f"[UserScanListenAbortProc]: no scan thread {scan_thread_id} (scan {scan_id})")

    # --- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        for ctx in self.contexts:
            t = threading.Thread(
                target=self.worker, args=(ctx,), name=f"avscan-worker-{ctx.index}", daemon=True
            )
            self.workers.append(t)
            t.start()
        for ctx in self.contexts:
            ctx.started.wait(5)  # thread ids are known before an abort can name one
        self.abort_thread = threading.Thread(
            target=self.listen_abort, name="avscan-abort", daemon=True
        )
        self.abort_thread.start()

    def request_stop(self) -> None:
        self.stop.set()

    def finalize(self) -> None:
        """UserScanSynchronizedCancel: abort every worker and wait for them to end."""
        with self.finalize_lock:
            with self.cv:
                if self.finalized:
                    return
                self.finalized = True
                for ctx in self.contexts:
                    with ctx.lock:
                        ctx.aborted = True
                # Scans in progress give up and close their sections while the port is open.
                self.cv.wait_for(lambda: not any(c.busy for c in self.contexts), timeout=5)
            self.scan_port.close()  # CancelIoEx: the pending reads end
            for t in self.workers:
                t.join(timeout=5)

    def shutdown(self) -> None:
        """UserScanFinalize: cancel the workers, close the ports, wait for the abort thread."""
        self.finalize()
        self.abort_port.close()
        self.query_port.close()
        if self.abort_thread is not None:
            self.abort_thread.join(timeout=5)


def connect_all(address: str | None) -> list[fltuser.Port] | int:
    """The three connections, or the failing HRESULT (the ones made are closed)."""
    ports: list[fltuser.Port] = []
    for name, kind in (
        (SCAN_PORT_NAME, AV_CONNECT_FOR_SCAN),
        (ABORT_PORT_NAME, AV_CONNECT_FOR_ABORT),
        (QUERY_PORT_NAME, AV_CONNECT_FOR_QUERY),
    ):
        try:
            ports.append(
                fltuser.connect(name, context=AV_CONNECTION_CONTEXT.pack(kind), address=address)
            )
        except fltuser.HResultError as exc:
            say(f"ERROR: Connecting to {name}: 0x{exc.hresult:08x} ({exc})")
            for port in ports:
                port.close()
            return exc.hresult
    return ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "The user half of Microsoft's avscan minifilter sample (userscan.c) over fltemu: "
            "connects to the scan, abort and query ports with their AV_CONNECTION_CONTEXT, "
            "runs 6 scan workers (40-byte reads, 20-byte replies) and an abort listener, "
            "scans through AvCmdCreateSectionForDataScan / AvCmdCloseSectionForDataScan and "
            "prints one line per verdict."
        ),
        epilog=(
            "example: fltemu serve --filter avscan --set avscan.source=dir:/tmp/av & "
            "python examples/avscan_agent.py --view-file /tmp/eicar.txt. fltemu's sections "
            "cannot be mapped, so without --view-file every verdict is 'undetermined', as "
            "userscan.c's is when MapViewOfFile fails. Exit status: 0 on Ctrl-C, when the "
            "filter unloads or after --count verdicts; 2 when a connect fails (0x80070002: "
            "no daemon or no avscan filter)."
        ),
    )
    parser.add_argument(
        "--address",
        default=None,
        help="the daemon's socket (default: $FLTEMU_SOCKET, else the default socket)",
    )
    parser.add_argument(
        "--view-file",
        default=None,
        metavar="PATH",
        help=(
            "stand in for MapViewOfFile: every section's view shows this file's bytes "
            '(infected when they contain "message to be found")'
        ),
    )
    parser.add_argument(
        "--count", type=int, default=None, metavar="N", help="exit after N verdicts"
    )
    args = parser.parse_args(argv)
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")

    connected = connect_all(args.address)
    if isinstance(connected, int):
        return 2
    scan_port, abort_port, query_port = connected
    say("avscan: connected to the scan, abort and query ports")
    user_scan = UserScan(scan_port, abort_port, query_port, args.view_file, args.count)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        user_scan.start()
        say("press Ctrl-C to quit")
        while not user_scan.stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        say("avscan: interrupted")
    say("=================finalize")
    user_scan.shutdown()
    say("avscan: closed the ports, exiting")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
