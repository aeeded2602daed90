"""Measuring: the windows, the threads and tasks that drive calls, the run matrix."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fltemu.daemon.runner import loop_factory

from .options import Timing
from .processes import Server, servers
from .report import Output
from .stats import RunResult


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


def run_async(loop: str, coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``coro_fn()`` to completion on a fresh loop of the given kind.

    The loop comes from the daemon's own ``loop_factory`` (``fltemu serve --loop``), so a
    client measured here runs on exactly the loop a daemon started with that choice runs on.
    """
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


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
