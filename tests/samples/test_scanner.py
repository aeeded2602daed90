"""The scanner sample: \\ScannerPort's protocol, reply handling, sources and teardown."""

from __future__ import annotations

import asyncio
import random
import struct
import sys
from pathlib import Path

import pytest

import fltuser
from fltemu import NtStatus
from fltemu.daemon import Daemon
from fltemu.daemon.loader import BUILTIN_FILTERS, load_filter, unload_filters
from fltemu.samples import scanner
from fltemu.samples.scanner import ScanOperation

from ..helpers import until
from . import running

PORT = scanner.PORT_NAME
#: FILTER_MESSAGE_HEADER + SCANNER_NOTIFICATION: the 1048 bytes scanUser.c asks for.
MESSAGE_BYTES = 16 + 1032


def notification(message: fltuser.Message) -> tuple[int, bytes]:
    bytes_to_scan, reserved, contents = scanner.SCANNER_NOTIFICATION.unpack(message.data)
    assert reserved == 0
    return bytes_to_scan, contents[:bytes_to_scan]


def test_layouts() -> None:
    assert scanner.SCANNER_NOTIFICATION.size == 1032
    assert scanner.SCANNER_REPLY.size == 1
    assert PORT == "\\ScannerPort"
    assert scanner.MAX_CONNECTIONS == 1
    assert BUILTIN_FILTERS["scanner"] == "fltemu.samples.scanner"


async def test_port_refuses_sends_and_a_second_connection(daemon: Daemon) -> None:
    async with running(daemon, scanner) as flt:
        state = scanner.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.client_port is not None)
            assert state.user_process is not None
            # No MessageNotify: FilterSendMessage fails with STATUS_INVALID_DEVICE_REQUEST.
            with pytest.raises(fltuser.HResultError) as info:
                await port.send(b"hello", 4)
            assert info.value.hresult == 0x80070001
            # MaxConnections 1.
            with pytest.raises(fltuser.HResultError) as info:
                await fltuser.aconnect(PORT, address=daemon.address)
            assert info.value.hresult == 0x800704D6
        # DisconnectNotify closed the client port and freed the slot: a reconnect works.
        await until(lambda: state.client_port is None)
        async with await fltuser.aconnect(PORT, address=daemon.address):
            await until(lambda: state.client_port is not None)


async def test_safe_and_unsafe_replies(daemon: Daemon) -> None:
    async with running(daemon, scanner) as flt:
        state = scanner.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.client_port is not None)
            for content, safe_byte in ((b"a foul word", b"\x00"), (b"clean text", b"\x01")):
                scan = asyncio.create_task(state.scan("x.doc", content))
                message = await port.get_message(MESSAGE_BYTES)
                assert len(message.data) == 1032
                assert message.reply_length == 17  # sizeof(SCANNER_REPLY) + 16
                assert message.message_id >= 1
                assert notification(message) == (len(content), content)
                await port.reply(message.message_id, safe_byte)  # a 17-byte reply
                verdict = await scan
                assert verdict.sent and verdict.status == NtStatus.STATUS_SUCCESS
                assert verdict.safe is (safe_byte == b"\x01")
                assert verdict.would_block is (safe_byte == b"\x00")
            assert [v.safe for v in state.verdicts] == [False, True]
            assert (state.scanned, state.unsafe) == (2, 1)


async def test_cleanup_rescan_only_reports(daemon: Daemon) -> None:
    async with running(daemon, scanner) as flt:
        state = scanner.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.client_port is not None)
            scan = asyncio.create_task(state.scan("x.doc", b"foul", ScanOperation.CLEANUP))
            message = await port.get_message(MESSAGE_BYTES)
            await port.reply(message.message_id, b"\x00")
            verdict = await scan
            assert not verdict.safe and not verdict.would_block


async def test_reply_longer_than_one_byte_overflows_and_the_file_is_allowed(
    daemon: Daemon,
) -> None:
    async with running(daemon, scanner) as flt:
        state = scanner.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.client_port is not None)
            scan = asyncio.create_task(state.scan("x.doc", b"foul"))
            message = await port.get_message(MESSAGE_BYTES)
            # A 24-byte SCANNER_REPLY_MESSAGE without #pragma pack(1): 8 payload bytes.
            with pytest.raises(fltuser.HResultError) as info:
                await port.reply(message.message_id, b"\x00" * 8)
            assert info.value.hresult == 0x800700EA  # ERROR_MORE_DATA
            verdict = await scan
            # Only STATUS_SUCCESS counts: SafeToOpen is not read, the file is allowed.
            assert verdict.status == NtStatus.STATUS_BUFFER_OVERFLOW
            assert verdict.safe and not verdict.would_block
            assert state.send_failures == 1


async def test_reply_status_other_than_success_allows_the_file(daemon: Daemon) -> None:
    async with running(daemon, scanner) as flt:
        state = scanner.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.client_port is not None)
            scan = asyncio.create_task(state.scan("x.doc", b"foul"))
            message = await port.get_message(MESSAGE_BYTES)
            await port.reply(message.message_id, b"\x00", status=NtStatus.STATUS_ACCESS_DENIED)
            verdict = await scan
            assert verdict.status == NtStatus.STATUS_ACCESS_DENIED
            assert verdict.safe


@pytest.mark.parametrize(("size", "safe"), [(1024, False), (5, True)])
async def test_empty_reply_leaves_bytes_to_scan_in_the_reply_buffer(
    daemon: Daemon, size: int, safe: bool
) -> None:
    # The reply buffer is the notification buffer: a reply with no payload leaves SafeToOpen
    # = the low byte of BytesToScan (1024 -> 0 -> unsafe; 5 -> safe).
    async with running(daemon, scanner) as flt:
        state = scanner.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.client_port is not None)
            scan = asyncio.create_task(state.scan("x.doc", b"z" * size))
            message = await port.get_message(MESSAGE_BYTES)
            await port.reply(message.message_id, b"")
            verdict = await scan
            assert verdict.status == NtStatus.STATUS_SUCCESS
            assert verdict.safe is safe


async def test_nothing_is_sent_without_a_client_or_content(daemon: Daemon) -> None:
    async with running(daemon, scanner) as flt:
        state = scanner.state_of(flt)
        verdict = await state.scan("x.doc", b"foul")
        assert not verdict.sent and verdict.safe and verdict.status is None
        async with await fltuser.aconnect(PORT, address=daemon.address):
            await until(lambda: state.client_port is not None)
            verdict = await state.scan("empty.doc", b"")
            assert not verdict.sent and verdict.safe
        assert state.not_sent == 2 and state.scanned == 0


async def test_content_is_cut_to_1024_bytes(daemon: Daemon) -> None:
    async with running(daemon, scanner) as flt:
        state = scanner.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.client_port is not None)
            content = bytes(range(256)) * 8
            scan = asyncio.create_task(state.scan("big.doc", content))
            message = await port.get_message(MESSAGE_BYTES)
            assert notification(message) == (1024, content[:1024])
            await port.reply(message.message_id, b"\x01")
            assert (await scan).bytes_to_scan == 1024


async def test_dir_source_scans_opens_writes_and_cleanups_as_scanner_c(
    daemon: Daemon, tmp_path: Path
) -> None:
    # ScannerPostCreate scans every open, ScannerPreWrite the written bytes, ScannerPreCleanup
    # rescans a file opened for write; inotify's IN_OPEN, IN_MODIFY and IN_CLOSE_WRITE.
    watched = tmp_path / "watched"
    watched.mkdir()
    before = watched / "before.doc"
    before.write_bytes(b"there before setup, foul")
    sentinel = watched / "sentinel.doc"
    sentinel.write_bytes(b"the last one")
    settings = {"source": f"dir:{watched}", "extensions": "doc, .TXT"}
    async with running(daemon, scanner, **settings) as flt:
        state = scanner.state_of(flt)
        watcher = state.runner.activity_watcher if state.runner else None
        assert watcher is not None and watcher.directory_count == 1
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.client_port is not None)

            async def answer() -> bytes:
                message = await port.get_message(MESSAGE_BYTES, timeout=5)
                _, content = notification(message)
                await port.reply(message.message_id, bytes([scanner.FOUL_STRING not in content]))
                return content

            (watched / "skipped.bin").write_bytes(b"foul, but not a scanned extension")
            sub = watched / "sub"
            sub.mkdir()
            await until(lambda: watcher.directory_count == 2)  # a new directory is watched
            target = sub / "letter.TXT"
            with target.open("wb") as f:
                await until(lambda: len(state.verdicts) == 1)  # the open: empty, not sent
                f.write(b"some foul language")
                f.flush()
                assert await answer() == b"some foul language"
                f.write(b", then clean text")
                f.flush()
                assert await answer() == b", then clean text"  # the write's bytes only
            # The close of a handle opened for write: the rescan, from the file's start.
            assert await answer() == b"some foul language, then clean text"
            # An open for reading: the post-create scan, and no rescan.
            assert before.read_bytes()
            assert await answer() == b"there before setup, foul"
            # The scanner's own reads caused nothing: the next message is the next open's.
            assert sentinel.read_bytes()
            assert await answer() == b"the last one"
            await until(lambda: len(state.verdicts) == 6)
    verdicts = [(v.name, v.operation, v.sent, v.safe, v.would_block) for v in state.verdicts]
    open_, write, cleanup = ScanOperation.OPEN, ScanOperation.WRITE, ScanOperation.CLEANUP
    assert verdicts == [
        (str(target), open_, False, True, False),
        (str(target), write, True, False, True),
        (str(target), write, True, True, False),
        (str(target), cleanup, True, False, False),  # unsafe, but a cleanup only reports
        (str(before), open_, True, False, True),
        (str(sentinel), open_, True, True, False),
    ]
    assert watcher.fd == -1  # teardown closed the inotify descriptor


async def test_dir_source_needs_inotify(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    flt = daemon.register_filter("scanner")
    flt.settings = {"source": f"dir:{tmp_path}"}
    with pytest.raises(ValueError, match="inotify"):
        await scanner.setup(flt)
    assert not flt.server_ports
    await flt.unload()


async def test_synthetic_source_sends_seeded_content(daemon: Daemon) -> None:
    settings = {"source": "synthetic:500", "seed": "7"}
    async with running(daemon, scanner, **settings) as flt:
        state = scanner.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.client_port is not None)
            seen = []
            for _ in range(12):
                message = await port.get_message(MESSAGE_BYTES)
                _, content = notification(message)
                seen.append(content)
                await port.reply(message.message_id, bytes([scanner.FOUL_STRING not in content]))
            await until(lambda: len([v for v in state.verdicts if v.sent]) >= 12)
    assert any(scanner.FOUL_STRING in c for c in seen)
    assert any(scanner.FOUL_STRING not in c for c in seen)
    assert all(v.name.endswith(".doc") for v in state.verdicts)
    assert any(not v.safe for v in state.verdicts if v.sent)
    # The same seed makes the same files.
    first = scanner.ScannerState(flt, frozenset({"DOC"}), 10)
    again = scanner.ScannerState(flt, frozenset({"DOC"}), 10)
    rng1, rng2 = random.Random(7), random.Random(7)
    assert [first.synthesize(rng1, n) for n in range(1, 6)] == [
        again.synthesize(rng2, n) for n in range(1, 6)
    ]


async def test_inject_source_sends_nothing_by_itself(daemon: Daemon) -> None:
    async with running(daemon, scanner) as flt:
        state = scanner.state_of(flt)
        assert state.runner is not None and not state.runner.is_running
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            with pytest.raises(TimeoutError):
                await port.get_message(MESSAGE_BYTES, timeout=0.1)
        assert not state.verdicts


async def test_teardown_cancels_a_scan_waiting_forever(daemon: Daemon) -> None:
    flt = daemon.register_filter("scanner")
    flt.settings = {"source": "synthetic:1000"}
    await scanner.setup(flt)
    state = scanner.state_of(flt)
    runner = state.runner
    assert runner is not None
    async with await fltuser.aconnect(PORT, address=daemon.address) as port:
        await until(lambda: state.client_port is not None)
        # Take one message and never answer it; more wait to be delivered (timeout NULL).
        message = await port.get_message(MESSAGE_BYTES)
        await until(lambda: runner.inflight >= 2)
        await scanner.teardown(flt)
        assert not runner.is_running and runner.inflight == 0
        assert not flt.server_ports  # ScannerUnload closed \ScannerPort
        # The connection lives until the filter unloads; the late reply finds no sender.
        with pytest.raises(fltuser.HResultError) as info:
            await port.reply(message.message_id, b"\x01")
        assert info.value.hresult == 0x801F0020
    await scanner.teardown(flt)  # twice is harmless


async def test_bad_settings_create_nothing(daemon: Daemon, tmp_path: Path) -> None:
    for n, settings in enumerate(
        (
            {"source": "nonsense"},
            {"source": "synthetic:0"},
            {"source": f"dir:{tmp_path / 'missing'}"},
            {"extensions": " , "},
            {"interval": "soon"},
            {"history": "0"},
        )
    ):
        flt = daemon.register_filter(f"scanner-{n}")
        flt.settings = settings
        with pytest.raises(ValueError):
            await scanner.setup(flt)
        assert not flt.server_ports
        await flt.unload()


async def test_loads_by_short_name(daemon: Daemon) -> None:
    loaded = await load_filter(daemon, "scanner", {"source": "synthetic:50"})
    state = scanner.state_of(loaded.filter)
    assert state.runner is not None and state.runner.is_running
    assert loaded.teardown is scanner.teardown
    await until(lambda: len(state.verdicts) >= 1)  # no client: allowed, not sent
    assert not state.verdicts[0].sent
    await unload_filters([loaded])
    assert not state.runner.is_running


def test_reply_message_is_17_bytes_packed() -> None:
    # SCANNER_REPLY_MESSAGE under #pragma pack(1): FILTER_REPLY_HEADER (16) + SafeToOpen (1).
    assert struct.calcsize("<i4xQ") + scanner.SCANNER_REPLY.size == 17
