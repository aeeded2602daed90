"""Tests of the built-in samples (scanner, minispy, avscan) through a real daemon and clients.

Helpers shared by the sample tests live here: ``running`` loads a sample on a filter the way
``fltemu serve --filter NAME --set NAME.KEY=VALUE`` does (setup, then teardown at the end), and
``place`` puts a file into a watched directory in one step (rename), so that a poll sees it
whole.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

from fltemu.daemon import Daemon
from fltemu.kernel import Filter


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


def place(directory: Path, name: str, data: bytes) -> Path:
    """Create ``directory/name`` with ``data`` atomically (written beside it, then renamed)."""
    scratch = directory.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    staged = scratch / name
    staged.write_bytes(data)
    target = directory / name
    os.replace(staged, target)
    return target
