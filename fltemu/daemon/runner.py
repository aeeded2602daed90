"""Runs the daemon as a process: the loop choice, signals, filter modules, graceful shutdown.

Not here: argument parsing (``cli``), the daemon object (``server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .._limits import DEFAULT_MAX_MESSAGE_BYTES
from ..errors import FltEmuError
from ..kernel import SecurityDescriptor
from .loader import FilterLoadError, load_filter
from .server import Daemon

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


async def serve(config: DaemonConfig) -> None:
    """Run the daemon until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def first_signal(sig: signal.Signals) -> None:
        stop.set()
        # A second signal does not wait for the grace, nor for a callback that blocks the
        # loop: a plain handler runs between bytecodes, whatever the loop is doing.
        for each in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(each)
            signal.signal(each, _exit_now)

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
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, first_signal, sig)
    async with Daemon(
        config.address,
        max_message_bytes=config.max_message_bytes,
        socket_mode=config.socket_mode,
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
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_DFL)


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


def _exit_now(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"fltemu: {name} again during shutdown: exiting without waiting\n".encode())
    os._exit(128 + signum)


def run(config: DaemonConfig) -> None:
    """Run ``serve(config)`` on the chosen loop (blocking)."""
    factory = loop_factory(config.loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(config))
