"""The ``driver`` fixture: every scenario runs through the sync and the async client alike.

The sync client blocks, so its calls run in worker threads while the daemon runs on the
test's event loop. Both drivers expose the same awaitable surface.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import fltuser
from fltemu.daemon import Daemon


class SyncDriverPort:
    """A ``fltuser.Port`` driven from async tests through threads."""

    def __init__(self, port: fltuser.Port) -> None:
        self.port = port

    async def send(self, data: bytes, out_size: int = 0) -> bytes:
        return await asyncio.to_thread(self.port.send, data, out_size)

    async def get_message(self, buffer_size: int, timeout: float | None = None) -> fltuser.Message:
        return await asyncio.to_thread(self.port.get_message, buffer_size, timeout)

    async def reply(self, message_id: int, data: bytes = b"", status: int = 0) -> None:
        await asyncio.to_thread(self.port.reply, message_id, data, status)

    async def reply_and_get(
        self,
        message_id: int,
        data: bytes,
        buffer_size: int,
        status: int = 0,
        timeout: float | None = None,
    ) -> fltuser.Message:
        return await asyncio.to_thread(
            self.port.reply_and_get, message_id, data, buffer_size, status, timeout
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.port.close)

    @property
    def is_connected(self) -> bool:
        return self.port.is_connected


class AsyncDriverPort:
    """A ``fltuser.AsyncPort`` with ``close`` spelled like the sync driver's."""

    def __init__(self, port: fltuser.AsyncPort) -> None:
        self.port = port

    async def send(self, data: bytes, out_size: int = 0) -> bytes:
        return await self.port.send(data, out_size)

    async def get_message(self, buffer_size: int, timeout: float | None = None) -> fltuser.Message:
        return await self.port.get_message(buffer_size, timeout)

    async def reply(self, message_id: int, data: bytes = b"", status: int = 0) -> None:
        await self.port.reply(message_id, data, status)

    async def reply_and_get(
        self,
        message_id: int,
        data: bytes,
        buffer_size: int,
        status: int = 0,
        timeout: float | None = None,
    ) -> fltuser.Message:
        return await self.port.reply_and_get(message_id, data, buffer_size, status, timeout)

    async def close(self) -> None:
        await self.port.aclose()

    @property
    def is_connected(self) -> bool:
        return self.port.is_connected


class Driver:
    """Connects with one client flavour to the test's daemon and closes what it opened."""

    def __init__(self, flavour: str, address: str) -> None:
        self.flavour = flavour
        self.address = address
        self.opened: list[Any] = []

    async def connect(self, port_name: str, context: bytes = b"", options: int = 0) -> Any:
        if self.flavour == "sync":
            port = await asyncio.to_thread(
                fltuser.connect, port_name, context, options, self.address
            )
            wrapped: Any = SyncDriverPort(port)
        else:
            wrapped = AsyncDriverPort(
                await fltuser.aconnect(port_name, context, options, self.address)
            )
        self.opened.append(wrapped)
        return wrapped

    async def close_all(self) -> None:
        for port in self.opened:
            await port.close()


@pytest.fixture(params=["sync", "async"])
async def driver(request: pytest.FixtureRequest, daemon: Daemon) -> AsyncIterator[Driver]:
    """A client driver of each flavour, connected to the ``daemon`` fixture's socket."""
    d = Driver(request.param, daemon.address)
    yield d
    await d.close_all()
