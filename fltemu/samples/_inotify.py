"""A directory tree's opens, writes and closes, as Linux's inotify reports them.

The scanner sample hooks a file's open (post-create), its writes (pre-write) and the close of a
handle opened for write (pre-cleanup). Polling sees none of those, inotify sees each after the
fact: ``IN_OPEN``, ``IN_MODIFY`` and ``IN_CLOSE_WRITE``. ``ActivityWatcher`` turns them into
``FileActivity`` records carrying the bytes the sample would scan: the file's first bytes for
an open and a close, the bytes the write added for a write. It reads the inotify descriptor on
the asyncio loop (``add_reader``), through ``ctypes`` (no dependency), one batch of at most
``READ_BYTES`` at a time: while the sample is busy nothing is read, the kernel's queue fills
and merges repeated events, and past its own limit it drops them (``IN_Q_OVERFLOW``, logged),
so memory stays bounded however fast files change.

Linux only: elsewhere, and where inotify is unavailable, ``ActivityWatcher`` raises
``ValueError`` saying so.
Not here: polling (``_sources.DirectoryWatcher``), what an activity means to a sample
(``scanner``).
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import errno
import logging
import os
import stat
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_TRACKED_SIZES",
    "MAX_WATCHED_DIRECTORIES",
    "READ_BYTES",
    "ActivityWatcher",
    "FileActivity",
    "FileActivityKind",
    "RawEvent",
    "parse_events",
]

log = logging.getLogger(__name__)

#: inotify(7) event bits.
IN_MODIFY: Final = 0x0000_0002
IN_CLOSE_WRITE: Final = 0x0000_0008
IN_CLOSE_NOWRITE: Final = 0x0000_0010
IN_OPEN: Final = 0x0000_0020
IN_MOVED_TO: Final = 0x0000_0080
IN_CREATE: Final = 0x0000_0100
IN_Q_OVERFLOW: Final = 0x0000_4000
IN_IGNORED: Final = 0x0000_8000
IN_ONLYDIR: Final = 0x0100_0000
IN_EXCL_UNLINK: Final = 0x0400_0000
IN_ISDIR: Final = 0x4000_0000
#: What is watched on every directory: the three file events, new subdirectories, and
#: IN_CLOSE_NOWRITE, which is ignored but keeps two opens of a file apart in the queue: the
#: kernel merges an event into an identical one just before it, so without it the watcher's
#: own open (of a read) and someone's next open would become one event.
_MASK: Final = (
    IN_OPEN
    | IN_MODIFY
    | IN_CLOSE_WRITE
    | IN_CLOSE_NOWRITE
    | IN_CREATE
    | IN_MOVED_TO
    | IN_ONLYDIR
    | IN_EXCL_UNLINK
)
#: struct inotify_event {int wd; uint32_t mask, cookie, len; char name[len];}.
_EVENT: Final = struct.Struct("=iIII")

#: Bytes read from the descriptor at once: a few hundred events. The kernel holds the rest.
READ_BYTES: Final = 64 * 1024
#: Files whose size is remembered (for the next write's new bytes), about 100 bytes each.
MAX_TRACKED_SIZES: Final = 100_000
#: Directories watched at most (each costs one of the user's inotify watches, 8192 by default
#: on many systems); past it new subdirectories are not watched (a warning says so once).
MAX_WATCHED_DIRECTORIES: Final = 4096


class FileActivityKind(enum.Enum):
    """What happened to a file, in the scanner's terms."""

    #: IN_OPEN: someone opened it (any access); the post-create scan.
    OPENED = "opened"
    #: IN_MODIFY: someone wrote to it (or truncated it); the pre-write scan.
    WRITTEN = "written"
    #: IN_CLOSE_WRITE: a handle opened for write was closed; the pre-cleanup rescan.
    CLOSED_AFTER_WRITE = "closed after write"


@dataclass(frozen=True, slots=True)
class FileActivity:
    """One open, write or close of a watched file, with the bytes a scanner would scan.

    Attributes:
        kind: open, write or close after write.
        path: the file's path.
        content: for an open or a close, the file's first bytes; for a write, the bytes the
            write(s) added at the end of the file, or the file's first bytes when the file did
            not grow (the offset of an overwrite is not reported). ``None`` when the file
            could not be read (gone already).
    """

    kind: FileActivityKind
    path: str
    content: bytes | None


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One ``struct inotify_event``."""

    wd: int
    mask: int
    name: str


def parse_events(data: bytes) -> Iterator[RawEvent]:
    """The events in one read of an inotify descriptor (a truncated tail is ignored).

    >>> raw = struct.pack("=iIII", 1, IN_OPEN, 0, 8) + b"a.doc\\0\\0\\0"
    >>> list(parse_events(raw))
    [RawEvent(wd=1, mask=32, name='a.doc')]
    """
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        start = offset + _EVENT.size
        raw_name = data[start : start + length].split(b"\0", 1)[0]
        offset = start + length
        yield RawEvent(wd, mask, os.fsdecode(raw_name))


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Libc:
    """The three inotify calls, through ctypes."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise ValueError(
                f"the scanner's dir: source watches opens, writes and closes with Linux's "
                f"inotify, which {sys.platform} does not have"
            )
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self.init1 = libc.inotify_init1
            self.add_watch = libc.inotify_add_watch
        except (OSError, AttributeError) as exc:
            raise ValueError(f"inotify is not available here: {exc}") from None
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int


class ActivityWatcher:
    """Watches a directory tree with inotify and reports opens, writes and closes.

    Create it anywhere (it checks that inotify exists and ``root`` is a directory), ``open``
    it on the loop, then ``await next_batch()`` repeatedly; ``close`` (idempotent) releases the
    descriptor and with it every watch.

    The watcher reads files to fill ``content``, and its own opens are reported by inotify
    too: it counts them per path and drops as many IN_OPEN events of that path, so scanning
    a file never causes another scan. (An outside open of the same file at that very moment
    is indistinguishable; one of the two is dropped.)

    Args:
        root: the directory; it must exist.
        want: which file paths to report (``None``: all).
        read_bytes: how many bytes ``content`` holds at most.

    Raises:
        ValueError: not Linux, no inotify, or ``root`` is not a directory.
    """

    def __init__(
        self, root: str, *, want: Callable[[str], bool] | None = None, read_bytes: int = 1024
    ) -> None:
        self._libc = _Libc()
        if not os.path.isdir(root):
            raise ValueError(f"source dir:{root}: not a directory")
        self.root = root
        self.want = want
        self.read_bytes = read_bytes
        self.fd = -1
        #: Events seen, and overflows of the kernel's queue.
        self.events = 0
        self.overflows = 0
        self._dirs: dict[int, str] = {}
        self._own_opens: dict[str, int] = {}
        # The size each file had when last scanned: a write's new bytes start there. Bounded:
        # the oldest entry goes first (a write to a forgotten file sends its first bytes).
        self._sizes: dict[str, int] = {}
        self._warned_full = False

    def __repr__(self) -> str:
        state = "open" if self.fd >= 0 else "closed"
        return f"<ActivityWatcher {self.root!r} {state} directories={len(self._dirs)}>"

    @property
    def directory_count(self) -> int:
        """Directories watched."""
        return len(self._dirs)

    def open(self) -> None:
        """Create the inotify descriptor and watch ``root`` and its subdirectories.

        Raises:
            OSError: inotify_init1 failed (e.g. the user's instance limit).
        """
        if self.fd >= 0:
            return
        fd = self._libc.init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd = fd
        try:
            self._watch_tree(self.root)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the descriptor (the kernel drops every watch with it)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        self._dirs.clear()
        self._own_opens.clear()
        self._sizes.clear()

    async def next_batch(self) -> list[FileActivity]:
        """Wait for events and return the activities of one read (possibly none)."""
        raw = await self._read()
        activities: list[FileActivity] = []
        for event in parse_events(raw):
            self.events += 1
            activity = await self._observe(event)
            if activity is not None:
                activities.append(activity)
        return activities

    # --- internals ---------------------------------------------------------------------------

    async def _read(self) -> bytes:
        fd = self.fd
        if fd < 0:
            raise RuntimeError("ActivityWatcher is not open")
        while True:
            try:
                return os.read(fd, READ_BYTES)
            except BlockingIOError:
                pass
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _set_once, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)

    async def _observe(self, event: RawEvent) -> FileActivity | None:
        mask = event.mask
        if mask & IN_Q_OVERFLOW:
            self.overflows += 1
            # Lost events: own opens may never be seen, sizes may be stale.
            self._own_opens.clear()
            self._sizes.clear()
            log.warning("source dir:%s: the kernel dropped events (IN_Q_OVERFLOW)", self.root)
            return None
        if mask & IN_IGNORED:
            self._dirs.pop(event.wd, None)
            return None
        directory = self._dirs.get(event.wd)
        if directory is None or not event.name:
            return None
        path = os.path.join(directory, event.name)
        if mask & IN_ISDIR:
            if mask & (IN_CREATE | IN_MOVED_TO):
                self._watch_tree(path)  # a new directory: usually empty, cheap to list
            return None
        if self.want is not None and not self.want(path):
            return None
        if mask & IN_OPEN:
            own = self._own_opens.get(path, 0)
            if own:
                if own == 1:
                    del self._own_opens[path]
                else:
                    self._own_opens[path] = own - 1
                return None
            return await self._activity(FileActivityKind.OPENED, path)
        if mask & IN_MODIFY:
            return await self._activity(FileActivityKind.WRITTEN, path)
        if mask & IN_CLOSE_WRITE:
            return await self._activity(FileActivityKind.CLOSED_AFTER_WRITE, path)
        return None  # IN_CREATE / IN_MOVED_TO of a file: no open, nothing to scan

    async def _activity(self, kind: FileActivityKind, path: str) -> FileActivity:
        since = self._sizes.get(path) if kind is FileActivityKind.WRITTEN else None
        self._own_opens[path] = self._own_opens.get(path, 0) + 1
        content, size = await asyncio.to_thread(self._read_file, path, since)
        if size is None:  # not opened: no IN_OPEN of ours will come
            own = self._own_opens.get(path, 0) - 1
            if own > 0:
                self._own_opens[path] = own
            else:
                self._own_opens.pop(path, None)
        else:
            self._sizes.pop(path, None)
            if len(self._sizes) >= MAX_TRACKED_SIZES:
                del self._sizes[next(iter(self._sizes))]
            self._sizes[path] = size
        return FileActivity(kind, path, content)

    def _read_file(self, path: str, since: int | None) -> tuple[bytes | None, int | None]:
        """The bytes to scan and the file's size; (None, None) when it cannot be opened or is
        no regular file (a FIFO or a device would block the read, or never end)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None, None
        size: int | None = None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None, None
            size = info.st_size
            if since is not None and size > since:
                os.lseek(fd, since, os.SEEK_SET)  # the bytes the write(s) added
            return os.read(fd, self.read_bytes), size
        except OSError:
            return None, size
        finally:
            os.close(fd)

    def _watch_tree(self, top: str) -> None:
        stack = [top]
        while stack:
            directory = stack.pop()
            if not self._watch(directory):
                return
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        try:
                            if stat.S_ISDIR(entry.stat(follow_symlinks=False).st_mode):
                                stack.append(entry.path)
                        except OSError:
                            continue
            except OSError:
                continue

    def _watch(self, directory: str) -> bool:
        if len(self._dirs) >= MAX_WATCHED_DIRECTORIES:
            if not self._warned_full:
                self._warned_full = True
                log.warning(
                    "source dir:%s: more than %d directories; the rest are not watched",
                    self.root,
                    MAX_WATCHED_DIRECTORIES,
                )
            return False
        wd = self._libc.add_watch(self.fd, os.fsencode(directory), _MASK)
        if wd < 0:
            code = ctypes.get_errno()
            if directory == self.root or code not in (errno.ENOENT, errno.ENOTDIR):
                log.warning(
                    "source dir:%s: cannot watch %s: %s", self.root, directory, os.strerror(code)
                )
            if directory == self.root:
                raise OSError(code, f"inotify_add_watch {directory}: {os.strerror(code)}")
            return True
        self._dirs[wd] = directory
        return True
