"""Run every benchmark script and print where fltemu stands against the issue's targets.

Runs ``baseline.py``, ``bench_roundtrip.py``, ``bench_kernel_to_user.py`` and
``bench_connections.py`` one after another (each as a subprocess with ``--json``, so each
pins, warms up and repeats as it does alone), prints each script's table, then the ratio
table: every target with fltemu's figure, the C pair's and the bare uvloop pair's figures
measured in the same script run, and whether the target holds.
Not here: the measurements themselves (the scripts).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import _harness as h
from bench_connections import IDLE_COLUMNS, MEMORY_COLUMNS

SCRIPTS: Final = {
    "baseline": "baseline.py",
    "roundtrip": "bench_roundtrip.py",
    "kernel_to_user": "bench_kernel_to_user.py",
    "connections": "bench_connections.py",
}


def run_script(name: str, passthrough: list[str], extra: list[str]) -> list[dict[str, Any]]:
    """Run one script with ``--json``; its rows, each tagged with the script name.

    Raises:
        RuntimeError: the script failed.
    """
    argv = [sys.executable, str(h.BENCH_DIR / SCRIPTS[name]), "--json", *passthrough, *extra]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{SCRIPTS[name]} exited with {proc.returncode}")
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            row["script"] = name
            rows.append(row)
    return rows


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _find_loop(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    # The targets are about the default daemon (uvloop); without it, the asyncio figure.
    for loop in ("uvloop", "asyncio"):
        found = _find(rows, loop=loop, **match)
        if found is not None:
            return found
    return None


def evaluate(rows: list[dict[str, Any]], payload: int = 64) -> list[dict[str, Any]]:
    """One row per target: fltemu's figure, the references', and whether it holds."""
    out: list[dict[str, Any]] = []
    rt = [r for r in rows if r.get("bench") == "roundtrip"]
    k2u = [r for r in rows if r.get("bench") == "kernel_to_user"]
    conn = [r for r in rows if r.get("bench") == "connections"]
    for target in h.TARGETS:
        tid = target["id"]
        row: dict[str, Any] = {"bench": "target", "id": tid, "what": target["what"]}
        found: dict[str, Any] | None = None
        c_row = bare_row = None
        if tid in ("seq-sync", "seq-async", "conc8", "pipe64"):
            scenario = tid.split("-")[0]
            client = "sync" if tid == "seq-sync" else "async"
            same = {"scenario": scenario, "payload": payload}
            found = _find_loop(rt, impl="fltemu", client=client, **same)
            c_row = _find(rt, impl="C", **same)
            bare_row = _find_loop(rt, impl="bare", client=client, **same) or _find_loop(
                rt, impl="bare", client="async", **same
            )
        elif tid == "k2u64":
            same = {"readers": 64, "payload": payload}
            found = _find_loop(k2u, impl="fltemu", client="async", **same)
            c_row = _find(k2u, impl="C", **same)
            bare_row = _find_loop(k2u, impl="bare", client="async", **same)
            if found is not None:
                row["ratio_c_pipe64"] = found.get("ratio_c_pipe64")
        else:
            found = _find(conn, kind="summary")
        value = found.get(target["metric"]) if found else None
        row["value"] = value
        row["metric"] = target["metric"]
        if value is None:
            row["figure"] = "-"
        elif target["metric"] == "msgs_per_s":
            row["figure"] = h.format_rate(float(value)) + " msg/s"
        elif target["metric"] == "ratio_c":
            row["figure"] = f"{value:.2f} × C"
        elif target["metric"] == "kib_per_connection":
            row["figure"] = f"{value:.1f} KiB"
        else:
            row["figure"] = f"{value:.1f} %"
        if "min" in target:
            row["target"] = (
                f">= {target['min']:g} × C"
                if target["metric"] == "ratio_c"
                else f">= {h.format_rate(target['min'])} msg/s"
            )
            row["holds"] = value is not None and value >= target["min"]
        else:
            unit = " KiB" if target["metric"] == "kib_per_connection" else " %"
            row["target"] = f"<= {target['max']:g}{unit}"
            row["holds"] = value is not None and value <= target["max"]
        if value is None:
            row["holds"] = None
        if found is not None and "msgs_per_s" in found:
            row["loop"] = found.get("loop")
            row["fltemu_msgs_per_s"] = found["msgs_per_s"]
            row["ratio_c"] = found.get("ratio_c")
            row["ratio_bare"] = found.get("ratio_bare")
        row["c_msgs_per_s"] = c_row["msgs_per_s"] if c_row else None
        row["bare_msgs_per_s"] = bare_row["msgs_per_s"] if bare_row else None
        out.append(row)
    return out


TABLES: Final = {
    "baseline": [
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
    ],
    "roundtrip": [
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
    ],
    "kernel_to_user": [
        ("impl", "impl"),
        ("client", "client"),
        ("loop", "loop"),
        ("readers", "readers"),
        ("payload", "payload B"),
        ("msgs_per_s", "msg/s"),
        ("spread_pct", "±%"),
        ("p50_us", "p50 µs"),
        ("p99_us", "p99 µs"),
        ("ratio_c", "× C"),
        ("c_ref", "C ref"),
        ("ratio_c_pipe64", "× C pipe64"),
        ("ratio_bare", "× bare"),
    ],
}

TARGET_COLUMNS: Final = [
    ("what", "target"),
    ("loop", "loop"),
    ("fltemu_msgs_per_s", "fltemu msg/s"),
    ("c_msgs_per_s", "C msg/s"),
    ("bare_msgs_per_s", "bare msg/s"),
    ("ratio_c", "× C"),
    ("ratio_bare", "× bare"),
    ("figure", "figure"),
    ("target", "goal"),
    ("verdict", "holds?"),
]


def print_tables(name: str, rows: list[dict[str, Any]]) -> None:
    """A script's rows as the tables its README section shows."""
    body = [r for r in rows if r.get("bench") not in ("env", "noise")]
    if name == "connections":
        print(h.format_table([r for r in body if r.get("kind") == "memory"], MEMORY_COLUMNS))
        print()
        print(h.format_table([r for r in body if r.get("kind") == "throughput"], IDLE_COLUMNS))
    else:
        print(h.format_table(body, TABLES[name]))
    for r in rows:
        if r.get("bench") == "noise":
            print(
                f"# other processes: {r['other_cpu_s']} CPU-s in {r['wall_s']} s "
                f"({r['other_cpu_pct']}% of the machine)"
            )
    print()


def main(argv: list[str] | None = None) -> int:
    """Run the scripts, print their tables and the target table."""
    parser = h.base_parser(__doc__.split("\n")[0])
    parser.add_argument(
        "--scripts",
        type=h.choices_list(list(SCRIPTS)),
        default=list(SCRIPTS),
        help=f"which scripts to run (default: all: {','.join(SCRIPTS)})",
    )
    parser.add_argument("--save", metavar="FILE", help="also write every JSON row to FILE")
    parser.add_argument(
        "--loop",
        type=h.choices_list(["uvloop", "asyncio"]),
        default=None,
        help="loop(s) for fltemu in the bench_* scripts (default: theirs, uvloop); baseline.py "
        "always measures both",
    )
    parser.add_argument(
        "--client",
        type=h.choices_list(["sync", "async"]),
        default=None,
        help="fltuser flavour(s) for bench_roundtrip and bench_kernel_to_user (default: both)",
    )
    args = parser.parse_args(argv)
    if args.versions:
        h.versions_and_exit(args)
    passthrough: list[str] = []
    if args.quick:
        passthrough.append("--quick")
    for flag, value in (
        ("--repeats", args.repeats),
        ("--warmup", args.warmup),
        ("--duration", args.duration),
    ):
        if value is not None:
            passthrough += [flag, str(value)]
    if args.no_pin:
        passthrough.append("--no-pin")
    passthrough += ["--seed", str(args.seed)]

    out = h.Output(args.json)
    rows: list[dict[str, Any]] = []
    env = h.environment()
    env["placement"] = {"pinned": None, "note": "each script pins its own processes"}
    h.print_env(out, env)
    noise = h.NoiseMeter()
    for name in args.scripts:
        out.note(f"# running {SCRIPTS[name]} ...")
        extra: list[str] = []
        if args.loop and name != "baseline":
            extra += ["--loop", ",".join(args.loop)]
        if args.client and name in ("roundtrip", "kernel_to_user"):
            extra += ["--client", ",".join(args.client)]
        script_rows = run_script(name, passthrough, extra)
        rows += script_rows
        for row in script_rows:
            if args.json:
                out.emit(row)
        if not args.json:
            print_tables(name, script_rows)
    targets = evaluate(rows)
    for target in targets:
        target["verdict"] = {True: "yes", False: "NO", None: "not measured"}[target["holds"]]
        out.emit(target)
    if not args.json:
        print("## fltemu against the targets (64 B; ratios are to the C pair of the same run)")
        print(h.format_table(targets, TARGET_COLUMNS))
    h.finish(out, noise)
    if args.save:
        rows += targets + [out.rows[-1]]
        Path(args.save).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
