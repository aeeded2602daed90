"""The verdict on an agent: one ``EventVerdict`` per planned event, and the ``Report`` of a
run, in text for people and JSON for CI (``REPORT_FORMAT``).

Every problem is a sentence that names the event and what the agent did ("#3
unload_reload: did not reconnect within 2 s"); ``Report.passed`` is false when there is any,
and the command then exits 1.
Not here: running (``runner``).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from typing import Any, Final

from .schedule import PlannedEvent, Thresholds

__all__ = ["REPORT_FORMAT", "EventVerdict", "Report", "exit_words"]

#: The version of the JSON report (its ``format`` key).
REPORT_FORMAT: Final = 1


def exit_words(returncode: int) -> str:
    """An exit status in words: ``exited with status 0``, ``killed by SIGSEGV (signal 11)``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by {name} (signal {-returncode})"
    return f"exited with status {returncode}"


@dataclass
class EventVerdict:
    """What the agent did around one event.

    Attributes:
        event: the planned event.
        reconnect: seconds from the end of the fault to the agent's next connection, for the
            faults that end it; ``None`` when it did not reconnect (or the fault keeps it).
        answering: whether it answered the probe after the event (``None``: not asked, the
            agent was gone).
        files_sent, files_answered, files_wrong: this event's files, and how many of their
            answers came and were wrong (files still unanswered at the end are ``lost``).
        late_replies: replies that came after their FltSendMessage had timed out
            (FilterReplyMessage answered 0x801F0020).
        timeouts: FltSendMessage calls that returned STATUS_TIMEOUT.
        queued: the most kernel->user messages seen waiting for a FilterGetMessage at once.
        refused: connects refused with STATUS_CONNECTION_COUNT_LIMIT.
        faulted: MessageNotify calls delayed or failed.
        statuses: what each malformed message's FltSendMessage returned.
        connections, getters: the agent's connections and pending FilterGetMessage calls
            after the event.
        exit: the agent's exit in words, when it exited during or right after the event.
        problems: each threshold this event broke, in words.
        notes: what else was seen.
    """

    event: PlannedEvent
    reconnect: float | None = None
    answering: bool | None = None
    files_sent: int = 0
    files_answered: int = 0
    files_wrong: int = 0
    late_replies: int = 0
    timeouts: int = 0
    queued: int = 0
    refused: int = 0
    faulted: int = 0
    statuses: list[str] = field(default_factory=list)
    connections: int = 0
    getters: int = 0
    exit: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        """Add a broken threshold, named after the event."""
        self.problems.append(f"#{self.event.index} {self.event.fault}: {text}")

    def to_dict(self) -> dict[str, Any]:
        """The event's verdict as the JSON report shows it."""
        return {
            **self.event.to_dict(),
            "reconnect": self.reconnect,
            "answering": self.answering,
            "files_sent": self.files_sent,
            "files_answered": self.files_answered,
            "files_wrong": self.files_wrong,
            "late_replies": self.late_replies,
            "timeouts": self.timeouts,
            "queued": self.queued,
            "refused": self.refused,
            "faulted": self.faulted,
            "statuses": list(self.statuses),
            "connections": self.connections,
            "getters": self.getters,
            "exit": self.exit,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "ok": not self.problems,
        }

    def line(self) -> str:
        """One line: the event, what was measured, ok or the problems."""
        parts: list[str] = []
        if self.reconnect is not None:
            parts.append(f"reconnected in {self.reconnect:.3f} s")
        if self.files_sent:
            parts.append(f"files {self.files_answered}/{self.files_sent} answered")
        if self.files_wrong:
            parts.append(f"{self.files_wrong} wrong")
        for name, value in (
            ("late replies (0x801F0020)", self.late_replies),
            ("timeouts", self.timeouts),
            ("queued at most", self.queued),
            ("connects refused", self.refused),
            ("MessageNotify calls faulted", self.faulted),
        ):
            if value:
                parts.append(f"{name} {value}")
        if self.statuses:
            parts.append("statuses " + ", ".join(self.statuses))
        if self.answering is not None:
            parts.append("answering" if self.answering else "not answering")
        if self.exit is not None:
            parts.append(f"agent {self.exit}")
        parts += self.notes
        verdict = "ok" if not self.problems else "FAIL"
        return f"{self.event.describe()}: {verdict}" + (f" ({'; '.join(parts)})" if parts else "")


@dataclass
class Report:
    """The verdict on one run of a schedule against an agent.

    Attributes:
        schedule: the schedule's name.
        seed: the seed the plan was drawn from.
        agent: the agent's command line.
        thresholds: what counted as a pass.
        events: one verdict per event, in the plan's order (events after the agent exited
            are not run and not listed).
        planned: how many events the plan had.
        files_sent, files_answered, files_wrong, files_lost: over the whole run.
        late_replies: over the whole run.
        exit: the agent's exit in words, if it exited before the end.
        problems: every broken threshold, in words (events' and the run's).
        output: the agent's last lines of output when the run failed.
    """

    schedule: str
    seed: int
    agent: list[str]
    thresholds: Thresholds
    events: list[EventVerdict] = field(default_factory=list)
    planned: int = 0
    files_sent: int = 0
    files_answered: int = 0
    files_wrong: int = 0
    files_lost: int = 0
    late_replies: int = 0
    exit: str | None = None
    problems: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No threshold was broken."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``format`` = ``REPORT_FORMAT``)."""
        return {
            "format": REPORT_FORMAT,
            "schedule": self.schedule,
            "seed": self.seed,
            "agent": list(self.agent),
            "thresholds": self.thresholds.to_dict(),
            "passed": self.passed,
            "planned": self.planned,
            "files": {
                "sent": self.files_sent,
                "answered": self.files_answered,
                "wrong": self.files_wrong,
                "lost": self.files_lost,
            },
            "late_replies": self.late_replies,
            "exit": self.exit,
            "problems": list(self.problems),
            "events": [event.to_dict() for event in self.events],
            "output": list(self.output),
        }

    def to_json(self) -> str:
        """The JSON report, indented."""
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """The report for people: one line per event, the totals, the verdict."""
        lines = [
            f"fltemu faults: schedule {self.schedule}, seed {self.seed}, "
            f"agent: {' '.join(self.agent)}"
        ]
        lines += [f"  {event.line()}" for event in self.events]
        if len(self.events) < self.planned:
            lines.append(f"  ({self.planned - len(self.events)} later events not run)")
        lines.append(
            f"files: {self.files_sent} sent, {self.files_answered} answered, "
            f"{self.files_wrong} wrong, {self.files_lost} lost; "
            f"late replies: {self.late_replies}"
        )
        if self.passed:
            lines.append("PASSED")
        else:
            lines.append(f"FAILED: {len(self.problems)} problem(s):")
            lines += [f"  - {problem}" for problem in self.problems]
            if self.output:
                lines.append("the agent's last output:")
                lines += [f"  | {line}" for line in self.output]
        return "\n".join(lines)
