"""``fltemu serve``: run the daemon in the foreground with the given filter modules.

Not here: the daemon's run (``fltemu.daemon.runner``), loading filters (``fltemu.daemon.loader``).
"""

from __future__ import annotations

import argparse
import sys

from .._limits import DEFAULT_MAX_MESSAGE_BYTES
from ..daemon.loader import BUILTIN_FILTERS
from ..daemon.logs import LOG_FORMATS, configure_logging
from ..daemon.runner import DaemonConfig, LoopChoiceError, run
from ..daemon.server import DEFAULT_SHUTDOWN_GRACE, SHUTDOWN_SLACK
from ..errors import FltEmuError
from ._args import Subparsers, add_version, non_negative_int, positive_int

__all__ = ["add_parser", "run_command"]

_EPILOG = """\
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


def _setting(text: str) -> tuple[str, str, str]:
    name_key, sep, value = text.partition("=")
    name, dot, key = name_key.rpartition(".")
    if not sep or not dot or not name or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not FILTER.KEY=VALUE")
    return name, key, value


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``fltemu`` parser."""
    serve = sub.add_parser(
        "serve",
        help="run the daemon in the foreground",
        description="Run the daemon in the foreground with the given filter modules.",
        epilog=_EPILOG,
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
        type=positive_int,
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
        type=non_negative_int,
        metavar="UID",
        help="also admit this user to ports created with the default security (root and "
        "the daemon's user); repeatable",
    )
    serve.add_argument(
        "--allow-gid",
        dest="allow_gids",
        action="append",
        default=[],
        type=non_negative_int,
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
    add_version(serve)
    serve.add_argument(
        "--socket-mode",
        type=_octal,
        default=0o600,
        metavar="MODE",
        help="permission bits of the socket file, octal (default: 600, only the daemon's "
        "user can connect; ports still check their own security)",
    )
    return serve


def run_command(args: argparse.Namespace) -> int:
    """Run the daemon until SIGINT or SIGTERM; 0 after a clean shutdown, 1 when it could
    not start (the reason on stderr)."""
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
