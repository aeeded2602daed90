"""Many connections: what an idle connection costs the daemon, and whether idle ones slow the rest.

Each repeat starts a fresh daemon (``fltemu serve --filter _bench_filter``, own process,
server CPU) and:

1. makes and closes a few connections (so lazy imports and caches are paid for), asks the
   daemon to collect garbage (``gc`` on ``\\BenchCtl``) and reads VmRSS and RssAnon from
   ``/proc/<pid>/status``;
2. has a helper process (client CPU) open ``--idle`` connections to ``\\BenchEcho`` that
   complete the handshake and then stay silent; collects garbage and reads the figures
   again: (after - before) / idle is the cost of one idle connection;
3. measures the ``--busy`` workloads with the idle connections open and without them, in
   ABBA order (with, without, without, with; mirrored on odd repeats) so that a drifting
   machine cancels out: user->kernel ``seq``, ``conc8``, ``pipe64`` (as bench_roundtrip)
   and kernel->user with 64 readers (``k2u64``, as bench_kernel_to_user). ``change_pct`` is
   the median over all pairs of with/without - 1.

``--tracemalloc`` also starts tracemalloc in the daemon and lists the allocation sites that
grew while the idle connections were opened. RSS does not include the kernel's socket
buffers, which are the same for any server.
Not here: single-connection figures (``bench_roundtrip``, ``bench_kernel_to_user``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Final

import _harness as h
import bench_kernel_to_user
import bench_roundtrip

import fltuser
from fltemu.wire import PROTOCOL_VERSION, Connect, ConnectResult, Role, WireConnection

BUSY: Final = ["seq", "conc8", "pipe64", "k2u64"]

MEMORY_COLUMNS: Final = [
    ("loop", "loop"),
    ("idle", "idle conns"),
    ("kib_per_connection", "RSS KiB/conn"),
    ("anon_kib_per_connection", "anon KiB/conn"),
    ("rss_before_kib", "RSS before KiB"),
    ("rss_after_kib", "RSS after KiB"),
]
IDLE_COLUMNS: Final = [
    ("loop", "loop"),
    ("client", "client"),
    ("busy", "busy"),
    ("payload", "payload B"),
    ("msgs_per_s_without", "msg/s without idle"),
    ("spread_pct_without", "±%"),
    ("msgs_per_s_with", "msg/s with idle"),
    ("spread_pct_with", "±%"),
    ("change_pct", "change %"),
]
TABLES: Final = [
    h.Table(MEMORY_COLUMNS, {"kind": "memory"}),
    h.Table(IDLE_COLUMNS, {"kind": "throughput"}),
]


# --- the idle-connection holder (a separate process) ------------------------------------------


def hold_idle(address: str, count: int) -> int:
    """Open ``count`` connections, print ``ready``, keep them until stdin closes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    socks: list[socket.socket] = []
    wires: list[WireConnection] = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
        wire = WireConnection(Role.USER)
        sock.sendall(wire.send(Connect(PROTOCOL_VERSION, h.ECHO_PORT, b"", 0)))
        socks.append(sock)
        wires.append(wire)
    failed = 0
    for sock, wire in zip(socks, wires, strict=True):
        while True:
            event = wire.next_event()
            if isinstance(event, ConnectResult):
                failed += event.status != 0
                break
            data = sock.recv(4096)
            wire.receive_data(data)
            if not data:
                failed += 1
                break
    print(f"ready {count - failed} {failed}", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    for sock in socks:
        sock.close()
    return 0


class IdleHolder:
    """The helper process holding the idle connections."""

    def __init__(self, address: str, count: int, placement: h.Placement) -> None:
        self.count = count
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--hold-idle", str(count), "--address", address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        placement.pin_client(self.proc.pid)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready" or int(line[2]) != 0:
            self.close()
            raise RuntimeError(f"the idle-connection holder failed: {line}")

    def close(self) -> None:
        """Close its connections and wait for it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- measuring --------------------------------------------------------------------------------


def _control(ctl: fltuser.Port, command: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(ctl.send(json.dumps(command).encode(), 1 << 20))
    return result


def memory(ctl: fltuser.Port, pid: int) -> dict[str, int]:
    """The daemon's memory after a garbage collection, from /proc/<pid>/status."""
    _control(ctl, {"cmd": "gc"})
    time.sleep(0.05)
    return h.proc_status(pid)


def wait_connections(ctl: fltuser.Port, expected: int, timeout_s: float = 30.0) -> int:
    """Wait until the daemon has ``expected`` connections left (teardown is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = int(_control(ctl, {"cmd": "gc"})["connections"])
        if count <= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def run_busy(
    name: str, server: h.Server, client: str, loop: str, payload: int, timing: h.Timing, seed: int
) -> h.RunResult:
    """One measured run of a busy workload."""
    if name == "k2u64":
        return bench_kernel_to_user.run_fltemu(
            server,
            client=client,
            loop=loop,
            readers=64,
            senders=64,
            payload=payload,
            reply=h.payload_bytes(payload, seed + 1),
            seed=seed,
            timing=timing,
        )
    connections, inflight = h.SCENARIOS[name]
    return bench_roundtrip.run_fltemu(
        server,
        client=client,
        loop=loop,
        connections=connections,
        inflight=inflight,
        payload=h.payload_bytes(payload, seed),
        timing=timing,
    )


def main(argv: list[str] | None = None) -> int:
    """Measure the idle-connection cost and the idle connections' effect on busy ones."""
    parser = h.base_parser(__doc__.split("\n")[0])
    h.add_loop_arg(parser)
    h.add_client_arg(parser, default="async")
    parser.add_argument("--payload", type=int, default=64, help="payload bytes (default 64)")
    parser.add_argument(
        "--idle", type=int, default=None, help="idle connections (default 1000; 50 with --quick)"
    )
    parser.add_argument(
        "--busy",
        type=h.choices_list(BUSY),
        default=list(BUSY),
        help=f"busy workloads measured with and without the idle ones (default {','.join(BUSY)})",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="list the daemon's allocation sites that grew with the idle connections",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="with/without measurements per repeat, in ABBA order (default 2; 1 with --quick)",
    )
    parser.add_argument("--hold-idle", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold_idle is not None:
        return hold_idle(args.address, args.hold_idle)
    with h.measuring(args, TABLES) as run:
        measure(run)
    return 0


def measure(run: h.ScriptRun) -> None:
    """The repeats: memory per idle connection, then the busy loads with and without them."""
    args, timing, placement, out = run.args, run.timing, run.placement, run.out
    idle = args.idle if args.idle is not None else (50 if timing.quick else 1000)
    pairs = max(1, min(2, args.pairs if args.pairs is not None else (1 if timing.quick else 2)))
    warm = h.Timing(0.0, min(0.05, timing.measure_s), 1, True)

    memory_runs: list[dict[str, float]] = []
    allocations: list[dict[str, Any]] = []
    # (loop, client, busy) -> ([without], [with])
    runs: dict[tuple[str, str, str], tuple[list[h.RunResult], list[h.RunResult]]] = {}
    extra = ["--set", "_bench_filter.tracemalloc=1"] if args.tracemalloc else []
    for rep in range(timing.repeats):
        for loop in args.loop:
            daemon = h.start_daemon(loop, placement, extra)
            try:
                ctl = fltuser.connect(h.CTL_PORT, address=daemon.address)
                try:
                    for client in args.client:  # pay for imports and first-use caches
                        for name in args.busy:
                            run_busy(name, daemon, client, loop, args.payload, warm, args.seed)
                    wait_connections(ctl, 1)
                    if args.tracemalloc:
                        _control(ctl, {"cmd": "tracemalloc"})
                    before = memory(ctl, daemon.proc.pid)
                    holder: IdleHolder | None = IdleHolder(daemon.address, idle, placement)
                    after = memory(ctl, daemon.proc.pid)
                    if args.tracemalloc and rep == 0:
                        allocations.append(_control(ctl, {"cmd": "tracemalloc", "limit": 15}))
                    memory_runs.append(
                        {
                            "loop": loop,  # type: ignore[dict-item]
                            "rss_before": before.get("VmRSS", 0),
                            "rss_after": after.get("VmRSS", 0),
                            "rss_per_conn": (after.get("VmRSS", 0) - before.get("VmRSS", 0)) / idle,
                            "anon_per_conn": (after.get("RssAnon", 0) - before.get("RssAnon", 0))
                            / idle,
                        }
                    )
                    # ABBA order (with, without, without, with; the mirror on odd repeats)
                    # so that a drift of the machine during a repeat cancels out in the pairs.
                    first, second = ("with", "without") if rep % 2 == 0 else ("without", "with")
                    phases = ([first, second] + [second, first])[: 2 * pairs]
                    for phase in phases:
                        if phase == "with" and holder is None:
                            holder = IdleHolder(daemon.address, idle, placement)
                        if phase == "without" and holder is not None:
                            holder.close()
                            holder = None
                            wait_connections(ctl, 1)
                        for client in args.client:
                            for name in args.busy:
                                result = run_busy(
                                    name, daemon, client, loop, args.payload, timing, args.seed
                                )
                                pair = runs.setdefault((loop, client, name), ([], []))
                                pair[phase == "with"].append(result)
                    if holder is not None:
                        holder.close()
                finally:
                    ctl.close()
            finally:
                daemon.stop()
        if not timing.quick and timing.repeats > 1:
            out.note(f"  repeat {rep + 1}/{timing.repeats} done")

    rows = []
    for loop in args.loop:
        mine = [m for m in memory_runs if m["loop"] == loop]
        per_conn = [m["rss_per_conn"] / 1024 for m in mine]
        anon = [m["anon_per_conn"] / 1024 for m in mine]
        row = {
            "bench": "connections",
            "kind": "memory",
            "loop": loop,
            "idle": idle,
            "kib_per_connection": round(statistics.median(per_conn), 2),
            "runs_kib_per_connection": [round(x, 2) for x in per_conn],
            "anon_kib_per_connection": round(statistics.median(anon), 2),
            "rss_before_kib": round(statistics.median(m["rss_before"] for m in mine) / 1024),
            "rss_after_kib": round(statistics.median(m["rss_after"] for m in mine) / 1024),
            "repeats": len(mine),
            "pinned": placement.pinned,
        }
        out.emit(row)
        rows.append(row)
    changes = []
    for (loop, client, name), (without, with_idle) in runs.items():
        ratio = h.paired_ratio(with_idle, without)
        change = round((ratio - 1) * 100, 1) if ratio is not None else None
        if change is not None:
            changes.append(abs(change))
        row = {
            "bench": "connections",
            "kind": "throughput",
            "loop": loop,
            "client": client,
            "busy": name,
            "payload": args.payload,
            "idle": idle,
            "msgs_per_s_without": h.summarize(without)["msgs_per_s"],
            "msgs_per_s_with": h.summarize(with_idle)["msgs_per_s"],
            "spread_pct_without": h.summarize(without)["spread_pct"],
            "spread_pct_with": h.summarize(with_idle)["spread_pct"],
            "change_pct": change,
            "repeats": len(without),
            "warmup_s": timing.warmup_s,
            "measure_s": timing.measure_s,
            "pinned": placement.pinned,
        }
        out.emit(row)
        rows.append(row)
    for allocation in allocations:
        out.emit({"bench": "connections", "kind": "allocations", **allocation})
    summary = {
        "bench": "connections",
        "kind": "summary",
        "idle": idle,
        "kib_per_connection": min(
            (r["kib_per_connection"] for r in rows if r["kind"] == "memory"), default=None
        ),
        "max_abs_change_pct": max(changes) if changes else None,
    }
    out.emit(summary)
    for allocation in allocations:
        for item in allocation.get("top", []):
            run.epilogue.append(f"  {item['size_diff'] / idle:8.0f} B/conn  {item['where']}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
