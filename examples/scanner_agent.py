r"""The user half of Microsoft's scanner sample (scanUser.c), written against fltuser.

It connects to ``\ScannerPort`` with no context, keeps THREADS x REQUESTS FilterGetMessage
calls pending, and answers every SCANNER_NOTIFICATION the scanner filter sends: "foul" in the
scanned bytes means SafeToOpen = 0 (unsafe), otherwise 1 (safe). Run it against the built-in
sample:

    fltemu serve --filter scanner --set scanner.source=dir:/tmp/scan \
        --set scanner.extensions=doc,txt
    python examples/scanner_agent.py

How it maps onto scanUser.c:

* scanUser.c issues ``threadCount * requestCount`` overlapped FilterGetMessage calls (defaults
  2 x 5), each on its own 1048-byte SCANNER_MESSAGE buffer, and ``threadCount`` worker threads
  take completions off an I/O completion port. fltuser's ``Port`` has no OVERLAPPED I/O, so
  here each pending read is a thread blocked in ``get_message(1048)`` (one per buffer); a
  completed read goes into a queue that plays the completion port, and THREADS worker threads
  take them off it. A worker scans, replies, then re-issues the read on the same "buffer" (it
  lets that reader thread call ``get_message`` again), exactly as the worker re-issues
  FilterGetMessage on the buffer it just handled. So at most THREADS x REQUESTS messages are
  in user mode at once, as on Windows. (A ``Port`` is thread-safe, as the sample's shared
  handle is; the asyncio ``AsyncPort`` would do as well with tasks, but threads keep the
  sample's shape.)
* Each message: the 16-byte FILTER_MESSAGE_HEADER, then SCANNER_NOTIFICATION {ULONG
  BytesToScan; ULONG Reserved; UCHAR Contents[1024]}. BytesToScan must be <= 1024 (the
  sample asserts it). Here a malformed notification (shorter than its header, BytesToScan
  over 1024 or over the bytes that came) is reported on a line of its own and answered
  SafeToOpen = 0, as a file that could not be scanned, and the agent goes on serving.
* The reply is SCANNER_REPLY_MESSAGE under ``#pragma pack(1)``: FILTER_REPLY_HEADER (Status 0,
  the MessageId) + SCANNER_REPLY {BOOLEAN SafeToOpen}, 17 bytes; with fltuser that is
  ``reply(message_id, <1 byte>)``.
* A read or reply that fails ends that worker, as in the sample, except a reply that fails
  with 0x801F0020 (the kernel stopped waiting for it: a timeout or cancelled send, as at the
  end of a ``fltemu bench`` run), which is reported and ignored. 0x80070006
  (HRESULT_FROM_WIN32(ERROR_INVALID_HANDLE)) is "port disconnected, probably filter
  unloading": the program then exits 0, as scanUser.c does once its workers are gone; any
  other failure exits 1.
* A failed connect prints the HRESULT as 0x%08x and exits 2 (0x80070002 when the daemon or
  the scanner filter is not there).

The user side never learns which file it scans (the sample sends only its first bytes), so
each verdict line shows the message id, how many bytes were scanned, and safe or unsafe.
"""

from __future__ import annotations

import argparse
import queue
import signal
import struct
import sys
import threading
from dataclasses import dataclass, field
from types import FrameType

import fltuser

PORT_NAME = "\\ScannerPort"
#: SCANNER_READ_BUFFER_SIZE (scanuk.h).
SCANNER_READ_BUFFER_SIZE = 1024
#: FIELD_OFFSET(SCANNER_MESSAGE, Ovlp): FILTER_MESSAGE_HEADER (16) + SCANNER_NOTIFICATION (1032).
MESSAGE_BUFFER_SIZE = fltuser.FILTER_HEADER_BYTES + 8 + SCANNER_READ_BUFFER_SIZE
#: SCANNER_NOTIFICATION's fixed part: BytesToScan, Reserved.
NOTIFICATION_HEADER = struct.Struct("<II")
#: What the user program searches for (scanUser.c's FoulString).
FOUL_STRING = b"foul"
#: HRESULT_FROM_WIN32(ERROR_INVALID_HANDLE): the port was disconnected.
E_HANDLE = 0x80070006
#: scanUser.c's defaults and limit.
DEFAULT_REQUEST_COUNT = 5
DEFAULT_THREAD_COUNT = 2
MAX_THREAD_COUNT = 64


_print_lock = threading.Lock()


def say(line: str) -> None:
    """One whole line on stdout, flushed (several threads print; people and tests read it)."""
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def malformed(data: bytes) -> str | None:
    """What is wrong with a SCANNER_NOTIFICATION, or None when it can be scanned."""
    if len(data) < NOTIFICATION_HEADER.size:
        return f"{len(data)} bytes, shorter than its {NOTIFICATION_HEADER.size}-byte header"
    bytes_to_scan, _reserved = NOTIFICATION_HEADER.unpack_from(data)
    if bytes_to_scan > SCANNER_READ_BUFFER_SIZE:
        return f"BytesToScan {bytes_to_scan} > {SCANNER_READ_BUFFER_SIZE}"
    present = len(data) - NOTIFICATION_HEADER.size
    if bytes_to_scan > present:
        return f"BytesToScan {bytes_to_scan} but only {present} bytes of contents"
    return None


@dataclass(eq=False)
class Slot:
    """One pending FilterGetMessage: a SCANNER_MESSAGE buffer and the thread reading into it."""

    index: int
    #: Released when the buffer is (re-)issued to FilterGetMessage.
    issued: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))


class Scanner:
    """scanUser.c's SCANNER_THREAD_CONTEXT and its threads."""

    def __init__(self, port: fltuser.Port, threads: int, requests: int, count: int | None):
        self.port = port
        self.thread_count = threads
        self.count = count
        self.slots = [Slot(i) for i in range(threads * requests)]
        #: The completion port: (slot, Message) or (slot, HResultError); None wakes a worker.
        self.completions: queue.SimpleQueue[tuple[Slot, object] | None] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.verdicts = 0
        self.exit_code = 0
        self.exited = 0
        self.workers: list[threading.Thread] = []
        self.readers: list[threading.Thread] = []

    # --- the "overlapped" reads --------------------------------------------------------------

    def read(self, slot: Slot) -> None:
        """One pending FilterGetMessage: read, hand the completion over, wait to be re-issued."""
        while True:
            slot.issued.acquire()
            if self.stopping.is_set():
                return
            try:
                msg = self.port.get_message(MESSAGE_BUFFER_SIZE)
            except fltuser.HResultError as exc:
                self.completions.put((slot, exc))  # a failed completion, as GQCS reports it
                return
            self.completions.put((slot, msg))

    # --- ScannerWorker ------------------------------------------------------------------------

    def work(self) -> None:
        """ScannerWorker: take a completion, scan, reply, re-issue the read."""
        error: fltuser.HResultError | None = None
        try:
            while not self.stopping.is_set():
                item = self.completions.get()
                if item is None:
                    return
                slot, result = item
                if isinstance(result, fltuser.HResultError):
                    error = result
                    return
                assert isinstance(result, fltuser.Message)
                if not self.handle(result):
                    return
                slot.issued.release()  # FilterGetMessage on the same buffer
        except fltuser.HResultError as exc:
            error = exc
        finally:
            self.worker_exited(error)

    def handle(self, msg: fltuser.Message) -> bool:
        """Scan one SCANNER_NOTIFICATION and reply; False when the worker must stop."""
        with self.lock:
            if self.count is not None and self.verdicts >= self.count:
                return False
            self.verdicts += 1
            number = self.verdicts
        problem = malformed(msg.data)
        if problem is not None:
            # scanUser.c asserts BytesToScan <= SCANNER_READ_BUFFER_SIZE; an agent that others
            # copy checks what it reads instead, says so, fails closed and keeps serving.
            bytes_to_scan, safe = 0, False
            say(f"Scanner: message {msg.message_id}: malformed notification: {problem}")
        else:
            bytes_to_scan, _reserved = NOTIFICATION_HEADER.unpack_from(msg.data)
            start = NOTIFICATION_HEADER.size
            safe = FOUL_STRING not in msg.data[start : start + bytes_to_scan]
        try:
            # SCANNER_REPLY_MESSAGE: the 16-byte reply header + SafeToOpen = 17 bytes.
            self.port.reply(msg.message_id, bytes([1 if safe else 0]), status=0)
        except fltuser.NoWaiterForReplyError:
            # 0x801F0020: the kernel no longer waits for this id (its send timed out or was
            # cancelled). ScannerWorker would stop here; like most real agents, go on.
            say(f"Scanner: message {msg.message_id}: reply too late (0x801f0020), ignored")
            return True
        except fltuser.HResultError as exc:
            if not self.stopping.is_set():
                say(f"Scanner: Error replying message. Error = 0x{exc.hresult:08x}")
            raise  # the worker ends with this HRESULT, as ScannerWorker breaks out
        if problem is not None:
            say(f"Scanner: message {msg.message_id}: replied unsafe (it could not be scanned)")
        else:
            say(
                f"Scanner: message {msg.message_id} ({msg.size} bytes): scanned {bytes_to_scan} "
                f"bytes: {'safe' if safe else 'unsafe'}"
            )
        if self.count is not None and number >= self.count:
            self.finish(0)
            return False
        return True

    def worker_exited(self, error: fltuser.HResultError | None) -> None:
        if error is not None and not self.stopping.is_set():
            if isinstance(error, fltuser.PortClosedError):
                pass  # we closed the handle ourselves
            elif error.hresult == E_HANDLE:
                say("Scanner: Port is disconnected, probably due to scanner filter unloading.")
            else:
                say(f"Scanner: Unknown error occurred. Error = 0x{error.hresult:08x}")
                with self.lock:
                    self.exit_code = self.exit_code or 1
        with self.lock:
            self.exited += 1
            if self.exited == len(self.workers):
                self.done.set()  # every worker is gone: main cleans up

    def finish(self, code: int) -> None:
        with self.lock:
            if not self.done.is_set():
                self.exit_code = self.exit_code or code
        self.done.set()

    # --- main ---------------------------------------------------------------------------------

    def run(self) -> int:
        for i in range(self.thread_count):
            t = threading.Thread(target=self.work, name=f"scanner-worker-{i}", daemon=True)
            self.workers.append(t)
        for slot in self.slots:
            t = threading.Thread(
                target=self.read, args=(slot,), name=f"scanner-read-{slot.index}", daemon=True
            )
            self.readers.append(t)
        for t in self.workers + self.readers:
            t.start()
        try:
            while not self.done.wait(0.2):
                pass
        except KeyboardInterrupt:
            say("Scanner: interrupted")
        self.stop()
        return self.exit_code

    def stop(self) -> None:
        """Wake every thread, close the port (CloseHandle), wait for the threads."""
        self.stopping.set()
        self.port.close()  # pending reads fail: their threads end
        for slot in self.slots:
            slot.issued.release()
        for _ in self.workers:
            self.completions.put(None)
        for t in self.workers + self.readers:
            t.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "The user half of Microsoft's scanner minifilter sample (scanUser.c) over fltemu: "
            "connects to \\ScannerPort, keeps THREADS x REQUESTS FilterGetMessage calls "
            'pending, replies SafeToOpen=0 to any notification whose bytes contain "foul", '
            "1 otherwise, and prints one line per verdict."
        ),
        epilog=(
            "example: fltemu serve --filter scanner --set scanner.source=dir:/tmp/scan "
            "--set scanner.extensions=doc,txt & python examples/scanner_agent.py. "
            "Exit status: 0 when the port is disconnected (the filter unloaded) or after "
            "--count verdicts, 2 when the connect fails (0x80070002: no daemon or no "
            "scanner filter), 1 on another error."
        ),
    )
    parser.add_argument(
        "--address",
        default=None,
        help="the daemon's socket (default: $FLTEMU_SOCKET, else the default socket)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREAD_COUNT,
        help="worker threads, 1..64 (scanUser.c's threadCount; default: %(default)s)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUEST_COUNT,
        help="pending reads per worker (scanUser.c's requestCount; default: %(default)s)",
    )
    parser.add_argument(
        "--count", type=int, default=None, metavar="N", help="exit after N verdicts"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.threads <= MAX_THREAD_COUNT:
        parser.error(f"--threads must be 1..{MAX_THREAD_COUNT}")
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")

    say("Scanner: Connecting to the filter ...")
    try:
        port = fltuser.connect(PORT_NAME, address=args.address)
    except fltuser.HResultError as exc:
        say(f"ERROR: Connecting to filter port: 0x{exc.hresult:08x} ({exc})")
        return 2
    say(f"Scanner: connected to {PORT_NAME}: {args.threads} threads x {args.requests} requests")
    scanner = Scanner(port, args.threads, args.requests, args.count)
    signal.signal(signal.SIGTERM, _interrupt)
    code = scanner.run()
    say(f"Scanner: All done. Exit status {code}")
    return code


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
