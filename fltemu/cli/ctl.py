"""The control sub-commands (status, wait, trace, ports, send, disconnect, unload): their
arguments; build the request, call the daemon, print the answer.

Not here: the connection (``fltuser.control``), the daemon side (``fltemu.daemon.control``).
"""

from __future__ import annotations

import argparse
import binascii
import sys
import time
from typing import TextIO

import msgspec

from fltuser.control import STATUS_TIMEOUT_SECONDS, ControlError, call, trace, wait_ready

from ..status import NtStatus
from ..wire import (
    PROTOCOL_VERSION,
    TRACE_KINDS,
    Control,
    ControlResult,
    DaemonInfo,
    FilterInfo,
    Trace,
)
from ._args import Subparsers, add_version, non_negative_float, non_negative_int, positive_int
from .tracefmt import format_event, json_event

__all__ = ["add_parsers", "format_ports", "format_status", "run_command"]


_CONTROL_NOTE = """
Control commands talk to a running daemon over its socket (--address, else $FLTEMU_SOCKET,
else the default path) and are allowed only to root and the daemon's own user. Exit status:
0 on success, 1 when the daemon answers with a failure (or, for send, anything but
STATUS_SUCCESS) or cannot be reached, 2 for bad arguments.
"""


def add_parsers(sub: Subparsers) -> dict[str, argparse.ArgumentParser]:
    """Add the control commands (status, wait, trace, ports, send, disconnect, unload)."""

    def add(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog="examples:\n" + epilog + _CONTROL_NOTE,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--address", metavar="PATH", help="the daemon's socket")
        add_version(p)
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
        type=non_negative_float,
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
        "--connection", type=non_negative_int, metavar="ID", help="only this connection"
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
        type=non_negative_int,
        default=32,
        metavar="N",
        help="payload bytes to show per event (default: 32; at most 4096)",
    )
    trace.add_argument(
        "--no-decode", action="store_true", help="do not decode the built-in samples' messages"
    )
    trace.add_argument("--json", action="store_true", help="one JSON object per event")
    trace.add_argument(
        "--count", type=positive_int, metavar="N", help="stop after N events (start not counted)"
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
        type=non_negative_int,
        metavar="N",
        help="expect a reply of up to N bytes (default: no reply)",
    )
    send.add_argument(
        "--timeout",
        type=non_negative_float,
        metavar="SECONDS",
        help="give up after this long, delivery and reply together (default: wait forever; "
        "0 polls)",
    )
    send.add_argument(
        "--connection",
        type=non_negative_int,
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
        "connection", metavar="CONNECTION", nargs="?", type=non_negative_int, help="connection id"
    )

    unload = add(
        "unload",
        "unload a filter (FltUnregisterFilter): its ports close, its connections disconnect",
        "  fltemu unload scanner\n",
    )
    unload.add_argument("filter", metavar="FILTER", help="filter name, as 'fltemu ports' shows")
    return {
        "status": status,
        "wait": wait,
        "trace": trace,
        "ports": ports,
        "send": send,
        "disconnect": disconnect,
        "unload": unload,
    }


def _trace_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in TRACE_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event kind {', '.join(unknown)}; kinds: {', '.join(TRACE_KINDS)}"
        )
    return kinds


def _message_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> bytes:
    if args.data is not None:
        return str(args.data).encode()
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
    return b""


def _request(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Control:
    command = args.command
    if command == "ports":
        return Control(PROTOCOL_VERSION, "ports")
    if command == "send":
        return Control(
            PROTOCOL_VERSION,
            "send",
            args.port,
            args.connection,
            _message_data(parser, args),
            args.reply_length,
            args.timeout,
        )
    if command == "disconnect":
        return Control(PROTOCOL_VERSION, "disconnect", args.port, args.connection)
    return Control(PROTOCOL_VERSION, "unload", args.filter)


def _table(rows: list[tuple[object, ...]]) -> list[str]:
    """Left-aligned columns, each as wide as its widest cell, two spaces apart."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


#: The connection table's columns; one word each, so that ``awk`` can pick them.
_CONNECTION_COLUMNS = (
    "ID PORT PID UID STATE GETS SENDS AWAITING DELIVERED TIMEOUTS USER_SENDS".split()
)


def format_ports(filters: tuple[FilterInfo, ...]) -> str:
    """The human table of ``fltemu ports``: one row per port, then one per connection."""
    if not filters:
        return "no filters loaded\n"
    ports: list[tuple[object, ...]] = [("FILTER", "PORT", "STATE", "CONNECTIONS")]
    connections: list[tuple[object, ...]] = [tuple(_CONNECTION_COLUMNS)]
    for flt in filters:
        name = flt.name if flt.state == "registered" else f"{flt.name} ({flt.state})"
        if not flt.ports:
            ports.append((name, "-", "-", "-"))
        for port in flt.ports:
            count = f"{port.connection_count}/{port.max_connections}"
            ports.append((name, port.name, port.state, count))
            connections.extend(
                (
                    f"#{c.id}",
                    port.name,
                    c.pid,
                    c.uid,
                    c.state,
                    c.pending_getters,
                    c.blocked_senders,
                    c.awaiting_reply,
                    c.messages_delivered,
                    c.messages_timed_out,
                    c.sends_from_user,
                )
                for c in port.connections
            )
    lines = _table(ports)
    if len(connections) > 1:
        lines += ["", *_table(connections)]
    return "\n".join(lines) + "\n"


def _print_result(args: argparse.Namespace, result: ControlResult, out: TextIO) -> int:
    status = NtStatus(result.status)
    if args.command == "ports" and status == NtStatus.STATUS_SUCCESS:
        if args.json:
            out.write(msgspec.json.format(msgspec.json.encode(result.filters)).decode() + "\n")
        else:
            out.write(format_ports(result.filters))
        return 0
    if args.command == "send":
        if args.json:
            document = {
                "status": int(status),
                "status_name": status.name,
                "reply_hex": None if result.reply is None else result.reply.hex(),
                "detail": result.message,
            }
            out.write(msgspec.json.encode(document).decode() + "\n")
        else:
            out.write(f"status: {status}\n")
            if result.reply is not None:
                text = result.reply.decode("ascii", "replace")
                printable = "".join(ch if ch.isprintable() else "." for ch in text)
                out.write(f"reply: {len(result.reply)} bytes: {result.reply.hex()}  {printable}\n")
            if result.message and status != NtStatus.STATUS_SUCCESS:
                out.write(f"detail: {result.message}\n")
        return 0 if status == NtStatus.STATUS_SUCCESS else 1
    if status != NtStatus.STATUS_SUCCESS:
        print(f"fltemu: {status}: {result.message}", file=sys.stderr)
        return 1
    if args.command == "disconnect":
        if result.count == 0:
            out.write(f"'{args.port}' has no connection to disconnect\n")
        else:
            plural = "" if result.count == 1 else "s"
            out.write(f"disconnected {result.count} connection{plural}\n")
    elif result.message:
        out.write(result.message + "\n")
    return 0


def format_status(info: DaemonInfo) -> str:
    """The text of ``fltemu status``."""
    state = "ready" if info.ready else "starting (filters not set up yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started))
    return (
        f"fltemu {info.version} daemon on {info.address}: {state}\n"
        f"pid {info.pid}, uid {info.uid}, loop {info.loop}, listening since {since}\n"
        f"{info.filters} filters, {info.ports} ports, {info.connections} connections\n"
    )


def _status(args: argparse.Namespace, out: TextIO) -> int:
    try:
        result = call(Control(PROTOCOL_VERSION, "status"), args.address, STATUS_TIMEOUT_SECONDS)
    except ControlError as exc:
        print(f"fltemu: error: {exc}", file=sys.stderr)
        return 1
    if result.daemon is None:
        print(f"fltemu: {NtStatus(result.status)}: {result.message}", file=sys.stderr)
        return 1
    if args.json:
        out.write(msgspec.json.encode(result.daemon).decode() + "\n")
    else:
        out.write(format_status(result.daemon))
    return 0 if result.daemon.ready else 1


def _wait(args: argparse.Namespace, out: TextIO) -> int:
    try:
        result = wait_ready(args.address, args.timeout)
    except TimeoutError as exc:
        print(f"fltemu: error: no daemon ready after {args.timeout:g} s: {exc}", file=sys.stderr)
        return 1
    except ControlError as exc:
        print(f"fltemu: error: {exc}", file=sys.stderr)
        return 1
    assert result.daemon is not None
    out.write(f"fltemu: daemon ready on {result.daemon.address}\n")
    return 0


def _trace(args: argparse.Namespace, out: TextIO) -> int:
    request = Trace(PROTOCOL_VERSION, args.port, args.connection, args.kinds, args.preview_bytes)
    seen = 0
    try:
        for event in trace(request, args.address):
            if args.json:
                out.write(json_event(event) + "\n")
            else:
                out.write(format_event(event, decode=not args.no_decode) + "\n")
            out.flush()
            if event.kind != "start":
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
    except ControlError as exc:
        print(f"fltemu: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run one control sub-command; returns the exit status."""
    out = sys.stdout
    try:
        if args.command == "status":
            return _status(args, out)
        if args.command == "wait":
            return _wait(args, out)
        if args.command == "trace":
            return _trace(args, out)
    except KeyboardInterrupt:
        return 130
    request = _request(parser, args)
    try:
        result = call(request, args.address)
    except ControlError as exc:
        print(f"fltemu: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return _print_result(args, result, sys.stdout)
