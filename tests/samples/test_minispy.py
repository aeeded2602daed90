"""The minispy sample: \\MiniSpyPort's polling protocol, LOG_RECORD layout, limits, sources."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

import fltuser
from fltemu import NtStatus
from fltemu.daemon import Daemon
from fltemu.daemon.loader import BUILTIN_FILTERS
from fltemu.samples import minispy
from fltemu.samples.minispy import MiniSpyCommand, SpyOperation

from ..helpers import until
from . import place, running, send_from

PORT = minispy.PORT_NAME
#: The user program's buffer (mspyLog.c: BUFFER_SIZE).
BUFFER = 4096
GET_LOG = struct.pack("<II", MiniSpyCommand.GetMiniSpyLog, 0)
GET_VERSION = struct.pack("<II", MiniSpyCommand.GetMiniSpyVersion, 0)


@dataclass
class Record:
    length: int
    sequence: int
    record_type: int
    major: int
    status: int
    information: int
    file_object: int
    args: tuple[int, ...]
    name: str


def parse(buffer: bytes) -> list[Record]:
    """What mspyLog.c's RetrieveLogRecords does with the bytes returned."""
    records = []
    used = 0
    header = minispy.LOG_RECORD
    while used + header.size <= len(buffer):
        fields = header.unpack_from(buffer, used)
        length = fields[0]
        assert length >= header.size + 2 and length % 8 == 0
        assert used + length <= len(buffer)
        name_bytes = buffer[used + header.size : used + length]
        name = name_bytes.decode("utf-16-le").split("\0", 1)[0]
        # Length, Seq, Type, Reserved, Orig, Compl, Dev, FileObj, Tx, Pid, Tid, Info, Status,
        # IrpFlags, Flags, Major, Minor, Arg1..Arg5, Arg6, EcpCount, KnownEcpMask
        records.append(
            Record(
                length,
                fields[1],
                fields[2],
                fields[15],
                fields[12],
                fields[11],
                fields[7],
                fields[17:23],
                name,
            )
        )
        used += length
    assert used == len(buffer)
    return records


def test_layouts() -> None:
    assert minispy.COMMAND_MESSAGE.size == 8
    assert minispy.MINISPYVER.size == 4
    assert minispy.RECORD_DATA.size == 136
    assert minispy.LOG_RECORD.size == 152
    assert minispy.MAX_LOG_RECORD_LENGTH == 1008
    assert minispy.MAX_NAME_SPACE == 856
    assert BUILTIN_FILTERS["minispy"] == "fltemu.samples.minispy"
    # RECORD_DATA offsets: Status @64, Arg1 @80, Arg6 @120 (within LOG_RECORD: +16).
    packed = minispy.build_log_record(
        9, 0, SpyOperation("n", 4, status=0xC0000022, args=(0x11, 0, 0, 0, 0), arg6=-2)
    )
    assert struct.unpack_from("<I", packed, 16 + 64)[0] == 0xC0000022
    assert struct.unpack_from("<Q", packed, 16 + 80)[0] == 0x11
    assert struct.unpack_from("<q", packed, 16 + 120)[0] == -2
    assert packed[16 + 76] == 4  # CallbackMajorId


async def test_version_and_bad_commands(daemon: Daemon) -> None:
    async with running(daemon, minispy):
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            assert await port.send(GET_VERSION, 4) == struct.pack("<HH", 2, 0)
            assert await port.send(GET_VERSION + b"extra data", 64) == b"\x02\x00\x00\x00"
            bad = [
                (GET_VERSION, 3),  # output under sizeof(MINISPYVER)
                (GET_LOG, 0),  # no output buffer
                (b"\x00\x00\x00", BUFFER),  # input under 4 bytes
                (struct.pack("<I", 2), BUFFER),  # unknown command
                (struct.pack("<I", 0xFFFFFFFF), BUFFER),
            ]
            for data, out_size in bad:
                with pytest.raises(fltuser.HResultError) as info:
                    await port.send(data, out_size)
                assert info.value.hresult == 0x80070057, (data, out_size)
                assert info.value.ntstatus == NtStatus.STATUS_INVALID_PARAMETER
            # Four bytes are enough: Reserved is not read.
            with pytest.raises(fltuser.HResultError) as info:
                await port.send(struct.pack("<I", 0), BUFFER)
            assert info.value.hresult == 0x80070103  # empty log, not a bad command
            # MaxConnections 1.
            with pytest.raises(fltuser.HResultError) as info:
                await fltuser.aconnect(PORT, address=daemon.address)
            assert info.value.hresult == 0x800704D6


async def test_get_log_returns_whole_records(daemon: Daemon) -> None:
    async with running(daemon, minispy) as flt:
        state = minispy.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            with pytest.raises(fltuser.HResultError) as info:
                await port.send(GET_LOG, BUFFER)
            assert info.value.hresult == 0x80070103  # STATUS_NO_MORE_ENTRIES
            assert info.value.ntstatus == NtStatus.STATUS_NO_MORE_ENTRIES
            for name in ("a", "bb", "ccc"):
                assert state.log_operation(SpyOperation(name, minispy.IRP_MJ_READ))
            # 160 bytes each; a 400-byte buffer takes two, the third stays.
            first = parse(await port.send(GET_LOG, 400))
            assert [(r.sequence, r.name, r.length) for r in first] == [
                (1, "a", 160),
                (2, "bb", 160),
            ]
            # The first record does not fit: STATUS_BUFFER_TOO_SMALL, it is kept.
            with pytest.raises(fltuser.HResultError) as info:
                await port.send(GET_LOG, 159)
            assert info.value.hresult == 0x8007007A
            rest = parse(await port.send(GET_LOG, 160))
            assert [(r.sequence, r.name) for r in rest] == [(3, "ccc")]
            with pytest.raises(fltuser.HResultError) as info:
                await port.send(GET_LOG, BUFFER)
            assert info.value.hresult == 0x80070103
            assert state.records_allocated == 0


async def test_names_are_cut_and_nul_terminated(daemon: Daemon) -> None:
    async with running(daemon, minispy) as flt:
        state = minispy.state_of(flt)
        state.log_operation(SpyOperation("n" * 1000, minispy.IRP_MJ_WRITE))
        state.log_operation(SpyOperation(None, minispy.IRP_MJ_CLOSE))
        state.log_operation(SpyOperation("\\Device\\é\U0001f600.txt", minispy.IRP_MJ_READ))
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            records = parse(await port.send(GET_LOG, BUFFER))
    assert records[0].length == minispy.MAX_LOG_RECORD_LENGTH
    assert records[0].name == "n" * 427
    assert (records[1].length, records[1].name) == (160, "")
    assert records[2].name == "\\Device\\é\U0001f600.txt"
    assert [r.major for r in records] == [4, 2, 3]


async def test_create_names_end_in_the_empty_ecp_text(daemon: Daemon) -> None:
    # SpySetRecordNameAndEcpData: "%wZ %wZ" for a create (ECP text empty without ECPs),
    # "%wZ" otherwise; _snwprintf's overflow keeps the first 427 code units, space or not.
    longest = minispy.MAX_NAME_WCHARS_LESS_NULL
    async with running(daemon, minispy) as flt:
        state = minispy.state_of(flt)
        for name, major in (
            ("\\Device\\HarddiskVolume1\\a.txt", minispy.IRP_MJ_CREATE),
            ("\\Device\\HarddiskVolume1\\a.txt", minispy.IRP_MJ_CLEANUP),
            ("abc", minispy.IRP_MJ_CREATE),
            ("abc", minispy.IRP_MJ_READ),
            ("c" * (longest - 1), minispy.IRP_MJ_CREATE),  # with its space: exactly 427
            ("d" * longest, minispy.IRP_MJ_CREATE),  # one over: cut, no space
        ):
            state.log_operation(SpyOperation(name, major))
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            records = parse(await port.send(GET_LOG, BUFFER))
    assert [r.name for r in records] == [
        "\\Device\\HarddiskVolume1\\a.txt ",
        "\\Device\\HarddiskVolume1\\a.txt",
        "abc ",
        "abc",
        "c" * (longest - 1) + " ",
        "d" * longest,
    ]
    # Length counts the space: 152 + 2 * 4 + 2 → 168 for the create, 160 for the read.
    assert [r.length for r in records[2:4]] == [168, 160]
    assert records[4].length == records[5].length == minispy.MAX_LOG_RECORD_LENGTH


async def test_record_limit_uses_the_static_buffer_then_drops(daemon: Daemon) -> None:
    async with running(daemon, minispy, max_records="3") as flt:
        state = minispy.state_of(flt)
        kept = [state.log_operation(SpyOperation(f"f{i}", 0)) for i in range(6)]
        assert kept == [True, True, True, True, False, False]
        assert state.dropped == 2
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            records = parse(await port.send(GET_LOG, BUFFER))
            assert [r.sequence for r in records] == [1, 2, 3, 4]
            assert [r.record_type for r in records[:3]] == [0, 0, 0]
            assert records[3].record_type == (
                minispy.RECORD_TYPE_FLAG_STATIC | minispy.RECORD_TYPE_FLAG_EXCEED_MEMORY_ALLOWANCE
            )
            # Drained: room again, the static buffer is free.
            assert not state.static_buffer_in_use and state.records_allocated == 0
            assert state.log_operation(SpyOperation("again", 0))
            (record,) = parse(await port.send(GET_LOG, BUFFER))
            assert (record.sequence, record.record_type) == (5, 0)


async def test_records_wait_for_a_client_and_survive_a_reconnect(daemon: Daemon) -> None:
    async with running(daemon, minispy) as flt:
        state = minispy.state_of(flt)
        state.log_operation(SpyOperation("before", minispy.IRP_MJ_READ))
        port = await asyncio.to_thread(fltuser.connect, PORT, address=daemon.address)
        try:
            await until(lambda: state.client_port is not None)
            (record,) = parse(await asyncio.to_thread(port.send, GET_LOG, BUFFER))
            assert record.name == "before"
        finally:
            await asyncio.to_thread(port.close)
        await until(lambda: state.client_port is None)
        state.log_operation(SpyOperation("between", minispy.IRP_MJ_READ))
        async with await fltuser.aconnect(PORT, address=daemon.address) as again:
            (record,) = parse(await again.send(GET_LOG, BUFFER))
            assert record.name == "between"


async def test_dir_source_logs_create_write_delete(daemon: Daemon, tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    async with running(daemon, minispy, source=f"dir:{watched}", interval="0.01") as flt:
        state = minispy.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            target = place(watched, "log.txt", b"first")
            inode = target.stat().st_ino
            await until(lambda: len(state.records) == 1)
            with target.open("ab") as f:
                f.write(b" and more")
            await until(lambda: len(state.records) == 2)
            os.remove(target)
            await until(lambda: len(state.records) == 3)
            records = parse(await port.send(GET_LOG, BUFFER))
    # The create's name carries the Vista build's "%wZ %wZ" with an empty ECP string.
    assert [r.name for r in records] == [f"{target} ", str(target), str(target)]
    assert [r.major for r in records] == [
        minispy.IRP_MJ_CREATE,
        minispy.IRP_MJ_WRITE,
        minispy.IRP_MJ_SET_INFORMATION,
    ]
    assert [r.sequence for r in records] == [1, 2, 3]
    assert all(r.status == 0 and r.file_object == inode for r in records)
    assert records[0].information == minispy.FILE_CREATED
    assert records[1].args[0] == len(b"first and more")
    assert records[2].args[:2] == (1, minispy.FILE_DISPOSITION_INFORMATION_CLASS)


async def test_synthetic_source_logs_records(daemon: Daemon) -> None:
    async with running(daemon, minispy, source="synthetic:1000", seed="3") as flt:
        state = minispy.state_of(flt)
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            await until(lambda: state.sequence >= 5)
            records = parse(await port.send(GET_LOG, BUFFER))
    assert len(records) >= 5
    assert [r.sequence for r in records] == list(range(1, len(records) + 1))
    assert all(r.name.startswith("\\Device\\HarddiskVolume1\\synthetic\\") for r in records)
    one = minispy.MiniSpyState(flt, 10).synthesize(random.Random(3), 1)
    assert one == minispy.MiniSpyState(flt, 10).synthesize(random.Random(3), 1)


async def test_inject_source_logs_nothing_by_itself(daemon: Daemon) -> None:
    async with running(daemon, minispy) as flt:
        state = minispy.state_of(flt)
        # No source runs: nothing makes records but the filter's own calls.
        assert state.runner is not None and not state.runner.is_running
        async with await fltuser.aconnect(PORT, address=daemon.address) as port:
            for _ in range(3):
                with pytest.raises(fltuser.HResultError) as info:
                    await port.send(GET_LOG, BUFFER)
                assert info.value.hresult == 0x80070103
        assert state.sequence == 0


async def test_teardown_stops_the_source_and_frees_the_records(daemon: Daemon) -> None:
    flt = daemon.register_filter("minispy")
    flt.settings = {"source": "synthetic:2000", "max_records": "10"}
    await minispy.setup(flt)
    state = minispy.state_of(flt)
    await until(lambda: state.dropped > 0)  # full: 10 records, the static one, then drops
    assert len(state.records) == 11
    await minispy.teardown(flt)
    assert state.runner is not None and not state.runner.is_running
    assert not state.records and state.records_allocated == 0
    assert not state.static_buffer_in_use
    assert not flt.server_ports


async def test_misaligned_output_buffers_minispy_c(daemon: Daemon) -> None:
    # SpyMessage: after the size checks, IS_ALIGNED(OutputBuffer, sizeof(PVOID)) for the log
    # and IS_ALIGNED(OutputBuffer, sizeof(ULONG)) for the version, else
    # STATUS_DATATYPE_MISALIGNMENT; the address's low bits come with the request.
    misaligned = NtStatus.STATUS_DATATYPE_MISALIGNMENT
    async with running(daemon, minispy) as flt:
        state = minispy.state_of(flt)
        state.log_operation(SpyOperation("kept", minispy.IRP_MJ_READ))
        cases = [
            (GET_LOG, BUFFER, 0x3C, misaligned),  # 4-aligned is not pointer-aligned
            (GET_LOG, BUFFER, 0x01, misaligned),
            (GET_LOG, 0, 0x01, NtStatus.STATUS_INVALID_PARAMETER),  # the size check first
            (GET_VERSION, 4, 0x3E, misaligned),
            (GET_VERSION, 3, 0x3E, NtStatus.STATUS_INVALID_PARAMETER),
            (GET_VERSION, 4, 0x3C, NtStatus.STATUS_SUCCESS),
        ]
        for data, out_size, address, status in cases:
            result = await send_from(daemon, PORT, data, out_size, address)
            assert result.status == status, (data, out_size, address)
        assert len(state.records) == 1  # no misaligned GetMiniSpyLog took the record
        result = await send_from(daemon, PORT, GET_LOG, BUFFER, 0x38)
        assert result.status == NtStatus.STATUS_SUCCESS
        assert [r.name for r in parse(result.data)] == ["kept"]
