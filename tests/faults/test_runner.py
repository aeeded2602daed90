"""Fault schedules run against real agent processes: the test agent (which reconnects, and
can be broken on purpose) and the Python example agents. Every verdict comes from what the
daemon saw (connects, replies, pending gets) and the agent's exit, never from a sleep."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from fltemu.faults import (
    Report,
    Schedule,
    ScheduleError,
    Step,
    Thresholds,
    builtin_schedule,
    run_schedule,
)
from fltemu.faults.runner import FaultRunError

ROOT = Path(__file__).resolve().parents[2]
AGENT = str(Path(__file__).parent / "agents" / "scan_agent.py")
EXAMPLES = ROOT / "examples"
#: Short thresholds: a broken agent is found in about a second.
QUICK = Thresholds(reconnect_within=2.0, answer_within=2.0, hang_after=1.0)
#: Roomy thresholds for agents that pass: a loaded machine must not fail them.
ROOMY = Thresholds(reconnect_within=10.0, answer_within=10.0, hang_after=5.0)


def run(schedule: Schedule, agent: list[str], seed: int | None = None) -> Report:
    return asyncio.run(run_schedule(schedule, agent, seed=seed, start_timeout=30.0))


def scan_agent(*flags: str) -> list[str]:
    return [sys.executable, AGENT, *flags]


def scanner(*steps: Step, thresholds: Thresholds = QUICK) -> Schedule:
    return Schedule("test", "scanner", steps=steps, thresholds=thresholds)


def test_the_scanner_reload_schedule_passes_an_agent_that_reconnects() -> None:
    report = run(builtin_schedule("scanner-reload"), scan_agent())
    assert report.passed, report.to_text()
    reloads = [e for e in report.events if e.event.fault == "unload_reload"]
    assert len(reloads) == 10
    assert all(e.reconnect is not None and e.answering for e in reloads)
    # 5 + 10 x 3 + 5 files, each with exactly one answer, none lost.
    assert (report.files_sent, report.files_answered, report.files_lost) == (40, 40, 0)
    assert report.to_dict()["passed"] is True


def test_every_kind_of_fault_against_an_agent_that_copes() -> None:
    schedule = scanner(
        Step("files", files=3),
        Step("close_connection", params={"which": "all"}, files=2),
        Step("short_timeout", params={"count": 4}),
        Step("burst", params={"count": 50}),
        Step("rate", params={"rate": 200, "duration": 0.25}),
        Step("refuse_connects", params={"count": 2}),
        Step("restart_daemon", params={"delay": 0.05}, files=1),
        Step("malformed", params={"kind": "any", "count": 4}),
        Step("pause", params={"delay": 0.01}),
        thresholds=ROOMY,
    )
    report = run(schedule, scan_agent())
    assert report.passed, report.to_text()
    by_fault = {e.event.fault: e for e in report.events}
    # Timed out at once (a zero timeout polls): each reply came late, got 0x801F0020, counted.
    assert by_fault["short_timeout"].timeouts == 4
    assert by_fault["short_timeout"].late_replies == 4
    assert report.late_replies == 4
    assert by_fault["refuse_connects"].refused == 2
    for fault in ("close_connection", "refuse_connects", "restart_daemon"):
        assert by_fault[fault].reconnect is not None, fault
    assert len(by_fault["malformed"].statuses) == 4
    assert "50 of 50 messages answered" in by_fault["burst"].notes
    assert report.files_lost == 0


def test_the_same_seed_plays_the_same_events() -> None:
    schedule = scanner(
        Step("random", repeat=4, params={"choices": ["burst", "malformed", "close_connection"]})
    )
    first = run(schedule, scan_agent(), seed=9)
    second = run(schedule, scan_agent(), seed=9)
    assert [e.event.to_dict() for e in first.events] == [e.event.to_dict() for e in second.events]
    assert [e.event.to_dict() for e in first.events] == [e.to_dict() for e in schedule.plan(9)]


def test_an_agent_that_does_not_reconnect_after_an_unload_is_named() -> None:
    schedule = scanner(Step("files", files=2), Step("unload_reload", files=2), Step("files"))
    report = run(schedule, scan_agent("--no-reconnect"))
    assert not report.passed
    assert "#2 unload_reload: did not reconnect within 2 s" in report.problems
    assert "#2 unload_reload: the agent exited with status 0" in report.problems
    assert report.exit == "exited with status 0"
    assert len(report.events) == 2  # nothing left to play against
    text = report.to_text()
    assert "FAILED" in text and "did not reconnect within 2 s" in text
    assert report.to_dict()["events"][1]["reconnect"] is None


def test_an_agent_that_crashes_on_a_short_message_is_named() -> None:
    schedule = scanner(
        Step("files", files=2), Step("malformed", params={"kind": "short"}), Step("files")
    )
    report = run(schedule, scan_agent("--crash-on-short"))
    assert not report.passed
    assert report.problems == [
        "#2 malformed: the agent exited with status 1 after a malformed message (short, 4 bytes)"
    ]
    # Its traceback is in the report's tail of output.
    assert any("struct.error" in line for line in report.output)
    # The same schedule passes an agent that checks what it reads.
    assert run(schedule, scan_agent()).passed


def test_a_crash_on_a_short_message_is_named_when_the_process_ends_late() -> None:
    # Its connection closes as it dies, its process ends a while later (as under Wine): the
    # exit is still put down to the malformed message.
    schedule = scanner(Step("malformed", params={"kind": "short"}))
    report = run(schedule, scan_agent("--crash-on-short", "--slow-exit", "0.5"))
    assert report.problems == [
        "#1 malformed: the agent exited with status 1 after a malformed message (short, 4 bytes)"
    ]


def test_wrong_answers_are_counted_against_the_threshold() -> None:
    report = run(scanner(Step("files", files=4)), scan_agent("--wrong"))
    assert report.files_wrong >= 1
    assert f"{report.files_wrong} wrong answer(s) (threshold 0)" in report.problems
    assert any("answered wrongly after the fault" in p for p in report.problems)


def test_a_hung_agent_is_called_hung() -> None:
    report = run(
        scanner(Step("burst", params={"count": 3})), scan_agent("--gets", "1", "--stop-after", "2")
    )
    assert not report.passed
    (problem,) = [p for p in report.problems if "hung" in p]
    assert problem.startswith("#1 burst: hung: no FilterGetMessage pending and no answer")
    assert report.events[0].getters == 0


def test_an_agent_that_leaks_a_handle_after_a_close_grew() -> None:
    report = run(scanner(Step("close_connection", params={"which": "all"})), scan_agent("--leak"))
    assert report.events[0].reconnect is not None
    assert (
        "#1 close_connection: grew: it holds 2 connections to \\ScannerPort (it started with 1)"
        in (report.problems)
    )


def test_the_example_scanner_agent_copes_with_timeouts_bursts_and_bad_bodies() -> None:
    schedule = scanner(
        Step("files", files=4),
        Step("short_timeout", params={"count": 3}),
        Step("burst", params={"count": 30}),
        Step("malformed", params={"kind": "short"}),
        Step("malformed", params={"kind": "out_of_range"}),
        Step("files", files=2),
        thresholds=ROOMY,
    )
    report = run(schedule, [sys.executable, str(EXAMPLES / "scanner_agent.py")])
    assert report.passed, report.to_text()
    assert report.late_replies == 3


def test_the_example_scanner_agent_does_not_reconnect_after_a_reload() -> None:
    # scanUser.c exits when its port is disconnected, and so does the example.
    schedule = builtin_schedule("scanner-reload").with_thresholds(reconnect_within=1.0)
    report = run(schedule, [sys.executable, str(EXAMPLES / "scanner_agent.py")])
    assert "#2 unload_reload: did not reconnect within 1 s" in report.problems
    assert report.exit == "exited with status 0"
    assert any("Port is disconnected" in line for line in report.output)


def test_the_example_minispy_agent_keeps_polling_through_slow_and_failed_answers() -> None:
    schedule = Schedule(
        "minispy",
        "minispy",
        steps=(
            Step("notify_fault", params={"delay": 0.2, "status": "STATUS_SUCCESS", "count": 2}),
            Step("notify_fault", params={"delay": 0.0, "count": 3}),
        ),
        thresholds=ROOMY,
    )
    report = run(schedule, [sys.executable, str(EXAMPLES / "minispy_agent.py")])
    assert report.passed, report.to_text()
    assert [e.faulted for e in report.events] == [2, 3]
    assert all(e.answering for e in report.events)


def test_the_example_avscan_agent_scans_files_through_the_sample() -> None:
    schedule = Schedule(
        "avscan",
        "avscan",
        steps=(Step("files", files=3),),
        settings={"scan_timeout": "5"},
        thresholds=ROOMY,
    )
    report = run(schedule, [sys.executable, str(EXAMPLES / "avscan_agent.py")])
    assert report.passed, report.to_text()
    assert report.files_answered == 3


def test_schedules_that_cannot_run_are_refused_before_anything_starts() -> None:
    minispy = Schedule("m", "minispy", steps=(Step("burst"),))
    with pytest.raises(ScheduleError, match="carries no kernel->user messages"):
        run(minispy, scan_agent())
    with pytest.raises(ScheduleError, match="port = "):
        run(Schedule("x", "fltemu.samples.echo", steps=(Step("pause"),)), scan_agent())
    with pytest.raises(ScheduleError, match="no agent command"):
        run(scanner(Step("pause")), [])


def test_an_agent_that_never_connects_is_a_clear_error() -> None:
    with pytest.raises(FaultRunError) as info:
        run(scanner(Step("pause")), [sys.executable, "-c", "print('no fltuser here')"])
    assert "exited with status 0" in str(info.value)
    assert "no fltuser here" in str(info.value)
    with pytest.raises(FaultRunError, match="cannot start the agent 'no-such-agent-xyz'"):
        run(scanner(Step("pause")), ["no-such-agent-xyz"])


def test_the_python_example_of_docs_faults_md_runs_as_written() -> None:
    text = (ROOT / "docs" / "faults.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start : text.index("```", start)]
    assert '"my_agent.py"' in code
    exec(compile(code.replace('"my_agent.py"', repr(AGENT)), "docs/faults.md", "exec"), {})


@pytest.mark.parametrize("fault", ["burst", "rate"])
def test_a_timeout_of_0_polls_in_bursts_and_rates(fault: str) -> None:
    # timeout = 0 is FltSendMessage's poll (§2.8): no message can be answered in time. It was
    # taken for "not given" and replaced by answer_within, so every message was answered.
    params = {"count": 5} if fault == "burst" else {"rate": 50, "duration": 0.1}
    schedule = scanner(Step(fault, params={**params, "timeout": 0}), thresholds=ROOMY)
    report = run(schedule, scan_agent())
    (event,) = report.events
    assert event.timeouts == 5, report.to_text()
    assert "0 of 5 messages answered" in event.notes
