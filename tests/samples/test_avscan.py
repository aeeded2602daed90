"""The avscan sample: three ports, connection contexts, scans, commands, aborts and unloading."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

import fltuser
from fltemu import NtStatus
from fltemu.daemon import Daemon
from fltemu.daemon.loader import BUILTIN_FILTERS
from fltemu.samples import avscan
from fltemu.samples.avscan import (
    AvConnectionType,
    AvScanCommand,
    AvScanMessage,
    AvScanReason,
    AvScanResult,
)

from ..helpers import until
from . import place, running, send_from

SCAN = avscan.SCAN_PORT_NAME
ABORT = avscan.ABORT_PORT_NAME
QUERY = avscan.QUERY_PORT_NAME
#: FILTER_MESSAGE_HEADER + AV_SCANNER_NOTIFICATION: the 40 bytes userscan.c asks for.
MESSAGE_BYTES = 16 + 24


def context(kind: int) -> bytes:
    return struct.pack("<I", kind)


def command(cmd: int, scan_id: int = 0, thread_id: int = 0, union: int = 0) -> bytes:
    return struct.pack("<I4xqI4xQ", cmd, scan_id, thread_id, union)


def notification(message: fltuser.Message) -> tuple[int, int, int, int]:
    message_kind, reason, scan_id, thread_id = avscan.AV_SCANNER_NOTIFICATION.unpack(message.data)
    return message_kind, reason, scan_id, thread_id


ScanType = AvConnectionType.AvConnectForScan
AbortType = AvConnectionType.AvConnectForAbort


def connected(state: avscan.AvScanState, *kinds: AvConnectionType) -> bool:
    return all(state.client_ports[kind] is not None for kind in kinds)


async def connect(daemon: Daemon, name: str, kind: int) -> fltuser.AsyncPort:
    return await fltuser.aconnect(name, context=context(kind), address=daemon.address)


async def user_scan(port: fltuser.AsyncPort, result: int, thread_id: int = 77) -> int:
    """What userscan.c's worker does with one scan request; returns the section handle."""
    message = await port.get_message(MESSAGE_BYTES)
    kind, _, scan_id, _ = notification(message)
    assert kind == AvScanMessage.AvMsgStartScanning
    await port.reply(message.message_id, struct.pack("<I", thread_id))  # 20-byte reply
    out = await port.send(command(AvScanCommand.AvCmdCreateSectionForDataScan, scan_id), 8)
    (handle,) = struct.unpack("<Q", out)
    close = command(AvScanCommand.AvCmdCloseSectionForDataScan, scan_id, thread_id, result)
    assert await port.send(close, 0) == b""
    return int(handle)


def test_layouts() -> None:
    assert avscan.AV_CONNECTION_CONTEXT.size == 4
    assert avscan.AV_SCANNER_NOTIFICATION.size == 24
    assert avscan.COMMAND_MESSAGE.size == 32
    assert (SCAN, ABORT, QUERY) == (
        "\\MicrosoftAvSampleFilterScanPort",
        "\\MicrosoftAvSampleFilterAbortPort",
        "\\MicrosoftAvSampleFilterQueryPort",
    )
    assert BUILTIN_FILTERS["avscan"] == "fltemu.samples.avscan"


async def test_connection_contexts(daemon: Daemon) -> None:
    async with running(daemon, avscan) as flt:
        state = avscan.state_of(flt)
        for bad in (b"", b"\x01\x00", context(0), context(4), context(0xFFFFFFFF)):
            with pytest.raises(fltuser.HResultError) as info:
                await fltuser.aconnect(SCAN, context=bad, address=daemon.address)
            assert info.value.hresult == 0x80070057, bad
            assert info.value.ntstatus == NtStatus.STATUS_INVALID_PARAMETER_3
        # Bytes past the 4-byte type are ignored; MaxConnections is 1 per port.
        async with await fltuser.aconnect(
            SCAN, context=context(1) + b"tail", address=daemon.address
        ):
            assert connected(state, ScanType)
            with pytest.raises(fltuser.HResultError) as info:
                await connect(daemon, SCAN, 1)
            assert info.value.hresult == 0x800704D6
            async with await connect(daemon, ABORT, 2), await connect(daemon, QUERY, 3):
                await until(lambda: all(state.client_ports.values()))
        await until(lambda: not any(state.client_ports.values()))


async def test_the_type_need_not_match_the_port(daemon: Daemon) -> None:
    # AvConnectNotifyCallback switches on the context only: type 1 through the query port
    # becomes the scan connection.
    async with running(daemon, avscan) as flt:
        state = avscan.state_of(flt)
        async with await connect(daemon, QUERY, AvConnectionType.AvConnectForScan) as port:
            assert connected(state, ScanType)
            scan = asyncio.create_task(state.scan("query-port.bin"))
            await user_scan(port, AvScanResult.AvScanResultClean)
            verdict = await scan
            assert verdict.result == AvScanResult.AvScanResultClean


async def test_a_whole_scan(daemon: Daemon) -> None:
    async with running(daemon, avscan) as flt:
        state = avscan.state_of(flt)
        async with await connect(daemon, SCAN, 1) as port:
            assert connected(state, ScanType)
            scan = asyncio.create_task(state.scan("eicar.com"))
            message = await port.get_message(MESSAGE_BYTES)
            assert len(message.data) == 24
            assert message.reply_length == 20  # sizeof(ULONG) + 16
            assert notification(message) == (AvScanMessage.AvMsgStartScanning, 0, 1, 0)
            await port.reply(message.message_id, struct.pack("<I", 4242))
            await until(lambda: state.scans[1].scan_thread_id == 4242)
            create = command(AvScanCommand.AvCmdCreateSectionForDataScan, 1, 4242)
            (handle,) = struct.unpack("<Q", await port.send(create, 8))
            assert handle == 0x100 and handle != avscan.AV_INVALID_SECTION_HANDLE
            assert state.sections[handle].name == "eicar.com"
            close = command(
                AvScanCommand.AvCmdCloseSectionForDataScan,
                1,
                4242,
                AvScanResult.AvScanResultInfected,
            )
            assert await port.send(close, 0) == b""
            verdict = await scan
            assert verdict.status == NtStatus.STATUS_SUCCESS
            assert verdict.result == AvScanResult.AvScanResultInfected
            assert verdict.would_block and verdict.reason is AvScanReason.AvScanOnOpen
            assert not state.sections and not state.scans
            # The scan is over: its ScanId is unknown now.
            with pytest.raises(fltuser.HResultError) as info:
                await port.send(create, 8)
            assert info.value.ntstatus == avscan.STATUS_NOT_FOUND
            # A rescan at cleanup finds it infected but blocks nothing.
            scan = asyncio.create_task(state.scan("eicar.com", AvScanReason.AvScanOnCleanup))
            assert await user_scan(port, AvScanResult.AvScanResultInfected) == 0x104
            verdict = await scan
            assert verdict.scan_id == 2 and not verdict.would_block


async def test_bad_commands(daemon: Daemon) -> None:
    async with running(daemon, avscan) as flt:
        state = avscan.state_of(flt)
        async with await connect(daemon, SCAN, 1) as port:
            assert connected(state, ScanType)
            scan = asyncio.create_task(state.scan("f"))
            message = await port.get_message(MESSAGE_BYTES)
            await port.reply(message.message_id, struct.pack("<I", 1))
            invalid = [
                (b"\x01\x00\x00", 8),  # under 4 bytes
                (struct.pack("<I", 9) + bytes(28), 8),  # unknown command
                (command(AvScanCommand.AvCmdCreateSectionForDataScan, 1)[:12], 8),  # no ScanId
                (command(AvScanCommand.AvCmdCreateSectionForDataScan, 1), 4),  # no HANDLE room
                (command(AvScanCommand.AvCmdCreateSectionForDataScan, 1), 0),
                (command(AvScanCommand.AvCmdCloseSectionForDataScan, 1)[:27], 0),  # no result
                (command(AvScanCommand.AvIsFileModified, 0, 0, 0x44)[:31], 1),  # no handle
                (command(AvScanCommand.AvIsFileModified, 0, 0, 0x44), 0),  # no output
            ]
            for data, out_size in invalid:
                with pytest.raises(fltuser.HResultError) as info:
                    await port.send(data, out_size)
                assert info.value.ntstatus == NtStatus.STATUS_INVALID_PARAMETER, (data, out_size)
                assert info.value.hresult == 0x80070057
            # A user-mode file handle means nothing to the emulated kernel.
            with pytest.raises(fltuser.HResultError) as info:
                await port.send(command(AvScanCommand.AvIsFileModified, 0, 0, 0x44), 1)
            assert info.value.ntstatus == NtStatus.STATUS_INVALID_HANDLE
            for cmd in (
                AvScanCommand.AvCmdCreateSectionForDataScan,
                AvScanCommand.AvCmdCloseSectionForDataScan,
            ):
                with pytest.raises(fltuser.HResultError) as info:
                    await port.send(command(cmd, 99), 8)
                assert info.value.ntstatus == avscan.STATUS_NOT_FOUND
            # None of that disturbed the scan in progress.
            assert list(state.scans) == [1]
            await port.send(command(AvScanCommand.AvCmdCreateSectionForDataScan, 1, 1), 8)
            await port.send(command(AvScanCommand.AvCmdCloseSectionForDataScan, 1, 1, 7), 0)
            verdict = await scan
            assert verdict.result == 7 and not verdict.would_block  # unknown: nothing changes


async def test_timeout_sends_abort_to_the_abort_connection(daemon: Daemon) -> None:
    async with running(daemon, avscan, scan_timeout="0.1") as flt:
        state = avscan.state_of(flt)
        async with (
            await connect(daemon, SCAN, 1) as scan_port,
            await connect(daemon, ABORT, 2) as abort_port,
        ):
            assert connected(state, ScanType, AbortType)
            scan = asyncio.create_task(state.scan("slow.bin"))
            message = await scan_port.get_message(MESSAGE_BYTES)
            await scan_port.reply(message.message_id, struct.pack("<I", 31))
            # The user never closes the section: after scan_timeout the abort comes.
            abort = await abort_port.get_message(MESSAGE_BYTES)
            assert (abort.message_id, abort.reply_length) == (0, 0)  # no reply expected
            assert notification(abort) == (AvScanMessage.AvMsgAbortScanning, 0, 1, 31)
            # The worker scans after all, with a late "infected".
            await scan_port.send(command(AvScanCommand.AvCmdCreateSectionForDataScan, 1, 31), 8)
            close = command(AvScanCommand.AvCmdCloseSectionForDataScan, 1, 31, 1)
            await scan_port.send(close, 0)
            verdict = await scan
            assert verdict.status == NtStatus.STATUS_TIMEOUT
            assert verdict.result == AvScanResult.AvScanResultInfected
            assert not verdict.aborted
            # AvScan returned STATUS_TIMEOUT: AvPostCreate lets this open through.
            assert not verdict.would_block


async def test_timeout_without_abort_connection_finalizes_the_scan(daemon: Daemon) -> None:
    async with running(daemon, avscan, scan_timeout="0.05") as flt:
        state = avscan.state_of(flt)
        async with await connect(daemon, SCAN, 1) as port:
            assert connected(state, ScanType)
            scan = asyncio.create_task(state.scan("dead-service.bin"))
            message = await port.get_message(MESSAGE_BYTES)
            await port.reply(message.message_id, b"\x05")  # short reply: thread id 5
            verdict = await scan
            assert verdict.status == NtStatus.STATUS_TIMEOUT and verdict.aborted
            assert verdict.result is None and not verdict.would_block
            with pytest.raises(fltuser.HResultError) as info:
                await port.send(command(AvScanCommand.AvCmdCreateSectionForDataScan, 1), 8)
            assert info.value.ntstatus == avscan.STATUS_NOT_FOUND


async def test_scan_fails_fast_without_a_scan_connection(daemon: Daemon) -> None:
    async with running(daemon, avscan) as flt:
        verdict = await avscan.state_of(flt).scan("nobody.bin")
        assert verdict.status == NtStatus.STATUS_PORT_DISCONNECTED
        assert verdict.result is None and not verdict.would_block


async def test_scan_reply_with_a_failure_status_ends_the_scan(daemon: Daemon) -> None:
    async with running(daemon, avscan) as flt:
        state = avscan.state_of(flt)
        async with await connect(daemon, SCAN, 1) as port:
            assert connected(state, ScanType)
            scan = asyncio.create_task(state.scan("f"))
            message = await port.get_message(MESSAGE_BYTES)
            # A 24-byte reply overflows the 4-byte buffer: STATUS_BUFFER_OVERFLOW, not success.
            with pytest.raises(fltuser.HResultError):
                await port.reply(message.message_id, bytes(8))
            verdict = await scan
            assert verdict.status == NtStatus.STATUS_BUFFER_OVERFLOW
            assert verdict.result is None and not state.scans


async def test_unloading_message_and_refused_scans(daemon: Daemon) -> None:
    flt = daemon.register_filter("avscan")
    await avscan.setup(flt)
    state = avscan.state_of(flt)
    async with await connect(daemon, ABORT, 2) as abort_port:
        await until(lambda: state.client_ports[AvConnectionType.AvConnectForAbort] is not None)
        teardown = asyncio.create_task(avscan.teardown(flt))
        message = await abort_port.get_message(MESSAGE_BYTES)
        assert notification(message) == (AvScanMessage.AvMsgFilterUnloading, 0, 0, 0)
        assert message.reply_length == 20
        verdict = await state.scan("late.bin")  # Globals.Unloading: nothing is sent
        assert verdict.status == NtStatus.STATUS_FLT_DELETING_OBJECT
        await abort_port.reply(message.message_id, struct.pack("<I", 8))
        await teardown
        assert state.unload_status == NtStatus.STATUS_SUCCESS
        assert not flt.server_ports


async def test_unloading_times_out_then_aborts_running_scans(daemon: Daemon) -> None:
    flt = daemon.register_filter("avscan")
    flt.settings = {"unload_timeout": "0.05"}
    await avscan.setup(flt)
    state = avscan.state_of(flt)
    async with await connect(daemon, ABORT, 2) as abort_port:
        async with await connect(daemon, SCAN, 1) as scan_port:
            assert connected(
                state, ScanType, AbortType
            )  # ConnectNotify ran before connect returned
            acknowledged = asyncio.create_task(state.scan("a.bin"))
            message = await scan_port.get_message(MESSAGE_BYTES)
            await scan_port.reply(message.message_id, struct.pack("<I", 11))
            await until(lambda: state.scans[1].acknowledged)
            undelivered = asyncio.create_task(state.scan("b.bin"))
            await until(lambda: 2 in state.scans)
            teardown = asyncio.create_task(avscan.teardown(flt))
            unloading = await abort_port.get_message(MESSAGE_BYTES)
            assert notification(unloading)[0] == AvScanMessage.AvMsgFilterUnloading
            # Not answered: after unload_timeout every running scan gets an abort.
            aborts = [await abort_port.get_message(MESSAGE_BYTES) for _ in range(2)]
            assert state.unload_status == NtStatus.STATUS_TIMEOUT
            assert sorted(notification(m) for m in aborts) == [
                (AvScanMessage.AvMsgAbortScanning, 0, 1, 11),
                (AvScanMessage.AvMsgAbortScanning, 0, 2, 0),
            ]
            # The worker gives up on scan 1 and closes its section.
            await scan_port.send(command(AvScanCommand.AvCmdCreateSectionForDataScan, 1, 11), 8)
            close = command(AvScanCommand.AvCmdCloseSectionForDataScan, 1, 11, 0)
            await scan_port.send(close, 0)
            verdict = await acknowledged
            assert verdict.result == AvScanResult.AvScanResultUndetermined
            await teardown
            assert not flt.server_ports
        # Scan 2 was never delivered; it ends when its connection does.
        verdict = await undelivered
        assert verdict.status == NtStatus.STATUS_PORT_DISCONNECTED


async def test_teardown_finalizes_scans_without_an_abort_connection(daemon: Daemon) -> None:
    flt = daemon.register_filter("avscan")
    flt.settings = {"source": "synthetic:1000"}
    await avscan.setup(flt)
    state = avscan.state_of(flt)
    runner = state.runner
    assert runner is not None
    async with await connect(daemon, SCAN, 1) as scan_port:
        # One request acknowledged and left hanging; more wait to be delivered.
        message = await scan_port.get_message(MESSAGE_BYTES)
        scan_id = notification(message)[2]
        await scan_port.reply(message.message_id, struct.pack("<I", 1))
        await until(lambda: runner.inflight >= 2)
        await avscan.teardown(flt)
        assert state.unload_status == NtStatus.STATUS_PORT_DISCONNECTED
        assert runner.inflight == 0 and not state.scans and not state.sections
        # No abort connection: the kernel finalized the acknowledged scan itself.
        (verdict,) = [v for v in state.verdicts if v.scan_id == scan_id]
        assert verdict.aborted and verdict.result is None


async def test_dir_source_scans_on_open_and_on_cleanup(daemon: Daemon, tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    async with running(daemon, avscan, source=f"dir:{watched}", interval="0.01") as flt:
        state = avscan.state_of(flt)
        async with await connect(daemon, SCAN, 1) as port:
            assert connected(state, ScanType)
            target = place(watched, "new.exe", b"MZ")
            message = await port.get_message(MESSAGE_BYTES)
            kind, reason, scan_id, _ = notification(message)
            assert (kind, reason) == (AvScanMessage.AvMsgStartScanning, AvScanReason.AvScanOnOpen)
            assert state.scans[scan_id].name == str(target)
            await port.reply(message.message_id, struct.pack("<I", 1))
            await port.send(command(AvScanCommand.AvCmdCloseSectionForDataScan, scan_id), 0)
            await until(lambda: len(state.verdicts) == 1)
            place(watched, "new.exe", b"MZ changed")
            message = await port.get_message(MESSAGE_BYTES)
            assert notification(message)[1] == AvScanReason.AvScanOnCleanup
            await port.reply(message.message_id, struct.pack("<I", 1))
            await port.send(
                command(AvScanCommand.AvCmdCloseSectionForDataScan, notification(message)[2]), 0
            )
            await until(lambda: len(state.verdicts) == 2)
    assert [v.name for v in state.verdicts] == [str(target)] * 2


async def test_synthetic_source_sends_scan_requests(daemon: Daemon) -> None:
    async with running(daemon, avscan, source="synthetic:500", seed="5") as flt:
        state = avscan.state_of(flt)
        async with await connect(daemon, SCAN, 1) as port:
            for _ in range(4):
                await user_scan(port, AvScanResult.AvScanResultClean)
            await until(lambda: sum(v.result is not None for v in state.verdicts) == 4)
    assert all(v.name.startswith("synthetic-") for v in state.verdicts)


async def test_inject_source_sends_nothing_by_itself(daemon: Daemon) -> None:
    async with running(daemon, avscan) as flt:
        async with await connect(daemon, SCAN, 1) as port:
            with pytest.raises(TimeoutError):
                await port.get_message(MESSAGE_BYTES, timeout=0.1)
        assert not avscan.state_of(flt).verdicts


async def test_bad_settings_create_nothing(daemon: Daemon) -> None:
    for n, settings in enumerate(
        ({"scan_timeout": "-1"}, {"unload_timeout": "later"}, {"source": "dir:"})
    ):
        flt = daemon.register_filter(f"avscan-{n}")
        flt.settings = settings
        with pytest.raises(ValueError):
            await avscan.setup(flt)
        assert not flt.server_ports
        await flt.unload()


# --- where fltemu used to differ from Microsoft's sample ------------------------------------


async def test_a_disconnect_closes_whatever_holds_the_type_communication_c(
    daemon: Daemon,
) -> None:
    """AvDisconnectNotifyCallback closes the global of the cookie's type, even a newer
    connection of that type that took it (here through the query port): Microsoft's hazard."""
    async with running(daemon, avscan) as flt:
        state = avscan.state_of(flt)
        older = await connect(daemon, SCAN, AvConnectionType.AvConnectForScan)
        newer = await connect(daemon, QUERY, AvConnectionType.AvConnectForScan)
        await until(lambda: connected(state, ScanType))
        await older.aclose()
        # (On a live connection this unknown ScanId gives STATUS_NOT_FOUND, not E_HANDLE.)
        with pytest.raises(fltuser.HResultError) as info:
            await newer.send(command(AvScanCommand.AvCmdCreateSectionForDataScan, 99), 8)
        assert info.value.hresult == 0x80070006
        await newer.aclose()


async def test_a_close_section_without_a_section_drops_the_result_communication_c(
    daemon: Daemon,
) -> None:
    """Only create-section puts the file in the scanning state, the one state in which
    close-section applies its result: an "infected" without a section is dropped."""
    async with running(daemon, avscan) as flt:
        state = avscan.state_of(flt)
        async with await connect(daemon, SCAN, 1) as port:
            scan = asyncio.create_task(state.scan("no-section.bin"))
            message = await port.get_message(MESSAGE_BYTES)
            await port.reply(message.message_id, struct.pack("<I", 5))
            infected = AvScanResult.AvScanResultInfected
            await port.send(command(AvScanCommand.AvCmdCloseSectionForDataScan, 1, 5, infected), 0)
            verdict = await scan
    assert (verdict.status, verdict.result, verdict.would_block) == (
        NtStatus.STATUS_SUCCESS,
        None,
        False,
    )


async def test_empty_files_are_not_sent_avscan_c(daemon: Daemon, tmp_path: Path) -> None:
    """AvScan marks an empty file not infected without asking the user program."""
    watched = tmp_path / "watched"
    watched.mkdir()
    async with running(daemon, avscan, source=f"dir:{watched}", interval="0.01") as flt:
        state = avscan.state_of(flt)
        async with await connect(daemon, SCAN, 1) as port:
            empty = place(watched, "empty.txt", b"")
            await until(lambda: len(state.verdicts) == 1)
            full = place(watched, "full.exe", b"MZ")
            message = await port.get_message(MESSAGE_BYTES)
            assert state.scans[notification(message)[2]].name == str(full)
            await port.reply(message.message_id, struct.pack("<I", 1))
            await port.send(command(AvScanCommand.AvCmdCloseSectionForDataScan, 1), 0)
            await until(lambda: len(state.verdicts) == 2)
    first = state.verdicts[0]
    assert (first.name, first.scan_id, first.result) == (
        str(empty),
        0,
        AvScanResult.AvScanResultClean,
    )


async def test_misaligned_output_buffers_communication_c(daemon: Daemon) -> None:
    # AvMessageNotifyCallback: create-section checks the size, then IS_ALIGNED(OutputBuffer,
    # sizeof(HANDLE)), then the ScanId; AvIsFileModified's BOOLEAN alignment always holds.
    misaligned = NtStatus.STATUS_DATATYPE_MISALIGNMENT
    create = AvScanCommand.AvCmdCreateSectionForDataScan
    async with running(daemon, avscan):
        cases = [
            (command(create, 99), 8, 0x3C, misaligned),  # before the unknown ScanId
            (command(create, 99), 4, 0x3C, NtStatus.STATUS_INVALID_PARAMETER),
            (command(create, 99), 8, 0x38, avscan.STATUS_NOT_FOUND),
            (
                command(AvScanCommand.AvIsFileModified, 0, 0, 0x44),
                1,
                0x3F,
                NtStatus.STATUS_INVALID_HANDLE,
            ),
        ]
        for data, out_size, address, status in cases:
            result = await send_from(daemon, SCAN, data, out_size, address, context(1))
            assert result.status == status, (data, out_size, address)
