"""Server ports and client ports (connections): their states, callbacks and teardown.

Not here: the name table (``namespace``), message matching (``messaging``), sockets
(``fltemu.daemon``).

Theory of operation
-------------------
A ``ServerPort`` is FltCreateCommunicationPort's object: a name, three callbacks, a cookie,
``max_connections`` and a live connection count. Closing it removes the name at once; its
connections live on (§2.7).

A ``ClientPort`` is one connection. Its states::

    CONNECTING --ConnectNotify succeeded--> CONNECTED --+--> DISCONNECTING --> DISCONNECTED
        |                                               |    (user close or unload: run down,
        +--ConnectNotify failed: freed, slot returned,  |     then DisconnectNotify)
           no DisconnectNotify (§2.3)                   +--> DISCONNECTED (close_client_port)

Teardown, as the lifecycle matrix of §6.6 has it:

* **User close** (CloseHandle: the socket closed). Blocked senders and pending getters get
  STATUS_PORT_DISCONNECTED, later sends are refused with it, in-flight MessageNotify calls
  are allowed to finish (rundown), then DisconnectNotify(cookie) runs, then the connection
  slot is released if the filter has not already released it with close_client_port.
* **close_client_port** (FltCloseClientPort). Senders and getters get
  STATUS_PORT_DISCONNECTED at once; later user calls on the still open handle get it too
  (0x80070006); later ``send_message`` on the port returns it immediately; the slot is
  released now. DisconnectNotify still runs once, when the user closes its handle (§9.1
  policy: once per connection, the cookie tells connections apart; a port created with
  ``notify_after_close_client_port=False`` skips it). Calling it again, or from
  DisconnectNotify, does nothing more.
* **Filter unload**. Every connection: as a user close (senders, getters, rundown,
  DisconnectNotify); the user's handle stays open and answers 0x80070006.
* DisconnectNotify runs at most once per connection, after every in-flight MessageNotify of
  that connection has returned.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol, cast

from ..errors import StatusError
from ..status import NtStatus, nt_error
from .channel import DETACHED, Channel
from .messaging import MessageQueues, SendMessageResult
from .process import ProcessInfo
from .rundown import Rundown
from .security import SecurityDescriptor
from .trace import Tracer, record

__all__ = [
    "ClientPort",
    "ClientPortState",
    "PortHost",
    "PortOwner",
    "ServerPort",
    "ServerPortState",
]

log = logging.getLogger(__name__)

_SUCCESS: Final = NtStatus.STATUS_SUCCESS
_DISCONNECTED: Final = NtStatus.STATUS_PORT_DISCONNECTED
_UNSUCCESSFUL: Final = NtStatus.STATUS_UNSUCCESSFUL
_NO_RESOURCES: Final = NtStatus.STATUS_INSUFFICIENT_RESOURCES
_STATUS_MEMBERS: Final = cast("dict[object, NtStatus]", NtStatus._value2member_map_)
#: Success statuses a MessageNotify result may carry as they are (not STATUS_PENDING, which
#: fails the send, §2.5), keyed by value; look up only an int or NtStatus (True or 0.0 would
#: match too).
_PLAIN_SUCCESS: Final[dict[int, NtStatus]] = {
    int(s): s for s in NtStatus if 0 <= int(s) <= 0x7FFFFFFF and s is not NtStatus.STATUS_PENDING
}

#: Section handles in a MessageNotify output: offset of the 8-byte handle -> section content.
Sections = dict[int, bytes]
#: What FilterSendMessage gets: MessageNotify's status and output, and the sections whose
#: handles that output carries, when it carries any.
SendOutcome = tuple[NtStatus, bytes] | tuple[NtStatus, bytes, Sections]


#: The optional keyword of a MessageNotify that wants the output buffer's address (its low
#: bits, protocol §7.1), for the alignment checks a driver makes with IS_ALIGNED.
OUTPUT_BUFFER_ADDRESS: Final = "output_buffer_address"


def takes_keyword(func: object, name: str) -> bool:
    """True when ``func`` has a parameter ``name`` that can be passed by keyword."""
    try:
        parameter = inspect.signature(func).parameters.get(name)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def is_async_callable(func: object) -> bool:
    """Whether calling ``func`` returns an awaitable (coroutine functions, async ``__call__``)."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - we want the bound method
    return inspect.iscoroutinefunction(call)


def is_status(value: object) -> bool:
    """Whether a callback's result is a status: an int (an NtStatus is one), not a bool or a
    float that merely compares equal to one (semantics §7.1)."""
    cls = type(value)
    return cls is NtStatus or cls is int or (isinstance(value, int) and cls is not bool)


class PortHost(Protocol):
    """What ports need of the Filter Manager (``FilterManager`` is the implementation)."""

    @property
    def rundown(self) -> Rundown:
        """How long teardowns wait for callbacks (see ``FilterManager``)."""
        ...

    @property
    def max_message_bytes(self) -> int:
        """The largest payload a connection carries."""
        ...

    @property
    def tracer(self) -> Tracer | None:
        """Called with each port operation while someone traces; ``None`` otherwise."""
        ...


class PortOwner(Protocol):
    """The filter that created a server port, as the port and its users see it (``Filter``
    is the implementation): its name and manager, the two calls a driver makes on a
    connection, and the one a port makes back."""

    @property
    def name(self) -> str:
        """The filter's name."""
        ...

    @property
    def manager(self) -> PortHost:
        """The Filter Manager the filter is registered with."""
        ...

    async def send_message(
        self,
        client_port: ClientPort | None,
        data: bytes | bytearray | memoryview,
        reply_length: int | None = None,
        timeout: float | None = None,
    ) -> SendMessageResult:
        """FltSendMessage (see ``Filter.send_message``)."""
        ...

    async def close_client_port(self, client_port: ClientPort | None) -> None:
        """FltCloseClientPort (see ``Filter.close_client_port``)."""
        ...

    def port_ended(self, server_port: ServerPort) -> None:
        """Called by a port when its last connection ended: a closed port is forgotten."""
        ...


class ServerPortState(enum.Enum):
    """A server port's life: open until FltCloseCommunicationPort or unload."""

    OPEN = "open"
    CLOSED = "closed"


class ServerPort:
    """FltCreateCommunicationPort's object. Create it with ``Filter.create_communication_port``.

    Attributes:
        name: the port name, as created.
        max_connections: the connection limit.
        connection_count: live connections (slots taken, including connects in progress).
    """

    def __init__(
        self,
        filter: PortOwner,
        name: str,
        *,
        connect_notify: Callable[..., Any],
        disconnect_notify: Callable[..., Any],
        message_notify: Callable[..., Any] | None,
        max_connections: int,
        server_port_cookie: object,
        case_insensitive: bool,
        security: SecurityDescriptor,
        notify_after_close_client_port: bool = True,
    ) -> None:
        self.filter = filter
        self.name = name
        self.connect_notify = connect_notify
        self.disconnect_notify = disconnect_notify
        self.message_notify = message_notify
        self.max_connections = max_connections
        self.server_port_cookie = server_port_cookie
        self.case_insensitive = case_insensitive
        self.security = security
        self.notify_after_close_client_port = notify_after_close_client_port
        self.state = ServerPortState.OPEN
        self.connection_count = 0
        self.connections: set[ClientPort] = set()
        # Classified once here so the hot path never inspects the callback again.
        self.message_notify_is_async = message_notify is not None and is_async_callable(
            message_notify
        )
        self.message_notify_takes_address = message_notify is not None and takes_keyword(
            message_notify, OUTPUT_BUFFER_ADDRESS
        )

    def set_message_notify(self, message_notify: Callable[..., Any] | None) -> None:
        """Replace the port's MessageNotify from now on (fault injection: ``fltemu faults``
        delays it or makes it fail, then puts the filter's own back).

        The new callback is classified as at FltCreateCommunicationPort (plain or coroutine,
        whether it takes ``output_buffer_address``); calls already running finish with the
        old one. ``None`` makes later FilterSendMessage calls fail with
        STATUS_INVALID_DEVICE_REQUEST, as a port created without one.
        """
        self.message_notify = message_notify
        self.message_notify_is_async = message_notify is not None and is_async_callable(
            message_notify
        )
        self.message_notify_takes_address = message_notify is not None and takes_keyword(
            message_notify, OUTPUT_BUFFER_ADDRESS
        )

    def __repr__(self) -> str:
        return (
            f"<ServerPort '{self.name}' {self.state.value} "
            f"connections={self.connection_count}/{self.max_connections}>"
        )


class ClientPortState(enum.Enum):
    """A connection's life; see the module docstring."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"


_connection_ids = itertools.count(1)


class ClientPort:
    """One connection to a server port: the ``PFLT_PORT ClientPort`` of ConnectNotify.

    The filter keeps it to call ``send_message`` and ``close_client_port``. The daemon's
    session drives its user half (``user_*`` methods).

    Attributes:
        id: a daemon-wide connection number, for logs and control commands.
        server_port: the server port it was made through.
        process: who connected (peer credentials).
        cookie: the ConnectionPortCookie ConnectNotify returned (``None`` by default).
        state: see ``ClientPortState``.
    """

    def __init__(self, server_port: ServerPort, process: ProcessInfo, channel: Channel) -> None:
        self.id = next(_connection_ids)
        # The loop the connection lives on, kept: every asyncio.get_running_loop() makes a
        # getpid() system call on CPython 3.11, and send_message needs it per message.
        self.loop = asyncio.get_running_loop()
        self.server_port = server_port
        self.process = process
        self.cookie: object = None
        self.state = ClientPortState.CONNECTING
        self.queues = MessageQueues(channel)
        self._channel = channel
        #: Where ``tracer`` is read: one attribute away on every port operation.
        self._manager = server_port.filter.manager
        #: FltCloseClientPort has been called (the driver's variable is NULL).
        self.is_kernel_closed = False
        self.has_slot = True
        self.sends_from_user = 0
        # Kept: the daemon's payload limit is checked per message, three attributes away.
        self._max_message_bytes = server_port.filter.manager.max_message_bytes
        self._inflight: set[asyncio.Task[SendOutcome]] = set()
        self._notified = False
        self._teardown: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<ClientPort #{self.id} to '{self.server_port.name}' {self.state.value} "
            f"pid={self.process.pid} {self.queues!r}>"
        )

    @property
    def messages_delivered(self) -> int:
        """Kernel messages handed to a FilterGetMessage of this connection."""
        return self.queues.delivered

    @property
    def messages_timed_out(self) -> int:
        """FltSendMessage calls to this connection that returned STATUS_TIMEOUT."""
        return self.queues.timed_out

    @property
    def is_connected(self) -> bool:
        """True while messages can flow."""
        return self.state is ClientPortState.CONNECTED

    # --- the user half (driven by the daemon's session) -------------------------------------

    def user_get(self, token: object, buffer_size: int) -> NtStatus | None:
        """FilterGetMessage: queue a getter; ``None`` means pending (§3.3)."""
        if self.state is not ClientPortState.CONNECTED:
            status: NtStatus | None = _DISCONNECTED
        elif buffer_size <= 0:
            status = NtStatus.STATUS_INVALID_PARAMETER
        else:
            status = self.queues.add_getter(token, buffer_size)
        tracer = self._manager.tracer
        if tracer is not None:
            tracer(record("get", self, status=status, buffer=buffer_size))
        return status

    def user_cancel_get(self, token: object) -> None:
        """CancelIoEx on one pending get: it completes with STATUS_CANCELLED (§3.5)."""
        self.queues.cancel_getter(token)

    def user_reply(self, message_id: int, status: int, data: bytes) -> NtStatus:
        """FilterReplyMessage (§3.4); see ``MessageQueues.reply`` for the statuses."""
        if self.state is not ClientPortState.CONNECTED:
            result = _DISCONNECTED
        elif len(data) > self._max_message_bytes:
            # The daemon's limit, not Windows': the sender keeps waiting for a reply that fits.
            result = _NO_RESOURCES
        else:
            result = self.queues.reply(message_id, status, data)
        tracer = self._manager.tracer
        if tracer is not None:
            tracer(
                record(
                    "reply",
                    self,
                    status=result,
                    message_id=message_id,
                    size=len(data),
                    reply_status=status,
                    data=data,
                )
            )
        return result

    def user_send(
        self, data: bytes, out_size: int, out_address: int = 0, *, _traced: bool = False
    ) -> SendOutcome | asyncio.Task[SendOutcome]:
        """FilterSendMessage: run MessageNotify and return its status and output (§2.5, §3.2).

        ``out_address`` is the low bits of the caller's output buffer address (0: aligned or
        unknown); a MessageNotify with an ``output_buffer_address`` parameter gets it.

        A plain MessageNotify runs inline and its outcome is returned; a coroutine one runs in
        a Task, which is returned. Pre-checks fail without calling it: STATUS_PORT_DISCONNECTED
        (connection gone or running down), STATUS_INVALID_PARAMETER (empty input),
        STATUS_INVALID_DEVICE_REQUEST (the port has no MessageNotify),
        STATUS_INSUFFICIENT_RESOURCES (input over the daemon's message limit). Output over
        that limit fails the call with STATUS_INSUFFICIENT_RESOURCES too.

        (``_traced`` is internal: the traced call runs the untraced one.)
        """
        if not _traced and self._manager.tracer is not None:
            return self._traced_user_send(data, out_size, out_address)
        if self.state is not ClientPortState.CONNECTED:
            return _DISCONNECTED, b""
        if not data:
            return NtStatus.STATUS_INVALID_PARAMETER, b""
        server_port = self.server_port
        notify = server_port.message_notify
        if notify is None:
            return NtStatus.STATUS_INVALID_DEVICE_REQUEST, b""
        if len(data) > self._max_message_bytes:
            return _NO_RESOURCES, b""
        self.sends_from_user += 1
        if server_port.message_notify_takes_address:
            notify = functools.partial(notify, output_buffer_address=out_address)
        if server_port.message_notify_is_async:
            coro = self._await_message_notify(notify(self.cookie, data, out_size), out_size)
            return self._start_task(coro)
        try:
            result = notify(self.cookie, data, out_size)
        except StatusError as exc:
            return exc.status, b""
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # CancelledError too: a plain callback's own failure
            log.exception("MessageNotify of port '%s' raised", server_port.name)
            return _UNSUCCESSFUL, b""
        # The plain shapes first: inspect.isawaitable costs a third of this whole call.
        if (
            type(result) is not tuple
            and not isinstance(result, int)
            and inspect.isawaitable(result)
        ):
            return self._start_task(self._await_message_notify(result, out_size))
        return self._message_outcome(result, out_size)

    def _traced_user_send(
        self, data: bytes, out_size: int, out_address: int
    ) -> SendOutcome | asyncio.Task[SendOutcome]:
        started = time.perf_counter()
        outcome = self.user_send(data, out_size, out_address, _traced=True)

        def trace(result: SendOutcome | None) -> None:
            tracer = self._manager.tracer
            if tracer is None:
                return
            status = result[0] if result is not None else NtStatus.STATUS_CANCELLED
            output = result[1] if result is not None else b""
            tracer(
                record(
                    "send",
                    self,
                    status=status,
                    size=len(data),
                    buffer=out_size,
                    reply_size=len(output),
                    latency=time.perf_counter() - started,
                    data=data,
                )
            )

        if isinstance(outcome, tuple):
            trace(outcome)
        else:
            outcome.add_done_callback(
                lambda task: trace(None if task.cancelled() or task.exception() else task.result())
            )
        return outcome

    def _trace_disconnect(self, text: str) -> None:
        tracer = self._manager.tracer
        if tracer is not None:
            tracer(record("disconnect", self, text=text))

    def user_closing(self) -> None:
        """The synchronous start of CloseHandle's cleanup (§2.4 steps 1-3).

        From now on blocked senders and pending getters have STATUS_PORT_DISCONNECTED and new
        ones are refused, before any task runs: a message sent in the meantime must not count
        as delivered to a process that is gone. ``user_close`` finishes the teardown.
        """
        if self.state is ClientPortState.CONNECTED:
            self.state = ClientPortState.DISCONNECTING
            self._trace_disconnect("the user closed its handle (CloseHandle)")
        self.queues.fail_all()

    async def user_close(self) -> None:
        """CloseHandle on the user's handle: the teardown of §2.4, once."""
        self.user_closing()
        await self._run_down()
        # Nothing can reach the user any more: part from its session, so that the two, which
        # point at each other, are freed without a cyclic garbage collection.
        self.queues.detach()
        self._channel = DETACHED

    # --- the kernel half (called through Filter) --------------------------------------------

    def kernel_close(self) -> None:
        """FltCloseClientPort: disconnect now, release the slot, keep the user handle (§2.6)."""
        if self.is_kernel_closed:
            return
        self.is_kernel_closed = True
        if self.state is ClientPortState.CONNECTED:
            self.state = ClientPortState.DISCONNECTED
            self._trace_disconnect("the filter closed it (FltCloseClientPort)")
            self.queues.fail_all()
            self._channel.kernel_disconnected()
        elif self.state is ClientPortState.CONNECTING:
            self.queues.fail_all()
        self._release_slot()

    async def unload(self) -> None:
        """The filter is unloading: disconnect, run down, DisconnectNotify (§6.6)."""
        if self.state is ClientPortState.CONNECTED:
            self.state = ClientPortState.DISCONNECTING
            self._trace_disconnect("the filter unloaded (FltUnregisterFilter)")
            self.queues.fail_all()
            self._channel.kernel_disconnected()
        await self._run_down()

    def refuse(self) -> None:
        """ConnectNotify refused the connection (or the connect was cancelled): free it and
        give its slot back, with no DisconnectNotify (§2.3); a send started from ConnectNotify
        fails instead of hanging."""
        self._release_slot()
        self.state = ClientPortState.DISCONNECTED
        self.queues.fail_all()

    # --- internals ---------------------------------------------------------------------------

    def _start_task(self, coro: Awaitable[SendOutcome]) -> asyncio.Task[SendOutcome]:
        task: asyncio.Task[SendOutcome] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

    async def _await_message_notify(self, awaitable: Awaitable[Any], out_size: int) -> SendOutcome:
        try:
            result = await awaitable
        except StatusError as exc:
            return exc.status, b""
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled (rundown grace): let it through
            # Something the callback awaited was cancelled under it: a callback failure.
            log.error("MessageNotify of port '%s' was cancelled from inside", self.server_port.name)
            return _UNSUCCESSFUL, b""
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            log.exception("MessageNotify of port '%s' raised", self.server_port.name)
            return _UNSUCCESSFUL, b""
        return self._message_outcome(result, out_size)

    def _message_outcome(self, result: Any, out_size: int) -> SendOutcome:
        # The common shape first, (a success status, bytes that fit): no further checks apply.
        if type(result) is tuple and len(result) == 2:
            raw, output = result
            plain = _PLAIN_SUCCESS.get(raw) if type(raw) is NtStatus or type(raw) is int else None
            if (
                plain is not None
                and type(output) is bytes
                and len(output) <= out_size
                and len(output) <= self._max_message_bytes
            ):
                return plain, output
        name = self.server_port.name
        sections: Any = None
        has_sections = False
        try:
            if isinstance(result, tuple):
                if len(result) == 3:
                    raw_status, output, sections = result
                    has_sections = True
                else:
                    raw_status, output = result
            else:
                raw_status, output = result, None
            if not is_status(raw_status):  # 0.0 or True would pass the lookup below
                raise TypeError(type(raw_status).__name__)
            # The enum's value map first: NtStatus(...) costs ten times more, per message.
            status = _STATUS_MEMBERS.get(raw_status)
            if status is None:
                status = NtStatus(int(raw_status))
            if output is None:
                out = b""
            elif isinstance(output, (bytes, bytearray, memoryview)):
                out = bytes(output)
            else:  # e.g. an int, which bytes() would turn into that many NULs
                raise TypeError(type(output).__name__)
        except (TypeError, ValueError):
            log.error(
                "MessageNotify of port '%s' returned %r, not a status, (status, bytes) or "
                "(status, bytes, sections)",
                name,
                type(result).__name__,
            )
            return _UNSUCCESSFUL, b""
        if has_sections and not isinstance(sections, Mapping):
            # (0, b"x", 1) would otherwise succeed with its sections silently dropped.
            log.error(
                "MessageNotify of port '%s' returned sections of type %r, not a mapping "
                "{offset: content}; failing the send",
                name,
                type(sections).__name__,
            )
            return _UNSUCCESSFUL, b""
        if status == NtStatus.STATUS_PENDING:
            # On Windows the client would hang forever (§2.5); an emulator must not.
            log.error("MessageNotify of port '%s' returned STATUS_PENDING; failing the send", name)
            return _UNSUCCESSFUL, b""
        if status == NtStatus.STATUS_BUFFER_TOO_SMALL:
            status = NtStatus.STATUS_FLT_BUFFER_TOO_SMALL  # fltmgr's rewrite (§2.5)
        if nt_error(status):
            return status, b""  # lpBytesReturned is 0 on errors (§3.2)
        if len(out) > out_size:
            log.warning(
                "MessageNotify of port '%s' returned %d bytes for a %d-byte output buffer; cut",
                name,
                len(out),
                out_size,
            )
            out = out[:out_size]
        limit = self._max_message_bytes
        if len(out) > limit:
            log.warning(
                "MessageNotify of port '%s' returned %d bytes, over the daemon's %d-byte message "
                "limit (--max-message-bytes); failing the send",
                name,
                len(out),
                limit,
            )
            return _NO_RESOURCES, b""
        if sections:
            return status, out, self._sections(sections, len(out))
        return status, out

    def _sections(self, sections: Any, out_len: int) -> Sections:
        """The valid entries of a MessageNotify's ``{offset: content}``: an 8-byte handle
        inside the output, content within the daemon's message limit."""
        name = self.server_port.name
        limit = self._max_message_bytes
        valid: Sections = {}
        for offset, content in list(sections.items()):
            if not (isinstance(offset, int) and 0 <= offset and offset + 8 <= out_len):
                log.error(
                    "MessageNotify of port '%s': section offset %r is not in the output",
                    name,
                    offset,
                )
            elif not isinstance(content, (bytes, bytearray, memoryview)) or len(content) > limit:
                log.error(
                    "MessageNotify of port '%s': the section at %d is not bytes within the "
                    "message limit",
                    name,
                    offset,
                )
            else:
                valid[offset] = bytes(content)
        return valid

    def _release_slot(self) -> None:
        if self.has_slot:
            self.has_slot = False
            self.server_port.connection_count -= 1

    def _run_down(self) -> Awaitable[None]:
        if self._teardown is None:
            self._teardown = asyncio.get_running_loop().create_task(self._teardown_steps())
        # Shielded: a caller that is cancelled must not abort the teardown for others.
        return asyncio.shield(self._teardown)

    async def _wait_inflight(self) -> None:
        # Rundown: in-flight MessageNotify calls finish before DisconnectNotify (§2.4): as long
        # as they take, as on Windows, until the rundown's bound (shutdown) abandons them.
        rundown = self.server_port.filter.manager.rundown
        while self._inflight:
            tasks = list(self._inflight)
            try:
                async with rundown.wait():
                    await asyncio.wait(tasks)
                continue
            except TimeoutError:
                pass
            pending = [task for task in tasks if not task.done()]
            log.warning(
                "port '%s': cancelling %d MessageNotify call(s) still running on connection #%d "
                "(pid %s) %s; their callers get STATUS_PORT_DISCONNECTED",
                self.server_port.name,
                len(pending),
                self.id,
                self.process.pid,
                "at the end of the shutdown grace"
                if rundown.timeout is None or rundown.deadline is not None
                else f"after {rundown.timeout:.1f} s",
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=rundown.after_cancel())
            # One that ignores its cancellation is abandoned: DisconnectNotify runs all the same.
            self._inflight.difference_update(pending)
            break

    async def _notify_disconnect(self) -> None:
        notify: Callable[[object], Any] = self.server_port.disconnect_notify
        # As long as it takes (as Windows waits), until shutdown bounds it, even once started.
        rundown = self._manager.rundown
        bound = None
        try:
            result = notify(self.cookie)
            if inspect.isawaitable(result):
                bound = rundown.wait()
                async with bound:
                    await result
        except TimeoutError:
            if bound is None or not bound.expired:  # the callback's own TimeoutError
                log.exception("DisconnectNotify of port '%s' raised", self.server_port.name)
            else:
                log.error(
                    "DisconnectNotify of port '%s' (connection #%d) did not return %s; abandoned",
                    self.server_port.name,
                    self.id,
                    rundown.describe(),
                )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.error(
                "DisconnectNotify of port '%s' was cancelled from inside",
                self.server_port.name,
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            log.exception("DisconnectNotify of port '%s' raised", self.server_port.name)

    async def _teardown_steps(self) -> None:
        # Whether the filter ended this connection before the user closed it (§9.1).
        kernel_closed_first = self.is_kernel_closed
        if self.state is ClientPortState.CONNECTED:
            self.state = ClientPortState.DISCONNECTING
        self.queues.fail_all()
        if self._inflight:
            await self._wait_inflight()
        skip = kernel_closed_first and not self.server_port.notify_after_close_client_port
        if not self._notified and self.state is not ClientPortState.CONNECTING and not skip:
            self._notified = True
            await self._notify_disconnect()
        self.state = ClientPortState.DISCONNECTED
        self.server_port.connections.discard(self)
        self.server_port.filter.port_ended(self.server_port)
        if self.has_slot and not self.is_kernel_closed:
            log.debug(
                "port '%s': DisconnectNotify of connection #%d did not call close_client_port; "
                "the slot is released anyway",
                self.server_port.name,
                self.id,
            )
        self._release_slot()
