"""The environment record: versions, machine, load, placement and the git state measured."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from typing import Any

from .layout import BENCH_DIR
from .machine import Placement, read_file


def _cpu_model() -> str:
    text = read_file("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def cc_version() -> str | None:
    """The first line of ``cc --version``, or None without a compiler."""
    cc = shutil.which("cc")
    if cc is None:
        return None
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.splitlines()[0] if out.stdout else None


def git_state() -> dict[str, Any] | None:
    """The commit measured and how many files of the code under test differ from it."""
    git = shutil.which("git")
    if git is None:
        return None
    root = str(BENCH_DIR.parent)
    try:
        head = subprocess.run(
            [git, "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        status = subprocess.run(
            [git, "-C", root, "status", "--porcelain", "--", "fltemu", "client"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {
        "commit": head.stdout.strip(),
        "modified_files": len([line for line in status.stdout.splitlines() if line.strip()]),
    }


def environment(placement: Placement | None = None) -> dict[str, Any]:
    """Versions, machine, load and placement: the first record every script prints."""
    mem_total = None
    for line in (read_file("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    env: dict[str, Any] = {
        "bench": "env",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "msgspec": _version("msgspec"),
        "uvloop": _version("uvloop"),
        "fltemu": _version("fltemu"),
        "cc": cc_version(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": affinity,
        "mem_total_bytes": mem_total,
        "loadavg": list(load) if load else None,
        "cpuidle_driver": read_file("/sys/devices/system/cpu/cpuidle/current_driver"),
        "git": git_state(),
    }
    if placement is not None:
        env["placement"] = placement.as_dict()
    return env
