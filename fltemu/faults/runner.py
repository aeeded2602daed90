"""Running a fault schedule against an agent: ``run_schedule`` (asyncio) and
``FaultRunner``.

The runner is the kernel: it starts a daemon of its own on the agent's socket, loads the
schedule's filter, starts the agent (``FLTEMU_SOCKET`` set) and plays the plan's events one
after another, each through the daemon's own objects (``Filter.unload_requested``,
``Filter.close_client_port``, ``Filter.send_message``, ``ServerPort.set_message_notify``,
the port's connection limit, ``Daemon.shutdown``). What the agent does is read from the
kernel model, never guessed from time: a TraceHub listener sees every connect (and every
refused one), FilterSendMessage, FilterReplyMessage (a late one answers 0x801F0020) and
FltSendMessage; the connections' queues show pending gets and waiting messages; the agent's
process says when it exits. After each event a probe message (or, on a port without
kernel->user messages, the agent's next FilterSendMessage) shows whether it still answers.
Not here: the schedule (``schedule``), the verdict's text (``report``), the command line
(``command``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, Final

from ..daemon.loader import FilterLoadError, load_filter
from ..daemon.server import Daemon
from ..errors import FltEmuError
from ..kernel import ClientPort, Filter, FilterState, ServerPort
from ..kernel.ports import OUTPUT_BUFFER_ADDRESS, takes_keyword
from ..kernel.trace import TraceRecord
from ..status import NtStatus
from .layouts import Layout, Outcome, RawMessage, layout_for
from .report import EventVerdict, Report, exit_words
from .schedule import PlannedEvent, Schedule, ScheduleError

__all__ = [
    "AGENT_OUTPUT_LINES",
    "DAEMON_GRACE",
    "DEFAULT_START_TIMEOUT",
    "STOP_GRACE",
    "FaultRunError",
    "FaultRunner",
    "agent_env",
    "run_schedule",
    "stop_process",
]

#: How many of the agent's last lines of output a failed report shows.
AGENT_OUTPUT_LINES: Final = 20
#: Seconds the agent has to connect the first time (Wine's first start is slow).
DEFAULT_START_TIMEOUT: Final = 60.0
#: Seconds the agent has to exit after SIGTERM at the end before it is killed.
STOP_GRACE: Final = 5.0
#: The shutdown grace of the runner's daemon (``Daemon(shutdown_grace=)``): a
#: ``restart_daemon`` must not wait the default 5 s for a callback the agent left hanging.
DAEMON_GRACE: Final = 2.0
#: Seconds a waiter sleeps at most between two looks at the state (a safety net: every trace
#: record and the agent's exit wake it at once).
_TICK: Final = 0.05
#: Seconds between two attempts at a file the agent did not answer while connected.
_RETRY_PAUSE: Final = 0.05

#: Faults after which the agent has to connect again, and when the clock starts.
_DISCONNECTING: Final = frozenset(
    {"unload_reload", "close_connection", "refuse_connects", "restart_daemon"}
)
#: Faults that send kernel->user messages.
_MESSAGING: Final = frozenset({"files", "burst", "rate", "short_timeout", "malformed"})


class FaultRunError(FltEmuError):
    """The run could not start: the agent did not start or never connected, the filter would
    not load; the message says what to do."""


def agent_env(address: str) -> dict[str, str]:
    """FLTEMU_SOCKET, and this virtual environment first on PATH (``python`` has fltuser)."""
    env = {**os.environ, "FLTEMU_SOCKET": address}
    if sys.prefix != sys.base_prefix:
        bindir = os.path.dirname(sys.executable)
        path = env.get("PATH", os.defpath).split(os.pathsep)
        env["PATH"] = os.pathsep.join([bindir, *(p for p in path if p != bindir)])
        env["VIRTUAL_ENV"] = sys.prefix
        env.pop("PYTHONHOME", None)
    return env


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """End an agent started in a session of its own: SIGTERM to its process group, SIGKILL
    after ``STOP_GRACE`` seconds (Wine's processes are in the group too)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


class FaultRunner:
    """One run of a schedule against one agent.

    Args:
        schedule: what to break.
        agent: the agent's command line (``python agent.py``, ``fltemu wine -- agent.exe``).
        seed: the plan's seed (default: the schedule's).
        address: the socket to serve on (default: a fresh one in a temporary folder).
        start_timeout: seconds the agent has to make its first connection.
        progress: called with each event's line as it ends (``None``: quiet).

    Raises:
        ScheduleError: the schedule cannot run against its port (unknown layout, no port
            name, messages on a port that has none).
    """

    def __init__(
        self,
        schedule: Schedule,
        agent: Sequence[str],
        *,
        seed: int | None = None,
        address: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if not agent:
            raise ScheduleError("no agent command: give it after '--'")
        self.schedule = schedule
        self.agent = list(agent)
        self.seed = schedule.seed if seed is None else seed
        self.plan = schedule.plan(self.seed)
        try:
            self.layout: Layout = layout_for(schedule.layout, schedule.filter)
        except KeyError as exc:
            raise ScheduleError(str(exc.args[0])) from None
        port = schedule.port or self.layout.port
        if port is None:
            raise ScheduleError(
                f'schedule {schedule.name}: port = "\\\\NAME" is needed: filter '
                f"{schedule.filter} is no sample whose port fltemu knows"
            )
        self.port_name = port
        if not self.layout.has_messages:
            bad = [e for e in self.plan if e.fault in _MESSAGING or e.files]
            if bad:
                raise ScheduleError(
                    f"{bad[0].describe()}: port {port} ({self.layout.name}) carries no "
                    "kernel->user messages; use unload_reload, close_connection, notify_fault, "
                    "refuse_connects, restart_daemon or pause on it"
                )
        self.address = address
        self.start_timeout = start_timeout
        self.progress = progress
        self.thresholds = schedule.thresholds
        self._daemon: Daemon | None = None
        self._flt: Filter | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._output: IO[bytes] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._connects: list[tuple[float, int]] = []
        self._refusals = 0
        self._late = 0
        self._user_sends = 0
        self._queued_peak = 0
        self._files: list[asyncio.Task[None]] = []
        self._files_sent = 0
        self._files_answered = 0
        self._files_wrong = 0
        self._base_connections = 1
        self._base_getters = 0
        self._exit: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: The run is ending: files are no longer sent.
        self._closing = False

    # --- what the kernel tells us ------------------------------------------------------------

    def _listen(self, record: TraceRecord) -> None:
        kind = record.kind
        if record.port == self.port_name:
            if kind == "connect":
                if record.status == NtStatus.STATUS_SUCCESS:
                    self._connects.append((time.monotonic(), record.connection))
                elif record.status == NtStatus.STATUS_CONNECTION_COUNT_LIMIT:
                    self._refusals += 1
            elif kind == "send":
                self._user_sends += 1
            elif kind == "message":
                queued = sum(c.queues.sender_count for c in self._live())
                self._queued_peak = max(self._queued_peak, queued)
        if kind == "reply" and record.status == NtStatus.STATUS_FLT_NO_WAITER_FOR_REPLY:
            self._late += 1
        self._poke()

    def _poke(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``ready()`` (looked at whenever the kernel or the agent did something);
        False when ``timeout`` seconds passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # comes as the waiter is resolved, and the run's end must cancel every waiter.
            await asyncio.wait((waiter,), timeout=min(remaining, _TICK))
            if not waiter.done():  # timed out: nothing resolves it now
                waiter.cancel()
                self._waiters.remove(waiter)
        return True

    def _exited(self) -> bool:
        return self._proc is not None and self._proc.returncode is not None

    def _server_port(self) -> ServerPort | None:
        flt = self._flt
        if flt is None or flt.state is not FilterState.REGISTERED:
            return None
        for port in flt.server_ports:
            if port.name == self.port_name:
                return port
        return None

    def _live(self) -> list[ClientPort]:
        port = self._server_port()
        if port is None:
            return []
        return sorted((c for c in port.connections if c.is_connected), key=lambda c: c.id)

    def _held(self) -> int:
        """Connections the agent holds: live ones and closed ones whose handle is open."""
        port = self._server_port()
        return 0 if port is None else len(port.connections)

    def _getters(self) -> int:
        return sum(c.queues.getter_count for c in self._live())

    async def _send(self, msg: RawMessage, timeout: float | None) -> tuple[NtStatus, bytes | None]:
        """FltSendMessage of ``msg`` on the port's newest live connection."""
        live = self._live()
        if not live or self._flt is None:
            return NtStatus.STATUS_PORT_DISCONNECTED, None
        result = await self._flt.send_message(live[-1], msg.data, msg.reply_length, timeout)
        return result.status, result.reply

    # --- the daemon, the filter, the agent ---------------------------------------------------

    async def _start_daemon(self, address: str) -> None:
        daemon = Daemon(address, shutdown_grace=DAEMON_GRACE)
        await daemon.start()
        daemon.trace_hub.add_listener(self._listen)
        self._daemon = daemon
        await self._load()

    async def _load(self) -> None:
        assert self._daemon is not None
        try:
            loaded = await load_filter(
                self._daemon, self.schedule.filter, dict(self.schedule.settings)
            )
        except FilterLoadError as exc:
            raise FaultRunError(str(exc)) from exc
        self._flt = loaded.filter
        if self._server_port() is None:
            names = ", ".join(p.name for p in loaded.filter.server_ports) or "none"
            raise FaultRunError(
                f"filter {self.schedule.filter} has no port {self.port_name} (its ports: "
                f'{names}); set port = "..." in the schedule'
            )

    async def _stop_daemon(self) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            await daemon.shutdown()
            daemon.trace_hub.remove_listener(self._listen)

    async def _start_agent(self, address: str) -> None:
        self._output = tempfile.TemporaryFile()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.agent,
                env=agent_env(address),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._output,
                stderr=self._output,
                start_new_session=True,
            )
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, FileNotFoundError) and os.sep not in self.agent[0]:
                why += " (not found on PATH)"
            raise FaultRunError(f"cannot start the agent {self.agent[0]!r}: {why}") from exc
        proc = self._proc

        async def watch() -> None:
            await proc.wait()
            self._poke()

        self._watcher = asyncio.get_running_loop().create_task(watch())

    async def _stop_agent(self) -> None:
        if self._proc is not None:
            await stop_process(self._proc)

    def _tail(self) -> list[str]:
        output = self._output
        if output is None:
            return []
        try:
            output.seek(0)
            text = output.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return []
        return [line.rstrip() for line in text.splitlines()[-AGENT_OUTPUT_LINES:]]

    def _note_exit(self, verdict: EventVerdict, after: str = "") -> None:
        """Name the agent's exit in ``verdict`` (once per run), ``after`` what it came."""
        proc = self._proc
        if proc is None or proc.returncode is None or self._exit is not None:
            return
        self._exit = exit_words(proc.returncode)
        verdict.exit = self._exit
        if not self.thresholds.exit_allowed:
            verdict.problem(f"the agent {self._exit}{after}")

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> Report:
        """Run the plan; the report says what the agent did (``Report.passed``).

        Raises:
            FaultRunError: the filter would not load, the agent would not start or never
                connected.
            DaemonAddressError: the socket cannot be used.
        """
        report = Report(
            self.schedule.name, self.seed, self.agent, self.thresholds, planned=len(self.plan)
        )
        tmp: tempfile.TemporaryDirectory[str] | None = None
        address = self.address
        if address is None:
            tmp = tempfile.TemporaryDirectory(prefix="fltemu-faults-")
            address = os.path.join(tmp.name, "fltemu.sock")
        try:
            await self._start_daemon(address)
            await self._start_agent(address)
            await self._warm_up()
            for event in self.plan:
                verdict = await self._event(event, address)
                report.events.append(verdict)
                if self.progress is not None:
                    self.progress(verdict.line())
                if self._exited():
                    break
            await self._finish_files(report)
            proc = self._proc
            if proc is not None and proc.returncode is not None and self._exit is None:
                # It exited after the last event (while its files were finishing).
                self._exit = exit_words(proc.returncode)
                if not self.thresholds.exit_allowed:
                    report.problems.append(f"the agent {self._exit} after the last event")
        finally:
            self._closing = True
            for task in self._files:
                task.cancel()
            await asyncio.gather(*self._files, return_exceptions=True)
            await self._stop_agent()
            await self._stop_daemon()
            tail = self._tail()
            if self._output is not None:
                self._output.close()
            if tmp is not None:
                tmp.cleanup()
        report.files_sent = self._files_sent
        report.files_answered = self._files_answered
        report.files_wrong = self._files_wrong
        report.late_replies = self._late
        report.exit = self._exit
        for verdict in report.events:
            report.problems.extend(verdict.problems)
        limits = self.thresholds
        if report.files_lost > limits.lost:
            report.problems.append(
                f"{report.files_lost} file(s) lost: never answered by the end of the run "
                f"(threshold {limits.lost})"
            )
        if report.files_wrong > limits.wrong:
            report.problems.append(
                f"{report.files_wrong} wrong answer(s) (threshold {limits.wrong})"
            )
        if not report.passed:
            report.output = tail
        return report

    async def _warm_up(self) -> None:
        connected = await self._until(
            lambda: bool(self._live()) or self._exited(), self.start_timeout
        )
        if not connected or not self._live():
            tail = "\n".join(f"  | {line}" for line in self._tail()) or "  (no output)"
            what = (
                f"exited ({exit_words(self._proc.returncode)})"
                if self._proc is not None and self._proc.returncode is not None
                else f"did not connect to {self.port_name} within {self.start_timeout:g} s"
            )
            raise FaultRunError(f"the agent {what} before the first fault; its output:\n{tail}")
        port = self._server_port()
        if port is not None and port.message_notify is None:
            bad = [e for e in self.plan if e.fault == "notify_fault"]
            if bad:
                raise FaultRunError(
                    f"{bad[0].describe()}: port {self.port_name} has no MessageNotify (the "
                    "agent cannot call FilterSendMessage on it): remove its notify_fault steps"
                )
        if self.layout.has_messages:
            # Its first pending gets, and one answer: its shape at rest is the baseline.
            await self._until(lambda: self._getters() > 0 or self._exited(), self.start_timeout)
            rng = random.Random(self.seed)
            await self._send(self.layout.message(rng), self.thresholds.answer_within)
            await self._until(lambda: False, _TICK * 4)
        self._base_connections = max(1, self._held())
        self._base_getters = self._getters()

    async def _event(self, event: PlannedEvent, address: str) -> EventVerdict:
        verdict = EventVerdict(event)
        rng = random.Random(event.params.get("content_seed", event.index))
        if event.files:
            await self._start_files(event, verdict, rng)
        handler = getattr(self, f"_fault_{event.fault}")
        await handler(event, verdict, rng, address)
        self._note_exit(verdict)
        if not self._exited():
            await self._observe(verdict)
            self._note_exit(verdict)
        return verdict

    # --- files -------------------------------------------------------------------------------

    async def _start_files(
        self, event: PlannedEvent, verdict: EventVerdict, rng: random.Random
    ) -> None:
        tasks = []
        for n in range(event.files):
            seed = rng.randrange(1 << 32)
            name = f"event{event.index}-file{n + 1}.doc"
            tasks.append(asyncio.get_running_loop().create_task(self._file(name, seed, verdict)))
        self._files.extend(tasks)
        self._files_sent += len(tasks)
        verdict.files_sent += len(tasks)

        def in_flight() -> bool:
            waiting = sum(c.queues.reply_waiter_count for c in self._live())
            return sum(t.done() for t in tasks) + waiting >= len(tasks) or self._exited()

        await self._until(in_flight, self.thresholds.answer_within)

    async def _file(self, name: str, seed: int, verdict: EventVerdict) -> None:
        """One file: sent until the agent answers it (the run's end cancels it: lost)."""
        while not self._closing:
            await self._until(lambda: bool(self._live()) or self._closing, 3600.0)
            flt = self._flt
            if flt is None or self._closing:
                continue
            result = await self.layout.file(
                flt,
                random.Random(seed),
                name,
                lambda msg: self._send(msg, self.thresholds.answer_within),
            )
            if result.outcome is Outcome.ANSWERED:
                self._files_answered += 1
                verdict.files_answered += 1
                if result.right is False:
                    self._files_wrong += 1
                    verdict.files_wrong += 1
                    verdict.notes.append(f"wrong answer: {result.text}")
                self._poke()
                return
            await asyncio.sleep(_RETRY_PAUSE)

    async def _finish_files(self, report: Report) -> None:
        if not self._exited():
            await self._until(
                lambda: all(t.done() for t in self._files) or self._exited(),
                self.thresholds.answer_within,
            )
        report.files_lost = sum(not t.done() for t in self._files)

    # --- after each event --------------------------------------------------------------------

    async def _observe(self, verdict: EventVerdict) -> None:
        limits = self.thresholds
        if not self._live():
            await self._until(lambda: bool(self._live()) or self._exited(), limits.reconnect_within)
            if not self._live():
                if verdict.event.fault not in _DISCONNECTING:
                    verdict.problem(
                        f"not connected to {self.port_name}: it lost its connection and did "
                        f"not connect again within {limits.reconnect_within:g} s"
                    )
                verdict.answering = False
                return
        if self.layout.has_messages:
            msg = self.layout.message(random.Random(verdict.event.index))
            status, reply = await self._send(msg, limits.answer_within)
            result = self.layout.judge(msg, status, reply)
            verdict.answering = result.outcome is Outcome.ANSWERED
            if verdict.answering and result.right is False:
                verdict.problem(f"answered wrongly after the fault: {result.text}")
            elif not verdict.answering and not self._exited():
                if self._getters() == 0 and not await self._until(
                    lambda: self._getters() > 0 or self._exited(), limits.hang_after
                ):
                    verdict.problem(
                        f"hung: no FilterGetMessage pending and no answer for "
                        f"{limits.answer_within + limits.hang_after:g} s"
                    )
                else:
                    verdict.problem(
                        f"stopped answering: the probe message got {status.name} within "
                        f"{limits.answer_within:g} s"
                    )
        else:
            before = self._user_sends
            verdict.answering = await self._until(
                lambda: self._user_sends > before, limits.answer_within
            )
            if not verdict.answering and not self._exited():
                verdict.problem(
                    f"stopped calling FilterSendMessage: none within {limits.answer_within:g} s"
                )
        if self._exited():
            return
        # Handles of closed connections may take a moment to be closed: growth is what stays.
        top_connections = self._base_connections + limits.growth
        await self._until(lambda: self._held() <= top_connections, limits.answer_within)
        verdict.connections = self._held()
        verdict.getters = self._getters()
        if verdict.connections > top_connections:
            verdict.problem(
                f"grew: it holds {verdict.connections} connections to {self.port_name} "
                f"(it started with {self._base_connections})"
            )
        if verdict.getters > self._base_getters + limits.growth:
            verdict.problem(
                f"grew: {verdict.getters} FilterGetMessage calls pending (it started with "
                f"{self._base_getters})"
            )

    async def _await_reconnect(self, verdict: EventVerdict, since: int, started: float) -> None:
        limits = self.thresholds
        await self._until(
            lambda: len(self._connects) > since or self._exited(), limits.reconnect_within
        )
        if len(self._connects) > since:
            verdict.reconnect = round(self._connects[since][0] - started, 6)
            if verdict.reconnect > limits.reconnect_within:  # pragma: no cover - a tick late
                verdict.problem(
                    f"reconnected after {verdict.reconnect:.3f} s, over "
                    f"{limits.reconnect_within:g} s"
                )
        else:
            verdict.problem(f"did not reconnect within {limits.reconnect_within:g} s")

    # --- the faults (each: the event, its verdict, its random source, the socket) ------------

    async def _fault_files(self, event: PlannedEvent, verdict: EventVerdict, *_: Any) -> None:
        files = self._files[-event.files :] if event.files else []
        await self._until(
            lambda: all(t.done() for t in files) or self._exited(), self.thresholds.answer_within
        )

    async def _fault_pause(self, event: PlannedEvent, *_: Any) -> None:
        await asyncio.sleep(event.params["delay"])

    async def _fault_unload_reload(
        self, event: PlannedEvent, verdict: EventVerdict, *_: Any
    ) -> None:
        assert self._flt is not None
        await self._flt.unload_requested()
        await asyncio.sleep(event.params["delay"])
        await self._load()
        await self._await_reconnect(verdict, len(self._connects), time.monotonic())

    async def _fault_close_connection(
        self, event: PlannedEvent, verdict: EventVerdict, *_: Any
    ) -> None:
        assert self._flt is not None
        live = self._live()
        if not live:
            verdict.notes.append("no connection to close")
            return
        targets = (
            live if event.params["which"] == "all" else [live[event.params["pick"] % len(live)]]
        )
        since = len(self._connects)
        for client_port in targets:
            await self._flt.close_client_port(client_port)
        verdict.notes.append(f"closed {len(targets)} of {len(live)} connection(s)")
        await self._await_reconnect(verdict, since, time.monotonic())

    async def _fault_refuse_connects(
        self, event: PlannedEvent, verdict: EventVerdict, *_: Any
    ) -> None:
        port = self._server_port()
        assert self._flt is not None and port is not None
        count = event.params["count"]
        original = port.max_connections
        refused = self._refusals
        port.max_connections = 0  # every connect fails: STATUS_CONNECTION_COUNT_LIMIT
        try:
            for client_port in self._live():
                await self._flt.close_client_port(client_port)
            await self._until(
                lambda: self._refusals - refused >= count or self._exited(),
                self.thresholds.reconnect_within,
            )
        finally:
            port.max_connections = original
        verdict.refused = self._refusals - refused
        if verdict.refused < count:
            verdict.notes.append(f"only {verdict.refused} of {count} connects came to refuse")
        await self._await_reconnect(verdict, len(self._connects), time.monotonic())

    async def _fault_restart_daemon(
        self, event: PlannedEvent, verdict: EventVerdict, rng: random.Random, address: str
    ) -> None:
        await self._stop_daemon()
        self._flt = None
        await asyncio.sleep(event.params["delay"])
        await self._start_daemon(address)
        await self._await_reconnect(verdict, len(self._connects), time.monotonic())

    async def _fault_notify_fault(
        self, event: PlannedEvent, verdict: EventVerdict, *_: Any
    ) -> None:
        port = self._server_port()
        if port is None or port.message_notify is None:
            verdict.notes.append("the port has no MessageNotify: nothing faulted")
            return
        original = port.message_notify
        forwards_address = takes_keyword(original, OUTPUT_BUFFER_ADDRESS)
        delay: float = event.params["delay"]
        status: NtStatus = event.params["status"]
        count: int = event.params["count"]
        left = [count]

        async def faulty(
            cookie: object, data: bytes, out_size: int, output_buffer_address: int = 0
        ) -> Any:
            if left[0] <= 0:
                faulted = False
            else:
                left[0] -= 1
                faulted = True
                await asyncio.sleep(delay)
            if faulted and status != NtStatus.STATUS_SUCCESS:
                verdict.faulted += 1
                self._poke()
                return status
            kwargs = {OUTPUT_BUFFER_ADDRESS: output_buffer_address} if forwards_address else {}
            result = original(cookie, data, out_size, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            if faulted:
                verdict.faulted += 1
                self._poke()
            return result

        port.set_message_notify(faulty)
        try:
            await self._until(
                lambda: verdict.faulted >= count or self._exited(),
                self.thresholds.answer_within + delay * count,
            )
        finally:
            port.set_message_notify(original)

    async def _fault_short_timeout(
        self, event: PlannedEvent, verdict: EventVerdict, rng: random.Random, *_: Any
    ) -> None:
        live = self._live()
        if not live:
            verdict.notes.append("not connected: nothing sent")
            return
        client_port = live[-1]
        delivered = client_port.messages_delivered
        late = self._late
        for _number in range(event.params["count"]):
            # Each message waits for a pending get, so that it is taken and its reply is late
            # (a message no get takes times out undelivered: no reply can come).
            await self._until(
                lambda: client_port.queues.getter_count > 0 or not client_port.is_connected,
                self.thresholds.answer_within,
            )
            status, _reply = await self._send(self.layout.message(rng), event.params["timeout"])
            if status == NtStatus.STATUS_TIMEOUT:
                verdict.timeouts += 1
        taken = client_port.messages_delivered - delivered
        # Every message it took and that timed out must come back as a late reply.
        await self._until(
            lambda: self._late - late >= taken or self._exited(), self.thresholds.answer_within
        )
        verdict.late_replies = self._late - late
        if verdict.late_replies < taken:
            verdict.notes.append(
                f"{taken - verdict.late_replies} of the {taken} messages it took were never "
                "replied to"
            )

    async def _sends(
        self, messages: list[RawMessage], timeout: float | None, verdict: EventVerdict
    ) -> None:
        results = await asyncio.gather(*(self._send(m, timeout) for m in messages))
        self._count(messages, results, verdict)

    def _count(
        self,
        messages: list[RawMessage],
        results: list[tuple[NtStatus, bytes | None]],
        verdict: EventVerdict,
    ) -> None:
        answered = 0
        for msg, (status, reply) in zip(messages, results, strict=True):
            result = self.layout.judge(msg, status, reply)
            if status == NtStatus.STATUS_TIMEOUT:
                verdict.timeouts += 1
            if result.outcome is Outcome.ANSWERED:
                answered += 1
                if result.right is False:
                    verdict.files_wrong += 1
                    self._files_wrong += 1
        verdict.notes.append(f"{answered} of {len(messages)} messages answered")

    def _timeout(self, event: PlannedEvent) -> float:
        """The event's FltSendMessage timeout: its own (0 polls), else answer_within."""
        timeout: float | None = event.params["timeout"]
        return self.thresholds.answer_within if timeout is None else timeout

    async def _fault_burst(
        self, event: PlannedEvent, verdict: EventVerdict, rng: random.Random, *_: Any
    ) -> None:
        timeout = self._timeout(event)
        messages = [self.layout.message(rng) for _ in range(event.params["count"])]
        self._queued_peak = 0
        await self._sends(messages, timeout, verdict)
        verdict.queued = self._queued_peak

    async def _fault_rate(
        self, event: PlannedEvent, verdict: EventVerdict, rng: random.Random, *_: Any
    ) -> None:
        timeout = self._timeout(event)
        rate: float = event.params["rate"]
        total = max(1, int(event.params["duration"] * rate))
        messages = [self.layout.message(rng) for _ in range(total)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._queued_peak = 0
        tasks: list[asyncio.Task[tuple[NtStatus, bytes | None]]] = []
        for i, msg in enumerate(messages):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(loop.create_task(self._send(msg, timeout)))
        results = list(await asyncio.gather(*tasks))
        self._count(messages, results, verdict)
        verdict.queued = self._queued_peak

    async def _fault_malformed(
        self, event: PlannedEvent, verdict: EventVerdict, rng: random.Random, *_: Any
    ) -> None:
        for kind in event.params["kinds"].split(","):
            msg = self.layout.malformed(kind, rng)
            status, _reply = await self._send(msg, self.thresholds.answer_within)
            verdict.statuses.append(f"{kind}: {status.name}")
            if status == NtStatus.STATUS_PORT_DISCONNECTED or not self._live():
                # Its connection ended: an agent that dies of the message closes it before
                # its process is reaped (under Wine, well before): its exit, or its reconnect.
                await self._until(
                    lambda: self._exited() or bool(self._live()), self.thresholds.reconnect_within
                )
            if await self._until(self._exited, _TICK * 2):
                self._note_exit(
                    verdict, f" after a malformed message ({kind}, {len(msg.data)} bytes)"
                )
                break


async def run_schedule(
    schedule: Schedule,
    agent: Sequence[str],
    *,
    seed: int | None = None,
    address: str | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run ``schedule`` against the agent started by the command line ``agent``.

    Emulates no single Windows function: it plays the kernel (FltUnregisterFilter,
    FltCloseClientPort, FltSendMessage, MessageNotify, the connection limit) on a daemon of
    its own. See ``FaultRunner`` for the arguments.

    Returns:
        The report; ``report.passed`` is false when a threshold was broken.

    Raises:
        ScheduleError: the schedule cannot run against its port.
        FaultRunError: the filter would not load, or the agent would not start or connect.
    """
    runner = FaultRunner(
        schedule, agent, seed=seed, address=address, start_timeout=start_timeout,
        progress=progress,
    )  # fmt: skip
    return await runner.run()
