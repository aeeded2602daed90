"""fltemu's control connection, from the user side: a blocking client for the daemon's
``status``, ``ports``, ``send``, ``disconnect`` and ``unload`` commands and for ``trace``
(protocol §17), used by the ``fltemu`` command line, ``fltemu.testing`` and the
benchmarks.

These are fltemu's own calls, not fltlib's: Windows has no FilterConnectCommunicationPort
equivalent for them. Only root and the daemon's own user may send them; the daemon is
checked the way ``connect`` checks it (``fltemu.wire.is_trusted_peer``, protocol §1).
Not here: the daemon's side (``fltemu.daemon.control``), printing (``fltemu.cli``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Generator, Iterator
from typing import Final

from fltemu.errors import FltEmuError, ProtocolError
from fltemu.status import NtStatus
from fltemu.wire import (
    EOF,
    NEED_DATA,
    PROTOCOL_VERSION,
    Control,
    ControlResult,
    Goodbye,
    Role,
    Trace,
    TraceEvent,
    WireConnection,
    is_trusted_peer,
    resolve_address,
)

from ._peer import peer_uid

__all__ = [
    "STATUS_TIMEOUT_SECONDS",
    "ControlError",
    "ControlTimeoutError",
    "NoDaemonError",
    "call",
    "trace",
    "wait_ready",
]


class ControlError(FltEmuError):
    """The daemon could not be reached or broke off the exchange."""


class NoDaemonError(ControlError):
    """Nothing listens at the address (yet)."""


class ControlTimeoutError(ControlError):
    """The daemon did not answer in time (it is busy starting, or stuck)."""


#: How long ``fltemu status`` waits for an answer: a health check must not hang on a daemon
#: that accepts connections but does not answer.
STATUS_TIMEOUT_SECONDS: Final = 10.0


def _open(
    path: str, request: Control | Trace, wire: WireConnection, timeout: float | None = None
) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)  # None: blocking, without a bound
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise NoDaemonError(
                f"no fltemu daemon is listening on {path} ({exc.strerror or exc}); "
                "start one with 'fltemu serve', or pass --address / set FLTEMU_SOCKET"
            ) from exc
        uid = peer_uid(sock)
        if not is_trusted_peer(uid):
            raise ControlError(
                f"the daemon at {path} runs as uid {uid}, not as you or root; set "
                f"FLTEMU_TRUST_UID={uid} to talk to it anyway"
            )
        sock.sendall(wire.send(request))
    except BaseException:
        sock.close()
        raise
    return sock


def _events(
    request: Control | Trace, address: str | None, timeout: float | None = None
) -> Generator[object, None, None]:
    """Open a control or trace connection, send ``request`` and yield the daemon's messages
    (blocking) until it closes the connection; the socket is closed when the caller stops.
    ``timeout`` bounds each step (connecting, sending, each read).

    Raises:
        ControlError: no daemon, or the connection broke or carried nonsense;
            ControlTimeoutError when a step took longer than ``timeout``.
    """
    path = resolve_address(address)
    wire = WireConnection(Role.USER)
    try:
        sock = _open(path, request, wire, timeout)
    except TimeoutError as exc:
        raise ControlTimeoutError(f"the daemon at {path} did not answer in time") from exc
    try:
        while True:
            data = sock.recv(65536)
            wire.receive_data(data)
            while (event := wire.next_event()) is not NEED_DATA:
                if event is not EOF:
                    yield event
            if not data:
                return
    except ProtocolError as exc:
        raise ControlError(f"the daemon at {path} answered nonsense: {exc}") from exc
    except TimeoutError as exc:
        raise ControlTimeoutError(f"the daemon at {path} did not answer in time") from exc
    except OSError as exc:
        raise ControlError(f"talking to the daemon at {path} failed: {exc}") from exc
    finally:
        sock.close()


def call(
    request: Control, address: str | None = None, timeout: float | None = None
) -> ControlResult:
    """Send one control command and wait for its answer (blocking).

    Raises:
        ControlError: no daemon listens at the address, or it closed without answering;
            ControlTimeoutError when a step took longer than ``timeout`` seconds.
    """
    with contextlib.closing(_events(request, address, timeout)) as events:
        for event in events:
            if isinstance(event, ControlResult):
                return event
            if isinstance(event, Goodbye):
                raise ControlError(f"the daemon refused: {event.reason}")
    raise ControlError("the daemon closed the connection without answering")


def trace(request: Trace, address: str | None = None) -> Iterator[TraceEvent]:
    """Open a trace connection and yield its events as they come (blocking), the ``start``
    event first, until the daemon ends the trace (then it returns) or the caller stops.

    Raises:
        ControlError: no daemon, not allowed (root and the daemon's user only), or the
            connection broke.
    """
    started = False
    with contextlib.closing(_events(request, address)) as events:
        for event in events:
            if isinstance(event, TraceEvent):
                started = True
                yield event
            elif isinstance(event, Goodbye):
                if not started:
                    raise ControlError(f"the daemon refused: {event.reason}")
                return
    if not started:
        raise ControlError("the daemon closed the connection without answering")


def wait_ready(
    address: str | None = None, timeout: float | None = None, interval: float = 0.1
) -> ControlResult:
    """Wait until a daemon answers ``status`` as ready; returns that answer (blocking).

    Raises:
        TimeoutError: none was ready within ``timeout`` seconds (``None``: wait forever);
            the message says what was seen last.
        ControlError: a daemon answered but refused (another user's daemon, say).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last = "no daemon answered"
    while True:
        remaining = None if deadline is None else max(0.01, deadline - time.monotonic())
        try:
            result = call(Control(PROTOCOL_VERSION, "status"), address, remaining)
        except (NoDaemonError, ControlTimeoutError) as exc:
            last = str(exc)
        else:
            if result.status == NtStatus.STATUS_SUCCESS:
                return result
            if result.status != NtStatus.STATUS_PENDING:
                raise ControlError(
                    f"the daemon answered {NtStatus(result.status)}: {result.message}"
                )
            last = "the daemon is starting (its filters are not set up yet)"
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(last)
        time.sleep(
            interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
        )
