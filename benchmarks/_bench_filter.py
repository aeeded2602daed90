"""The filter module the benchmarked daemon loads (``fltemu serve --filter _bench_filter``).

Three ports, all created by ``setup``:

* ``\\BenchEcho``: a plain (inline) MessageNotify that returns its input cut to the output
  buffer: the cheapest user->kernel ``send`` the daemon can serve, like the C echo server.
* ``\\BenchK2U``: no MessageNotify; readers connect with a token as connection context and
  only get and reply. A ``k2u`` command on the control port drives kernel->user traffic at
  the connection with that token.
* ``\\BenchCtl``: a coroutine MessageNotify taking JSON commands: ``k2u`` (run FltSendMessage
  senders for a warm-up and a window, then answer with the count, latencies and the
  daemon's CPU time measured in the daemon over the window), ``cpu`` (the daemon's CPU time
  so far, user and system, in ns), ``gc`` (collect garbage, answer with the daemon's RSS
  and connection count),
  ``tracemalloc`` (allocation sites grouped by line, when started with
  ``--set _bench_filter.tracemalloc=1``).

Not here: the clients (the ``bench_*`` scripts).
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
import tracemalloc
from typing import Any, Final

from fltemu import NtStatus
from fltemu.kernel import ClientPort, Filter

ECHO_PORT: Final = "\\BenchEcho"
K2U_PORT: Final = "\\BenchK2U"
CTL_PORT: Final = "\\BenchCtl"
#: Room for 1,000 idle connections and the busy ones on top.
MAX_CONNECTIONS: Final = 8192

_SUCCESS: Final = NtStatus.STATUS_SUCCESS
_snapshot: tracemalloc.Snapshot | None = None


def _rss() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


async def setup(flt: Filter) -> None:
    """Create the three benchmark ports."""
    readers: dict[bytes, ClientPort] = {}
    if flt.settings.get("tracemalloc") == "1":
        tracemalloc.start(8)

    def connect_ok(client_port: ClientPort, cookie: object, context: bytes) -> NtStatus:
        return _SUCCESS

    def disconnect_ok(cookie: object) -> None:
        return None

    def echo(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        return _SUCCESS, data[:out_size]

    def k2u_connect(
        client_port: ClientPort, cookie: object, context: bytes
    ) -> tuple[NtStatus, bytes]:
        readers[context] = client_port
        return _SUCCESS, context

    def k2u_disconnect(cookie: object) -> None:
        if isinstance(cookie, bytes):
            readers.pop(cookie, None)

    async def drive(cmd: dict[str, Any]) -> dict[str, Any]:
        client_port = readers.get(cmd["token"].encode())
        if client_port is None:
            return {"error": "no reader connection with that token"}
        payload = random.Random(int(cmd["seed"])).randbytes(int(cmd["payload_size"]))
        reply_length = int(cmd["reply"])
        start = time.perf_counter_ns() + int(cmd["warmup_ns"])
        end = start + int(cmd["measure_ns"])
        counts: list[int] = []
        errors: list[int] = []
        latencies: list[int] = []
        # The daemon's CPU time over the window, sampled by timers at its two ends.
        cpu: list[int] = []
        loop = asyncio.get_running_loop()
        for at in (start, end):
            delay = (at - time.perf_counter_ns()) / 1e9
            loop.call_later(delay, lambda: cpu.append(time.process_time_ns()))

        async def sender() -> None:
            ns = time.perf_counter_ns
            send = flt.send_message
            lat: list[int] = []
            count = errs = 0
            while True:
                t0 = ns()
                result = await send(client_port, payload, reply_length=reply_length)
                t1 = ns()
                if result.status != _SUCCESS or result.reply is None:
                    errs += 1
                    if errs > 100:
                        break
                if t1 >= end:
                    break
                if t1 >= start:
                    count += 1
                    lat.append(t1 - t0)
            counts.append(count)
            errors.append(errs)
            latencies.extend(lat)

        await asyncio.gather(*(sender() for _ in range(int(cmd["senders"]))))
        # Senders that stopped early (their connection went away) end the window now.
        now = time.process_time_ns()
        while len(cpu) < 2:
            cpu.append(now)
        stopped = min(time.perf_counter_ns(), end)
        latencies.sort()
        n = len(latencies)
        return {
            "count": sum(counts),
            "elapsed_ns": max(0, stopped - start),
            "p50_ns": latencies[(n - 1) // 2] if n else None,
            "p99_ns": latencies[int((n - 1) * 0.99)] if n else None,
            "errors": sum(errors),
            "cpu_ns": cpu[1] - cpu[0],
        }

    def memory() -> dict[str, Any]:
        gc.collect()
        return {"status": _rss(), "connections": len(flt.connections())}

    def allocations(limit: int) -> dict[str, Any]:
        global _snapshot
        if not tracemalloc.is_tracing():
            return {"error": "start the daemon with --set _bench_filter.tracemalloc=1"}
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        base, _snapshot = _snapshot, snapshot
        if base is None:
            return {"top": []}
        stats = snapshot.compare_to(base, "lineno")[:limit]
        return {
            "top": [
                {"where": str(s.traceback[0]), "size_diff": s.size_diff, "count_diff": s.count_diff}
                for s in stats
            ]
        }

    async def control(cookie: object, data: bytes, out_size: int) -> tuple[NtStatus, bytes]:
        cmd = json.loads(data)
        kind = cmd.get("cmd")
        if kind == "k2u":
            result = await drive(cmd)
        elif kind == "cpu":
            result = {"cpu_ns": time.process_time_ns()}
        elif kind == "gc":
            result = memory()
        elif kind == "tracemalloc":
            result = allocations(int(cmd.get("limit", 15)))
        else:
            result = {"error": f"unknown command {kind!r}"}
        return _SUCCESS, json.dumps(result).encode()[:out_size]

    await flt.create_communication_port(
        ECHO_PORT,
        connect_notify=connect_ok,
        disconnect_notify=disconnect_ok,
        message_notify=echo,
        max_connections=MAX_CONNECTIONS,
    )
    await flt.create_communication_port(
        K2U_PORT,
        connect_notify=k2u_connect,
        disconnect_notify=k2u_disconnect,
        message_notify=None,
        max_connections=MAX_CONNECTIONS,
    )
    await flt.create_communication_port(
        CTL_PORT,
        connect_notify=connect_ok,
        disconnect_notify=disconnect_ok,
        message_notify=control,
        max_connections=MAX_CONNECTIONS,
    )
