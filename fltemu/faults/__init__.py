"""Break the kernel on purpose: seeded fault schedules against a user's agent, a verdict on
what it did, and record and replay of a port's traffic (``docs/faults.md``).

``run_schedule(schedule, agent)`` plays a ``Schedule`` (Python objects, a TOML file read by
``load_schedule``, or a built-in one) against the agent's command line and returns a
``Report``; ``Recording`` and ``replay`` keep a port's traffic and play its kernel->user
messages to a new build of the agent. The command line: ``fltemu faults``, ``fltemu record``,
``fltemu replay``.
Not here: the kernel model (``fltemu.kernel``) and the daemon (``fltemu.daemon``) it drives.
"""

from __future__ import annotations

from .builtin import BUILTIN_SCHEDULES, builtin_schedule, builtin_text
from .report import REPORT_FORMAT, EventVerdict, Report
from .runner import FaultRunError, FaultRunner, run_schedule
from .schedule import (
    FAULTS,
    SCHEDULE_FORMAT,
    PlannedEvent,
    Schedule,
    ScheduleError,
    Step,
    Thresholds,
    load_schedule,
    parse_schedule,
)

__all__ = [
    "BUILTIN_SCHEDULES",
    "FAULTS",
    "REPORT_FORMAT",
    "SCHEDULE_FORMAT",
    "EventVerdict",
    "FaultRunError",
    "FaultRunner",
    "PlannedEvent",
    "Report",
    "Schedule",
    "ScheduleError",
    "Step",
    "Thresholds",
    "builtin_schedule",
    "builtin_text",
    "load_schedule",
    "parse_schedule",
    "run_schedule",
]
