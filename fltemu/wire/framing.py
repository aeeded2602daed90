"""Length-prefixed framing over a receive buffer, and the size limits.

A frame is a 4-byte little-endian unsigned length followed by that many bytes of msgpack.
The reader decodes every complete frame of a read in one pass and copies only a trailing
partial frame, so the common case (whole frames per read) copies nothing twice.
Not here: which messages are legal when (``connection``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

import msgspec

from .._limits import DEFAULT_MAX_MESSAGE_BYTES
from ..errors import RemoteProtocolError
from ..status import NtStatus

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FRAME_HEADER_BYTES",
    "FRAME_OVERHEAD_BYTES",
    "FrameReader",
    "max_frame_bytes",
    "write_frame",
]

#: Bytes of the length prefix.
FRAME_HEADER_BYTES: Final = 4

#: Headroom of a frame beyond its payload: the msgpack array, tag and integer fields take
#: under 64 bytes, and a Connect carries a context of at most 65535 bytes (a WORD, §3.1) and a
#: port name of at most 32767 UTF-16 units (a UNICODE_STRING), under 100 KiB in UTF-8.
FRAME_OVERHEAD_BYTES: Final = 256 * 1024

_HEADER: Final = struct.Struct("<I")


def max_frame_bytes(max_message_bytes: int) -> int:
    """The largest frame (without its length prefix) for a given payload limit."""
    return max_message_bytes + FRAME_OVERHEAD_BYTES


def write_frame(encoder: msgspec.msgpack.Encoder, message: Any, out: bytearray) -> int:
    """Append one frame holding ``message`` to ``out``; return the frame's payload size."""
    start = len(out)
    out += b"\0\0\0\0"
    encoder.encode_into(message, out, -1)
    size = len(out) - start - FRAME_HEADER_BYTES
    _HEADER.pack_into(out, start, size)
    return size


class FrameReader:
    """Splits a byte stream into frames and decodes each with ``decode``.

    ``feed`` decodes every complete frame it can and hands each message to ``emit``; a
    decoding failure is raised after the messages before it were emitted. Bytes after the
    last complete frame stay buffered for the next ``feed``; after a failure nothing does.
    """

    __slots__ = ("_buf", "_decode", "max_frame_bytes")

    def __init__(self, decode: Callable[[Any], Any], max_frame_bytes: int) -> None:
        self._buf = bytearray()
        self._decode = decode
        self.max_frame_bytes = max_frame_bytes

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete frame are waiting."""
        return len(self._buf)

    def clear(self) -> None:
        """Drop the incomplete frame, and its memory: the stream ended or cannot go on."""
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview, emit: Callable[[Any], None]) -> None:
        """Consume ``data``; call ``emit`` with each decoded message in order.

        Raises:
            RemoteProtocolError: a frame is larger than the limit or does not decode.
        """
        buf = self._buf
        if buf:
            buf += data
            source: bytes | bytearray | memoryview = buf
        else:
            source = data
        pos = 0
        try:
            with memoryview(source) as view:
                end_of_data = len(view)
                limit = self.max_frame_bytes
                decode = self._decode
                while end_of_data - pos >= FRAME_HEADER_BYTES:
                    (size,) = _HEADER.unpack_from(view, pos)
                    if size > limit:
                        raise RemoteProtocolError(
                            f"frame of {size} bytes is over the limit of {limit} bytes",
                            status_hint=NtStatus.STATUS_INSUFFICIENT_RESOURCES,
                        )
                    start = pos + FRAME_HEADER_BYTES
                    end = start + size
                    if end > end_of_data:
                        break
                    try:
                        message = decode(view[start:end])
                    # RecursionError: a body nested thousands deep (msgspec decodes the
                    # ignored trailing elements of a message too).
                    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
                        # DecodeError covers ValidationError (types, ranges, unknown tags);
                        # a str field with invalid UTF-8 raises UnicodeDecodeError instead.
                        raise RemoteProtocolError(f"malformed frame: {exc}") from exc
                    pos = end
                    emit(message)
        except RemoteProtocolError:
            # The stream cannot be resynchronised: keep none of the refused frame (an
            # oversize one could otherwise pin a whole read's worth of memory).
            pos = len(source)
            raise
        finally:
            if buf:
                del buf[:pos]
            elif pos < len(source):
                self._buf = bytearray(memoryview(source)[pos:])
