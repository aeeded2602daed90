"""One wire contract for Python and C: the Windows side's ``client/windows/include/wire.h``,
built natively (no Wine), against ``fltemu.wire``.

``tests/wire/c/wire_check.c`` prints wire.h's constants, decodes frames the Python encoder
made (every kernel->user case of ``test_messages.WIRE_CASES`` and more), and encodes the
requests the driver and the DLL send, which the Python decoder must read back as written.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from fltemu.wire import (
    ATTACH_TOKEN_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_OVERHEAD_BYTES,
    OPTION_ATTACH,
    OPTION_DISCONNECT_NOTICE,
    OPTION_SECTIONS,
    PROTOCOL_VERSION,
    Attach,
    Connect,
    ConnectResult,
    Disconnected,
    GetCancel,
    GetRequest,
    GetResult,
    Goodbye,
    ReplyRequest,
    ReplyResult,
    Section,
    SendRequest,
    SendResult,
)
from fltemu.wire import messages as wire_messages

from .test_messages import WIRE_CASES

SOURCE = Path(__file__).parent / "c" / "wire_check.c"


@pytest.fixture(scope="module")
def wire_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("a C compiler (cc) is needed to check wire.h against the Python wire")
    binary = tmp_path_factory.mktemp("wirecheck") / "wire_check"
    subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(SOURCE)],
        check=True,
    )
    return binary


def run(binary: Path, *args: str) -> list[str]:
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_constants_are_the_pythons(wire_check: Path) -> None:
    c = dict(line.split() for line in run(wire_check, "constants"))
    assert {name: int(value) for name, value in c.items()} == {
        "PROTOCOL_VERSION": PROTOCOL_VERSION,
        "FRAME_OVERHEAD_BYTES": FRAME_OVERHEAD_BYTES,
        "DEFAULT_MAX_MESSAGE_BYTES": DEFAULT_MAX_MESSAGE_BYTES,
        "OPTION_DISCONNECT_NOTICE": OPTION_DISCONNECT_NOTICE,
        "OPTION_SECTIONS": OPTION_SECTIONS,
        "OPTION_ATTACH": OPTION_ATTACH,
        "ATTACH_TOKEN_BYTES": ATTACH_TOKEN_BYTES,
        **{
            name: getattr(wire_messages, name).__struct_config__.tag
            for name in c
            if name[0].isupper() and not name.isupper()
        },
    }


#: The daemon's messages that wire.h decodes: the pinned cases, and more.
KERNEL_CASES = [
    m
    for m, _ in WIRE_CASES
    if type(m) in (ConnectResult, SendResult, GetResult, ReplyResult, Goodbye, Disconnected)
] + [
    ConnectResult(1, 0, 4096, bytes(range(16))),
    GetResult(2**40, 0, 2**63, 1040, b"m" * 300, 0),
    GetResult(3, 0xC0000023, required_size=70000),
    Disconnected(0xC0000037),
    Section(9, 8, b"file content"),
    Goodbye(0xC0000037, "bye"),
]


def expected_fields(message: object) -> str:
    """What wire_check prints for ``message``: the fields wire.h decodes, the rest zero."""
    f = {
        "tag": type(message).__struct_config__.tag,  # type: ignore[attr-defined]
        "rid": getattr(message, "rid", 0),
        "status": getattr(message, "status", 0),
        "message_id": getattr(message, "message_id", 0),
        "reply_length": getattr(message, "reply_length", 0),
        "required_size": getattr(message, "required_size", 0),
        "offset": getattr(message, "offset", 0),
        "max_message": getattr(message, "max_message_bytes", 0),
        "data": getattr(message, "data", b"").hex(),
        "token": getattr(message, "attach_token", b"").hex(),
    }
    return " ".join(f"{key}={value}" for key, value in f.items())


def test_wire_h_decodes_what_python_encodes(wire_check: Path) -> None:
    # The body of each frame, as the daemon's encoder writes it (the WIRE_CASES pin it).
    bodies = [msgspec.msgpack.encode(m).hex() for m in KERNEL_CASES]
    assert run(wire_check, "decode", *bodies) == [expected_fields(m) for m in KERNEL_CASES]


def test_wire_h_refuses_malformed_frames(wire_check: Path) -> None:
    bad = [
        "",  # nothing
        "9110",  # ConnectResult without its status
        msgspec.msgpack.encode([17, -1, 0]).hex(),  # a negative rid
        msgspec.msgpack.encode([18, 1, 2**32]).hex(),  # a status over 32 bits
        msgspec.msgpack.encode([99, 1, 0]).hex(),  # an unknown tag
        msgspec.msgpack.encode([17, 1, 0, "text"]).hex(),  # data that is not bytes
        msgspec.msgpack.encode([17, 1, 0, b"abc"])[:-1].hex(),  # cut short
    ]
    assert run(wire_check, "decode", *bad) == ["bad"] * len(bad)


def test_python_decodes_what_wire_h_encodes(wire_check: Path) -> None:
    frames = [bytes.fromhex(line) for line in run(wire_check, "encode")]
    decoder = msgspec.msgpack.Decoder(wire_messages.UserMessage)
    for frame in frames:
        assert int.from_bytes(frame[:4], "little") == len(frame) - 4
    assert [decoder.decode(frame[4:]) for frame in frames] == [
        Connect(
            PROTOCOL_VERSION,
            "\\P",
            b"ctx",
            OPTION_DISCONNECT_NOTICE | OPTION_SECTIONS | OPTION_ATTACH,
        ),
        Attach(
            PROTOCOL_VERSION,
            bytes([1, 2, 3]) + bytes(13),
            OPTION_DISCONNECT_NOTICE | OPTION_SECTIONS,
        ),
        SendRequest(300, b"hello", 70000, 0x3C),
        GetRequest(2**40, 1048),
        ReplyRequest(7, 9, 0xC0000022, b"ok"),
        GetCancel(5),
    ]
