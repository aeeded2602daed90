"""Test helpers for testing a user-mode agent against fltemu: daemons you can drive from tests.

``DaemonThread`` runs a daemon in-process on a thread of its own, so that plain (synchronous)
tests and asyncio tests alike can use it; ``PortHarness`` creates a port on it, records what
happens and drives ``send_message``. ``DaemonProcess`` runs ``fltemu serve`` as a subprocess
and drives it with the control commands. ``WineAgent`` runs a Windows agent under Wine against
either, its console captured line by line. The pytest fixtures in ``fltemu.pytest_plugin``
hand these out. Not here: the daemon itself (``fltemu.daemon``), Wine's setup
(``fltemu.wine``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from fltuser.control import call

from .daemon import Daemon
from .daemon.runner import loop_factory
from .kernel import ClientPort, Filter, SendMessageResult, ServerPort
from .kernel.security import SecurityDescriptor
from .status import NtStatus
from .wine import WinePrefix, agent_argv, agent_environment
from .wire import PROTOCOL_VERSION, Control, ControlResult, FilterInfo

__all__ = ["DaemonProcess", "DaemonThread", "PortHarness", "WineAgent"]

T = TypeVar("T")

#: Seconds a helper waits for the daemon before it fails the test (never forever).
DEFAULT_WAIT: float = 10.0


class DaemonThread:
    """A daemon on a background thread with its own event loop.

    Args:
        address: the socket path (default: a fresh one in a temporary directory).
        loop: ``auto``, ``asyncio`` or ``uvloop``, as ``fltemu serve --loop``.
        max_message_bytes: as ``fltemu.Daemon``.

    Use it as a context manager, or call ``start`` and ``stop``.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        loop: str = "auto",
        max_message_bytes: int | None = None,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if address is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fltemu-")
            address = os.path.join(self._tmp.name, "fltemu.sock")
        self.address = address
        self._loop_choice = loop
        self._max_message_bytes = max_message_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._daemon: Daemon | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._filters: dict[str, Filter] = {}

    def __enter__(self) -> DaemonThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def daemon(self) -> Daemon:
        """The ``fltemu.Daemon`` (touch it only through ``run``)."""
        assert self._daemon is not None, "the daemon is not running"
        return self._daemon

    def start(self) -> None:
        """Start the daemon; returns once its socket accepts connections."""
        self._thread = threading.Thread(target=self._main, name="fltemu-daemon", daemon=True)
        self._thread.start()
        self._ready.wait(DEFAULT_WAIT)
        if self._error is not None:
            raise self._error
        if not self._ready.is_set():
            raise TimeoutError("the fltemu daemon did not start")

    def stop(self) -> None:
        """Shut the daemon down (every DisconnectNotify runs) and wait for its thread."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(DEFAULT_WAIT * 3)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=loop_factory(self._loop_choice)) as runner:
                runner.run(self._serve())
        except BaseException as exc:  # reported to the thread that called start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        kwargs: dict[str, Any] = {}
        if self._max_message_bytes is not None:
            kwargs["max_message_bytes"] = self._max_message_bytes
        async with Daemon(self.address, **kwargs) as daemon:
            self._daemon = daemon
            self._ready.set()
            await self._stop.wait()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = DEFAULT_WAIT) -> T:
        """Run a coroutine on the daemon's loop and return its result (blocking).

        Raises:
            TimeoutError: it took longer than ``timeout`` seconds.
        """
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the daemon did not finish within {timeout} s") from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the daemon's loop; await it with ``asyncio.wrap_future``."""
        assert self._loop is not None, "the daemon is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def wait_for_sessions(self, count: int, timeout: float = DEFAULT_WAIT) -> None:
        """Block until the daemon has ``count`` open sockets (0: every client's sockets,
        attached ones too, are closed, so no teardown of theirs is still to come).

        Raises:
            TimeoutError: it had another count for ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout

        async def sessions() -> int:
            return len(self.daemon.sessions)

        while self.run(sessions()) != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the daemon did not reach {count} open sockets")
            time.sleep(0.005)

    def filter(self, name: str = "test") -> Filter:
        """A filter registered on the daemon (the same object for the same name)."""
        flt = self._filters.get(name)
        if flt is None:

            async def register() -> Filter:
                return self.daemon.register_filter(name)

            flt = self._filters[name] = self.run(register())
        return flt

    def create_port(
        self,
        name: str,
        *,
        max_connections: int = 1,
        message_notify: Callable[[object, bytes, int], Any] | None = None,
        connect_status: int = NtStatus.STATUS_SUCCESS,
        security: SecurityDescriptor | None = None,
        filter_name: str = "test",
    ) -> PortHarness:
        """FltCreateCommunicationPort with recording callbacks; see ``PortHarness``.

        Args:
            name: the port name, e.g. ``"\\\\ScannerPort"``.
            max_connections: the connection limit.
            message_notify: MessageNotify (runs on the daemon's thread), or ``None``: then
                FilterSendMessage fails with 0x80070001, as for scanner's port.
            connect_status: what ConnectNotify answers (a failure status refuses clients).
            security: who may connect (default: root and this process's user).
            filter_name: the filter that owns the port.
        """
        harness = PortHarness(self, self.filter(filter_name), connect_status)
        harness.server_port = self.run(
            harness._create(name, max_connections, message_notify, security)
        )
        return harness


class PortHarness:
    """A server port whose callbacks record connections, and helpers to drive it.

    Attributes:
        connections: every ClientPort that connected, in order.
        contexts: the connection context each client passed.
        disconnects: the connection numbers whose DisconnectNotify ran.
        server_port: the ServerPort.
    """

    def __init__(self, owner: DaemonThread, flt: Filter, connect_status: int) -> None:
        self._owner = owner
        self.filter = flt
        self.connect_status = connect_status
        self.server_port: ServerPort | None = None
        self.connections: list[ClientPort] = []
        self.contexts: list[bytes] = []
        self.disconnects: list[int] = []
        self._changed = threading.Condition()

    async def _create(
        self,
        name: str,
        max_connections: int,
        message_notify: Callable[[object, bytes, int], Any] | None,
        security: SecurityDescriptor | None,
    ) -> ServerPort:
        def on_connect(client_port: ClientPort, cookie: object, context: bytes) -> Any:
            if self.connect_status == NtStatus.STATUS_SUCCESS:
                with self._changed:
                    self.connections.append(client_port)
                    self.contexts.append(context)
                    self._changed.notify_all()
            return self.connect_status, client_port.id

        async def on_disconnect(cookie: object) -> None:
            for client_port in self.connections:
                if client_port.id == cookie:
                    await self.filter.close_client_port(client_port)
            with self._changed:
                self.disconnects.append(cookie)  # type: ignore[arg-type]
                self._changed.notify_all()

        return await self.filter.create_communication_port(
            name,
            connect_notify=on_connect,
            disconnect_notify=on_disconnect,
            message_notify=message_notify,
            max_connections=max_connections,
            security=security,
        )

    def wait_for_connection(self, count: int = 1, timeout: float = DEFAULT_WAIT) -> ClientPort:
        """Block until ``count`` clients have connected; return the latest of them.

        Raises:
            TimeoutError: fewer connected within ``timeout`` seconds.
        """
        return self._wait(lambda: len(self.connections) >= count, timeout, "connection")[-1]

    def wait_for_disconnect(self, count: int = 1, timeout: float = DEFAULT_WAIT) -> None:
        """Block until ``count`` DisconnectNotify calls have run."""
        self._wait(lambda: len(self.disconnects) >= count, timeout, "disconnect")

    def wait_for_getters(
        self, count: int, timeout: float = DEFAULT_WAIT, *, exactly: bool = False
    ) -> None:
        """Block until the latest connection has ``count`` pending FilterGetMessage calls
        (at least, or with ``exactly``, that many).

        Raises:
            TimeoutError: not so many were pending within ``timeout`` seconds.
        """
        client_port = self.wait_for_connection(timeout=timeout)

        def ready() -> bool:
            pending = client_port.queues.getter_count
            return pending == count if exactly else pending >= count

        self._poll(ready, timeout, f"{count} pending gets")

    def wait_for_closing(self, timeout: float = DEFAULT_WAIT) -> None:
        """Block until the latest connection is being torn down (its handle closed, or the
        filter closed it): DisconnectNotify may still be waiting for a MessageNotify."""
        client_port = self.wait_for_connection(timeout=timeout)
        self._poll(lambda: not client_port.is_connected, timeout, "close")

    def _poll(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        # The state lives in the daemon's thread; it is read, never changed, from here.
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout} s")
            time.sleep(0.005)

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> list[ClientPort]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no {what} on {self.server_port.name if self.server_port else '?'} "
                        f"within {timeout} s"
                    )
                self._changed.wait(remaining)
            return list(self.connections)

    def send_message(
        self,
        data: bytes,
        reply_length: int | None = None,
        timeout: float | None = DEFAULT_WAIT,
        client_port: ClientPort | None = None,
    ) -> SendMessageResult:
        """FltSendMessage to ``client_port`` (default: the latest connection), blocking.

        ``timeout`` is FltSendMessage's own (the result is then STATUS_TIMEOUT); ``None`` waits
        for ever, so prefer a bound in tests.
        """
        return self._owner.run(
            self.asend_message_coro(data, reply_length, timeout, client_port),
            None if timeout is None else timeout + DEFAULT_WAIT,
        )

    async def asend_message(
        self,
        data: bytes,
        reply_length: int | None = None,
        timeout: float | None = DEFAULT_WAIT,
        client_port: ClientPort | None = None,
    ) -> SendMessageResult:
        """``send_message`` for asyncio tests (whatever loop they run on)."""
        future = self._owner.submit(
            self.asend_message_coro(data, reply_length, timeout, client_port)
        )
        return await asyncio.wrap_future(future)

    async def asend_message_coro(
        self,
        data: bytes,
        reply_length: int | None,
        timeout: float | None,
        client_port: ClientPort | None,
    ) -> SendMessageResult:
        """The coroutine behind ``send_message``; it runs on the daemon's loop."""
        target = client_port if client_port is not None else self._latest()
        return await self.filter.send_message(target, data, reply_length, timeout)

    def _latest(self) -> ClientPort | None:
        return self.connections[-1] if self.connections else None

    def close_client_port(self, client_port: ClientPort | None = None) -> None:
        """FltCloseClientPort of ``client_port`` (default: the latest connection)."""
        target = client_port if client_port is not None else self._latest()
        self._owner.run(self.filter.close_client_port(target))


class DaemonProcess:
    """``fltemu serve`` in a subprocess, driven through its control commands.

    Args:
        args: extra ``fltemu serve`` arguments (``--filter``, ``--set``, ...).
        address: the socket path (default: a fresh one in a temporary directory).
        env: extra environment variables for the daemon.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        address: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if address is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fltemu-")
            address = os.path.join(self._tmp.name, "fltemu.sock")
        self.address = address
        self.args = list(args)
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        #: The line the daemon printed when it was ready.
        self.banner = ""

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the daemon; returns once it accepts connections.

        Raises:
            RuntimeError: it exited instead (its error output is in the message).
        """
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fltemu", "serve", "--address", self.address, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **self.env},
        )
        assert self.proc.stdout is not None
        self.banner = self.proc.stdout.readline()
        if not self.banner:
            _, err = self.proc.communicate(timeout=DEFAULT_WAIT)
            raise RuntimeError(f"fltemu serve exited with {self.proc.returncode}: {err.strip()}")

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status (0 on a clean shutdown)."""
        code = 0
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                self.proc.communicate(timeout=DEFAULT_WAIT * 3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
            code = self.proc.returncode
            self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code

    def control(self, command: str, *args: Any) -> ControlResult:
        """Send one control command (see ``fltemu.wire.Control``)."""
        return call(Control(PROTOCOL_VERSION, command, *args), self.address)

    def ports(self) -> tuple[FilterInfo, ...]:
        """``fltemu ports``."""
        return self.control("ports").filters

    def send(
        self,
        port: str,
        data: bytes,
        reply_length: int | None = None,
        timeout: float | None = DEFAULT_WAIT,
        connection: int | None = None,
    ) -> ControlResult:
        """``fltemu send``: FltSendMessage to a client of ``port``; ``.status``, ``.reply``."""
        return self.control("send", port, connection, data, reply_length, timeout)

    def wait_for_connection(self, port: str, timeout: float = DEFAULT_WAIT) -> int:
        """Block until ``port`` has a connected client; return its connection id."""
        deadline = time.monotonic() + timeout
        while True:
            for flt in self.ports():
                for info in flt.ports:
                    live = [c for c in info.connections if c.state == "connected"]
                    if info.name == port and live:
                        return live[-1].id
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no client connected to {port} within {timeout} s")
            time.sleep(0.02)

    def disconnect(self, port: str, connection: int | None = None) -> int:
        """``fltemu disconnect``; returns how many connections were closed."""
        return self.control("disconnect", port, connection).count

    def unload(self, filter_name: str) -> None:
        """``fltemu unload``."""
        result = self.control("unload", filter_name)
        if result.status:
            raise RuntimeError(result.message)


class WineAgent:
    """A Windows program under Wine, connected to a daemon, its console captured.

    Its standard output and error are read line by line on a thread (carriage returns
    dropped) into ``lines``; ``send`` types a line on its standard input. A program whose
    output is a pipe buffers it unless it flushes (``fflush(stdout)`` or ``setvbuf(stdout,
    NULL, _IONBF, 0)``), as on Windows: a line it has not flushed is not seen yet.

    Args:
        program: the ``.exe`` (a Linux path).
        args: its arguments.
        address: the daemon's socket (``FLTEMU_SOCKET`` of the agent).
        prefix: a Wine prefix with fltemu's Windows side installed (``WinePrefix.ensure``);
            its session is started here if it is not running.
        env: extra environment variables for the agent.
        cwd: its working folder.

    Raises:
        WineSetupError: Wine is missing, the socket path is too long, or Wine would not start.
    """

    def __init__(
        self,
        program: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        address: str,
        prefix: WinePrefix,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        environment = agent_environment(prefix, address)
        environment.update(env or {})
        prefix.start_session()
        self.program = str(program)
        #: Every line of output so far, in order.
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            agent_argv(self.program, list(args)),
            env=environment,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="fltemu-wine-agent", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\r\n"))
        self._queue.put(None)

    @property
    def output(self) -> str:
        """The output so far, one line per line."""
        return "\n".join(self.lines)

    def send(self, line: str) -> None:
        """Type ``line`` (and a newline) on the agent's standard input."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close_input(self) -> None:
        """End of file on the agent's standard input."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def wait_for_line(
        self, match: str | Callable[[str], bool], timeout: float = DEFAULT_WAIT * 3
    ) -> str:
        """The next line of output that contains ``match`` (or for which it is true).

        Lines before it are kept in ``lines`` and not looked at again.

        Raises:
            AssertionError: no such line within ``timeout`` seconds, or the agent ended
                first (the message shows its output and exit status).
        """
        test = match if callable(match) else (lambda line: match in line)
        what = match if isinstance(match, str) else getattr(match, "__name__", "a line")
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"{self.program} printed no line with {what!r} within {timeout} s; "
                    f"its output:\n{self.output}"
                ) from None
            if line is None:
                self._queue.put(None)  # the end stays visible to later calls
                status = self.proc.wait(DEFAULT_WAIT)
                raise AssertionError(
                    f"{self.program} exited with status {status} before printing a line "
                    f"with {what!r}; its output:\n{self.output}"
                )
            self.lines.append(line)
            if test(line):
                return line

    def wait(self, timeout: float = DEFAULT_WAIT * 3) -> int:
        """Wait for the agent to exit and all its output to be read; its exit status.

        Raises:
            AssertionError: it still runs after ``timeout`` seconds (its output is shown).
        """
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.program} still runs after {timeout} s; its output:\n{self.output}"
            ) from None
        self._drain(timeout)
        return status

    def _drain(self, timeout: float) -> None:
        self._reader.join(timeout)
        if self._reader.is_alive():
            # A Wine process it started still holds its output: end its whole session.
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._reader.join(timeout)
        while (line := self._queue.get_nowait()) is not None:
            self.lines.append(line)
        self._queue.put(None)

    def stop(self) -> int:
        """End the agent if it still runs (SIGTERM, then SIGKILL after a grace); its status."""
        self.close_input()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(DEFAULT_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain(DEFAULT_WAIT)
        return self.proc.returncode
