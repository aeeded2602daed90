"""Shared fixtures: both event loops, a socket path, a running daemon, leak checks."""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fltemu
from fltemu.daemon import Daemon

pytest_plugins = ["pytester"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs once on the default loop and once on uvloop (where it imports)."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    try:
        import uvloop
    except ImportError:
        pass
    else:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A fresh Unix socket path (short: AF_UNIX paths are limited to about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="fltemu-") as tmp:
        yield os.path.join(tmp, "d.sock")


@pytest.fixture
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Calls of the loop's exception handler during the test; the test fails if any."""
    errors: list[dict[str, Any]] = []
    yield errors


@pytest.fixture
async def daemon(socket_path: str, loop_errors: list[dict[str, Any]]) -> AsyncIterator[Daemon]:
    """A running in-process daemon; fails the test on loop errors or leaked tasks."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    before = asyncio.all_tasks()
    async with fltemu.Daemon(address=socket_path) as d:
        yield d
    assert not Path(socket_path).exists(), "the daemon left its socket file behind"
    await asyncio.sleep(0)
    leaked = {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}
    leaked = {t for t in leaked if not t.done()}
    assert not leaked, f"tasks leaked past daemon shutdown: {leaked}"
    gc.collect()
    assert not loop_errors, f"the loop's exception handler was called: {loop_errors}"
