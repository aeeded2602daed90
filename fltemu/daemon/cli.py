"""The ``fltemu`` command line: argument parsing only; the work is in ``runner``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from .. import __version__
from .._limits import DEFAULT_MAX_MESSAGE_BYTES
from ..errors import FltEmuError
from .loader import BUILTIN_FILTERS
from .logs import LOG_FORMATS, configure_logging
from .runner import DaemonConfig, LoopChoiceError, run
from .server import DEFAULT_SHUTDOWN_GRACE, SHUTDOWN_SLACK
from .trace import TRACE_KINDS

__all__ = ["build_parser", "main"]

_SERVE_EPILOG = """\
examples:
  fltemu serve                                  # built-in sample filters, default socket
  fltemu serve --filter echo --address /tmp/f.sock
  fltemu serve --filter mypkg.myfilter          # awaits mypkg.myfilter.setup(flt)
  fltemu serve --filter mypkg.myfilter:start    # awaits mypkg.myfilter.start(flt)
  fltemu serve --set scanner.source=dir:/tmp/scan --set scanner.extensions=doc,txt
  fltemu serve --quiet & fltemu wait --timeout 30   # in a script: go on once it is ready

The socket is --address, else $FLTEMU_SOCKET, else $XDG_RUNTIME_DIR/fltemu.sock, else
/tmp/fltemu-<uid>/fltemu.sock. Filter modules are imported from the current folder and
PYTHONPATH. One line "fltemu: listening on PATH ..." is printed once clients can connect (not
with --quiet); -v logs the start-up details too. SIGINT or SIGTERM shuts down cleanly: every
connection is disconnected and each DisconnectNotify runs; callbacks that have not returned
after --shutdown-grace are abandoned (and logged), so the daemon is gone within the grace plus
1 s. A second signal exits at once.
"""


def _octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 600") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (000-777)")
    return value


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _setting(text: str) -> tuple[str, str, str]:
    name_key, sep, value = text.partition("=")
    name, dot, key = name_key.rpartition(".")
    if not sep or not dot or not name or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not FILTER.KEY=VALUE")
    return name, key, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fltemu``."""
    parser = argparse.ArgumentParser(
        prog="fltemu",
        description="Windows Filter Manager communication ports, emulated: a daemon that plays "
        "the kernel side (FltCreateCommunicationPort, FltSendMessage) for user-mode agents "
        "that use fltlib's FilterConnectCommunicationPort and friends.",
    )
    parser.add_argument("--version", action="version", version=f"fltemu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the daemon in the foreground",
        description="Run the daemon in the foreground with the given filter modules.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--address", metavar="PATH", help="Unix socket path to listen on")
    serve.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="NAME|MODULE[:FUNC]",
        help="a built-in sample ({}) or a module whose setup(flt) creates ports; repeatable. "
        "Default: every built-in sample".format(", ".join(sorted(BUILTIN_FILTERS))),
    )
    serve.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        type=_setting,
        metavar="FILTER.KEY=VALUE",
        help="a setting for a filter module (flt.settings), e.g. --set scanner.source=dir:/tmp/in; "
        "repeatable",
    )
    serve.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: auto uses uvloop where it imports, else asyncio (default: auto); "
        "uvloop fails if uvloop is not installed",
    )
    serve.add_argument(
        "--log-level",
        default=None,
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default: INFO, DEBUG with -v, WARNING with --quiet); the daemon logs "
        "what filters and clients do, never the start-up details unless asked",
    )
    serve.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log the details too (filters loaded, connections, control commands): "
        "--log-level DEBUG",
    )
    serve.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print no ready line and log only warnings and errors",
    )
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text for people, json for log collectors: one JSON object per line with "
        "time, level, logger, message (default: text)",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metavar="N",
        help="largest message payload carried (default: %(default)s = 16 MiB); larger ones "
        "fail with STATUS_INSUFFICIENT_RESOURCES / 0x800705AA",
    )
    serve.add_argument(
        "--allow-uid",
        dest="allow_uids",
        action="append",
        default=[],
        type=_non_negative_int,
        metavar="UID",
        help="also admit this user to ports created with the default security (root and "
        "the daemon's user); repeatable",
    )
    serve.add_argument(
        "--allow-gid",
        dest="allow_gids",
        action="append",
        default=[],
        type=_non_negative_int,
        metavar="GID",
        help="also admit processes of this primary group to such ports; repeatable",
    )
    serve.add_argument(
        "--allow-everyone",
        action="store_true",
        help="admit any local process that can reach the socket to such ports (for containers "
        "whose shared volume is the trust boundary)",
    )
    serve.add_argument(
        "--ready-file",
        metavar="PATH",
        help="write the ready line to this file once clients can connect, removed at "
        "shutdown (for scripts that cannot read stdout; see also 'fltemu wait')",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_grace,
        default=DEFAULT_SHUTDOWN_GRACE,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, how long in all to wait for filter callbacks that have "
        "not returned before abandoning them (their callers get 0x80070006); the daemon is "
        f"gone within it plus {SHUTDOWN_SLACK:g} s (default: %(default)s, which fits "
        "docker stop's 10 s)",
    )
    _add_version(serve)
    serve.add_argument(
        "--socket-mode",
        type=_octal,
        default=0o600,
        metavar="MODE",
        help="permission bits of the socket file, octal (default: 600, only the daemon's "
        "user can connect; ports still check their own security)",
    )
    _add_control_commands(sub)
    _add_bench(sub)
    _add_wine(sub)
    from ..faults.command import add_parser as add_fault_commands

    add_fault_commands(sub)  # fltemu faults, record, replay
    for name in ("bench", "wine"):
        _add_version(sub.choices[name])
    return parser


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        type=_positive_int,
        metavar="N",
        help="closed loop: N messages in flight (default: 1)",
    )
    how.add_argument(
        "--rate", type=_positive_float, metavar="MSGS", help="open loop: messages per second"
    )
    bench.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="how long to send (default: 10 s, unless --count is given)",
    )
    bench.add_argument("--count", type=_positive_int, metavar="N", help="how many messages to send")
    bench.add_argument(
        "--stages",
        metavar="DURATION:TARGET,...",
        help="a schedule instead of --rate/--concurrency and --duration, each stage held in "
        "turn: 10s:1000/s,10s:4000/s (open loop, msg/s) or 5s:1,5s:16 (closed loop, in flight)",
    )
    bench.add_argument(
        "--warmup",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="load at the first target for this long before counting, left out of every "
        "figure (default: 0)",
    )
    what = bench.add_mutually_exclusive_group()
    what.add_argument(
        "--size",
        type=_non_negative_int,
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
        type=_non_negative_int,
        metavar="N",
        help="the kernel reply buffer: the agent must reply (default: no reply)",
    )
    bench.add_argument(
        "--timeout",
        type=_non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="FltSendMessage timeout per message (default: 5; 0 polls)",
    )
    bench.add_argument(
        "--max-connections",
        type=_positive_int,
        default=1,
        metavar="N",
        help="connections the port accepts; messages go round-robin (default: 1)",
    )
    bench.add_argument(
        "--connect-timeout",
        type=_positive_float,
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


_WINE_EPILOG = """\
examples:
  fltemu wine -- scanuser.exe                      # your agent, unchanged
  fltemu wine --address /tmp/f.sock -- agent.exe --workers 4
  fltemu bench '\\ScannerPort' --reply-length 1 -- fltemu wine -- scanuser.exe

Uses the fltlib.dll and fltemu.sys that the installed package ships; run from a checkout of
fltemu (or with FLTEMU_WINDOWS_SRC set), builds them from client/windows instead if needed
(make, mingw-w64). Creates the Wine prefix if needed, saying so on stderr (--prefix, else
$WINEPREFIX, else ~/.cache/fltemu/wine; headless, WINEDEBUG=-all), installs both there and
registers the driver as a kernel service, then runs the program with FLTEMU_SOCKET set to the
daemon's socket (--address, else $FLTEMU_SOCKET, else the default path). The program's stdin,
stdout, stderr and exit status are its own. Exit status 1 with a message when Wine, the
Windows side, mingw-w64 (for a build) or the daemon is missing, or when PROGRAM is not a
Windows program: a file that is not a .exe (no MZ header), a Linux program or script (run
those directly), a folder, or a name found neither in the current folder nor in the prefix's
C:\\windows\\system32 and C:\\windows. The program goes after '--'.
"""


def _add_wine(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wine = sub.add_parser(
        "wine",
        help="run a Windows agent .exe under Wine against the daemon",
        description="Run a Windows program that uses fltlib.dll (FilterConnectCommunicationPort "
        "and friends) under Wine, connected to fltemu's daemon.",
        epilog=_WINE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="fltemu wine [-h] [--address PATH] [--prefix DIR] [--build-dir DIR] "
        "[--no-daemon-check] -- PROGRAM [ARGS...]",
    )
    wine.add_argument("--address", metavar="PATH", help="the daemon's socket")
    wine.add_argument("--prefix", metavar="DIR", help="the Wine prefix to use (created if missing)")
    wine.add_argument(
        "--build-dir",
        metavar="DIR",
        help="where to build fltlib.dll and fltemu.sys from a checkout's sources "
        "(default: client/windows/build)",
    )
    wine.add_argument(
        "--daemon-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refuse to start when no daemon listens (default: on)",
    )


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a ratio such as 1.2") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError("must be >= 1 (1.2 accepts 20% worse)")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


_CONTROL_NOTE = """
Control commands talk to a running daemon over its socket (--address, else $FLTEMU_SOCKET,
else the default path) and are allowed only to root and the daemon's own user. Exit status:
0 on success, 1 when the daemon answers with a failure (or, for send, anything but
STATUS_SUCCESS) or cannot be reached, 2 for bad arguments.
"""


def _add_control_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def add(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog="examples:\n" + epilog + _CONTROL_NOTE,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--address", metavar="PATH", help="the daemon's socket")
        _add_version(p)
        return p

    status = add(
        "status",
        "say whether a daemon answers and is ready: its version, pid, socket and counts",
        "  fltemu status\n  fltemu status --json\n  fltemu status --address /run/fltemu/fltemu.sock"
        "   # a container health check\n",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of text")

    wait = add(
        "wait",
        "wait until a daemon is ready (listening, filters set up), for scripts and CI",
        "  fltemu serve & fltemu wait --timeout 30 && ./run-agent-tests\n"
        "  fltemu wait --address /run/fltemu/fltemu.sock --timeout 60\n",
    )
    wait.add_argument(
        "--timeout",
        type=_non_negative_float,
        metavar="SECONDS",
        help="give up after this long, with exit status 1 (default: wait forever)",
    )

    trace = add(
        "trace",
        "show the traffic between the kernel side and the agents, live, one line per event",
        "  fltemu trace                             # every port\n"
        "  fltemu trace '\\ScannerPort'              # one port\n"
        "  fltemu trace '\\ScannerPort' --connection 3 --type message,reply\n"
        "  fltemu trace --json | jq 'select(.kind == \"message_done\") | .latency'\n\n"
        "Events: connect, disconnect (pid, uid), send (FilterSendMessage), get\n"
        "(FilterGetMessage), message (FltSendMessage started, with its message id when a\n"
        "getter took it at once), deliver (a message that waited, taken by a getter: its id),\n"
        "message_done (its status, message id, reply size and latency), reply\n"
        "(FilterReplyMessage, by message id). Each shows the first\n"
        "bytes of its payload in hex and ASCII, and the built-in samples' messages decoded into\n"
        "their fields. A reader that cannot keep up loses events, and is told how many.\n",
    )
    trace.add_argument("port", metavar="PORT", nargs="?", default="", help="only this port")
    trace.add_argument(
        "--connection", type=_non_negative_int, metavar="ID", help="only this connection"
    )
    trace.add_argument(
        "--type",
        dest="kinds",
        type=_trace_kinds,
        default=(),
        metavar="KIND[,KIND...]",
        help="only these kinds of events (" + ", ".join(TRACE_KINDS) + ")",
    )
    trace.add_argument(
        "--bytes",
        dest="preview_bytes",
        type=_non_negative_int,
        default=32,
        metavar="N",
        help="payload bytes to show per event (default: 32; at most 4096)",
    )
    trace.add_argument(
        "--no-decode", action="store_true", help="do not decode the built-in samples' messages"
    )
    trace.add_argument("--json", action="store_true", help="one JSON object per event")
    trace.add_argument(
        "--count", type=_positive_int, metavar="N", help="stop after N events (start not counted)"
    )

    ports = add(
        "ports",
        "list filters, server ports and connections (pid, uid, pending getters and senders)",
        "  fltemu ports\n  fltemu ports --json | jq '.[].ports[].name'\n\n"
        "Connection columns: GETS pending FilterGetMessage calls, SENDS FltSendMessage calls\n"
        "waiting for a getter, AWAITING messages delivered and waiting for a reply, DELIVERED\n"
        "and TIMEOUTS kernel messages so far, USER_SENDS FilterSendMessage calls so far.\n",
    )
    ports.add_argument("--json", action="store_true", help="print JSON instead of a table")

    send = add(
        "send",
        "send a kernel message (FltSendMessage) to a client connected to PORT",
        "  fltemu send '\\ScannerPort' --hex 0400000000000000666f756c --reply-length 1\n"
        "  fltemu send '\\MyPort' --data hello --timeout 5\n"
        "  fltemu send '\\MyPort' --file message.bin --connection 3\n",
    )
    send.add_argument("port", metavar="PORT", help="server port name, e.g. '\\ScannerPort'")
    data = send.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="TEXT", help="the message as UTF-8 text")
    data.add_argument("--hex", metavar="HEX", help="the message as hex digits")
    data.add_argument("--file", metavar="PATH", help="the message is this file's content")
    send.add_argument(
        "--reply-length",
        type=_non_negative_int,
        metavar="N",
        help="expect a reply of up to N bytes (default: no reply)",
    )
    send.add_argument(
        "--timeout",
        type=_non_negative_float,
        metavar="SECONDS",
        help="give up after this long, delivery and reply together (default: wait forever; "
        "0 polls)",
    )
    send.add_argument(
        "--connection",
        type=_non_negative_int,
        metavar="ID",
        help="connection id from 'fltemu ports' (default: the port's oldest connection)",
    )
    send.add_argument("--json", action="store_true", help="print the result as JSON")

    disconnect = add(
        "disconnect",
        "close a connection from the kernel side (FltCloseClientPort)",
        "  fltemu disconnect '\\ScannerPort'        # every connection of the port\n"
        "  fltemu disconnect '\\ScannerPort' 3      # connection #3 only\n",
    )
    disconnect.add_argument("port", metavar="PORT", help="server port name")
    disconnect.add_argument(
        "connection", metavar="CONNECTION", nargs="?", type=_non_negative_int, help="connection id"
    )

    unload = add(
        "unload",
        "unload a filter (FltUnregisterFilter): its ports close, its connections disconnect",
        "  fltemu unload scanner\n",
    )
    unload.add_argument("filter", metavar="FILTER", help="filter name, as 'fltemu ports' shows")


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"fltemu {__version__}")


def _trace_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in TRACE_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event kind {', '.join(unknown)}; kinds: {', '.join(TRACE_KINDS)}"
        )
    return kinds


def _non_negative_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _subparsers(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fltemu`` console script and ``python -m fltemu``."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    agent: list[str] = []
    if "--" in arguments:  # fltemu bench ... -- AGENT COMMAND
        split = arguments.index("--")
        arguments, agent = arguments[:split], arguments[split + 1 :]
    if arguments[:1] == ["wine"] and not agent:
        # `fltemu wine agent.exe` (no --): say where the program goes, with wine's usage.
        args, extra = parser.parse_known_args(arguments)
        wine = _subparsers(parser).choices["wine"]
        if extra:
            options = shlex.join(arguments[1 : len(arguments) - len(extra)])
            wine.error(
                f"put the program after '--': fltemu wine {options + ' ' if options else ''}"
                f"-- {shlex.join(extra)}"
            )
        wine.error("fltemu wine needs the program to run after '--': fltemu wine -- agent.exe")
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in ("faults", "record", "replay"):
        from ..faults.command import run_command as run_fault_command

        return run_fault_command(args, agent)
    if agent and args.command not in ("bench", "wine"):
        parser.error("'-- COMMAND' is only for fltemu bench and fltemu wine")
    if args.command == "wine":
        from ..wine import run_command as run_wine

        return run_wine(
            agent,
            address=args.address,
            prefix=args.prefix,
            build_dir=args.build_dir,
            daemon_check=args.daemon_check,
        )
    if args.command == "bench":
        from ..bench.command import run_command as run_bench_command

        return run_bench_command(_subparsers(parser).choices["bench"], args, agent)
    # Mistakes found after parsing are reported with the sub-command's usage, not fltemu's.
    command_parser = _subparsers(parser).choices[args.command]
    if args.command != "serve":
        from .ctl import run_command

        return run_command(command_parser, args)
    level = args.log_level or ("DEBUG" if args.verbose else "WARNING" if args.quiet else "INFO")
    configure_logging(level, args.log_format)
    filters = tuple(args.filters) or tuple(sorted(BUILTIN_FILTERS))
    settings: dict[str, dict[str, str]] = {}
    for name, key, value in args.settings:
        settings.setdefault(name, {})[key] = value
    config = DaemonConfig(
        address=args.address,
        filters=filters,
        settings=settings,
        loop=args.loop,
        max_message_bytes=args.max_message_bytes,
        socket_mode=args.socket_mode,
        allow_uids=tuple(args.allow_uids),
        allow_gids=tuple(args.allow_gids),
        allow_everyone=args.allow_everyone,
        announce=(lambda line: None) if args.quiet else (lambda line: print(line, flush=True)),
        ready_file=args.ready_file,
        shutdown_grace=args.shutdown_grace,
    )
    try:
        run(config)
    except (FltEmuError, LoopChoiceError, OSError) as exc:
        print(f"fltemu: error: {exc}", file=sys.stderr)
        return 1
    return 0
