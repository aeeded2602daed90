"""``fltemu bench``'s arguments; the command itself is ``fltemu.bench.command``."""

from __future__ import annotations

import argparse

from ._args import (
    Subparsers,
    add_version,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

__all__ = ["add_parser"]


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a ratio such as 1.2") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError("must be >= 1 (1.2 accepts 20% worse)")
    return value


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``fltemu`` parser."""
    bench = sub.add_parser(
        "bench",
        help="load-test an agent: kernel messages at a port fltemu hosts for it",
        description="Host PORT on a daemon of its own, start AGENT (or wait for one to "
        "connect), then send kernel messages (FltSendMessage) at it, closed loop (N in flight) "
        "or open loop (a fixed rate), and report throughput, latency percentiles, timeouts and "
        "statuses. Latency is from sending to the answer (open loop: from the scheduled time).",
        epilog="""examples:
  fltemu bench '\\ScannerPort' --size 1032 --reply-length 1 -- python examples/scanner_agent.py
  fltemu bench '\\MyPort' --rate 2000 --duration 30 --reply-length 4 --plot latency.svg -- ./agent
  fltemu bench '\\MyPort' --concurrency 64 --count 100000 --json --address /tmp/b.sock
  fltemu bench '\\MyPort' --warmup 2 --stages 10s:1000/s,10s:4000/s --hdr run.hgrm -- ./agent
  fltemu bench '\\MyPort' --reply-length 4 --fail-if 'p99>5ms' --fail-if 'timeouts>0' -- ./agent
  fltemu bench '\\MyPort' --reply-length 4 --json -- ./agent > base.json   # then, in CI:
  fltemu bench '\\MyPort' --reply-length 4 --baseline base.json --max-regression 1.2 -- ./agent

A message is answered when the agent replied (or, with no reply asked, took it); throughput
and percentiles count answered messages only. Timeouts and other statuses are counted beside
them, with the messages still in flight when the run stopped: sent = answered + not
answered + in flight. In open loop, latency counts from each message's scheduled time, and
a message still in flight at the end is counted in the percentiles at its age (it is at
least that slow); a warning says when fewer than 90% of the offered messages were answered.
--warmup loads the agent first without counting; --stages runs a schedule of targets (a
rate, or messages in flight), each reported on its own line; --json has a per-second series.

The agent is started under setsid (a process group of its own) with FLTEMU_SOCKET set to
the bench's socket and, when fltemu runs in a virtual environment, that environment first on
PATH (so `python` is the one with fltuser). Its output goes to a temporary file; the last
lines are shown when it fails. The CPU time of its processes during the run is reported,
each by name: every process of its session (sampled every 0.2 s, so those that exit during
the run count too) and, for a Windows agent under `fltemu wine`, the Wine processes of its
prefix that serve it (wineserver, winedevice.exe, services.exe ...).
Without an agent command, start your agent yourself against the socket printed on stderr.

After the run, unless --no-limit-check, fltemu measures its own limit: for about 1 s, the same
mode, concurrency (open loop: 4x the rate), message and reply length against its built-in
instant-reply agent in a process of its own, over the same socket, and warns when your
agent's throughput is within 2x of it, where the figures may be fltemu's, not your agent's.
When the agent command is `fltemu wine [OPTIONS] -- PROGRAM`, the figures are the agent's
speed under Wine, and the check measures the Windows side's own ceiling instead: a Windows
agent that answers at once (benchagent.exe get, built by make -C client/windows agents if
needed: overlapped gets on an I/O completion port) under the same fltemu wine options.

--fail-if CONDITION fails the run when CONDITION holds: throughput<N (answered msg/s),
pNN>T, max>T or mean>T (a latency: 2ms, 500us, 1s; a bare number is ms), timeouts>N or
failures>N (a count, or with % a share of sent; failures are every message not answered).
--baseline FILE compares with a report saved by --json: the run fails when its throughput
is below the baseline's divided by --max-regression, or its p50 or p99 above the
baseline's times it, and says which settings differ from the baseline's.

Ctrl-C stops the run: the report of what ran is printed (and --json, --plot written), then
fltemu bench exits 130; a second Ctrl-C quits at once. A run that ended before its
--duration or --count (the agent gone, Ctrl-C) says so in its headline.

Exit status: 0 when the run completed, something was answered and every check passed; 1
when no run could be made (the agent could not be started, none connected, it exited
before connecting) or the run measured no working agent (the agent crashed, exited or
disconnected during the run, or not one message was answered); 2 for bad arguments; 3 when
a --fail-if threshold or the --baseline comparison failed; 130 after Ctrl-C.
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("port", metavar="PORT", help="the port name the agent connects to")
    bench.add_argument("--address", metavar="PATH", help="socket to serve on (default: temporary)")
    how = bench.add_mutually_exclusive_group()
    how.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="N",
        help="closed loop: N messages in flight (default: 1)",
    )
    how.add_argument(
        "--rate", type=positive_float, metavar="MSGS", help="open loop: messages per second"
    )
    bench.add_argument(
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        help="how long to send (default: 10 s, unless --count is given)",
    )
    bench.add_argument("--count", type=positive_int, metavar="N", help="how many messages to send")
    bench.add_argument(
        "--stages",
        metavar="DURATION:TARGET,...",
        help="a schedule instead of --rate/--concurrency and --duration, each stage held in "
        "turn: 10s:1000/s,10s:4000/s (open loop, msg/s) or 5s:1,5s:16 (closed loop, in flight)",
    )
    bench.add_argument(
        "--warmup",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="load at the first target for this long before counting, left out of every "
        "figure (default: 0)",
    )
    what = bench.add_mutually_exclusive_group()
    what.add_argument(
        "--size",
        type=non_negative_int,
        default=64,
        metavar="BYTES",
        help="message size (default: 64), zero-filled unless --random",
    )
    what.add_argument("--file", metavar="PATH", help="send this file's content as the message")
    what.add_argument("--hex", metavar="HEX", help="send these bytes as the message")
    bench.add_argument("--random", action="store_true", help="random message bytes (with --size)")
    bench.add_argument("--seed", type=int, default=1, help="seed for --random (default: 1)")
    bench.add_argument(
        "--reply-length",
        type=non_negative_int,
        metavar="N",
        help="the kernel reply buffer: the agent must reply (default: no reply)",
    )
    bench.add_argument(
        "--timeout",
        type=non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="FltSendMessage timeout per message (default: 5; 0 polls)",
    )
    bench.add_argument(
        "--max-connections",
        type=positive_int,
        default=1,
        metavar="N",
        help="connections the port accepts; messages go round-robin (default: 1)",
    )
    bench.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the agent to connect (default: 30)",
    )
    bench.add_argument(
        "--allow-everyone",
        action="store_true",
        help="admit any local user to the port (default: root and your user)",
    )
    bench.add_argument(
        "--percentiles",
        default="50,90,99,99.9",
        metavar="P,P,...",
        help="the latency percentiles shown (default: 50,90,99,99.9; max is always shown)",
    )
    bench.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON, with a per-second series and each stage",
    )
    bench.add_argument(
        "--hdr",
        metavar="FILE",
        help="write the latency as HdrHistogram's percentile distribution (.hgrm, ms), as "
        "wrk2 prints it and HdrHistogram's plotter reads it",
    )
    bench.add_argument(
        "--plot",
        metavar="FILE.svg",
        help="write a latency percentile plot (SVG; checked writable before the run)",
    )
    bench.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="CONDITION",
        help="exit 3 when CONDITION holds, e.g. 'p99>2ms', 'throughput<5000', "
        "'timeouts>0.1%%', 'failures>0'; repeatable",
    )
    bench.add_argument(
        "--baseline",
        metavar="FILE",
        help="a report saved with --json: exit 3 when throughput, p50 or p99 regressed "
        "beyond --max-regression",
    )
    bench.add_argument(
        "--max-regression",
        type=_ratio,
        default=1.2,
        metavar="RATIO",
        help="with --baseline: the worst accepted ratio, throughput down or latency up "
        "(default: 1.2)",
    )
    bench.add_argument(
        "--limit-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the run, measure what fltemu alone sustains with the same settings (about "
        "1.5 s; under fltemu wine, what the Windows side sustains) and warn when the agent is "
        "within 2x of it (default: on)",
    )
    bench.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a live progress line on stderr (default: when stderr is a terminal)",
    )
    bench.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (default: auto)",
    )

    add_version(bench)
    return bench
