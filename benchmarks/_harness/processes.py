"""Server processes (the daemon under test, the C and bare servers) and the C builds."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .layout import BENCH_DIR, BUILD_DIR, C_DIR, C_INCLUDE, FILTER_MODULE
from .machine import Placement, read_file
from .options import Timing
from .stats import RunResult

#: How long a server process may take to say it is ready.
STARTUP_TIMEOUT_S: Final = 20.0


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
        return read_file(self.log_path) or ""

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


@contextlib.contextmanager
def servers() -> Iterator[list[Server]]:
    """A list of started servers that are all stopped on the way out."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()


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
