"""Every callback outcome has a status (reliability): a BaseException from a callback fails
that one call, and only ints are statuses (semantics §7.1)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from fltemu.errors import StatusError
from fltemu.kernel import Filter
from fltemu.status import NtStatus

from .conftest import Connector, PortFactory, Recorder


def cancelled(cookie: object, data: bytes, size: int) -> Any:
    raise asyncio.CancelledError


def cancelled_disconnect(cookie: object) -> None:
    raise asyncio.CancelledError


MALFORMED_RESULTS = [
    0.0,
    True,
    "0",
    None,
    (0.0, b"x"),
    (0, 5),
    (0, b"x", 1),  # sections that are not a mapping {offset: content}
    (0, b"x", 0),
    (0, b"x", None),
    (0, b"x", [(0, b"y")]),
    (0, b"x", "sections"),
]


@pytest.mark.parametrize("result", MALFORMED_RESULTS, ids=repr)
@pytest.mark.parametrize("flavour", ["plain", "coroutine"])
async def test_a_malformed_message_notify_result_fails_the_send(
    flt: Filter,
    rec: Recorder,
    make_port: PortFactory,
    connect: Connector,
    caplog: pytest.LogCaptureFixture,
    result: Any,
    flavour: str,
) -> None:
    async def coroutine(cookie: object, data: bytes, size: int) -> Any:
        return result

    rec.message = result if flavour == "plain" else coroutine
    await make_port("\\Malformed")
    user = await connect("\\Malformed")
    outcome = user.port.user_send(b"x", 4)
    if isinstance(outcome, asyncio.Task):
        outcome = await outcome
    assert outcome == (NtStatus.STATUS_UNSUCCESSFUL, b"")
    (line,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "MessageNotify of port '\\Malformed' returned" in line.getMessage()


async def test_a_plain_message_notify_raising_cancelled_fails_only_that_send(
    flt: Filter, rec: Recorder, make_port: PortFactory, connect: Connector
) -> None:
    rec.message = cancelled
    await make_port()
    user = await connect()
    assert user.port.user_send(b"x", 4) == (NtStatus.STATUS_UNSUCCESSFUL, b"")
    rec.message = (NtStatus.STATUS_SUCCESS, b"ok")
    assert user.port.user_send(b"x", 4) == (NtStatus.STATUS_SUCCESS, b"ok")


@pytest.mark.parametrize("raised", [asyncio.CancelledError, GeneratorExit], ids=repr)
async def test_a_connect_notify_raising_a_base_exception_refuses_the_connect(
    flt: Filter, rec: Recorder, make_port: PortFactory, connect: Connector, raised: type
) -> None:
    def refuse(*args: Any) -> Any:
        raise raised

    port = await make_port()
    port.connect_notify = refuse
    with pytest.raises(StatusError) as info:
        await connect()
    assert info.value.status == NtStatus.STATUS_UNSUCCESSFUL


@pytest.mark.parametrize("status", [0.0, True, 1.5], ids=repr)
async def test_a_connect_notify_result_that_is_no_status_refuses_the_connect(
    flt: Filter, rec: Recorder, make_port: PortFactory, connect: Connector, status: Any
) -> None:
    rec.connect_status = status
    await make_port()
    with pytest.raises(StatusError) as info:
        await connect()
    assert info.value.status == NtStatus.STATUS_UNSUCCESSFUL


async def test_a_disconnect_notify_raising_cancelled_still_ends_the_connection(
    flt: Filter, rec: Recorder, make_port: PortFactory, connect: Connector
) -> None:
    port = await make_port()
    port.disconnect_notify = cancelled_disconnect
    user = await connect()
    await user.port.user_close()
    assert not user.port.is_connected
    assert port.connection_count == 0


class Boom(BaseException):
    """Not an Exception: what a careless callback might raise."""


async def test_a_coroutine_message_notify_raising_a_base_exception_fails_that_send(
    flt: Filter, rec: Recorder, make_port: PortFactory, connect: Connector
) -> None:
    async def boom(cookie: object, data: bytes, size: int) -> Any:
        raise Boom

    port = await make_port()
    port.message_notify = boom
    port.message_notify_is_async = True
    user = await connect()
    task = user.port.user_send(b"x", 4)
    assert isinstance(task, asyncio.Task)
    assert await task == (NtStatus.STATUS_UNSUCCESSFUL, b"")
