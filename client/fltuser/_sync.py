"""``Port``: the blocking flavour of the fltuser client, over a blocking AF_UNIX socket.

There is no reader thread. A caller that waits for an answer reads the socket itself unless
another caller already does; that caller (the "leader") completes everybody's answers and,
when its own has come, hands the reading over. A lone thread therefore pays no thread
hand-off per call: it writes its request and reads its answer, as a blocking socket program
would. Several threads may use one ``Port`` at once, as on a Windows handle.
Not here: fltlib's rules (``_base``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from fltemu.errors import HResultError
from fltemu.wire import is_trusted_peer, resolve_address

from ._base import (
    CLOSE_WAIT_SECONDS,
    FLT_PORT_FLAG_SYNC_HANDLE,
    READ_BUFFER_BYTES,
    Completion,
    Message,
    PortCore,
    PortState,
    connect_error,
    untrusted_peer_error,
)
from ._peer import peer_uid

__all__ = ["Port", "connect"]


F = TypeVar("F", bound=Callable[..., Any])


def _serialized(method: F, lock: threading.Lock) -> F:
    """``method`` (bound) made to run one call at a time (§3.1, §9.7 policy).

    On Windows the I/O manager serializes calls on a synchronous file object, so a thread
    blocked in FilterGetMessage holds up the others' calls on that handle.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _Waiter:
    """A one-shot result slot; guarded by the port's condition variable."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: object = None
        self.error: BaseException | None = None

    def result(self) -> object:
        if self.error is not None:
            raise self.error
        return self.value


class Port:
    """A connected communication port handle (blocking). Create it with ``connect``.

    Every method raises ``fltuser.HResultError`` with the HRESULT fltlib would return.
    """

    def __init__(self, sock: socket.socket, core: PortCore) -> None:
        self._sock = sock
        self._core = core
        self._lock = threading.Lock()  # the core's state
        self._wlock = threading.Lock()  # whole frames onto the socket
        self._read_lock = threading.Lock()  # who reads the socket (the leader)
        self._cv = threading.Condition(threading.Lock())  # answers arrived / leader left
        self._followers = 0  # threads waiting on _cv; notify only when there are any
        if core.options & FLT_PORT_FLAG_SYNC_HANDLE:
            # Only ports with a synchronous handle pay for serializing their calls.
            lock = threading.Lock()
            self.send = _serialized(self.send, lock)  # type: ignore[method-assign]
            self.get_message = _serialized(self.get_message, lock)  # type: ignore[method-assign]
            self.reply = _serialized(self.reply, lock)  # type: ignore[method-assign]
            self.reply_and_get = _serialized(self.reply_and_get, lock)  # type: ignore[method-assign]
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._rbuf = memoryview(bytearray(READ_BUFFER_BYTES))
        self._backlog = bytearray()  # frames the leader could not write itself

    def __repr__(self) -> str:
        return f"<fltuser.Port {self._core.port_name!r} {self._core.state.value}>"

    @property
    def port_name(self) -> str:
        """The server port this handle is connected to."""
        return self._core.port_name

    @property
    def is_connected(self) -> bool:
        """False once the daemon or the filter disconnected it, or it was closed."""
        return self._core.state is PortState.CONNECTED

    def __enter__(self) -> Port:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- fltlib ------------------------------------------------------------------------------

    def send(self, data: bytes, out_size: int = 0) -> bytes:
        """FilterSendMessage: run the filter's MessageNotify and return its output.

        Args:
            data: the input buffer (must not be empty).
            out_size: the output buffer size (``dwOutBufferSize``).

        Returns:
            Exactly the bytes returned (``*lpBytesReturned`` of them).

        Raises:
            HResultError: S_OK only for STATUS_SUCCESS; otherwise fltlib's translation of the
                MessageNotify status (warnings too: ``.data`` holds their output), E_INVALIDARG
                (empty input), 0x80070001 (port without MessageNotify), 0x80070006
                (disconnected), 0x800705AA (over the daemon's size limit).
        """
        waiter = _Waiter()
        self._request(lambda: self._core.send_request(data, out_size, waiter))
        return self._wait(waiter, None)  # type: ignore[return-value]

    def get_message(self, buffer_size: int, timeout: float | None = None) -> Message:
        """FilterGetMessage (synchronous): wait for a kernel message.

        Args:
            buffer_size: the buffer size, the 16-byte FILTER_MESSAGE_HEADER included.
            timeout: seconds to wait, or ``None`` for ever.

        Returns:
            The message: ``message_id``, ``reply_length`` and ``data``.

        Raises:
            HResultError: 0x8007007A (``InsufficientBufferError``, ``.required_size``) when
                the message does not fit; it is kept for a later reader. 0x80070006 once the
                port is disconnected; E_INVALIDARG for buffer_size <= 0.
            TimeoutError: nothing came in time; the getter was withdrawn, and a message
                already on its way goes to the next reader.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = _Waiter()
        with self._lock:
            stashed = self._core.take_stashed(buffer_size)
            if stashed is not None:
                return stashed
            rid, frame = self._core.get_request(buffer_size, waiter)
        self._write(frame)
        return self._finish_get(rid, waiter, deadline)

    def reply(self, message_id: int, data: bytes = b"", status: int = 0) -> None:
        """FilterReplyMessage: answer the kernel message ``message_id``.

        Args:
            message_id: ``Message.message_id``.
            data: the reply payload (what follows FILTER_REPLY_HEADER).
            status: FILTER_REPLY_HEADER.Status: what the kernel's FltSendMessage returns.

        Raises:
            HResultError: 0x801F0020 (nobody waits for that id: unknown, already answered or
                timed out), 0x800700EA (the data was cut to the kernel's reply buffer),
                0x80070006 (disconnected).
        """
        waiter = _Waiter()
        self._request(lambda: self._core.reply_request(message_id, status, data, waiter))
        self._wait(waiter, None)

    def reply_and_get(
        self,
        message_id: int,
        data: bytes,
        buffer_size: int,
        status: int = 0,
        timeout: float | None = None,
    ) -> Message:
        """FilterReplyMessage, then FilterGetMessage, sent in one write.

        The usual loop of an agent (answer a message, wait for the next) in one round trip
        to the daemon instead of two; otherwise exactly ``reply`` followed by ``get_message``.

        Raises:
            HResultError: ``reply``'s errors (the get is then withdrawn: a message already on
                its way goes to the next reader), then ``get_message``'s.
            TimeoutError: as ``get_message``; ``timeout`` counts from the call.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        reply_waiter, waiter = _Waiter(), _Waiter()
        rid = 0
        stashed: Message | None = None
        get_error: HResultError | None = None
        with self._lock:
            frame = self._core.reply_request(message_id, status, data, reply_waiter)
            try:
                stashed = self._core.take_stashed(buffer_size)
            except HResultError as exc:
                get_error = exc  # raised after the reply, as get_message would
            if stashed is None and get_error is None:
                rid, get_frame = self._core.get_request(buffer_size, waiter)
                frame += get_frame
        self._write(frame)
        try:
            self._wait(reply_waiter, None)
        except BaseException:
            if stashed is not None:
                self._hand_on(stashed, front=True)  # back where it was, first in line
            elif rid:
                try:
                    answered = self._withdraw_get(rid, waiter)
                except HResultError:
                    answered = None  # the get failed too (disconnected): the reply's error
                if answered is not None:
                    self._hand_on(answered)
            raise
        if get_error is not None:
            raise get_error
        if stashed is not None:
            return stashed
        return self._finish_get(rid, waiter, deadline)

    def _finish_get(self, rid: int, waiter: _Waiter, deadline: float | None) -> Message:
        try:
            return self._wait(waiter, deadline)  # type: ignore[return-value]
        except TimeoutError:
            message = self._withdraw_get(rid, waiter)
            if message is not None:
                return message
            raise

    def _withdraw_get(self, rid: int, waiter: _Waiter) -> Message | None:
        """The caller of get ``rid`` gives up: cancel its getter. Returns the message when it
        was answered already (the reading thread is handing it over right now: a message must
        never be lost, protocol §7.4); raises the get's error if that was its answer."""
        with self._lock:
            cancel = self._core.abandon_get(rid)
        if cancel is None:
            return self._take_answer(waiter)  # type: ignore[return-value]
        if cancel:
            self._write(cancel)
        return None

    def _hand_on(self, message: Message, front: bool = False) -> None:
        """Give a message this caller will not take to the next reader (``front``: it came
        from the stash's front, and goes back there)."""
        with self._lock:
            done, out = self._core.requeue(message, front)
        if out:
            self._write(out)
        self._complete(done)

    def close(self) -> None:
        """CloseHandle: disconnect, and return once the filter's DisconnectNotify has run.

        Gets pending on other threads fail with E_HANDLE (0x80070006, §3.5); a send or reply
        that another thread has running gets its answer, as fltmgr's cleanup waits for the
        MessageNotify in flight (§2.4). Closing twice is fine.
        """
        with self._lock:
            if self._core.state is PortState.CLOSED:
                return
            done = self._core.close()
        self._complete(done)
        # Half-close: the daemon runs the teardown, then closes its end (EOF for us).
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        # A leader blocked in recv sees that EOF and leaves; if the daemon is stuck, kick it.
        if not self._read_lock.acquire(timeout=CLOSE_WAIT_SECONDS):
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._read_lock.acquire()
        try:
            self._drain_until_eof(deadline)
            self._sock.close()
        finally:
            self._read_lock.release()

    def _drain_until_eof(self, deadline: float) -> None:
        # Holding _read_lock. Sends and replies that were running get their answers (§2.4);
        # whatever still waits when the socket ends, or the wait runs out, fails.
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                if not self._poller.poll(max(1, math.ceil(remaining * 1000))):
                    break
                n = self._sock.recv_into(self._rbuf)
                with self._lock:
                    done, _ = self._core.receive(self._rbuf[:n] if n else b"")
                self._complete(done)
                if not n:
                    break
        except OSError:
            pass
        self._lost("the port was closed")

    # --- plumbing ----------------------------------------------------------------------------

    def _request(self, build: object) -> None:
        with self._lock:
            frame = build()  # type: ignore[operator]
        self._write(frame)

    def _write(self, frame: bytes | bytearray) -> None:
        try:
            with self._wlock:
                self._sock.sendall(frame)
                if self._backlog:
                    self._drain_backlog()
        except OSError as exc:
            if self._is_closed:
                # After close() half-closed the socket: a call that was built before it and
                # written after it fails when close() reaches the EOF, with E_HANDLE, and the
                # sends that were running still get their answers (semantics §2.4).
                return
            self._lost(f"writing to the daemon failed: {exc}", exc)
        self._flush_backlog()

    def _drain_backlog(self) -> None:
        # Holding _wlock. Frames queued by a reader that could not take _wlock itself.
        while True:
            with self._lock:
                if not self._backlog:
                    return
                data = bytes(self._backlog)
                self._backlog.clear()
            self._sock.sendall(data)

    def _flush_backlog(self) -> None:
        # After releasing _wlock: a reader may have queued frames while we held it.
        while self._backlog and self._wlock.acquire(blocking=False):
            try:
                self._drain_backlog()
            except OSError as exc:
                self._lost(f"writing to the daemon failed: {exc}", exc)
            finally:
                self._wlock.release()

    def _wait(self, waiter: _Waiter, deadline: float | None) -> object:
        while not waiter.done:
            if self._read_lock.acquire(blocking=False):
                try:
                    while not waiter.done:
                        if not self._read_once(deadline):
                            break
                finally:
                    with self._cv:
                        self._read_lock.release()
                        if self._followers:
                            self._cv.notify_all()  # one of them takes over the reading
            else:
                with self._cv:
                    self._followers += 1
                    try:
                        while not waiter.done and self._read_lock.locked():
                            remaining = None if deadline is None else deadline - time.monotonic()
                            if remaining is not None and remaining <= 0:
                                break
                            self._cv.wait(remaining)
                    finally:
                        self._followers -= 1
            if not waiter.done and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("no message arrived in time")
        return waiter.result()

    def _take_answer(self, waiter: _Waiter) -> object:
        with self._cv:
            self._followers += 1
            try:
                while not waiter.done:
                    self._cv.wait()
            finally:
                self._followers -= 1
        return waiter.result()

    def _read_once(self, deadline: float | None) -> bool:
        """Read once and complete what came; False on timeout."""
        if self._is_closed and not self._core.is_waiting:
            return True  # close() ran while we were reading; every waiter has its answer
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # poll, not select: select cannot watch descriptors >= FD_SETSIZE (1024).
            if not self._poller.poll(max(1, math.ceil(remaining * 1000))):
                return False
        try:
            n = self._sock.recv_into(self._rbuf)
        except OSError as exc:
            self._lost(f"reading from the daemon failed: {exc}", exc)
            return True
        with self._lock:
            done, out = self._core.receive(self._rbuf[:n] if n else b"")
            if out:
                self._backlog += out
        self._complete(done)
        if out:
            self._flush_backlog()
        return True

    @property
    def _is_closed(self) -> bool:
        return self._core.state is PortState.CLOSED

    def _lost(self, reason: str, cause: OSError | None = None) -> None:
        # The connection is gone: every waiting call fails with the HRESULT of a lost port,
        # the socket's error chained as its cause (PortCore.connection_lost).
        with self._lock:
            done = self._core.connection_lost(reason, cause)
        self._complete(done)

    def _complete(self, done: list[Completion]) -> None:
        if not done:
            return
        with self._cv:
            for waiter, value, error in done:
                assert isinstance(waiter, _Waiter)
                waiter.value = value
                waiter.error = error
                waiter.done = True
            if self._followers:
                self._cv.notify_all()


def connect(
    port_name: str,
    context: bytes = b"",
    options: int = 0,
    address: str | os.PathLike[str] | None = None,
) -> Port:
    """FilterConnectCommunicationPort: connect to a server port (blocking).

    Returns once the filter's ConnectNotify has accepted the connection.

    Args:
        port_name: the server port name, e.g. ``"\\\\ScannerPort"`` (exact, case-sensitive).
        context: bytes handed to ConnectNotify (at most 65511, what fltlib can carry on x64;
            65512 to 65535 bytes are refused with E_ACCESSDENIED, protocol §5).
        options: 0 or ``FLT_PORT_FLAG_SYNC_HANDLE``.
        address: the daemon's socket; default as protocol §1 says.

    Raises:
        HResultError: 0x80070002 (no such port, or no daemon), E_ACCESSDENIED (the port's
            security refuses this user, or a context of 65512 to 65535 bytes), 0x800704D6
            (max_connections reached), E_INVALIDARG (bad context or options), 0x801F000B (the
            filter is unloading), or fltlib's translation of the failure status ConnectNotify
            returned.
    """
    path = resolve_address(address)
    core = PortCore(port_name, context, options, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise connect_error(path, exc, explicit=address is not None and bool(str(address))) from exc
    uid = peer_uid(sock)
    if not is_trusted_peer(uid):
        sock.close()
        raise untrusted_peer_error(path, uid)  # type: ignore[arg-type]
    port = Port(sock, core)
    waiter = _Waiter()
    try:
        port._write(core.connect_request(waiter))
        port._wait(waiter, None)
    except BaseException:
        sock.close()
        raise
    return port
