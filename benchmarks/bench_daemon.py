"""The daemon's own ceiling: rate and daemon CPU time per message, driven by a native client.

``c/fltload.c`` speaks ``docs/protocol.md`` in C (the encoder and decoder of the Windows side),
so no Python client stands between the load and the daemon:

* ``send``: FilterSendMessage to ``\\BenchEcho`` with 1 or 64 requests in flight on one
  connection; the daemon's CPU time over the window comes from ``\\BenchCtl``'s ``cpu``
  command, asked when the window opens and when it closes.
* ``k2u``: one connection keeps 1 or 64 FilterGetMessage requests pending and answers each
  message at once (FilterReplyMessage plus a new get, one write per read); as many
  FltSendMessage loops run in the daemon, which measures the window (count, latency, CPU).

``cpu µs/msg`` is the daemon process's user + system CPU time over the window divided by the
messages completed in it: unlike a rate, it hardly depends on how fast this machine wakes a
vCPU, so it is the figure to compare across changes. For sends, the same client also drives
``baseline.py``'s bare uvloop server (``--raw``: no handshake; its CPU time read from /proc),
the least Python that answers such a request, so ``cpu × bare`` says how far the daemon is
from that floor. With ``--base REV`` the daemon of
another revision (its ``fltemu`` package, taken with ``git archive``) runs the same load in the
same run,
so ``× base`` compares the two daemons measured minutes apart; ``run_all.py`` uses it for
the target "a third of the CPU per message of REV".
Not here: Python clients (``bench_roundtrip``, ``bench_kernel_to_user``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import _harness as h
import baseline

#: The revision whose CPU per message the speed targets are set against (``run_all.py``).
CPU_BASE_REV: Final = "efc5622"

TABLES: Final = [
    h.Table(
        [
            ("impl", "daemon"),
            ("mode", "mode"),
            ("depth", "in flight"),
            ("payload", "payload B"),
            ("msgs_per_s", "msg/s"),
            ("spread_pct", "±%"),
            ("p50_us", "p50 µs"),
            ("cpu_us_per_msg", "cpu µs/msg"),
            ("cpu_pct", "daemon cpu %"),
            ("ratio_base", "msg/s × base"),
            ("cpu_ratio_base", "cpu × base"),
            ("cpu_ratio_bare", "cpu × bare"),
        ]
    )
]


def run_fltload(
    build: h.CBuild, server: h.Server, config: dict[str, Any], timing: h.Timing, raw: bool = False
) -> h.RunResult | None:
    """One run of the native client against ``server`` (``raw``: the bare server, sends only)."""
    if raw and config["mode"] != "send":
        return None
    assert build.binary is not None
    mode, depth = config["mode"], int(config["depth"])
    argv = [str(build.binary), mode, server.address, "--size", str(config["payload"])]
    argv += ["--readers" if mode == "k2u" else "--inflight", str(depth)]
    if raw:
        argv += ["--raw", "--cpu-pid", str(server.proc.pid)]
    argv += ["--warmup-ms", str(max(1, round(timing.warmup_s * 1000)))]
    argv += ["--measure-ms", str(max(1, round(timing.measure_s * 1000)))]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60 + timing.measure_s * 3)
    try:
        data = json.loads(proc.stdout)  # printed even when some calls failed (errors > 0)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"fltload failed ({proc.returncode}): {proc.stderr.strip()}\n{server.log()[-2000:]}"
        ) from None
    return h.RunResult(
        count=data["count"],
        elapsed_ns=data["elapsed_ns"],
        p50_ns=data["p50_ns"] or None,
        p99_ns=data["p99_ns"] or None,
        errors=data["errors"],
        extra={"daemon_cpu_ns": data["daemon_cpu_ns"]},
    )


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """The tree of ``rev`` in a temporary directory (``git archive``; nothing is left behind).

    Raises:
        RuntimeError: not a git checkout, or no such revision.
    """
    tmp = Path(tempfile.mkdtemp(prefix="fltbench-base-"))
    try:
        try:
            archive = subprocess.run(
                ["git", "-C", str(h.BENCH_DIR.parent), "archive", rev, "fltemu"],
                capture_output=True,
            )
            if archive.returncode != 0:
                raise RuntimeError(f"git archive {rev}: {archive.stderr.decode().strip()}")
            tar = subprocess.run(
                ["tar", "-x", "-C", str(tmp)], input=archive.stdout, capture_output=True
            )
            if tar.returncode != 0:
                raise RuntimeError(f"tar: {tar.stderr.decode().strip()}")
        except OSError as exc:  # no git or tar
            raise RuntimeError(str(exc)) from exc
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu_per_msg(run: h.RunResult) -> float | None:
    return run.extra["daemon_cpu_ns"] / run.count / 1000 if run.count else None


def _cpu_ratio(runs: list[h.RunResult], refs: list[h.RunResult]) -> float | None:
    """Median over repeats of CPU per message over the reference's (runs of one repeat)."""
    pairs = [(_cpu_per_msg(r), _cpu_per_msg(b)) for r, b in zip(runs, refs, strict=False)]
    ratio = _median([a / b if a and b else None for a, b in pairs])
    return round(ratio, 3) if ratio is not None else None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def emit_rows(
    out: h.Output,
    impls: list[h.Impl],
    configs: list[dict[str, Any]],
    results: dict[tuple[str, int], list[h.RunResult]],
    timing: h.Timing,
    base: str | None,
) -> None:
    """One row per (daemon, configuration); ``× base`` pairs runs of the same repeat."""
    for index, config in enumerate(configs):
        base_runs = results.get(("base", index))
        bare_runs = results.get(("bare", index))
        for impl in impls:
            runs = results.get((impl.key, index))
            if not runs:
                continue
            row: dict[str, Any] = {"bench": "daemon", **impl.labels, **config}
            row.update(h.summarize(runs))
            cpu = _median([_cpu_per_msg(r) for r in runs])
            row["cpu_us_per_msg"] = round(cpu, 2) if cpu is not None else None
            busy = _median([r.extra["daemon_cpu_ns"] / r.elapsed_ns * 100 for r in runs])
            row["cpu_pct"] = round(busy) if busy is not None else None
            if base_runs and impl.key == "fltemu":
                row["ratio_base"] = h.paired_ratio(runs, base_runs)
                row["cpu_ratio_base"] = _cpu_ratio(runs, base_runs)
            if bare_runs and impl.key != "bare":
                row["cpu_ratio_bare"] = _cpu_ratio(runs, bare_runs)
            row["base"] = base
            row["repeats"] = len(runs)
            row["warmup_s"] = timing.warmup_s
            row["measure_s"] = timing.measure_s
            out.emit(row)


def main(argv: list[str] | None = None) -> int:
    """Measure the daemon with the native client (and another revision's, with --base)."""
    parser = h.base_parser(__doc__.split("\n")[0])
    h.add_loop_arg(parser)
    h.add_payload_arg(parser)
    parser.add_argument(
        "--modes",
        type=h.choices_list(["k2u", "send"]),
        default=["k2u", "send"],
        help="k2u (kernel->user messages answered) and/or send (user->kernel sends)",
    )
    parser.add_argument(
        "--depth",
        type=h.csv_list(int),
        default=[1, 64],
        help="pending readers (k2u) or sends in flight (send) (default 1,64)",
    )
    parser.add_argument(
        "--base",
        metavar="REV",
        help="also measure the daemon of git revision REV in the same run (e.g. "
        f"{CPU_BASE_REV}, the revision the CPU target is set against)",
    )
    args = parser.parse_args(argv)
    with h.measuring(
        args,
        TABLES,
        c_program="fltload",
        c_key="native_client",
        env_extra={"base": args.base},
        without_c=": nothing to measure",
    ) as run:
        build, timing, placement = run.build, run.timing, run.placement
        if build is None or build.binary is None:
            run.tables = []
            return 0
        loop = args.loop[0]
        with contextlib.ExitStack() as stack:
            start = {"daemon": lambda: h.start_daemon(loop, placement)}
            labels = {"impl": "fltemu", "loop": loop}
            impls = [h.Impl("fltemu", labels, "daemon", _runner(build, timing))]
            if "send" in args.modes:
                start["bare"] = lambda: baseline.start_bare_server(loop, "msgpack", placement)
                bare_labels = {"impl": "bare", "loop": loop}
                bare = h.Impl("bare", bare_labels, "bare", _runner(build, timing, raw=True))
                impls.insert(0, bare)
            base = args.base
            try:
                tree = stack.enter_context(checkout(base)) if base else None
            except RuntimeError as exc:  # a shallow clone, an unknown revision
                run.out.note(f"# the daemon of {base} is not measured: {exc}")
                tree = base = None
            if tree is not None:
                start["base"] = lambda: h.start_daemon(loop, placement, source=tree)
                base_labels = {"impl": f"fltemu@{base}", "loop": loop}
                impls.insert(0, h.Impl("base", base_labels, "base", _runner(build, timing)))
            configs = [
                {"mode": m, "depth": d, "payload": p}
                for m in args.modes
                for p in args.payload
                for d in args.depth
            ]
            results = h.run_matrix(impls, configs, timing, start, run.out)
        emit_rows(run.out, impls, configs, results, timing, base)
    return 0


def _runner(build: h.CBuild, timing: h.Timing, raw: bool = False) -> Any:
    return lambda server, config: run_fltload(build, server, config, timing, raw)


if __name__ == "__main__":
    sys.exit(main())
