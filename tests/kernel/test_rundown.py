"""The rundown's bound: none until shutdown, then one deadline for every callback wait, the
ones already running included, and a callback started after it is abandoned at once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from fltemu.errors import StatusError
from fltemu.kernel import Filter, FilterManager
from fltemu.status import NtStatus

from .conftest import Connector, PortFactory


async def forever(*args: Any) -> None:
    await asyncio.Event().wait()


async def test_a_disconnect_notify_running_before_the_rundown_ends_by_its_deadline(
    manager: FilterManager,
    make_port: PortFactory,
    connect: Connector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()

    async def hang(cookie: object) -> None:
        started.set()
        await asyncio.Event().wait()

    port = await make_port("\\Slow", disconnect_notify=hang)
    user = await connect("\\Slow")
    closing = asyncio.ensure_future(user.port.user_close())
    await started.wait()
    assert not closing.done()  # as on Windows: CloseHandle waits for DisconnectNotify
    manager.rundown.begin(asyncio.get_running_loop().time())
    await closing
    assert port.connection_count == 0
    assert "DisconnectNotify of port '\\Slow' (connection #" in caplog.text
    assert "by the end of the shutdown grace; abandoned" in caplog.text


async def test_a_connect_notify_running_at_the_deadline_fails_the_connect(
    manager: FilterManager,
    make_port: PortFactory,
    connect: Connector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = await make_port("\\SlowConnect", connect_notify=forever)
    connecting = asyncio.ensure_future(connect("\\SlowConnect"))
    await asyncio.sleep(0)
    manager.rundown.begin(asyncio.get_running_loop().time() + 0.01)
    with pytest.raises(StatusError) as info:
        await connecting
    assert info.value.status == NtStatus.STATUS_PORT_DISCONNECTED
    assert port.connection_count == 0
    assert "ConnectNotify of port '\\SlowConnect' (pid" in caplog.text


async def test_callbacks_that_start_after_the_deadline_are_abandoned_at_once(
    manager: FilterManager,
    flt: Filter,
    make_port: PortFactory,
    connect: Connector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def teardown(f: Filter) -> None:
        ran.append("teardown")
        await asyncio.Event().wait()

    async def disconnect(cookie: object) -> None:
        ran.append("disconnect")
        await asyncio.Event().wait()

    async def message(cookie: object, data: bytes, size: int) -> Any:
        ran.append("message")
        await asyncio.Event().wait()

    await make_port("\\Late", disconnect_notify=disconnect, message_notify=message)
    user = await connect("\\Late")
    send = user.port.user_send(b"x", 4)
    assert isinstance(send, asyncio.Task)
    flt.unload_callback = teardown
    manager.rundown.begin(asyncio.get_running_loop().time() - 1)  # already over
    with caplog.at_level(logging.WARNING, logger="fltemu"):
        await flt.unload_requested()
    assert ran == ["message", "teardown", "disconnect"]
    assert send.cancelled()
    for abandoned in ("unload callback (teardown)", "MessageNotify", "DisconnectNotify"):
        assert abandoned in caplog.text


async def test_a_later_deadline_does_not_extend_an_earlier_one(manager: FilterManager) -> None:
    now = asyncio.get_running_loop().time()
    manager.rundown.begin(now + 1)
    manager.rundown.begin(now + 100)
    assert manager.rundown.deadline == now + 1


def test_without_a_rundown_callbacks_are_waited_for_as_long_as_they_take(
    manager: FilterManager,
) -> None:
    assert manager.rundown.deadline is None
    assert manager.rundown_timeout is None
