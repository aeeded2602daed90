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
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ..daemon import Daemon
from ..errors import FltEmuError
from ..kernel import ClientPort, SecurityDescriptor
from ..status import NtStatus
from .histogram import LatencyHistogram

__all__ = ["BenchConfig", "BenchError", "BenchReport", "Progress", "run_bench"]

#: Open loop: messages in flight beyond which new ones are counted as skipped rather than
#: sent, so that a dead agent cannot make the generator grow without bound.
MAX_IN_FLIGHT: Final = 10_000
#: How often the progress callback runs, in seconds.
PROGRESS_INTERVAL: Final = 1.0


class BenchError(FltEmuError):
    """The benchmark could not run (no agent connected, the agent exited, ...)."""


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


@dataclass
class Progress:
    """A snapshot for the live progress line."""

    elapsed: float
    sent: int
    completed: int
    succeeded: int
    timeouts: int
    p99_ns: int


@dataclass
class BenchReport:
    """What a run measured."""

    config: BenchConfig
    address: str
    elapsed: float = 0.0
    sent: int = 0
    completed: int = 0
    skipped: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    agent_pid: int | None = None
    agent_cpu_seconds: float | None = None
    agent_exit: int | None = None
    connections: int = 0

    @property
    def throughput(self) -> float:
        """Answered messages per second."""
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def timeouts(self) -> int:
        """Messages whose FltSendMessage returned STATUS_TIMEOUT."""
        return self.statuses.get(NtStatus.STATUS_TIMEOUT.name, 0)

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
            "connections": self.connections,
            "elapsed": round(self.elapsed, 6),
            "sent": self.sent,
            "completed": self.completed,
            "skipped": self.skipped,
            "throughput": round(self.throughput, 3),
            "statuses": dict(self.statuses),
            "timeouts": self.timeouts,
            "latency_ms": {
                "p50": h.percentile(50) / 1e6,
                "p90": h.percentile(90) / 1e6,
                "p99": h.percentile(99) / 1e6,
                "p99.9": h.percentile(99.9) / 1e6,
                "max": h.max / 1e6,
                "mean": round(h.mean / 1e6, 6),
            },
            "agent": {
                "pid": self.agent_pid,
                "cpu_seconds": self.agent_cpu_seconds,
                "exit": self.agent_exit,
            },
        }


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process and its waited-for children (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class _Run:
    def __init__(self, config: BenchConfig, report: BenchReport) -> None:
        self.config = config
        self.report = report
        self.connections: list[ClientPort] = []
        self.connected = asyncio.Event()
        self.next_connection = 0
        self.stop = asyncio.Event()

    def target(self) -> ClientPort | None:
        live = [c for c in self.connections if c.is_connected]
        if not live:
            return None
        self.next_connection = (self.next_connection + 1) % len(live)
        return live[self.next_connection]

    def record(self, status: NtStatus, latency_ns: int) -> None:
        report = self.report
        report.completed += 1
        report.statuses[status.name] += 1
        report.latency.record(latency_ns)
        if status == NtStatus.STATUS_PORT_DISCONNECTED and not any(
            c.is_connected for c in self.connections
        ):
            self.stop.set()  # the agent is gone: nothing more can be measured

    async def one(self, started_ns: int) -> None:
        config = self.config
        target = self.target()
        self.report.sent += 1
        if target is None:
            self.record(NtStatus.STATUS_PORT_DISCONNECTED, time.perf_counter_ns() - started_ns)
            return
        flt = target.server_port.filter
        result = await flt.send_message(target, config.payload, config.reply_length, config.timeout)
        self.record(result.status, time.perf_counter_ns() - started_ns)

    def budget_left(self) -> bool:
        count = self.config.count
        return not self.stop.is_set() and (count is None or self.report.sent < count)

    async def closed_loop(self) -> None:
        async def worker() -> None:
            while self.budget_left():
                await self.one(time.perf_counter_ns())

        await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))

    async def open_loop(self, rate: float) -> None:
        interval_ns = int(1e9 / rate)
        start = time.perf_counter_ns()
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while self.budget_left():
            scheduled = start + i * interval_ns
            delay = (scheduled - time.perf_counter_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            if not self.budget_left():
                break
            if len(tasks) >= MAX_IN_FLIGHT:
                self.report.skipped += 1
                continue
            task = asyncio.get_running_loop().create_task(self.one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)


async def run_bench(
    config: BenchConfig, progress: Callable[[Progress], None] | None = None
) -> BenchReport:
    """Host ``config.port``, wait for the agent, drive the load, and report.

    Raises:
        BenchError: no agent connected within ``connect_timeout``, or the agent exited first.
    """
    tmp: tempfile.TemporaryDirectory[str] | None = None
    address = config.address
    if address is None:
        tmp = tempfile.TemporaryDirectory(prefix="fltemu-bench-")
        address = os.path.join(tmp.name, "fltemu.sock")
    report = BenchReport(config, address)
    run = _Run(config, report)
    agent: asyncio.subprocess.Process | None = None
    try:
        async with Daemon(address) as daemon:
            flt = daemon.register_filter("bench")

            def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> int:
                run.connections.append(client_port)
                run.connected.set()
                return 0

            async def on_disconnect(cookie: object) -> None:
                for c in run.connections:
                    if not c.is_connected:
                        await flt.close_client_port(c)

            await flt.create_communication_port(
                config.port,
                connect_notify=on_connect,
                disconnect_notify=on_disconnect,
                max_connections=config.max_connections,
                security=SecurityDescriptor.allow(everyone=True) if config.everyone else None,
            )
            if config.agent:
                agent = await asyncio.create_subprocess_exec(
                    *config.agent,
                    env={**os.environ, "FLTEMU_SOCKET": address},
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
                report.agent_pid = agent.pid
            await _wait_for_agent(run, agent, config.connect_timeout)
            report.connections = len(run.connections)
            started = time.perf_counter()
            ticker = asyncio.get_running_loop().create_task(_tick(run, started, progress))
            load = run.open_loop(config.rate) if config.rate else run.closed_loop()
            try:
                if config.duration is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(config.duration):
                            await load
                else:
                    await load
            finally:
                run.stop.set()
                ticker.cancel()
                report.elapsed = time.perf_counter() - started
            if agent is not None:
                report.agent_cpu_seconds = _cpu_seconds(agent.pid)
                report.agent_exit = await _stop_agent(agent)
                agent = None
    finally:
        if agent is not None:
            await _stop_agent(agent)
        if tmp is not None:
            tmp.cleanup()
    return report


async def _wait_for_agent(
    run: _Run, agent: asyncio.subprocess.Process | None, timeout: float
) -> None:
    waiter = asyncio.ensure_future(run.connected.wait())
    exited = asyncio.ensure_future(agent.wait()) if agent is not None else None
    try:
        done, _ = await asyncio.wait(
            [w for w in (waiter, exited) if w is not None],
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for w in (waiter, exited):
            if w is not None and not w.done():
                w.cancel()
    if waiter in done:
        return
    if exited is not None and exited in done:
        raise BenchError(
            f"the agent exited with status {exited.result()} before connecting to {run.config.port}"
        )
    raise BenchError(f"no agent connected to {run.config.port} within {timeout:g} s")


async def _stop_agent(agent: asyncio.subprocess.Process) -> int:
    if agent.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await agent.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
            await agent.wait()
    assert agent.returncode is not None
    return agent.returncode


async def _tick(run: _Run, started: float, progress: Callable[[Progress], None] | None) -> None:
    if progress is None:
        return
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        r = run.report
        progress(
            Progress(
                elapsed=time.perf_counter() - started,
                sent=r.sent,
                completed=r.completed,
                succeeded=r.statuses.get(NtStatus.STATUS_SUCCESS.name, 0),
                timeouts=r.timeouts,
                p99_ns=r.latency.percentile(99),
            )
        )
