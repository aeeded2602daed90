"""Control commands: the daemon's answer to what ``fltemu status / ports / send / disconnect
/ unload`` ask, and who may trace.

``run_control`` answers one ``Control`` request with one ``ControlResult``. Only root and the
daemon's own user may send commands.
Not here: the client (``fltuser.control``), printing (``fltemu.cli``), port semantics
(``fltemu.kernel``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from ..kernel import ClientPort, Filter, FilterManager, ProcessInfo, ServerPort, ServerPortState
from ..status import NtStatus
from ..wire import (
    PROTOCOL_VERSION,
    ConnectionInfo,
    Control,
    ControlResult,
    DaemonInfo,
    FilterInfo,
    PortInfo,
    Trace,
)

__all__ = ["COMMANDS", "may_control", "run_control", "snapshot", "trace_note", "trace_refusal"]

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
