"""Binary helpers shared by the built-in samples: x64 sizes, Windows system time, bounded reads.

The samples' messages are the x64 layouts of Microsoft's headers, little-endian, padded as MSVC
pads them; each sample declares its own ``struct.Struct`` constants under the C names, with the
sizes as comments. Not here: the samples' protocols (``scanner``, ``minispy``, ``avscan``), where
their kernel events come from (``_sources``).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Final, TypeAlias

__all__ = [
    "EPOCH_1601_OFFSET_100NS",
    "HANDLE",
    "POINTER_BYTES",
    "TraceDecoder",
    "ULONG",
    "enum_name",
    "is_aligned",
    "pad",
    "read_u32",
    "read_u64",
    "round_to_size",
    "system_time_now",
]

#: sizeof(PVOID), sizeof(HANDLE), sizeof(ULONG_PTR) on x64: the only layout fltemu speaks.
POINTER_BYTES: Final = 8
#: ULONG: 4 bytes.
ULONG: Final = struct.Struct("<I")
#: HANDLE (a pointer-sized value on x64): 8 bytes.
HANDLE: Final = struct.Struct("<Q")
#: How ``fltemu trace`` shows a sample's messages: called with the event's kind and its payload
#: (the first bytes of it), it returns the message's fields in a line, or ``None`` when the
#: payload is not one of the sample's messages. A sample maps its port names to one in
#: ``TRACE_DECODERS``.
TraceDecoder: TypeAlias = Callable[[str, bytes], "str | None"]
#: 100-ns intervals from 1601-01-01 (the Windows system-time epoch) to 1970-01-01.
EPOCH_1601_OFFSET_100NS: Final = 116_444_736_000_000_000


def system_time_now() -> int:
    """KeQuerySystemTime: now, in 100-ns intervals since 1601-01-01 UTC.

    >>> system_time_now() > EPOCH_1601_OFFSET_100NS
    True
    """
    return time.time_ns() // 100 + EPOCH_1601_OFFSET_100NS


def is_aligned(address: int, alignment: int) -> bool:
    """IS_ALIGNED: is ``address`` a multiple of ``alignment`` (a power of two)?

    ``address`` may be just the low bits a MessageNotify gets as ``output_buffer_address``:
    the answer is the same for any alignment up to 256.

    >>> is_aligned(0x38, 8), is_aligned(0x3C, 8), is_aligned(0x3C, 4)
    (True, False, True)
    """
    return address & (alignment - 1) == 0


def round_to_size(length: int, alignment: int) -> int:
    """ROUND_TO_SIZE: ``length`` rounded up to a multiple of ``alignment`` (a power of two).

    >>> round_to_size(154, 8)
    160
    """
    return (length + alignment - 1) & ~(alignment - 1)


def read_u32(buffer: bytes, offset: int) -> int | None:
    """The ULONG at ``offset``, or ``None`` when the buffer ends before it does.

    >>> read_u32(b"\\x01\\x00\\x00\\x00", 0), read_u32(b"\\x01\\x00", 0)
    (1, None)
    """
    if offset < 0 or len(buffer) < offset + 4:
        return None
    value: int = ULONG.unpack_from(buffer, offset)[0]
    return value


def read_u64(buffer: bytes, offset: int) -> int | None:
    """The 64-bit little-endian value at ``offset``, or ``None`` when the buffer is too short."""
    if offset < 0 or len(buffer) < offset + 8:
        return None
    value: int = HANDLE.unpack_from(buffer, offset)[0]
    return value


def pad(data: bytes, size: int) -> bytes:
    """``data`` cut or zero-padded to exactly ``size`` bytes.

    >>> pad(b"ab", 4)
    b'ab\\x00\\x00'
    """
    return data[:size].ljust(size, b"\0")


def enum_name(cls: Callable[[int], object], value: int) -> str:
    """``value``'s name in the enum ``cls``, or the number when it has none."""
    try:
        return str(getattr(cls(value), "name", value))
    except ValueError:
        return str(value)
