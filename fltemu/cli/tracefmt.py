"""How ``fltemu trace`` prints events: one line each, a hex/ASCII preview, and the fields of
the built-in samples' messages, as each sample decodes them (its ``TRACE_DECODERS``).

Not here: collecting the events (``fltemu.daemon.trace``), the connection (``fltuser.control``).
"""

from __future__ import annotations

import datetime
import functools
import importlib
import struct
from collections.abc import Callable
from typing import Final

import msgspec

from ..daemon.loader import BUILTIN_FILTERS
from ..status import NtStatus
from ..wire import TraceEvent

__all__ = ["decode_sample", "format_event", "hex_preview", "json_event"]

#: Bytes per line of the hex preview.
_HEX_LINE_BYTES: Final = 16
#: Lines of hex preview per event (the rest is left out, with its size said).
_HEX_LINES: Final = 2


def _status(value: int | None) -> str:
    if value is None:
        return "-"
    status = NtStatus(value)
    return status.name or f"{value:#010x}"


def _bytes(n: int | None) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _what(event: TraceEvent) -> str:
    kind = event.kind
    if kind == "connect":
        return (
            f"FilterConnectCommunicationPort: {_status(event.status)}, context {_bytes(event.size)}"
        )
    if kind == "disconnect":
        return f"disconnected: {event.text}"
    if kind == "send":
        return (
            f"FilterSendMessage {_bytes(event.size)} in, {_bytes(event.reply_size)} out "
            f"(buffer {event.buffer}): {_status(event.status)} in {_duration(event.latency)}"
        )
    if kind == "get":
        failed = "" if event.status is None else f": {_status(event.status)}"
        return f"FilterGetMessage with a {event.buffer}-byte buffer{failed}"
    if kind == "message":
        ident = f" id {event.message_id}" if event.message_id else ""
        reply = "no reply" if event.buffer is None else f"reply up to {_bytes(event.buffer)}"
        timeout = "no timeout" if event.timeout is None else f"timeout {event.timeout:g} s"
        waiting = f", {event.text}" if event.text else ""
        return f"FltSendMessage{ident} {_bytes(event.size)}, {reply}, {timeout}{waiting}"
    if kind == "deliver":
        ident = f"id {event.message_id}" if event.message_id else "(no reply: no id)"
        return (
            f"FltSendMessage {ident} {_bytes(event.size)}: taken by a FilterGetMessage after "
            f"{_duration(event.latency)}"
        )
    if kind == "message_done":
        ident = f" id {event.message_id}" if event.message_id else ""
        reply = "" if event.reply_size is None else f", reply {_bytes(event.reply_size)}"
        return (
            f"FltSendMessage{ident} returned {_status(event.status)}{reply} after "
            f"{_duration(event.latency)}"
        )
    if kind == "reply":
        return (
            f"FilterReplyMessage id {event.message_id}, {_bytes(event.size)}, status "
            f"{_status(event.reply_status)}: returned {_status(event.status)}"
        )
    return event.text


def hex_preview(data: bytes, total: int) -> list[str]:
    """Up to two lines of ``offset  hex  |ascii|``, and how much was left out."""
    lines = []
    shown = data[: _HEX_LINE_BYTES * _HEX_LINES]
    for offset in range(0, len(shown), _HEX_LINE_BYTES):
        chunk = shown[offset : offset + _HEX_LINE_BYTES]
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{offset:04x}  {chunk.hex(' '):<47}  |{text}|")
    if total > len(shown):
        lines.append(f"      ... {_bytes(total - len(shown))} more")
    return lines


@functools.cache
def _decoders() -> dict[str, Callable[[str, bytes], str | None]]:
    # Each built-in sample says how its messages read (its TRACE_DECODERS); they are imported
    # by name, as the daemon loads them, and only when a trace shows a message.
    decoders: dict[str, Callable[[str, bytes], str | None]] = {}
    for module in BUILTIN_FILTERS.values():
        decoders.update(getattr(importlib.import_module(module), "TRACE_DECODERS", {}))
    return decoders


def decode_sample(event: TraceEvent) -> str | None:
    """The fields of a built-in sample's message, when the event carries one."""
    if not event.data:
        return None
    decoder = _decoders().get(event.port)
    if decoder is None:
        return None
    try:
        return decoder(event.kind, event.data)
    except (struct.error, ValueError):
        return None


def _clock(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime("%H:%M:%S.%f")


def format_event(event: TraceEvent, *, preview: bool = True, decode: bool = True) -> str:
    """The lines ``fltemu trace`` prints for one event (no trailing newline)."""
    if event.kind == "dropped":
        return f"{_clock(event.time)}  *** {event.count} events dropped: this reader is too slow"
    if event.kind == "start":
        return f"{_clock(event.time)}  tracing {event.text} (Ctrl-C to stop)"
    who = f"#{event.connection}" if event.connection else "-"
    process = f"pid {event.pid} uid {event.uid}" if event.pid is not None else "pid ?"
    lines = [
        f"{_clock(event.time)}  {event.port}  {who}  {process}  {event.kind:<12}  {_what(event)}"
    ]
    if decode:
        fields = decode_sample(event)
        if fields is not None:
            lines.append("    " + fields)
    if preview and event.data:
        total = event.size if event.kind != "message_done" else (event.reply_size or 0)
        lines.extend("    " + line for line in hex_preview(event.data, max(total, len(event.data))))
    return "\n".join(lines)


def json_event(event: TraceEvent) -> str:
    """One JSON object: the event's fields, ``data`` as hex, ``status_name``, and the
    decoded sample fields (``decoded``) when there are some."""
    document = msgspec.structs.asdict(event)
    document["data"] = event.data.hex()
    document["status_name"] = None if event.status is None else _status(event.status)
    decoded = decode_sample(event)
    if decoded is not None:
        document["decoded"] = decoded
    return msgspec.json.encode(document).decode()
