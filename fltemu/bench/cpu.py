"""The agent's CPU time during a run: every process of its session, and the Wine processes
that serve a Windows agent, each by name (Linux ``/proc``; nothing elsewhere).

A ``CpuWatch`` samples ``/proc`` while the run goes on. It tracks each process of the
agent's Unix session (the agent is started under setsid, so a wrapper such as ``fltemu
wine`` and whatever it starts belong to it) and, when the agent runs under Wine, each
process of the same user whose ``WINEPREFIX`` is the agent's: ``wineserver``,
``services.exe``, ``winedevice.exe`` (which hosts fltemu's driver), ``explorer.exe`` and the
rest, which Wine starts in sessions of their own. Each process counts its own user + system
time from its first sample in the run to its last; a process that exits between two samples
loses at most one interval. The session's leader, reaped by fltemu when it exits during the
run, is counted exactly from the CPU time of reaped children (``RUSAGE_CHILDREN``).
Not here: the run (``load``), printing (``command``).
"""

from __future__ import annotations

import asyncio
import os
import resource
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["SAMPLE_INTERVAL", "CpuWatch", "ProcessCpu"]

#: Seconds between two samples of /proc during a run.
SAMPLE_INTERVAL: Final = 0.2


@dataclass
class ProcessCpu:
    """One process's CPU time during a run.

    Attributes:
        pid: its process id.
        ppid: its parent's, when last seen.
        name: its program (a Windows program's name under Wine, e.g. ``winedevice.exe``).
        role: ``session`` (the agent's own processes) or ``wine`` (Wine's, serving it).
        first: user + system clock ticks at its first sample of the run (0 when it started
            during the run).
        last: the same at its last sample.
        exited: it was gone before the end of the run.
    """

    pid: int
    ppid: int
    name: str
    role: str
    first: int
    last: int
    exited: bool = False

    @property
    def seconds(self) -> float:
        """CPU seconds during the run."""
        return max(0, self.last - self.first) / _TICKS

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "pid": self.pid,
            "name": self.name,
            "role": self.role,
            "cpu_seconds": round(self.seconds, 3),
            "exited": self.exited,
        }


_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[int, int, int, int, int] | None:
    """(session id, parent pid, user + system ticks, the same of the children it waited
    for, start time) of ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # state ppid pgrp session ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19)
    return (
        int(fields[3]),
        int(fields[1]),
        int(fields[11]) + int(fields[12]),
        int(fields[13]) + int(fields[14]),
        int(fields[19]),
    )


def _environ(pid: int | str, name: str) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    key = name.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(key):
            return os.fsdecode(entry[len(key) :])
    return None


def _name(pid: str) -> str:
    """The program's name: argv[0]'s last part (``C:\\windows\\...\\winedevice.exe`` under
    Wine), else the kernel's short name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode("utf-8", "replace")
    except OSError:
        argv0 = ""
    if argv0:
        return argv0.replace("\\", "/").rsplit("/", 1)[-1]
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


class CpuWatch:
    """Samples the CPU time of an agent's processes during a run (see the module's text)."""

    def __init__(self, leader: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.leader = leader
        self.interval = interval
        self.uid = os.getuid()
        #: The agent's Wine prefix, once a process of its session shows one.
        self.prefix: str | None = None
        self.processes: dict[tuple[int, int], ProcessCpu] = {}
        #: (pid, start time) found not to be the agent's: not looked at again.
        self._others: set[tuple[int, int]] = set()
        self._started = False
        #: The run's start, in clock ticks since boot (as /proc/PID/stat's start times).
        self._start_ticks = 0
        self._children_at_start = 0.0
        self._leader_at_start = 0
        self._leader_reaped: float | None = None
        self._task: asyncio.Task[None] | None = None

    def _role(self, pid: str, sid: int) -> str | None:
        if sid == self.leader:
            if self.prefix is None:
                self.prefix = _environ(pid, "WINEPREFIX")
            return "session"
        if self.prefix is None:
            return None
        try:
            if os.stat(f"/proc/{pid}").st_uid != self.uid:
                return None
        except OSError:
            return None
        return "wine" if _environ(pid, "WINEPREFIX") == self.prefix else None

    def sample(self) -> None:
        """One pass over /proc: new processes of the agent's are added, the others updated,
        those gone marked exited."""
        try:
            pids = [name for name in os.listdir("/proc") if name.isdigit()]
        except OSError:
            return
        seen = set()
        for pid in pids:
            stat = _stat(pid)
            if stat is None:
                continue
            sid, ppid, ticks, children, start = stat
            key = (int(pid), start)
            known = self.processes.get(key)
            if known is None:
                if key in self._others:
                    continue
                role = self._role(pid, sid)
                if role is None:
                    if self.prefix is not None:  # else it may be Wine's, once that is known
                        self._others.add(key)
                    continue
                # Present when the run started: counted from now; started since: from 0.
                # Counted from now, unless it started during the run (then from 0).
                first = 0 if self._started and start >= self._start_ticks else ticks
                known = ProcessCpu(int(pid), ppid, _name(pid), role, first, ticks)
                self.processes[key] = known
            if int(pid) == self.leader and not self._started:
                self._leader_at_start = ticks + children
            known.last = ticks
            known.ppid = ppid
            known.exited = False
            seen.add(key)
        for key, process in self.processes.items():
            if key not in seen:
                process.exited = True

    def start(self) -> None:
        """The run starts: what the processes used so far is not counted."""
        self.prefix = _environ(self.leader, "WINEPREFIX")
        self.sample()
        self._started = True
        self._start_ticks = _uptime_ticks()
        self._children_at_start = _children_seconds()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    def leader_reaped(self) -> None:
        """The leader exited during the run and fltemu reaped it: count it exactly."""
        self._leader_reaped = _children_seconds()

    def stop(self) -> list[ProcessCpu]:
        """The run is over: a last sample; each process, the busiest first."""
        if self._task is not None:
            self._task.cancel()
        self.sample()
        if self._leader_reaped is not None:
            # Its own time and that of the children it waited for, from the kernel's count
            # (what it had used at the start taken off); its waited children's samples
            # would count them twice.
            whole = round((self._leader_reaped - self._children_at_start) * _TICKS)
            waited = sum(
                p.last - p.first
                for p in self.processes.values()
                if p.ppid == self.leader and p.exited and p.role == "session"
            )
            for (pid, _), process in self.processes.items():
                if pid == self.leader:
                    during = whole - self._leader_at_start
                    process.last = process.first + max(0, during - waited)
                    process.exited = True
        return sorted(self.processes.values(), key=lambda p: (-p.seconds, p.pid))


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _uptime_ticks() -> int:
    try:
        with open("/proc/uptime") as f:
            return int(float(f.read().split()[0]) * _TICKS)
    except (OSError, ValueError, IndexError):
        return 0
