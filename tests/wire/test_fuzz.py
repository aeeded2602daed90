"""Property-based fuzzing of the wire core: whatever bytes arrive, in whatever pieces, the only
error is a RemoteProtocolError (which the daemon turns into a Goodbye), never another
exception. ``FLTEMU_FUZZ_EXAMPLES`` raises the number of examples (CI runs a few hundred)."""

from __future__ import annotations

import os
import struct
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from fltemu.errors import RemoteProtocolError
from fltemu.wire import NEED_DATA, Connect, Role, State, WireConnection

EXAMPLES = int(os.environ.get("FLTEMU_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True)

# msgpack values of every kind, nested a little: what a hostile peer could send as fields.
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=40),
)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5), max_leaves=20)
# A message-shaped array: a plausible tag (or any int), then anything.
bodies = st.builds(
    lambda tag, rest: [tag, *rest],
    st.one_of(
        st.sampled_from([1, 2, 3, 4, 5, 6, 16, 17, 18, 19, 20, 21, 22, 23]),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
    ),
    st.lists(values, max_size=8),
)


def framed(body: Any) -> bytes:
    data = msgspec.msgpack.encode(body)
    return struct.pack("<I", len(data)) + data


def drive(conn: WireConnection, data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` in pieces and pull every event; only RemoteProtocolError may escape."""
    pieces, start = [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    try:
        for piece in pieces:
            conn.receive_data(piece)
            while conn.next_event() is not NEED_DATA:
                pass
    except RemoteProtocolError:
        assert conn.state is State.ERROR


def fresh(role: Role) -> WireConnection:
    conn = WireConnection(role)
    if role is Role.USER:  # a client that sent its Connect, waiting for the answer
        conn.send(Connect(1, "\\P"))
    return conn


@FUZZ
@given(
    role=st.sampled_from(list(Role)),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_random_bytes(role: Role, data: bytes, cuts: list[int]) -> None:
    drive(fresh(role), data, cuts)


@FUZZ
@given(
    role=st.sampled_from(list(Role)),
    frames=st.lists(bodies, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_message_shaped_frames(role: Role, frames: list[Any], cuts: list[int]) -> None:
    drive(fresh(role), b"".join(framed(f) for f in frames), cuts)
