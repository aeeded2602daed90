"""Test helpers: a fake kernel channel, two wire connections back to back, frame builders."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import msgspec

from fltemu.status import NtStatus
from fltemu.wire import NEED_DATA, Role, WireConnection


@dataclass
class GetCompletion:
    """One getter completion as the kernel reported it."""

    token: object
    status: NtStatus
    message_id: int = 0
    reply_length: int = 0
    data: bytes = b""
    required_size: int = 0


@dataclass
class FakeChannel:
    """A ``Channel`` that records completions instead of writing to a socket."""

    completions: list[GetCompletion] = field(default_factory=list)
    #: How many times the kernel said it ended the connection.
    disconnects: int = 0

    def complete_get(
        self,
        token: object,
        status: NtStatus,
        message_id: int = 0,
        reply_length: int = 0,
        data: bytes = b"",
        required_size: int = 0,
    ) -> None:
        self.completions.append(
            GetCompletion(token, NtStatus(status), message_id, reply_length, data, required_size)
        )

    def kernel_disconnected(self) -> None:
        self.disconnects += 1

    def pop(self) -> GetCompletion:
        return self.completions.pop(0)


class WirePair:
    """A USER and a KERNEL WireConnection joined back to back, in memory."""

    def __init__(self) -> None:
        self.user = WireConnection(Role.USER)
        self.kernel = WireConnection(Role.KERNEL)

    def user_sends(self, message: object) -> list[object]:
        self.kernel.receive_data(self.user.send(message))
        return drain(self.kernel)

    def kernel_sends(self, message: object) -> list[object]:
        self.user.receive_data(self.kernel.send(message))
        return drain(self.user)


def drain(conn: WireConnection) -> list[object]:
    """Every event ``conn`` has ready."""
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def frame(payload: bytes) -> bytes:
    """A raw frame around arbitrary payload bytes."""
    return struct.pack("<I", len(payload)) + payload


def raw_frame(obj: object) -> bytes:
    """A frame holding ``obj`` encoded as msgpack with no schema checks (for bad input)."""
    return frame(msgspec.msgpack.encode(obj))


async def until(predicate: object, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` is true (polling the loop), or fail the test."""
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)
