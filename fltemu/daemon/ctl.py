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


def format_ports(filters: tuple[FilterInfo, ...]) -> str:
    """The human table of ``fltemu ports``."""
    if not filters:
        return "no filters loaded\n"
    lines = []
    for flt in filters:
        lines.append(f"filter {flt.name} ({flt.state})")
        if not flt.ports:
            lines.append("  no ports")
        for port in flt.ports:
            lines.append(
                f"  {port.name}  {port.state}  connections {port.connection_count}/"
                f"{port.max_connections}"
            )
            for c in port.connections:
                lines.append(
                    f"    #{c.id} pid {c.pid} uid {c.uid} {c.state}: "
                    f"{c.pending_getters} pending gets, {c.blocked_senders} blocked sends, "
                    f"{c.awaiting_reply} awaiting reply; {c.messages_delivered} delivered, "
                    f"{c.messages_timed_out} timed out, {c.sends_from_user} sends from user"
                )
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
        out.write(f"disconnected {result.count} connection(s)\n")
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
