"""``fltemu bench``: turn arguments into a BenchConfig, run it, print and plot the report.

Not here: argument definitions (``fltemu.daemon.cli``), the load itself (``load``).
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import random
import sys

import msgspec

from ..daemon.runner import loop_factory
from .load import BenchConfig, BenchError, BenchReport, Progress, run_bench
from .plot import percentile_svg

__all__ = ["config_from_args", "format_report", "run_command"]


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


def config_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, agent: list[str]
) -> BenchConfig:
    """The BenchConfig the arguments describe."""
    duration = args.duration
    if args.count is not None and duration is None:
        duration = None
    elif args.count is None and duration is None:
        duration = 10.0
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
    )


def format_report(report: BenchReport) -> str:
    """The human table printed at the end of a run."""
    c = report.config
    h = report.latency
    mode = f"open loop at {c.rate:g} msg/s" if c.rate else f"closed loop, {c.concurrency} in flight"
    reply = f"reply {c.reply_length} bytes" if c.reply_length is not None else "no reply"
    timeout = "no timeout" if c.timeout is None else f"timeout {c.timeout:g} s"
    lines = [
        f"fltemu bench {c.port}: {mode}, {len(c.payload)}-byte messages, {reply}, {timeout}, "
        f"{report.connections} connection(s)",
        f"  duration {report.elapsed:.2f} s   sent {report.sent}   answered {report.completed}"
        f"   throughput {report.throughput:,.1f} msg/s"
        + (f"   skipped {report.skipped} (backlog)" if report.skipped else ""),
        "  statuses: "
        + (
            ", ".join(f"{name} {n}" for name, n in report.statuses.most_common()) or "none answered"
        ),
        "  latency (ms):  "
        + "  ".join(
            f"{name} {value / 1e6:.3f}"
            for name, value in (
                ("p50", h.percentile(50)),
                ("p90", h.percentile(90)),
                ("p99", h.percentile(99)),
                ("p99.9", h.percentile(99.9)),
                ("max", h.max),
            )
        ),
    ]
    if report.agent_pid is not None:
        cpu = report.agent_cpu_seconds
        share = (
            f" ({100 * cpu / report.elapsed:.0f}% of one core)" if cpu and report.elapsed else ""
        )
        lines.append(
            f"  agent: pid {report.agent_pid}, CPU {cpu if cpu is not None else '?'} s{share}, "
            f"exit status {report.agent_exit}"
        )
    return "\n".join(lines) + "\n"


def _progress_line(p: Progress) -> None:
    sys.stderr.write(
        f"\r  {p.elapsed:6.1f} s  sent {p.sent}  answered {p.completed}  ok {p.succeeded}  "
        f"timeouts {p.timeouts}  p99 {p.p99_ns / 1e6:.3f} ms   "
    )
    sys.stderr.flush()


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace, agent: list[str]) -> int:
    """Run ``fltemu bench``; returns the exit status."""
    config = config_from_args(parser, args, agent)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    if not config.agent:
        where = config.address or "a temporary socket (use --address to choose one)"
        print(
            f"fltemu bench: serving {config.port} on {where}; waiting "
            f"{config.connect_timeout:g} s for an agent",
            file=sys.stderr,
        )
    try:
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            report = runner.run(run_bench(config, _progress_line if show_progress else None))
    except BenchError as exc:
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
        title = f"fltemu bench {config.port}: {report.completed} messages"
        with open(args.plot, "w") as f:
            f.write(percentile_svg(report.latency, title))
        if not args.json:
            print(f"  latency plot: {args.plot}")
    return 0
