"""The I/O-free core shared by ``Port`` (sync) and ``AsyncPort``: fltlib's rules, no waiting.

It builds request frames, tracks every outstanding request with an opaque waiter object
supplied by the flavour (a future of its kind), turns answers into values or ``HResultError``s
with fltlib's NTSTATUS → HRESULT translation (§3.6), and routes messages that arrive for a
get that was cancelled or timed out to the next reader, so that none is ever lost.
Not here: sockets and waiting (``_sync``, ``_async``), the frame format (``fltemu.wire``).
"""

from __future__ import annotations

import enum
import operator
import os
from collections import deque
from typing import Final

import msgspec

from fltemu.errors import (
    FileNotFoundHResultError,
    HResultError,
    InsufficientBufferError,
    InvalidArgumentError,
    InvalidHandleError,
    PortClosedError,
    RemoteProtocolError,
    hresult_error_for,
    hresult_error_from_ntstatus,
)
from fltemu.status import HResult, NtStatus, Win32Error, hresult_from_win32, nt_success
from fltemu.wire import (
    EOF,
    FILTER_HEADER_BYTES,
    MAX_CONTEXT_BYTES,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connect,
    ConnectResult,
    GetCancel,
    GetRequest,
    GetResult,
    Goodbye,
    ReplyRequest,
    ReplyResult,
    Role,
    SendRequest,
    SendResult,
    State,
    WireConnection,
)

__all__ = [
    "FILTER_HEADER_BYTES",
    "FLT_PORT_FLAG_SYNC_HANDLE",
    "Completion",
    "Message",
    "PortCore",
    "PortState",
]

#: FilterConnectCommunicationPort option: a synchronous handle (§3.1).
FLT_PORT_FLAG_SYNC_HANDLE: Final = 0x00000001
#: How long CloseHandle waits for the daemon to finish the connection's teardown (its
#: DisconnectNotify). Windows waits as long as it takes; a client library must not hang on a
#: daemon that is stuck, so it gives up and closes after this many seconds.
CLOSE_WAIT_SECONDS: Final = 10.0
#: The largest DWORD / ULONG.
_ULONG_MAX: Final = 0xFFFFFFFF
#: Bytes read per recv: 64 pipelined 1 KiB answers in one system call.
READ_BUFFER_BYTES: Final = 64 * 1024

_SUCCESS: Final = int(NtStatus.STATUS_SUCCESS)
_DISCONNECTED: Final = int(NtStatus.STATUS_PORT_DISCONNECTED)
_TOO_SMALL: Final = int(NtStatus.STATUS_BUFFER_TOO_SMALL)
_NO_RESOURCES: Final = hresult_from_win32(Win32Error.ERROR_NO_SYSTEM_RESOURCES)


class Message(msgspec.Struct, frozen=True):
    """A message FilterGetMessage returned (a msgspec Struct: built per message, it is five
    times cheaper than a frozen dataclass).

    Attributes:
        message_id: FILTER_MESSAGE_HEADER.MessageId: 0 when no reply is expected, else the
            id to pass to ``reply``.
        reply_length: FILTER_MESSAGE_HEADER.ReplyLength: the kernel's reply buffer size plus
            16 (the reply header), or 0 when no reply is expected.
        data: the message, after the 16-byte header.
    """

    message_id: int
    reply_length: int
    data: bytes

    @property
    def size(self) -> int:
        """Bytes transferred, header included (OVERLAPPED.InternalHigh, §3.3)."""
        return len(self.data) + FILTER_HEADER_BYTES


class PortState(enum.Enum):
    """A port handle's life on the user side."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # the daemon or the filter ended the connection
    CLOSED = "closed"  # we closed it


_CONNECTED: Final = PortState.CONNECTED

#: The bytes of one or more frames, ready to write.
Frame = bytes | bytearray

#: (waiter, value, error): what the flavour must do to one of its futures.
Completion = tuple[object, object, BaseException | None]


class _Pending:
    __slots__ = ("abandoned", "buffer_size", "kind", "waiter")

    def __init__(self, kind: type, waiter: object, buffer_size: int = 0) -> None:
        self.kind = kind
        self.waiter = waiter
        self.buffer_size = buffer_size
        self.abandoned = False


def _invalid_arg(text: str) -> InvalidArgumentError:
    return InvalidArgumentError(HResult.E_INVALIDARG, text)


def _integer(value: object, name: str) -> int:
    """``value`` as a plain int (an int, a bool, an IntEnum, numpy's integers), or E_INVALIDARG."""
    if type(value) is int:
        return value
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise _invalid_arg(f"{name} must be an integer, not {type(value).__name__}") from None


def _bytes(value: object, name: str) -> bytes:
    """``value`` (bytes, bytearray, memoryview) as bytes, or E_INVALIDARG."""
    if not isinstance(value, bytes | bytearray | memoryview):  # bytes(5) would be 5 NULs
        raise _invalid_arg(f"{name} must be bytes, not {type(value).__name__}")
    return bytes(value)


class PortCore:
    """The user end of one port connection, without I/O. Not thread-safe: callers lock.

    Args:
        port_name: the server port name, e.g. ``"\\\\ScannerPort"``.
        context: bytes given to ConnectNotify (at most 65511; 65512 to 65535 bytes are
            refused by the daemon with STATUS_ACCESS_DENIED, protocol §5).
        options: 0 or FLT_PORT_FLAG_SYNC_HANDLE.
        address: the daemon's socket path, for messages.

    Raises:
        HResultError: E_INVALIDARG for a bad context or options (§3.1, §9.6).
    """

    def __init__(self, port_name: str, context: bytes, options: int, address: str) -> None:
        if not isinstance(port_name, str):
            raise _invalid_arg("the port name must be a str")
        if not isinstance(context, bytes | bytearray | memoryview):
            raise _invalid_arg("context must be bytes")
        if len(context) > MAX_CONTEXT_BYTES:
            raise _invalid_arg(f"context of {len(context)} bytes; the limit is 65535 (a WORD)")
        if options not in (0, FLT_PORT_FLAG_SYNC_HANDLE):
            raise _invalid_arg(f"options 0x{options:X}: only 0 and FLT_PORT_FLAG_SYNC_HANDLE exist")
        self.port_name = port_name
        self.context = bytes(context)
        self.options = options
        self.address = address
        self.wire = WireConnection(Role.USER)
        self.state = PortState.CONNECTING
        self._pending: dict[int, _Pending] = {}
        self._stash: deque[Message] = deque()
        self._connect_waiter: object = None
        self._out = bytearray()
        #: Why the connection ended, for later calls' messages.
        self.end_reason = ""

    def __repr__(self) -> str:
        return (
            f"<PortCore {self.port_name!r} {self.state.value} pending={len(self._pending)} "
            f"stashed={len(self._stash)}>"
        )

    # --- requests ---------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    def connect_request(self, waiter: object) -> Frame:
        """The handshake frame (FilterConnectCommunicationPort)."""
        self._connect_waiter = waiter
        return self._frame(Connect(PROTOCOL_VERSION, self.port_name, self.context, self.options))

    def check_usable(self) -> None:
        """Raise what a call on this handle fails with, if it cannot be used now.

        Raises:
            PortClosedError: we closed it (E_HANDLE).
            InvalidHandleError: the connection is gone (0x80070006, §6.6).
        """
        state = self.state
        if state is PortState.CONNECTED:
            return
        if state is PortState.CLOSED:
            raise PortClosedError(HResult.E_HANDLE, "the port was closed")
        raise InvalidHandleError(
            HResult.E_HANDLE,
            f"the port is disconnected{': ' + self.end_reason if self.end_reason else ''}",
            ntstatus=NtStatus.STATUS_PORT_DISCONNECTED,
        )

    def send_request(
        self, data: bytes, out_size: int, waiter: object, out: bytearray | None = None
    ) -> Frame:
        """FilterSendMessage's frame, appended to ``out`` when given (and ``out`` returned).

        Raises:
            HResultError: E_INVALIDARG for empty input or a negative size (§3.2);
                0x800705AA for input over the daemon's size limit; E_HANDLE when unusable.
        """
        if self.state is not _CONNECTED:
            self.check_usable()
        if type(data) is not bytes:
            data = _bytes(data, "the input buffer")  # a memoryview's len() need not count bytes
        if not data:
            raise _invalid_arg("FilterSendMessage needs a non-empty input buffer")
        out_size = _integer(out_size, "out_size")
        if not 0 <= out_size <= _ULONG_MAX:
            raise _invalid_arg("out_size is a DWORD: 0 to 0xFFFFFFFF")
        wire = self.wire
        if len(data) > wire.max_message_bytes:
            self._check_size(len(data))
        rid = wire.next_request_id()
        frame = self._frame(SendRequest(rid, data, out_size), out)
        self._pending[rid] = _Pending(SendRequest, waiter)
        return frame

    def take_stashed(self, buffer_size: int) -> Message | None:
        """A message kept for the next reader, if any (see ``_route_orphan``).

        Raises:
            HResultError: E_INVALIDARG for buffer_size <= 0; InsufficientBufferError when the
                stashed message does not fit (it stays stashed, §3.3).
        """
        self.check_usable()
        buffer_size = _integer(buffer_size, "buffer_size")
        if buffer_size <= 0:
            raise _invalid_arg("FilterGetMessage needs a buffer of at least one byte")
        if buffer_size > _ULONG_MAX:
            raise _invalid_arg("buffer_size is a DWORD: at most 0xFFFFFFFF")
        if not self._stash:
            return None
        message = self._stash[0]
        if message.size > buffer_size:
            raise _buffer_too_small(message.size)
        return self._stash.popleft()

    def get_request(
        self, buffer_size: int, waiter: object, out: bytearray | None = None
    ) -> tuple[int, Frame]:
        """FilterGetMessage's frame (appended to ``out`` when given) and its request id (to
        cancel it with ``abandon_get``)."""
        if self.state is not _CONNECTED:
            self.check_usable()
        buffer_size = _integer(buffer_size, "buffer_size")
        rid = self.wire.next_request_id()
        frame = self._frame(GetRequest(rid, buffer_size), out)
        self._pending[rid] = _Pending(GetRequest, waiter, buffer_size)
        return rid, frame

    def reply_request(
        self,
        message_id: int,
        status: int,
        data: bytes,
        waiter: object,
        out: bytearray | None = None,
    ) -> Frame:
        """FilterReplyMessage's frame (``data`` is what follows FILTER_REPLY_HEADER), appended
        to ``out`` when given."""
        if self.state is not _CONNECTED:
            self.check_usable()
        message_id = _integer(message_id, "message_id")
        if not 0 <= message_id <= 0xFFFFFFFFFFFFFFFF:
            raise _invalid_arg("message_id is a ULONGLONG")
        status = _integer(status, "status")
        if not -0x80000000 <= status <= _ULONG_MAX:
            raise _invalid_arg("status is an NTSTATUS: 32 bits, signed or unsigned spelling")
        status_u32 = status & _ULONG_MAX
        if type(data) is not bytes:
            data = _bytes(data, "the reply")
        wire = self.wire
        if len(data) > wire.max_message_bytes:
            self._check_size(len(data))
        rid = wire.next_request_id()
        frame = self._frame(ReplyRequest(rid, message_id, status_u32, data), out)
        self._pending[rid] = _Pending(ReplyRequest, waiter)
        return frame

    def abandon_get(self, rid: int) -> Frame | None:
        """A get's caller gave up (cancelled, timed out): withdraw its getter.

        Returns the GetCancel frame to write (empty when none is needed), or ``None`` when the
        get was answered already: its answer is on its way to the waiter, and the caller must
        take it (or ``requeue`` a message) rather than lose it. A message that arrives later
        for an abandoned get is routed to the next reader.
        """
        pending = self._pending.get(rid)
        if pending is None:
            return None
        if pending.abandoned:
            return b""
        pending.abandoned = True
        if self.wire.state is not State.OPEN:
            return b""
        return self._frame(GetCancel(rid))

    def requeue(self, message: Message, front: bool = False) -> tuple[list[Completion], bytes]:
        """A message was handed to a get whose caller gave up at that very moment: route it
        to the next reader. Returns completions and bytes to write, as ``receive`` does.
        ``front``: it was taken from the stash's front, and goes back there if stashed (the
        kernel's order)."""
        done: list[Completion] = []
        self._route_orphan(message, done, front)
        out = bytes(self._out)
        self._out.clear()
        return done, out

    def _frame(self, message: object, out: bytearray | None = None) -> bytearray:
        # A frame of its own (no copy into bytes), which the flavour writes and drops, or
        # appended to the flavour's output buffer.
        if out is None:
            out = bytearray()
        self.wire.send_into(message, out)
        return out

    def _check_size(self, size: int) -> None:
        if size > self.wire.max_message_bytes:
            raise hresult_error_for(
                _NO_RESOURCES,
                f"{size} bytes is over the daemon's message limit of "
                f"{self.wire.max_message_bytes} (fltemu serve --max-message-bytes)",
                ntstatus=NtStatus.STATUS_INSUFFICIENT_RESOURCES,
            )

    # --- answers ----------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> tuple[list[Completion], bytes]:
        """Feed bytes from the socket (``b""`` at EOF).

        Returns:
            The completions to apply to the flavour's futures, and bytes to write (cancels of
            gets whose message went to another reader).
        """
        if self.state is PortState.CLOSED:
            # After CloseHandle only the sends and replies that were running get answers
            # (§2.4); the rest of what the daemon says until its teardown ends has nobody
            # to go to.
            return (self._receive_closing(data) if self._pending else []), b""
        wire = self.wire
        wire.receive_data(data)
        done: list[Completion] = []
        while True:
            try:
                event = wire.next_event()
            except RemoteProtocolError as exc:
                self._end(done, f"the daemon broke the protocol: {exc}")
                break
            if event is NEED_DATA:
                break
            cls = type(event)
            if (cls is GetResult or cls is ReplyResult) and event.status == _DISCONNECTED:  # type: ignore[attr-defined]
                # The kernel side is gone (close_client_port, unload): the handle stays
                # open but every later call fails with 0x80070006 (§6.6). (Not from a
                # SendResult: a MessageNotify may return that status for one call.)
                self._kernel_disconnected()
            if cls is SendResult:
                self._on_send(event, done)  # type: ignore[arg-type]
            elif cls is GetResult:
                self._on_get(event, done)  # type: ignore[arg-type]
            elif cls is ReplyResult:
                pending = self._pending.pop(event.rid)  # type: ignore[attr-defined]
                status = event.status  # type: ignore[attr-defined]
                if status == _SUCCESS:
                    done.append((pending.waiter, None, None))
                else:
                    done.append((pending.waiter, None, hresult_error_from_ntstatus(status)))
            elif cls is ConnectResult:
                self._on_connect(event, done)  # type: ignore[arg-type]
            elif cls is Goodbye:
                status = NtStatus(event.status)  # type: ignore[attr-defined]
                reason = event.reason or str(status)  # type: ignore[attr-defined]
                self._end(done, f"the daemon said goodbye: {reason}", status)
            elif event is EOF:
                self._end(done, "the daemon closed the connection")
                break
        if not self._out:
            return done, b""
        out = bytes(self._out)
        self._out.clear()
        return done, out

    def connection_lost(self, reason: str, cause: BaseException | None = None) -> list[Completion]:
        """The socket failed or closed: every outstanding request fails with E_HANDLE.

        ``cause``, the socket's error, is chained to each failure (``__cause__``), so that its
        errno stays readable and a traceback shows it; ``reason`` says it in words.
        """
        done: list[Completion] = []
        self._end(done, reason)
        if cause is not None:
            for _, _, error in done:
                if error is not None and error.__cause__ is None:
                    error.__cause__ = cause
        return done

    def close(self) -> list[Completion]:
        """CloseHandle: pending gets fail with E_HANDLE (0x80070006), as fltmgr's cleanup
        completes them with STATUS_PORT_DISCONNECTED (§3.5); later calls fail with E_HANDLE.

        A send or reply already sent keeps waiting: the cleanup waits for the MessageNotify
        in flight, and the caller gets its answer (§2.4 step 4). The flavour feeds what the
        daemon says until its EOF to ``receive``; what is still waiting then fails with
        E_HANDLE (``connection_lost``).
        """
        done: list[Completion] = []
        if self.state is PortState.CLOSED:
            return done
        running = {
            rid: p
            for rid, p in self._pending.items()
            if p.kind is not GetRequest and not p.abandoned
        }
        self._end(done, "the port was closed", closing=True, keep=running)
        return done

    @property
    def is_waiting(self) -> bool:
        """Whether some request still waits for its answer."""
        return bool(self._pending)

    def _receive_closing(self, data: bytes | bytearray | memoryview) -> list[Completion]:
        """``receive`` after CloseHandle: the answers of the sends and replies still waiting."""
        wire = self.wire
        wire.receive_data(data)
        done: list[Completion] = []
        while self._pending:
            try:
                event = wire.next_event()
            except RemoteProtocolError:
                event = EOF
            if event is NEED_DATA:
                break
            cls = type(event)
            rid = getattr(event, "rid", None)
            if cls is SendResult and rid in self._pending:
                self._on_send(event, done)  # type: ignore[arg-type]
            elif cls is ReplyResult and rid in self._pending:
                pending = self._pending.pop(rid)
                status = event.status  # type: ignore[attr-defined]
                error = None if status == _SUCCESS else hresult_error_from_ntstatus(status)
                done.append((pending.waiter, None, error))
            elif event is EOF or cls is Goodbye:
                self._fail_closed(done)
        return done

    def _fail_closed(self, done: list[Completion]) -> None:
        pending, self._pending = self._pending, {}
        for p in pending.values():
            done.append((p.waiter, None, PortClosedError(HResult.E_HANDLE, "the port was closed")))

    def _kernel_disconnected(self) -> None:
        if self.state is PortState.CONNECTED:
            self.state = PortState.DISCONNECTED
            self.end_reason = "the filter closed the connection or unloaded"

    def _on_connect(self, event: ConnectResult, done: list[Completion]) -> None:
        waiter, self._connect_waiter = self._connect_waiter, None
        if nt_success(event.status):  # as the wire state machine and fltmgr's "< 0" check
            self.state = PortState.CONNECTED
            if event.max_message_bytes:
                self.wire.set_max_message_bytes(event.max_message_bytes)
            done.append((waiter, None, None))
            return
        self.state = PortState.DISCONNECTED
        self.end_reason = "the connect failed"
        status = NtStatus(event.status)
        if status == NtStatus.STATUS_OBJECT_NAME_NOT_FOUND:
            error: HResultError = FileNotFoundHResultError(
                message=f"no port named {self.port_name!r} (0x80070002)", ntstatus=status
            )
        elif status == NtStatus.STATUS_REVISION_MISMATCH:
            error = hresult_error_from_ntstatus(
                status,
                f"the daemon speaks wire protocol version {event.version}, "
                f"this fltuser speaks {PROTOCOL_VERSION}: upgrade one of them",
            )
        else:
            error = hresult_error_from_ntstatus(status)
        done.append((waiter, None, error))

    def _on_send(self, event: SendResult, done: list[Completion]) -> None:
        pending = self._pending.pop(event.rid)
        if event.status == _SUCCESS:
            done.append((pending.waiter, event.data, None))
        else:
            # S_OK only for exactly STATUS_SUCCESS; warnings and other success codes fail,
            # with their output attached (§3.2).
            done.append(
                (pending.waiter, None, hresult_error_from_ntstatus(event.status, data=event.data))
            )

    def _on_get(self, event: GetResult, done: list[Completion]) -> None:
        pending = self._pending.pop(event.rid)
        status = event.status
        if status == _SUCCESS:
            message = Message(event.message_id, event.reply_length, event.data)
            if pending.abandoned:
                self._route_orphan(message, done)
            else:
                done.append((pending.waiter, message, None))
        elif pending.abandoned:
            return  # the caller is gone; a bounce leaves the message with its kernel sender
        elif status == _TOO_SMALL:
            done.append((pending.waiter, None, _buffer_too_small(event.required_size)))
        else:
            done.append((pending.waiter, None, hresult_error_from_ntstatus(status)))

    def _route_orphan(self, message: Message, done: list[Completion], front: bool = False) -> None:
        # A message reached a get whose caller gave up. It goes to the live get that
        # FilterGetMessage's rule would pick (first big enough, else the oldest, which is
        # bounced); with no live get it waits in the stash for the next reader.
        live = [
            (rid, p) for rid, p in self._pending.items() if p.kind is GetRequest and not p.abandoned
        ]
        stash = self._stash.appendleft if front else self._stash.append
        if not live:
            stash(message)
            return
        chosen = next((item for item in live if item[1].buffer_size >= message.size), None)
        if chosen is not None:
            done.append((chosen[1].waiter, message, None))
        else:
            chosen = live[0]
            done.append((chosen[1].waiter, None, _buffer_too_small(message.size)))
            stash(message)
        # Its own getter in the daemon is withdrawn; what it brings is routed again.
        self._out += self.abandon_get(chosen[0]) or b""

    def _end(
        self,
        done: list[Completion],
        reason: str,
        status: NtStatus = NtStatus.STATUS_PORT_DISCONNECTED,
        *,
        closing: bool = False,
        keep: dict[int, _Pending] | None = None,
    ) -> None:
        if self.state is PortState.CLOSED:
            # The socket ended after CloseHandle: what still waited for an answer fails.
            self._fail_closed(done)
            return
        self.state = PortState.CLOSED if closing else PortState.DISCONNECTED
        if not self.end_reason:
            self.end_reason = reason
        self._stash.clear()
        if self._connect_waiter is not None:
            waiter, self._connect_waiter = self._connect_waiter, None
            done.append((waiter, None, _connect_failed(self.address, reason)))
        pending, self._pending = self._pending, keep or {}
        for rid, p in pending.items():
            if p.abandoned or rid in self._pending:
                continue
            if closing:
                error: HResultError = PortClosedError(HResult.E_HANDLE, "the port was closed")
            else:
                error = hresult_error_from_ntstatus(status, f"{reason} ({status})")
            done.append((p.waiter, None, error))


def _buffer_too_small(required: int) -> InsufficientBufferError:
    return InsufficientBufferError(
        hresult_from_win32(Win32Error.ERROR_INSUFFICIENT_BUFFER),
        f"the message needs a {required}-byte buffer (header included); it is kept for the "
        "next get_message",
        ntstatus=NtStatus.STATUS_BUFFER_TOO_SMALL,
        required_size=required,
    )


def _connect_failed(address: str, reason: str) -> HResultError:
    return hresult_error_for(
        HResult.E_HANDLE, f"the connection to the daemon at {address} ended: {reason}"
    )


def untrusted_peer_error(address: str, uid: int) -> HResultError:
    """E_ACCESSDENIED for a socket served by a user we do not trust (protocol §1)."""
    return hresult_error_for(
        HResult.E_ACCESSDENIED,
        f"the daemon at {address} runs as uid {uid}, not as you or root; set "
        f"FLTEMU_TRUST_UID={uid} to talk to it anyway",
        ntstatus=NtStatus.STATUS_ACCESS_DENIED,
    )


def connect_error(address: str, exc: OSError, explicit: bool = False) -> HResultError:
    """The HRESULT for a socket that cannot reach the daemon (as a driver that is not loaded).

    The message names the socket tried and where that path came from (``explicit``: the
    caller's ``address``; else ``$FLTEMU_SOCKET`` when set, else the default path).
    """
    if explicit:
        source = "the address given"
    elif os.environ.get("FLTEMU_SOCKET"):
        source = "FLTEMU_SOCKET"
    else:
        source = "the default socket"
    if isinstance(exc, PermissionError):
        return hresult_error_for(
            HResult.E_ACCESSDENIED,
            f"no permission to reach the fltemu daemon at {address} ({source}): {exc.strerror}",
            ntstatus=NtStatus.STATUS_ACCESS_DENIED,
        )
    why = exc.strerror or str(exc)
    if os.path.isdir(address):
        why = "that is a folder, not a socket"
    elif os.path.lexists(address) and isinstance(exc, ConnectionRefusedError):
        why = "nothing listens on that socket (a daemon that stopped?)"
    return hresult_error_for(
        hresult_from_win32(Win32Error.ERROR_FILE_NOT_FOUND),
        f"no fltemu daemon is listening on {address} ({source}): {why}; start "
        "one with 'fltemu serve', or point FLTEMU_SOCKET at its socket",
        ntstatus=NtStatus.STATUS_OBJECT_NAME_NOT_FOUND,
    )
