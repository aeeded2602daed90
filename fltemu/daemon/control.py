"""Control commands: what ``fltemu ports / send / disconnect / unload`` ask the daemon.

The daemon side (``run_control``) answers one ``Control`` request with one ``ControlResult``;
the client side (``call``) is a blocking one-shot exchange for the CLI and tests. Only root
and the daemon's own user may send commands.
Not here: argument parsing and printing (``cli``), port semantics (``fltemu.kernel``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Generator, Iterator
from typing import Final

from ..errors import FltEmuError, ProtocolError
from ..kernel import ClientPort, Filter, FilterManager, ProcessInfo, ServerPort, ServerPortState
from ..status import NtStatus
from ..wire import (
    EOF,
    NEED_DATA,
    PROTOCOL_VERSION,
    ConnectionInfo,
    Control,
    ControlResult,
    DaemonInfo,
    FilterInfo,
    Goodbye,
    PortInfo,
    Role,
    Trace,
    TraceEvent,
    WireConnection,
    is_trusted_peer,
    resolve_address,
)
from .peer import socket_peer

__all__ = [
    "COMMANDS",
    "ControlError",
    "call",
    "may_control",
    "run_control",
    "snapshot",
    "trace",
    "trace_note",
    "trace_refusal",
    "wait_ready",
]

#: The commands ``Control.command`` may name.
COMMANDS: Final = ("status", "ports", "send", "disconnect", "unload")


def may_control(process: ProcessInfo) -> bool:
    """Whether a peer may send control commands: root or the daemon's own user."""
    return process.uid is not None and process.uid in (0, os.geteuid())


def snapshot(manager: FilterManager) -> tuple[FilterInfo, ...]:
    """Every filter, its ports (closed ones too while they have connections) and connections."""
    filters = []
    for flt in manager.filters.values():
        ports = [
            _port_info(p)
            for p in flt.all_ports
            if p.state is ServerPortState.OPEN or any(not c.is_kernel_closed for c in p.connections)
        ]
        filters.append(FilterInfo(flt.name, flt.state.value, tuple(ports)))
    return tuple(filters)


def _port_info(port: ServerPort) -> PortInfo:
    # A connection the filter closed (FltCloseClientPort) is gone from the filter's view,
    # although the user's handle stays open until it is closed: it is not listed.
    connections = tuple(
        ConnectionInfo(
            id=c.id,
            pid=c.process.pid,
            uid=c.process.uid,
            gid=c.process.gid,
            state=c.state.value,
            pending_getters=c.queues.getter_count,
            blocked_senders=c.queues.sender_count,
            awaiting_reply=c.queues.reply_waiter_count,
            sends_from_user=c.sends_from_user,
            messages_delivered=c.messages_delivered,
            messages_timed_out=c.messages_timed_out,
        )
        for c in sorted(port.connections, key=lambda c: c.id)
        if not c.is_kernel_closed
    )
    return PortInfo(
        port.name, port.state.value, port.max_connections, port.connection_count, connections
    )


def _find_ports(manager: FilterManager, name: str) -> list[ServerPort]:
    # Open ports by their exact name, then closed ones that still have connections.
    found = []
    for flt in manager.filters.values():
        for port in flt.all_ports:
            if port.name == name and (port.state is ServerPortState.OPEN or port.connections):
                found.append(port)
    return found


def _fail(status: NtStatus, message: str) -> ControlResult:
    return ControlResult(PROTOCOL_VERSION, int(status), message)


def _port_names(manager: FilterManager) -> str:
    names = sorted(p.name for f in manager.filters.values() for p in f.server_ports)
    return ", ".join(names) or "none"


def _no_port(manager: FilterManager, name: str) -> str:
    """The "no port named ..." text: the ports there are, and the fix of a lost backslash."""
    text = f"no port named '{name}' (ports: {_port_names(manager)})"
    if name and not name.startswith("\\"):
        # An unquoted \ScannerPort reaches the program as ScannerPort.
        text += f"; did you mean '\\{name}'? (quote the backslash in your shell)"
    return text


def trace_refusal(request: Trace) -> tuple[NtStatus, str] | None:
    """Why a trace must be refused at once (a port name no port can have), or None."""
    if request.port and not request.port.startswith("\\"):
        return (
            NtStatus.STATUS_OBJECT_PATH_SYNTAX_BAD,
            f"bad port name '{request.port}': a port name starts with a backslash: did you "
            f"mean '\\{request.port}'? (quote the backslash in your shell)",
        )
    return None


def trace_note(manager: FilterManager, request: Trace) -> str:
    """What a trace waits for that is not there now (a port, a connection), in words; "" when
    all is there. The trace still starts (a filter may create the port later), but says so
    rather than showing nothing, silently."""
    ports = (
        _find_ports(manager, request.port)
        if request.port
        else [p for f in manager.filters.values() for p in f.server_ports]
    )
    if request.port and not ports:
        return f"{_no_port(manager, request.port)}: waiting for one"
    if request.connection is not None:
        open_ids = sorted(c.id for p in ports for c in p.connections if c.is_connected)
        if request.connection not in open_ids:
            where = f"port '{request.port}'" if request.port else "the daemon"
            ids = ", ".join(f"#{i}" for i in open_ids) or "none"
            return (
                f"{where} has no connection #{request.connection} now (connected: {ids}; "
                "'fltemu ports' lists them): waiting for one"
            )
    return ""


def _connections(manager: FilterManager, request: Control) -> list[ClientPort] | ControlResult:
    # Names appear as written ('\\ScannerPort' would double every backslash).
    name = request.target
    ports = _find_ports(manager, name)
    if not ports:
        return _fail(NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, _no_port(manager, name))
    connections = sorted(
        (c for p in ports for c in p.connections if c.is_connected), key=lambda c: c.id
    )
    if request.connection is not None:
        chosen = [c for c in connections if c.id == request.connection]
        if not chosen:
            ids = ", ".join(f"#{c.id}" for c in connections) or "none"
            return _fail(
                NtStatus.STATUS_INVALID_PARAMETER,
                f"port '{name}' has no connection #{request.connection} (connected: {ids})",
            )
        return chosen
    if not connections and request.command == "send":
        return _fail(NtStatus.STATUS_PORT_DISCONNECTED, f"port '{name}' has no connected client")
    return connections


async def run_control(
    manager: FilterManager,
    request: Control,
    daemon_info: Callable[[], DaemonInfo] | None = None,
) -> ControlResult:
    """Carry out one control command.

    Args:
        manager: the daemon's Filter Manager.
        request: the command.
        daemon_info: what ``status`` answers with (the daemon's ``info``).

    Returns:
        The ControlResult: STATUS_SUCCESS, or for ``send`` whatever FltSendMessage returned,
        for ``status`` STATUS_PENDING while the daemon is not ready yet;
        STATUS_OBJECT_NAME_NOT_FOUND (no such port or filter), STATUS_INVALID_PARAMETER (no
        such connection, unknown command, a reply length over 0xFFFFFFEF),
        STATUS_PORT_DISCONNECTED (``send`` to a port with no client connected). A
        ``disconnect`` of a port with no connection succeeds with a count of 0.
    """
    command = request.command
    if command == "status" and daemon_info is not None:
        info = daemon_info()
        status = NtStatus.STATUS_SUCCESS if info.ready else NtStatus.STATUS_PENDING
        return ControlResult(PROTOCOL_VERSION, int(status), daemon=info)
    if command == "ports":
        return ControlResult(PROTOCOL_VERSION, 0, filters=snapshot(manager))
    if command == "unload":
        flt: Filter | None = manager.filters.get(request.target)
        if flt is None:
            known = ", ".join(sorted(manager.filters)) or "none"
            return _fail(
                NtStatus.STATUS_OBJECT_NAME_NOT_FOUND,
                f"no filter named '{request.target}' (loaded: {known})",
            )
        await flt.unload_requested()  # its module's teardown first, as FilterUnloadCallback
        return ControlResult(PROTOCOL_VERSION, 0, f"filter '{flt.name}' unloaded")
    if command in ("send", "disconnect"):
        found = _connections(manager, request)
        if isinstance(found, ControlResult):
            return found
        if command == "disconnect":
            for client_port in found:
                await client_port.server_port.filter.close_client_port(client_port)
            return ControlResult(PROTOCOL_VERSION, 0, count=len(found))
        client_port = found[0]
        try:
            result = await client_port.server_port.filter.send_message(
                client_port, request.data, request.reply_length, request.timeout
            )
        except ValueError as exc:  # a reply_length FltSendMessage cannot take
            return _fail(NtStatus.STATUS_INVALID_PARAMETER, str(exc))
        detail = f"connection #{client_port.id}"
        if result.status == NtStatus.STATUS_PORT_DISCONNECTED:
            who = f"pid {client_port.process.pid}" if client_port.process.pid else "its process"
            detail += (
                f": the client ({who}) disconnected before answering: it closed its handle or "
                "exited (see its output)"
            )
        elif result.status == NtStatus.STATUS_TIMEOUT:
            detail += ": no answer within the timeout"
        return ControlResult(PROTOCOL_VERSION, int(result.status), detail, result.reply)
    return _fail(
        NtStatus.STATUS_INVALID_PARAMETER,
        f"unknown command {command!r}; known: {', '.join(COMMANDS)}",
    )


# --- the client side -----------------------------------------------------------------------


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
        uid = socket_peer(sock).uid
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
