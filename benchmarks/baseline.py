"""The references every fltemu figure is divided by: a C pair and a bare Python pair.

* **C**: ``c/ipcbench.c``, a poll(2) echo server and a load generator (built with ``cc -O2``
  at run time): what this machine's AF_UNIX sockets and vCPU wake-ups allow.
* **bare**: the least Python that does the daemon's job for one request: a server that
  parses 4-byte little-endian length frames, decodes each body as a msgspec array-like
  Struct shaped like fltemu's ``SendRequest`` ``[2, rid, data, out_size]``, calls a trivial
  handler (echo, cut to ``out_size``), encodes a ``SendResult``-shaped reply into one
  buffer with ``encode_into`` and writes every reply of one read in one ``write``; and an
  RPC client that resolves one Future per call by rid (async) or blocks on a socket (sync).
  On uvloop it uses ``asyncio.Protocol``, on the default loop ``asyncio.BufferedProtocol``
  (plain Protocol pays an mmap/munmap per read there, docs/ipc-limits.md §3). ``--codec raw``
  drops the msgpack work and echoes frames as the C server does.

Run alone it prints C against bare uvloop against bare asyncio for seq, pipe64 and conc8;
the ``bench_*`` scripts import it to measure the same references next to fltemu.
``baseline.py --serve PATH --loop uvloop`` is the bare server process itself.
Not here: fltemu's own figures (``bench_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import _harness as h
import msgspec

_HEADER: Final = struct.Struct("<I")
_READ_BYTES: Final = 64 * 1024


class BareRequest(msgspec.Struct, frozen=True, array_like=True, tag=2):
    """The shape of fltemu's SendRequest: ``[2, rid, data, out_size]``."""

    rid: int
    data: bytes
    out_size: int


class BareResult(msgspec.Struct, frozen=True, array_like=True, tag=17):
    """The shape of fltemu's SendResult: ``[17, rid, status, data]``."""

    rid: int
    status: int
    data: bytes = b""


_encoder: Final = msgspec.msgpack.Encoder()


def _frame(message: object, out: bytearray) -> None:
    start = len(out)
    out += b"\0\0\0\0"
    _encoder.encode_into(message, out, -1)
    _HEADER.pack_into(out, start, len(out) - start - 4)


def _split(
    pending: bytearray, data: bytes | bytearray | memoryview, on_frame: Callable[[memoryview], None]
) -> bytearray:
    """Hand each complete frame of ``pending + data`` to ``on_frame``; return what is left."""
    if pending:
        pending += data
        source: bytes | bytearray | memoryview = pending
    else:
        source = data
    pos = 0
    with memoryview(source) as view:
        end_of_data = len(view)
        while end_of_data - pos >= 4:
            (size,) = _HEADER.unpack_from(view, pos)
            end = pos + 4 + size
            if end > end_of_data:
                break
            on_frame(view[pos:end])
            pos = end
        rest = bytearray(view[pos:]) if not pending and pos < end_of_data else None
    if pending:
        del pending[:pos]  # only once the view is released: a bytearray with exports is fixed
        return pending
    return rest if rest is not None else bytearray()


# --- the bare server -------------------------------------------------------------------------


class _ServerMixin:
    transport: asyncio.Transport | None
    codec: str
    pending: bytearray

    def _handle(self, data: bytes | bytearray | memoryview) -> None:
        # Inlined framing loop: this is the floor fltemu's Session is compared with.
        pending = self.pending
        if pending:
            pending += data
            source: bytes | bytearray | memoryview = pending
        else:
            source = data
        out = bytearray()
        raw = self.codec == "raw"
        decode = _decoder_request.decode
        unpack_from = _HEADER.unpack_from
        pos = 0
        with memoryview(source) as view:
            end_of_data = len(view)
            while end_of_data - pos >= 4:
                end = pos + 4 + unpack_from(view, pos)[0]
                if end > end_of_data:
                    break
                if raw:
                    out += view[pos:end]
                else:
                    request = decode(view[pos + 4 : end])
                    _frame(BareResult(request.rid, 0, request.data[: request.out_size]), out)
                pos = end
            rest = bytearray(view[pos:]) if not pending and pos < end_of_data else None
        if pending:
            del pending[:pos]
        elif rest is not None:
            self.pending = rest
        if out and self.transport is not None:
            self.transport.write(out)


_decoder_request: Final = msgspec.msgpack.Decoder(BareRequest)
_decoder_result: Final = msgspec.msgpack.Decoder(BareResult)


class BareServer(_ServerMixin, asyncio.Protocol):
    """The bare echo server on uvloop: ``data_received``, one ``write`` per read."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.pending = bytearray()
        self.transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._handle(data)


class BareBufferedServer(_ServerMixin, asyncio.BufferedProtocol):
    """The bare echo server on the default loop: reads into one reused buffer."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.pending = bytearray()
        self.transport = None
        self._view = memoryview(bytearray(_READ_BYTES))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._handle(self._view[:nbytes])


def serve(address: str, loop: str, codec: str) -> None:
    """Run the bare server until SIGTERM; print ``ready`` once it listens."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        ev_loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            ev_loop.add_signal_handler(sig, stop.set)
        factory: Callable[[], asyncio.BaseProtocol]
        if loop == "uvloop":
            factory = lambda: BareServer(codec)  # noqa: E731
        else:
            factory = lambda: BareBufferedServer(codec)  # noqa: E731
        server = await ev_loop.create_unix_server(factory, address, backlog=1024)
        print("ready", flush=True)
        await stop.wait()
        server.close()

    h.run_async(loop, main)


def start_bare_server(loop: str, codec: str, placement: h.Placement) -> h.Server:
    """The bare server in its own process, pinned to the server CPU."""
    script = str(h.BENCH_DIR / "baseline.py")
    return h.start_server(
        f"bare {loop} server",
        lambda a: [sys.executable, script, "--serve", a, "--loop", loop, "--codec", codec],
        "ready",
        placement,
    )


# --- the bare clients ------------------------------------------------------------------------


class _ClientMixin:
    transport: asyncio.Transport | None
    codec: str
    pending: bytearray
    waiters: dict[int, asyncio.Future[bytes]]
    fifo: deque[asyncio.Future[bytes]]

    def _handle(self, data: bytes | bytearray | memoryview) -> None:
        pending = self.pending
        if pending:
            pending += data
            source: bytes | bytearray | memoryview = pending
        else:
            source = data
        raw = self.codec == "raw"
        decode = _decoder_result.decode
        unpack_from = _HEADER.unpack_from
        pos = 0
        with memoryview(source) as view:
            end_of_data = len(view)
            while end_of_data - pos >= 4:
                end = pos + 4 + unpack_from(view, pos)[0]
                if end > end_of_data:
                    break
                if raw:
                    self.fifo.popleft().set_result(bytes(view[pos + 4 : end]))
                else:
                    result = decode(view[pos + 4 : end])
                    self.waiters.pop(result.rid).set_result(result.data)
                pos = end
            rest = bytearray(view[pos:]) if not pending and pos < end_of_data else None
        if pending:
            del pending[:pos]
        elif rest is not None:
            self.pending = rest

    def _fail_all(self) -> None:
        error = ConnectionError("the bare server closed the connection")
        for future in [*self.waiters.values(), *self.fifo]:
            if not future.done():
                future.set_exception(error)
        self.waiters.clear()
        self.fifo.clear()


class _BareClient(_ClientMixin, asyncio.Protocol):
    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.pending = bytearray()
        self.transport = None
        self.waiters = {}
        self.fifo = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._handle(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all()


class _BareBufferedClient(_ClientMixin, asyncio.BufferedProtocol):
    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.pending = bytearray()
        self.transport = None
        self.waiters = {}
        self.fifo = deque()
        self._view = memoryview(bytearray(_READ_BYTES))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._handle(self._view[:nbytes])

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all()


class BareAsyncClient:
    """An RPC client: ``await call()`` writes one request and awaits its Future."""

    def __init__(self, protocol: _ClientMixin, payload: bytes, codec: str) -> None:
        self._protocol = protocol
        self._payload = payload
        self._codec = codec
        self._rids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._raw_frame = _HEADER.pack(len(payload)) + payload

    @classmethod
    async def connect(cls, address: str, payload: bytes, codec: str, loop: str) -> BareAsyncClient:
        """Connect to the bare server at ``address``."""
        ev_loop = asyncio.get_running_loop()
        factory: Callable[[], Any]
        if loop == "uvloop":
            factory = lambda: _BareClient(codec)  # noqa: E731
        else:
            factory = lambda: _BareBufferedClient(codec)  # noqa: E731
        _, protocol = await ev_loop.create_unix_connection(factory, address)
        return cls(protocol, payload, codec)

    async def call(self) -> bytes:
        """One request/reply round trip."""
        protocol = self._protocol
        future: asyncio.Future[bytes] = self._loop.create_future()
        if self._codec == "raw":
            protocol.fifo.append(future)
            out: bytes | bytearray = self._raw_frame
        else:
            rid = next(self._rids)
            out = bytearray()
            _frame(BareRequest(rid, self._payload, len(self._payload)), out)
            protocol.waiters[rid] = future
        assert protocol.transport is not None
        protocol.transport.write(out)
        return await future

    def close(self) -> None:
        """Close the connection."""
        if self._protocol.transport is not None:
            self._protocol.transport.close()


class BareSyncClient:
    """A blocking-socket client: ``call()`` writes a request and reads its reply."""

    def __init__(self, address: str, payload: bytes, codec: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(address)
        self._payload = payload
        self._codec = codec
        self._rids = itertools.count(1)
        self._buf = bytearray(_READ_BYTES)
        self._view = memoryview(self._buf)
        self._pending = bytearray()

    def call(self) -> bytes:
        """One request/reply round trip."""
        out = bytearray()
        if self._codec == "raw":
            out += _HEADER.pack(len(self._payload))
            out += self._payload
        else:
            _frame(BareRequest(next(self._rids), self._payload, len(self._payload)), out)
        self._sock.sendall(out)
        got: list[bytes] = []

        def on_frame(frame: memoryview) -> None:
            if self._codec == "raw":
                got.append(bytes(frame[4:]))
            else:
                got.append(_decoder_result.decode(frame[4:]).data)

        while not got:
            n = self._sock.recv_into(self._view)
            if not n:
                raise ConnectionError("the bare server closed the connection")
            self._pending = _split(self._pending, self._view[:n], on_frame)
        return got[0]

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


def run_bare(
    server: h.Server,
    *,
    client: str,
    loop: str,
    connections: int,
    inflight: int,
    payload: bytes,
    codec: str,
    timing: h.Timing,
) -> h.RunResult | None:
    """One run of a bare client against the bare server (None: no sync pipelining)."""
    if client == "sync":
        if inflight > 1:
            return None  # one blocking socket cannot keep several requests in flight
        clients = [BareSyncClient(server.address, payload, codec) for _ in range(connections)]
        try:
            return h.drive_threads([c.call for c in clients], timing)
        finally:
            for c in clients:
                c.close()

    async def main() -> h.RunResult:
        aclients = [
            await BareAsyncClient.connect(server.address, payload, codec, loop)
            for _ in range(connections)
        ]
        try:
            return await h.drive_tasks([c.call for c in aclients for _ in range(inflight)], timing)
        finally:
            for c in aclients:
                c.close()

    result: h.RunResult = h.run_async(loop, main)
    return result


# --- the reference implementations, for run_matrix --------------------------------------------


def shape(config: dict[str, Any]) -> tuple[int, int]:
    """(connections, requests in flight) of a configuration: its scenario, or its readers."""
    if "connections" in config:
        return int(config["connections"]), int(config["inflight"])
    return 1, int(config["readers"])


def c_impl(build: h.CBuild, timing: h.Timing, placement: h.Placement) -> h.Impl:
    """The C pair as a run_matrix implementation."""

    def run(server: h.Server, config: dict[str, Any]) -> h.RunResult:
        connections, inflight = shape(config)
        return h.run_c_client(
            build,
            server.address,
            size=config["payload"],
            connections=connections,
            inflight=inflight,
            timing=timing,
            placement=placement,
        )

    return h.Impl("c", {"impl": "C", "client": "C", "loop": "-"}, "c", run)


def bare_impl(client: str, loop: str, codec: str, timing: h.Timing, seed: int) -> h.Impl:
    """A bare Python pair as a run_matrix implementation."""

    def run(server: h.Server, config: dict[str, Any]) -> h.RunResult | None:
        connections, inflight = shape(config)
        return run_bare(
            server,
            client=client,
            loop=loop,
            connections=connections,
            inflight=inflight,
            payload=h.payload_bytes(config["payload"], seed),
            codec=codec,
            timing=timing,
        )

    labels = {"impl": "bare", "client": client, "loop": loop, "codec": codec}
    return h.Impl(f"bare/{client}/{loop}", labels, f"bare-{loop}", run)


def reference_servers(
    build: h.CBuild | None, loops: list[str], codec: str, placement: h.Placement
) -> dict[str, Callable[[], h.Server]]:
    """Server starters for the references: ``c`` (when built) and ``bare-<loop>``."""
    start: dict[str, Callable[[], h.Server]] = {}
    if build is not None and build.binary is not None:
        start["c"] = lambda: h.start_c_server(build, placement)
    for loop in loops:
        start[f"bare-{loop}"] = lambda loop=loop: start_bare_server(loop, codec, placement)  # type: ignore[misc]
    return start


def add_baseline_arg(parser: argparse.ArgumentParser) -> None:
    """``--baseline c,bare``: the references the ``bench_*`` scripts run alongside fltemu."""
    parser.add_argument(
        "--baseline",
        type=h.choices_list(["c", "bare", "none"]),
        default=["c", "bare"],
        help="references run alongside (default c,bare)",
    )


# --- standalone ------------------------------------------------------------------------------

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
        ]
    )
]


def main(argv: list[str] | None = None) -> int:
    """Measure C, bare uvloop and bare asyncio on seq, pipe64 and conc8."""
    parser = h.base_parser(__doc__.split("\n")[0])
    h.add_loop_arg(parser, default="uvloop,asyncio")
    h.add_client_arg(parser, default="async,sync")
    h.add_payload_arg(parser)
    h.add_scenario_args(parser)
    parser.add_argument(
        "--codec",
        choices=["msgpack", "raw"],
        default="msgpack",
        help="msgpack: decode/encode fltemu-shaped messages (default); raw: echo frames",
    )
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve and not args.versions:
        serve(args.serve, args.loop[0], args.codec)
        return 0
    with h.measuring(args, TABLES, c_program="ipcbench") as run:
        impls: list[h.Impl] = []
        if run.build is not None and run.build.binary is not None:
            impls.append(c_impl(run.build, run.timing, run.placement))
        for loop in args.loop:
            for client in args.client:
                impls.append(bare_impl(client, loop, args.codec, run.timing, args.seed))
        configs = h.scenario_configs(args)
        start = reference_servers(run.build, args.loop, args.codec, run.placement)
        results = h.run_matrix(impls, configs, run.timing, start, run.out)
        emit_rows(run.out, "baseline", impls, configs, results, run.timing, run.placement)
    return 0


def emit_rows(
    out: h.Output,
    bench: str,
    impls: list[h.Impl],
    configs: list[dict[str, Any]],
    results: dict[tuple[str, int], list[h.RunResult]],
    timing: h.Timing,
    placement: h.Placement,
    bare_for: Callable[[h.Impl], str | None] | None = None,
    decorate: Callable[[dict[str, Any], int], None] | None = None,
) -> None:
    """One row per (implementation, configuration) with its ratios to the references."""
    for index, config in enumerate(configs):
        c_runs = results.get(("c", index))
        for impl in impls:
            runs = results.get((impl.key, index))
            if not runs:
                continue
            row: dict[str, Any] = {"bench": bench, **impl.labels, **config}
            row.update(h.summarize(runs))
            row["ratio_c"] = h.paired_ratio(runs, c_runs) if c_runs else None
            if bare_for is not None:
                bare_key = bare_for(impl)
                bare_runs = results.get((bare_key, index)) if bare_key else None
                if bare_key is not None and bare_runs is None:
                    # No bare run of that client kind (sync pipelining): the async pair.
                    bare_key = f"bare/async/{impl.labels['loop']}"
                    bare_runs = results.get((bare_key, index))
                row["ratio_bare"] = h.paired_ratio(runs, bare_runs) if bare_runs else None
                row["bare_ref"] = bare_key if bare_runs else None
            row["repeats"] = len(runs)
            row["warmup_s"] = timing.warmup_s
            row["measure_s"] = timing.measure_s
            row["pinned"] = placement.pinned
            if decorate is not None:
                decorate(row, index)
            out.emit(row)


if __name__ == "__main__":
    sys.exit(main())
