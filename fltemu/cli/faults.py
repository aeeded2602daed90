r"""The command line of ``fltemu faults``, ``fltemu record`` and ``fltemu replay``.

``add_parser(subparsers)`` adds the three sub-commands to ``fltemu``'s parser; ``COMMANDS``
names them; ``run_command(args, agent)`` runs one (``agent`` is what came after ``--``) and
returns the exit status: 0 passed, 1 a threshold broken (or a reply that differs), 2 a
mistake in what was asked (the message says what to change).
Not here: the schedules, the runner, the report and the recordings (``fltemu.faults``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ..faults.builtin import BUILTIN_SCHEDULES, builtin_schedule, builtin_text
from ..faults.schedule import Schedule, ScheduleError, load_schedule
from ._args import Subparsers

if TYPE_CHECKING:  # loaded only when a run starts
    from ..faults.recording import ReplayReport
    from ..faults.report import Report

__all__ = ["COMMANDS", "add_parser", "run_command"]

#: The sub-commands this module adds; each takes the agent's command line after ``--``
#: except ``record``.
COMMANDS: Final = ("faults", "record", "replay")

#: The exit status after SIGTERM (128 + 15, as a shell reports a process it ended).
EXIT_TERMINATED: Final = 128 + signal.SIGTERM

_T = TypeVar("_T")


class _Terminated(Exception):
    """SIGTERM came during a run; the run's cleanup is done."""


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(coro)``, with SIGTERM handled as Ctrl-C is: the run is cancelled, so its
    cleanup runs (the agent's process group stopped, the daemon shut down, the temporary
    socket removed), then ``_Terminated``. Without it SIGTERM ended fltemu at once and left
    the agent, in a session of its own, running. A second SIGTERM during the cleanup is
    ignored (the cleanup is bounded: the agent's stop grace and the daemon's).
    """

    async def main() -> _T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        terminated: list[bool] = []

        def on_sigterm() -> None:
            if not terminated:
                terminated.append(True)
                task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            return await coro
        except asyncio.CancelledError:
            if terminated:
                raise _Terminated from None
            raise
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(main())


_FAULTS_EPILOG: Final = r"""
examples:
  fltemu faults list
  fltemu faults show scanner-reload > my.toml
  fltemu faults plan scanner-faults --seed 7
  fltemu faults run scanner-reload -- python my_scanner_agent.py
  fltemu faults run my.toml --seed 7 --json report.json -- fltemu wine -- scanuser.exe

fltemu faults run plays the kernel: it serves a socket of its own (--address, else a
temporary one), loads the schedule's filter, starts the agent with FLTEMU_SOCKET set to that
socket, waits for its first connection, then plays the schedule's events one by one and
prints a line for each. The same seed gives the same events in the same order. Exit status:
0 when every threshold held, 1 when one broke (each is named: the event and what the agent
did), 2 when the schedule, the filter or the agent could not be used, 130 on Ctrl-C and
143 on SIGTERM (the agent is stopped first, in both cases).
The schedule format, the faults and the thresholds: docs/faults.md.
"""

_RECORD_EPILOG: Final = r"""
example:
  fltemu record scan.jsonl --port '\ScannerPort' --count 100

Records the port's traffic on a running daemon (--address, else $FLTEMU_SOCKET, else the
default socket) through a trace connection: every FltSendMessage with its reply, every
FilterSendMessage with its status, connects and disconnects, with their times. It stops
after --count FltSendMessage calls have ended, after --duration seconds, on Ctrl-C, or when
the daemon stops. Payloads over 4096 bytes are cut (a trace event's limit): replay skips
those messages. Exit status: 0, 1 when the daemon cannot be reached, 2 for bad arguments.
"""

_REPLAY_EPILOG: Final = r"""
examples:
  fltemu replay scan.jsonl -- python my_scanner_agent.py
  fltemu replay scan.jsonl --pace fast --json diff.json -- fltemu wine -- scanuser.exe

Serves the recorded port on a socket of its own, starts the agent with FLTEMU_SOCKET set,
and sends every recorded kernel->user message again, at the recorded pace (default) or each
as soon as the previous one is answered (--pace fast); every reply that differs from the
recorded one is listed. Exit status: 0 when every reply is as recorded, 1 when one differs,
2 when the recording cannot be used (a later format is refused) or the agent never connects,
130 on Ctrl-C and 143 on SIGTERM (the agent is stopped first, in both cases).
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_parser(subparsers: Subparsers) -> None:
    """Add ``faults``, ``record`` and ``replay`` to ``fltemu``'s sub-commands."""
    faults = subparsers.add_parser(
        "faults",
        help="break the kernel on purpose against an agent: seeded fault schedules, a verdict",
        description="Seeded fault schedules against a user-mode agent (filter unload and "
        "reload, FltCloseClientPort, MessageNotify delays and failures, short FltSendMessage "
        "timeouts, bursts, connection-limit refusals, daemon restarts, malformed messages), "
        "and a verdict on what the agent did.",
        epilog=_FAULTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = faults.add_subparsers(dest="faults_command", metavar="ACTION")
    actions.add_parser("list", help="list the built-in schedules")
    show = actions.add_parser("show", help="print a built-in schedule's file, to copy")
    show.add_argument("name", metavar="NAME", help="a built-in schedule")
    plan = actions.add_parser("plan", help="print the events a schedule and seed give")
    plan.add_argument("schedule", metavar="SCHEDULE", help="a schedule file or built-in name")
    plan.add_argument("--seed", type=int, metavar="N", help="the seed (default: the schedule's)")
    run = actions.add_parser(
        "run",
        help="run a schedule against an agent: fltemu faults run SCHEDULE -- AGENT...",
        usage="fltemu faults run [-h] [--seed N] [--json FILE] [--address PATH] "
        "[--start-timeout S] [--quiet] SCHEDULE -- AGENT [ARGS...]",
        epilog=_FAULTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("schedule", metavar="SCHEDULE", help="a schedule file or built-in name")
    run.add_argument("--seed", type=int, metavar="N", help="the seed (default: the schedule's)")
    run.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-': stdout)")
    run.add_argument("--address", metavar="PATH", help="socket to serve on (default: temporary)")
    run.add_argument(
        "--start-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="seconds the agent has to connect the first time (default: %(default)s)",
    )
    run.add_argument(
        "--quiet", action="store_true", help="no line per event while it runs (stderr)"
    )

    record = subparsers.add_parser(
        "record",
        help="record a port's traffic on a running daemon to a file, for fltemu replay",
        description="Record a port's traffic (kernel->user messages and their replies, the "
        "agent's FilterSendMessage calls and their statuses, with their times) to a "
        "versioned JSON Lines file.",
        epilog=_RECORD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    record.add_argument("output", metavar="FILE", help="the recording to write")
    record.add_argument("--port", required=True, metavar="NAME", help="the port to record")
    record.add_argument("--address", metavar="PATH", help="the daemon's socket")
    record.add_argument("--count", type=_count, metavar="N", help="stop after N messages")
    record.add_argument("--duration", type=_seconds, metavar="S", help="stop after S seconds")

    replay = subparsers.add_parser(
        "replay",
        help="replay a recording's kernel->user messages to an agent; list the replies that differ",
        description="Replay a recording (fltemu record) to an agent and report every reply "
        "that differs from the recorded one.",
        epilog=_REPLAY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="fltemu replay [-h] [--pace {recorded,fast}] [--json FILE] [--address PATH] "
        "[--start-timeout S] RECORDING -- AGENT [ARGS...]",
    )
    replay.add_argument("recording", metavar="RECORDING", help="a file made by fltemu record")
    replay.add_argument(
        "--pace",
        choices=("recorded", "fast"),
        default="recorded",
        help="recorded: as the messages came; fast: each once the last is answered "
        "(default: %(default)s)",
    )
    replay.add_argument(
        "--json", metavar="FILE", help="also write the report as JSON ('-': stdout)"
    )
    replay.add_argument("--address", metavar="PATH", help="socket to serve on (default: temporary)")
    replay.add_argument(
        "--start-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="seconds the agent has to connect (default: %(default)s)",
    )


def _error(command: str, message: str) -> int:
    print(f"fltemu {command}: error: {message}", file=sys.stderr)
    return 2


def _write_json(command: str, path: str | None, text: str) -> int | None:
    if path is None:
        return None
    if path == "-":
        print(text)
        return None
    try:
        Path(path).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        return _error(command, f"cannot write {path}: {exc.strerror or exc}")
    return None


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stopped(command: str, how: str, status: int) -> int:
    print(f"fltemu {command}: {how}", file=sys.stderr)
    return status


def _print_report(command: str, json_path: str | None, report: Report | ReplayReport) -> int:
    # The report as text (unless the JSON goes to stdout), the JSON where asked; 0 if passed.
    failed = _write_json(command, json_path, report.to_json())
    if json_path != "-":
        print(report.to_text())
    if failed is not None:
        return failed
    return 0 if report.passed else 1


def run_command(args: argparse.Namespace, agent: list[str]) -> int:
    """Run ``fltemu faults``, ``record`` or ``replay``; the exit status.

    Emulates no Windows function (see ``run_schedule``, ``record_events``, ``replay``).
    """
    if args.command == "faults":
        try:
            return _faults(args, agent)
        except BrokenPipeError:
            # Its reader stopped early (``fltemu faults plan ... | head``): not an error. What
            # is left in stdout's buffer goes nowhere, so the exit does not fail on it.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if args.command == "record":
        if agent:
            return _error("record", "record takes no agent command ('-- ...'); it records a "
                          "running daemon")  # fmt: skip
        return _record(args)
    return _replay(args, agent)


def _schedule(name: str) -> Schedule:
    """A schedule file, or a built-in schedule by name."""
    if name in BUILTIN_SCHEDULES and not os.path.exists(name):
        return builtin_schedule(name)
    if not os.path.exists(name):
        raise ScheduleError(
            f"{name}: no such file, and no built-in schedule of that name; built-in: "
            f"{', '.join(BUILTIN_SCHEDULES)}"
        )
    return load_schedule(name)


def _faults(args: argparse.Namespace, agent: list[str]) -> int:
    from ..faults.runner import FaultRunError, run_schedule

    action = args.faults_command
    if action is None:
        return _error("faults", "give an action: list, show NAME, plan SCHEDULE, or run "
                      "SCHEDULE -- AGENT (fltemu faults -h)")  # fmt: skip
    if agent and action != "run":
        return _error("faults", "'-- AGENT' is only for fltemu faults run")
    try:
        if action == "list":
            for name in BUILTIN_SCHEDULES:
                schedule = builtin_schedule(name)
                print(f"{name:16} {schedule.filter:8} {schedule.description}")
            return 0
        if action == "show":
            print(builtin_text(args.name), end="")
            return 0
        schedule = _schedule(args.schedule)
        if action == "plan":
            seed = schedule.seed if args.seed is None else args.seed
            print(f"schedule {schedule.name}, seed {seed}:")
            for event in schedule.plan(args.seed):
                print(f"  {event.describe()}")
            return 0
        if not agent:
            return _error("faults", "no agent: fltemu faults run SCHEDULE -- AGENT [ARGS...]")

        report = _run(
            run_schedule(
                schedule,
                agent,
                seed=args.seed,
                address=args.address,
                start_timeout=args.start_timeout,
                progress=None if args.quiet else _progress,
            )
        )
    except BrokenPipeError:
        raise  # stdout's reader went away (run_command)
    except (ScheduleError, FaultRunError, OSError) as exc:
        return _error("faults", str(exc))
    except KeyboardInterrupt:
        return _stopped("faults", "interrupted", 130)
    except _Terminated:
        return _stopped("faults", "terminated (SIGTERM); the agent was stopped", EXIT_TERMINATED)
    return _print_report("faults", args.json, report)


def _record(args: argparse.Namespace) -> int:
    from fltuser.control import ControlError, trace

    from ..faults.recording import record_events
    from ..wire import PROTOCOL_VERSION, Trace, resolve_address

    address = resolve_address(args.address)
    if not args.port.startswith("\\"):
        return _error("record", f"bad port name {args.port!r}: a port name starts with a "
                      "backslash (quote it in your shell: '\\ScannerPort')")  # fmt: skip
    deadline = None if args.duration is None else time.monotonic() + args.duration
    request = Trace(PROTOCOL_VERSION, args.port, None, (), 0xFFFFFFFF)
    events = trace(request, address)
    try:
        # Connected first: no file is written (or emptied) when no daemon answers.
        first = next(events)
    except ControlError as exc:
        print(f"fltemu record: error: {exc}", file=sys.stderr)
        return 1
    except StopIteration:
        first = None
    try:
        out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        getattr(events, "close", lambda: None)()  # the trace connection
        return _error("record", f"cannot write {args.output}: {exc.strerror or exc}")

    def started(text: str) -> None:
        print(f"recording {args.port} on {address} ({text}) into {args.output}; Ctrl-C stops",
              file=sys.stderr, flush=True)  # fmt: skip

    # --duration ends the recording even when no event comes (the trace's read blocks): a
    # timer signal interrupts that read.
    previous_alarm = None
    if args.duration is not None:
        previous_alarm = signal.signal(signal.SIGALRM, _duration_over)
        signal.setitimer(signal.ITIMER_REAL, args.duration)
    try:
        with out:
            done, dropped = record_events(
                itertools.chain([] if first is None else [first], events),
                out,
                port=args.port,
                address=address,
                count=args.count,
                deadline=deadline,
                on_start=started,
            )
    except _DurationOver:
        done, dropped = _recorded(args.output)
    except ControlError as exc:
        print(f"fltemu record: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fltemu record: stopped; {args.output} holds what came so far", file=sys.stderr)
        return 0
    finally:
        if previous_alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
        close = getattr(events, "close", None)
        if close is not None:
            close()  # the trace connection
    lost = f"; the daemon dropped {dropped} event(s) (too slow to write)" if dropped else ""
    print(f"recorded {done} message(s) into {args.output}{lost}", file=sys.stderr)
    return 0


class _DurationOver(Exception):
    """``fltemu record --duration``'s time is up."""


def _duration_over(signum: int, frame: object) -> None:
    raise _DurationOver


def _recorded(path: str) -> tuple[int, int]:
    """The FltSendMessage calls ended and the events dropped in the recording at ``path``."""
    done = dropped = 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the end of the time
            if event.get("kind") == "message_done":
                done += 1
            elif event.get("kind") == "dropped":
                dropped += int(event.get("count", 0))
    return done, dropped


def _replay(args: argparse.Namespace, agent: list[str]) -> int:
    from ..faults.recording import RecordingError, load_recording, replay
    from ..faults.runner import FaultRunError

    if not agent:
        return _error("replay", "no agent: fltemu replay RECORDING -- AGENT [ARGS...]")
    try:
        recording = load_recording(args.recording)

        report = _run(
            replay(
                recording,
                agent,
                source=args.recording,
                pace=args.pace,
                address=args.address,
                start_timeout=args.start_timeout,
                progress=_progress,
            )  # fmt: skip
        )
    except (RecordingError, FaultRunError, OSError) as exc:
        return _error("replay", str(exc))
    except KeyboardInterrupt:
        return _stopped("replay", "interrupted", 130)
    except _Terminated:
        return _stopped("replay", "terminated (SIGTERM); the agent was stopped", EXIT_TERMINATED)
    return _print_report("replay", args.json, report)
