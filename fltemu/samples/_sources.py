"""Where the built-in samples' kernel events come from, and the samples' settings.

A sample's ``source`` setting picks one of three sources:

* ``dir:PATH`` — a real directory. A sample that gives ``from_activity`` (the scanner) gets
  its files' opens, writes and closes from Linux's inotify (``_inotify``). Otherwise it is
  polled with ``os.scandir`` every ``interval`` seconds
  (recursively; symbolic links are not followed). Files that appear are *created*, files whose
  inode, size or modification time changed are *changed*, files that vanish are *deleted*.
  The first poll, made before ``setup`` returns, is the baseline: files already there are
  not reported. Polling (and reading the first bytes of a file) runs in a worker thread so
  that a large tree does not stall the daemon.
* ``synthetic:RATE`` — a generator making RATE events per second (``synthetic`` alone is one
  per second) from a ``random.Random`` seeded with the ``seed`` setting, so a run repeats.
* ``inject`` — nothing: events come from outside (``fltemu send``, or the sample state's own
  methods, which tests call).

``SourceRunner`` runs the chosen source as tasks that a sample creates in ``setup`` and
cancels in ``teardown``; at most ``MAX_INFLIGHT`` events are handled at once, and a source
that gets ahead of its handlers waits (a directory's changes merge into the next poll,
ticks are not made up), so memory stays bounded.
Not here: what an event means to a sample (``scanner``, ``minispy``, ``avscan``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import random
import stat
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeAlias, TypeVar

from ..kernel import Filter
from ._inotify import ActivityWatcher, FileActivity

__all__ = [
    "sample_state",
    "DEFAULT_INTERVAL",
    "MAX_INFLIGHT",
    "MAX_SYNTHETIC_RATE",
    "MAX_WATCHED_FILES",
    "DirSource",
    "DirectoryWatcher",
    "FileEvent",
    "FileEventKind",
    "InjectSource",
    "SampleSettings",
    "SourceRunner",
    "SourceSpec",
    "SyntheticSource",
    "parse_source",
]

log = logging.getLogger(__name__)

#: Seconds between two polls of a ``dir:`` source: fast enough to feel live, cheap enough
#: for a tree of a few thousand files.
DEFAULT_INTERVAL: Final = 0.2
#: Shortest and longest polling interval accepted.
MIN_INTERVAL: Final = 0.005
MAX_INTERVAL: Final = 3600.0
#: The fastest ``synthetic:`` rate, events per second: beyond it the daemon does nothing else.
MAX_SYNTHETIC_RATE: Final = 10_000.0
#: Files a ``dir:`` source tracks at most. Its snapshot costs about 200 bytes a file; past
#: the limit the rest of the tree is not watched (a warning says so once).
MAX_WATCHED_FILES: Final = 100_000
#: Events handled at once. A sample waiting for replies (the scanner waits forever, as the
#: real one does) holds one slot per pending message; a real system has one blocked I/O
#: thread per pending scan, and the Microsoft user programs answer 6 to 10 at a time.
MAX_INFLIGHT: Final = 32


class FileEventKind(enum.Enum):
    """What a poll of a directory saw happen to a file."""

    CREATED = "created"
    CHANGED = "changed"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class FileEvent:
    """One change a ``dir:`` source observed.

    Attributes:
        kind: created, changed or deleted.
        path: the file's absolute path.
        size: its size in bytes (the last size seen, for a deleted file).
        inode: its inode number (stands in for a FILE_OBJECT / file id).
        content: its first bytes, as many as the source was asked to read; ``None`` when it
            could not be read (or for a deleted file).
    """

    kind: FileEventKind
    path: str
    size: int
    inode: int
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class DirSource:
    """``dir:PATH``: poll a real directory."""

    path: str


@dataclass(frozen=True, slots=True)
class SyntheticSource:
    """``synthetic:RATE``: a seeded generator, RATE events per second."""

    rate: float


@dataclass(frozen=True, slots=True)
class InjectSource:
    """``inject``: the sample makes no events of its own."""


SourceSpec: TypeAlias = DirSource | SyntheticSource | InjectSource


def parse_source(value: str) -> SourceSpec:
    """Parse a ``source`` setting.

    >>> parse_source("synthetic:2.5")
    SyntheticSource(rate=2.5)
    >>> parse_source("inject")
    InjectSource()

    Raises:
        ValueError: not one of ``dir:PATH``, ``synthetic[:RATE]``, ``inject``, or a rate out
            of range.
    """
    kind, sep, arg = value.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "inject" and not arg:
        return InjectSource()
    if kind == "dir" and sep:
        if not arg:
            raise ValueError("source dir:PATH needs a path")
        return DirSource(os.path.abspath(os.path.expanduser(arg)))
    if kind == "synthetic":
        try:
            rate = float(arg) if sep else 1.0
        except ValueError:
            raise ValueError(f"source synthetic:RATE needs a number, not {arg!r}") from None
        if not (math.isfinite(rate) and 0 < rate <= MAX_SYNTHETIC_RATE):
            raise ValueError(
                f"source synthetic:RATE: RATE is events per second, > 0 and <= "
                f"{MAX_SYNTHETIC_RATE:g}, not {arg}"
            )
        return SyntheticSource(rate)
    raise ValueError(f"source is dir:PATH, synthetic:RATE or inject, not {value!r}")


class SampleSettings:
    """A sample's ``flt.settings`` (``fltemu serve --set NAME.KEY=VALUE``), read with checks.

    Unknown keys are logged (a typo should not pass silently) and otherwise ignored.

    Args:
        sample: the sample's name, for messages.
        raw: the settings as given.
        known: the keys the sample reads.
    """

    def __init__(self, sample: str, raw: Mapping[str, str], known: Collection[str]) -> None:
        self.sample = sample
        self.raw = dict(raw)
        for key in sorted(set(self.raw) - set(known)):
            log.warning(
                "%s: unknown setting %r ignored (known: %s)", sample, key, ", ".join(sorted(known))
            )

    def text(self, key: str, default: str) -> str:
        """The setting as a string, or ``default``."""
        return self.raw.get(key, default)

    def number(self, key: str, default: float, *, minimum: float, maximum: float) -> float:
        """A number of seconds, records, ...; ``default`` when absent.

        Raises:
            ValueError: not a number, or outside ``[minimum, maximum]``.
        """
        if key not in self.raw:
            return default
        text = self.raw[key]
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{self.sample}.{key} must be a number, not {text!r}") from None
        if not (math.isfinite(value) and minimum <= value <= maximum):
            raise ValueError(
                f"{self.sample}.{key} must be between {minimum:g} and {maximum:g}, not {text}"
            )
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        """An integer setting; ``default`` when absent.

        Raises:
            ValueError: not an integer, or outside ``[minimum, maximum]``.
        """
        if key not in self.raw:
            return default
        text = self.raw[key]
        try:
            value = int(text, 0)
        except ValueError:
            raise ValueError(f"{self.sample}.{key} must be an integer, not {text!r}") from None
        if not minimum <= value <= maximum:
            raise ValueError(
                f"{self.sample}.{key} must be between {minimum} and {maximum}, not {text}"
            )
        return value

    def seconds_or_forever(
        self, key: str, default: float | None, *, maximum: float
    ) -> float | None:
        """Seconds, or ``None`` for "wait forever" (spelled ``none``, ``forever`` or ``inf``).

        Raises:
            ValueError: neither a number in ``[0, maximum]`` nor a spelling of forever.
        """
        if key not in self.raw:
            return default
        if self.raw[key].strip().lower() in ("none", "forever", "inf", "infinite"):
            return None
        return self.number(key, 0.0, minimum=0.0, maximum=maximum)


@dataclass(slots=True)
class _Seen:
    inode: int
    size: int
    mtime_ns: int


class DirectoryWatcher:
    """Polls a directory tree and reports what changed since the previous poll.

    Not thread-safe: one poll at a time (``SourceRunner`` runs them one after another).

    Args:
        root: the directory; it must exist.
        want: which file paths to track (``None``: all).
        read_bytes: how many leading bytes of a created or changed file to read (0: none).
        max_files: the most files tracked.

    Raises:
        ValueError: ``root`` is not a directory.
    """

    def __init__(
        self,
        root: str,
        *,
        want: Callable[[str], bool] | None = None,
        read_bytes: int = 0,
        max_files: int = MAX_WATCHED_FILES,
    ) -> None:
        if not os.path.isdir(root):
            raise ValueError(f"source dir:{root}: not a directory")
        self.root = root
        self.want = want
        self.read_bytes = read_bytes
        self.max_files = max_files
        self.polls = 0
        self._snapshot: dict[str, _Seen] = {}
        self._warned_full = False

    def __repr__(self) -> str:
        return f"<DirectoryWatcher {self.root!r} files={len(self._snapshot)} polls={self.polls}>"

    @property
    def file_count(self) -> int:
        """Files tracked after the last poll."""
        return len(self._snapshot)

    def poll(self) -> list[FileEvent]:
        """Walk the tree; the changes since the last poll (none on the first, the baseline)."""
        current = self._walk()
        old = self._snapshot
        self._snapshot = current
        self.polls += 1
        if self.polls == 1:
            return []
        events: list[FileEvent] = []
        for path in sorted(current):
            seen = current[path]
            before = old.get(path)
            if before is None:
                kind = FileEventKind.CREATED
            elif before != seen:
                kind = FileEventKind.CHANGED
            else:
                continue
            events.append(FileEvent(kind, path, seen.size, seen.inode, self._read(path)))
        for path in sorted(old.keys() - current.keys()):
            gone = old[path]
            events.append(FileEvent(FileEventKind.DELETED, path, gone.size, gone.inode))
        return events

    def _walk(self) -> dict[str, _Seen]:
        found: dict[str, _Seen] = {}
        stack = [self.root]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue  # vanished or unreadable between listing and stat
                        if stat.S_ISDIR(st.st_mode):
                            stack.append(entry.path)
                        elif stat.S_ISREG(st.st_mode):
                            if self.want is not None and not self.want(entry.path):
                                continue
                            if len(found) >= self.max_files:
                                self._warn_full()
                                return found
                            found[entry.path] = _Seen(st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                continue  # a directory that vanished or cannot be listed
        return found

    def _warn_full(self) -> None:
        if not self._warned_full:
            self._warned_full = True
            log.warning(
                "source dir:%s: more than %d files; the rest of the tree is not watched",
                self.root,
                self.max_files,
            )

    def _read(self, path: str) -> bytes | None:
        if self.read_bytes <= 0:
            return b""
        try:
            with open(path, "rb") as f:
                return f.read(self.read_bytes)
        except OSError:
            return None


T = TypeVar("T")


class SourceRunner(Generic[T]):
    """Runs a sample's source: turns file changes or ticks into events and handles them.

    Args:
        sample: the sample's name, for logs.
        spec: the parsed ``source`` setting.
        handle: what the sample does with an event; it runs in a task of its own (at most
            ``max_inflight`` at once) when ``concurrent``, else inline.
        from_file: turns a ``dir:`` observation into an event, or ``None`` to ignore it.
        synthesize: makes the n-th synthetic event (n from 1) with the seeded generator;
            called in order, so a seed gives the same sequence every run.
        interval: seconds between polls of a ``dir:`` source.
        seed: the ``synthetic:`` generator's seed.
        want: which paths a ``dir:`` source tracks (``None``: every regular file).
        read_bytes: how many leading bytes of a file the events carry.
        concurrent: whether events are handled concurrently.
        max_inflight: the most events handled at once.
        alive: whether the filter still runs; the source stops by itself once it returns
            false (a filter unloaded without its teardown must not go on producing).
        from_activity: when given, a ``dir:`` source is not polled but watched with inotify
            (``_inotify``, Linux only) and this turns each open, write or close after write
            into an event; ``from_file`` is then unused.

    Raises:
        ValueError: a ``dir:`` path that is not a directory; ``from_activity`` given where
            inotify is not available (not Linux).
    """

    def __init__(
        self,
        sample: str,
        spec: SourceSpec,
        *,
        handle: Callable[[T], Awaitable[None]],
        from_file: Callable[[FileEvent], T | None],
        synthesize: Callable[[random.Random, int], T],
        interval: float = DEFAULT_INTERVAL,
        seed: int = 0,
        want: Callable[[str], bool] | None = None,
        read_bytes: int = 0,
        concurrent: bool = True,
        max_inflight: int = MAX_INFLIGHT,
        alive: Callable[[], bool] | None = None,
        from_activity: Callable[[FileActivity], T | None] | None = None,
    ) -> None:
        self.sample = sample
        self.spec = spec
        self.interval = interval
        self.seed = seed
        self.concurrent = concurrent
        #: Events handed to ``handle`` so far, and how many of those raised.
        self.events = 0
        self.errors = 0
        self._handle = handle
        self._from_file = from_file
        self._synthesize = synthesize
        self._alive = alive
        self._from_activity = from_activity
        self._watcher: DirectoryWatcher | None = None
        self._activity_watcher: ActivityWatcher | None = None
        if isinstance(spec, DirSource) and from_activity is not None:
            self._activity_watcher = ActivityWatcher(spec.path, want=want, read_bytes=read_bytes)
        elif isinstance(spec, DirSource):
            self._watcher = DirectoryWatcher(spec.path, want=want, read_bytes=read_bytes)
        self._slots = asyncio.Semaphore(max_inflight)
        self._producer: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return (
            f"<SourceRunner {self.sample} {self.spec} {state} events={self.events} "
            f"inflight={len(self._inflight)}>"
        )

    @property
    def is_running(self) -> bool:
        """True while the source makes events."""
        return self._producer is not None and not self._producer.done()

    @property
    def inflight(self) -> int:
        """Events being handled now."""
        return len(self._inflight)

    @property
    def watcher(self) -> DirectoryWatcher | None:
        """The polled ``dir:`` source's watcher, if that is the source."""
        return self._watcher

    @property
    def activity_watcher(self) -> ActivityWatcher | None:
        """The inotify ``dir:`` source's watcher, if that is the source."""
        return self._activity_watcher

    async def start(self) -> None:
        """Start the source; a ``dir:`` source takes its baseline before this returns."""
        if self._producer is not None:
            return
        loop = asyncio.get_running_loop()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.poll)
            self._producer = loop.create_task(self._poll_forever(self._watcher))
        elif self._activity_watcher is not None:
            self._activity_watcher.open()  # watching from now on, before setup returns
            self._producer = loop.create_task(self._watch_forever(self._activity_watcher))
        elif isinstance(self.spec, SyntheticSource):
            self._producer = loop.create_task(self._tick_forever(self.spec.rate))
        log.debug("%s: source %s", self.sample, _describe(self.spec))

    async def stop_producing(self) -> None:
        """Stop making events; those being handled go on."""
        task, self._producer = self._producer, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._activity_watcher is not None:
            self._activity_watcher.close()

    async def stop(self) -> None:
        """Stop making events and cancel those being handled; returns when all have ended."""
        await self.stop_producing()
        while self._inflight:
            tasks = list(self._inflight)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- internals ---------------------------------------------------------------------------

    async def _poll_forever(self, watcher: DirectoryWatcher) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._stopped_by_unload():
                return
            try:
                observed = await asyncio.to_thread(watcher.poll)
            except Exception:
                log.exception("%s: polling %s failed", self.sample, watcher.root)
                continue
            for change in observed:
                event = self._from_file(change)
                if event is not None:
                    await self._dispatch(event)

    async def _watch_forever(self, watcher: ActivityWatcher) -> None:
        assert self._from_activity is not None
        try:
            while True:
                try:
                    activities = await watcher.next_batch()
                except OSError:
                    log.exception(
                        "%s: reading inotify events of %s failed", self.sample, watcher.root
                    )
                    return
                if self._stopped_by_unload():
                    return
                for activity in activities:
                    event = self._from_activity(activity)
                    if event is not None:
                        await self._dispatch(event)
        finally:
            watcher.close()

    async def _tick_forever(self, rate: float) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(self.seed)
        period = 1.0 / rate
        due = loop.time()
        n = 0
        while True:
            due += period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                due = loop.time()  # behind (handlers are slow): no burst to catch up
            if self._stopped_by_unload():
                return
            n += 1
            await self._dispatch(self._synthesize(rng, n))

    def _stopped_by_unload(self) -> bool:
        if self._alive is None or self._alive():
            return False
        log.debug("%s: the filter is gone; its source stops", self.sample)
        return True

    async def _dispatch(self, event: T) -> None:
        self.events += 1
        if not self.concurrent:
            await self._run(event)
            return
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._run(event))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _run(self, event: T) -> None:
        try:
            await self._handle(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.errors += 1
            log.exception("%s: handling %r failed", self.sample, event)


def _describe(spec: SourceSpec) -> str:
    if isinstance(spec, DirSource):
        return f"dir:{spec.path}"
    if isinstance(spec, SyntheticSource):
        return f"synthetic:{spec.rate:g}"
    return "inject (events come from outside)"


_State = TypeVar("_State")


def sample_state(flt: Filter, cls: type[_State], sample: str) -> _State:
    """The state a sample keeps in ``flt.context``.

    Raises:
        LookupError: ``flt`` is not running that sample.
    """
    state = flt.context
    if not isinstance(state, cls):
        raise LookupError(f"{flt!r} is not running the {sample} sample")
    return state
