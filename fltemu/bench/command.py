"""``fltemu bench``: turn arguments into a BenchConfig, run it, print and plot the report.

Not here: argument definitions (``fltemu.daemon.cli``), the load itself (``load``).
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import os
import random
import shlex
import sys
from typing import Final

import msgspec

from ..daemon.runner import loop_factory
from ..errors import FltEmuError
from .load import LIMIT_FACTOR, BenchConfig, BenchReport, Progress, run_bench
from .plot import percentile_svg

__all__ = ["config_from_args", "describe_settings", "format_report", "plot_report", "run_command"]

#: Runs shorter than this get CPU seconds but no share of a core: /proc counts CPU time in
#: clock ticks (10 ms), too coarse for a share of a shorter run.
MIN_SHARE_SECONDS: Final = 0.5


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


def _check_plot(parser: argparse.ArgumentParser, path: str) -> None:
    """Refuse a plot that could not be written, before the run rather than after it."""
    if not path.lower().endswith(".svg"):
        parser.error(
            f"--plot {path}: the plot is SVG, so its name must end in .svg "
            "(for a PNG, convert it afterwards, e.g. rsvg-convert -o plot.png plot.svg)"
        )
    existed = os.path.lexists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        parser.error(f"--plot {path}: cannot write it: {exc.strerror or exc}")
    if not existed:
        os.unlink(path)


def config_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, agent: list[str]
) -> BenchConfig:
    """The BenchConfig the arguments describe."""
    duration = args.duration
    if args.count is None and duration is None:
        duration = 10.0
    if args.plot is not None:
        _check_plot(parser, args.plot)
    return BenchConfig(
        port=args.port,
        payload=_payload(parser, args),
        concurrency=args.concurrency,
        rate=args.rate,
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
    )


def describe_settings(config: BenchConfig) -> str:
    """The run's settings in one line: mode, size, reply, timeout, length, connections."""
    c = config
    mode = f"open loop at {c.rate:g} msg/s" if c.rate else f"closed loop, {c.concurrency} in flight"
    reply = f"reply {c.reply_length} bytes" if c.reply_length is not None else "no reply"
    timeout = "no timeout" if c.timeout is None else f"timeout {c.timeout:g} s"
    length = [f"{c.duration:g} s"] if c.duration is not None else []
    length += [f"at most {c.count} messages"] if c.count is not None else []
    connections = f", up to {c.max_connections} connections" if c.max_connections > 1 else ""
    return f"{mode}, {len(c.payload)}-byte messages, {reply}, {timeout}, {' or '.join(length)}" + (
        connections
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
    if limit is None:
        return ["  fltemu's own limit: not checked (--no-limit-check)"]
    if limit.throughput is None:
        return [f"  fltemu's own limit: not measured: {limit.error}"]
    how = (
        f"open loop offered {limit.offered_rate:g} msg/s"
        if limit.offered_rate is not None
        else f"closed loop, {limit.concurrency} in flight"
    )
    busy = []
    if limit.fltemu_cpu is not None:
        busy.append(f"fltemu's process {100 * limit.fltemu_cpu:.0f}% of a core")
    if limit.agent_cpu is not None:
        busy.append(f"that agent's {100 * limit.agent_cpu:.0f}%")
    bound = "at least " if limit.is_lower_bound else ""
    lines = [
        f"  fltemu's own limit: {bound}{limit.throughput:,.0f} msg/s with these settings "
        f"({how}, one connection)",
        f"    measured for {limit.seconds:.1f} s against its instant-reply agent in a process of "
        "its own, over the same socket" + (f"; {', '.join(busy)}" if busy else ""),
    ]
    if report.near_limit:
        lines.append(
            f"  WARNING: the agent's {report.throughput:,.0f} msg/s is within "
            f"{LIMIT_FACTOR:g}x of what fltemu alone sustains: the figures may be fltemu's "
            "ceiling rather than your agent's"
        )
    return lines


def format_report(report: BenchReport) -> str:
    """The human table printed at the end of a run."""
    c = report.config
    h = report.latency
    elapsed = report.elapsed

    def rate(n: int) -> str:
        share = 100 * n / report.sent if report.sent else 0.0
        return f"{n} ({share:.1f}% of sent, {report.per_second(n):,.1f}/s)"

    answered_statuses = report.statuses - report.failures
    lines = [
        f"fltemu bench {c.port}: {describe_settings(c)}; {report.connections} connected",
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
        + (" (withdrawn when the run stopped)" if report.in_flight else ""),
        "  latency of answered messages (ms):  "
        + (
            "  ".join(
                f"{name} {value / 1e6:.3f}"
                for name, value in (
                    ("p50", h.percentile(50)),
                    ("p90", h.percentile(90)),
                    ("p99", h.percentile(99)),
                    ("p99.9", h.percentile(99.9)),
                    ("max", h.max),
                )
            )
            if h.count
            else "none answered"
        ),
    ]
    if report.agent_pid is not None:
        lines.append(
            f"  agent: pid {report.agent_pid}, {_cpu(report.agent_cpu_seconds, elapsed)}, "
            f"{report.agent_exit_text or 'still running'}"
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


def _plot_notes(report: BenchReport) -> list[str]:
    notes = []
    if report.failures:
        notes.append(
            "not answered, not in the curve: "
            + ", ".join(
                f"{name} {n} ({100 * n / report.sent:.1f}%)"
                for name, n in report.failures.most_common()
            )
        )
    if report.in_flight:
        notes.append(f"in flight at the end, withdrawn: {report.in_flight}")
    if report.near_limit and report.limit is not None and report.limit.throughput:
        notes.append(
            f"within {LIMIT_FACTOR:g}x of fltemu's own limit "
            f"({report.limit.throughput:,.0f} msg/s): may be fltemu's ceiling"
        )
    return notes


def plot_report(report: BenchReport) -> str:
    """The latency plot of a run: answered messages only, the rest noted beside the curve."""
    c = report.config
    return percentile_svg(
        report.latency,
        f"fltemu bench {c.port}: {report.throughput:,.1f} answered msg/s, "
        f"{report.elapsed:.2f} s run",
        subtitle=describe_settings(c),
        notes=_plot_notes(report),
    )


def _progress_line(p: Progress) -> None:
    sys.stderr.write(
        f"\r  {p.elapsed:6.1f} s  sent {p.sent}  answered {p.answered}  "
        f"timeouts {p.timeouts}  p99 {p.p99_ns / 1e6:.3f} ms   "
    )
    sys.stderr.flush()


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace, agent: list[str]) -> int:
    """Run ``fltemu bench``; returns the exit status."""
    config = config_from_args(parser, args, agent)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()

    def listening(address: str) -> None:
        then = (
            f"starting {shlex.join(config.agent)}"
            if config.agent
            else f"waiting {config.connect_timeout:g} s for an agent (FLTEMU_SOCKET={address})"
        )
        print(f"fltemu bench: serving {config.port} on {address}; {then}", file=sys.stderr)

    try:
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            report = runner.run(
                run_bench(config, _progress_line if show_progress else None, listening)
            )
    except FltEmuError as exc:  # BenchError, a bad port name
        print(f"fltemu bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if show_progress:
            sys.stderr.write("\n")
    if args.json:
        sys.stdout.write(msgspec.json.encode(report.to_dict()).decode() + "\n")
    else:
        sys.stdout.write(format_report(report))
    if args.plot:
        try:
            with open(args.plot, "w") as f:
                f.write(plot_report(report))
        except OSError as exc:
            print(
                f"fltemu bench: error: --plot {args.plot}: {exc.strerror or exc}", file=sys.stderr
            )
            return 1
        if not args.json:
            print(f"  latency plot: {args.plot}")
    return 0
