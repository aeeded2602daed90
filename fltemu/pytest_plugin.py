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

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest

from .testing import DaemonProcess, DaemonThread, WineAgent
from .wine import WineBuild, WinePrefix, find_windows_side


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


@pytest.fixture(scope="session")
def fltemu_wine_build() -> WineBuild:
    """fltemu's Windows side (``fltemu.wine.find_windows_side``): the binaries an installed
    fltemu ships, or, run from a checkout of fltemu, built from its sources."""
    return find_windows_side()


@pytest.fixture(scope="session")
def fltemu_wine_prefix(fltemu_wine_build: WineBuild) -> WinePrefix:
    """The Wine prefix agents run in, with the Windows side installed: ``$WINEPREFIX``, else
    ``~/.cache/fltemu/wine`` (as ``fltemu wine``). Created on first use, which takes
    10-30 s and says so on stderr; override this fixture for another prefix."""
    prefix = WinePrefix()
    prefix.ensure(
        fltemu_wine_build, lambda line: print(f"fltemu: {line}", file=sys.stderr, flush=True)
    )
    return prefix


#: ``fltemu_wine_agent(program, *args, daemon=None, env=None, cwd=None)``.
WineAgentFactory = Callable[..., WineAgent]


@pytest.fixture
def fltemu_wine_agent(
    request: pytest.FixtureRequest, fltemu_wine_prefix: WinePrefix
) -> Iterator[WineAgentFactory]:
    """Start a Windows agent under Wine: ``fltemu_wine_agent("agent.exe", *args)``.

    It connects to the test's daemon (``fltemu_daemon_process`` or ``fltemu_daemon``,
    whichever the test uses), or to ``daemon=`` (one of those, or a socket path). Returns a
    ``fltemu.testing.WineAgent``; agents still running when the test ends are stopped.
    """
    started: list[WineAgent] = []

    def start(
        program: str | os.PathLike[str],
        *args: str,
        daemon: DaemonProcess | DaemonThread | str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> WineAgent:
        if daemon is None:
            daemon = _the_tests_daemon(request)
        address = daemon if isinstance(daemon, str) else daemon.address
        agent = WineAgent(
            program, _strings(args), address=address, prefix=fltemu_wine_prefix, env=env, cwd=cwd
        )
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def _strings(args: Sequence[str]) -> list[str]:
    return [os.fspath(arg) for arg in args]


def _the_tests_daemon(request: pytest.FixtureRequest) -> DaemonProcess | DaemonThread:
    for name in ("fltemu_daemon_process", "fltemu_daemon"):
        if name in request.fixturenames:
            daemon = request.getfixturevalue(name)
            assert isinstance(daemon, DaemonProcess | DaemonThread)
            return daemon
    raise pytest.UsageError(
        "fltemu_wine_agent needs a daemon: use fltemu_daemon_process or fltemu_daemon in the "
        "test, or pass daemon= (a socket path, or a fltemu.testing.DaemonProcess/DaemonThread)"
    )
