"""Kernel fixtures: a FilterManager, a Filter, recording callbacks and a fake user process.

Kernel tests drive the object model directly (STYLE B9): the user half of a connection is a
``FakeChannel`` plus calls to ``ClientPort.user_*``; nothing here opens a socket.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from fltemu.kernel import ClientPort, Filter, FilterManager, ProcessInfo, ServerPort
from fltemu.status import NtStatus
from tests.helpers import FakeChannel

#: The daemon's own user: admitted by the default security descriptor (§2.2).
ME = ProcessInfo(pid=4242, uid=os.geteuid(), gid=os.getegid())


@dataclass
class Recorder:
    """Callbacks that record every call; set the attributes to change what they do.

    Attributes:
        connect_status: what ConnectNotify returns.
        cookie: the ConnectionPortCookie it hands back (``NO_COOKIE`` returns a bare status).
        message: the MessageNotify result, or a callable ``(cookie, data, size) -> result``.
    """

    connect_status: int = NtStatus.STATUS_SUCCESS
    cookie: object = None
    message: Any = (NtStatus.STATUS_SUCCESS, b"")
    connects: list[tuple[ClientPort, object, bytes]] = field(default_factory=list)
    disconnects: list[object] = field(default_factory=list)
    messages: list[tuple[object, bytes, int]] = field(default_factory=list)

    def connect_notify(
        self, client_port: ClientPort, server_port_cookie: object, context: bytes
    ) -> object:
        self.connects.append((client_port, server_port_cookie, context))
        if self.cookie is None:
            return self.connect_status
        return self.connect_status, self.cookie

    def disconnect_notify(self, cookie: object) -> None:
        self.disconnects.append(cookie)

    def message_notify(self, cookie: object, data: bytes, size: int) -> object:
        self.messages.append((cookie, data, size))
        if callable(self.message):
            return self.message(cookie, data, size)
        return self.message


@pytest.fixture
def manager() -> FilterManager:
    return FilterManager()


@pytest.fixture
async def flt(manager: FilterManager) -> AsyncIterator[Filter]:
    """A registered filter; fails the test if the loop's exception handler was called."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    f = manager.register_filter("testflt")
    yield f
    # Tidy up whatever a test left connected (unload is idempotent).
    async with asyncio.timeout(5):
        await f.unload()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert not errors, f"the loop's exception handler was called: {errors}"


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


PortFactory = Callable[..., Coroutine[Any, Any, ServerPort]]


@pytest.fixture
def make_port(flt: Filter, rec: Recorder) -> PortFactory:
    """``await make_port(name="\\\\P", **overrides)``: a port wired to ``rec``'s callbacks."""

    async def make(name: str = "\\P", **kwargs: Any) -> ServerPort:
        options: dict[str, Any] = {
            "connect_notify": rec.connect_notify,
            "disconnect_notify": rec.disconnect_notify,
            "message_notify": rec.message_notify,
            "max_connections": 4,
        }
        options.update(kwargs)
        return await flt.create_communication_port(name, **options)

    return make


@dataclass
class User:
    """The user half of one connection: its client port and the channel completions land on."""

    port: ClientPort
    channel: FakeChannel
    _tokens: int = 0

    def get(self, size: int = 4096, token: object = None) -> object:
        """FilterGetMessage; returns the token. Asserts it went pending."""
        if token is None:
            self._tokens += 1
            token = f"g{self._tokens}"
        assert self.port.user_get(token, size) is None
        return token

    @property
    def completions(self) -> list[Any]:
        return self.channel.completions


Connector = Callable[..., Coroutine[Any, Any, User]]


@pytest.fixture
def connect(manager: FilterManager) -> Connector:
    """``await connect(name, context=b"", process=ME)``: connect a fake user process."""

    async def do(name: str = "\\P", context: bytes = b"", process: ProcessInfo = ME) -> User:
        channel = FakeChannel()
        port = await manager.connect(name, context, process, channel)
        return User(port, channel)

    return do
