"""Message schemas: exact wire bytes of every message type, tags, schema evolution, bad input.

The expected bytes are written by hand from the msgpack spec (fixarray 0x9N, fixint, 0xcd uint16,
0xce uint32, 0xcf uint64, 0xaN fixstr, 0xc4/0xc5 bin8/bin16) behind a 4-byte little-endian
length, so an accidental change of field order, tag or encoding fails here. No event loop.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from fltemu.errors import RemoteProtocolError
from fltemu.wire import (
    OPTION_DISCONNECT_NOTICE,
    OPTION_SECTIONS,
    OUT_ADDRESS_MODULUS,
    PROTOCOL_VERSION,
    Attach,
    Connect,
    ConnectionInfo,
    ConnectResult,
    Control,
    ControlResult,
    Disconnected,
    FilterInfo,
    FrameReader,
    GetCancel,
    GetRequest,
    GetResult,
    Goodbye,
    KernelMessage,
    PortInfo,
    ReplyRequest,
    ReplyResult,
    Section,
    SendRequest,
    SendResult,
    Trace,
    TraceEvent,
    UserMessage,
    write_frame,
)
from tests.helpers import frame, raw_frame

USER_TYPES = (Connect, SendRequest, GetRequest, ReplyRequest, GetCancel, Control, Trace, Attach)
KERNEL_TYPES = (
    ConnectResult,
    SendResult,
    GetResult,
    ReplyResult,
    Goodbye,
    ControlResult,
    Disconnected,
    Section,
    TraceEvent,
)

# (message, exact frame bytes). At least one case per message type.
WIRE_CASES: list[tuple[Any, bytes]] = [
    (
        Connect(version=1, port_name="\\P"),
        bytes.fromhex("09000000950101a2 5c50c4 0000"),
    ),
    (
        Connect(version=1, port_name="\\ScannerPort", context=b"ctx", options=1),
        bytes.fromhex("16000000950101ac 5c5363616e6e6572506f7274c4 03 63747801"),
    ),
    (
        SendRequest(rid=7, data=b"\x00\xff", out_size=4096),
        bytes.fromhex("0b000000950207c4 02 00ffcd 1000 00"),
    ),
    (
        # 256 bytes of data need bin16, and the length prefix needs two bytes.
        SendRequest(rid=1, data=b"x" * 256, out_size=0),
        bytes.fromhex("08010000950201c5 0100") + b"x" * 256 + b"\x00\x00",
    ),
    (
        # An output buffer at an address ending in 0x3c (protocol §7.1).
        SendRequest(rid=1, data=b"hello", out_size=64, out_address=0x3C),
        bytes.fromhex("0c000000 950201c405 68656c6c6f 40 3c"),
    ),
    (
        GetRequest(rid=300, buffer_size=1048),
        bytes.fromhex("080000009303cd 012ccd 0418"),
    ),
    (
        ReplyRequest(rid=5, message_id=2**40, status=0, data=b"ok"),
        bytes.fromhex("11000000950405cf 000001000000000000c4 02 6f6b"),
    ),
    (
        ReplyRequest(rid=6, message_id=1, status=0xC0000022, data=b""),
        bytes.fromhex("0b00000095040601ce c0000022c4 00"),
    ),
    (
        GetCancel(rid=9),
        bytes.fromhex("03000000920509"),
    ),
    (
        ConnectResult(version=1, status=0, max_message_bytes=16 * 1024 * 1024),
        bytes.fromhex("0b00000095100100ce 01000000c400"),
    ),
    (
        ConnectResult(version=1, status=0xC0000034),
        bytes.fromhex("0b000000951001ce c000003400c400"),
    ),
    (
        # An attach token for a client that asked for one (protocol §5b).
        ConnectResult(version=1, status=0, max_message_bytes=4096, attach_token=b"\x01" * 16),
        bytes.fromhex("1900000095100100cd 1000c410") + b"\x01" * 16,
    ),
    (
        Attach(version=1, token=b"\x02" * 16, options=0x80000000),
        bytes.fromhex("1a000000940801c410") + b"\x02" * 16 + bytes.fromhex("ce80000000"),
    ),
    (
        SendResult(rid=7, status=0x80000005, data=b"abc"),
        bytes.fromhex("0d000000941107ce 80000005c4 03 616263"),
    ),
    (
        GetResult(rid=300, status=0, message_id=1, reply_length=1040, data=b"\x01\x02"),
        bytes.fromhex("0f0000009712cd 012c0001cd 0410c4 02 010200"),
    ),
    (
        GetResult(rid=3, status=0xC0000023, required_size=1048),
        bytes.fromhex("0f000000971203ce c00000230000c4 00cd 0418"),
    ),
    (
        ReplyResult(rid=5, status=0xC01C0020),
        bytes.fromhex("08000000931305ce c01c0020"),
    ),
    (
        Goodbye(status=0xC0000037, reason="bye"),
        bytes.fromhex("0b0000009314ce c0000037a3 627965"),
    ),
    (
        Control(1, "ports"),
        b"\x0f\x00\x00\x00\x98\x06\x01\xa5ports\xa0\xc0\xc4\x00\xc0\xc0",
    ),
    (
        Control(1, "send", "\\P", 3, b"hi", 1, 0.5),
        b"\x1a\x00\x00\x00\x98\x06\x01\xa4send\xa2\\P\x03\xc4\x02hi\x01"
        b"\xcb?\xe0\x00\x00\x00\x00\x00\x00",
    ),
    (ControlResult(1, 0), b"\x09\x00\x00\x00\x98\x15\x01\x00\xa0\xc0\x90\x00\xc0"),
    (
        Trace(1, "\\P", None, ("send",), 16),
        b"\x0e\x00\x00\x00\x96\x07\x01\xa2\\P\xc0\x91\xa4send\x10",
    ),
    (
        TraceEvent("send", 1.5, "\\P", 3, 10, 0, status=0, size=2, data=b"hi"),
        bytes.fromhex(
            "26000000dc001218a473656e64cb3ff8000000000000a25c50030a00000002c0c0c0c0c0c402686900a0"
        ),
    ),
    (
        # The listing inside is made of maps (readable JSON for `fltemu ports --json`).
        ControlResult(
            1,
            0,
            "",
            b"ok",
            (
                FilterInfo(
                    "f",
                    "registered",
                    (
                        PortInfo(
                            "\\P",
                            "open",
                            1,
                            1,
                            (ConnectionInfo(7, 100, 0, 0, "connected", 1, 0, 0, 2, 3, 0),),
                        ),
                    ),
                ),
            ),
            2,
        ),
        b"\xff\x00\x00\x00\x98\x15\x01\x00\xa0\xc4\x02ok\x91\x83\xa4name\xa1f\xa5state"
        b"\xaaregistered\xa5ports\x91\x85\xa4name\xa2\\P\xa5state\xa4open\xafmax_connections"
        b"\x01\xb0connection_count\x01\xabconnections\x91\x8b\xa2id\x07\xa3pidd\xa3uid\x00"
        b"\xa3gid\x00\xa5state\xa9connected\xafpending_getters\x01\xafblocked_senders\x00"
        b"\xaeawaiting_reply\x00\xafsends_from_user\x02\xb2messages_delivered\x03"
        b"\xb2messages_timed_out\x00\x02\xc0",
    ),
    # The frames of protocol.md §15 that came with the capability bits (protocol §5a).
    (Disconnected(0xC0000037), bytes.fromhex("07000000 9216 cec0000037")),
    (Section(1, 8, b"abc"), bytes.fromhex("09000000 9417 0108 c403616263")),
    (
        Connect(1, "\\P", b"", OPTION_SECTIONS | OPTION_DISCONNECT_NOTICE),
        bytes.fromhex("0d000000 950101a25c50c400 cec0000000"),
    ),
]


def _case_id(case: tuple[Any, bytes]) -> str:
    message, data = case
    return f"{type(message).__name__}-{len(data)}"


def _decoder_for(message: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(
        UserMessage if isinstance(message, USER_TYPES) else KernelMessage
    )


def test_every_message_type_has_a_wire_case() -> None:
    assert {type(m) for m, _ in WIRE_CASES} == set(USER_TYPES) | set(KERNEL_TYPES)


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_encoding_is_pinned(case: tuple[Any, bytes]) -> None:
    message, expected = case
    out = bytearray()
    size = write_frame(msgspec.msgpack.Encoder(), message, out)
    assert bytes(out) == expected
    assert size == len(expected) - 4


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_decoding_is_pinned(case: tuple[Any, bytes]) -> None:
    message, data = case
    decoded = _decoder_for(message).decode(data[4:])
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_payload_is_an_array_starting_with_the_integer_tag(case: tuple[Any, bytes]) -> None:
    message, data = case
    assert int.from_bytes(data[:4], "little") == len(data) - 4
    generic = msgspec.msgpack.decode(data[4:])
    assert isinstance(generic, list)
    assert type(generic[0]) is int
    assert generic[0] == type(message).__struct_config__.tag
    assert len(generic) == 1 + len(type(message).__struct_fields__)


def test_tags_are_pinned_and_unique() -> None:
    tags = {cls: cls.__struct_config__.tag for cls in USER_TYPES + KERNEL_TYPES}
    assert tags == {
        Connect: 1,
        Attach: 8,
        SendRequest: 2,
        GetRequest: 3,
        ReplyRequest: 4,
        GetCancel: 5,
        ConnectResult: 16,
        SendResult: 17,
        GetResult: 18,
        ReplyResult: 19,
        Goodbye: 20,
        Control: 6,
        ControlResult: 21,
        Disconnected: 22,
        Section: 23,
        Trace: 7,
        TraceEvent: 24,
    }


@pytest.mark.parametrize("cls", USER_TYPES + KERNEL_TYPES, ids=lambda c: c.__name__)
def test_messages_are_frozen_array_like_structs(cls: type) -> None:
    config = cls.__struct_config__  # type: ignore[attr-defined]
    assert config.frozen
    assert config.array_like
    message: Any = next(m for m, _ in WIRE_CASES if type(m) is cls)
    with pytest.raises(AttributeError):
        message.status = 1
    hash(message)  # frozen structs are hashable


def test_protocol_version() -> None:
    assert PROTOCOL_VERSION == 1


# --- each direction has its own union ----------------------------------------------------------


@pytest.mark.parametrize("case", WIRE_CASES, ids=_case_id)
def test_the_other_directions_decoder_refuses_it(case: tuple[Any, bytes]) -> None:
    message, data = case
    other = KernelMessage if isinstance(message, USER_TYPES) else UserMessage
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.Decoder(other).decode(data[4:])


# --- schema evolution ----------------------------------------------------------------------------

# A newer peer appends fields (with defaults); an older decoder must ignore them.
NEWER_PEER: list[tuple[list[Any], Any]] = [
    ([1, 1, "\\P", b"c", 2, "future", 7], Connect(1, "\\P", b"c", 2)),
    ([2, 1, b"d", 8, 0, [1, 2]], SendRequest(1, b"d", 8)),
    ([3, 1, 64, None], GetRequest(1, 64)),
    ([4, 1, 2, 0, b"", {"k": 1}], ReplyRequest(1, 2, 0, b"")),
    ([5, 1, 1.5], GetCancel(1)),
    ([16, 1, 0, 100, b"tok", "future"], ConnectResult(1, 0, 100, b"tok")),
    ([8, 1, b"tok", 0, "future"], Attach(1, b"tok", 0)),
    ([17, 1, 0, b"x", True], SendResult(1, 0, b"x")),
    ([18, 1, 0, 5, 6, b"y", 7, "z"], GetResult(1, 0, 5, 6, b"y", 7)),
    ([19, 1, 0, 0], ReplyResult(1, 0)),
    ([20, 0xC0000037, "why", 3], Goodbye(0xC0000037, "why")),
]

# An older peer does not send trailing fields that have defaults; a newer decoder fills them in.
OLDER_PEER: list[tuple[list[Any], Any]] = [
    ([1, 1, "\\P"], Connect(1, "\\P", b"", 0)),
    ([1, 1, "\\P", b"c"], Connect(1, "\\P", b"c", 0)),
    # A client that does not know its output buffer's address: aligned (protocol §7.1).
    ([2, 1, b"d", 8], SendRequest(1, b"d", 8, 0)),
    ([16, 1, 0], ConnectResult(1, 0, 0)),
    ([16, 1, 0, 64], ConnectResult(1, 0, 64, b"")),
    ([8, 1, b"tok"], Attach(1, b"tok", 0)),
    ([17, 4, 0xC0000010], SendResult(4, 0xC0000010, b"")),
    ([18, 2, 0xC0000120], GetResult(2, 0xC0000120, 0, 0, b"", 0)),
    ([18, 2, 0, 9, 10, b"m"], GetResult(2, 0, 9, 10, b"m", 0)),
    ([20, 0xC0000059], Goodbye(0xC0000059, "")),
]


def _decode(obj: list[Any]) -> Any:
    union = UserMessage if obj[0] < 16 else KernelMessage
    return msgspec.msgpack.Decoder(union).decode(msgspec.msgpack.encode(obj))


@pytest.mark.parametrize(("obj", "expected"), NEWER_PEER, ids=lambda v: repr(v)[:40])
def test_extra_trailing_fields_are_ignored(obj: list[Any], expected: Any) -> None:
    assert _decode(obj) == expected


@pytest.mark.parametrize(("obj", "expected"), OLDER_PEER, ids=lambda v: repr(v)[:40])
def test_missing_defaulted_fields_are_filled_in(obj: list[Any], expected: Any) -> None:
    assert _decode(obj) == expected


@pytest.mark.parametrize(
    "obj",
    [
        [1, 1],  # Connect without port_name
        [2, 1, b"d"],  # SendRequest without out_size
        [3, 1],
        [4, 1, 2, 0],
        [5],
        [16, 1],
        [17, 1],
        [18, 1],
        [19, 1],
        [20],
    ],
    ids=repr,
)
def test_missing_required_fields_are_refused(obj: list[Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        _decode(obj)


# --- bad input through a reader -------------------------------------------------------------------


def _reader(union: Any) -> FrameReader:
    return FrameReader(msgspec.msgpack.Decoder(union).decode, 1 << 20)


@pytest.mark.parametrize(
    ("union", "payload"),
    [
        (UserMessage, [0, 1]),
        (UserMessage, [8, 1]),
        (UserMessage, [15, 1]),
        (UserMessage, [16, 1, 0]),  # a kernel tag sent to the kernel
        (UserMessage, [-1, 1]),
        (UserMessage, [2**40, 1]),
        (KernelMessage, [25, 1]),
        (KernelMessage, [1, 1, "\\P"]),  # a user tag sent to the user
        (KernelMessage, [255]),
    ],
    ids=repr,
)
def test_unknown_tags_are_remote_protocol_errors(union: Any, payload: list[Any]) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed frame") as info:
        _reader(union).feed(raw_frame(payload), list().append)
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


@pytest.mark.parametrize(
    ("union", "payload"),
    [
        (UserMessage, [1, "1", "\\P"]),  # version as a string
        (UserMessage, [1, 1, b"\\P"]),  # port_name as bytes
        (UserMessage, [1, 1, "\\P", "ctx"]),  # context as a string, not bin
        (UserMessage, [1, True, "\\P"]),  # a bool is not an int
        (UserMessage, [2, 1.0, b"", 0]),  # a float rid
        (UserMessage, [2, None, b"", 0]),
        (UserMessage, [2, 1, [1, 2], 0]),  # data as an array
        (UserMessage, [3, 1, "64"]),
        (UserMessage, [4, 1, 2, "ok", b""]),
        (UserMessage, [5, [1]]),
        (KernelMessage, [16, 1, "0"]),
        (KernelMessage, [17, 1, 0, "text"]),
        (KernelMessage, [18, 1, 0, -1.5]),
        (KernelMessage, [19, "1", 0]),
        (KernelMessage, [20, 0, b"bytes reason"]),
    ],
    ids=repr,
)
def test_wrong_field_types_are_remote_protocol_errors(union: Any, payload: list[Any]) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed frame"):
        _reader(union).feed(raw_frame(payload), list().append)


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # zero-length payload
        b"\xc1",  # the one byte msgpack never uses
        b"\x95\x01",  # truncated array
        b"\x80",  # an empty map, not an array
        b"\x90",  # an empty array: no tag
        b"\x01",  # a bare integer
        b"\xa3abc",  # a string
        b"\x92\x05\x09\x00",  # a complete message followed by junk inside the frame
    ],
    ids=lambda p: p.hex() or "empty",
)
def test_malformed_payloads_are_remote_protocol_errors(payload: bytes) -> None:
    for union in (UserMessage, KernelMessage):
        with pytest.raises(RemoteProtocolError, match="malformed frame") as info:
            _reader(union).feed(frame(payload), list().append)
        assert isinstance(info.value.__cause__, msgspec.DecodeError)
        assert info.value.status_hint == 0xC000000D  # STATUS_INVALID_PARAMETER


@pytest.mark.parametrize("out_address", [-1, OUT_ADDRESS_MODULUS, 2**32, True, None])
def test_send_request_out_address_is_the_low_8_bits(out_address: Any) -> None:
    # lpOutBuffer modulo 256 (protocol §7.1): a whole address, or anything else, is malformed.
    assert OUT_ADDRESS_MODULUS == 256
    assert _decode([2, 1, b"d", 8, 255]) == SendRequest(1, b"d", 8, 255)
    with pytest.raises(msgspec.ValidationError):
        _decode([2, 1, b"d", 8, out_address])
