"""The fltemu pytest plugin (entry point ``pytest11``): daemons as fixtures.

Fixtures:

* ``fltemu_daemon`` — an in-process daemon on a temporary socket, on a thread of its own
  (``fltemu.testing.DaemonThread``); ``create_port`` gives a ``PortHarness`` that records
  connections and drives ``send_message``. Works in plain and asyncio tests.
* ``fltemu_daemon_process`` — ``fltemu serve`` as a subprocess on a temporary socket
  (``fltemu.testing.DaemonProcess``), with the built-in samples unless you override the
  ``fltemu_serve_args`` fixture; drive it with ``send``, ``ports``, ``disconnect``, ``unload``.

Both set nothing global: pass ``.address`` to your agent (for example as ``FLTEMU_SOCKET``).
Installing fltemu's ``test`` extra brings pytest-asyncio, whose start-up warns about an unset
``asyncio_default_fixture_loop_scope`` in every suite that does not set it; this plugin
silences that one warning (only when the option is unset), so that installing fltemu does
not make a user's run noisy. Not here: the helpers themselves (``fltemu.testing``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from .testing import DaemonProcess, DaemonThread


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Before pytest-asyncio's own ``pytest_configure``: silence its unset-option warning."""
    try:
        scope = config.getini("asyncio_default_fixture_loop_scope")
    except ValueError:  # pytest-asyncio is not installed
        return
    if not scope:
        # The user chose nothing; pytest-asyncio then keeps its current behaviour, which is
        # all that warning is about. Every other warning stays as the user configured it.
        warnings.filterwarnings(
            "ignore",
            message='The configuration option "asyncio_default_fixture_loop_scope" is unset',
            category=pytest.PytestDeprecationWarning,
        )


@pytest.fixture
def fltemu_daemon() -> Iterator[DaemonThread]:
    """An in-process fltemu daemon on a temporary socket; shut down after the test."""
    with DaemonThread() as daemon:
        yield daemon


@pytest.fixture
def fltemu_serve_args() -> list[str]:
    """Arguments for ``fltemu serve`` in ``fltemu_daemon_process``; override to load yours."""
    return []


@pytest.fixture
def fltemu_daemon_process(fltemu_serve_args: list[str]) -> Iterator[DaemonProcess]:
    """``fltemu serve`` in a subprocess on a temporary socket; stopped after the test.

    The test fails if the daemon does not shut down cleanly (exit status 0).
    """
    process = DaemonProcess(fltemu_serve_args)
    process.start()
    try:
        yield process
    finally:
        code = process.stop()
    assert code == 0, f"fltemu serve exited with status {code}"
