"""One user-mode connection: bytes from the socket into the wire core, events into the kernel.

A thin asyncio ``BufferedProtocol``: it reads into one reused buffer, feeds the sans-IO
``WireConnection``, dispatches every complete request of a read to the kernel model
synchronously where it can, and writes all the answers a read produced in one ``write``.
Not here: protocol rules (``fltemu.wire``), port rules (``fltemu.kernel``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from typing import Any, Final, Protocol, cast

from ..errors import LocalProtocolError, RemoteProtocolError, StatusError
from ..kernel import ClientPort, FilterManager, ProcessInfo
from ..kernel.ports import SendOutcome
from ..status import NtStatus
from ..wire import (
    ATTACH_TOKEN_BYTES,
    EOF,
    NEED_DATA,
    OPTION_ATTACH,
    OPTION_DISCONNECT_NOTICE,
    OPTION_SECTIONS,
    PROTOCOL_VERSION,
    Attach,
    Connect,
    ConnectResult,
    Control,
    ControlResult,
    DaemonInfo,
    Disconnected,
    GetCancel,
    GetRequest,
    GetResult,
    Goodbye,
    ReplyRequest,
    ReplyResult,
    Role,
    Section,
    SendRequest,
    SendResult,
    Trace,
    WireConnection,
)
from .control import may_control, run_control, trace_note, trace_refusal
from .peer import socket_peer

__all__ = ["READ_BUFFER_BYTES", "Session", "SessionHost"]

log = logging.getLogger(__name__)

#: Bytes read per ``recv_into``: big enough that a burst of 64 pipelined 1 KiB requests
#: arrives in one read. One buffer serves every session of a daemon (see ``get_buffer``),
#: so an idle connection costs no read buffer at all.
READ_BUFFER_BYTES: Final = 64 * 1024

#: Answers of one read are written in one call, unless they pass this size.
FLUSH_BYTES: Final = 64 * 1024
#: Requests one connection may have open (pending gets, sends whose MessageNotify runs); one
#: more fails at once with STATUS_INSUFFICIENT_RESOURCES, as when Windows runs out of pool
#: memory. It keeps one client from growing the daemon without limit (protocol §14).
MAX_OUTSTANDING: Final = 1024
_SUCCESS: Final = int(NtStatus.STATUS_SUCCESS)


def peer_process(transport: asyncio.BaseTransport) -> ProcessInfo:
    """The connecting process's pid, uid and gid, from SO_PEERCRED where the OS has it."""
    return socket_peer(transport.get_extra_info("socket"))


#: What a session still sends after its client's EOF: the answers to its requests.
_ANSWERS: Final = frozenset({SendResult, GetResult, ReplyResult, Section})


class _AttachedGet:
    """The kernel's token for a get that came on an attached socket: the connection's own
    session completes it (``Channel.complete_get``) and hands it to ``session``."""

    __slots__ = ("rid", "session")

    def __init__(self, session: Session, rid: int) -> None:
        self.session = session
        self.rid = rid

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is _AttachedGet and other.session is self.session and other.rid == self.rid
        )

    def __hash__(self) -> int:
        return hash((id(self.session), self.rid))


class SessionHost(Protocol):
    """What a session needs of the daemon that accepted it (``Daemon`` is the implementation)."""

    @property
    def manager(self) -> FilterManager:
        """The kernel model the session's calls go to."""
        ...

    @property
    def max_message_bytes(self) -> int:
        """The payload limit the session's wire enforces."""
        ...

    @property
    def attachable(self) -> dict[bytes, Session]:
        """Open connections another socket may join, by attach token (protocol §5b)."""
        ...

    def info(self) -> DaemonInfo:
        """What ``status`` answers."""
        ...

    def read_buffer(self) -> memoryview:
        """The read buffer every session shares."""
        ...

    def next_session_id(self) -> int:
        """A number for a new session, for logs."""
        ...

    def session_opened(self, session: Session) -> None:
        """The session's connection was made."""
        ...

    def session_closed(self, session: Session) -> None:
        """The session's connection is gone, or was handed to a trace."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task that the daemon's shutdown waits for, then cancels."""
        ...

    def start_trace(
        self, transport: asyncio.BaseTransport, wire: WireConnection, request: Trace, note: str = ""
    ) -> None:
        """Hand the session's transport over to a trace subscriber."""
        ...


class Session(asyncio.BufferedProtocol):
    """The daemon's end of one connection; implements the kernel's ``Channel``."""

    def __init__(self, daemon: SessionHost) -> None:
        self._daemon = daemon
        self._wire = WireConnection(Role.KERNEL, max_message_bytes=daemon.max_message_bytes)
        self._out = bytearray()
        self._in_batch = False
        #: The socket is not read while the peer does not read its answers; requests
        #: already read wait in the wire buffer.
        self._write_paused = False
        self._held = False
        self._flush_handle: asyncio.Handle | None = None
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._closing = False
        #: The client half-closed (CloseHandle): its teardown runs, and only the answers of
        #: requests it had made still go out (protocol §10).
        self._draining = False
        self.port: ClientPort | None = None
        #: Connect.options: Windows' dwOptions and the client's OPTION_* capabilities.
        self._options = 0
        self._control_task: asyncio.Task[None] | None = None
        self.process = ProcessInfo(None, None, None)
        self.sid = daemon.next_session_id()
        #: An attached socket's session: the connection's own session (protocol §5b), whose
        #: port this one's calls use. None for a connection's own session.
        self._joined: Session | None = None
        #: A connection's own session: the sessions attached to it, and its token.
        self._attached: set[Session] = set()
        self._attach_token = b""

    def __repr__(self) -> str:
        return f"<Session #{self.sid} pid={self.process.pid} port={self.port!r}>"

    def _peer(self) -> str:
        p = self.process
        return f"session #{self.sid} (pid {p.pid}, uid {p.uid})"

    # --- asyncio.BufferedProtocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        # Kept: on CPython 3.11 every asyncio.get_running_loop() makes a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self.process = peer_process(transport)
        self._daemon.session_opened(self)
        log.debug("%s: connected", self._peer())

    def get_buffer(self, sizehint: int) -> memoryview:
        # The daemon's shared buffer: the loop reads one transport at a time, get_buffer,
        # recv_into, then buffer_updated, and buffer_updated consumes every byte before it
        # returns (the frame reader copies a partial frame into the connection's own buffer).
        return self._daemon.read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._wire.receive_data(self._daemon.read_buffer()[:nbytes])
        self._process_events()

    def eof_received(self) -> bool:
        self._wire.receive_data(b"")
        self._process_events()
        port = self.port
        if port is None or self._closing or self._draining or self._joined is not None:
            return False  # let the transport close itself
        # CloseHandle returns only after DisconnectNotify (§2.4): the client half-closed and
        # waits for our end to close, which happens once the teardown has run, so that a
        # close followed by a reconnect finds the connection slot free (§6.4). Until then
        # the sends it had running get their answers (the wire is DRAINING), nothing else.
        self._draining = True
        port.user_closing()
        self._daemon.spawn(self._close_after_teardown(port))
        return True

    async def _close_after_teardown(self, port: ClientPort) -> None:
        try:
            await port.user_close()
        finally:
            if self._transport is not None and not self._closed:
                self._flush()  # the answers of the sends that ran to the end
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._daemon.session_closed(self)
        if self._joined is not None:
            self._leave()
            return
        self._end_attached()
        if self.port is not None:
            self.port.user_closing()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._control_task is not None:
            # The command's caller left (Ctrl-C on ``fltemu send``): withdraw its message.
            self._control_task.cancel()
        port = self.port
        if port is not None:
            # CloseHandle: the teardown runs in the background; the daemon waits for it at
            # shutdown.
            self._daemon.spawn(port.user_close())
        log.debug("%s: closed", self._peer())

    def pause_writing(self) -> None:
        # The peer is not reading its answers: answer nothing more, and read nothing more,
        # until it does (requests already read stay in the wire buffer).
        self._write_paused = True
        self._hold()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume()

    def _hold(self) -> None:
        if not self._held and self._transport is not None and not self._closed:
            self._held = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        """Serve what was read while paused, then read again."""
        if not self._held or self._closed or self._write_paused:
            return
        self._held = False
        self._process_events()
        if not self._held and self._transport is not None and not self._closed:
            self._transport.resume_reading()

    # --- kernel Channel -----------------------------------------------------------------------

    def complete_get(
        self,
        token: object,
        status: NtStatus,
        message_id: int = 0,
        reply_length: int = 0,
        data: bytes = b"",
        required_size: int = 0,
    ) -> None:
        """Send the completion of pending get ``token``: its request id, or for a get that
        came on an attached socket, that socket's ``_AttachedGet``."""
        if type(token) is _AttachedGet:
            token.session.complete_get(
                token.rid, status, message_id, reply_length, data, required_size
            )
            return
        if self._closed:
            return
        self._send(GetResult(token, int(status), message_id, reply_length, data, required_size))  # type: ignore[arg-type]

    def kernel_disconnected(self) -> None:
        """Tell a client that asked for it that the filter ended the connection (protocol §10)."""
        for session in self._attached:
            session.kernel_disconnected()
        if not self._closed and self._options & OPTION_DISCONNECT_NOTICE:
            self._send(Disconnected(int(NtStatus.STATUS_PORT_DISCONNECTED)))

    # --- attached sockets (protocol §5b) ------------------------------------------------------

    def _get_token(self, rid: int) -> object:
        """What the kernel keeps for a get of this session: the rid, or for an attached
        socket a token that routes the completion back to it."""
        return rid if self._joined is None else _AttachedGet(self, rid)

    def _on_attach(self, request: Attach) -> None:
        target = self._daemon.attachable.get(request.token)
        status = NtStatus.STATUS_SUCCESS
        if request.version != PROTOCOL_VERSION:
            status = NtStatus.STATUS_REVISION_MISMATCH
        elif (
            target is None
            or target.port is None
            or target._closing
            or target._draining
            or target._closed
            # The token is the guard: only the process that connected the handle got it
            # (through the connect IOCTL's output). The uid is checked too; the pid cannot
            # be, as the handle's own socket belongs to winedevice.exe.
            or target.process.uid != self.process.uid
        ):
            status = NtStatus.STATUS_ACCESS_DENIED
        if status != NtStatus.STATUS_SUCCESS or target is None:
            log.info("%s: attach refused: %s", self._peer(), status)
            self._send(ConnectResult(PROTOCOL_VERSION, int(status)))
            self._close_after_flush()
            return
        self._joined = target
        self.port = target.port
        self._options = request.options
        target._attached.add(self)
        log.debug("%s: attached to session #%d", self._peer(), target.sid)
        self._send(ConnectResult(PROTOCOL_VERSION, _SUCCESS, self._daemon.max_message_bytes))
        if self.port is not None and not self.port.is_connected:
            self.kernel_disconnected()

    def _leave(self) -> None:
        """An attached socket closed: its pending gets are withdrawn (their messages go to
        the next reader, §3.3); the connection itself lives on with its own socket."""
        joined, self._joined = self._joined, None
        port, self.port = self.port, None
        if joined is not None:
            joined._attached.discard(self)
        if port is not None:
            for rid, cls in list(self._wire.outstanding.items()):
                if cls is GetResult:
                    port.user_cancel_get(_AttachedGet(self, rid))

    def _end_attached(self) -> None:
        """The connection ends: its attached sockets are told so and closed."""
        if self._attach_token:
            self._daemon.attachable.pop(self._attach_token, None)
            self._attach_token = b""
        for session in list(self._attached):
            session.close("the handle's connection ended")

    # --- dispatch -----------------------------------------------------------------------------

    def _process_events(self) -> None:
        wire = self._wire
        send = self._send
        self._in_batch = True
        outstanding = wire.outstanding
        try:
            while True:
                if len(self._out) >= FLUSH_BYTES:
                    # Big answers go out as they come, so that a peer that does not read
                    # them pauses us (pause_writing) instead of its answers piling up here.
                    self._flush()
                if self._write_paused:
                    self._hold()
                    break
                try:
                    event = wire.next_event()
                except RemoteProtocolError as exc:
                    self._fail(exc)
                    return
                if event is NEED_DATA:
                    break
                cls = type(event)
                port = self.port
                if (cls is SendRequest or cls is GetRequest) and len(outstanding) > MAX_OUTSTANDING:
                    # Over the bound: this request fails at once, as a driver's request fails
                    # when pool memory runs out; replies, cancels and EOF still get through.
                    self._refuse(event)  # type: ignore[arg-type]
                elif cls is SendRequest:
                    assert port is not None
                    outcome = port.user_send(event.data, event.out_size, event.out_address)  # type: ignore[attr-defined]
                    if type(outcome) is tuple and len(outcome) == 2:
                        # A plain MessageNotify's answer: the common case, no sections.
                        send(SendResult(event.rid, outcome[0], outcome[1]))  # type: ignore[attr-defined]
                    else:
                        self._send_outcome(event.rid, outcome)  # type: ignore[attr-defined]
                elif cls is GetRequest:
                    assert port is not None
                    rid = event.rid  # type: ignore[attr-defined]
                    # The rid itself, but for a get on an attached socket (protocol §5b).
                    token = rid if self._joined is None else _AttachedGet(self, rid)
                    status = port.user_get(token, event.buffer_size)  # type: ignore[attr-defined]
                    if status is not None:
                        self._send(GetResult(rid, int(status)))
                elif cls is ReplyRequest:
                    assert port is not None
                    status = port.user_reply(event.message_id, event.status, event.data)  # type: ignore[attr-defined]
                    self._send(ReplyResult(event.rid, int(status)))  # type: ignore[attr-defined]
                elif cls is GetCancel:
                    assert port is not None
                    port.user_cancel_get(self._get_token(event.rid))  # type: ignore[attr-defined]
                elif cls is Connect:
                    self._on_connect(event)  # type: ignore[arg-type]
                elif cls is Attach:
                    self._on_attach(event)  # type: ignore[arg-type]
                elif cls is Control:
                    self._on_control(event)  # type: ignore[arg-type]
                elif cls is Trace:
                    self._on_trace(event)  # type: ignore[arg-type]
                    break
                elif event is EOF:
                    break
        finally:
            self._in_batch = False
            if self._out and not self._closed and not self._closing:
                self._flush()

    def _refuse(self, request: SendRequest | GetRequest) -> None:
        status = int(NtStatus.STATUS_INSUFFICIENT_RESOURCES)
        if type(request) is SendRequest:
            self._send(SendResult(request.rid, status))
        else:
            self._send(GetResult(request.rid, status))

    def _send_outcome(self, rid: int, outcome: SendOutcome | asyncio.Task[SendOutcome]) -> None:
        """Answer a SendRequest: now, or when its coroutine MessageNotify has run."""
        if isinstance(outcome, tuple):
            self._send_result(rid, outcome)
            return

        def done(task: asyncio.Task[SendOutcome]) -> None:
            if self._closed:
                return
            if task.cancelled():
                # Cancelled by the rundown: the connection is going, and its caller must
                # not wait for ever.
                self._send(SendResult(rid, int(NtStatus.STATUS_PORT_DISCONNECTED)))
                return
            if task.exception() is not None:  # a bug in the kernel model: still answer
                self._send(SendResult(rid, int(NtStatus.STATUS_UNSUCCESSFUL)))
                return
            self._send_result(rid, task.result())

        outcome.add_done_callback(done)

    def _send_result(self, rid: int, outcome: SendOutcome) -> None:
        if len(outcome) == 3:
            # Section handles: real sections for a client that can open them (protocol §7.1);
            # the others see the output as the filter wrote it.
            if self._options & OPTION_SECTIONS:
                for offset, content in outcome[2].items():
                    self._send(Section(rid, offset, content))
        self._send(SendResult(rid, int(outcome[0]), outcome[1]))

    def _on_connect(self, request: Connect) -> None:
        if request.version != PROTOCOL_VERSION:
            log.info(
                "%s: refused: it speaks protocol version %d, the daemon speaks %d",
                self._peer(),
                request.version,
                PROTOCOL_VERSION,
            )
            self._send(ConnectResult(PROTOCOL_VERSION, int(NtStatus.STATUS_REVISION_MISMATCH)))
            self._close_after_flush()
            return
        self._daemon.spawn(self._connect(request))

    async def _connect(self, request: Connect) -> None:
        daemon = self._daemon
        try:
            port = await daemon.manager.connect(
                request.port_name, request.context, self.process, self
            )
        except StatusError as exc:
            log.info("%s: connect to '%s' failed: %s", self._peer(), request.port_name, exc.status)
            if not self._closed:
                self._send(ConnectResult(PROTOCOL_VERSION, int(exc.status)))
                self._close_after_flush()
            return
        if self._closed:
            # The peer left while ConnectNotify ran: it never saw its handle; close it.
            await port.user_close()
            return
        self.port = port
        self._options = request.options
        log.debug("%s: connected to '%s' as #%d", self._peer(), request.port_name, port.id)
        token = b""
        if request.options & OPTION_ATTACH:
            token = self._attach_token = secrets.token_bytes(ATTACH_TOKEN_BYTES)
            daemon.attachable[token] = self
        self._send(ConnectResult(PROTOCOL_VERSION, _SUCCESS, daemon.max_message_bytes, token))
        if not port.is_connected:
            # The filter closed it already, from ConnectNotify (FltCloseClientPort, §2.6).
            self.kernel_disconnected()

    def _on_control(self, request: Control) -> None:
        if request.version != PROTOCOL_VERSION:
            status, text = NtStatus.STATUS_REVISION_MISMATCH, "protocol version mismatch"
        elif not may_control(self.process):
            status = NtStatus.STATUS_ACCESS_DENIED
            text = "control commands are for root and the daemon's own user"
        else:
            self._control_task = self._daemon.spawn(self._control(request))
            return
        log.info("%s: control command %r refused: %s", self._peer(), request.command, text)
        self._send(ControlResult(PROTOCOL_VERSION, int(status), text))
        self._close_after_flush()

    def _on_trace(self, request: Trace) -> None:
        # A trace connection: once allowed, a TraceSubscriber takes the transport over.
        try:
            followed = self._wire.next_event() is not NEED_DATA
        except RemoteProtocolError:
            followed = True
        if followed:
            # Bytes that came with the Trace in one read (protocol §17.2: nothing may follow
            # it) would otherwise be left unread when the transport changes hands.
            status = NtStatus.STATUS_INVALID_PARAMETER
            text = "nothing may follow Trace on its connection"
        elif request.version != PROTOCOL_VERSION:
            status, text = NtStatus.STATUS_REVISION_MISMATCH, "protocol version mismatch"
        elif not may_control(self.process) or self._transport is None:
            status = NtStatus.STATUS_ACCESS_DENIED
            text = "tracing is for root and the daemon's own user"
        elif (refused := trace_refusal(request)) is not None:
            status, text = refused
        else:
            log.info("%s: trace started (%s)", self._peer(), request.port or "all ports")
            transport, self._transport = self._transport, None
            self._closed = True
            self._daemon.session_closed(self)
            note = trace_note(self._daemon.manager, request)
            self._daemon.start_trace(transport, self._wire, request, note)
            return
        log.info("%s: trace refused: %s", self._peer(), text)
        self._send(Goodbye(int(status), text))
        self._close_after_flush()

    async def _control(self, request: Control) -> None:
        # Readiness probes (fltemu wait / status) would flood the log.
        level = logging.DEBUG if request.command == "status" else logging.INFO
        log.log(level, "%s: control %s %s", self._peer(), request.command, request.target)
        try:
            result = await run_control(self._daemon.manager, request, self._daemon.info)
        finally:
            self._control_task = None
        self._send(result)
        self._close_after_flush()

    # --- output -------------------------------------------------------------------------------

    def _send(self, message: object) -> None:
        if self._closing or (self._draining and type(message) not in _ANSWERS):
            return
        try:
            self._wire.send_into(message, self._out)
        except LocalProtocolError as exc:
            # Only reachable through a bug: the kernel answering something never asked. The
            # wire is now in ERROR and drops every later answer, so end the connection
            # rather than leave the client waiting.
            log.error("%s: not sent, disconnecting: %s", self._peer(), str(exc))
            self._closing = False
            self._close_after_flush()
            return
        if not self._in_batch and self._flush_handle is None and not self._closed:
            # Completions from kernel tasks: coalesce everything this loop iteration produces.
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._closed or not self._out or self._transport is None:
            return
        out = self._out
        self._out = bytearray()  # hand the buffer over: the transport may keep it
        self._transport.write(out)

    def _close_after_flush(self) -> None:
        if self._transport is not None and not self._closed and not self._closing:
            self._flush()
            self._closing = True
            # An attached socket's end is not the handle's (protocol §5b): connection_lost
            # withdraws its gets and leaves the connection to its own socket.
            if self.port is not None and self._joined is None:
                self.port.user_closing()
            self._transport.close()

    def _fail(self, exc: RemoteProtocolError) -> None:
        # The text, not the exception: a handler that keeps records (pytest's, a
        # MemoryHandler) would otherwise keep its traceback, and this session with it.
        log.warning("%s: protocol error, disconnecting: %s", self._peer(), str(exc))
        self._send(Goodbye(int(exc.status_hint), str(exc)))
        self._close_after_flush()

    def close(self, reason: str = "the daemon is shutting down") -> None:
        """Disconnect this session: daemon shutdown, or the end of the connection an
        attached socket belongs to."""
        if self._transport is not None and not self._closed and not self._closing:
            self._send(Goodbye(int(NtStatus.STATUS_PORT_DISCONNECTED), reason))
            self._close_after_flush()
