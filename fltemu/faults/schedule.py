"""Fault schedules: what to break, in which order, and what counts as a pass.

A ``Schedule`` is a list of ``Step`` objects (one fault each, maybe repeated) and the
``Thresholds`` the agent must meet. ``Schedule.plan(seed)`` turns it into the concrete list of
``PlannedEvent`` objects: every range drawn, every random choice made, from one
``random.Random(seed)``, so the same seed always gives the same events in the same order.
A schedule is written as Python objects in a test, or as a small TOML file
(``load_schedule``); the file format is versioned (``SCHEDULE_FORMAT``) and documented in
``docs/faults.md``. Not here: running a plan (``runner``), the built-in schedules
(``builtin``).
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from ..errors import FltEmuError
from ..status import NtStatus

__all__ = [
    "FAULTS",
    "SCHEDULE_FORMAT",
    "PlannedEvent",
    "Schedule",
    "ScheduleError",
    "Step",
    "Thresholds",
    "load_schedule",
    "parse_schedule",
    "parse_status",
]

#: The schedule file format this fltemu reads (the ``format`` key); a later one is refused.
SCHEDULE_FORMAT: Final = 1

#: Every fault a step can name, and the keys it takes beyond ``fault``, ``repeat`` and
#: ``files`` (what the keys mean: ``docs/faults.md``).
FAULTS: Final[dict[str, tuple[str, ...]]] = {
    "files": (),
    "pause": ("delay",),
    "unload_reload": ("delay",),
    "close_connection": ("which",),
    "notify_fault": ("delay", "status", "count"),
    "short_timeout": ("count", "timeout"),
    "burst": ("count", "timeout"),
    "rate": ("rate", "duration", "timeout"),
    "refuse_connects": ("count",),
    "restart_daemon": ("delay",),
    "malformed": ("kind", "count"),
    "random": ("choices",),
}

#: The bodies ``malformed`` can send; ``any`` draws one of them per message.
MALFORMED_KINDS: Final = ("short", "oversized", "out_of_range")

_STEP_KEYS: Final = ("fault", "repeat", "files")
_DEFAULTS: Final[dict[str, Any]] = {
    "delay": 0.1,
    "which": "one",
    "status": "STATUS_INSUFFICIENT_RESOURCES",
    "count": 1,
    "timeout": None,
    "rate": 50.0,
    "duration": 1.0,
    "kind": "any",
}
#: The most a step may repeat, files it may keep in flight, messages it may send at once.
MAX_REPEAT: Final = 1000
MAX_COUNT: Final = 100_000


class ScheduleError(FltEmuError, ValueError):
    """A schedule (file or objects) that cannot be run; the message says what to change."""


def parse_status(value: object) -> NtStatus:
    """An NTSTATUS from a name (``STATUS_TIMEOUT``) or a number (``0xC000009A``, 3221225626).

    Raises:
        ScheduleError: no such status.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.upper() in NtStatus.__members__:
            return NtStatus[text.upper()]
        try:
            number = int(text, 0)
        except ValueError:
            raise ScheduleError(
                f"status {value!r}: not a status name (e.g. STATUS_INSUFFICIENT_RESOURCES) "
                "nor a number (e.g. 0xC000009A)"
            ) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ScheduleError(f"status {value!r}: give a status name or a number")
    try:
        return NtStatus(number)
    except ValueError:
        raise ScheduleError(f"status 0x{number:08X} is not an NTSTATUS fltemu knows") from None


@dataclass(frozen=True)
class Thresholds:
    """What the agent must do for the run to pass (the command then exits 0).

    Attributes:
        reconnect_within: seconds within which the agent must reconnect after a fault that
            ended its connection (unload, FltCloseClientPort, refusals, daemon restart).
        answer_within: seconds within which the agent must answer a probe message (or, on a
            port without kernel->user messages, make a FilterSendMessage call) after each
            fault.
        hang_after: seconds with no pending FilterGetMessage and no answer after which a
            connected agent is called hung.
        lost: how many files may end the run without an answer from the agent.
        wrong: how many answers may differ from what the port's layout expects.
        growth: how many connections or pending gets beyond its first ones the agent may hold.
        exit_allowed: whether the agent may exit during the run (a crash is never a pass
            unless this is true).
    """

    reconnect_within: float = 2.0
    answer_within: float = 5.0
    hang_after: float = 5.0
    lost: int = 0
    wrong: int = 0
    growth: int = 0
    exit_allowed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as the JSON report shows them."""
        return {
            "reconnect_within": self.reconnect_within,
            "answer_within": self.answer_within,
            "hang_after": self.hang_after,
            "lost": self.lost,
            "wrong": self.wrong,
            "growth": self.growth,
            "exit_allowed": self.exit_allowed,
        }


@dataclass(frozen=True)
class Step:
    """One fault of a schedule, as written.

    Attributes:
        fault: one of ``FAULTS``.
        repeat: how many times in a row (each a separate event with its own draws).
        files: files (valid messages of the port's layout) in flight when the fault hits;
            each must still get an answer from the agent before the run ends.
        params: the fault's own keys (``FAULTS``); a number may be given as ``[low, high]``,
            drawn from the seed for each event; ``random``'s ``choices`` is a list of faults.
    """

    fault: str
    repeat: int = 1
    files: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedEvent:
    """One event of a plan: a fault with every value decided.

    Attributes:
        index: its place in the plan, from 1.
        fault: one of ``FAULTS`` (never ``random``).
        files: files in flight when it hits.
        params: the fault's keys, every range drawn and every default filled in.
    """

    index: int
    fault: str
    files: int
    params: Mapping[str, Any]

    def describe(self) -> str:
        """``#3 unload_reload delay=0.12 files=2``."""
        values = " ".join(
            f"{key}={_show(value)}"
            for key, value in self.params.items()
            if key not in _HIDDEN and value is not None
        )
        files = f" files={self.files}" if self.files else ""
        return f"#{self.index} {self.fault}{' ' + values if values else ''}{files}"

    def to_dict(self) -> dict[str, Any]:
        """The event as the JSON report shows it."""
        params = {k: (v.name if isinstance(v, NtStatus) else v) for k, v in self.params.items()}
        return {"index": self.index, "fault": self.fault, "files": self.files, "params": params}


#: Drawn values that mean nothing to people (they are in the JSON report).
_HIDDEN: Final = frozenset({"content_seed", "pick"})


def _show(value: object) -> str:
    if isinstance(value, NtStatus):
        return value.name
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


@dataclass(frozen=True)
class Schedule:
    """A fault schedule: which filter, which port, which faults, what counts as a pass.

    Attributes:
        name: a short name for reports.
        filter: the filter the run loads: a built-in sample (``scanner``, ``minispy``,
            ``avscan``) or ``MODULE[:FUNCTION]``, as ``fltemu serve --filter``.
        steps: the faults, in order.
        port: the port watched and faulted (default: the layout's).
        layout: how valid and malformed messages of the port look: ``scanner``, ``avscan``,
            ``minispy`` or ``raw`` (default: the filter's name when it is a sample, else
            ``raw``).
        settings: the filter's settings (``--set FILTER.KEY=VALUE``).
        seed: the seed when the command line gives none.
        thresholds: what counts as a pass.
        description: a line for people.
    """

    name: str
    filter: str
    steps: tuple[Step, ...]
    port: str | None = None
    layout: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    thresholds: Thresholds = field(default_factory=Thresholds)
    description: str = ""

    def with_thresholds(self, **changes: Any) -> Schedule:
        """A copy with some thresholds changed (``reconnect_within=1.0``)."""
        return replace(self, thresholds=replace(self.thresholds, **changes))

    def plan(self, seed: int | None = None) -> list[PlannedEvent]:
        """The concrete events for ``seed`` (default: the schedule's own): the same seed
        gives the same list.

        Raises:
            ScheduleError: a step that cannot be planned (unknown fault or key, bad value).
        """
        rng = random.Random(self.seed if seed is None else seed)
        events: list[PlannedEvent] = []
        for number, step in enumerate(self.steps, 1):
            for _ in range(step.repeat):
                fault, params = _draw_step(step, rng, number)
                events.append(PlannedEvent(len(events) + 1, fault, step.files, params))
        return events


def _check_number(value: object, what: str, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScheduleError(f"{what}: {value!r} is not a number")
    if not minimum <= value <= maximum:
        raise ScheduleError(f"{what}: {value} is outside {minimum:g} to {maximum:g}")
    return float(value)


def _draw_number(
    value: object, rng: random.Random, what: str, minimum: float, maximum: float, integer: bool
) -> float | int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ScheduleError(f"{what}: a range is [low, high], not {list(value)!r}")
        low = _check_number(value[0], what, minimum, maximum)
        high = _check_number(value[1], what, minimum, maximum)
        if low > high:
            raise ScheduleError(f"{what}: the range [{low:g}, {high:g}] is empty")
        if integer:
            return rng.randint(int(low), int(high))
        return round(rng.uniform(low, high), 6)
    number = _check_number(value, what, minimum, maximum)
    if integer:
        if number != int(number):
            raise ScheduleError(f"{what}: {value} is not a whole number")
        return int(number)
    return number


#: key -> (minimum, maximum, whole number)
_NUMBERS: Final[dict[str, tuple[float, float, bool]]] = {
    "delay": (0.0, 3600.0, False),
    "count": (1, MAX_COUNT, True),
    "timeout": (0.0, 3600.0, False),
    "rate": (0.1, 100_000.0, False),
    "duration": (0.0, 3600.0, False),
}


def _draw_step(step: Step, rng: random.Random, number: int) -> tuple[str, dict[str, Any]]:
    where = f"step {number} ({step.fault})"
    fault = step.fault
    raw = dict(step.params)
    if fault not in FAULTS:
        raise ScheduleError(f"{where}: no fault named {fault!r}; faults: {', '.join(FAULTS)}")
    if fault == "random":
        choices = raw.get("choices")
        if (
            not isinstance(choices, (list, tuple))
            or not choices
            or not all(isinstance(c, str) for c in choices)
        ):
            raise ScheduleError(f"{where}: choices is a list of fault names")
        bad = [c for c in choices if c not in FAULTS or c == "random"]
        if bad:
            raise ScheduleError(f"{where}: choices {bad} are not faults random can pick")
        fault = rng.choice(list(choices))
        raw = {k: v for k, v in raw.items() if k != "choices" and k in FAULTS[fault]}
    allowed = FAULTS[fault]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        keys = ", ".join(allowed) or "none"
        raise ScheduleError(f"{where}: no key {', '.join(unknown)} for {fault}; its keys: {keys}")
    params: dict[str, Any] = {}
    for key in allowed:
        value = raw.get(key, _DEFAULTS.get(key))
        if key == "timeout" and value is None:
            # short_timeout polls (0: the reply can only come late); the others wait as long
            # as the thresholds' answer_within.
            params[key] = 0.0 if fault == "short_timeout" else None
        elif key in _NUMBERS:
            low, high, integer = _NUMBERS[key]
            params[key] = _draw_number(value, rng, f"{where}: {key}", low, high, integer)
        elif key == "status":
            params[key] = parse_status(value)
        elif key == "which":
            if value not in ("one", "all"):
                raise ScheduleError(f"{where}: which is 'one' or 'all', not {value!r}")
            params[key] = value
            if value == "one":
                # Which connection, as an index into the port's connections by age.
                params["pick"] = rng.randrange(1 << 16)
        elif key == "kind":
            if value not in (*MALFORMED_KINDS, "any"):
                raise ScheduleError(
                    f"{where}: kind is one of {', '.join(MALFORMED_KINDS)} or any, not {value!r}"
                )
            params[key] = value
    if fault == "malformed":
        kinds = [
            rng.choice(MALFORMED_KINDS) if params["kind"] == "any" else params["kind"]
            for _ in range(params["count"])
        ]
        params["kinds"] = ",".join(kinds)
    if fault in ("files", "malformed", "burst", "short_timeout", "rate") or step.files:
        # The contents of the files and messages this event sends.
        params["content_seed"] = rng.randrange(1 << 32)
    return fault, params


def _step_from(table: object, number: int) -> Step:
    if not isinstance(table, Mapping):
        raise ScheduleError(f"step {number}: a [[step]] table, not {table!r}")
    fault = table.get("fault")
    if not isinstance(fault, str):
        raise ScheduleError(f'step {number}: every [[step]] needs fault = "NAME"')
    repeat = table.get("repeat", 1)
    files = table.get("files", 0)
    for key, value, top in (("repeat", repeat, MAX_REPEAT), ("files", files, MAX_COUNT)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise ScheduleError(f"step {number} ({fault}): {key} is a whole number 0 to {top}")
    params = {k: v for k, v in table.items() if k not in _STEP_KEYS}
    return Step(fault, repeat, files, params)


def _thresholds_from(table: object) -> Thresholds:
    if table is None:
        return Thresholds()
    if not isinstance(table, Mapping):
        raise ScheduleError("[thresholds] is a table")
    known = Thresholds().to_dict()
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ScheduleError(
            f"[thresholds]: no key {', '.join(unknown)}; its keys: {', '.join(known)}"
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        default = known[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ScheduleError(f"[thresholds] {key}: true or false, not {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ScheduleError(f"[thresholds] {key}: a whole number >= 0, not {value!r}")
        else:
            value = _check_number(value, f"[thresholds] {key}", 0.0, 3600.0)
        values[key] = value
    return Thresholds(**values)


def parse_schedule(data: Mapping[str, Any], source: str = "the schedule") -> Schedule:
    """A ``Schedule`` from a parsed TOML document (see ``docs/faults.md``).

    Raises:
        ScheduleError: a missing or later ``format``, or any key or value that is wrong.
    """
    version = data.get("format")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ScheduleError(f"{source}: the first line must be format = {SCHEDULE_FORMAT}")
    if version > SCHEDULE_FORMAT:
        raise ScheduleError(
            f"{source} is format {version}, from a later fltemu; this fltemu reads format "
            f"{SCHEDULE_FORMAT} and earlier: upgrade fltemu (pip install -U fltemu)"
        )
    if version < 1:
        raise ScheduleError(f"{source}: format {version} does not exist; use {SCHEDULE_FORMAT}")
    known = {
        "format", "name", "description", "filter", "port", "layout", "settings", "seed",
        "thresholds", "step",
    }  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScheduleError(
            f"{source}: no key {', '.join(unknown)}; keys: {', '.join(sorted(known))}"
        )
    flt = data.get("filter")
    if not isinstance(flt, str) or not flt:
        raise ScheduleError(f'{source}: filter = "NAME" (scanner, minispy, avscan or a module)')
    steps = data.get("step")
    if not isinstance(steps, list) or not steps:
        raise ScheduleError(f"{source}: no [[step]]: a schedule needs at least one fault")
    settings = data.get("settings", {})
    if not isinstance(settings, Mapping) or not all(isinstance(v, str) for v in settings.values()):
        raise ScheduleError(f'{source}: settings is a table of strings (KEY = "VALUE")')
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ScheduleError(f"{source}: seed is a whole number")
    for key in ("name", "description", "port", "layout"):
        if key in data and not isinstance(data[key], str):
            raise ScheduleError(f"{source}: {key} is a string")
    schedule = Schedule(
        name=data.get("name", Path(source).stem),
        filter=flt,
        steps=tuple(_step_from(table, n) for n, table in enumerate(steps, 1)),
        port=data.get("port"),
        layout=data.get("layout"),
        settings=dict(settings),
        seed=seed,
        thresholds=_thresholds_from(data.get("thresholds")),
        description=data.get("description", ""),
    )
    schedule.plan()  # every step's keys and values checked now, not in the middle of a run
    for number, step in enumerate(schedule.steps, 1):
        # And every choice of a random step, not only the one this seed draws.
        for choice in step.params.get("choices", ()) if step.fault == "random" else ():
            params = {k: v for k, v in step.params.items() if k in FAULTS[choice]}
            _draw_step(replace(step, fault=choice, params=params), random.Random(0), number)
    return schedule


def load_schedule(path: str | Path) -> Schedule:
    """Read a schedule file (TOML, ``docs/faults.md``).

    Raises:
        ScheduleError: the file cannot be read, is not UTF-8 TOML, or is not a valid schedule.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScheduleError(f"cannot read the schedule {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ScheduleError(
            f"{path} is not a schedule (not UTF-8 text): give a TOML schedule file "
            "(fltemu faults show NAME prints one)"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleError(f"{path} is not valid TOML: {exc}") from exc
    return parse_schedule(data, str(path))
