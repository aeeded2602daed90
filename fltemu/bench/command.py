"""``fltemu bench``: turn arguments into a BenchConfig, run it, print and plot the report.

Not here: argument definitions (``fltemu.cli.bench``), the load itself (``load``).
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import os
import random
import shlex
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from .._limits import DEFAULT_MAX_MESSAGE_BYTES
from ..daemon.runner import loop_factory
from ..errors import FltEmuError
from .gate import (
    Check,
    Threshold,
    check_thresholds,
    compare_baseline,
    load_baseline,
    parse_threshold,
)
from .histogram import LatencyHistogram, percentile_distribution
from .load import (
    LIMIT_FACTOR,
    BenchConfig,
    BenchInterrupted,
    BenchReport,
    Progress,
    run_bench,
)
from .plot import percentile_svg

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_THRESHOLD",
    "EXIT_USAGE",
    "Verdict",
    "config_from_args",
    "describe_settings",
    "format_report",
    "format_verdict",
    "hdr_report",
    "judge",
    "parse_percentiles",
    "parse_stages",
    "plot_report",
    "run_command",
]

#: Runs shorter than this get CPU seconds but no share of a core: /proc counts CPU time in
#: clock ticks (10 ms), too coarse for a share of a shorter run.
MIN_SHARE_SECONDS: Final = 0.5

#: The exit statuses of ``fltemu bench``, as its --help and the README list them.
EXIT_OK: Final = 0  # the run completed, something was answered, every check passed
EXIT_FAILED: Final = 1  # no run, or one that measured no working agent
EXIT_USAGE: Final = 2  # bad arguments (argparse's own)
EXIT_THRESHOLD: Final = 3  # a --fail-if threshold or the --baseline comparison failed
EXIT_INTERRUPTED: Final = 130  # Ctrl-C (128 + SIGINT), after the summary of what ran


def _payload(parser: argparse.ArgumentParser, args: argparse.Namespace) -> bytes:
    if args.hex is not None:
        try:
            return binascii.unhexlify("".join(str(args.hex).split()))
        except (binascii.Error, ValueError) as exc:
            parser.error(f"--hex {args.hex!r}: {exc}")
    if args.file is not None:
        try:
            with open(args.file, "rb") as f:
                return f.read()
        except OSError as exc:
            parser.error(f"--file {args.file!r}: {exc.strerror or exc}")
    if args.random:
        return random.Random(args.seed).randbytes(args.size)
    return bytes(args.size)


def _check_writable(
    parser: argparse.ArgumentParser, option: str, path: str, suffix: str | None
) -> None:
    """Refuse an output file that could not be written, before the run rather than after."""
    if suffix == ".svg" and not path.lower().endswith(".svg"):
        parser.error(
            f"{option} {path}: the plot is SVG, so its name must end in .svg "
            "(for a PNG, convert it afterwards, e.g. rsvg-convert -o plot.png plot.svg)"
        )
    existed = os.path.lexists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        parser.error(f"{option} {path}: cannot write it: {exc.strerror or exc}")
    if not existed:
        os.unlink(path)


@dataclass
class Verdict:
    """What the exit status says about a run, and why.

    Attributes:
        status: the exit status (``EXIT_OK``, ``EXIT_FAILED``, ``EXIT_THRESHOLD``,
            ``EXIT_INTERRUPTED``).
        problems: why the run measured no working agent (the agent crashed or exited
            first, nothing was answered).
        checks: the ``--fail-if`` thresholds and ``--baseline`` comparisons.
        warnings: what the reader should know but that fails nothing (a baseline run with
            other settings).
    """

    status: int
    problems: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "exit_status": self.status,
            "problems": self.problems,
            "checks": [c.to_dict() for c in self.checks],
            "warnings": self.warnings,
        }


def judge(
    report: BenchReport,
    thresholds: Sequence[Threshold] = (),
    baseline: dict[str, Any] | None = None,
    max_regression: float = 1.2,
) -> Verdict:
    """The exit status of a run: a run that measured no working agent fails (1) before any
    threshold is looked at, a threshold or the baseline failing fails it (3), and Ctrl-C
    gives 130 whatever the figures."""
    verdict = Verdict(EXIT_OK)
    if report.agent_gone or report.agent_failed:
        why = report.ended_early if report.agent_gone else None
        what = why or f"the agent {report.agent_exit_text}"
        verdict.problems.append(f"{what} during the run")
    if report.answered == 0 and not report.interrupted:
        verdict.problems.append("no message was answered")
    verdict.checks = check_thresholds(report, list(thresholds))
    if baseline is not None:
        checks, verdict.warnings = compare_baseline(report, baseline, max_regression)
        verdict.checks += checks
    if report.interrupted:
        verdict.status = EXIT_INTERRUPTED
    elif verdict.problems:
        verdict.status = EXIT_FAILED
    elif any(c.failed for c in verdict.checks):
        verdict.status = EXIT_THRESHOLD
    return verdict


def config_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, agent: list[str]
) -> BenchConfig:
    """The BenchConfig the arguments describe."""
    if args.port and not args.port.startswith("\\"):
        # An unquoted \ScannerPort reaches fltemu as ScannerPort.
        parser.error(
            f"bad port name {args.port!r}: STATUS_OBJECT_PATH_SYNTAX_BAD: a port name starts "
            f"with a backslash: did you mean '\\{args.port}'? (quote the backslash in your shell)"
        )
    stages: tuple[tuple[float, float], ...] = ()
    rate, concurrency = args.rate, args.concurrency
    if args.stages is not None:
        for given, option in (
            (args.rate, "--rate"),
            (args.concurrency, "--concurrency"),
            (args.duration, "--duration"),
        ):
            if given is not None:
                parser.error(f"--stages sets the targets and durations: drop {option}")
        try:
            stages, is_open = parse_stages(args.stages)
        except ValueError as exc:
            parser.error(f"--stages {args.stages!r}: {exc}")
        if is_open:
            rate = stages[0][1]
        else:
            concurrency = int(stages[0][1])
    duration = args.duration
    if args.count is None and duration is None and not stages:
        duration = 10.0
    if args.plot is not None:
        _check_writable(parser, "--plot", args.plot, ".svg")
    if args.hdr is not None:
        _check_writable(parser, "--hdr", args.hdr, None)
    try:
        percentiles = parse_percentiles(args.percentiles)
    except ValueError as exc:
        parser.error(f"--percentiles {args.percentiles!r}: {exc}")
    payload = _payload(parser, args)
    for what, size in (("the message", len(payload)), ("--reply-length", args.reply_length)):
        if size is not None and size > DEFAULT_MAX_MESSAGE_BYTES:
            parser.error(
                f"{what} is {size:,} bytes: fltemu's daemon and clients carry at most "
                f"{DEFAULT_MAX_MESSAGE_BYTES:,} bytes (16 MiB) per message"
            )
    return BenchConfig(
        port=args.port,
        payload=payload,
        concurrency=concurrency or 1,
        rate=rate,
        duration=duration,
        count=args.count,
        reply_length=args.reply_length,
        timeout=args.timeout,
        address=args.address,
        agent=tuple(agent),
        max_connections=args.max_connections,
        connect_timeout=args.connect_timeout,
        everyone=args.allow_everyone,
        limit_check=args.limit_check,
        stages=stages,
        warmup=args.warmup,
        percentiles=percentiles,
    )


def _seconds(text: str) -> float:
    for unit, scale in (("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def parse_stages(text: str) -> tuple[tuple[tuple[float, float], ...], bool]:
    """``--stages``: (seconds, target) of each stage, and whether the targets are rates
    (open loop, ``N/s``) rather than messages in flight (closed loop, ``N``).

    >>> parse_stages("10s:1000/s,500ms:2000/s")
    (((10.0, 1000.0), (0.5, 2000.0)), True)
    >>> parse_stages("5:1, 5:16")
    (((5.0, 1.0), (5.0, 16.0)), False)

    Raises:
        ValueError: not DURATION:TARGET,...; the message says what is.
    """
    stages = []
    kinds = set()
    for part in text.split(","):
        duration, sep, target = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            seconds = _seconds(duration.strip())
            is_rate = target.strip().endswith("/s")
            value = float(target.strip().removesuffix("/s"))
        except ValueError:
            raise ValueError(
                f"{part.strip()!r} is not DURATION:TARGET, e.g. 10s:2000/s (open loop, msg/s) "
                "or 10s:16 (closed loop, messages in flight)"
            ) from None
        if not seconds > 0 or not value > 0:
            raise ValueError(f"{part.strip()!r}: the duration and the target must be > 0")
        if not is_rate and value != int(value):
            raise ValueError(f"{part.strip()!r}: messages in flight are a whole number")
        kinds.add(is_rate)
        stages.append((seconds, value))
    if len(kinds) > 1:
        raise ValueError("every stage is a rate (N/s, open loop) or every one a concurrency (N)")
    return tuple(stages), kinds == {True}


def parse_percentiles(text: str) -> tuple[float, ...]:
    """``--percentiles``: sorted, each above 0 and below 100.

    >>> parse_percentiles("99.9, 50,99")
    (50.0, 99.0, 99.9)

    Raises:
        ValueError: not a comma-separated list of such numbers.
    """
    try:
        values = sorted({float(p.strip().removeprefix("p")) for p in text.split(",") if p.strip()})
    except ValueError:
        raise ValueError("not a list of percentiles such as 50,90,99,99.9") from None
    if not values or not all(0 < p < 100 for p in values):
        raise ValueError("each percentile is above 0 and below 100 (max is always shown)")
    return tuple(values)


def _target(config: BenchConfig, target: float) -> str:
    return f"{target:,g} msg/s" if config.rate else f"{target:g} in flight"


def describe_settings(config: BenchConfig) -> str:
    """The run's settings in one line: mode (or stages), size, reply, timeout, length,
    warm-up, connections."""
    c = config
    if c.stages:
        steps = ", ".join(f"{_target(c, t)} for {seconds:g} s" for seconds, t in c.stages)
        mode = f"{'open' if c.rate else 'closed'} loop in {len(c.stages)} stages ({steps})"
    elif c.rate:
        mode = f"open loop at {c.rate:g} msg/s"
    else:
        mode = f"closed loop, {c.concurrency} in flight"
    reply = f"reply {c.reply_length} bytes" if c.reply_length is not None else "no reply"
    timeout = "no timeout" if c.timeout is None else f"timeout {c.timeout:g} s"
    length = [f"{c.duration:g} s"] if c.duration is not None and not c.stages else []
    length += [f"at most {c.count} messages"] if c.count is not None else []
    warmup = f", after a {c.warmup:g} s warm-up" if c.warmup else ""
    connections = f", up to {c.max_connections} connections" if c.max_connections > 1 else ""
    return (
        f"{mode}, {len(c.payload)}-byte messages, {reply}, {timeout}"
        + (f", {' or '.join(length)}" if length else "")
        + warmup
        + connections
    )


def _latencies(config: BenchConfig, h: LatencyHistogram) -> str:
    return "  ".join(
        f"{name} {value / 1e6:.3f}"
        for name, value in [
            *((f"p{p:g}", h.percentile(p)) for p in config.percentiles),
            ("max", h.max),
        ]
    )


def _cpu(seconds: float | None, elapsed: float) -> str:
    if seconds is None:
        return "CPU ?"
    # /proc counts in clock ticks (10 ms): under half a second a share would be noise.
    if elapsed < MIN_SHARE_SECONDS:
        return f"CPU {seconds:.2f} s during the run (too short a run for a share of a core)"
    return f"CPU {seconds:.2f} s during the run ({100 * seconds / elapsed:.0f}% of one core)"


def _limit_lines(report: BenchReport) -> list[str]:
    limit = report.limit
    wine = (
        ["  the agent runs under Wine (fltemu wine): these figures are its speed under Wine"]
        if report.under_wine
        else []
    )
    whose = "the Windows side's own limit under Wine" if report.under_wine else "fltemu's own limit"
    if limit is None:
        why = "interrupted" if report.interrupted else "--no-limit-check"
        return [*wine, f"  {whose}: not checked ({why})"]
    if limit.throughput is None:
        return [*wine, f"  {limit.what}: not measured: {limit.error}"]
    how = (
        f"open loop offered {limit.offered_rate:g} msg/s"
        if limit.offered_rate is not None
        else f"closed loop, {limit.concurrency} in flight"
    )
    busy = []
    if limit.fltemu_cpu is not None:
        busy.append(f"fltemu's process {100 * limit.fltemu_cpu:.0f}% of a core")
    if limit.agent_cpu is not None:
        theirs = "that agent's, Wine's processes included," if limit.windows else "that agent's"
        busy.append(f"{theirs} {100 * limit.agent_cpu:.0f}%")
    against = (
        "benchagent.exe get (overlapped gets on an I/O completion port, each message answered "
        "at once) under the agent's fltemu wine"
        if limit.windows
        else "its instant-reply agent in a process of its own"
    )
    bound = "at least " if limit.is_lower_bound else ""
    lines = [
        *wine,
        f"  {limit.what}: {bound}{limit.throughput:,.0f} msg/s with these settings "
        f"({how}, one connection)",
        f"    measured for {limit.seconds:.1f} s against {against}, over the same socket"
        + (f"; {', '.join(busy)}" if busy else ""),
    ]
    if report.near_limit:
        ceiling = (
            "what a Windows agent that does nothing sustains under Wine: the figures may be "
            "Wine's ceiling"
            if limit.windows
            else "what fltemu alone sustains: the figures may be fltemu's ceiling"
        )
        assert limit.throughput is not None
        where = (
            f"is within {LIMIT_FACTOR:g}x of"
            if report.throughput < limit.throughput
            else "is not below"
        )
        lines.append(
            f"  WARNING: the agent's {report.throughput:,.0f} msg/s {where} {ceiling} rather "
            "than your agent's"
        )
    return lines


def _early_line(report: BenchReport) -> str | None:
    """ "ENDED EARLY ..." when the run stopped before its duration or count."""
    why = report.ended_early
    if why is None:
        return None
    c = report.config
    asked = []
    if c.duration is not None:
        asked.append(f"{report.elapsed:.2f} s of {c.duration:g} s")
    if c.count is not None:
        asked.append(f"{report.sent} of {c.count} messages")
    return f"ENDED EARLY after {' and '.join(asked)}: {why}; the figures cover only what ran"


def format_verdict(verdict: Verdict) -> str:
    """The checks and the outcome, for the end of the human report."""
    lines = [
        f"  {'FAIL' if c.failed else 'pass'}: fails if {c.what}: {c.actual}" for c in verdict.checks
    ]
    lines += [f"  WARNING: {w}" for w in verdict.warnings]
    lines += [f"  FAILED: {p}" for p in verdict.problems]
    return "\n".join(lines) + "\n" if lines else ""


def format_report(report: BenchReport) -> str:
    """The human table printed at the end of a run."""
    c = report.config
    h = report.latency
    elapsed = report.elapsed

    def rate(n: int) -> str:
        share = 100 * n / report.sent if report.sent else 0.0
        return f"{n} ({share:.1f}% of sent, {report.per_second(n):,.1f}/s)"

    answered_statuses = report.statuses - report.failures
    lines = [f"fltemu bench {c.port}: {describe_settings(c)}; {report.connections} connected"]
    early = _early_line(report)
    if early:
        lines.append(f"  {early}")
    lines += [
        f"  duration {elapsed:.2f} s   sent {report.sent}   "
        f"throughput {report.throughput:,.1f} msg/s (answered messages only)"
        + (f"   skipped {report.skipped} (backlog)" if report.skipped else ""),
        f"  answered {report.answered}"
        + (
            ": " + ", ".join(f"{name} {n}" for name, n in answered_statuses.most_common())
            if answered_statuses
            else ""
        ),
        f"  not answered {report.not_answered}"
        + (
            ": " + ", ".join(f"{name} {rate(n)}" for name, n in report.failures.most_common())
            if report.failures
            else ""
        ),
        f"  in flight at the end {report.in_flight}"
        + (
            " (withdrawn when the run stopped; counted in the latency at their age)"
            if report.in_flight_aged
            else " (withdrawn when the run stopped)"
            if report.in_flight
            else ""
        ),
        f"  latency of {report.latency_of} (ms):  "
        + (_latencies(c, h) if h.count else "none answered"),
    ]
    if c.warmup:
        lines.insert(
            2, f"  warm-up {c.warmup:g} s before: {report.warmup_sent} messages, not counted"
        )
    if c.stages:
        for i, stage in enumerate(report.stages, 1):
            w = stage.window
            answered = w.answered / stage.elapsed if stage.elapsed > 0 else 0.0
            lines.append(
                f"  stage {i}: {_target(c, stage.target)} for {stage.elapsed:.2f} s: sent "
                f"{w.sent}, answered {w.answered} ({answered:,.1f} msg/s), not answered "
                f"{w.not_answered}; ms: "
                + (_latencies(c, w.latency) if w.latency.count else "none answered")
            )
    if report.offered_shortfall:
        lines.append(f"  WARNING: {report.offered_shortfall}")
    if report.agent_pid is not None:
        processes = report.agent_processes
        wine = [p for p in processes if p.role == "wine"]
        many = (
            f" in {len(processes)} processes" + (f" ({len(wine)} of them Wine's)" if wine else "")
            if len(processes) > 1
            else ""
        )
        lines.append(
            f"  agent: pid {report.agent_pid}, {_cpu(report.agent_cpu_seconds, elapsed)}"
            f"{many}, {report.agent_exit_text or 'still running'}"
        )
        if len(processes) > 1:
            busy = [p for p in processes if p.seconds > 0]
            idle = len(processes) - len(busy)
            lines.append(
                "    "
                + ", ".join(
                    f"{p.name} {p.seconds:.2f} s"
                    + (" (Wine)" if p.role == "wine" else "")
                    + (" (exited)" if p.exited else "")
                    for p in busy
                )
                + (f"{', ' if busy else ''}{idle} idle" if idle else "")
            )
        if report.agent_failed:
            if report.agent_output:
                lines.append("  agent output (last lines):")
                lines.extend(f"  | {line}" for line in report.agent_output)
            else:
                lines.append("  agent output: none")
    lines.append(f"  fltemu: {_cpu(report.fltemu_cpu_seconds, elapsed)}")
    lines.extend(_limit_lines(report))
    return "\n".join(lines) + "\n"


def _plot_notes(report: BenchReport) -> tuple[list[str], list[str]]:
    """(notes, warnings) under the plot: what to know, and what makes the figures doubtful."""
    notes, warnings = [], []
    early = _early_line(report)
    if early:
        warnings.append(early)
    if report.failures:
        warnings.append(
            "not answered, not in the curve: "
            + ", ".join(
                f"{name} {n} ({100 * n / report.sent:.1f}%)"
                for name, n in report.failures.most_common()
            )
        )
    if report.offered_shortfall:
        warnings.append(report.offered_shortfall)
    if report.near_limit and report.limit is not None and report.limit.throughput:
        whose = "Wine's" if report.limit.windows else "fltemu's"
        warnings.append(
            f"within {LIMIT_FACTOR:g}x of {report.limit.what} "
            f"({report.limit.throughput:,.0f} msg/s): may be {whose} ceiling"
        )
    if report.under_wine:
        notes.append("the agent runs under Wine: these are its figures under Wine")
    if report.in_flight_aged:
        notes.append(
            f"in flight at the end: {report.in_flight}, in the curve at their age (open loop)"
        )
    elif report.in_flight:
        notes.append(f"in flight at the end, withdrawn, not in the curve: {report.in_flight}")
    if report.config.warmup:
        notes.append(f"after a {report.config.warmup:g} s warm-up, not counted")
    return notes, warnings


def plot_report(report: BenchReport) -> str:
    """The latency plot of a run: answered messages (and, in open loop, those in flight at
    the end at their age), the rest noted beside the curve."""
    c = report.config
    early = _early_line(report)
    notes, warnings = _plot_notes(report)
    return percentile_svg(
        report.latency,
        f"fltemu bench {c.port}: {report.throughput:,.1f} answered msg/s, "
        f"{report.elapsed:.2f} s run" + (" (ENDED EARLY)" if early else ""),
        subtitle=describe_settings(c),
        notes=notes,
        warnings=warnings,
        percentiles=c.percentiles,
    )


def hdr_report(report: BenchReport) -> str:
    """The run's latency as HdrHistogram's percentile distribution (.hgrm), in ms."""
    return percentile_distribution(report.latency)


def _progress_line(p: Progress) -> None:
    sys.stderr.write(
        f"\r  {'warm-up ' if p.warming else ''}{p.elapsed:6.1f} s  sent {p.sent}  "
        f"answered {p.answered}  "
        f"timeouts {p.timeouts}  p99 {p.p99_ns / 1e6:.3f} ms   "
    )
    sys.stderr.flush()


def _gates(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[list[Threshold], dict[str, Any] | None]:
    """The --fail-if thresholds and the --baseline report, refused before the run if wrong."""
    thresholds = []
    for text in args.fail_if:
        try:
            thresholds.append(parse_threshold(text))
        except ValueError as exc:
            parser.error(f"--fail-if {exc}")
    baseline = None
    if args.baseline is not None:
        try:
            baseline = load_baseline(args.baseline)
        except ValueError as exc:
            parser.error(f"--baseline {args.baseline}: {exc}")
    return thresholds, baseline


def _summary(verdict: Verdict) -> str:
    """One line for stderr on a failed run."""
    why = verdict.problems or [f"{c.what}: {c.actual}" for c in verdict.checks if c.failed]
    return f"fltemu bench: exit status {verdict.status}: " + "; ".join(why)


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace, agent: list[str]) -> int:
    """Run ``fltemu bench``; returns the exit status (``EXIT_*``)."""
    config = config_from_args(parser, args, agent)
    thresholds, baseline = _gates(parser, args)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()

    def listening(address: str) -> None:
        then = (
            f"starting {shlex.join(config.agent)}"
            if config.agent
            else f"waiting {config.connect_timeout:g} s for an agent (FLTEMU_SOCKET={address})"
        )
        print(f"fltemu bench: serving {config.port} on {address}; {then}", file=sys.stderr)

    async def main() -> BenchReport:
        loop = asyncio.get_running_loop()
        interrupt = asyncio.Event()

        def on_sigint() -> None:
            if interrupt.is_set():
                raise KeyboardInterrupt  # the second Ctrl-C: quit without a summary
            interrupt.set()
            print(
                "\nfltemu bench: interrupted: stopping the agent and summing up "
                "(Ctrl-C again to quit at once)",
                file=sys.stderr,
            )

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            return await run_bench(
                config, _progress_line if show_progress else None, listening, interrupt
            )
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            report = runner.run(main())
    except BenchInterrupted as exc:
        print(f"fltemu bench: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FltEmuError as exc:  # BenchError, a bad port name
        print(f"fltemu bench: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if show_progress:
            sys.stderr.write("\n")
    verdict = judge(report, thresholds, baseline, args.max_regression)
    if args.json:
        document = report.to_dict()
        document.update(verdict.to_dict())
        sys.stdout.write(msgspec.json.encode(document).decode() + "\n")
    else:
        sys.stdout.write(format_report(report) + format_verdict(verdict))
    for option, path, what, write in (
        ("--plot", args.plot, "latency plot", plot_report),
        ("--hdr", args.hdr, "HdrHistogram percentile distribution", hdr_report),
    ):
        if not path:
            continue
        try:
            with open(path, "w") as f:
                f.write(write(report))
        except OSError as exc:
            print(f"fltemu bench: error: {option} {path}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
        if not args.json:
            print(f"  {what}: {path}")
    sys.stdout.flush()
    if verdict.status not in (EXIT_OK, EXIT_INTERRUPTED):
        print(_summary(verdict), file=sys.stderr)
    return verdict.status
