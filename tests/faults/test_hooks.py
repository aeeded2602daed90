"""The two hooks the fault runner uses: ``ServerPort.set_message_notify`` and
``TraceHub.add_listener``."""

from __future__ import annotations

import asyncio

import pytest

import fltuser
from fltemu.kernel.trace import TraceRecord
from fltemu.status import NtStatus
from fltemu.testing import DaemonThread


def test_set_message_notify_replaces_and_restores_the_callback() -> None:
    with DaemonThread() as daemon:
        harness = daemon.create_port(
            "\\HookPort", message_notify=lambda cookie, data, size: (0, b"filter")
        )
        port = harness.server_port
        assert port is not None
        original = port.message_notify

        async def slow(cookie: object, data: bytes, size: int) -> tuple[int, bytes]:
            await asyncio.sleep(0)
            return 0, b"fault"

        with fltuser.connect("\\HookPort", address=daemon.address) as client:
            assert client.send(b"x", 16) == b"filter"

            async def swap(callback: object) -> None:
                port.set_message_notify(callback)  # type: ignore[arg-type]

            daemon.run(swap(slow))
            assert port.message_notify_is_async
            assert client.send(b"x", 16) == b"fault"
            daemon.run(swap(None))
            with pytest.raises(fltuser.HResultError) as info:
                client.send(b"x", 16)
            assert info.value.hresult == 0x80070001  # no MessageNotify: invalid function
            daemon.run(swap(original))
            assert not port.message_notify_is_async
            assert client.send(b"x", 16) == b"filter"


def test_a_listener_sees_every_record_and_tracing_stops_without_it() -> None:
    with DaemonThread() as daemon:
        daemon.create_port("\\ListenPort", message_notify=lambda c, d, s: (0, b""))
        seen: list[TraceRecord] = []

        async def listen() -> None:
            daemon.daemon.trace_hub.add_listener(seen.append)

        async def stop() -> bool:
            daemon.daemon.trace_hub.remove_listener(seen.append)
            return daemon.daemon.manager.tracer is None

        daemon.run(listen())
        with fltuser.connect("\\ListenPort", address=daemon.address) as client:
            client.send(b"x", 4)
        assert [r.kind for r in seen][:2] == ["connect", "send"]
        assert seen[0].status == NtStatus.STATUS_SUCCESS
        assert daemon.run(stop())
