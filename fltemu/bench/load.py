"""The load generator of ``fltemu bench``: kernel→user messages at a user's agent.

It hosts the port itself (an in-process daemon), optionally starts the agent, waits for it
to connect, then drives FltSendMessage closed-loop (N senders, each waiting for its answer)
or open-loop (a fixed rate; latency counts from each message's scheduled time, so a stalled
agent cannot hide its backlog) and records every answer in a latency histogram.
Not here: argument parsing and printing (``command``), the histogram (``histogram``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any, Final

from ..daemon import Daemon
from ..errors import FltEmuError
from ..kernel import ClientPort, Filter, SecurityDescriptor, ServerPort
from ..status import NtStatus
from ..wine import WineSetupError
from .cpu import CpuWatch, ProcessCpu
from .histogram import LatencyHistogram
from .windows import wine_launcher

__all__ = [
    "DEFAULT_PERCENTILES",
    "BenchConfig",
    "BenchError",
    "BenchInterrupted",
    "BenchReport",
    "LimitCheck",
    "Progress",
    "StageReport",
    "Window",
    "describe_exit",
    "run_bench",
]

#: The latency percentiles reported unless --percentiles says otherwise.
DEFAULT_PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)
#: Open loop: messages in flight beyond which new ones are counted as skipped rather than
#: sent, so that a dead agent cannot make the generator grow without bound.
MAX_IN_FLIGHT: Final = 10_000
#: Open loop: answered messages under this share of those offered earn a warning.
OFFERED_SHARE: Final = 0.9
#: How often the progress callback runs, in seconds.
PROGRESS_INTERVAL: Final = 1.0
#: Lines of the agent's output (stdout and stderr together) kept for the report.
AGENT_OUTPUT_LINES: Final = 20
#: How long an agent whose connections all broke gets to exit by itself before fltemu stops
#: it, so that its own exit status (and last words) are what the report shows.
AGENT_EXIT_GRACE: Final = 1.0
#: The limit check: a warm-up (not counted), then the measured calibration run, in seconds.
#: One second holds thousands of round trips at any rate where the check matters.
LIMIT_WARMUP_SECONDS: Final = 0.2
LIMIT_SECONDS: Final = 1.0
#: The limit check in open loop offers this many times the run's rate: sustaining all of it
#: proves the limit far enough above the run's rate, falling short measures the limit.
LIMIT_OFFER_FACTOR: Final = 4.0
#: The agent's throughput within this factor of fltemu's own limit earns a warning.
LIMIT_FACTOR: Final = 2.0
#: Getters the instant-reply agent keeps pending: one more than the messages in flight (so
#: the next get is always parked), at most this many (each is an open request on the
#: connection, of which the daemon allows 1024).
LIMIT_MAX_GETTERS: Final = 256
#: The port name of the calibration run, hosted on the same daemon beside the user's port.
LIMIT_PORT: Final = "\\FltemuBenchLimitCheck"


class BenchError(FltEmuError):
    """The benchmark could not run (no agent connected, the agent exited, ...)."""


class BenchInterrupted(BenchError):
    """The interrupt (Ctrl-C) came before the run started: there is nothing to report."""


@dataclass(frozen=True)
class BenchConfig:
    """One ``fltemu bench`` run.

    Attributes:
        port: the port name the agent connects to.
        payload: the message (FltSendMessage's SenderBuffer).
        concurrency: closed loop: senders in flight.
        rate: open loop: messages per second (``None``: closed loop).
        duration: seconds to run (``None``: until ``count``).
        count: messages to send (``None``: for ``duration``).
        reply_length: the kernel reply buffer size, or ``None`` for no reply.
        timeout: FltSendMessage's timeout per message, seconds (``None``: forever).
        address: the socket to serve on (``None``: a temporary one).
        agent: a command to start with ``FLTEMU_SOCKET`` pointing at the socket.
        max_connections: connections the port accepts; messages go round-robin.
        connect_timeout: how long to wait for the agent to connect.
        everyone: admit every local user to the port (default: root and this user).
        limit_check: after the run, measure what fltemu alone sustains with these settings.
        stages: (seconds, target) of each stage, replacing ``duration``: targets are rates
            when ``rate`` is set (open loop; ``rate`` is the first stage's), else messages
            in flight (``concurrency`` is the first stage's).
        warmup: seconds of load before the counted part (at the first stage's target),
            left out of every figure.
        percentiles: the latency percentiles reported.
    """

    port: str
    payload: bytes = b"\0" * 64
    concurrency: int = 1
    rate: float | None = None
    duration: float | None = 10.0
    count: int | None = None
    reply_length: int | None = None
    timeout: float | None = 5.0
    address: str | None = None
    agent: tuple[str, ...] = ()
    max_connections: int = 1
    connect_timeout: float = 30.0
    everyone: bool = False
    limit_check: bool = True
    stages: tuple[tuple[float, float], ...] = ()
    warmup: float = 0.0
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES

    @property
    def plan(self) -> list[tuple[float | None, float]]:
        """(seconds or ``None``: until the count, target) of each stage; the target is a rate
        in open loop, the messages in flight in closed loop."""
        if self.stages:
            return [(seconds, target) for seconds, target in self.stages]
        return [(self.duration, self.rate if self.rate else self.concurrency)]

    @property
    def total_seconds(self) -> float | None:
        """The warm-up and every stage, or ``None`` for a run that ends with its count."""
        if any(seconds is None for seconds, _ in self.plan):
            return None
        return self.warmup + sum(seconds or 0.0 for seconds, _ in self.plan)


@dataclass
class Window:
    """What one stage or one second of a run counted: messages sent in it, and answered or
    not answered (by the stage they were sent in, the second they completed in).

    Attributes:
        sent: messages sent.
        answered: messages answered.
        not_answered: messages FltSendMessage returned for without an answer.
        latency: the answered messages' latency, in nanoseconds.
    """

    sent: int = 0
    answered: int = 0
    not_answered: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def to_dict(self, percentiles: Sequence[float], seconds: float) -> dict[str, Any]:
        """A JSON-ready summary; ``seconds`` turns the answered count into a throughput."""
        h = self.latency
        return {
            "sent": self.sent,
            "answered": self.answered,
            "not_answered": self.not_answered,
            "throughput": round(self.answered / seconds, 3) if seconds > 0 else 0.0,
            "latency_ms": {
                **{_percentile_name(p): h.percentile(p) / 1e6 for p in percentiles},
                "max": h.max / 1e6,
            },
        }


@dataclass
class StageReport:
    """One stage of a run: its target and what it counted.

    Attributes:
        target: msg/s (open loop) or messages in flight (closed loop).
        seconds: how long the stage was to last (``None``: until the count).
        started: seconds from the counted part's start to this stage's.
        elapsed: how long it lasted.
        window: what it counted.
    """

    target: float
    seconds: float | None
    started: float = 0.0
    elapsed: float = 0.0
    window: Window = field(default_factory=Window)


def _percentile_name(percent: float) -> str:
    """``p99``, ``p99.9``: a percentile's name in reports.

    >>> _percentile_name(99.0), _percentile_name(99.99)
    ('p99', 'p99.99')
    """
    return f"p{percent:g}"


@dataclass
class Progress:
    """A snapshot for the live progress line."""

    elapsed: float
    sent: int
    answered: int
    timeouts: int
    p99_ns: int
    warming: bool = False


@dataclass
class LimitCheck:
    """What fltemu alone sustained with a run's settings, against its instant-reply agent.

    The calibration run uses the run's mode, concurrency, message, reply length and timeout,
    one connection, and ``python -m fltemu.bench.instant`` in a process of its own as the
    agent, over the same daemon and socket. Its figure is a ceiling for any agent: a real
    agent can only be slower than one that answers at once. When the run's agent runs under
    ``fltemu wine``, the calibration agent is ``benchagent.exe get`` under the same ``fltemu
    wine`` (``windows``): the ceiling of the Windows side under Wine, far below fltemu's.

    Attributes:
        throughput: answered messages per second, or ``None`` when the check failed.
        seconds: how long the measured part ran.
        concurrency: closed loop: messages in flight.
        offered_rate: open loop: the rate offered (the run's rate x ``LIMIT_OFFER_FACTOR``).
        fltemu_cpu: fltemu's own process, CPU seconds per second of the calibration run.
        agent_cpu: the instant-reply agent's, likewise (``None`` where /proc is missing).
        error: why there is no figure.
        windows: measured against a Windows agent under the run's ``fltemu wine``
            (``benchagent.exe get``): the Windows side's ceiling under Wine, not fltemu's.
    """

    throughput: float | None
    seconds: float = 0.0
    concurrency: int | None = None
    offered_rate: float | None = None
    fltemu_cpu: float | None = None
    agent_cpu: float | None = None
    error: str | None = None
    windows: bool = False

    @property
    def what(self) -> str:
        """Whose limit it is, in words."""
        return "the Windows side's own limit under Wine" if self.windows else "fltemu's own limit"

    @property
    def is_lower_bound(self) -> bool:
        """The figure understates the limit: all the offered rate went through, or the
        instant-reply agent, not fltemu, was the busier process."""
        if self.throughput is None:
            return False
        if self.offered_rate is not None and self.throughput >= 0.95 * self.offered_rate:
            return True
        if self.windows:  # the Windows side's ceiling is what was measured, Wine and all
            return False
        return (
            self.fltemu_cpu is not None
            and self.agent_cpu is not None
            and self.agent_cpu > self.fltemu_cpu
        )

    def is_near(self, throughput: float) -> bool:
        """``throughput`` is within ``LIMIT_FACTOR`` of this limit: it may be fltemu's."""
        return bool(self.throughput) and throughput * LIMIT_FACTOR >= (self.throughput or 0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "throughput": None if self.throughput is None else round(self.throughput, 3),
            "lower_bound": self.is_lower_bound,
            "seconds": round(self.seconds, 6),
            "mode": "open" if self.offered_rate is not None else "closed",
            "concurrency": self.concurrency,
            "offered_rate": self.offered_rate,
            "fltemu_cpu": None if self.fltemu_cpu is None else round(self.fltemu_cpu, 3),
            "agent_cpu": None if self.agent_cpu is None else round(self.agent_cpu, 3),
            "measured": (
                "answered msg/s of the agent's fltemu wine running benchagent.exe get (pending "
                "overlapped gets on an I/O completion port, each message answered at once), "
                "same socket and settings, one connection: the Windows side's ceiling under "
                "Wine; agent_cpu counts Wine's processes too"
                if self.windows
                else "answered msg/s of fltemu's own process (daemon and load) against "
                "python -m fltemu.bench.instant, an instant-reply agent in a process of its "
                "own, same socket and settings, one connection"
            ),
            "windows": self.windows,
            "error": self.error,
        }


def describe_exit(returncode: int, signalled: signal.Signals | None = None) -> str:
    """An exit status in words; ``signalled`` is the signal fltemu sent the agent, if any.

    >>> describe_exit(-15, signal.SIGTERM)
    'stopped by fltemu (SIGTERM)'
    >>> describe_exit(2)
    'exited with status 2'
    >>> describe_exit(-9)
    'killed by SIGKILL'
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if signalled is not None and signalled.name == name:
            return f"stopped by fltemu ({name})"
        return f"killed by {name}"
    if signalled is not None:
        return f"exited with status {returncode} after fltemu sent {signalled.name}"
    return f"exited with status {returncode}"


@dataclass
class BenchReport:
    """What a run measured.

    ``sent`` = ``answered`` + ``not_answered`` + ``in_flight``: every message FltSendMessage
    returned for (``completed``) is answered, or not answered with the status it returned;
    the rest were still in flight when the run stopped and were withdrawn. Throughput and the
    latency histogram count answered messages only.
    """

    config: BenchConfig
    address: str
    elapsed: float = 0.0
    sent: int = 0
    completed: int = 0
    answered: int = 0
    skipped: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    agent_pid: int | None = None
    agent_cpu_seconds: float | None = None
    agent_processes: list[ProcessCpu] = field(default_factory=list)
    agent_startup_cpu_seconds: float | None = None
    agent_exit: int | None = None
    agent_signalled: signal.Signals | None = None
    agent_ended_by_itself: bool = False
    agent_output: list[str] = field(default_factory=list)
    fltemu_cpu_seconds: float | None = None
    connections: int = 0
    limit: LimitCheck | None = None
    interrupted: bool = False
    agent_gone: bool = False
    stages: list[StageReport] = field(default_factory=list)
    series: list[Window] = field(default_factory=list)
    in_flight_aged: int = 0
    warmup_sent: int = 0

    @property
    def throughput(self) -> float:
        """Answered messages per second."""
        return self.answered / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def not_answered(self) -> int:
        """Messages FltSendMessage returned for without an answer (timeout, disconnect...)."""
        return self.completed - self.answered

    @property
    def in_flight(self) -> int:
        """Messages still waiting for delivery or reply when the run stopped (withdrawn)."""
        return self.sent - self.completed

    @property
    def timeouts(self) -> int:
        """Messages whose FltSendMessage returned STATUS_TIMEOUT."""
        return self.failures.get(NtStatus.STATUS_TIMEOUT.name, 0)

    @property
    def agent_failed(self) -> bool:
        """The agent ended before fltemu stopped it, or with a status that says it failed."""
        code = self.agent_exit
        if code is None:
            return False
        if self.agent_ended_by_itself:
            return True
        sig = self.agent_signalled
        return code != 0 and not (sig is not None and code in (-sig, 128 + sig))

    @property
    def ended_early(self) -> str | None:
        """Why the run stopped before its --duration or --count, in words, or ``None``."""
        if self.interrupted:
            return "interrupted (Ctrl-C)"
        if self.agent_gone:
            if self.agent_exit is not None and self.agent_ended_by_itself:
                return f"the agent {describe_exit(self.agent_exit)}"
            return "the agent disconnected"
        return None

    @property
    def agent_exit_text(self) -> str | None:
        """The agent's exit status in words."""
        if self.agent_exit is None:
            return None
        return describe_exit(self.agent_exit, self.agent_signalled)

    def per_second(self, n: int) -> float:
        """``n`` over the run's duration."""
        return n / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        c = self.config
        h = self.latency
        return {
            "port": c.port,
            "mode": "open" if c.rate else "closed",
            "rate": c.rate,
            "concurrency": None if c.rate else c.concurrency,
            "message_bytes": len(c.payload),
            "reply_length": c.reply_length,
            "timeout": c.timeout,
            "duration": c.duration,
            "count": c.count,
            "connections": self.connections,
            "address": self.address,
            "elapsed": round(self.elapsed, 6),
            "sent": self.sent,
            "completed": self.completed,
            "answered": self.answered,
            "not_answered": self.not_answered,
            "in_flight": self.in_flight,
            "skipped": self.skipped,
            "throughput": round(self.throughput, 3),
            "statuses": dict(self.statuses),
            "failures": {
                name: {
                    "count": n,
                    "per_second": round(self.per_second(n), 3),
                    "share_of_sent": round(n / self.sent, 6) if self.sent else 0.0,
                }
                for name, n in self.failures.most_common()
            },
            "timeouts": self.timeouts,
            "latency_ms": {
                "of": self.latency_of,
                "count": h.count,
                "in_flight_counted": self.in_flight_aged,
                **{
                    _percentile_name(p): h.percentile(p) / 1e6
                    for p in sorted({*DEFAULT_PERCENTILES, *c.percentiles})
                },
                "max": h.max / 1e6,
                "mean": round(h.mean / 1e6, 6),
            },
            "percentiles": list(c.percentiles),
            "warmup": c.warmup,
            "warmup_sent": self.warmup_sent,
            "stages": [
                {
                    "target": stage.target,
                    "seconds": stage.seconds,
                    "started": round(stage.started, 6),
                    "elapsed": round(stage.elapsed, 6),
                    **stage.window.to_dict(c.percentiles, stage.elapsed),
                }
                for stage in self.stages
            ]
            if c.stages
            else None,
            "series": [
                {"second": i, **window.to_dict(c.percentiles, 1.0)}
                for i, window in enumerate(self.series)
            ],
            "offered_shortfall": self.offered_shortfall,
            "agent": {
                "command": list(c.agent) or None,
                "pid": self.agent_pid,
                "cpu_seconds": _round(self.agent_cpu_seconds),
                "processes": [p.to_dict() for p in self.agent_processes],
                "startup_cpu_seconds": _round(self.agent_startup_cpu_seconds),
                "exit": self.agent_exit,
                "exit_text": self.agent_exit_text,
                "failed": self.agent_failed,
                "output_tail": self.agent_output,
            },
            "fltemu_cpu_seconds": _round(self.fltemu_cpu_seconds),
            "ended_early": self.ended_early,
            "interrupted": self.interrupted,
            "under_wine": self.under_wine,
            "limit": None if self.limit is None else self.limit.to_dict(),
            "near_limit": self.near_limit,
        }

    @property
    def under_wine(self) -> bool:
        """The agent command runs a Windows program under ``fltemu wine``: its figures are
        its speed under Wine."""
        return wine_launcher(self.config.agent) is not None

    @property
    def latency_of(self) -> str:
        """What the latency histogram counts, in words."""
        if self.in_flight_aged:
            return (
                f"answered messages, and the {self.in_flight_aged} still in flight at the end "
                "at their age"
            )
        return "answered messages"

    @property
    def offered_shortfall(self) -> str | None:
        """Open loop: the offered rate was not reached (answered under 90% of what was
        offered), in words with why where it shows; ``None`` when it was, or in closed loop."""
        c = self.config
        if not c.rate or self.elapsed <= 0:
            return None
        offered = sum(stage.target * stage.elapsed for stage in self.stages) or (
            c.rate * self.elapsed
        )
        if c.count is not None:
            offered = min(offered, c.count)
        if self.answered >= OFFERED_SHARE * offered:
            return None
        rate = offered / self.elapsed
        text = (
            f"the offered rate was not reached: {rate:,.0f} msg/s offered, "
            f"{self.throughput:,.0f} answered ({100 * self.answered / offered:.0f}%)"
        )
        if self.sent + self.skipped < OFFERED_SHARE * offered:
            text += f"; fltemu itself sent only {self.sent / self.elapsed:,.0f} msg/s"
        if self.skipped:
            text += f"; {self.skipped} not sent, {MAX_IN_FLIGHT} being in flight already"
        if self.in_flight_aged:
            text += (
                f"; the {self.in_flight_aged} messages still in flight at the end are in the "
                "percentiles at their age"
            )
        return text

    @property
    def near_limit(self) -> bool:
        """The throughput is within ``LIMIT_FACTOR`` of what fltemu alone sustained."""
        return self.limit is not None and self.limit.is_near(self.throughput)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _tree_cpu_seconds(leader: int) -> float | None:
    """User + system CPU seconds of every live process whose Unix session id is ``leader``,
    with the children they waited for (Linux ``/proc``; ``None`` elsewhere).

    The agent is started under setsid, so this covers a wrapper (a shell, ``fltemu wine``)
    and whatever it starts, not only the first process.
    """
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    ticks = 0
    found = False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[3]) != leader:  # state ppid pgrp sid ...
            continue
        found = True
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


def _agent_env(address: str) -> dict[str, str]:
    """The agent's environment: FLTEMU_SOCKET, and fltemu's virtual environment (if it runs
    in one) activated, so that ``python`` in the agent command has fltuser."""
    env = {**os.environ, "FLTEMU_SOCKET": address}
    if sys.prefix != sys.base_prefix:
        bindir = os.path.dirname(sys.executable)
        path = env.get("PATH", os.defpath).split(os.pathsep)
        env["PATH"] = os.pathsep.join([bindir, *(p for p in path if p != bindir)])
        env["VIRTUAL_ENV"] = sys.prefix
        env.pop("PYTHONHOME", None)
    return env


async def _start_agent(
    command: tuple[str, ...], address: str, output: IO[bytes]
) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *command,
            env=_agent_env(address),
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, FileNotFoundError) and os.sep not in command[0]:
            why += " (not found on PATH)"
        raise BenchError(f"cannot start the agent {command[0]!r}: {why}") from exc


def _tail(output: IO[bytes], lines: int = AGENT_OUTPUT_LINES) -> list[str]:
    """The last ``lines`` lines written to ``output``."""
    try:
        size = output.seek(0, os.SEEK_END)
        output.seek(max(0, size - 200 * lines))
        text = output.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return []
    found = text.splitlines()
    if size > 200 * lines and found:
        found = found[1:]  # the first line is probably cut
    return [line.rstrip() for line in found[-lines:]]


def _with_output(message: str, output: list[str]) -> str:
    if not output:
        return message + "; it printed nothing"
    return message + "; its last output:\n" + "\n".join(f"  | {line}" for line in output)


class _Run:
    """One load: the stages in order (after an uncounted warm-up), each message recorded in
    the report, the stage and the second it belongs to."""

    def __init__(
        self, config: BenchConfig, report: BenchReport, interrupt: asyncio.Event | None = None
    ) -> None:
        self.config = config
        #: The report being counted into: a throw-away one during the warm-up.
        self.main = report
        self.warming = config.warmup > 0
        self.report = BenchReport(config, report.address) if self.warming else report
        self.connections: list[ClientPort] = []
        self.connected = asyncio.Event()
        self.next_connection = 0
        self.stop = asyncio.Event()
        self.agent_gone = False
        #: Set by the caller on Ctrl-C: what is in flight is withdrawn at once.
        self.interrupt = interrupt if interrupt is not None else asyncio.Event()
        self.plan = config.plan
        #: Where the current stage's messages are counted (the warm-up's: nowhere reported).
        self.stage = Window()
        self.staged = bool(config.stages)
        #: Closed loop: the senders the current stage wants.
        self.concurrency = int(self.plan[0][1])
        #: perf_counter_ns of the counted part's start (the end of the warm-up).
        self.started_ns = time.perf_counter_ns()
        #: Open loop: each message in flight, its scheduled time and the report it counts in.
        self.in_flight: dict[asyncio.Task[None], tuple[int, BenchReport]] = {}
        #: Open loop: messages scheduled for the counted part (their tasks may not have
        #: started yet).
        self.launched = 0
        #: Open loop: every message task not done yet (some may not have started).
        self.pending: set[asyncio.Task[None]] = set()
        #: Called when the counted part starts (after the warm-up), e.g. to read CPU times.
        self.on_start: Callable[[], None] | None = None

    def target(self) -> ClientPort | None:
        live = [c for c in self.connections if c.is_connected]
        if not live:
            return None
        self.next_connection = (self.next_connection + 1) % len(live)
        return live[self.next_connection]

    def _second(self, report: BenchReport, now_ns: int) -> Window:
        index = max(0, (now_ns - self.started_ns) // 1_000_000_000)
        series = report.series
        while len(series) <= index:
            series.append(Window())
        return series[index]

    def record(
        self,
        report: BenchReport,
        stage: Window,
        status: NtStatus,
        is_answered: bool,
        started_ns: int,
    ) -> None:
        now = time.perf_counter_ns()
        latency_ns = now - started_ns
        second = self._second(report, now) if report is self.main else None
        report.completed += 1
        report.statuses[status.name] += 1
        if is_answered:
            report.answered += 1
            report.latency.record(latency_ns)
            stage.answered += 1
            if self.staged:  # a run of one stage has its latency in the report's
                stage.latency.record(latency_ns)
            if second is not None:
                second.answered += 1
                second.latency.record(latency_ns)
        else:
            report.failures[status.name] += 1
            stage.not_answered += 1
            if second is not None:
                second.not_answered += 1
        if status == NtStatus.STATUS_PORT_DISCONNECTED and not any(
            c.is_connected for c in self.connections
        ):
            self.agent_gone = True
            self.stop.set()  # the agent is gone: nothing more can be measured

    async def one(
        self, started_ns: int, report: BenchReport | None = None, stage: Window | None = None
    ) -> None:
        # The report and stage of the moment it is sent (open loop: scheduled): a message
        # sent in the warm-up is not counted when it completes after it.
        config = self.config
        report = self.report if report is None else report
        stage = self.stage if stage is None else stage
        report.sent += 1
        stage.sent += 1
        if report is self.main:
            self._second(report, started_ns).sent += 1
        if config.rate:  # open loop: in flight from now on (its done-callback ends it)
            task = asyncio.current_task()
            if task is not None:
                self.in_flight[task] = (started_ns, report)
        target = self.target()
        if target is None:
            self.record(report, stage, NtStatus.STATUS_PORT_DISCONNECTED, False, started_ns)
            return
        flt = target.server_port.filter
        result = await flt.send_message(target, config.payload, config.reply_length, config.timeout)
        # An answer is a reply (whatever status the agent put in it), or, when none was asked
        # for, the delivery; a timeout or a disconnect leaves ``reply`` None.
        if config.reply_length is None:
            is_answered = result.status == NtStatus.STATUS_SUCCESS
        else:
            is_answered = result.reply is not None
        self.record(report, stage, result.status, is_answered, started_ns)

    def budget_left(self) -> bool:
        count = self.config.count
        # Open loop: messages scheduled, as a task may not have started sending yet.
        sent = self.launched if self.config.rate else self.main.sent
        return not self.stop.is_set() and (count is None or self.warming or sent < count)

    def _enter(self, index: int) -> None:
        """Start counting stage ``index`` of the plan (the first one ends the warm-up)."""
        if index == 0 and self.on_start is not None:
            self.on_start()
        now = time.perf_counter_ns()
        if self.warming:
            self.warming = False
            self.main.warmup_sent = self.report.sent
            self.report = self.main
        if index == 0:
            self.started_ns = now
        seconds, target = self.plan[index]
        stage = StageReport(target, seconds, started=(now - self.started_ns) / 1e9)
        self.main.stages.append(stage)
        self.stage = stage.window
        self.concurrency = int(target)

    async def _hold(self, seconds: float | None, workers: list[asyncio.Task[None]]) -> bool:
        """Wait ``seconds`` (``None``: for ever): False when they passed, True when the run
        stopped (the agent gone) or every sender ended (the count sent) first."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        stopper = loop.create_task(self.stop.wait())
        try:
            while True:
                live = [w for w in workers if not w.done()]
                if not live or stopper.done():
                    return True
                timeout = None if deadline is None else deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    return False
                await asyncio.wait(
                    [stopper, *live], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            stopper.cancel()

    async def closed_loop(self) -> None:
        workers: dict[int, asyncio.Task[None]] = {}

        async def worker(i: int) -> None:
            while self.budget_left() and i < self.concurrency:
                await self.one(time.perf_counter_ns())

        def staff() -> list[asyncio.Task[None]]:
            for i in range(self.concurrency):
                if i not in workers or workers[i].done():
                    workers[i] = asyncio.get_running_loop().create_task(worker(i))
            return list(workers.values())

        try:
            if self.warming and await self._hold(self.config.warmup, staff()):
                return
            for index, (seconds, _) in enumerate(self.plan):
                self._enter(index)
                if await self._hold(seconds, staff()):
                    # The count sent, or the agent gone: what is in flight ends by itself.
                    await asyncio.gather(*workers.values())
                    return
            # The plan's time is up: what is in flight is withdrawn (below).
        finally:
            for task in workers.values():
                task.cancel()
            await asyncio.gather(*workers.values(), return_exceptions=True)

    async def open_loop(self) -> None:
        loop = asyncio.get_running_loop()
        tasks = self.in_flight  # those that started
        pending: set[asyncio.Task[None]] = set()  # every one not done
        self.pending = pending
        start = time.perf_counter_ns()
        stages: list[tuple[float | None, float, int | None]] = []
        if self.warming:
            stages.append((self.config.warmup, self.plan[0][1], None))
        stages += [(seconds, rate, index) for index, (seconds, rate) in enumerate(self.plan)]
        try:
            for seconds, rate, index in stages:
                if index is not None:
                    self._enter(index)
                interval_ns = 1e9 / rate
                end = None if seconds is None else start + int(seconds * 1e9)
                i = 0
                while self.budget_left():
                    scheduled = start + int(i * interval_ns)
                    if end is not None and scheduled >= end:
                        break
                    delay = (scheduled - time.perf_counter_ns()) / 1e9
                    if delay > 0:
                        await asyncio.sleep(delay)
                    i += 1
                    if not self.budget_left():
                        break
                    if len(pending) >= MAX_IN_FLIGHT:
                        self.report.skipped += 1
                        continue
                    if self.report is self.main:
                        self.launched += 1
                    task = loop.create_task(self.one(scheduled, self.report, self.stage))
                    pending.add(task)
                    task.add_done_callback(self._landed)
                if not self.budget_left() or end is None:
                    break
                start = end
            else:
                return  # the plan's time is up: what is in flight is withdrawn (below)
            # The count sent, or the agent gone: what is in flight ends by itself.
            while pending:
                await asyncio.wait(list(pending))
        finally:
            # The end of the run (its duration, the agent gone, Ctrl-C) withdraws what is
            # still in flight, as the closed loop's cancelled senders do. A message not
            # answered yet is at least as slow as its age: the main report's are counted in
            # its latency at that age (wrk2's correction of coordinated omission).
            now = time.perf_counter_ns()
            report = self.main
            for task, (scheduled, counted_in) in list(tasks.items()):
                if task.done():
                    continue  # counted already: its done-callback has yet to run
                if counted_in is report:
                    report.latency.record(now - scheduled)
                    report.in_flight_aged += 1
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self.in_flight.pop(task, None)
        self.pending.discard(task)

    async def drive(self, progress: Callable[[Progress], None] | None) -> float:
        """Run the warm-up and the plan, then withdraw what is in flight; returns the seconds
        counted (the warm-up left out)."""
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(_tick(self, progress))
        load = loop.create_task(self.open_loop() if self.config.rate else self.closed_loop())
        interrupted = loop.create_task(self.interrupt.wait())
        total = self.config.total_seconds
        try:
            # The load ends by itself (its plan run, the count sent, the agent gone); the
            # total duration (a safety net) or an interrupt withdraws what is in flight.
            await asyncio.wait(
                (load, interrupted),
                timeout=None if total is None else total + 1.0,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self.stop.set()
            for task in (load, interrupted, ticker):
                task.cancel()
            outcome, *_ = await asyncio.gather(load, interrupted, ticker, return_exceptions=True)
        if isinstance(outcome, Exception):
            raise outcome
        elapsed = 0.0 if self.warming else (time.perf_counter_ns() - self.started_ns) / 1e9
        if self.warming:  # stopped in the warm-up: what it sent is still said
            self.main.warmup_sent = self.report.sent
        stages = self.main.stages
        for i, stage in enumerate(stages):
            end = stages[i + 1].started if i + 1 < len(stages) else elapsed
            stage.elapsed = end - stage.started
        return elapsed


def _host(
    flt: Filter, name: str, run: _Run, max_connections: int, everyone: bool
) -> Coroutine[Any, Any, ServerPort]:
    def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> int:
        run.connections.append(client_port)
        run.connected.set()
        return 0

    async def on_disconnect(cookie: object) -> None:
        for c in run.connections:
            if not c.is_connected:
                await flt.close_client_port(c)

    return flt.create_communication_port(
        name,
        connect_notify=on_connect,
        disconnect_notify=on_disconnect,
        max_connections=max_connections,
        security=SecurityDescriptor.allow(everyone=True) if everyone else None,
    )


async def run_bench(
    config: BenchConfig,
    progress: Callable[[Progress], None] | None = None,
    listening: Callable[[str], None] | None = None,
    interrupt: asyncio.Event | None = None,
) -> BenchReport:
    """Host ``config.port``, wait for the agent, drive the load, and report.

    Args:
        config: the run.
        progress: called every ``PROGRESS_INTERVAL`` seconds during the run.
        listening: called with the socket's path once it accepts connections.
        interrupt: set it (on Ctrl-C) to end the run at once: what is in flight is withdrawn,
            the limit check is skipped, and the report of what ran says it was interrupted.

    Raises:
        BenchInterrupted: ``interrupt`` was set before the run started.
        BenchError: the agent could not be started, exited before connecting, or none
            connected within ``connect_timeout``.
    """
    if interrupt is None:
        interrupt = asyncio.Event()
    tmp: tempfile.TemporaryDirectory[str] | None = None
    address = config.address
    if address is None:
        tmp = tempfile.TemporaryDirectory(prefix="fltemu-bench-")
        address = os.path.join(tmp.name, "fltemu.sock")
    report = BenchReport(config, address)
    run = _Run(config, report, interrupt)
    agent: asyncio.subprocess.Process | None = None
    with contextlib.ExitStack() as files:
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    daemon = await stack.enter_async_context(Daemon(address))
                except OSError as exc:
                    raise BenchError(f"cannot serve on {address}: {exc.strerror or exc}") from exc
                flt = daemon.register_filter("bench")
                await _host(flt, config.port, run, config.max_connections, config.everyone)
                if listening is not None:
                    listening(address)
                output: IO[bytes] | None = None
                if config.agent:
                    # A file, not a pipe: the agent's output costs this process nothing
                    # during the run, and its tail is read once at the end.
                    output = files.enter_context(tempfile.TemporaryFile())
                    agent = await _start_agent(config.agent, address, output)
                    report.agent_pid = agent.pid
                try:
                    await _wait_for_agent(run, agent, config.connect_timeout)
                except BenchError as exc:
                    if (
                        isinstance(exc, BenchInterrupted)
                        or agent is None
                        or output is None
                        or agent.returncode is None
                    ):
                        raise
                    raise BenchError(_with_output(str(exc), _tail(output))) from None
                report.connections = len(run.connections)
                marks: dict[str, float | None] = {}
                watch = CpuWatch(agent.pid) if agent is not None else None

                def counted(agent_pid: int | None = report.agent_pid) -> None:
                    marks["agent"] = _tree_cpu_seconds(agent_pid) if agent_pid else None
                    if watch is not None:
                        watch.start()
                    marks["own"] = time.process_time()

                run.on_start = counted
                report.elapsed = await run.drive(progress)
                if "own" not in marks:  # stopped in the warm-up
                    counted()
                agent_cpu, own_cpu = marks["agent"], marks["own"] or 0.0
                report.fltemu_cpu_seconds = time.process_time() - own_cpu
                report.interrupted = interrupt.is_set()
                report.agent_gone = run.agent_gone
                if agent is not None and watch is not None:
                    report.agent_startup_cpu_seconds = agent_cpu
                    if run.agent_gone:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(AGENT_EXIT_GRACE):
                                await agent.wait()
                        report.agent_ended_by_itself = agent.returncode is not None
                    if agent.returncode is not None:
                        watch.leader_reaped()
                    report.agent_processes = watch.stop()
                    if report.agent_processes:
                        report.agent_cpu_seconds = sum(p.seconds for p in report.agent_processes)
                    report.agent_exit, report.agent_signalled = await _stop_agent(agent)
                    agent = None
                    assert output is not None
                    report.agent_output = _tail(output)
                if config.limit_check and not interrupt.is_set():
                    report.limit = await _check_limit(flt, config, address, interrupt)
        finally:
            if agent is not None:
                await _stop_agent(agent)
            if tmp is not None:
                tmp.cleanup()
    return report


async def _check_limit(
    flt: Filter, config: BenchConfig, address: str, interrupt: asyncio.Event
) -> LimitCheck:
    """Run the calibration: the same settings against the instant-reply agent."""
    # Staged runs are checked at their highest target.
    peak = max(target for _, target in config.plan)
    open_rate = peak * LIMIT_OFFER_FACTOR if config.rate else None
    calibration = replace(
        config,
        port=LIMIT_PORT,
        rate=open_rate,
        concurrency=int(peak) if open_rate is None else config.concurrency,
        count=None,
        duration=LIMIT_SECONDS,
        stages=(),
        warmup=LIMIT_WARMUP_SECONDS,
        agent=(),
        max_connections=1,
        limit_check=False,
    )
    concurrency = None if open_rate else calibration.concurrency
    getters = min(LIMIT_MAX_GETTERS, (concurrency or LIMIT_MAX_GETTERS) + 1)
    run = _Run(calibration, BenchReport(calibration, address), interrupt)
    try:
        server_port = await _host(flt, LIMIT_PORT, run, 1, everyone=False)
    except FltEmuError as exc:  # the run's own port has that name
        return LimitCheck(None, error=str(exc))
    launcher = wine_launcher(config.agent)
    windows = launcher is not None
    command: Sequence[str]
    if launcher is not None:
        try:
            command = await asyncio.to_thread(
                launcher.ceiling_command, LIMIT_PORT, getters, len(config.payload)
            )
        except (WineSetupError, OSError) as exc:
            await flt.close_communication_port(server_port)
            return LimitCheck(None, error=str(exc), windows=True)
    else:
        command = (
            sys.executable,
            "-m",
            "fltemu.bench.instant",
            LIMIT_PORT,
            "--getters",
            str(getters),
            "--buffer-size",
            str(len(config.payload) + 16),
        )
    agent: asyncio.subprocess.Process | None = None
    with tempfile.TemporaryFile() as output:
        try:
            agent = await _start_agent(tuple(command), address, output)
            try:
                await _wait_for_agent(run, agent, config.connect_timeout)
            except BenchError as exc:
                error = _with_output(str(exc), _tail(output))
                return LimitCheck(None, error=error, windows=windows)
            marks: dict[str, float] = {}
            watch = CpuWatch(agent.pid)

            def counted() -> None:
                watch.start()
                marks["own"] = time.process_time()

            run.on_start = counted
            elapsed = await run.drive(None)
            if interrupt.is_set():
                return LimitCheck(None, error="interrupted (Ctrl-C)", windows=windows)
            if "own" not in marks or elapsed <= 0:
                error = "the calibration run ended in its warm-up"
                if run.agent_gone:
                    error = _with_output("its agent went away", _tail(output))
                return LimitCheck(None, error=error, windows=windows)
            own = (time.process_time() - marks["own"]) / elapsed
            processes = watch.stop()
            theirs = sum(p.seconds for p in processes) / elapsed if processes else None
            return LimitCheck(
                run.main.answered / elapsed,
                seconds=elapsed,
                concurrency=concurrency,
                offered_rate=open_rate,
                fltemu_cpu=own,
                agent_cpu=theirs,
                windows=windows,
            )
        except BenchError as exc:
            return LimitCheck(None, error=str(exc), windows=windows)
        finally:
            for c in run.connections:
                await flt.close_client_port(c)  # the agent sees 0x80070006 and exits
            await flt.close_communication_port(server_port)
            if agent is not None:
                await _stop_agent(agent)


async def _wait_for_agent(
    run: _Run, agent: asyncio.subprocess.Process | None, timeout: float
) -> None:
    waiter = asyncio.ensure_future(run.connected.wait())
    exited = asyncio.ensure_future(agent.wait()) if agent is not None else None
    interrupted = asyncio.ensure_future(run.interrupt.wait())
    try:
        done, _ = await asyncio.wait(
            [w for w in (waiter, exited, interrupted) if w is not None],
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for w in (waiter, exited, interrupted):
            if w is not None and not w.done():
                w.cancel()
    if interrupted in done:
        raise BenchInterrupted(
            f"interrupted while waiting for an agent to connect to {run.config.port}"
        )
    if waiter in done:
        return
    if exited is not None and exited in done:
        raise BenchError(
            f"the agent {describe_exit(exited.result())} before connecting to {run.config.port}"
        )
    raise BenchError(f"no agent connected to {run.config.port} within {timeout:g} s")


async def _stop_agent(agent: asyncio.subprocess.Process) -> tuple[int, signal.Signals | None]:
    """Stop the agent's process group (SIGTERM, then SIGKILL after 5 s); its exit status and the
    signal fltemu sent last, if any."""
    sent: signal.Signals | None = None
    if agent.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGTERM)
            sent = signal.SIGTERM
        try:
            async with asyncio.timeout(5):
                await agent.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
                sent = signal.SIGKILL
            await agent.wait()
    assert agent.returncode is not None
    return agent.returncode, sent


async def _tick(run: _Run, progress: Callable[[Progress], None] | None) -> None:
    if progress is None:
        return
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        r = run.report
        progress(
            Progress(
                elapsed=(time.perf_counter_ns() - run.started_ns) / 1e9,
                sent=r.sent,
                answered=r.answered,
                timeouts=r.timeouts,
                p99_ns=r.latency.percentile(99),
                warming=run.warming,
            )
        )
