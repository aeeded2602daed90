"""Runs the daemon as a process: the loop choice, signals, filter modules, graceful shutdown.

Not here: argument parsing (``fltemu.cli.serve``), the daemon object (``server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .._limits import DEFAULT_MAX_MESSAGE_BYTES
from ..errors import FltEmuError
from ..kernel import SecurityDescriptor
from .loader import FilterLoadError, load_filter
from .server import DEFAULT_SHUTDOWN_GRACE, SHUTDOWN_SLACK, Daemon

__all__ = ["DaemonConfig", "LoopChoiceError", "loop_factory", "run"]

log = logging.getLogger(__name__)


class ReadyFileError(FltEmuError):
    """``--ready-file`` cannot be written."""


class LoopChoiceError(RuntimeError):
    """``--loop uvloop`` was asked for where uvloop does not import."""


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``fltemu serve`` needs."""

    address: str | None = None
    filters: tuple[str, ...] = ()
    loop: str = "auto"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    socket_mode: int = 0o600
    #: Widens what ports created with ``security=None`` admit (``--allow-*``).
    allow_uids: tuple[int, ...] = ()
    allow_gids: tuple[int, ...] = ()
    allow_everyone: bool = False
    #: filter name -> {key: value}, from ``--set NAME.KEY=VALUE``.
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    announce: Callable[[str], None] = field(default=print)
    #: Where to write the ready line too (``--ready-file``); removed at shutdown.
    ready_file: str | None = None
    #: Seconds shutdown waits, in all, for callbacks that have not returned (``--shutdown-grace``).
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event-loop factory for ``--loop``: ``auto`` prefers uvloop where it imports.

    Raises:
        LoopChoiceError: ``uvloop`` was asked for and cannot be imported.
    """
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise LoopChoiceError(
                "--loop uvloop: uvloop is not installed (pip install uvloop)"
            ) from exc
        return asyncio.new_event_loop
    return uvloop.new_event_loop


#: How long after the bound of a clean shutdown (grace + ``SHUTDOWN_SLACK``) the watchdog
#: ends a process whose shutdown is stuck anyway.
WATCHDOG_MARGIN: Final = 1.0


class _Signals:
    """SIGINT and SIGTERM: the first starts the shutdown and a watchdog, the second exits.

    The loop's own handler wakes the loop and starts the shutdown. The plain handler put over
    it runs between bytecodes whatever the loop is doing, even while a callback blocks it:
    it starts the watchdog, which ends the process if the shutdown is not over by the grace
    plus its slack (a callback that blocks the loop or ignores its cancellation), and makes
    a second signal exit at once.
    """

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._watchdog: threading.Timer | None = None

    def install(self, stop: asyncio.Event) -> None:
        """Set ``stop`` on the first signal."""
        self._loop = asyncio.get_running_loop()
        self._stop = stop
        for sig in _SIGNALS:
            self._loop.add_signal_handler(sig, stop.set)
            signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        """Back to the default handlers; the watchdog, if started, keeps watching."""
        if self._loop is None:
            return
        for sig in _SIGNALS:
            self._loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)
        self._loop = None

    def disarm(self) -> None:
        """The process is about to exit: the watchdog has nothing more to watch."""
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._watchdog is not None:
            _exit_now(signum, frame)
        limit = self._grace + SHUTDOWN_SLACK + WATCHDOG_MARGIN
        self._watchdog = threading.Timer(limit, _stuck, (limit, threading.main_thread().ident))
        self._watchdog.daemon = True
        self._watchdog.start()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


async def serve(config: DaemonConfig, signals: _Signals | None = None) -> None:
    """Run the daemon until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if signals is None:
        signals = _Signals(config.shutdown_grace)
    try:
        await _serve(config, stop, loop, signals)
    finally:
        signals.uninstall()


async def _serve(
    config: DaemonConfig,
    stop: asyncio.Event,
    loop: asyncio.AbstractEventLoop,
    signals: _Signals,
) -> None:

    unknown = set(config.settings) - {spec.partition(":")[0] for spec in config.filters}
    if unknown:
        raise FilterLoadError(
            f"--set names filters that are not loaded: {', '.join(sorted(unknown))} "
            f"(loaded: {', '.join(spec.partition(':')[0] for spec in config.filters)})"
        )
    # Filter modules are found in the current folder, as `python -m` would find them (the
    # console script's sys.path does not have it); appended, so it shadows nothing installed.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    signals.install(stop)
    async with Daemon(
        config.address,
        max_message_bytes=config.max_message_bytes,
        socket_mode=config.socket_mode,
        shutdown_grace=config.shutdown_grace,
        default_security=SecurityDescriptor.allow(
            config.allow_uids, config.allow_gids, everyone=config.allow_everyone
        ),
        ready_at_start=False,
    ) as daemon:
        # Leaving this block shuts the daemon down: each filter's teardown (its
        # FilterUnloadCallback) and unload, newest first, every wait bounded by the grace.
        for spec in config.filters:
            name = spec.partition(":")[0]
            await load_filter(daemon, spec, config.settings.get(name))
        ports = [p.name for f in daemon.manager.filters.values() for p in f.server_ports]
        loop_name = type(loop).__module__.split(".")[0]
        line = (
            f"fltemu: listening on {daemon.address} "
            f"(loop: {loop_name}; ports: {', '.join(ports) or 'none'})"
        )
        if config.ready_file is not None:
            _write_ready_file(config.ready_file, line)  # first: it may fail, and stop us
        daemon.mark_ready()
        config.announce(line)
        try:
            await stop.wait()
        finally:
            if config.ready_file is not None:
                with contextlib.suppress(OSError):
                    os.unlink(config.ready_file)
        log.info("shutting down")


def _write_ready_file(path: str, line: str) -> None:
    # Written aside and renamed: whoever sees the file sees it whole.
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w") as f:
            f.write(line + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ReadyFileError(f"--ready-file {path}: {exc.strerror or exc}") from exc


def _stuck(limit: float, main_thread: int | None) -> None:
    """The watchdog: the shutdown outlived its bound; say where it was stuck, and exit."""
    frame = sys._current_frames().get(main_thread) if main_thread is not None else None
    where = "".join(traceback.format_stack(frame)[-4:]) if frame is not None else ""
    os.write(
        2,
        f"fltemu: shutdown did not end within {limit:.1f} s of the signal (a callback blocks "
        f"the event loop or ignores its cancellation): exiting now. The daemon was at:\n"
        f"{where}".encode(),
    )
    os._exit(1)


def _exit_now(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"fltemu: {name} again during shutdown: exiting without waiting\n".encode())
    os._exit(128 + signum)


def run(config: DaemonConfig) -> None:
    """Run ``serve(config)`` on the chosen loop (blocking)."""
    factory = loop_factory(config.loop)
    signals = _Signals(config.shutdown_grace)
    try:
        # Closing the runner cancels what is left and joins the default executor's threads:
        # the watchdog watches that too.
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config, signals))
    finally:
        signals.disarm()
