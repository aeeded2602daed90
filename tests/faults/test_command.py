"""``fltemu faults``, ``fltemu record`` and ``fltemu replay`` as a user runs them: exit
statuses, the text and JSON reports, and files from a later format refused."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fltemu.faults.recording import RECORDING_FORMAT, RecordingError, load_recording, replay
from fltemu.samples.scanner import SCANNER_NOTIFICATION
from fltemu.testing import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
AGENT = str(Path(__file__).parent / "agents" / "scan_agent.py")
SCANNER_AGENT = str(ROOT / "examples" / "scanner_agent.py")

SHORT = """
format = 1
name = "short"
filter = "scanner"
seed = 4

[thresholds]
reconnect_within = 2.0
answer_within = 2.0
hang_after = 1.0

[[step]]
fault = "files"
files = 2

[[step]]
fault = "unload_reload"
delay = [0.01, 0.1]
files = 1
"""


def fltemu(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fltemu", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def schedule_file(tmp_path: Path) -> Path:
    path = tmp_path / "short.toml"
    path.write_text(SHORT)
    return path


def test_run_passes_and_writes_json(schedule_file: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = fltemu(
        "faults", "run", str(schedule_file), "--json", str(report_path), "--",
        sys.executable, AGENT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "PASSED"
    assert "#2 unload_reload" in done.stderr  # the progress line of each event
    report = json.loads(report_path.read_text())
    assert report["format"] == 1 and report["passed"] is True and report["seed"] == 4
    assert [e["fault"] for e in report["events"]] == ["files", "unload_reload"]
    assert report["events"][1]["reconnect"] is not None
    assert report["files"] == {"sent": 3, "answered": 3, "wrong": 0, "lost": 0}


def test_run_exits_1_and_names_what_broke(schedule_file: Path) -> None:
    done = fltemu(
        "faults", "run", str(schedule_file), "--quiet", "--json", "-", "--",
        sys.executable, AGENT, "--no-reconnect",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""
    report = json.loads(done.stdout)
    assert report["passed"] is False
    assert "#2 unload_reload: did not reconnect within 2 s" in report["problems"]
    assert report["exit"] == "exited with status 0"


def test_plan_prints_the_same_events_for_the_same_seed(schedule_file: Path) -> None:
    first = fltemu("faults", "plan", str(schedule_file), "--seed", "8")
    second = fltemu("faults", "plan", str(schedule_file), "--seed", "8")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.splitlines()[0] == "schedule short, seed 8:"
    assert fltemu("faults", "plan", str(schedule_file), "--seed", "9").stdout != first.stdout


def test_list_and_show_the_builtin_schedules() -> None:
    listed = fltemu("faults", "list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [
        "scanner-reload", "scanner-faults", "avscan-faults", "minispy-faults",
    ]  # fmt: skip
    shown = fltemu("faults", "show", "scanner-reload")
    assert shown.stdout.startswith("format = 1\n")
    assert 'fault = "unload_reload"' in shown.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["faults", "run", "nope.toml", "--", "true"], "no such file, and no built-in schedule"),
        (["faults", "run", "scanner-reload"], "no agent: fltemu faults run SCHEDULE -- AGENT"),
        (["faults", "plan", "scanner-reload", "--", "x"], "'-- AGENT' is only for"),
        (["faults"], "give an action: list, show NAME, plan SCHEDULE, or run"),
        (["faults", "show", "nope"], "no built-in schedule 'nope'"),
        (["replay", "missing.jsonl", "--", "true"], "cannot read missing.jsonl"),
        (["record", "x.jsonl", "--port", "ScannerPort"], "a port name starts with a backslash"),
        (
            ["faults", "run", "scanner-reload", "python3", "agent.py"],
            "put the agent after '--': fltemu faults run scanner-reload -- python3 agent.py",
        ),
        (["replay", "r.jsonl", "./agent"], "put the agent after '--': fltemu replay r.jsonl --"),
    ],
)
def test_mistakes_exit_2_with_what_to_do(args: list[str], expected: str) -> None:
    done = fltemu(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_a_schedule_of_a_later_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "later.toml"
    path.write_text(SHORT.replace("format = 1", "format = 2"))
    done = fltemu("faults", "run", str(path), "--", sys.executable, AGENT)
    assert done.returncode == 2
    assert "is format 2, from a later fltemu; this fltemu reads format 1" in done.stderr


def test_help_has_examples() -> None:
    for command in (["faults", "run"], ["record"], ["replay"]):
        done = fltemu(*command, "-h")
        assert done.returncode == 0
        assert "example" in done.stdout


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[Path]:
    """Three scans recorded from the example scanner agent on `fltemu serve`."""
    path = tmp_path / "scan.jsonl"
    with DaemonProcess(["--filter", "scanner"]) as daemon:
        agent = subprocess.Popen(
            [sys.executable, SCANNER_AGENT, "--address", daemon.address],
            stdout=subprocess.DEVNULL,
        )
        try:
            daemon.wait_for_connection("\\ScannerPort")
            recorder = subprocess.Popen(
                [
                    sys.executable, "-m", "fltemu", "record", str(path), "--port",
                    "\\ScannerPort", "--address", daemon.address, "--count", "3",
                ],
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            assert recorder.stderr is not None
            assert recorder.stderr.readline().startswith("recording \\ScannerPort")
            for body in (b"some foul text", b"clean text", b"more foul"):
                message = SCANNER_NOTIFICATION.pack(len(body), 0, body)
                assert daemon.send("\\ScannerPort", message, reply_length=1).status == 0
            assert recorder.wait(30) == 0
            assert "recorded 3 message(s)" in recorder.stderr.read()
            recorder.stderr.close()
        finally:
            agent.terminate()
            agent.wait(30)
    yield path


def test_record_then_replay_finds_no_difference_with_the_same_agent(
    recorded: Path, tmp_path: Path
) -> None:
    recording = load_recording(recorded)
    assert recording.port == "\\ScannerPort"
    assert [e.reply for e in recording.exchanges] == [b"\x00", b"\x01", b"\x00"]
    for pace in ("recorded", "fast"):
        done = fltemu("replay", str(recorded), "--pace", pace, "--", sys.executable, SCANNER_AGENT)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "3 messages replayed, 3 replies as recorded, 0 differences" in done.stdout


def test_replay_reports_every_reply_that_differs(recorded: Path) -> None:
    done = fltemu(
        "replay", str(recorded), "--pace", "fast", "--json", "-", "--",
        sys.executable, AGENT, "--wrong",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] is False
    assert [d["index"] for d in report["differences"]] == [1, 2, 3]
    assert (
        "recorded STATUS_SUCCESS 00 (1 bytes), now STATUS_SUCCESS 01 (1 bytes)"
        in (report["differences"][0]["what"])
    )


def test_a_recording_of_a_later_format_is_refused(recorded: Path, tmp_path: Path) -> None:
    lines = recorded.read_text().splitlines()
    header = json.loads(lines[0])
    header["fltemu_recording"] = RECORDING_FORMAT + 1
    later = tmp_path / "later.jsonl"
    later.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(RecordingError, match="written by a later fltemu"):
        load_recording(later)
    done = fltemu("replay", str(later), "--", sys.executable, SCANNER_AGENT)
    assert done.returncode == 2
    assert f"is recording format {RECORDING_FORMAT + 1}, written by a later fltemu" in done.stderr
    assert "upgrade fltemu" in done.stderr


def test_a_file_that_is_no_recording_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not.jsonl"
    path.write_text('{"kind": "message"}\n')
    with pytest.raises(RecordingError, match="is not an fltemu recording"):
        load_recording(path)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_recording_pairs_late_deliveries_and_marks_cut_messages(tmp_path: Path) -> None:
    header = {"fltemu_recording": 1, "port": "\\P"}
    events = [
        # Waited for a get: id 0 at the start, its id given when delivered.
        {"t": 0.0, "kind": "message", "connection": 1, "size": 3, "buffer": 4,
         "timeout": 2.0, "data": b64(b"abc")},
        {"t": 0.1, "kind": "deliver", "connection": 1, "message_id": 5, "size": 3,
         "buffer": 4, "data": b64(b"abc")},
        # No reply wanted: id 0 throughout.
        {"t": 0.2, "kind": "message", "connection": 1, "size": 2, "data": b64(b"hi")},
        {"t": 0.2, "kind": "message_done", "connection": 1, "status": 0, "size": 2},
        {"t": 0.3, "kind": "message_done", "connection": 1, "status": 0, "message_id": 5,
         "size": 3, "buffer": 4, "reply_size": 2, "data": b64(b"ok")},
        # Longer than a trace event carries.
        {"t": 0.4, "kind": "message", "connection": 1, "message_id": 6, "size": 9000,
         "buffer": 1, "data": b64(b"x" * 4096)},
        {"t": 0.5, "kind": "message_done", "connection": 1, "status": 0, "message_id": 6,
         "size": 9000, "buffer": 1, "reply_size": 1, "data": b64(b"\x01")},
        {"t": 0.6, "kind": "send", "connection": 1, "status": 0, "size": 1, "reply_size": 8,
         "data": b64(b"q")},
        {"t": 0.7, "kind": "dropped", "count": 3},
        # Started, never ended within the recording.
        {"t": 0.8, "kind": "message", "connection": 1, "message_id": 7, "size": 1,
         "buffer": 1, "data": b64(b"z")},
    ]  # fmt: skip
    path = tmp_path / "synthetic.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [header, *events]) + "\n")
    recording = load_recording(path)
    assert [(e.data, e.reply_length, e.timeout, e.reply, e.cut) for e in recording.exchanges] == [
        (b"abc", 4, 2.0, b"ok", False),
        (b"hi", None, None, None, False),
        (b"x" * 4096, 1, None, b"\x01", True),
    ]
    assert [(s.data, s.status, s.reply_size) for s in recording.sends] == [(b"q", 0, 8)]
    assert (recording.dropped, recording.unmatched) == (3, 1)


AGENT_THAT_ASKS = """
import fltuser
port = fltuser.connect("\\\\P")
print("answer", len(port.send(b"q", 16)), flush=True)
try:
    port.send(b"new", 16)
except fltuser.HResultError as exc:
    print("new", hex(exc.hresult), flush=True)
while True:
    msg = port.get_message(64)
    port.reply(msg.message_id, b"ok")
"""


def test_replay_answers_recorded_requests_and_lists_new_ones(tmp_path: Path) -> None:
    header = {"fltemu_recording": 1, "port": "\\P"}
    events = [
        {"t": 0.0, "kind": "send", "connection": 1, "status": 0, "size": 1, "reply_size": 8,
         "data": b64(b"q")},
        {"t": 0.1, "kind": "message", "connection": 1, "message_id": 1, "size": 3,
         "buffer": 4, "data": b64(b"abc")},
        {"t": 0.2, "kind": "message_done", "connection": 1, "status": 0, "message_id": 1,
         "size": 3, "buffer": 4, "reply_size": 2, "data": b64(b"ok")},
    ]  # fmt: skip
    path = tmp_path / "asks.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [header, *events]) + "\n")
    agent = tmp_path / "asks.py"
    agent.write_text(AGENT_THAT_ASKS)
    report = asyncio.run(
        replay(load_recording(path), [sys.executable, str(agent)], pace="fast", source="asks")
    )
    assert (report.replayed, report.same) == (1, 1)
    (difference,) = report.differences
    assert difference.what.startswith("the agent sent a request the recording never saw: 6e6577")
    assert not report.passed


def test_a_file_that_is_not_text_is_no_schedule(tmp_path: Path) -> None:
    path = tmp_path / "agent.exe"
    path.write_bytes(b"MZ\x90\x00\xff\xfe\xd0\x00" * 8)
    done = fltemu("faults", "plan", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is not a schedule (not UTF-8 text)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "bad",
    [
        {"size": "x"},
        {"reply_size": "x"},
        {"timeout": "soon"},
        {"status": "x"},
        {"message_id": [1]},
        {"timeout": -1},
        {"timeout": float("inf")},
        {"buffer": -1},
        {"buffer": 1 << 32},
    ],
)
def test_a_recording_with_a_bad_field_is_refused_by_line(
    tmp_path: Path, bad: dict[str, object]
) -> None:
    header = {"fltemu_recording": 1, "port": "\\P"}
    message = {"t": 0, "kind": "message", "connection": 1, "message_id": 1, "size": 4,
               "buffer": 8, "data": b64(b"abcd")}  # fmt: skip
    done = {"t": 0.1, "kind": "message_done", "connection": 1, "message_id": 1, "size": 4,
            "buffer": 8, "status": 0, "reply_size": 1, "data": b64(b"\x00")}  # fmt: skip
    if "timeout" in bad or "buffer" in bad:
        message.update(bad)
    if "timeout" not in bad:
        done.update(bad)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in (header, message, done)))
    with pytest.raises(RecordingError, match=r"bad\.jsonl, line 3: "):
        load_recording(path)
    cli = fltemu("replay", str(path), "--", "true")
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "Traceback" not in cli.stderr


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("command", ["faults", "replay"])
def test_sigterm_stops_the_agent_before_fltemu_exits(
    tmp_path: Path, command: str, recorded: Path
) -> None:
    pid_file = tmp_path / "agent.pid"
    agent = ["sh", "-c", f'echo $$ > "{pid_file}"; exec "$0" "$@"', sys.executable, AGENT]
    if command == "faults":
        path = tmp_path / "long.toml"
        path.write_text(
            SHORT.replace(
                'fault = "unload_reload"\ndelay = [0.01, 0.1]\nfiles = 1',
                'fault = "pause"\ndelay = 3600',
            )  # fmt: skip
        )
        args = ["faults", "run", str(path), "--", *agent]
        started = "#1 files"  # its progress line: the agent is connected and answering
    else:
        # The recording's last message an hour after its first: the replay waits for it.
        late = {"t": 3600.0, "connection": 99, "message_id": 1, "size": 4, "status": 0}
        path = tmp_path / "long.jsonl"
        path.write_text(
            recorded.read_text()
            + json.dumps({**late, "kind": "message", "data": b64(b"late")}) + "\n"
            + json.dumps({**late, "kind": "message_done"}) + "\n"
        )  # fmt: skip
        args = ["replay", str(path), "--", *agent]
        started = "the agent is connected"  # its progress line
    proc = subprocess.Popen(
        [sys.executable, "-m", "fltemu", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    pid = 0
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if started in line:
                break
        pid = int(pid_file.read_text())
        assert _running(pid)
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert "terminated (SIGTERM); the agent was stopped" in err
        assert "Traceback" not in err
        assert not _running(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pid and _running(pid):
            os.kill(pid, signal.SIGKILL)


def test_record_ends_after_its_duration_on_a_quiet_port(tmp_path: Path) -> None:
    # No agent, no message: the trace's read has nothing to return, --duration must end it.
    path = tmp_path / "quiet.jsonl"
    with DaemonProcess(["--filter", "scanner"]) as daemon:
        done = fltemu(
            "record", str(path), "--port", "\\ScannerPort", "--address", daemon.address,
            "--duration", "0.5", timeout=30,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"recorded 0 message(s) into {path}" in done.stderr
    assert json.loads(path.read_text().splitlines()[0])["fltemu_recording"] == RECORDING_FORMAT


def test_record_with_no_daemon_writes_no_file(tmp_path: Path) -> None:
    # It connects before it opens its file: a mistake leaves an existing file as it was.
    out = tmp_path / "kept.jsonl"
    out.write_text("an earlier recording\n")
    done = fltemu(
        "record", str(out), "--port", "\\ScannerPort", "--address", str(tmp_path / "none.sock")
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no fltemu daemon is listening" in done.stderr
    assert out.read_text() == "an earlier recording\n"


def test_plan_into_a_reader_that_stops_early_is_no_error() -> None:
    # fltemu faults plan ... | head -1: the rest of the plan goes nowhere, quietly.
    with subprocess.Popen(
        [sys.executable, "-m", "fltemu", "faults", "plan", "scanner-reload"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"schedule scanner-reload")
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, err
    assert "Error" not in err and "error" not in err
