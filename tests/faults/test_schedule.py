"""Schedules: the TOML format, its checks, and seeded plans (no daemon, no loop)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fltemu.faults import (
    BUILTIN_SCHEDULES,
    SCHEDULE_FORMAT,
    Schedule,
    ScheduleError,
    Step,
    builtin_schedule,
    builtin_text,
    load_schedule,
)
from fltemu.faults.schedule import parse_status
from fltemu.status import NtStatus

MIXED = """
format = 1
name = "mixed"
filter = "scanner"
seed = 5

[thresholds]
reconnect_within = 1.5
lost = 2

[[step]]
fault = "unload_reload"
repeat = 3
delay = [0.01, 0.5]
files = 2

[[step]]
fault = "random"
repeat = 6
choices = ["burst", "malformed", "close_connection"]

[[step]]
fault = "malformed"
kind = "any"
count = 5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedule.toml"
    path.write_text(text)
    return path


def test_a_file_is_read_with_its_thresholds(tmp_path: Path) -> None:
    schedule = load_schedule(write(tmp_path, MIXED))
    assert (schedule.name, schedule.filter, schedule.seed) == ("mixed", "scanner", 5)
    assert schedule.thresholds.reconnect_within == 1.5
    assert schedule.thresholds.lost == 2
    assert schedule.thresholds.answer_within == 5.0  # the default
    assert [step.fault for step in schedule.steps] == ["unload_reload", "random", "malformed"]


def test_the_same_seed_gives_the_same_events_in_the_same_order(tmp_path: Path) -> None:
    schedule = load_schedule(write(tmp_path, MIXED))
    first = [event.to_dict() for event in schedule.plan(11)]
    assert first == [event.to_dict() for event in schedule.plan(11)]
    assert first == [
        event.to_dict() for event in load_schedule(tmp_path / "schedule.toml").plan(11)
    ]
    assert len(first) == 3 + 6 + 1
    assert [event["index"] for event in first] == list(range(1, 11))
    # Another seed draws other delays, choices and bodies.
    assert first != [event.to_dict() for event in schedule.plan(12)]


def test_ranges_are_drawn_within_their_bounds_and_choices_among_theirs(tmp_path: Path) -> None:
    events = load_schedule(write(tmp_path, MIXED)).plan(3)
    delays = [e.params["delay"] for e in events if e.fault == "unload_reload"]
    assert len(delays) == 3 and all(0.01 <= d <= 0.5 for d in delays)
    assert {e.fault for e in events[3:9]} <= {"burst", "malformed", "close_connection"}
    kinds = events[-1].params["kinds"].split(",")
    assert len(kinds) == 5 and set(kinds) <= {"short", "oversized", "out_of_range"}


def test_python_objects_plan_as_files_do() -> None:
    schedule = Schedule(
        "objects",
        "scanner",
        steps=(Step("close_connection", repeat=2, params={"which": "one"}), Step("pause")),
    )
    events = schedule.plan(1)
    assert [e.describe() for e in events] == [
        "#1 close_connection which=one",
        "#2 close_connection which=one",
        "#3 pause delay=0.1",
    ]
    assert schedule.with_thresholds(lost=3).thresholds.lost == 3


def test_a_later_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    text = MIXED.replace("format = 1", f"format = {SCHEDULE_FORMAT + 1}")
    with pytest.raises(ScheduleError) as info:
        load_schedule(write(tmp_path, text))
    message = str(info.value)
    assert f"format {SCHEDULE_FORMAT + 1}, from a later fltemu" in message
    assert "upgrade fltemu" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("format = 1\n", ""), "the first line must be format = 1"),
        (('fault = "malformed"', 'fault = "melt"'), "no fault named 'melt'"),
        (('kind = "any"', 'kind = "long"'), "kind is one of short, oversized, out_of_range"),
        (("delay = [0.01, 0.5]", "delay = [0.5, 0.01]"), "the range [0.5, 0.01] is empty"),
        (("delay = [0.01, 0.5]", "delay = -1"), "-1 is outside 0 to 3600"),
        (("delay = [0.01, 0.5]", "speed = 3"), "no key speed for unload_reload; its keys: delay"),
        (("lost = 2", "lost = -2"), "[thresholds] lost: a whole number >= 0"),
        (("lost = 2", "lots = 2"), "[thresholds]: no key lots"),
        (('filter = "scanner"', ""), 'filter = "NAME"'),
        (('choices = ["burst",', 'choices = ["random",'), "are not faults random can pick"),
        (("repeat = 3", "repeat = 100000"), "repeat is a whole number 0 to 1000"),
    ],
)
def test_a_mistake_is_named_with_where_it_is(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in MIXED
    with pytest.raises(ScheduleError) as info:
        load_schedule(write(tmp_path, MIXED.replace(old, new, 1)))
    assert expected in str(info.value)


def test_every_choice_of_a_random_step_is_checked_whatever_the_seed(tmp_path: Path) -> None:
    # A bad value for the choice the seed does not draw is still named before a run.
    text = """format = 1
filter = "scanner"
seed = 1

[[step]]
fault = "random"
choices = ["pause", "burst"]
count = -5
"""
    for seed in range(8):
        with pytest.raises(ScheduleError, match="count: -5 is outside"):
            load_schedule(write(tmp_path, text.replace("seed = 1", f"seed = {seed}")))


def test_not_toml_and_no_file_are_errors_too(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="is not valid TOML"):
        load_schedule(write(tmp_path, "format = = 1"))
    with pytest.raises(ScheduleError, match="cannot read the schedule"):
        load_schedule(tmp_path / "missing.toml")


def test_statuses_by_name_or_number() -> None:
    assert parse_status("STATUS_TIMEOUT") is NtStatus.STATUS_TIMEOUT
    assert parse_status("status_timeout") is NtStatus.STATUS_TIMEOUT
    assert parse_status("0xC000009A") is NtStatus.STATUS_INSUFFICIENT_RESOURCES
    assert parse_status(0) is NtStatus.STATUS_SUCCESS
    with pytest.raises(ScheduleError, match="not a status name"):
        parse_status("STATUS_NONSENSE")


@pytest.mark.parametrize("name", BUILTIN_SCHEDULES)
def test_builtin_schedules_parse_and_plan(name: str) -> None:
    schedule = builtin_schedule(name)
    assert schedule.name == name
    assert schedule.plan() == schedule.plan()
    assert builtin_text(name).startswith("format = 1\n")


def test_there_is_a_builtin_schedule_for_each_sample() -> None:
    assert {builtin_schedule(n).filter for n in BUILTIN_SCHEDULES} == {
        "scanner",
        "minispy",
        "avscan",
    }
    reload = builtin_schedule("scanner-reload").plan()
    assert sum(e.fault == "unload_reload" for e in reload) == 10
    with pytest.raises(ScheduleError, match="no built-in schedule 'nope'"):
        builtin_schedule("nope")


def test_the_layers_below_do_not_import_the_faults() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fltemu, fltemu.kernel, fltemu.daemon.server, fltuser; "
        "print([m for m in sys.modules if m.startswith('fltemu.faults')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
