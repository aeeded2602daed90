"""The Filter Manager and its filters: ``FilterManager`` (FltRegisterFilter's registry, the
port namespace, connects), ``Filter`` (a registered minifilter: ports, FltSendMessage,
FltCloseClientPort, unload) and ``FilterState``.

Not here: ports and connections (``ports``), message matching (``messaging``), the public
re-exports (``fltemu.kernel``).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._limits import DEFAULT_MAX_MESSAGE_BYTES, MAX_CONNECT_CONTEXT_BYTES
from ..errors import StatusError, error_for
from ..status import NtStatus, nt_success
from .callbacks import ConnectNotify, DisconnectNotify, MessageNotify
from .channel import Channel
from .messaging import PendingSend, SendMessageResult
from .namespace import PortNamespace
from .ports import ClientPort, ClientPortState, ServerPort, ServerPortState, is_status
from .process import ProcessInfo
from .rundown import Rundown
from .security import SecurityDescriptor
from .trace import Tracer, TraceRecord, record

__all__ = ["Filter", "FilterManager", "FilterState"]

log = logging.getLogger(__name__)

_MAX_REPLY_LENGTH = 0xFFFFFFFF - 16


class FilterState(enum.Enum):
    """A filter's life: registered until FltUnregisterFilter."""

    REGISTERED = "registered"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"


class FilterManager:
    """The Filter Manager: registered filters and the port namespace.

    Args:
        max_message_bytes: the largest message payload the daemon carries; larger kernel
            messages fail with STATUS_INSUFFICIENT_RESOURCES.
        default_security: what ports created with ``security=None`` admit (default: root and
            the daemon's user).

    Attributes:
        rundown: how long the manager waits for filter callbacks: as long as they take
            (Windows' behaviour), or until the deadline the daemon sets when it shuts down
            (``rundown.begin``), after which each callback still running is abandoned:
            cancelled, logged by name, and its caller answered.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        default_security: SecurityDescriptor | None = None,
    ) -> None:
        self.namespace = PortNamespace()
        self.filters: dict[str, Filter] = {}
        self.max_message_bytes = max_message_bytes
        #: What ``security=None`` means for new ports: FltBuildDefaultSecurityDescriptor's
        #: equivalent (root and the daemon's user) unless the daemon was told to widen it.
        self.default_security = default_security or SecurityDescriptor.default()
        self.rundown = Rundown()
        #: Called with a ``TraceRecord`` for each port operation while someone traces
        #: (``fltemu trace``); ``None`` otherwise.
        self.tracer: Tracer | None = None

    def __repr__(self) -> str:
        return f"<FilterManager filters={sorted(self.filters)} ports={len(self.namespace)}>"

    @property
    def rundown_timeout(self) -> float | None:
        """Seconds a teardown waits for in-flight MessageNotify calls and DisconnectNotify
        before abandoning them; ``None`` (the default, Windows' behaviour): as long as they take.
        """
        return self.rundown.timeout

    @rundown_timeout.setter
    def rundown_timeout(self, value: float | None) -> None:
        self.rundown.timeout = value

    def register_filter(self, name: str) -> Filter:
        """FltRegisterFilter + FltStartFiltering: a filter that can create ports.

        Raises:
            StatusError: STATUS_OBJECT_NAME_COLLISION when a filter of that name is loaded.
        """
        if name in self.filters:
            raise error_for(
                NtStatus.STATUS_OBJECT_NAME_COLLISION, f"a filter named {name!r} is loaded"
            )
        flt = Filter(self, name)
        self.filters[name] = flt
        return flt

    def connections(self) -> Iterator[ClientPort]:
        """Every live connection of every filter."""
        for flt in list(self.filters.values()):
            yield from flt.connections()

    async def connect(
        self,
        port_name: str,
        context: bytes,
        process: ProcessInfo,
        channel: Channel,
    ) -> ClientPort:
        """The kernel half of FilterConnectCommunicationPort (§2.3, §3.1).

        Checks the context's size as fltmgr checks the extended attribute that carries it,
        looks the name up exactly, checks access, takes a connection slot, then runs
        ConnectNotify before returning.

        Raises:
            StatusError: STATUS_ACCESS_DENIED (a context over 65511 bytes, which no x64
                fltlib can pass, §3.1; or a port whose security refuses the caller),
                STATUS_OBJECT_NAME_NOT_FOUND, the bad-name statuses,
                STATUS_FLT_DELETING_OBJECT (filter unloading), STATUS_CONNECTION_COUNT_LIMIT,
                or whatever failure ConnectNotify returned.
        """
        if self.tracer is None:
            return await self._connect(port_name, context, process, channel)
        try:
            client_port = await self._connect(port_name, context, process, channel)
        except StatusError as exc:
            tracer = self.tracer
            if tracer is not None:
                tracer(
                    TraceRecord(
                        "connect",
                        time.time(),
                        port_name,
                        pid=process.pid,
                        uid=process.uid,
                        status=exc.status,
                        size=len(context),
                    )
                )
            raise
        tracer = self.tracer
        if tracer is not None:
            tracer(
                record("connect", client_port, status=NtStatus.STATUS_SUCCESS, size=len(context))
            )
        return client_port

    async def _connect(
        self,
        port_name: str,
        context: bytes,
        process: ProcessInfo,
        channel: Channel,
    ) -> ClientPort:
        if len(context) > MAX_CONNECT_CONTEXT_BYTES:
            # Before the lookup: fltmgr finds the port name inside the same attribute.
            raise error_for(
                NtStatus.STATUS_ACCESS_DENIED,
                f"context of {len(context)} bytes: over the {MAX_CONNECT_CONTEXT_BYTES} bytes "
                "that fltlib's FLTPORT attribute can carry",
            )
        server_port = self.namespace.lookup(port_name)
        flt = self.filters.get(server_port.filter.name)
        if flt is None or flt is not server_port.filter or flt.state is not FilterState.REGISTERED:
            raise error_for(NtStatus.STATUS_FLT_DELETING_OBJECT)
        if not server_port.security.admits(process):
            raise error_for(
                NtStatus.STATUS_ACCESS_DENIED,
                f"port '{port_name}' does not admit uid {process.uid}",
            )
        # The slot is taken before ConnectNotify runs: a concurrent connect beyond the limit
        # fails at once even if this one is refused later (§6.4).
        if server_port.connection_count >= server_port.max_connections:
            raise error_for(NtStatus.STATUS_CONNECTION_COUNT_LIMIT)
        server_port.connection_count += 1
        client_port = ClientPort(server_port, process, channel)
        try:
            status, cookie = await flt._call_connect_notify(client_port, context)
        except BaseException:
            client_port.refuse()
            raise
        if nt_success(status) and flt.state is not FilterState.REGISTERED:
            status = NtStatus.STATUS_FLT_DELETING_OBJECT
        if not nt_success(status):
            client_port.refuse()
            raise error_for(status, f"ConnectNotify of '{port_name}' refused: {status}")
        client_port.cookie = cookie
        if client_port.is_kernel_closed:
            client_port.state = ClientPortState.DISCONNECTED
        else:
            client_port.state = ClientPortState.CONNECTED
        server_port.connections.add(client_port)
        return client_port


class Filter:
    """A registered minifilter: FltRegisterFilter's PFLT_FILTER.

    Get one from ``Daemon.register_filter`` (or ``FilterManager.register_filter``).

    Attributes:
        name: the filter's name.
        settings: string settings for the filter module, from ``fltemu serve --set
            NAME.KEY=VALUE`` (empty when none were given).
        context: whatever the filter module keeps for itself, like a driver's global data
            (the built-in samples keep their state there); fltemu never touches it.
        unload_callback: the FilterUnloadCallback: run by ``unload_requested`` (``fltemu
            unload``, daemon shutdown) before the filter is unregistered; ``None`` for none.
    """

    def __init__(self, manager: FilterManager, name: str) -> None:
        self.manager = manager
        self.name = name
        self.settings: dict[str, str] = {}
        self.context: object = None
        self.unload_callback: Callable[[Filter], Any] | None = None
        self.state = FilterState.REGISTERED
        self._ports: list[ServerPort] = []
        self._unload: asyncio.Task[None] | None = None
        self._unload_request: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Filter {self.name!r} {self.state.value} ports={len(self.server_ports)}>"

    @property
    def server_ports(self) -> list[ServerPort]:
        """The filter's open server ports."""
        return [p for p in self._ports if p.state is ServerPortState.OPEN]

    @property
    def all_ports(self) -> list[ServerPort]:
        """The filter's server ports: the open ones, and closed ones while they still have
        connections."""
        return list(self._ports)

    def connections(self) -> list[ClientPort]:
        """Every live connection made through any of this filter's ports (even closed ones)."""
        return [c for p in self._ports for c in p.connections]

    async def create_communication_port(
        self,
        name: str,
        *,
        connect_notify: ConnectNotify | Callable[..., Any],
        disconnect_notify: DisconnectNotify | Callable[..., Any],
        message_notify: MessageNotify | Callable[..., Any] | None = None,
        max_connections: int,
        server_port_cookie: object = None,
        case_insensitive: bool = True,
        security: SecurityDescriptor | None = None,
        notify_after_close_client_port: bool = True,
    ) -> ServerPort:
        """FltCreateCommunicationPort: create a named server port (§2.1).

        Args:
            name: the NT object name, e.g. ``"\\\\ScannerPort"``.
            connect_notify: ConnectNotify; required.
            disconnect_notify: DisconnectNotify; required.
            message_notify: MessageNotify, or ``None``: then every FilterSendMessage fails
                with STATUS_INVALID_DEVICE_REQUEST (0x80070001 for the client).
            max_connections: the connection limit; must be > 0.
            server_port_cookie: passed back to ConnectNotify.
            case_insensitive: OBJ_CASE_INSENSITIVE: the collision check ignores case.
                Connecting always needs the exact name.
            security: who may connect; ``None`` is the default descriptor (root and the
                daemon's user, plus whatever ``fltemu serve --allow-*`` added).
            notify_after_close_client_port: whether DisconnectNotify still runs when the
                user closes a handle whose connection the filter already closed with
                ``close_client_port``. Windows' behaviour is unknown (§9.1); fltemu calls it
                (once per connection) unless told not to.

        Returns:
            The server port.

        Raises:
            StatusError: STATUS_INVALID_PARAMETER (missing callback, max_connections <= 0),
                STATUS_OBJECT_NAME_INVALID / STATUS_OBJECT_PATH_SYNTAX_BAD /
                STATUS_OBJECT_PATH_NOT_FOUND (bad name), STATUS_OBJECT_NAME_COLLISION,
                STATUS_FLT_DELETING_OBJECT (the filter is unloading).
        """
        if self.state is not FilterState.REGISTERED:
            raise error_for(NtStatus.STATUS_FLT_DELETING_OBJECT)
        if connect_notify is None or disconnect_notify is None:
            raise error_for(
                NtStatus.STATUS_INVALID_PARAMETER,
                "connect_notify and disconnect_notify are required",
            )
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise error_for(NtStatus.STATUS_INVALID_PARAMETER, "max_connections must be an int")
        if max_connections <= 0:
            raise error_for(NtStatus.STATUS_INVALID_PARAMETER, "max_connections must be > 0")
        port = ServerPort(
            self,
            name,
            connect_notify=connect_notify,
            disconnect_notify=disconnect_notify,
            message_notify=message_notify,
            max_connections=max_connections,
            server_port_cookie=server_port_cookie,
            case_insensitive=case_insensitive,
            security=security if security is not None else self.manager.default_security,
            notify_after_close_client_port=notify_after_close_client_port,
        )
        self.manager.namespace.insert(port)
        self._ports.append(port)
        return port

    async def close_communication_port(self, server_port: ServerPort) -> None:
        """FltCloseCommunicationPort: remove the port's name; its connections live on (§2.7).

        Raises:
            StatusError: STATUS_INVALID_HANDLE for a port that is not this filter's or is
                already closed.
        """
        if server_port.filter is not self or server_port.state is not ServerPortState.OPEN:
            raise error_for(NtStatus.STATUS_INVALID_HANDLE, f"{server_port!r} is not open")
        server_port.state = ServerPortState.CLOSED
        self.manager.namespace.remove(server_port)
        self.port_ended(server_port)

    def port_ended(self, server_port: ServerPort) -> None:
        """Forget ``server_port`` once it is closed and its last connection has ended (a
        closed port is kept while it has connections: they use its callbacks). Ports call it
        (``PortOwner``); calling it for a port that is still in use does nothing."""
        if (
            server_port.state is ServerPortState.CLOSED
            and not server_port.connections
            and server_port in self._ports
        ):
            self._ports.remove(server_port)

    async def send_message(
        self,
        client_port: ClientPort | None,
        data: bytes | bytearray | memoryview,
        reply_length: int | None = None,
        timeout: float | None = None,
    ) -> SendMessageResult:
        """FltSendMessage: send a message to the user process on ``client_port`` (§2.8).

        The message waits for a FilterGetMessage of that connection (nothing is buffered); with
        ``reply_length`` it then waits for the FilterReplyMessage.

        Args:
            client_port: the connection (``None``, like a NULL port variable, is disconnected).
            data: the message (SenderBuffer).
            reply_length: the kernel's reply buffer size (the user sees it plus 16 in the
                header), or ``None`` for no reply.
            timeout: ``None`` waits forever, 0 polls, > 0 is seconds from now; it bounds
                delivery and reply together. Use ``timeout_from_large_integer`` to convert a
                Windows LARGE_INTEGER.

        Returns:
            ``SendMessageResult``: STATUS_SUCCESS (or the status the user put in its reply),
            STATUS_TIMEOUT (a success code), STATUS_BUFFER_OVERFLOW (the reply was cut to
            ``reply_length``), STATUS_PORT_DISCONNECTED, or STATUS_INSUFFICIENT_RESOURCES (the
            message is over the daemon's size limit).

        Raises:
            asyncio.CancelledError: the task was cancelled; the message is withdrawn
                (undelivered) or its reply waiter is (delivered: a later reply gets
                ERROR_FLT_NO_WAITER_FOR_REPLY).
            ValueError: a negative timeout, or a reply_length outside 0 to 0xFFFFFFEF.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("timeout is None (forever) or seconds >= 0")
        if reply_length is not None and not 0 <= reply_length <= _MAX_REPLY_LENGTH:
            # FILTER_MESSAGE_HEADER.ReplyLength (a ULONG) is reply_length + 16.
            raise ValueError("reply_length is None (no reply) or 0 to 0xFFFFFFEF")
        if client_port is None or client_port.is_kernel_closed:
            return SendMessageResult(NtStatus.STATUS_PORT_DISCONNECTED)
        if len(data) > self.manager.max_message_bytes:
            log.warning(
                "filter %r: a %d-byte message is over the %d-byte limit (--max-message-bytes)",
                self.name,
                len(data),
                self.manager.max_message_bytes,
            )
            return SendMessageResult(NtStatus.STATUS_INSUFFICIENT_RESOURCES)
        queues = client_port.queues
        tracer = self.manager.tracer
        if tracer is not None:
            return await self._traced_send_message(tracer, client_port, data, reply_length, timeout)
        pending = queues.start_send(bytes(data), reply_length, timeout, client_port.loop)
        try:
            return await pending.future
        except asyncio.CancelledError:
            queues.withdraw(pending)
            raise

    async def _traced_send_message(
        self,
        tracer: Tracer,
        client_port: ClientPort,
        data: bytes | bytearray | memoryview,
        reply_length: int | None,
        timeout: float | None,
    ) -> SendMessageResult:
        # send_message with a record of the message (with its id when a getter took it at
        # once), one when a getter takes it later (deliver, with its id), and its outcome.
        message = bytes(data)
        started = time.perf_counter()
        queues = client_port.queues
        pending = queues.start_send(message, reply_length, timeout, client_port.loop)
        waiting = not pending.future.done() and not pending.message_id
        tracer(
            record(
                "message",
                client_port,
                message_id=pending.message_id,
                size=len(message),
                buffer=reply_length,
                timeout=timeout,
                data=message,
                text="waiting for a FilterGetMessage" if waiting else "",
            )
        )
        if waiting:

            def delivered(taken: PendingSend) -> None:
                now = self.manager.tracer
                if now is not None:
                    now(
                        record(
                            "deliver",
                            client_port,
                            message_id=taken.message_id,
                            size=len(message),
                            buffer=reply_length,
                            latency=time.perf_counter() - started,
                            data=message,
                        )
                    )

            pending.on_deliver = delivered
        try:
            result = await pending.future
        except asyncio.CancelledError:
            queues.withdraw(pending)
            status, reply = NtStatus.STATUS_CANCELLED, None
            raise
        else:
            status, reply = result.status, result.reply
            return result
        finally:
            after = self.manager.tracer
            if after is not None:
                after(
                    record(
                        "message_done",
                        client_port,
                        status=status,
                        message_id=pending.message_id,
                        size=len(message),
                        buffer=reply_length,
                        reply_size=None if reply is None else len(reply),
                        latency=time.perf_counter() - started,
                        data=reply or b"",
                    )
                )

    async def close_client_port(self, client_port: ClientPort | None) -> None:
        """FltCloseClientPort: end one connection from the kernel side (§2.6).

        Blocked senders and pending getters get STATUS_PORT_DISCONNECTED, the slot is
        released, and the user's later calls get 0x80070006. Closing a closed port, or
        ``None``, does nothing.
        """
        if client_port is not None:
            client_port.kernel_close()

    async def unload(self) -> None:
        """FltUnregisterFilter: close every server port and disconnect every connection.

        Later connects to its port names get 0x80070002; each connection's DisconnectNotify
        runs once, after its in-flight MessageNotify calls return.
        """
        if self._unload is None:
            self._unload = asyncio.get_running_loop().create_task(self._unload_steps())
        await asyncio.shield(self._unload)

    async def unload_requested(self) -> None:
        """The Filter Manager unloads the filter (``fltmc unload``): FilterUnloadCallback, then
        FltUnregisterFilter.

        The callback runs once, however often this is called; an exception from it is logged
        and the filter is unloaded all the same (fltemu cannot refuse an unload).
        """
        if self._unload_request is None:
            # One task, shielded: a caller that goes away (Ctrl-C on `fltemu unload`) must not
            # leave the filter half torn down, and a second caller waits for the same end.
            self._unload_request = asyncio.get_running_loop().create_task(self._request_unload())
        await asyncio.shield(self._unload_request)

    async def _request_unload(self) -> None:
        callback, self.unload_callback = self.unload_callback, None
        if callback is not None:
            rundown = self.manager.rundown
            bound = None
            try:
                result = callback(self)
                if inspect.isawaitable(result):
                    bound = rundown.wait()
                    async with bound:
                        await result
            except TimeoutError:
                if bound is None or not bound.expired:
                    log.exception("the unload callback of filter %r raised", self.name)
                else:
                    log.error(
                        "the unload callback (teardown) of filter %r did not return %s; abandoned",
                        self.name,
                        rundown.describe(),
                    )
            except Exception:
                log.exception("the unload callback of filter %r raised", self.name)
        await self.unload()

    async def _unload_steps(self) -> None:
        self.state = FilterState.UNLOADING
        for port in self._ports:
            if port.state is ServerPortState.OPEN:
                port.state = ServerPortState.CLOSED
                self.manager.namespace.remove(port)
        connections = self.connections()
        if connections:
            await asyncio.gather(*(c.unload() for c in connections))
        self.state = FilterState.UNLOADED
        if self.manager.filters.get(self.name) is self:
            del self.manager.filters[self.name]

    async def _call_connect_notify(
        self, client_port: ClientPort, context: bytes
    ) -> tuple[NtStatus, object]:
        server_port = client_port.server_port
        bound = None
        try:
            result: Any = server_port.connect_notify(
                client_port, server_port.server_port_cookie, context
            )
            if inspect.isawaitable(result):
                bound = self.manager.rundown.wait()
                async with bound:
                    result = await result
        except StatusError as exc:
            return exc.status, None
        except TimeoutError:
            if bound is None or not bound.expired:
                log.exception("ConnectNotify of port '%s' raised", server_port.name)
                return NtStatus.STATUS_UNSUCCESSFUL, None
            # The daemon is shutting down: its client must not wait any longer.
            log.error(
                "ConnectNotify of port '%s' (pid %s) did not return %s; abandoned",
                server_port.name,
                client_port.process.pid,
                self.manager.rundown.describe(),
            )
            return NtStatus.STATUS_PORT_DISCONNECTED, None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the connect itself is being cancelled (the client left, shutdown)
            log.error("ConnectNotify of port '%s' was cancelled from inside", server_port.name)
            return NtStatus.STATUS_UNSUCCESSFUL, None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            log.exception("ConnectNotify of port '%s' raised", server_port.name)
            return NtStatus.STATUS_UNSUCCESSFUL, None
        try:
            if isinstance(result, tuple):
                raw, cookie = result
            else:
                raw, cookie = result, None
            if not is_status(raw):
                raise TypeError(type(raw).__name__)
            return NtStatus(int(raw)), cookie
        except (TypeError, ValueError):
            log.error(
                "ConnectNotify of port '%s' returned %r, not a status or (status, cookie)",
                server_port.name,
                result,
            )
            return NtStatus.STATUS_UNSUCCESSFUL, None
