"""Tests of the built-in samples (scanner, minispy, avscan) through a real daemon and clients.

Helpers shared by the sample tests live here: ``running`` loads a sample on a filter the way
``fltemu serve --filter NAME --set NAME.KEY=VALUE`` does (setup, then teardown at the end),
``send_from`` sends with an output buffer at a given address, and ``place`` puts a file into
a watched directory in one step (rename), so that a poll sees it whole.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

from fltemu.daemon import Daemon
from fltemu.kernel import Filter
from fltemu.wire import PROTOCOL_VERSION, Connect, SendRequest, SendResult

from ..daemon.test_server import RawClient


@contextlib.asynccontextmanager
async def running(daemon: Daemon, module: ModuleType, **settings: str) -> AsyncIterator[Filter]:
    """A filter running ``module`` with ``settings``; its teardown runs on the way out."""
    flt = daemon.register_filter(module.__name__.rsplit(".", 1)[-1])
    flt.settings = dict(settings)
    await module.setup(flt)
    try:
        yield flt
    finally:
        await module.teardown(flt)


async def send_from(
    daemon: Daemon, port: str, data: bytes, out_size: int, out_address: int, context: bytes = b""
) -> SendResult:
    """FilterSendMessage from a client whose output buffer sits at ``out_address`` (its low
    bits, protocol §7.1): a raw wire client, since the Python client sends none."""
    client = await RawClient.open(daemon.address)
    try:
        await client.send(Connect(PROTOCOL_VERSION, port, context))
        assert (await client.read()).status == 0
        await client.send(SendRequest(1, data, out_size, out_address))
        result = await client.read()
        assert isinstance(result, SendResult)
        return result
    finally:
        await client.close()


def place(directory: Path, name: str, data: bytes) -> Path:
    """Create ``directory/name`` with ``data`` atomically (written beside it, then renamed)."""
    scratch = directory.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    staged = scratch / name
    staged.write_bytes(data)
    target = directory / name
    os.replace(staged, target)
    return target
