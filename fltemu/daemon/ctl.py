"""The control sub-commands of the CLI: build the request, call the daemon, print the answer.

Not here: argument definitions (``cli``), the daemon side (``control``).
"""

from __future__ import annotations

import argparse
import binascii
import sys
from typing import TextIO

import msgspec

from ..status import NtStatus
from ..wire import PROTOCOL_VERSION, Control, ControlResult, FilterInfo
from .control import ControlError, call

__all__ = ["format_ports", "run_command"]


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


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run one control sub-command; returns the exit status."""
    request = _request(parser, args)
    try:
        result = call(request, args.address)
    except ControlError as exc:
        print(f"fltemu: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return _print_result(args, result, sys.stdout)
