"""This machine's CPUs and /proc: placement of the processes, memory and busy time."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any


def read_file(path: str) -> str | None:
    """The text of a small file such as one of /proc, stripped; None if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


@dataclass
class Placement:
    """Which CPU the client (this process) and the servers run on.

    The method of docs/ipc-limits.md: server on cpu1, client on cpu0 ("split"), so that each side
    owns a core and the numbers repeat. Without two CPUs, or with ``--no-pin``, nothing is
    pinned and the reason is recorded.
    """

    pinned: bool
    client_cpu: int | None
    server_cpu: int | None
    note: str

    @classmethod
    def choose(cls, no_pin: bool) -> Placement:
        """Decide, and pin this process to the client CPU."""
        if no_pin:
            return cls(False, None, None, "not pinned (--no-pin)")
        if not hasattr(os, "sched_setaffinity"):
            return cls(False, None, None, "not pinned (no sched_setaffinity on this OS)")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(False, None, None, f"not pinned (only CPU {cpus} available)")
        client, server = cpus[0], cpus[1]
        os.sched_setaffinity(0, {client})
        return cls(True, client, server, f"pinned: servers on cpu{server}, clients on cpu{client}")

    def pin_server(self, pid: int) -> None:
        """Pin every thread of process ``pid`` to the server CPU."""
        if self.pinned and self.server_cpu is not None:
            pin_process(pid, self.server_cpu)

    def pin_client(self, pid: int) -> None:
        """Pin every thread of process ``pid`` (a helper client) to the client CPU."""
        if self.pinned and self.client_cpu is not None:
            pin_process(pid, self.client_cpu)

    def as_dict(self) -> dict[str, Any]:
        """For the environment record."""
        return {
            "pinned": self.pinned,
            "client_cpu": self.client_cpu,
            "server_cpu": self.server_cpu,
            "method": "os.sched_setaffinity" if self.pinned else None,
            "note": self.note,
        }


def pin_process(pid: int, cpu: int) -> None:
    """Pin all current threads of ``pid`` to ``cpu``; threads started later inherit it."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(tid, {cpu})


def proc_status(pid: int) -> dict[str, int]:
    """Memory figures (bytes) from /proc/<pid>/status: VmRSS, RssAnon, VmHWM, ..."""
    out: dict[str, int] = {}
    for line in (read_file(f"/proc/{pid}/status") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def busy_cpu_s() -> float | None:
    """Seconds all CPUs spent busy since boot, from /proc/stat (None where there is none)."""
    line = (read_file("/proc/stat") or "").partition("\n")[0].split()
    if not line or line[0] != "cpu":
        return None
    ticks = [int(x) for x in line[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
