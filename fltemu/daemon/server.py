"""The daemon: the Filter Manager plus its message device, listening on a Unix socket.

``async with Daemon(address=path) as daemon`` returns once the socket accepts connections;
leaving the block shuts down: no new connections, every filter unloaded (each connection's
DisconnectNotify runs), every session closed, the socket file removed.
Not here: per-connection I/O (``session``), process-level concerns such as signals and the
loop choice (``runner``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import stat
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Final

from .._limits import DEFAULT_MAX_MESSAGE_BYTES
from .._version import __version__
from ..errors import FltEmuError
from ..kernel import Filter, FilterManager, SecurityDescriptor
from ..kernel.rundown import CANCEL_SLACK
from ..wire import DaemonInfo, Trace, WireConnection, default_socket_dir, resolve_address
from .session import READ_BUFFER_BYTES, Session
from .trace import TraceHub, TraceSubscriber

__all__ = [
    "DEFAULT_SHUTDOWN_GRACE",
    "Daemon",
    "DaemonAddressError",
    "DaemonAddressInUseError",
    "DaemonAddressUnsafeError",
    "SHUTDOWN_SLACK",
]

log = logging.getLogger(__name__)

#: How long shutdown waits, in all, for the filter callbacks still running or started by the
#: shutdown itself (teardowns, MessageNotify, DisconnectNotify, ConnectNotify) before it
#: abandons them. Windows waits forever; a daemon asked to stop must stop.
DEFAULT_SHUTDOWN_GRACE: Final = 5.0

#: What shutdown may take beyond the grace, in all: cancelled callbacks unwind
#: (``CANCEL_SLACK``), then every connection gets its Goodbye and is closed. ``docker stop``
#: waits 10 s: 5 s of grace and this fit well inside it.
SHUTDOWN_SLACK: Final = 1.0

#: listen(2) backlog: load tests open hundreds of connections at once.
LISTEN_BACKLOG: Final = 1024


class DaemonAddressError(FltEmuError, OSError):
    """The daemon cannot listen at its address; the message names the path and what to do.

    An ``OSError`` whose ``errno`` is the system's, and whose text is the explanation alone
    (no ``[Errno N]`` prefix).
    """

    def __str__(self) -> str:
        return str(self.strerror)


class DaemonAddressInUseError(DaemonAddressError):
    """Another daemon is already listening on the address."""


class DaemonAddressUnsafeError(DaemonAddressError):
    """The default socket's private folder exists but is not private to this user."""


_OTHER_SOCKET: Final = "choose another socket with --address PATH or FLTEMU_SOCKET"


def _who_am_i() -> str:
    return f"uid {os.geteuid()}, gid {os.getegid()}"


def explain_address_error(path: str, exc: OSError) -> DaemonAddressError:
    """A ``DaemonAddressError`` for an ``OSError`` met while listening on ``path``.

    It names the socket, the folder (with its owner and mode when it exists), the uid the
    daemon runs as, and what to change: the usual trouble with a bind-mounted socket folder
    is that it belongs to another user than the daemon's.
    """
    if isinstance(exc, DaemonAddressError):
        return exc
    folder = os.path.dirname(path) or "."
    reason = exc.strerror or str(exc)
    code = exc.errno or errno.EIO
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        owner, owner_uid = "", "UID"
        try:
            info = os.stat(folder)
        except OSError:
            pass
        else:
            owner_uid = str(info.st_uid)
            owner = (
                f"; the folder {folder} belongs to uid {info.st_uid}, gid {info.st_gid}, "
                f"mode {stat.S_IMODE(info.st_mode):o}"
            )
        return DaemonAddressError(
            code,
            f"cannot create the socket {path}: {reason} (the daemon runs as {_who_am_i()}"
            f"{owner}). Let the daemon's user write to {folder} (for a bind mount: chown "
            f"{os.geteuid()} {folder} on the host, or run the daemon as the folder's owner, "
            f"e.g. docker run --user {owner_uid}), or {_OTHER_SOCKET}",
        )
    if code in (errno.ENOENT, errno.ENOTDIR):
        return DaemonAddressError(
            code, f"cannot create the socket {path}: the folder {folder} does not exist"
        )
    return DaemonAddressError(code, f"cannot listen on {path}: {reason}")


def _ensure_private_dir(path: str) -> None:
    """Create ``/tmp/fltemu-<uid>`` with mode 0700, or check that the one there is a folder
    (not a link) of this user that nobody else may enter: another user who made it first could
    otherwise put a daemon of theirs in front of our clients (protocol §1).

    Raises:
        DaemonAddressUnsafeError: it is not.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder (a link or a file)"
    elif info.st_uid != os.geteuid():
        problem = f"belongs to uid {info.st_uid}, not to uid {os.geteuid()}"
    elif info.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(info.st_mode):o}; it must be 700"
    if problem is not None:
        raise DaemonAddressUnsafeError(
            errno.EPERM, f"the socket folder {path} {problem}: remove it, or {_OTHER_SOCKET}"
        )


class Daemon:
    """The Filter Manager and its message device, served on a Unix socket.

    Args:
        address: the socket path; ``None`` resolves it as protocol §1 says.
        max_message_bytes: the largest message payload carried (at least 16 MiB by default).
        socket_mode: permission bits of the socket file (0600: only the daemon's user can even
            reach it; ports then check their own security).
        shutdown_grace: seconds that shutdown waits, in all, for filter callbacks that have
            not returned (each is then abandoned: cancelled, logged, its caller answered
            0x80070006); shutdown ends within it plus ``SHUTDOWN_SLACK``.
        default_security: what ports created with ``security=None`` admit (default: root and
            the daemon's user, like FltBuildDefaultSecurityDescriptor).
        ready_at_start: whether the daemon is ready (``fltemu status``, ``fltemu wait``) as
            soon as it listens; ``fltemu serve`` says no, and calls ``mark_ready`` once its
            filter modules are set up.
    """

    def __init__(
        self,
        address: str | os.PathLike[str] | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        socket_mode: int = 0o600,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        default_security: SecurityDescriptor | None = None,
        ready_at_start: bool = True,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        self.address = resolve_address(address)
        self.max_message_bytes = max_message_bytes
        self.socket_mode = socket_mode
        self.shutdown_grace = shutdown_grace
        self.manager = FilterManager(
            max_message_bytes=max_message_bytes, default_security=default_security
        )
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[Session] = set()
        #: Open connections that another socket may join, by attach token (protocol §5b).
        self.attachable: dict[bytes, Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session_ids = itertools.count(1)
        self._inode: int | None = None
        self._read_view: memoryview | None = None
        self._ready_at_start = ready_at_start
        #: Whether the daemon is ready: listening, and its filters set up.
        self.is_ready = False
        #: When it started listening (``time.time()``), 0 before.
        self.started = 0.0
        self.trace_hub = TraceHub(self.manager)

    def __repr__(self) -> str:
        state = "listening" if self._server is not None else "stopped"
        return f"<Daemon {self.address!r} {state} sessions={len(self._sessions)}>"

    def register_filter(self, name: str) -> Filter:
        """FltRegisterFilter: a filter that can create communication ports.

        Raises:
            StatusError: STATUS_OBJECT_NAME_COLLISION when a filter of that name is loaded.
        """
        return self.manager.register_filter(name)

    def mark_ready(self) -> None:
        """Say that the daemon is ready (its filters are set up): ``fltemu wait`` returns."""
        self.is_ready = True

    def info(self) -> DaemonInfo:
        """What ``fltemu status`` shows: version, pid, uid, socket, loop, readiness, counts."""
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        filters = list(self.manager.filters.values())
        return DaemonInfo(
            version=__version__,
            pid=os.getpid(),
            uid=os.geteuid(),
            address=self.address,
            loop=loop,
            ready=self.is_ready and self._server is not None,
            started=self.started,
            filters=len(filters),
            ports=sum(len(f.server_ports) for f in filters),
            connections=sum(1 for _ in self.manager.connections()),
        )

    @property
    def sessions(self) -> frozenset[Session]:
        """The open user connections."""
        return frozenset(self._sessions)

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Listen; returns once the socket accepts connections.

        Raises:
            DaemonAddressInUseError: a daemon already listens there.
            DaemonAddressError: the path cannot be used (not a socket, no permission, no
                such folder, ...); the message names the path, the folder and the daemon's uid.
        """
        path = self.address
        try:
            await self._listen(path)
        except OSError as exc:
            if self._server is not None:
                self._server.close()
                self._server = None
            raise explain_address_error(path, exc) from exc
        self.started = time.time()
        self.is_ready = self._ready_at_start
        log.debug("listening on %s", path)

    async def _listen(self, path: str) -> None:
        if os.path.dirname(path) == default_socket_dir():
            _ensure_private_dir(os.path.dirname(path))
        _remove_stale_socket(path)
        loop = asyncio.get_running_loop()
        # The socket file is created with the umask's bits; narrow them first so there is no
        # window in which it is wider than socket_mode.
        old_umask = os.umask(0o777 & ~self.socket_mode)
        try:
            self._server = await loop.create_unix_server(
                lambda: Session(self), path, backlog=LISTEN_BACKLOG
            )
        finally:
            os.umask(old_umask)
        os.chmod(path, self.socket_mode)
        self._inode = os.stat(path).st_ino

    async def shutdown(self) -> None:
        """Stop accepting, unload every filter (DisconnectNotify for each connection), close.

        Bounded in all by ``shutdown_grace`` plus ``SHUTDOWN_SLACK``, however many filters
        and callbacks hang: at the end of the grace every callback still running (a
        teardown, MessageNotify, DisconnectNotify, ConnectNotify, the ones that began before
        the shutdown included) is cancelled and named in the log, and its caller gets
        STATUS_PORT_DISCONNECTED (0x80070006); filters unloaded after that point get no wait.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self.is_ready = False
        server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_grace
        end = deadline + SHUTDOWN_SLACK
        self.manager.rundown.begin(deadline)
        # Newest first, as the modules were loaded: one's teardown may rely on an older one.
        # Every wait inside is bounded by the deadline; this bound only catches a callback
        # that ignores its cancellation.
        for flt in reversed(list(self.manager.filters.values())):
            try:
                async with asyncio.timeout_at(deadline + CANCEL_SLACK):
                    await flt.unload_requested()
            except TimeoutError:
                log.error("filter %r did not finish unloading; abandoned", flt.name)
        self.trace_hub.close_all("the daemon is shutting down")
        for session in list(self._sessions):
            session.close()
        await self._finish_tasks(deadline + CANCEL_SLACK, end)
        # Sessions close asynchronously; give their connection_lost a chance to run.
        while self._sessions and loop.time() < end:
            await asyncio.sleep(0.01)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), max(0.0, end - loop.time()))
        self._unlink_socket()
        log.debug("stopped")

    # --- what its sessions use (session.SessionHost) -------------------------------------------

    def read_buffer(self) -> memoryview:
        """The read buffer every session shares (see ``Session.get_buffer``)."""
        if self._read_view is None:  # allocated on first use
            self._read_view = memoryview(bytearray(READ_BUFFER_BYTES))
        return self._read_view

    def start_trace(
        self, transport: asyncio.BaseTransport, wire: WireConnection, request: Trace, note: str = ""
    ) -> None:
        """Hand a session's transport over to a trace subscriber."""
        TraceSubscriber(self.trace_hub, transport, wire, request).start(note)

    def next_session_id(self) -> int:
        """A number for a new session, for logs."""
        return next(self._session_ids)

    def session_opened(self, session: Session) -> None:
        """A session's connection was made: it counts until ``session_closed``."""
        self._sessions.add(session)

    def session_closed(self, session: Session) -> None:
        """A session's connection is gone (or was handed to a trace)."""
        self._sessions.discard(session)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task that shutdown waits for (within the grace), then cancels."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    # --- internals ---------------------------------------------------------------------------

    async def _finish_tasks(self, deadline: float, end: float) -> None:
        # Connects, teardowns and control commands still running: their callbacks are bounded
        # by the rundown, so they end by ``deadline``; one that does not is cancelled.
        loop = asyncio.get_running_loop()
        while self._tasks:
            tasks = list(self._tasks)
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            if pending:
                log.error(
                    "cancelling %d task(s) still running at shutdown: %s",
                    len(pending),
                    ", ".join(sorted(_task_name(task) for task in pending)),
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=max(0.0, end - loop.time()))
                self._tasks.difference_update(pending)
                return

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def _unlink_socket(self) -> None:
        # Remove the file only if it is still the one we created.
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.address).st_ino == self._inode:
                os.unlink(self.address)


def _task_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file that nothing listens on; refuse one that is alive."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise DaemonAddressError(
            errno.EISDIR,
            f"{path} is a folder: the address is the socket's own path, e.g. "
            f"{os.path.join(path, 'fltemu.sock')}",
        )
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonAddressError(
            errno.EEXIST, f"{path} exists and is not a socket: remove it, or {_OTHER_SOCKET}"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.debug("removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as exc:
        raise explain_address_error(path, exc) from exc
    finally:
        probe.close()
    raise DaemonAddressInUseError(
        errno.EADDRINUSE,
        f"a daemon is already listening on {path}: stop it (fltemu ports --address {path} "
        f"shows what it serves), or {_OTHER_SOCKET}",
    )
