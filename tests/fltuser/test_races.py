"""Races where a message could be lost or a call could hang, each forced deterministically."""

from __future__ import annotations

import asyncio
import os
import resource
import threading
from typing import Any

import pytest

import fltuser
from fltemu import NtStatus
from fltemu.testing import DaemonThread
from fltuser import _async, _sync

from ..helpers import until


def test_sync_get_that_times_out_as_its_message_arrives_keeps_it_5a(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Thread A's get_message times out; before it withdraws its getter, the message reaches
    # that getter and another thread (B, the reader) completes it. A must return it.
    with DaemonThread() as daemon:
        harness = daemon.create_port("\\Race", max_connections=1)
        port = fltuser.connect("\\Race", address=daemon.address)
        harness.wait_for_connection()
        original = _sync.Port._wait
        sent: list[Any] = []

        def wait(self: _sync.Port, waiter: Any, deadline: float | None) -> object:
            try:
                return original(self, waiter, deadline)
            except TimeoutError:
                if not sent:  # first timeout: deliver now, in the gap before the withdrawal
                    sent.append(harness.send_message(b"precious", timeout=5))
                    # The other thread, now the reader, completes our getter meanwhile.
                    until_sync(lambda: harness.connections[0].queues.getter_count == 0)
                raise

        monkeypatch.setattr(_sync.Port, "_wait", wait)
        results: dict[str, Any] = {}

        def get(name: str, timeout: float) -> None:
            try:
                results[name] = port.get_message(64, timeout=timeout)
            except (TimeoutError, fltuser.HResultError) as exc:
                results[name] = exc

        a = threading.Thread(target=get, args=("A", 0.2))
        a.start()
        until_sync(lambda: harness.connections[0].queues.getter_count == 1)
        b = threading.Thread(target=get, args=("B", 1.0))
        b.start()
        a.join(10)
        b.join(10)
        port.close()
    assert sent[0].status == NtStatus.STATUS_SUCCESS
    got = [r for r in results.values() if isinstance(r, fltuser.Message)]
    assert [m.data for m in got] == [b"precious"], results


def until_sync(predicate: Any, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


async def test_async_get_cancelled_by_another_task_keeps_its_message_5a(
    daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task is cancelled in the same loop step that reads its message: the message reaches
    # the cancelled future before the task runs its except block, so the protocol itself
    # must hand it to the next reader.
    flt = daemon.register_filter("race")
    clients: list[Any] = []

    def on_connect(cp: Any, cookie: object, ctx: bytes) -> int:
        clients.append(cp)
        return 0

    await flt.create_communication_port(
        "\\Race", connect_notify=on_connect, disconnect_notify=lambda c: None, max_connections=1
    )
    original = _async._Protocol.buffer_updated
    armed: list[asyncio.Task[Any]] = []

    def buffer_updated(self: Any, nbytes: int) -> None:
        if armed:
            armed.pop().cancel()  # another task's cancel lands just before the read is handled
        original(self, nbytes)

    # Patched before connecting: uvloop binds the protocol's methods when the connection opens.
    monkeypatch.setattr(_async._Protocol, "buffer_updated", buffer_updated)
    port = await fltuser.aconnect("\\Race", address=daemon.address)
    getter = asyncio.create_task(port.get_message(64))
    await until(lambda: bool(clients) and clients[0].queues.getter_count == 1)
    armed.append(getter)
    assert (await flt.send_message(clients[0], b"precious")).status == NtStatus.STATUS_SUCCESS
    with pytest.raises(asyncio.CancelledError):
        await getter
    message = await port.get_message(64, timeout=5)
    assert message.data == b"precious"
    await port.aclose()


def test_sync_timeout_works_on_descriptors_above_1024() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard descriptor limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    burned: list[int] = []
    try:
        while len(burned) < 1100:
            burned.append(os.open(os.devnull, os.O_RDONLY))
        with DaemonThread() as daemon:
            daemon.create_port("\\Fd")
            with fltuser.connect("\\Fd", address=daemon.address) as port:
                assert port._sock.fileno() >= 1024
                with pytest.raises(TimeoutError):
                    port.get_message(64, timeout=0.1)
    finally:
        for fd in burned:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
