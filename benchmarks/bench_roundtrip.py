"""User->kernel ``send`` round trips: fltemu against the C pair and the bare Python pair.

The daemon runs ``fltemu serve --filter _bench_filter`` in its own process (pinned to the
server CPU); this process is the client (pinned to the other CPU). Each ``send`` goes to
``\\BenchEcho``, whose inline MessageNotify returns the input, so a round trip is exactly
the C echo's job plus fltemu's protocol and port rules. Scenarios:

* ``seq``: one connection, one request at a time;
* ``pipe64``: one connection, 64 requests in flight (async: 64 tasks sharing one AsyncPort;
  sync: 64 threads sharing one thread-safe Port); ``--inflight`` changes the 64;
* ``conc8``: 8 connections, each sequential (async: 8 AsyncPorts in one loop; sync: 8
  threads with a Port each); ``--connections`` changes the 8.

Every repeat starts a fresh daemon, C server and bare server and runs C, bare and fltemu
back to back on each configuration; rows carry the median rate, p50/p99 latency and the
ratios to C (``ratio_c``) and to the bare pair (``ratio_bare``) of the same repeat.
Not here: kernel->user messages (``bench_kernel_to_user``), idle connections
(``bench_connections``).
"""

from __future__ import annotations

import sys
from typing import Any, Final

import _harness as h
import baseline

import fltuser


def run_fltemu(
    server: h.Server,
    *,
    client: str,
    loop: str,
    connections: int,
    inflight: int,
    payload: bytes,
    timing: h.Timing,
    port_name: str = h.ECHO_PORT,
) -> h.RunResult:
    """One run of fltuser ``send``: ``connections`` x ``inflight`` callers."""
    out_size = len(payload)
    if client == "sync":
        ports = [fltuser.connect(port_name, address=server.address) for _ in range(connections)]
        try:
            calls = [
                (lambda p=p: p.send(payload, out_size)) for p in ports for _ in range(inflight)
            ]
            return h.drive_threads(calls, timing)
        finally:
            for p in ports:
                p.close()

    async def main() -> h.RunResult:
        address = server.address
        aports = [await fltuser.aconnect(port_name, address=address) for _ in range(connections)]
        try:
            acalls = [
                (lambda p=p: p.send(payload, out_size)) for p in aports for _ in range(inflight)
            ]
            return await h.drive_tasks(acalls, timing)
        finally:
            for p in aports:
                await p.aclose()

    result: h.RunResult = h.run_async(loop, main)
    return result


def fltemu_impl(client: str, loop: str, timing: h.Timing, seed: int) -> h.Impl:
    """fltemu with one client flavour on one loop, as a run_matrix implementation."""

    def run(server: h.Server, config: dict[str, Any]) -> h.RunResult:
        return run_fltemu(
            server,
            client=client,
            loop=loop,
            connections=config["connections"],
            inflight=config["inflight"],
            payload=h.payload_bytes(config["payload"], seed),
            timing=timing,
        )

    labels = {"impl": "fltemu", "client": client, "loop": loop}
    return h.Impl(f"fltemu/{client}/{loop}", labels, f"daemon-{loop}", run)


TABLES: Final = [
    h.Table(
        [
            ("impl", "impl"),
            ("client", "client"),
            ("loop", "loop"),
            ("scenario", "scenario"),
            ("payload", "payload B"),
            ("msgs_per_s", "msg/s"),
            ("spread_pct", "±%"),
            ("p50_us", "p50 µs"),
            ("p99_us", "p99 µs"),
            ("ratio_c", "× C"),
            ("ratio_bare", "× bare"),
        ]
    )
]


def main(argv: list[str] | None = None) -> int:
    """Measure fltemu's send round trips next to the references."""
    parser = h.base_parser(__doc__.split("\n")[0])
    h.add_loop_arg(parser)
    h.add_client_arg(parser)
    h.add_payload_arg(parser)
    h.add_scenario_args(parser)
    baseline.add_baseline_arg(parser)
    args = parser.parse_args(argv)
    with h.measuring(args, TABLES, c_program="ipcbench", c_wanted="c" in args.baseline) as run:
        timing, placement = run.timing, run.placement
        impls: list[h.Impl] = []
        if run.build is not None and run.build.binary is not None:
            impls.append(baseline.c_impl(run.build, timing, placement))
        bare_loops = args.loop if "bare" in args.baseline else []
        for loop in bare_loops:
            for client in args.client:
                impls.append(baseline.bare_impl(client, loop, "msgpack", timing, args.seed))
        for loop in args.loop:
            for client in args.client:
                impls.append(fltemu_impl(client, loop, timing, args.seed))
        start = baseline.reference_servers(run.build, bare_loops, "msgpack", placement)
        for loop in args.loop:
            start[f"daemon-{loop}"] = lambda loop=loop: h.start_daemon(loop, placement)  # type: ignore[misc]
        configs = h.scenario_configs(args)
        results = h.run_matrix(impls, configs, timing, start, run.out)
        baseline.emit_rows(
            run.out,
            "roundtrip",
            impls,
            configs,
            results,
            timing,
            placement,
            bare_for=lambda impl: (
                f"bare/{impl.labels['client']}/{impl.labels['loop']}"
                if impl.labels["impl"] == "fltemu"
                else None
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
