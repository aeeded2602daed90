r"""Message layouts: what a valid and a malformed kernel->user message of a port look like,
what answer is right, and how one "file" goes through the sample filter.

A ``Layout`` knows one port's message format. ``scanner`` (SCANNER_NOTIFICATION on
``\ScannerPort``, reply SafeToOpen: 0 when the bytes hold "foul") and ``avscan``
(AV_SCANNER_NOTIFICATION on the scan port; a file is the sample's whole scan, commands
included) send their files through the sample itself (``ScannerState.scan``,
``AvScanState.scan``), so every file gets the sample's verdict. ``minispy`` has no
kernel->user messages (the agent polls with FilterSendMessage). ``raw`` is any other port:
random bytes, any answer is right.
Not here: the schedule (``schedule``), the run (``runner``).
"""

from __future__ import annotations

import enum
import random
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from ..kernel import Filter
from ..samples import avscan, minispy, scanner
from ..status import NtStatus

__all__ = ["LAYOUTS", "FileResult", "Layout", "Outcome", "RawMessage", "SendRaw", "layout_for"]

#: Statuses after which a file is sent again once the agent is connected: nobody was there
#: to scan it (no client, disconnected, the filter unloading).
_RETRY: Final = frozenset(
    {
        NtStatus.STATUS_PORT_DISCONNECTED,
        NtStatus.STATUS_FLT_DELETING_OBJECT,
    }
)


@dataclass(frozen=True)
class RawMessage:
    """One kernel->user message: its bytes, FltSendMessage's reply length, the right reply
    (``None``: any reply is right)."""

    data: bytes
    reply_length: int | None
    expected: bytes | None = None


#: What ``Layout.file`` is given to send a raw message on the port's live connection:
#: ``await send(msg)`` returns FltSendMessage's status and reply.
SendRaw: TypeAlias = Callable[[RawMessage], Awaitable[tuple[NtStatus, "bytes | None"]]]


class Outcome(enum.Enum):
    """How one attempt at a file ended."""

    #: The agent answered (rightly or not).
    ANSWERED = "answered"
    #: Nobody could answer (no connection, unloading): send it again after a reconnect.
    RETRY = "retry"
    #: The agent did not answer (a timeout, an error status).
    FAILED = "failed"


@dataclass(frozen=True)
class FileResult:
    """One attempt at a file: how it ended, whether the answer was right, in words."""

    outcome: Outcome
    right: bool | None = None
    text: str = ""


def _words(rng: random.Random, foul: bool) -> bytes:
    words = [rng.choice((b"lorem", b"ipsum", b"filter", b"port", b"scan")) for _ in range(8)]
    if foul:
        words.insert(rng.randrange(len(words) + 1), scanner.FOUL_STRING)
    return b" ".join(words) + b"\n"


class Layout:
    """A port's messages; subclasses fill it in. ``raw`` is this class itself.

    Attributes:
        name: the layout's name (schedule ``layout = ...``).
        port: the port it describes by default (``None``: the schedule must name one).
        has_messages: whether the port carries kernel->user messages.
    """

    name = "raw"
    port: str | None = None
    has_messages = True
    #: The body size of a valid raw message and its reply length.
    size = 64

    def message(self, rng: random.Random) -> RawMessage:
        """A valid message and its right answer."""
        return RawMessage(rng.randbytes(self.size), self.size)

    def malformed(self, kind: str, rng: random.Random) -> RawMessage:
        """A message that breaks the layout: ``short`` (cut inside its header),
        ``oversized`` (longer than the agent's buffer should be) or ``out_of_range`` (a field
        with a value the layout does not allow)."""
        if kind == "short":
            return RawMessage(b"\x01", self.size)
        if kind == "oversized":
            return RawMessage(rng.randbytes(self.size * 4), self.size)
        return RawMessage(b"\xff" * self.size, self.size)

    async def file(self, flt: Filter, rng: random.Random, name: str, send: SendRaw) -> FileResult:
        """Send one file through the filter and judge the answer (``send`` sends a raw
        message on the port's live connection)."""
        msg = self.message(rng)
        status, reply = await send(msg)
        return self.judge(msg, status, reply)

    def judge(self, msg: RawMessage, status: NtStatus, reply: bytes | None) -> FileResult:
        """How a raw message's FltSendMessage ended, as a ``FileResult``."""
        if status in _RETRY:
            return FileResult(Outcome.RETRY, text=status.name)
        if status != NtStatus.STATUS_SUCCESS:
            return FileResult(Outcome.FAILED, text=status.name)
        if msg.expected is None:
            return FileResult(Outcome.ANSWERED, True)
        got = (reply or b"")[: len(msg.expected)]
        right = got == msg.expected
        text = "" if right else f"answered {got.hex() or 'nothing'}, expected {msg.expected.hex()}"
        return FileResult(Outcome.ANSWERED, right, text)


class ScannerLayout(Layout):
    """``\\ScannerPort``: SCANNER_NOTIFICATION {BytesToScan, Reserved, Contents[1024]}; the
    reply is SafeToOpen, 0 when the scanned bytes contain "foul"."""

    name = "scanner"
    port = scanner.PORT_NAME

    def message(self, rng: random.Random) -> RawMessage:
        body = _words(rng, rng.random() < 0.25)
        data = scanner.SCANNER_NOTIFICATION.pack(len(body), 0, body)
        return RawMessage(data, 1, b"\x00" if scanner.FOUL_STRING in body else b"\x01")

    def malformed(self, kind: str, rng: random.Random) -> RawMessage:
        if kind == "short":
            return RawMessage(struct.pack("<I", 4), 1)  # ends inside the 8-byte header
        if kind == "oversized":
            extra = rng.randbytes(64)
            body = _words(rng, False)
            data = scanner.SCANNER_NOTIFICATION.pack(len(body), 0, body) + extra
            return RawMessage(data, 1)  # 1096 bytes: over the agent's 1048-byte buffer
        body = _words(rng, False)
        return RawMessage(scanner.SCANNER_NOTIFICATION.pack(0xFFFFFFFF, 0, body), 1)

    async def file(self, flt: Filter, rng: random.Random, name: str, send: SendRaw) -> FileResult:
        foul = rng.random() < 0.25
        content = _words(rng, foul)
        verdict = await scanner.state_of(flt).scan(name, content)
        if not verdict.sent:
            return FileResult(Outcome.RETRY, text="no scanner connected")
        if verdict.status in _RETRY:
            return FileResult(Outcome.RETRY, text=str(verdict.status))
        if verdict.status != NtStatus.STATUS_SUCCESS:
            return FileResult(Outcome.FAILED, text=str(verdict.status))
        right = verdict.safe != foul
        text = "" if right else f"{name}: {'safe' if verdict.safe else 'unsafe'}, expected "
        if not right:
            text += "unsafe" if foul else "safe"
        return FileResult(Outcome.ANSWERED, right, text)


_AV_RESULTS: Final = frozenset(int(r) for r in avscan.AvScanResult)


class AvScanLayout(Layout):
    """The avscan scan port: AV_SCANNER_NOTIFICATION {Message, Reason, ScanId, ThreadId}; the
    agent replies with its thread id and scans through the filter's commands."""

    name = "avscan"
    port = avscan.SCAN_PORT_NAME

    def message(self, rng: random.Random) -> RawMessage:
        # A scan request for a ScanId the filter does not know: the agent's create-section
        # fails with STATUS_NOT_FOUND, which a sturdy agent takes in its stride.
        scan_id = rng.randrange(1 << 40, 1 << 41)
        data = avscan.AV_SCANNER_NOTIFICATION.pack(
            avscan.AvScanMessage.AvMsgStartScanning, 0, scan_id, 0
        )
        return RawMessage(data, 4)

    def malformed(self, kind: str, rng: random.Random) -> RawMessage:
        size = avscan.AV_SCANNER_NOTIFICATION.size
        if kind == "short":
            return RawMessage(struct.pack("<I", 0), 4)
        if kind == "oversized":
            return RawMessage(rng.randbytes(size * 3), 4)  # over the agent's 40-byte buffer
        data = avscan.AV_SCANNER_NOTIFICATION.pack(0x7777, 0x7777, rng.randrange(1 << 40), 0)
        return RawMessage(data, 4)

    async def file(self, flt: Filter, rng: random.Random, name: str, send: SendRaw) -> FileResult:
        content = _words(rng, rng.random() < 0.25)
        verdict = await avscan.state_of(flt).scan(name, content=content)
        if verdict.status in _RETRY:
            return FileResult(Outcome.RETRY, text=str(verdict.status))
        if verdict.status != NtStatus.STATUS_SUCCESS:
            return FileResult(Outcome.FAILED, text=str(verdict.status))
        right = verdict.result is not None and verdict.result in _AV_RESULTS
        return FileResult(Outcome.ANSWERED, right, "" if right else f"result {verdict.result}")


class MiniSpyLayout(Layout):
    """``\\MiniSpyPort``: no kernel->user messages; the agent polls (GetMiniSpyLog)."""

    name = "minispy"
    port = minispy.PORT_NAME
    has_messages = False


#: Every layout by name.
LAYOUTS: Final[dict[str, Layout]] = {
    layout.name: layout for layout in (Layout(), ScannerLayout(), AvScanLayout(), MiniSpyLayout())
}


def layout_for(name: str | None, filter_spec: str) -> Layout:
    """The layout named ``name``, or the one of the sample ``filter_spec`` loads (else raw).

    Raises:
        KeyError: no layout of that name (the message lists them).
    """
    if name is None:
        return LAYOUTS.get(filter_spec, LAYOUTS["raw"])
    if name not in LAYOUTS:
        raise KeyError(f"no layout {name!r}; layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]
