"""Kernel->user ``send_message`` answered by user replies, with 1 and 64 pending readers.

The daemon (``fltemu serve --filter _bench_filter``, own process, server CPU) runs
``senders`` concurrent FltSendMessage loops (``flt.send_message(client_port, payload,
reply_length=...)``) at one connection of ``\\BenchK2U``. That connection belongs to this
process (client CPU), where ``readers`` workers each answer a message and wait for the next
(async: tasks sharing one AsyncPort; sync: threads sharing one Port), with ``reply_and_get``
(the reply and the next get in one write: one round trip per message) or, with ``--reader
separate``, ``reply`` then ``get_message`` (two round trips). A second connection, to
``\\BenchCtl``, starts the run and collects the result; the daemon counts the
``send_message`` calls that complete (message delivered, reply received) inside the window
and measures their latency, so a rate here is kernel messages answered per second.

One message costs a GetResult frame to the user and a ReplyRequest frame back (plus the
ReplyResult and the next GetRequest), so with 1 reader it is compared with the C pair's
sequential rate (a message needs two round trips there) and with N readers with the C pair
keeping N requests in flight (its pipelined rate); ``ratio_c`` says which (``c_ref``).
Not here: user->kernel sends (``bench_roundtrip``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import threading
from typing import Any, Final

import _harness as h
import baseline

import fltuser

#: fltuser's FILTER_MESSAGE_HEADER size: get_message buffers count it.
_HEADER_BYTES: Final = fltuser.FILTER_HEADER_BYTES
_tokens = itertools.count(1)


def _command(
    token: str, payload: int, reply: int, senders: int, seed: int, timing: h.Timing
) -> bytes:
    return json.dumps(
        {
            "cmd": "k2u",
            "token": token,
            "payload_size": payload,
            "reply": reply,
            "senders": senders,
            "seed": seed,
            "warmup_ns": int(timing.warmup_s * 1e9),
            "measure_ns": int(timing.measure_s * 1e9),
        }
    ).encode()


def _result(raw: bytes) -> h.RunResult:
    stats = json.loads(raw)
    if "error" in stats:
        raise RuntimeError(f"the benchmark filter refused: {stats['error']}")
    return h.RunResult(
        count=stats["count"],
        elapsed_ns=stats["elapsed_ns"],
        p50_ns=stats["p50_ns"],
        p99_ns=stats["p99_ns"],
        errors=stats["errors"],
    )


def run_fltemu(
    server: h.Server,
    *,
    client: str,
    loop: str,
    readers: int,
    senders: int,
    payload: int,
    reply: bytes,
    seed: int,
    timing: h.Timing,
    combined: bool = True,
) -> h.RunResult:
    """One run: ``senders`` kernel loops against ``readers`` get+reply workers."""
    token = f"k2u-{os.getpid()}-{next(_tokens)}"
    command = _command(token, payload, len(reply), senders, seed, timing)
    buffer_size = payload + _HEADER_BYTES
    if client == "sync":
        return _run_sync(server.address, token, command, readers, buffer_size, reply, combined)

    async def main() -> h.RunResult:
        port = await fltuser.aconnect(h.K2U_PORT, context=token.encode(), address=server.address)
        ctl = await fltuser.aconnect(h.CTL_PORT, address=server.address)

        async def reader() -> None:
            get, answer, answer_and_get = port.get_message, port.reply, port.reply_and_get
            message = await get(buffer_size)
            while True:
                if combined:
                    message = await answer_and_get(message.message_id, reply, buffer_size)
                else:
                    await answer(message.message_id, reply)
                    message = await get(buffer_size)

        tasks = [asyncio.create_task(reader()) for _ in range(readers)]
        try:
            return _result(await ctl.send(command, 1 << 16))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ctl.aclose()
            await port.aclose()

    result: h.RunResult = h.run_async(loop, main)
    return result


def _run_sync(
    address: str,
    token: str,
    command: bytes,
    readers: int,
    buffer_size: int,
    reply: bytes,
    combined: bool,
) -> h.RunResult:
    port = fltuser.connect(h.K2U_PORT, context=token.encode(), address=address)
    ctl = fltuser.connect(h.CTL_PORT, address=address)

    def reader() -> None:
        try:
            message = port.get_message(buffer_size)
            while True:
                if combined:
                    message = port.reply_and_get(message.message_id, reply, buffer_size)
                else:
                    port.reply(message.message_id, reply)
                    message = port.get_message(buffer_size)
        except fltuser.HResultError:
            return  # the port was closed: the run is over

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(readers)]
    for t in threads:
        t.start()
    try:
        return _result(ctl.send(command, 1 << 16))
    finally:
        port.close()
        ctl.close()
        for t in threads:
            t.join(timeout=10)


def fltemu_impl(
    client: str,
    loop: str,
    timing: h.Timing,
    seed: int,
    senders: int | None,
    reply_size: int | None,
    combined: bool = True,
) -> h.Impl:
    """fltemu kernel->user traffic with one client flavour, as a run_matrix implementation."""

    def run(server: h.Server, config: dict[str, Any]) -> h.RunResult:
        readers = int(config["readers"])
        size = reply_size if reply_size is not None else int(config["payload"])
        return run_fltemu(
            server,
            client=client,
            loop=loop,
            readers=readers,
            senders=senders or readers,
            payload=int(config["payload"]),
            reply=h.payload_bytes(size, seed + 1),
            seed=seed,
            timing=timing,
            combined=combined,
        )

    reader = "reply_and_get" if combined else "reply, get"
    labels = {"impl": "fltemu", "client": client, "loop": loop, "reader": reader}
    return h.Impl(_key(labels), labels, f"daemon-{loop}", run)


def _key(labels: dict[str, Any]) -> str:
    key = f"{labels['impl']}/{labels['client']}/{labels['loop']}"
    return key + ("/separate" if labels.get("reader") == "reply, get" else "")


TABLES: Final = [
    h.Table(
        [
            ("impl", "impl"),
            ("client", "client"),
            ("loop", "loop"),
            ("readers", "readers"),
            ("reader", "reader calls"),
            ("payload", "payload B"),
            ("msgs_per_s", "msg/s"),
            ("spread_pct", "±%"),
            ("p50_us", "p50 µs"),
            ("p99_us", "p99 µs"),
            ("ratio_c", "× C"),
            ("c_ref", "C ref"),
            ("ratio_c_pipe64", "× C pipe64"),
            ("ratio_bare", "× bare"),
        ]
    )
]


def main(argv: list[str] | None = None) -> int:
    """Measure kernel->user messages next to the references."""
    parser = h.base_parser(__doc__.split("\n")[0])
    h.add_loop_arg(parser)
    h.add_client_arg(parser, default="async,sync")
    h.add_payload_arg(parser)
    parser.add_argument(
        "--readers",
        type=h.csv_list(int),
        default=[1, 64],
        help="pending readers (get_message + reply workers) on one connection (default 1,64)",
    )
    parser.add_argument(
        "--senders",
        type=int,
        default=None,
        help="concurrent send_message loops in the daemon (default: as many as readers)",
    )
    parser.add_argument(
        "--reply-size",
        type=int,
        default=None,
        help="bytes of each reply (default: the payload size, as an echo)",
    )
    parser.add_argument(
        "--reader",
        type=h.choices_list(["combined", "separate"]),
        default=["combined"],
        help="how a reader answers and waits again: reply_and_get (combined, default) and/or "
        "reply then get_message (separate)",
    )
    baseline.add_baseline_arg(parser)
    args = parser.parse_args(argv)
    with h.measuring(args, TABLES, c_program="ipcbench", c_wanted="c" in args.baseline) as run:
        timing, placement = run.timing, run.placement
        impls: list[h.Impl] = []
        if run.build is not None and run.build.binary is not None:
            impls.append(baseline.c_impl(run.build, timing, placement))
        bare_loops = args.loop if "bare" in args.baseline else []
        for loop in bare_loops:
            impls.append(baseline.bare_impl("async", loop, "msgpack", timing, args.seed))
        for loop in args.loop:
            for client in args.client:
                for reader in args.reader:
                    impls.append(
                        fltemu_impl(
                            client,
                            loop,
                            timing,
                            args.seed,
                            args.senders,
                            args.reply_size,
                            reader == "combined",
                        )
                    )
        start = baseline.reference_servers(run.build, bare_loops, "msgpack", placement)
        for loop in args.loop:
            start[f"daemon-{loop}"] = lambda loop=loop: h.start_daemon(loop, placement)  # type: ignore[misc]
        configs = [{"readers": r, "payload": p} for p in args.payload for r in args.readers]
        # C's pipelined rate (64 in flight) for every payload, for the ratio the issue asks for.
        pipe_configs = [{"readers": 64, "payload": p} for p in args.payload]
        all_configs = configs + [c for c in pipe_configs if c not in configs]
        results = h.run_matrix(impls, all_configs, timing, start, run.out)
        baseline.emit_rows(
            run.out,
            "kernel_to_user",
            impls,
            configs,
            results,
            timing,
            placement,
            bare_for=lambda impl: (
                f"bare/async/{impl.labels['loop']}" if impl.labels["impl"] == "fltemu" else None
            ),
            decorate=lambda row, index: _decorate(
                row, index, configs, all_configs, results, args.senders
            ),
        )
    return 0


def _decorate(
    row: dict[str, Any],
    index: int,
    configs: list[dict[str, Any]],
    all_configs: list[dict[str, Any]],
    results: dict[tuple[str, int], list[h.RunResult]],
    senders: int | None,
) -> None:
    readers = int(configs[index]["readers"])
    if row["impl"] == "fltemu":
        row["senders"] = senders or readers
    row["c_ref"] = "C seq" if readers == 1 else f"C {readers} in flight"
    pipe_index = all_configs.index({"readers": 64, "payload": configs[index]["payload"]})
    c_pipe = results.get(("c", pipe_index))
    key = _key(row) if row["impl"] != "C" else "c"
    runs = results.get((key, index))
    row["ratio_c_pipe64"] = h.paired_ratio(runs, c_pipe) if runs and c_pipe else None


if __name__ == "__main__":
    sys.exit(main())
