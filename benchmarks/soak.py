"""Long soak: does the daemon's memory and file descriptor count stay flat under abuse?

One daemon (``fltemu serve --filter _soak_filter``, its own process) serves, for
``--duration`` seconds (30 minutes by default), a mix of clients, each a thread of this
process running its kind over and over:

* good clients (``--good``): connect to ``\\SoakEcho``, 50 FilterSendMessage of 1 KiB, close;
* SIGKILLed clients: a child process connects and sends 64 KiB messages in a loop until it is
  SIGKILLed at a random moment (0.05 to 0.3 s);
* torn frames: a 16 MiB frame's length prefix and 12 MiB of its body, then close;
* non-reading clients: 256 requests of 64 KiB written and none of the answers read (the
  daemon stops reading from them), held for a second, then closed;
* waiting clients (``--getters``): FilterGetMessage on ``\\SoakDyn`` until its filter is
  unloaded under them;
* unload/reload: every 5 s ``fltemu unload soak_dyn`` (its teardown and DisconnectNotify
  run), then the filter is registered again.

Every ``--interval`` seconds a progress line gives the daemon's VmRSS and open file
descriptors (``/proc/<pid>``) under load. Every ``--quiet-every`` seconds, and at the start
(after ``--warmup``) and the end, the clients pause, the daemon drains (no connection but
the soak's own control one), and RSS and descriptors are read at rest. The result is
``flat`` when no reading at rest is more than ``--rss-tolerance-mib`` of RSS or
``--fd-tolerance`` descriptors above the first one. Clients errors other than the expected
ones (a get ended by the unload, a child's connection killed) are counted as unexpected.

Example:
    nice -n 10 python benchmarks/soak.py                  # 30 minutes
    python benchmarks/soak.py --duration 600 --json > soak.jsonl
    python benchmarks/soak.py --quick                     # 20 s: a smoke test

Not here: the torn-frame rounds alone (``soak_torn_frames.py``), speed (``bench_*``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import _harness as h
from soak_torn_frames import torn_frame

import fltuser
from fltemu.wire import (
    PROTOCOL_VERSION,
    Connect,
    ConnectResult,
    Control,
    Role,
    SendRequest,
    WireConnection,
)
from fltuser.control import ControlError, call

FILTER_MODULE: Final = "_soak_filter"
ECHO_PORT: Final = "\\SoakEcho"
CTL_PORT: Final = "\\SoakCtl"
DYN_PORT: Final = "\\SoakDyn"
DYN_FILTER: Final = "soak_dyn"
RELOAD_EVERY_S: Final = 5.0
#: How long the clients get to finish what they are doing when the soak pauses them.
PAUSE_TIMEOUT_S: Final = 60.0

SUMMARY_COLUMNS: Final = [
    ("loop", "loop"),
    ("duration_s", "seconds"),
    ("rss_start_kib", "RSS start KiB"),
    ("rss_end_kib", "RSS end KiB"),
    ("rss_max_kib", "max RSS KiB"),
    ("fds_start", "fds start"),
    ("fds_end", "fds end"),
    ("fds_max", "max fds"),
    ("flat", "flat"),
    ("unexpected_errors", "unexpected errors"),
]


def daemon_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` has open."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Soak:
    """The clients, their counters, and the pause that lets the daemon come to rest."""

    def __init__(self, address: str, seed: int) -> None:
        self.address = address
        self.counts: dict[str, int] = {}
        self.unexpected: list[str] = []
        self.stop = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self._lock = threading.Lock()
        self._idle: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._rng = random.Random(seed)
        self._body = memoryview(bytes(12 << 20))

    # --- bookkeeping ---------------------------------------------------------------------

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def fail(self, worker: str, exc: BaseException) -> None:
        with self._lock:
            self.unexpected.append(f"{worker}: {type(exc).__name__}: {exc}")

    def start(self, name: str, body: Callable[[], None]) -> None:
        thread = threading.Thread(target=self._run, args=(name, body), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self, name: str, body: Callable[[], None]) -> None:
        while not self.stop.is_set():
            if not self.running.is_set():
                with self._lock:
                    self._idle.add(name)
                self.running.wait(1.0)
                with self._lock:
                    self._idle.discard(name)
                continue
            try:
                body()
            except Exception as exc:  # noqa: BLE001 - counted, the soak goes on
                self.fail(name, exc)
                time.sleep(0.1)

    def pause(self) -> None:
        """Stop the clients after what they are doing; end the waiting ones' gets."""
        self.running.clear()
        self.unload()
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._idle) == len(self._threads):
                    return
            time.sleep(0.05)
        raise RuntimeError("the clients did not pause within 60 s")

    def resume(self) -> None:
        self.reload()
        self.running.set()

    def join(self) -> None:
        self.stop.set()
        self.running.set()
        self.unload()  # the waiting clients' gets end
        for thread in self._threads:
            thread.join(PAUSE_TIMEOUT_S)

    # --- the daemon's side -------------------------------------------------------------------

    def control(self, command: bytes) -> bytes:
        with fltuser.connect(CTL_PORT, address=self.address) as port:
            return port.send(command, 256)

    def unload(self) -> None:
        with contextlib.suppress(ControlError):  # not loaded at the moment: fine
            call(Control(PROTOCOL_VERSION, "unload", DYN_FILTER), self.address, timeout=60)

    def reload(self) -> None:
        self.control(b"reload")

    def connections(self) -> int:
        """The daemon's connections, the one asking included."""
        answer = self.control(b"status")
        return int(json.loads(answer)["connections"])

    # --- the clients ---------------------------------------------------------------------------

    def good(self) -> None:
        payload = bytes(1024)
        with fltuser.connect(ECHO_PORT, address=self.address) as port:
            for _ in range(50):
                if port.send(payload, len(payload)) != payload:
                    raise RuntimeError("the echo came back different")
        self.count("good_sends", 50)
        time.sleep(0.01)

    def killed(self) -> None:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", self.address],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=h.BENCH_DIR,
        )
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 30)
            if not ready or not child.stdout.readline().startswith(b"ready"):
                raise RuntimeError("the child client did not connect")
            time.sleep(self._rng.uniform(0.05, 0.3))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        self.count("sigkilled")

    def torn(self) -> None:
        torn_frame(self.address, 16 << 20, self._body, ECHO_PORT)
        self.count("torn_frames")
        time.sleep(0.5)

    def non_reading(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(self.address)
            wire = WireConnection(Role.USER)
            sock.sendall(wire.send(Connect(PROTOCOL_VERSION, ECHO_PORT, b"", 0)))
            _handshake(sock, wire)
            sock.settimeout(2.0)
            payload = bytes(64 * 1024)
            with contextlib.suppress(TimeoutError):
                for rid in range(1, 257):
                    sock.sendall(wire.send(SendRequest(rid, payload, len(payload))))
            time.sleep(1.0)
        self.count("non_reading")

    def getter(self) -> None:
        try:
            port = fltuser.connect(DYN_PORT, address=self.address)
        except fltuser.HResultError:
            time.sleep(0.1)  # unloaded at the moment
            return
        with port:
            try:
                port.get_message(4096)
            except fltuser.HResultError:
                self.count("gets_ended_by_unload")

    def reloader(self) -> None:
        if self.stop.wait(RELOAD_EVERY_S) or not self.running.is_set():
            return
        self.unload()
        self.reload()
        self.count("reloads")


def _handshake(sock: socket.socket, wire: WireConnection) -> None:
    while True:
        event = wire.next_event()
        if isinstance(event, ConnectResult):
            if event.status != 0:
                raise RuntimeError(f"connect failed: {event.status:#x}")
            return
        data = sock.recv(4096)
        if not data:
            raise RuntimeError("the daemon closed the connection during the handshake")
        wire.receive_data(data)


def child(address: str) -> int:
    """A client to be SIGKILLed: connect, say ready, send 64 KiB messages until killed."""
    payload = bytes(64 * 1024)
    port = fltuser.connect(ECHO_PORT, address=address)
    print("ready", flush=True)
    while True:
        port.send(payload, len(payload))


def at_rest(soak: Soak, pid: int, resume: bool = True) -> dict[str, int]:
    """Pause the clients, wait until the daemon has only our control connection, read it."""
    soak.pause()
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while soak.connections() > 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon kept connections open after the clients stopped")
        time.sleep(0.1)
    time.sleep(1.0)  # teardowns that just ended: let the loop run their last steps
    status = h.proc_status(pid)
    reading = {"rss_kib": status.get("VmRSS", 0) // 1024, "fds": daemon_fds(pid)}
    if resume:
        soak.resume()
    return reading


def run_soak(args: argparse.Namespace, loop: str, out: h.Output) -> dict[str, Any]:
    """Run the soak against one daemon; return the summary row."""
    argv = [
        sys.executable,
        "-m",
        "fltemu",
        "serve",
        "--filter",
        FILTER_MODULE,
        "--loop",
        loop,
        "--log-level",
        "ERROR",
    ]
    placement = h.Placement.choose(no_pin=True)
    pythonpath = os.pathsep.join(filter(None, [str(h.BENCH_DIR), os.environ.get("PYTHONPATH")]))
    with h.servers() as started:
        server = h.start_server(
            f"fltemu daemon ({loop})",
            lambda address: [*argv, "--address", address],
            "fltemu: listening on",
            placement,
            env={"PYTHONPATH": pythonpath},
        )
        started.append(server)
        pid = server.proc.pid
        soak = Soak(server.address, args.seed)
        for i in range(args.good):
            soak.start(f"good{i}", soak.good)
        for i in range(args.getters):
            soak.start(f"getter{i}", soak.getter)
        soak.start("killed", soak.killed)
        soak.start("torn", soak.torn)
        soak.start("non_reading", soak.non_reading)
        soak.start("reloader", soak.reloader)
        began = time.monotonic()
        end = began + args.duration
        samples: list[dict[str, Any]] = []
        rests: list[dict[str, Any]] = []
        try:
            time.sleep(min(args.warmup, args.duration / 2))
            first = at_rest(soak, pid)
            rests.append({"t": round(time.monotonic() - began), **first})
            out.emit({"bench": "soak", "kind": "rest", "loop": loop, **rests[-1]})
            next_rest = time.monotonic() + args.quiet_every
            while time.monotonic() < end:
                time.sleep(max(0.0, min(args.interval, end - time.monotonic())))
                if server.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited:\n{server.log()[-3000:]}")
                status = h.proc_status(pid)
                sample = {
                    "t": round(time.monotonic() - began),
                    "rss_kib": status.get("VmRSS", 0) // 1024,
                    "fds": daemon_fds(pid),
                }
                samples.append(sample)
                if out.as_json:
                    out.emit({"bench": "soak", "kind": "sample", "loop": loop, **sample})
                out.note(
                    f"# {loop} [{sample['t']:>5}/{args.duration:.0f} s] RSS "
                    f"{sample['rss_kib'] / 1024:.1f} MiB, {sample['fds']} fds; "
                    + ", ".join(f"{k} {v}" for k, v in sorted(soak.counts.items()))
                    + f"; unexpected errors {len(soak.unexpected)}"
                )
                if time.monotonic() >= next_rest and time.monotonic() < end:
                    rest = at_rest(soak, pid)
                    rests.append({"t": round(time.monotonic() - began), **rest})
                    out.emit({"bench": "soak", "kind": "rest", "loop": loop, **rests[-1]})
                    next_rest = time.monotonic() + args.quiet_every
            last = at_rest(soak, pid, resume=False)
            rests.append({"t": round(time.monotonic() - began), **last})
            out.emit({"bench": "soak", "kind": "rest", "loop": loop, **rests[-1]})
        finally:
            elapsed = round(time.monotonic() - began)
            soak.join()
    rss_growth = max(r["rss_kib"] for r in rests) - rests[0]["rss_kib"]
    fd_growth = max(r["fds"] for r in rests) - rests[0]["fds"]
    under_load = samples or rests
    return {
        "bench": "soak",
        "kind": "summary",
        "loop": loop,
        "duration_s": elapsed,
        "rss_start_kib": rests[0]["rss_kib"],
        "rss_end_kib": rests[-1]["rss_kib"],
        "rss_max_kib": max(s["rss_kib"] for s in [*under_load, *rests]),
        "rss_growth_at_rest_kib": rss_growth,
        "fds_start": rests[0]["fds"],
        "fds_end": rests[-1]["fds"],
        "fds_max": max(s["fds"] for s in [*under_load, *rests]),
        "fd_growth_at_rest": fd_growth,
        "flat": rss_growth <= args.rss_tolerance_mib * 1024 and fd_growth <= args.fd_tolerance,
        "rests": rests,
        "counts": dict(sorted(soak.counts.items())),
        "unexpected_errors": len(soak.unexpected),
        "unexpected_first": soak.unexpected[:10],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak; exit 1 if RSS or descriptors grew, or a client met an unexpected error."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="example: nice -n 10 python benchmarks/soak.py --duration 1800",
    )
    parser.add_argument("--quick", action="store_true", help="20 s: a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds (default 1800; 20 with --quick)"
    )
    parser.add_argument(
        "--interval", type=float, default=None, help="seconds between samples (default 10)"
    )
    parser.add_argument(
        "--quiet-every",
        type=float,
        default=None,
        help="seconds between readings at rest (default 300)",
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds before the first reading (default 60)"
    )
    parser.add_argument("--good", type=int, default=2, help="good client threads (2)")
    parser.add_argument("--getters", type=int, default=4, help="waiting client threads (4)")
    parser.add_argument("--rss-tolerance-mib", type=float, default=16, help="(default 16)")
    parser.add_argument("--fd-tolerance", type=int, default=2, help="(default 2)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random delays")
    h.add_loop_arg(parser, default="uvloop")
    parser.add_argument("--child", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    quick = args.quick
    if args.duration is None:
        args.duration = 20.0 if quick else 1800.0
    if args.interval is None:
        args.interval = 2.0 if quick else 10.0
    if args.quiet_every is None:
        args.quiet_every = 8.0 if quick else 300.0
    if args.warmup is None:
        args.warmup = 3.0 if quick else 60.0
    if args.duration <= 0 or args.interval <= 0 or args.quiet_every <= 0 or args.warmup < 0:
        parser.error("--duration, --interval and --quiet-every must be positive")
    out = h.Output(args.json)
    h.print_env(out, h.environment(h.Placement.choose(no_pin=True)))
    rows = [run_soak(args, loop, out) for loop in args.loop]
    for row in rows:
        out.emit(row)
    if not out.as_json:
        print(h.format_table(rows, SUMMARY_COLUMNS))
        for row in rows:
            print(f"# {row['loop']}: at rest {row['rests']}; counts {row['counts']}")
            for line in row["unexpected_first"]:
                print(f"# unexpected: {line}")
    if not all(row["flat"] and not row["unexpected_errors"] for row in rows):
        print("soak: RSS or descriptors grew, or clients met unexpected errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
