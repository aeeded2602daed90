"""Shared machinery of the benchmark scripts: options, placement, processes, timing, output.

Every script measures a rate (requests or messages per second) over a fixed window after a
warm-up, repeats it with fresh server processes, and reports the median together with its
ratio to references measured in the same run (the C pair, the bare uvloop pair). On the
2-vCPU VMs this project runs on, absolute sequential rates are set by a ~20 µs vCPU wake-up
(docs/ipc-limits.md), so only such ratios carry over between runs.
Not here: what is measured (the ``bench_*`` scripts, ``baseline``), the C code (``c/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

BENCH_DIR: Final = Path(__file__).resolve().parent
BUILD_DIR: Final = BENCH_DIR / "_build"
C_DIR: Final = BENCH_DIR / "c"
#: Headers the C programs include: the Windows side's wire encoder and decoder among them.
C_INCLUDE: Final = BENCH_DIR.parent / "client" / "windows" / "include"

#: The benchmark filter module the daemon loads (benchmarks/_bench_filter.py).
FILTER_MODULE: Final = "_bench_filter"
ECHO_PORT: Final = "\\BenchEcho"
K2U_PORT: Final = "\\BenchK2U"
CTL_PORT: Final = "\\BenchCtl"

#: The measurement method of docs/ipc-limits.md: 0.3 s warm-up, 1.0 s measured, 5 fresh runs.
DEFAULT_WARMUP_S: Final = 0.3
DEFAULT_MEASURE_S: Final = 1.0
DEFAULT_REPEATS: Final = 5
#: --quick: just long enough to push every code path through a few hundred messages.
QUICK_WARMUP_S: Final = 0.02
QUICK_MEASURE_S: Final = 0.06

#: The default scenarios: name -> (connections, requests in flight per connection).
SCENARIOS: Final[dict[str, tuple[int, int]]] = {
    "seq": (1, 1),
    "pipe64": (1, 64),
    "conc8": (8, 1),
}

#: How long a server process may take to say it is ready.
STARTUP_TIMEOUT_S: Final = 20.0

#: The speed targets, checked by run_all.py. Each names the script's row it reads (``bench``
#: and ``match``; rows of the uvloop daemon first), the figure (``metric``) and its goal
#: (``min`` or ``max``); a target without a goal is reported for information. Every figure is a
#: ratio to a reference measured in the same run, except the memory ones.
TARGETS: Final[list[dict[str, Any]]] = [
    {
        "id": "cpu-k2u64",
        "what": "daemon CPU per message, kernel->user, 64 readers (native client)",
        "bench": "daemon",
        "match": {"impl": "fltemu", "mode": "k2u", "depth": 64},
        "metric": "cpu_ratio_base",
        "max": 1 / 3,
    },
    {
        "id": "cpu-send64",
        "what": "daemon CPU per message, user->kernel sends, 64 in flight (native client)",
        "bench": "daemon",
        "match": {"impl": "fltemu", "mode": "send", "depth": 64},
        "metric": "cpu_ratio_base",
        "max": 1 / 3,
    },
    {
        "id": "k2u64",
        "what": "kernel->user send_message + reply, 64 pending readers, reply_and_get (async)",
        "bench": "kernel_to_user",
        "match": {"impl": "fltemu", "client": "async", "readers": 64, "reader": "reply_and_get"},
        "metric": "ratio_bare",
        "min": 1.0,
    },
    {
        "id": "k2u1",
        "what": "kernel->user send_message + reply, 1 reader, reply_and_get (async client)",
        "bench": "kernel_to_user",
        "match": {"impl": "fltemu", "client": "async", "readers": 1, "reader": "reply_and_get"},
        "metric": "ratio_bare",
        "min": 0.9,
    },
    {
        "id": "k2u1-separate",
        "what": "kernel->user, 1 reader, reply then get_message (async client)",
        "bench": "kernel_to_user",
        "match": {"impl": "fltemu", "client": "async", "readers": 1, "reader": "reply, get"},
        "metric": "ratio_bare",
    },
    {
        "id": "seq-sync",
        "what": "user->kernel send, sequential (sync client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "sync", "scenario": "seq"},
        "metric": "ratio_bare",
        "min": 0.9,
    },
    {
        "id": "seq-async",
        "what": "user->kernel send, sequential (async client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "async", "scenario": "seq"},
        "metric": "ratio_bare",
        "min": 0.9,
    },
    {
        "id": "conc8",
        "what": "user->kernel send, 8 connections each sequential (async client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "async", "scenario": "conc8"},
        "metric": "ratio_bare",
        "min": 0.9,
    },
    {
        "id": "pipe64",
        "what": "user->kernel send, 64 in flight on one connection (async client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "async", "scenario": "pipe64"},
        "metric": "ratio_bare",
        "min": 1.2,
    },
    {
        "id": "pipe64-sync",
        "what": "user->kernel send, 64 threads on one connection (sync client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "sync", "scenario": "pipe64"},
        "metric": "ratio_bare",
    },
    {
        "id": "k2u64-sync",
        "what": "kernel->user, 64 reader threads on one connection (sync client)",
        "bench": "kernel_to_user",
        "match": {"impl": "fltemu", "client": "sync", "readers": 64, "reader": "reply_and_get"},
        "metric": "ratio_bare",
    },
    {
        "id": "idle-mem",
        "what": "daemon memory per idle connection (KiB)",
        "bench": "connections",
        "match": {"kind": "summary"},
        "metric": "kib_per_connection",
        "max": 20.0,
    },
    {
        "id": "idle-effect",
        "what": "1,000 idle connections: largest change of another figure (%)",
        "bench": "connections",
        "match": {"kind": "summary"},
        "metric": "max_abs_change_pct",
        "max": 10.0,
    },
]


# --- options ---------------------------------------------------------------------------------


def csv_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type for comma-separated lists: ``64,4096``."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(part) for part in text.split(",") if part]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def choices_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated subset of ``allowed``."""

    def parse(text: str) -> list[str]:
        items = [part for part in text.split(",") if part]
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated)")
        return items

    return parse


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every script has."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny windows and one repeat: a smoke test that the script works (used by tests)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument(
        "--versions", action="store_true", help="print the environment and versions, then exit"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the payload bytes")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"runs per configuration, each with fresh servers (default {DEFAULT_REPEATS}, "
        "1 with --quick); the median is reported",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help=f"seconds of warm-up (default {DEFAULT_WARMUP_S})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds measured per run (default {DEFAULT_MEASURE_S})",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin processes to CPUs (default: servers on one CPU, clients on another)",
    )
    return parser


def add_loop_arg(parser: argparse.ArgumentParser, default: str = "uvloop") -> None:
    """``--loop asyncio|uvloop`` (comma-separated for several)."""
    parser.add_argument(
        "--loop",
        type=choices_list(["uvloop", "asyncio"]),
        default=default.split(","),
        help=f"event loop(s) of the daemon and the async client (default {default})",
    )


def add_client_arg(parser: argparse.ArgumentParser, default: str = "sync,async") -> None:
    """``--client sync|async`` (comma-separated for both)."""
    parser.add_argument(
        "--client",
        type=choices_list(["sync", "async"]),
        default=default.split(","),
        help=f"fltuser flavour(s): sync Port, async AsyncPort (default {default})",
    )


def add_scenario_args(parser: argparse.ArgumentParser) -> None:
    """``--scenario seq,pipe,conc``, ``--inflight N`` (pipe) and ``--connections K`` (conc)."""
    parser.add_argument(
        "--scenario",
        type=choices_list(["seq", "pipe", "conc", *SCENARIOS]),
        default=["seq", "pipe", "conc"],
        help="seq: 1 connection, 1 request in flight; pipe: 1 connection, --inflight requests "
        "in flight; conc: --connections connections, each sequential (default: all three)",
    )
    parser.add_argument(
        "--inflight", type=int, default=64, help="requests in flight for pipe (default 64)"
    )
    parser.add_argument(
        "--connections", type=int, default=8, help="connections for conc (default 8)"
    )


def scenario_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One configuration per (payload, scenario): its name, payload, connections, in flight."""
    shapes: dict[str, tuple[int, int]] = {}
    for name in args.scenario:
        kind = name.rstrip("0123456789")
        if kind == "seq":
            shapes["seq"] = (1, 1)
        elif kind == "pipe":
            shapes[f"pipe{args.inflight}"] = (1, args.inflight)
        else:
            shapes[f"conc{args.connections}"] = (args.connections, 1)
    return [
        {"scenario": name, "payload": payload, "connections": conns, "inflight": inflight}
        for payload in args.payload
        for name, (conns, inflight) in shapes.items()
    ]


def add_payload_arg(parser: argparse.ArgumentParser, default: str = "64,4096") -> None:
    """``--payload 64,4096``: payload sizes in bytes."""
    parser.add_argument(
        "--payload",
        type=csv_list(int),
        default=[int(x) for x in default.split(",")],
        help=f"payload sizes in bytes (default {default})",
    )


@dataclass(frozen=True)
class Timing:
    """Warm-up, window and repeats chosen from the options."""

    warmup_s: float
    measure_s: float
    repeats: int
    quick: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Timing:
        """Defaults depend on ``--quick``; explicit options win."""
        quick = bool(args.quick)
        warmup = (
            args.warmup
            if args.warmup is not None
            else (QUICK_WARMUP_S if quick else DEFAULT_WARMUP_S)
        )
        measure = (
            args.duration
            if args.duration is not None
            else (QUICK_MEASURE_S if quick else DEFAULT_MEASURE_S)
        )
        repeats = args.repeats if args.repeats is not None else (1 if quick else DEFAULT_REPEATS)
        return cls(warmup, measure, max(1, repeats), quick)


def payload_bytes(size: int, seed: int) -> bytes:
    """Deterministic payload content for a given size and seed."""
    return random.Random(seed * 1_000_003 + size).randbytes(size)


# --- placement -------------------------------------------------------------------------------


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


# --- environment -----------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
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
    for line in (_read("/proc/meminfo") or "").splitlines():
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
        "cpuidle_driver": _read("/sys/devices/system/cpu/cpuidle/current_driver"),
        "git": git_state(),
    }
    if placement is not None:
        env["placement"] = placement.as_dict()
    return env


# --- processes -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess listening on a Unix socket; its output goes to a log file.

    (A file, not a pipe: a pipe would need a reader thread in the client process, and the
    client process should run nothing but the client.)
    """

    name: str
    proc: subprocess.Popen[bytes]
    address: str
    tmpdir: str
    log_path: str

    def log(self) -> str:
        """What the server printed so far."""
        return _read(self.log_path) or ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not leave; report errors it logged; clean up."""
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        problems = [
            line for line in self.log().splitlines() if "Traceback" in line or "ERROR" in line
        ]
        if problems:
            sys.stderr.write(f"[{self.name}] logged errors:\n" + "\n".join(problems[:20]) + "\n")
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def short_tmpdir() -> str:
    """A fresh directory with a short path (AF_UNIX paths are limited to ~100 bytes)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return tempfile.mkdtemp(prefix="fltbench-", dir=base)


def start_server(
    name: str,
    argv_for: Callable[[str], list[str]],
    ready: str,
    placement: Placement,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Server:
    """Start ``argv_for(address)`` pinned to the server CPU; wait until it prints ``ready``.

    Raises:
        RuntimeError: the process exited or did not get ready in time (its output is shown).
    """
    tmpdir = short_tmpdir()
    address = os.path.join(tmpdir, "s.sock")
    log_path = os.path.join(tmpdir, "out.log")
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv_for(address),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
        )
    placement.pin_server(proc.pid)
    server = Server(name, proc, address, tmpdir, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while ready not in server.log():
        if proc.poll() is not None or time.monotonic() > deadline:
            output = server.log()
            server.stop()
            raise RuntimeError(f"{name} did not start:\n{output}")
        time.sleep(0.01)
    placement.pin_server(proc.pid)  # threads it started while getting ready
    return server


def daemon_argv(loop: str, extra: Sequence[str] = ()) -> Callable[[str], list[str]]:
    """``python -m fltemu serve`` with the benchmark filter, for ``start_server``."""

    def argv(address: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fltemu",
            "serve",
            "--address",
            address,
            "--filter",
            FILTER_MODULE,
            "--loop",
            loop,
            "--log-level",
            "WARNING",
            *extra,
        ]

    return argv


def start_daemon(
    loop: str, placement: Placement, extra: Sequence[str] = (), source: Path | None = None
) -> Server:
    """The fltemu daemon under test, in its own process, with ``_bench_filter`` loaded.

    ``source``: a directory holding another ``fltemu`` package to run instead of the
    installed one (``bench_daemon.py --base``).
    """
    pythonpath = str(BENCH_DIR)
    if source is not None:
        pythonpath = f"{source}{os.pathsep}{pythonpath}"
    if os.environ.get("PYTHONPATH"):
        pythonpath += os.pathsep + os.environ["PYTHONPATH"]
    return start_server(
        f"fltemu daemon ({loop})" + (f" from {source}" if source else ""),
        daemon_argv(loop, extra),
        "fltemu: listening on",
        placement,
        env={"PYTHONPATH": pythonpath},
        # ``python -m`` puts the working directory first on sys.path.
        cwd=str(source) if source is not None else None,
    )


def proc_status(pid: int) -> dict[str, int]:
    """Memory figures (bytes) from /proc/<pid>/status: VmRSS, RssAnon, VmHWM, ..."""
    out: dict[str, int] = {}
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


# --- the C reference -------------------------------------------------------------------------


@dataclass(frozen=True)
class CBuild:
    """The compiled C reference, or why there is none."""

    binary: Path | None
    note: str


def build_c(name: str = "ipcbench") -> CBuild:
    """Compile ``c/NAME.c`` with ``cc -O2`` into _build/ (once; rebuilt when a source changes).

    Without a compiler (or when it fails) the benchmarks carry on with Python-only numbers.
    """
    cc = shutil.which("cc")
    if cc is None:
        return CBuild(None, "no C compiler (cc) found: C programs not run, no ratios to C")
    BUILD_DIR.mkdir(exist_ok=True)
    source = C_DIR / f"{name}.c"
    binary = BUILD_DIR / name
    newest = max(p.stat().st_mtime for p in [source, *C_DIR.glob("*.h"), *C_INCLUDE.glob("*.h")])
    if binary.exists() and binary.stat().st_mtime >= newest:
        return CBuild(binary, f"{binary} (cc -O2)")
    tmp = BUILD_DIR / f"{name}.{os.getpid()}.tmp"
    argv = [cc, "-O2", "-Wall", "-Wextra", f"-I{C_INCLUDE}", "-o", str(tmp), str(source)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return CBuild(None, f"cc failed ({exc}): {name} not run")
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        return CBuild(None, f"cc failed: {result.stderr.strip()[:500]}")
    os.replace(tmp, binary)  # atomic: concurrent runs never see half a binary
    return CBuild(binary, f"{binary} (cc -O2, built now)")


def start_c_server(build: CBuild, placement: Placement) -> Server:
    """The C echo server, pinned to the server CPU."""
    assert build.binary is not None
    binary = str(build.binary)
    return start_server("C echo server", lambda a: [binary, "server", a], "ready", placement)


def run_c_client(
    build: CBuild,
    address: str,
    *,
    size: int,
    connections: int,
    inflight: int,
    timing: Timing,
    placement: Placement,
) -> RunResult:
    """One run of the C load generator against ``address``."""
    assert build.binary is not None
    argv = [
        str(build.binary),
        "client",
        address,
        "--size",
        str(size),
        "--conns",
        str(connections),
        "--inflight",
        str(inflight),
        "--warmup-ms",
        str(max(1, round(timing.warmup_s * 1000))),
        "--measure-ms",
        str(max(1, round(timing.measure_s * 1000))),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60 + timing.measure_s * 3)
    if proc.returncode != 0:
        raise RuntimeError(f"ipcbench client failed: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)
    return RunResult(
        count=data["count"],
        elapsed_ns=data["elapsed_ns"],
        p50_ns=data["p50_ns"],
        p99_ns=data["p99_ns"],
    )


# --- timing ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One measured window: completions, its length and latency percentiles."""

    count: int
    elapsed_ns: int
    p50_ns: float | None = None
    p99_ns: float | None = None
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Completions per second."""
        return self.count * 1e9 / self.elapsed_ns if self.elapsed_ns else 0.0

    @classmethod
    def from_latencies(
        cls, count: int, elapsed_ns: int, latencies: list[int], errors: int = 0
    ) -> RunResult:
        """Build one from raw per-call latencies (ns)."""
        p50, p99 = percentiles(latencies, (50, 99))
        return cls(count, elapsed_ns, p50, p99, errors)


def percentiles(values: list[int], pcts: Sequence[float]) -> list[float | None]:
    """Nearest-rank percentiles of ``values`` (None when empty)."""
    if not values:
        return [None for _ in pcts]
    ordered = sorted(values)
    n = len(ordered)
    return [float(ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))]) for p in pcts]


class Window:
    """The absolute warm-up end and window end shared by all workers of one run.

    Each worker loops until the window ends and counts the calls that *complete* inside it,
    so the count over the window length is the rate, however many workers there are.
    """

    __slots__ = ("end_ns", "start_ns")

    def __init__(self, timing: Timing) -> None:
        now = time.perf_counter_ns()
        self.start_ns = now + int(timing.warmup_s * 1e9)
        self.end_ns = self.start_ns + int(timing.measure_s * 1e9)

    @property
    def length_ns(self) -> int:
        """The measured window's length."""
        return self.end_ns - self.start_ns


def _merge(window: Window, parts: list[tuple[int, list[int], int]]) -> RunResult:
    count = sum(p[0] for p in parts)
    errors = sum(p[2] for p in parts)
    latencies = [lat for p in parts for lat in p[1]]
    return RunResult.from_latencies(count, window.length_ns, latencies, errors)


def drive_threads(calls: Sequence[Callable[[], object]], timing: Timing) -> RunResult:
    """Run each call in a loop, one thread per call (inline when there is one), for a window."""
    window = Window(timing)
    parts: list[tuple[int, list[int], int]] = []
    lock = threading.Lock()

    def worker(call: Callable[[], object]) -> None:
        ns = time.perf_counter_ns
        start, end = window.start_ns, window.end_ns
        latencies: list[int] = []
        append = latencies.append
        count = errors = 0
        while True:
            t0 = ns()
            try:
                call()
            except Exception:
                errors += 1
                if errors > 100:
                    break
            t1 = ns()
            if t1 >= end:
                break
            if t1 >= start:
                count += 1
                append(t1 - t0)
        with lock:
            parts.append((count, latencies, errors))

    if len(calls) == 1:
        worker(calls[0])
    else:
        threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return _merge(window, parts)


async def drive_tasks(
    calls: Sequence[Callable[[], Awaitable[object]]], timing: Timing
) -> RunResult:
    """Run each coroutine function in a loop, one task per call, for a window."""
    window = Window(timing)

    async def worker(call: Callable[[], Awaitable[object]]) -> tuple[int, list[int], int]:
        ns = time.perf_counter_ns
        start, end = window.start_ns, window.end_ns
        latencies: list[int] = []
        append = latencies.append
        count = errors = 0
        while True:
            t0 = ns()
            try:
                await call()
            except Exception:
                errors += 1
                if errors > 100:
                    break
            t1 = ns()
            if t1 >= end:
                break
            if t1 >= start:
                count += 1
                append(t1 - t0)
        return count, latencies, errors

    parts = await asyncio.gather(*(worker(c) for c in calls))
    return _merge(window, list(parts))


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event-loop factory for ``--loop``."""
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_async(loop: str, coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``coro_fn()`` to completion on a fresh loop of the given kind."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


# --- aggregation and output ------------------------------------------------------------------


def summarize(runs: list[RunResult]) -> dict[str, Any]:
    """Median rate of the runs, their spread and median latency percentiles."""
    rates = [r.rate for r in runs]
    median = statistics.median(rates) if rates else 0.0
    spread = (max(rates) - min(rates)) / 2 / median * 100 if median else None
    p50s = [r.p50_ns for r in runs if r.p50_ns is not None]
    p99s = [r.p99_ns for r in runs if r.p99_ns is not None]
    return {
        "msgs_per_s": round(median, 1),
        "runs_msgs_per_s": [round(x, 1) for x in rates],
        "spread_pct": round(spread, 1) if spread is not None else None,
        "p50_us": round(statistics.median(p50s) / 1000, 1) if p50s else None,
        "p99_us": round(statistics.median(p99s) / 1000, 1) if p99s else None,
        "errors": sum(r.errors for r in runs),
    }


def paired_ratio(runs: list[RunResult], refs: list[RunResult]) -> float | None:
    """Median over repeats of run/ref, pairing runs of the same repeat (robust to drift)."""
    ratios = [r.rate / ref.rate for r, ref in zip(runs, refs, strict=False) if ref.rate > 0]
    return round(statistics.median(ratios), 3) if ratios else None


class Output:
    """Rows out: JSON lines with ``--json``, else an aligned text table at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.rows: list[dict[str, Any]] = []

    def emit(self, row: dict[str, Any]) -> None:
        """Record a row; in JSON mode print it at once."""
        self.rows.append(row)
        if self.as_json:
            print(json.dumps(row, sort_keys=False), flush=True)

    def note(self, text: str) -> None:
        """A remark for humans (stderr in JSON mode, so stdout stays parseable)."""
        print(text, file=sys.stderr if self.as_json else sys.stdout, flush=True)


def format_rate(value: float | None) -> str:
    """12345.6 -> '12.3k', 1234567 -> '1.23M'."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown-style table of ``rows`` with (key, header) ``columns``."""

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if "msgs_per_s" in key and isinstance(value, (int, float)):
            return format_rate(float(value))
        if isinstance(value, float):
            return f"{value:.2f}" if key.startswith("ratio") else f"{value:g}"
        return str(value)

    table = [[header for _, header in columns]]
    table += [[cell(row, key) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in table
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def print_env(out: Output, env: dict[str, Any]) -> None:
    """The environment record, as JSON or as a few readable lines."""
    if out.as_json:
        out.emit(env)
        return
    out.rows.append(env)
    placement = env.get("placement") or {}
    git = env.get("git") or {}
    where = f" @ {git['commit']}" if git else ""
    if git.get("modified_files"):
        where += f" + {git['modified_files']} modified files"
    print(
        f"# Python {env['python']}, msgspec {env['msgspec']}, uvloop {env['uvloop']}, "
        f"fltemu {env['fltemu']}{where}; {env['cpu_model']} x{env['cpu_count']}, {env['os']}; "
        f"load {env['loadavg']}; {placement.get('note', '')}"
    )


def versions_and_exit(args: argparse.Namespace) -> None:
    """``--versions``: print the environment and exit 0."""
    env = environment()
    if args.json:
        print(json.dumps(env))
    else:
        for key, value in env.items():
            print(f"{key}: {value}")
    raise SystemExit(0)


@contextlib.contextmanager
def servers() -> Iterator[list[Server]]:
    """A list of started servers that are all stopped on the way out."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()


# --- the run matrix --------------------------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    """One implementation under measurement.

    Attributes:
        key: unique name, e.g. ``fltemu/async/uvloop``.
        labels: the columns it fills in every row (impl, client, loop).
        server: key of the server it talks to (several implementations may share one).
        run: measures one configuration against that server; ``None`` when not applicable.
    """

    key: str
    labels: dict[str, Any]
    server: str
    run: Callable[[Server, dict[str, Any]], RunResult | None]


def run_matrix(
    impls: Sequence[Impl],
    configs: Sequence[dict[str, Any]],
    timing: Timing,
    start: dict[str, Callable[[], Server]],
    out: Output,
) -> dict[tuple[str, int], list[RunResult]]:
    """Every implementation on every configuration, ``timing.repeats`` times.

    Each repeat starts fresh servers and runs the implementations of one configuration
    back to back, so a ratio compares runs a few seconds apart (what a noisy machine
    allows). Results are keyed by (impl key, config index).
    """
    results: dict[tuple[str, int], list[RunResult]] = {}
    needed = list(dict.fromkeys(impl.server for impl in impls))
    for rep in range(timing.repeats):
        with servers() as started:
            by_key: dict[str, Server] = {}
            for key in needed:
                server = start[key]()
                started.append(server)
                by_key[key] = server
            for index, config in enumerate(configs):
                for impl in impls:
                    result = impl.run(by_key[impl.server], config)
                    if result is not None:
                        results.setdefault((impl.key, index), []).append(result)
        if not timing.quick and timing.repeats > 1:
            out.note(f"  repeat {rep + 1}/{timing.repeats} done")
    return results


# --- interference ----------------------------------------------------------------------------


def _busy_cpu_s() -> float | None:
    """Seconds all CPUs spent busy since boot, from /proc/stat (None where there is none)."""
    line = (_read("/proc/stat") or "").partition("\n")[0].split()
    if not line or line[0] != "cpu":
        return None
    ticks = [int(x) for x in line[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class NoiseMeter:
    """How much CPU time processes outside this benchmark took while it ran.

    Busy CPU time of the whole machine (/proc/stat) minus the CPU time of this process and
    its waited-for children (every server and load generator is waited for). On an idle
    machine ``other_cpu_pct`` stays near 0; a build or test run next to the benchmark
    shows up here, and its figures deserve less trust.
    """

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._busy = _busy_cpu_s()
        self._own = _own_cpu_s()
        self._load = os.getloadavg() if hasattr(os, "getloadavg") else None

    def result(self) -> dict[str, Any]:
        """The row to emit at the end of a script."""
        wall = time.monotonic() - self._wall
        busy = _busy_cpu_s()
        own = _own_cpu_s() - self._own
        other = None if busy is None or self._busy is None else max(0.0, busy - self._busy - own)
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        ncpu = os.cpu_count() or ncpu
        return {
            "bench": "noise",
            "wall_s": round(wall, 1),
            "own_cpu_s": round(own, 1),
            "other_cpu_s": round(other, 1) if other is not None else None,
            "other_cpu_pct": round(other / (wall * ncpu) * 100, 1) if other is not None else None,
            "loadavg_start": list(self._load) if self._load else None,
            "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        }


def finish(out: Output, noise: NoiseMeter) -> None:
    """Emit the interference row (and say it in words for humans)."""
    row = noise.result()
    out.emit(row)
    if not out.as_json and row["other_cpu_s"] is not None:
        print(
            f"# other processes used {row['other_cpu_s']} CPU-s during this {row['wall_s']} s run "
            f"({row['other_cpu_pct']}% of the machine); load {row['loadavg_start']} -> "
            f"{row['loadavg_end']}"
        )
