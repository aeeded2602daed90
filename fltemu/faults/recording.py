r"""Record a port's traffic to a file, and replay its kernel->user messages to an agent.

A recording is a JSON Lines file (``docs/faults.md``): the first line is the header
``{"fltemu_recording": RECORDING_FORMAT, ...}``, every other line one event of ``fltemu
trace`` (connect, disconnect, FilterSendMessage, FilterGetMessage, FltSendMessage started,
delivered and done, FilterReplyMessage) with its time in seconds from the first one and its
payload in base64. ``record_events`` writes one from the events of a trace connection;
``load_recording`` reads one back and refuses a later format.

``replay`` plays it back: a daemon of its own creates the recorded port, the agent (a new
build, say) connects, and every recorded FltSendMessage is sent again, at the recorded pace
or each as soon as the previous one is answered; each reply that differs from the recorded
one (status or bytes) is reported. The agent's FilterSendMessage calls are answered with
the recorded status (a trace does not carry MessageNotify's output: the answer has the
recorded size, in zero bytes); a request the recording never saw is reported too.
Not here: fault schedules (``schedule``, ``runner``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from .._version import __version__
from ..daemon.server import Daemon
from ..errors import FltEmuError
from ..kernel import ClientPort
from ..status import NtStatus
from ..wire import TraceEvent
from .report import exit_words
from .runner import (
    DAEMON_GRACE,
    DEFAULT_START_TIMEOUT,
    FaultRunError,
    agent_env,
    stop_process,
)

__all__ = [
    "RECORDING_FORMAT",
    "Exchange",
    "Recording",
    "RecordingError",
    "ReplayDifference",
    "ReplayReport",
    "load_recording",
    "record_events",
    "replay",
]

#: The recording file format this fltemu writes and reads; a later one is refused.
RECORDING_FORMAT: Final = 1
#: The header's key (its value is the format).
HEADER_KEY: Final = "fltemu_recording"
#: Seconds a replayed message waits for its reply when the recording's send had no timeout.
DEFAULT_REPLAY_TIMEOUT: Final = 5.0
#: The largest reply length FltSendMessage takes (FILTER_MESSAGE_HEADER.ReplyLength, a ULONG,
#: is it plus 16).
_MAX_REPLY_LENGTH: Final = 0xFFFFFFEF
#: The replayed port's connection limit: the agent may hold a few (avscan holds three ports'
#: worth, a restarted agent its old and new handles) and the limit is not what is tested.
REPLAY_MAX_CONNECTIONS: Final = 64

_FIELDS: Final = (
    "kind", "port", "connection", "pid", "status", "message_id", "size", "buffer",
    "reply_size", "reply_status", "timeout", "latency", "count", "text",
)  # fmt: skip
#: The kinds a recording keeps (``start`` and ``dropped`` go into the header's notes).
_KINDS: Final = frozenset(
    {"connect", "disconnect", "send", "get", "message", "deliver", "message_done", "reply"}
)


class RecordingError(FltEmuError, ValueError):
    """A recording that cannot be read or replayed; the message says why and what to do."""


def _status_name(value: int | None) -> str:
    if value is None:
        return "none"
    try:
        return NtStatus(value).name
    except ValueError:
        return f"0x{value:08X}"


def record_events(
    events: Iterable[TraceEvent],
    out: IO[str],
    *,
    port: str,
    address: str,
    count: int | None = None,
    deadline: float | None = None,
    on_start: Callable[[str], None] | None = None,
) -> tuple[int, int]:
    """Write a recording of ``events`` (a trace connection's, ``start`` first) to ``out``.

    Emulates no Windows function. Stops after ``count`` FltSendMessage calls have ended, at
    ``deadline`` (``time.monotonic()``; checked as events come), or when the events end.

    Returns:
        (FltSendMessage calls recorded, events dropped by the daemon because the recorder
        was too slow; those are named in the file too).
    """
    header = {
        HEADER_KEY: RECORDING_FORMAT,
        "fltemu": __version__,
        "created": time.time(),
        "port": port,
        "address": address,
    }
    out.write(json.dumps(header) + "\n")
    first: float | None = None
    done = dropped = 0
    for event in events:
        if event.kind == "start":
            if on_start is not None:
                on_start(event.text)
            continue
        if first is None:
            first = event.time
        line: dict[str, Any] = {"t": round(event.time - first, 6)}
        for name in _FIELDS:
            value = getattr(event, name)
            if (value is not None and value != "") or name == "status":
                line[name] = value
        if event.data:
            line["data"] = base64.b64encode(event.data).decode("ascii")
        out.write(json.dumps(line) + "\n")
        out.flush()
        if event.kind == "dropped":
            dropped += event.count
        if event.kind == "message_done":
            done += 1
            if count is not None and done >= count:
                break
        if deadline is not None and time.monotonic() >= deadline:
            break
    return done, dropped


@dataclass(frozen=True)
class Exchange:
    """One recorded FltSendMessage: the message, how it was sent, how it ended.

    Attributes:
        t: seconds from the recording's first event to the send.
        data: the message (cut to the trace's preview limit when ``cut``).
        reply_length: FltSendMessage's reply length (``None``: no reply wanted).
        timeout: its timeout in seconds (``None``: forever).
        status: what it returned.
        reply: the reply bytes it received (``None``: none).
        cut: the message or the reply was longer than a trace event carries.
    """

    t: float
    data: bytes
    reply_length: int | None
    timeout: float | None
    status: int
    reply: bytes | None
    cut: bool = False


@dataclass(frozen=True)
class RecordedSend:
    """One recorded FilterSendMessage: its input and MessageNotify's status and size."""

    t: float
    data: bytes
    status: int
    reply_size: int


@dataclass
class Recording:
    """A recording read back: its header, its exchanges and the agent's sends, in order.

    Attributes:
        header: the first line.
        port: the port recorded.
        exchanges: the FltSendMessage calls, by start time.
        sends: the agent's FilterSendMessage calls.
        dropped: events the daemon dropped while recording (the recording misses them).
        unmatched: FltSendMessage starts whose end is not in the file (it stopped first).
    """

    header: dict[str, Any]
    port: str
    exchanges: list[Exchange] = field(default_factory=list)
    sends: list[RecordedSend] = field(default_factory=list)
    dropped: int = 0
    unmatched: int = 0


def _data(line: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(line.get("data", ""), validate=True)
    except ValueError as exc:
        raise RecordingError(f"data is not base64: {exc}") from None


def load_recording(path: str | Path) -> Recording:
    """Read a recording file.

    Raises:
        RecordingError: it cannot be read, is not a recording, or is of a later format.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise RecordingError(f"{path} is not a recording (not text)") from None
    lines = text.splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or HEADER_KEY not in header:
        raise RecordingError(
            f"{path} is not an fltemu recording: its first line must be the header "
            f'{{"{HEADER_KEY}": {RECORDING_FORMAT}, ...}} (make one with fltemu record)'
        )
    version = header[HEADER_KEY]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecordingError(f"{path}: format {version!r} is not a recording format")
    if version > RECORDING_FORMAT:
        raise RecordingError(
            f"{path} is recording format {version}, written by a later fltemu "
            f"({header.get('fltemu', 'unknown version')}); this fltemu ({__version__}) reads "
            f"format {RECORDING_FORMAT} and earlier: upgrade fltemu (pip install -U fltemu)"
        )
    recording = Recording(header, str(header.get("port", "")))
    # FltSendMessage starts not yet ended, per connection, in order: (line, message id).
    started: dict[int, list[list[Any]]] = {}
    for number, raw in enumerate(lines[1:], 2):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            kind = line["kind"]
            conn = int(line.get("connection", 0))
            t = float(line["t"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise RecordingError(f"{path}, line {number}: not a recorded event") from None
        try:
            if kind == "dropped":
                recording.dropped += int(line.get("count", 0))
            elif kind == "message":
                started.setdefault(conn, []).append([line, int(line.get("message_id", 0))])
            elif kind == "deliver":
                data = _data(line)
                for entry in started.get(conn, []):
                    if entry[1] == 0 and _data(entry[0]) == data:
                        entry[1] = int(line.get("message_id", 0))
                        break
            elif kind == "message_done":
                _finish(recording, started.get(conn, []), line, t)
            elif kind == "send":
                recording.sends.append(
                    RecordedSend(
                        t, _data(line), int(line.get("status") or 0), int(line.get("reply_size", 0))
                    )
                )
        except RecordingError as exc:
            raise RecordingError(f"{path}, line {number}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            # A field of the wrong type (a hand-edited or damaged file): named, not a traceback.
            raise RecordingError(
                f"{path}, line {number}: a {kind} event with a bad field ({exc}); "
                "record the file again with fltemu record"
            ) from None
    recording.unmatched = sum(len(entries) for entries in started.values())
    recording.exchanges.sort(key=lambda e: e.t)
    return recording


def _finish(recording: Recording, entries: list[list[Any]], done: dict[str, Any], t: float) -> None:
    message_id = int(done.get("message_id", 0))
    size = int(done.get("size", 0))
    buffer = done.get("buffer")
    found = [
        entry
        for entry in entries
        if entry[1] == message_id
        and int(entry[0].get("size", 0)) == size
        and entry[0].get("buffer") == buffer
    ]
    if not found:
        return  # its start came before the recording did
    entries.remove(found[0])
    line = found[0][0]
    data = _data(line)
    reply = _data(done) if done.get("reply_size") is not None else None
    cut = len(data) < size or (reply is not None and len(reply) < int(done["reply_size"]))
    timeout = None if line.get("timeout") is None else float(line["timeout"])
    if timeout is not None and not 0 <= timeout < float("inf"):
        raise RecordingError(f"timeout {timeout} is not seconds >= 0")
    reply_length = None if buffer is None else int(buffer)
    if reply_length is not None and not 0 <= reply_length <= _MAX_REPLY_LENGTH:
        raise RecordingError(f"buffer {reply_length} is not a reply length (0 to 0xFFFFFFEF)")
    recording.exchanges.append(
        Exchange(
            float(line["t"]),
            data,
            reply_length,
            timeout,
            int(done.get("status") or 0),
            reply,
            cut,
        )
    )


@dataclass(frozen=True)
class ReplayDifference:
    """A reply that differs from the recording (or a request it never saw)."""

    index: int
    what: str

    def to_dict(self) -> dict[str, Any]:
        """As the JSON report shows it."""
        return {"index": self.index, "what": self.what}


@dataclass
class ReplayReport:
    """What a replay found.

    Attributes:
        recording: the file.
        agent: the agent's command line.
        pace: ``recorded`` or ``fast``.
        replayed: messages sent again.
        same: replies equal to the recorded ones.
        differences: every reply that differs, and every request not in the recording.
        skipped: messages not replayed (cut in the recording).
        exit: the agent's exit in words, if it exited before the end.
        notes: what else the replay should tell (dropped events, unfinished sends).
    """

    recording: str
    agent: list[str]
    pace: str
    replayed: int = 0
    same: int = 0
    differences: list[ReplayDifference] = field(default_factory=list)
    skipped: int = 0
    exit: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every reply as recorded, no new request."""
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "format": RECORDING_FORMAT,
            "recording": self.recording,
            "agent": list(self.agent),
            "pace": self.pace,
            "passed": self.passed,
            "replayed": self.replayed,
            "same": self.same,
            "skipped": self.skipped,
            "exit": self.exit,
            "differences": [d.to_dict() for d in self.differences],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """The JSON report, indented."""
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """The report for people."""
        lines = [
            f"fltemu replay: {self.recording} at the {self.pace} pace, agent: "
            f"{' '.join(self.agent)}",
            f"{self.replayed} messages replayed, {self.same} replies as recorded, "
            f"{len(self.differences)} differences, {self.skipped} skipped",
        ]
        lines += [f"note: {note}" for note in self.notes]
        if self.exit is not None:
            lines.append(f"the agent {self.exit}")
        lines += [f"  - message {d.index}: {d.what}" for d in self.differences]
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def _show(data: bytes | None) -> str:
    if data is None:
        return "no reply"
    return data[:32].hex() + ("..." if len(data) > 32 else "") + f" ({len(data)} bytes)"


class _Replay:
    def __init__(self, recording: Recording, report: ReplayReport, port: str) -> None:
        self.recording = recording
        self.report = report
        self.port_name = port
        self.connections: list[ClientPort] = []
        self.changed = asyncio.Event()
        self.unknown_sends = 0
        self.answers: dict[bytes, list[RecordedSend]] = {}
        for send in recording.sends:
            self.answers.setdefault(send.data, []).append(send)

    def connect_notify(self, client_port: ClientPort, cookie: object, context: bytes) -> NtStatus:
        self.connections.append(client_port)
        self.changed.set()
        return NtStatus.STATUS_SUCCESS

    def disconnect_notify(self, cookie: object) -> None:
        self.changed.set()

    def message_notify(self, cookie: object, data: bytes, out_size: int) -> tuple[int, bytes]:
        known = self.answers.get(bytes(data))
        if not known:
            self.unknown_sends += 1
            self.report.differences.append(
                ReplayDifference(
                    0, f"the agent sent a request the recording never saw: {_show(bytes(data))}"
                )
            )
            return NtStatus.STATUS_INVALID_DEVICE_REQUEST, b""
        send = known[0] if len(known) == 1 else known.pop(0)
        return send.status, bytes(min(send.reply_size, out_size))

    def live(self) -> ClientPort | None:
        for client_port in reversed(self.connections):
            if client_port.is_connected:
                return client_port
        return None


async def replay(
    recording: Recording,
    agent: Sequence[str],
    *,
    source: str = "the recording",
    pace: str = "recorded",
    address: str | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> ReplayReport:
    """Replay ``recording``'s kernel->user messages to the agent started by ``agent``.

    Plays FltSendMessage (and answers the agent's FilterSendMessage as MessageNotify did) on
    a daemon of its own, with the recorded port.

    Args:
        recording: from ``load_recording``.
        agent: the agent's command line.
        source: the recording's name, for the report.
        pace: ``recorded`` (each message at its recorded time from the first) or ``fast``
            (each as soon as the previous one is answered).
        address: the socket to serve on (default: a fresh one in a temporary folder).
        start_timeout: seconds the agent has to connect.
        progress: called with a line now and then (``None``: quiet).

    Returns:
        The report; ``passed`` is false when a reply differed.

    Raises:
        RecordingError: nothing to replay, or an unknown pace.
        FaultRunError: the agent would not start or never connected.
    """
    if pace not in ("recorded", "fast"):
        raise RecordingError(f"pace is 'recorded' or 'fast', not {pace!r}")
    if not recording.port:
        raise RecordingError(f"{source} names no port")
    playable = [e for e in recording.exchanges if not e.cut]
    report = ReplayReport(
        source, list(agent), pace, skipped=len(recording.exchanges) - len(playable)
    )
    if not playable:
        raise RecordingError(
            f"{source} holds no FltSendMessage to replay (record while the kernel sends messages)"
        )
    if report.skipped:
        report.notes.append(
            f"{report.skipped} message(s) longer than a trace event carries were not replayed"
        )
    if recording.dropped:
        report.notes.append(
            f"the daemon dropped {recording.dropped} event(s) while recording: they are missing"
        )
    state = _Replay(recording, report, recording.port)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if address is None:
        tmp = tempfile.TemporaryDirectory(prefix="fltemu-replay-")
        address = os.path.join(tmp.name, "fltemu.sock")
    daemon = Daemon(address, shutdown_grace=DAEMON_GRACE)
    proc: asyncio.subprocess.Process | None = None
    output = tempfile.TemporaryFile()
    try:
        await daemon.start()
        flt = daemon.register_filter("replay")
        await flt.create_communication_port(
            recording.port,
            connect_notify=state.connect_notify,
            disconnect_notify=state.disconnect_notify,
            message_notify=state.message_notify,
            max_connections=REPLAY_MAX_CONNECTIONS,
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *agent,
                env=agent_env(address),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        except OSError as exc:
            raise FaultRunError(
                f"cannot start the agent {agent[0]!r}: {exc.strerror or exc}"
            ) from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout

        def ready() -> bool:
            # Connected with a first get pending (as when it was recorded), or gone.
            live = state.live()
            return (
                proc is None
                or proc.returncode is not None
                or (live is not None and live.queues.getter_count > 0)
            )

        while not ready() and loop.time() < deadline:
            state.changed.clear()
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # comes as the event is set.
            changed = asyncio.ensure_future(state.changed.wait())
            try:
                await asyncio.wait((changed,), timeout=0.05)
            finally:
                changed.cancel()
        if state.live() is None:
            what = (
                exit_words(proc.returncode)
                if proc.returncode is not None
                else f"did not connect to {recording.port} within {start_timeout:g} s"
            )
            raise FaultRunError(f"the agent {what}")

        async def one(index: int, exchange: Exchange) -> None:
            client_port = state.live()
            timeout = exchange.timeout if exchange.timeout is not None else DEFAULT_REPLAY_TIMEOUT
            if client_port is None:
                status, reply = NtStatus.STATUS_PORT_DISCONNECTED, None
            else:
                result = await flt.send_message(
                    client_port, exchange.data, exchange.reply_length, timeout
                )
                status, reply = result.status, result.reply
            report.replayed += 1
            if status == exchange.status and reply == exchange.reply:
                report.same += 1
                return
            report.differences.append(
                ReplayDifference(
                    index,
                    f"{_show(exchange.data)}: recorded {_status_name(exchange.status)} "
                    f"{_show(exchange.reply)}, now {_status_name(status)} {_show(reply)}",
                )
            )

        if progress is not None:
            progress(
                f"the agent is connected to {recording.port}: replaying {len(playable)} "
                f"message(s) at the {pace} pace"
            )
        start = loop.time()
        first_t = playable[0].t
        tasks = []
        for index, exchange in enumerate(playable, 1):
            if pace == "fast":
                await one(index, exchange)
            else:
                await asyncio.sleep(max(0.0, start + exchange.t - first_t - loop.time()))
                tasks.append(loop.create_task(one(index, exchange)))
            if progress is not None and index % 100 == 0:
                progress(f"{index} of {len(playable)} messages replayed")
        await asyncio.gather(*tasks)
        report.differences.sort(key=lambda d: d.index)
        if proc.returncode is not None:
            report.exit = exit_words(proc.returncode)
    finally:
        if proc is not None:
            await stop_process(proc)
        await daemon.shutdown()
        output.close()
        if tmp is not None:
            tmp.cleanup()
    return report
