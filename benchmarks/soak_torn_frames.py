"""Torn large frames: does the daemon give back what a connection closed mid-frame held?

Each round, ``--clients`` connections to ``\\BenchEcho`` complete the handshake, send the
4-byte length prefix of a ``--frame-mib`` frame and ``--body-mib`` of its body, and close
their sending side; each then reads until the daemon has answered (its Goodbye) and closed,
so the round is over on the daemon's side too. The daemon's VmRSS (``/proc/<pid>/status``)
is read after every round, without asking it to collect garbage: an idle daemon never runs
a full collection, so memory kept by a reference cycle would show here.

The result is ``flat`` when no round's RSS is more than ``--tolerance-mib`` above the RSS
after the first round (which pays for the allocator's first growth). A leak of the partial
frames grows by about clients x body per round (96 MiB with the defaults).

Example:
    python benchmarks/soak_torn_frames.py                 # 100 rounds, both loops
    python benchmarks/soak_torn_frames.py --quick --json  # 10 rounds: a smoke test

Not here: the long mixed soak (``soak.py``), speed (``bench_*``).
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from typing import Any, Final

import _harness as h

from fltemu.wire import PROTOCOL_VERSION, Connect, ConnectResult, Role, WireConnection

COLUMNS: Final = [
    ("loop", "loop"),
    ("rounds", "rounds"),
    ("torn_frames", "torn frames"),
    ("rss_start_kib", "RSS after round 1 KiB"),
    ("rss_end_kib", "RSS at end KiB"),
    ("rss_max_kib", "max RSS KiB"),
    ("growth_kib", "max - round 1 KiB"),
    ("flat", "flat"),
]


def torn_frame(address: str, frame_bytes: int, body: memoryview, port: str = h.ECHO_PORT) -> None:
    """Connect to ``port``, send a frame's prefix and part of its body, close.

    Returns once the daemon has closed its end (it answers the torn frame with a Goodbye).

    Raises:
        RuntimeError: the connect was refused.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        wire = WireConnection(Role.USER)
        sock.sendall(wire.send(Connect(PROTOCOL_VERSION, port, b"", 0)))
        while True:
            event = wire.next_event()
            if isinstance(event, ConnectResult):
                if event.status != 0:
                    raise RuntimeError(f"connect to {port} failed: {event.status:#x}")
                break
            data = sock.recv(4096)
            if not data:
                raise RuntimeError("the daemon closed the connection during the handshake")
            wire.receive_data(data)
        sock.sendall(struct.pack("<I", frame_bytes))
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


def soak(
    loop: str, args: argparse.Namespace, placement: h.Placement, out: h.Output
) -> dict[str, Any]:
    """Run the rounds against one fresh daemon; return the summary row."""
    body = memoryview(bytes(int(args.body_mib * 2**20)))
    frame_bytes = int(args.frame_mib * 2**20)
    with h.servers() as started:
        server = h.start_daemon(loop, placement)
        started.append(server)
        samples: list[int] = []
        began = time.monotonic()
        for n in range(1, args.rounds + 1):
            for _ in range(args.clients):
                torn_frame(server.address, frame_bytes, body)
            rss = h.proc_status(server.proc.pid).get("VmRSS", 0) // 1024
            samples.append(rss)
            if n == 1 or n % max(1, args.rounds // 10) == 0 or n == args.rounds:
                out.note(f"# {loop}: round {n}/{args.rounds}: RSS {rss / 1024:.1f} MiB")
    first = samples[0]
    growth = max(samples) - first
    return {
        "bench": "soak_torn_frames",
        "loop": loop,
        "rounds": args.rounds,
        "clients": args.clients,
        "frame_mib": args.frame_mib,
        "body_mib": args.body_mib,
        "torn_frames": args.rounds * args.clients,
        "seconds": round(time.monotonic() - began, 1),
        "rss_start_kib": first,
        "rss_end_kib": samples[-1],
        "rss_max_kib": max(samples),
        "growth_kib": growth,
        "tolerance_kib": int(args.tolerance_mib * 1024),
        "flat": growth <= args.tolerance_mib * 1024,
        "rss_kib": samples,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the torn-frame rounds on each loop; exit 1 if the RSS did not stay flat."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="example: python benchmarks/soak_torn_frames.py --rounds 100 --loop uvloop",
    )
    parser.add_argument("--quick", action="store_true", help="10 rounds: a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 100)")
    parser.add_argument("--clients", type=int, default=8, help="torn frames per round (8)")
    parser.add_argument("--frame-mib", type=float, default=16, help="announced frame size (16)")
    parser.add_argument("--body-mib", type=float, default=12, help="body sent of it (12)")
    parser.add_argument(
        "--tolerance-mib",
        type=float,
        default=16,
        help="how far above round 1's RSS a round may be and still count as flat (16)",
    )
    h.add_loop_arg(parser, default="uvloop,asyncio")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 10 if args.quick else 100
    if args.rounds < 1 or args.clients < 1:
        parser.error("--rounds and --clients must be at least 1")
    if not 0 <= args.body_mib < args.frame_mib <= 16:
        parser.error("need 0 <= --body-mib < --frame-mib <= 16 (the daemon's frame limit)")
    placement = h.Placement.choose(args.no_pin)
    out = h.Output(args.json)
    h.print_env(out, h.environment(placement))
    rows = [soak(loop, args, placement, out) for loop in args.loop]
    for row in rows:
        out.emit(row)
    if not out.as_json:
        print(h.format_table(rows, COLUMNS))
    if not all(row["flat"] for row in rows):
        print("soak_torn_frames: the daemon's RSS grew (see growth_kib)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
