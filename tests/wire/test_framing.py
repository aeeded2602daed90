"""Framing: the length-prefixed FrameReader and write_frame, fed whole, byte by byte and split.

No event loop: bytes go in, decoded messages come out through ``emit``.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest

from fltemu._limits import DEFAULT_MAX_MESSAGE_BYTES, MAX_CONTEXT_BYTES
from fltemu.errors import RemoteProtocolError
from fltemu.status import NtStatus
from fltemu.wire import (
    FRAME_HEADER_BYTES,
    FRAME_OVERHEAD_BYTES,
    Connect,
    FrameReader,
    GetCancel,
    KernelMessage,
    Role,
    SendRequest,
    UserMessage,
    WireConnection,
    max_frame_bytes,
    write_frame,
)
from tests.helpers import frame, raw_frame
from tests.wire.test_messages import USER_TYPES, WIRE_CASES, _case_id

LIMIT = max_frame_bytes(DEFAULT_MAX_MESSAGE_BYTES)


def _reader(message: Any = None, limit: int = LIMIT) -> FrameReader:
    union = UserMessage if message is None or isinstance(message, USER_TYPES) else KernelMessage
    return FrameReader(msgspec.msgpack.Decoder(union).decode, limit)


class Sink(list[Any]):
    """Collects what the reader emits."""

    def take(self) -> list[Any]:
        out = list(self)
        self.clear()
        return out


def test_constants() -> None:
    assert FRAME_HEADER_BYTES == 4
    assert DEFAULT_MAX_MESSAGE_BYTES == 16 * 1024 * 1024
    assert max_frame_bytes(0) == FRAME_OVERHEAD_BYTES
    assert max_frame_bytes(1000) == 1000 + FRAME_OVERHEAD_BYTES


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_whole_frame(case: tuple[Any, bytes]) -> None:
    message, data = case
    reader, sink = _reader(message), Sink()
    reader.feed(data, sink.append)
    assert sink == [message]
    assert reader.buffered == 0


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_one_byte_at_a_time(case: tuple[Any, bytes]) -> None:
    message, data = case
    reader, sink = _reader(message), Sink()
    for i in range(len(data) - 1):
        reader.feed(data[i : i + 1], sink.append)
        assert sink == [], f"emitted after {i + 1} of {len(data)} bytes"
        assert reader.buffered == i + 1
    reader.feed(data[-1:], sink.append)
    assert sink == [message]
    assert reader.buffered == 0


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
@pytest.mark.parametrize(
    "trailing",
    [b"\x03", b"\x03\x00\x00", b"\x03\x00\x00\x00", b"\x03\x00\x00\x00\x92\x05"],
    ids=["1-header-byte", "3-header-bytes", "header", "header+partial"],
)
def test_trailing_bytes_stay_buffered(case: tuple[Any, bytes], trailing: bytes) -> None:
    message, data = case
    reader, sink = _reader(message), Sink()
    reader.feed(data + trailing, sink.append)
    assert sink.take() == [message]
    assert reader.buffered == len(trailing)
    # The trailing bytes are the start of GetCancel(rid=9) (0x92 0x05 0x09); finish it.
    rest = bytes.fromhex("03000000 92 05 09")[len(trailing) :]
    if isinstance(message, USER_TYPES):
        reader.feed(rest, sink.append)
        assert sink == [GetCancel(9)]
        assert reader.buffered == 0


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_every_buffer_type_is_accepted(kind: type) -> None:
    frames = b"".join(data for m, data in WIRE_CASES if isinstance(m, USER_TYPES))
    expected = [m for m, _ in WIRE_CASES if isinstance(m, USER_TYPES)]
    reader, sink = _reader(), Sink()
    reader.feed(kind(frames[:5]), sink.append)
    reader.feed(kind(frames[5:]), sink.append)
    assert sink == expected


def test_all_frames_in_one_feed_come_out_in_order() -> None:
    user = [(m, d) for m, d in WIRE_CASES if isinstance(m, USER_TYPES)]
    reader, sink = _reader(), Sink()
    reader.feed(b"".join(d for _, d in user), sink.append)
    assert sink == [m for m, _ in user]
    assert reader.buffered == 0


def test_every_split_point_gives_the_same_messages() -> None:
    user = [(m, d) for m, d in WIRE_CASES if isinstance(m, USER_TYPES)]
    stream = b"".join(d for _, d in user)
    expected = [m for m, _ in user]
    for cut in range(len(stream) + 1):
        reader, sink = _reader(), Sink()
        reader.feed(stream[:cut], sink.append)
        reader.feed(stream[cut:], sink.append)
        assert sink == expected, f"split at {cut}"
        assert reader.buffered == 0


def test_a_reused_receive_buffer_does_not_corrupt_a_partial_frame() -> None:
    # BufferedProtocol hands the same buffer back for every read: the reader must copy.
    data = bytearray(bytes.fromhex("03000000 92 05 09"))
    reader, sink = _reader(), Sink()
    reader.feed(data[:5], sink.append)
    view = memoryview(data)
    reader.feed(view[:0], sink.append)  # an empty non-EOF read changes nothing
    data[:] = b"\xff" * len(data)
    reader.feed(bytes.fromhex("05 09"), sink.append)
    assert sink == [GetCancel(9)]


def test_decoded_payloads_do_not_alias_the_input() -> None:
    data = bytearray(WIRE_CASES[2][1])  # SendRequest with data b"\x00\xff"
    reader, sink = _reader(), Sink()
    reader.feed(data, sink.append)
    data[:] = b"\x00" * len(data)
    (message,) = sink
    assert isinstance(message.data, bytes)
    assert message.data == b"\x00\xff"


# --- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [LIMIT + 1, 2**31, 0xFFFFFFFF], ids=hex)
def test_oversize_frame_is_refused_from_its_header(size: int) -> None:
    reader, sink = _reader(), Sink()
    header = struct.pack("<I", size)
    # Only the header: the reader must not wait for (or allocate) the announced body.
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(header, sink.append)
    assert info.value.status_hint is NtStatus.STATUS_INSUFFICIENT_RESOURCES
    assert str(size) in str(info.value)
    assert sink == []
    assert reader.buffered == 0


def test_oversize_frame_body_is_not_buffered() -> None:
    reader, sink = _reader(), Sink()
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(struct.pack("<I", 0xFFFFFFFF) + b"x" * 4096, sink.append)
    assert info.value.status_hint is NtStatus.STATUS_INSUFFICIENT_RESOURCES
    assert reader.buffered == 0


def test_oversize_header_byte_by_byte() -> None:
    reader, sink = _reader(), Sink()
    header = struct.pack("<I", 0xFFFFFFFF)
    for i in range(3):
        reader.feed(header[i : i + 1], sink.append)
        assert reader.buffered == i + 1
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(header[3:] + b"body", sink.append)
    assert info.value.status_hint is NtStatus.STATUS_INSUFFICIENT_RESOURCES
    assert reader.buffered == 0


def test_messages_before_an_oversize_frame_are_emitted() -> None:
    good = bytes.fromhex("03000000 92 05 09")
    reader, sink = _reader(), Sink()
    with pytest.raises(RemoteProtocolError):
        reader.feed(good + good + struct.pack("<I", LIMIT + 1) + b"zz", sink.append)
    assert sink == [GetCancel(9), GetCancel(9)]
    assert reader.buffered == 0


def test_limit_is_inclusive() -> None:
    message = SendRequest(rid=1, data=b"d" * 300, out_size=0)
    out = bytearray()
    size = write_frame(msgspec.msgpack.Encoder(), message, out)
    exact, sink = _reader(limit=size), Sink()
    exact.feed(out, sink.append)
    assert sink == [message]
    too_small = _reader(limit=size - 1)
    with pytest.raises(RemoteProtocolError) as info:
        too_small.feed(out, sink.append)
    assert info.value.status_hint is NtStatus.STATUS_INSUFFICIENT_RESOURCES


def test_changing_the_limit_applies_to_the_next_frame() -> None:
    big = WIRE_CASES[3][1]  # SendRequest with 256 bytes of data
    small = bytes.fromhex("03000000 92 05 09")
    reader, sink = _reader(limit=10), Sink()
    reader.feed(small, sink.append)
    reader.max_frame_bytes = len(big) - 4
    reader.feed(big, sink.append)
    assert sink.take() == [GetCancel(9), WIRE_CASES[3][0]]
    reader.max_frame_bytes = len(big) - 5
    with pytest.raises(RemoteProtocolError):
        reader.feed(big, sink.append)
    assert sink == []


def test_the_largest_handshake_fits_the_overhead() -> None:
    # FRAME_OVERHEAD_BYTES claims room for a WORD-sized context and a 32767-unit port name
    # (3 UTF-8 bytes per unit at worst) even when the payload limit is 0.
    message = Connect(
        version=1,
        port_name="\\" + "\u20ac" * 32766,
        context=b"c" * MAX_CONTEXT_BYTES,
        options=0xFFFFFFFF,
    )
    out = bytearray()
    size = write_frame(msgspec.msgpack.Encoder(), message, out)
    assert size <= max_frame_bytes(0)
    reader, sink = _reader(limit=max_frame_bytes(0)), Sink()
    reader.feed(out, sink.append)
    assert sink == [message]


def test_a_full_size_payload_fits() -> None:
    limit_bytes = 4096
    message = SendRequest(rid=2**64 - 1, data=b"p" * limit_bytes, out_size=0xFFFFFFFF)
    out = bytearray()
    write_frame(msgspec.msgpack.Encoder(), message, out)
    reader, sink = _reader(limit=max_frame_bytes(limit_bytes)), Sink()
    reader.feed(out, sink.append)
    assert sink == [message]


# --- zero-length and malformed frames ----------------------------------------------------------


def test_zero_length_frame_is_framed() -> None:
    # The framing layer delivers an empty payload; it is the message decoder that refuses it.
    reader, sink = FrameReader(bytes, LIMIT), Sink()
    reader.feed(frame(b"") + frame(b"") + frame(b"x"), sink.append)
    assert sink == [b"", b"", b"x"]
    assert reader.buffered == 0


def test_zero_length_frame_is_not_a_message() -> None:
    reader, sink = _reader(), Sink()
    with pytest.raises(RemoteProtocolError, match="malformed frame"):
        reader.feed(frame(b""), sink.append)
    assert sink == []
    assert reader.buffered == 0


def test_messages_before_a_malformed_frame_are_emitted_and_nothing_stays_buffered() -> None:
    good = bytes.fromhex("03000000 92 05 09")
    reader, sink = _reader(), Sink()
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(good + raw_frame([99]) + good, sink.append)
    assert isinstance(info.value.__cause__, msgspec.ValidationError)
    assert sink == [GetCancel(9)]
    assert reader.buffered == 0


def test_malformed_frame_fed_byte_by_byte() -> None:
    bad = raw_frame([2, "one", b"", 0])
    reader, sink = _reader(), Sink()
    for i in range(len(bad) - 1):
        reader.feed(bad[i : i + 1], sink.append)
    with pytest.raises(RemoteProtocolError, match="malformed frame"):
        reader.feed(bad[-1:], sink.append)
    assert sink == []
    assert reader.buffered == 0


# --- write_frame ---------------------------------------------------------------------------------


def test_write_frame_appends_and_reports_the_payload_size() -> None:
    encoder = msgspec.msgpack.Encoder()
    out = bytearray(b"prefix")
    first = write_frame(encoder, GetCancel(9), out)
    second = write_frame(encoder, GetCancel(10), out)
    assert first == second == 3
    assert bytes(out) == b"prefix" + bytes.fromhex("03000000 92 05 09 03000000 92 05 0a")


def test_write_frame_length_is_little_endian() -> None:
    out = bytearray()
    size = write_frame(msgspec.msgpack.Encoder(), SendRequest(1, b"z" * 70000, 0), out)
    # fixarray, tag, rid, bin32 marker + 4-byte length, out_size, out_address
    assert size == 70000 + 10
    assert out[:4] == size.to_bytes(4, "little")
    assert out[4:9] == bytes.fromhex("95 02 01 c6 00")


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_a_deeply_nested_body_is_a_malformed_frame(role: Role) -> None:
    """An ignored trailing element nested thousands deep (msgspec decodes it all the same)
    is refused like any malformed frame, not a RecursionError escaping the reader."""
    conn = WireConnection(role)
    if role is Role.KERNEL:  # Connect(1, "\\P", b"", 0, <nested>)
        body = b"\x96\x01\x01\xa2\\P\xc4\x00\x00"
    else:  # ConnectResult(1, 0, 0, <nested>)
        body = b"\x95\x10\x01\x00\x00"
        conn.send(Connect(1, "\\P"))
    body += b"\x91" * 20_000 + b"\xc0"
    conn.receive_data(len(body).to_bytes(4, "little") + body)
    with pytest.raises(RemoteProtocolError, match="malformed frame") as info:
        conn.next_event()
    assert info.value.status_hint == NtStatus.STATUS_INVALID_PARAMETER
