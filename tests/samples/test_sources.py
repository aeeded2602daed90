"""The samples' sources and settings: parsing, the directory watcher, the runner's lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from pathlib import Path

import pytest

from fltemu.daemon import Daemon
from fltemu.samples import minispy
from fltemu.samples._inotify import (
    IN_Q_OVERFLOW,
    ActivityWatcher,
    FileActivity,
    FileActivityKind,
    RawEvent,
    parse_events,
)
from fltemu.samples._sources import (
    DirectoryWatcher,
    DirSource,
    FileEventKind,
    InjectSource,
    SampleSettings,
    SyntheticSource,
    parse_source,
)

from ..helpers import until


def test_parse_source() -> None:
    assert parse_source("inject") == InjectSource()
    assert parse_source(" Synthetic:12.5 ") == SyntheticSource(12.5)
    assert parse_source("synthetic") == SyntheticSource(1.0)
    assert parse_source("dir:/tmp/x") == DirSource("/tmp/x")
    assert parse_source("dir:rel") == DirSource(os.path.abspath("rel"))
    for bad in ("", "dir", "dir:", "inject:3", "synthetic:-1", "synthetic:nan", "synthetic:1e9"):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_settings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        settings = SampleSettings("s", {"n": "0x10", "t": "1.5", "typo": "x"}, ("n", "t", "w"))
    assert "typo" in caplog.text
    assert settings.integer("n", 0, minimum=0, maximum=100) == 16
    assert settings.number("t", 0.0, minimum=0.0, maximum=2.0) == 1.5
    assert settings.number("w", 3.0, minimum=0.0, maximum=2.0) == 3.0  # default, unchecked
    assert settings.seconds_or_forever("w", 5.0, maximum=10.0) == 5.0
    assert SampleSettings("s", {"w": "None"}, "w").seconds_or_forever("w", 5.0, maximum=1) is None
    with pytest.raises(ValueError):
        settings.integer("n", 0, minimum=0, maximum=15)
    with pytest.raises(ValueError):
        settings.integer("t", 0, minimum=0, maximum=15)
    with pytest.raises(ValueError):
        settings.number("typo", 0.0, minimum=0.0, maximum=1.0)


def test_watcher_reports_changes_after_its_baseline(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_bytes(b"old")
    (tmp_path / "skip.bin").write_bytes(b"skip")
    watcher = DirectoryWatcher(
        str(tmp_path), want=lambda p: p.endswith(".txt"), read_bytes=4, max_files=3
    )
    assert watcher.poll() == []  # baseline
    assert watcher.file_count == 1
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "new.txt").write_bytes(b"new content")
    (tmp_path / "old.txt").write_bytes(b"changed")
    os.symlink(tmp_path / "old.txt", tmp_path / "link.txt")  # not followed
    events = watcher.poll()
    assert [(e.kind, Path(e.path).name, e.content) for e in events] == [
        (FileEventKind.CHANGED, "old.txt", b"chan"),
        (FileEventKind.CREATED, "new.txt", b"new "),
    ]
    os.remove(tmp_path / "old.txt")
    events = watcher.poll()
    assert [(e.kind, Path(e.path).name, e.size, e.content) for e in events] == [
        (FileEventKind.DELETED, "old.txt", 7, None)
    ]
    assert watcher.poll() == []


def test_watcher_stops_at_max_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for n in range(5):
        (tmp_path / f"f{n}").write_bytes(b"")
    watcher = DirectoryWatcher(str(tmp_path), max_files=3)
    with caplog.at_level(logging.WARNING):
        watcher.poll()
        watcher.poll()
    assert watcher.file_count == 3
    assert caplog.text.count("more than 3 files") == 1


def test_watcher_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DirectoryWatcher(str(tmp_path / "missing"))


async def test_a_source_stops_when_its_filter_unloads_without_teardown(daemon: Daemon) -> None:
    flt = daemon.register_filter("minispy")
    flt.settings = {"source": "synthetic:1000"}
    await minispy.setup(flt)
    runner = minispy.state_of(flt).runner
    assert runner is not None and runner.is_running
    await flt.unload()
    await until(lambda: not runner.is_running)
    await minispy.teardown(flt)


async def test_activity_watcher_reads_batches_and_closes(tmp_path: Path) -> None:
    watcher = ActivityWatcher(str(tmp_path), want=lambda p: p.endswith(".doc"), read_bytes=4)
    watcher.open()
    fd = watcher.fd
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"

        async def next_activity() -> tuple[FileActivityKind, bytes | None]:
            batch: list[FileActivity] = []
            while not batch:
                batch = await watcher.next_batch()
            (activity,) = batch
            return activity.kind, activity.content

        with (tmp_path / "a.doc").open("wb") as f:
            (tmp_path / "a.txt").write_bytes(b"not wanted")
            assert await next_activity() == (FileActivityKind.OPENED, b"")
            f.write(b"abcdefgh")
            f.flush()
            # The bytes the write added, cut to read_bytes.
            assert await next_activity() == (FileActivityKind.WRITTEN, b"abcd")
            f.write(b"ijkl")
            f.flush()
            assert await next_activity() == (FileActivityKind.WRITTEN, b"ijkl")
        assert await next_activity() == (FileActivityKind.CLOSED_AFTER_WRITE, b"abcd")
        # A full kernel queue drops events: counted and logged, and nothing is reported.
        overflow = struct.pack("=iIII", -1, IN_Q_OVERFLOW, 0, 0)
        assert list(parse_events(overflow + b"\x01\x02")) == [RawEvent(-1, IN_Q_OVERFLOW, "")]
    finally:
        watcher.close()
    assert watcher.fd == -1 and watcher.directory_count == 0
    watcher.close()  # twice is harmless
    try:
        link: str | None = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        link = None
    assert link != "anon_inode:inotify"


async def test_activity_watcher_skips_what_is_no_regular_file(tmp_path: Path) -> None:
    # Opening a FIFO for reading waits for a writer: the watcher must not, or it would scan
    # nothing ever again.
    watcher = ActivityWatcher(str(tmp_path), want=lambda p: p.endswith(".doc"), read_bytes=4)
    watcher.open()
    try:
        fifo = tmp_path / "pipe.doc"
        os.mkfifo(fifo)
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # an open the watcher sees
        (tmp_path / "a.doc").write_bytes(b"data")

        async def activities() -> list[FileActivity]:
            seen: list[FileActivity] = []
            while not any(a.path.endswith("a.doc") for a in seen):
                seen += await watcher.next_batch()
            return seen

        seen = await asyncio.wait_for(activities(), timeout=30)  # bounds a hang, times nothing
        # Reported without content, which the scanner skips; the regular file's comes after.
        assert all(a.content is None for a in seen if a.path.endswith("pipe.doc"))
        assert seen[-1].content == b"data"
    finally:
        watcher.close()
