"""The control sub-commands of the CLI: build the request, call the daemon, print the answer.

Not here: argument definitions (``cli``), the daemon side (``control``).
"""

from __future__ import annotations

import argparse
import binascii
import sys
import time
from typing import TextIO

import msgspec

from ..status import NtStatus
from ..wire import PROTOCOL_VERSION, Control, ControlResult, DaemonInfo, FilterInfo, Trace
from .control import STATUS_TIMEOUT_SECONDS, ControlError, call, trace, wait_ready
from .tracefmt import format_event, json_event

__all__ = ["format_ports", "format_status", "run_command"]


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
