"""Run every benchmark script and print where fltemu stands against its speed targets.

Runs ``bench_daemon.py`` (with ``--base``), ``baseline.py``, ``bench_roundtrip.py``,
``bench_kernel_to_user.py`` (both reader kinds) and ``bench_connections.py`` one after another
(each as a subprocess with ``--json``, so each pins, warms up and repeats as it does alone),
prints each script's tables, then the target table: every target (``_harness/targets.py``) with
fltemu's figure, the reference it is a ratio to (measured in the same script run) and whether
it holds. ``--write-readme`` writes that run into README.md and benchmarks/README.md.
Not here: the measurements themselves (the scripts).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import _harness as h
import baseline
import bench_connections
import bench_daemon
import bench_kernel_to_user
import bench_roundtrip

#: The scripts run, by the name their rows carry in ``bench``; each declares its ``TABLES``.
MODULES: Final = {
    "daemon": bench_daemon,
    "baseline": baseline,
    "roundtrip": bench_roundtrip,
    "kernel_to_user": bench_kernel_to_user,
    "connections": bench_connections,
}
SCRIPTS: Final = {name: Path(module.__file__ or name).name for name, module in MODULES.items()}


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
    return _find(rows, **match)


def _reference(row: dict[str, Any], metric: str) -> str:
    if metric == "cpu_ratio_base":
        return f"fltemu@{row.get('base')}" if row.get("base") else "-"
    if metric == "ratio_bare":
        return "bare uvloop " + (
            "sequential" if row.get("readers") == 1 or row.get("scenario") == "seq" else "same load"
        )
    return "-"


def evaluate(rows: list[dict[str, Any]], payload: int = 64) -> list[dict[str, Any]]:
    """One row per target: fltemu's figure, its reference's, and whether it holds."""
    out: list[dict[str, Any]] = []
    for target in h.TARGETS:
        row: dict[str, Any] = {"bench": "target", "id": target["id"], "what": target["what"]}
        metric = target["metric"]
        match = dict(target["match"])
        if target["bench"] != "connections":
            match["payload"] = payload
        scope = [r for r in rows if r.get("bench") == target["bench"]]
        found = _find_loop(scope, **match)
        value = found.get(metric) if found else None
        row["metric"] = metric
        row["value"] = value
        if found is not None:
            row["loop"] = found.get("loop")
            row["fltemu_msgs_per_s"] = found.get("msgs_per_s")
            row["reference"] = _reference(found, metric)
            if metric == "cpu_ratio_base":
                row["cpu_us_per_msg"] = found.get("cpu_us_per_msg")
                row["cpu_ratio_bare"] = found.get("cpu_ratio_bare")
        if value is None:
            row["figure"] = "-"
        elif metric.startswith(("ratio", "cpu_ratio")):
            row["figure"] = f"{value:.2f} ×"
        elif metric == "kib_per_connection":
            row["figure"] = f"{value:.1f} KiB"
        else:
            row["figure"] = f"{value:.1f} %"
        if "min" in target:
            row["target"] = f">= {target['min']:.2f} ×"
            row["holds"] = None if value is None else value >= target["min"]
        elif "max" in target:
            unit = {"kib_per_connection": " KiB", "max_abs_change_pct": " %"}.get(metric, " ×")
            row["target"] = f"<= {target['max']:.2f}{unit}"
            row["holds"] = None if value is None else value <= target["max"]
        else:
            row["target"] = "(reported)"
            row["holds"] = None
        out.append(row)
    return out


TARGET_COLUMNS: Final = [
    ("what", "target"),
    ("loop", "loop"),
    ("fltemu_msgs_per_s", "fltemu msg/s"),
    ("reference", "reference"),
    ("figure", "fltemu × ref"),
    ("target", "goal"),
    ("verdict", "holds?"),
]

#: The lines of README.md that ``--write-readme`` replaces.
README_START: Final = "<!-- run_all.py --write-readme: start -->"
README_END: Final = "<!-- run_all.py --write-readme: end -->"


def _machine_line(env: dict[str, Any]) -> str:
    git = env.get("git") or {}
    commit = git.get("commit", "?") + (" (modified)" if git.get("modified_files") else "")
    return (
        f"One `python benchmarks/run_all.py` run, {env['time'][:10]}, fltemu at `{commit}`: "
        f"{env['cpu_model']}, {env['cpu_count']} CPUs, {env['os']}, Python {env['python']}, "
        f"msgspec {env['msgspec']}, uvloop {env['uvloop']}; servers on one CPU, clients on the "
        "other. Absolute rates differ between machines (by 2x between two VMs of the same "
        "kind); compare the ratios, each to a reference measured in the same run."
    )


def _target_rows(targets: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| target | fltemu | reference | fltemu × reference | goal | holds? |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets:
        rate = t.get("fltemu_msgs_per_s")
        figure = h.format_rate(float(rate)) + " msg/s" if rate else ""
        if t.get("cpu_us_per_msg") is not None:
            figure = f"{t['cpu_us_per_msg']} µs CPU/msg"
            if t.get("cpu_ratio_bare") is not None:
                figure += f" ({t['cpu_ratio_bare']:.2f} × the bare uvloop server's)"
        if t["metric"] in ("kib_per_connection", "max_abs_change_pct"):
            figure, shown = t["figure"], ""
        else:
            shown = t["figure"]
        lines.append(
            f"| {t['what']} | {figure} | {t.get('reference', '-')} | {shown} | "
            f"{t['target']} | {t['verdict']} |"
        )
    return lines


def readme_block(env: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    """README.md's speed table: one run's targets, with the machine and versions it ran on."""
    return "\n".join([README_START, _machine_line(env), "", *_target_rows(targets), README_END])


def write_readme(path: Path, block: str) -> None:
    """Replace the marked block of ``path`` with ``block``.

    Raises:
        SystemExit: the file has no such block.
    """
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no block between {README_START!r} and {README_END!r}")
    path.write_text(text[:start] + block + text[end + len(README_END) :])


def script_tables(name: str, rows: list[dict[str, Any]]) -> str:
    """A script's rows as the tables its README section shows, and its noise line."""
    parts = [h.render_tables(rows, MODULES[name].TABLES)]
    for r in rows:
        if r.get("bench") == "noise":
            parts.append(
                f"(other processes: {r['other_cpu_s']} CPU-s in {r['wall_s']} s, "
                f"{r['other_cpu_pct']}% of the machine)"
            )
    return "\n\n".join(parts)


def sample_run_block(
    env: dict[str, Any], tables: dict[str, str], targets: list[dict[str, Any]]
) -> str:
    """benchmarks/README.md's "Sample run": every table of one run, after the targets."""
    lines = [README_START, _machine_line(env), "", "### fltemu against the targets (64 B)", ""]
    lines += _target_rows(targets)
    for name, text in tables.items():
        lines += ["", f"### `{SCRIPTS[name]}`", "", text]
    lines.append(README_END)
    return "\n".join(lines)


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
        "--write-readme",
        action="store_true",
        help="replace the speed table of README.md and the sample run of benchmarks/README.md "
        "with this run's figures (run every script: a table must come from one run)",
    )
    parser.add_argument(
        "--base",
        metavar="REV",
        default=bench_daemon.CPU_BASE_REV,
        help="the revision whose daemon CPU per message the CPU targets compare with "
        f"(default {bench_daemon.CPU_BASE_REV}; 'none' to skip)",
    )
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
    tables: dict[str, str] = {}
    if args.write_readme and (
        args.quick
        or args.scripts != list(SCRIPTS)
        or args.base == "none"
        or args.loop
        or args.client
    ):
        parser.error(
            "--write-readme needs a full run: every script, the default loop and clients, a "
            "--base, without --quick"
        )
    for name in args.scripts:
        out.note(f"# running {SCRIPTS[name]} ...")
        extra: list[str] = []
        if args.loop and name != "baseline":
            extra += ["--loop", ",".join(args.loop)]
        if args.client and name in ("roundtrip", "kernel_to_user"):
            extra += ["--client", ",".join(args.client)]
        if name == "kernel_to_user":
            extra += ["--reader", "combined,separate"]
        if name == "daemon" and args.base != "none":
            extra += ["--base", args.base]
        script_rows = run_script(name, passthrough, extra)
        rows += script_rows
        for row in script_rows:
            if args.json:
                out.emit(row)
        tables[name] = script_tables(name, script_rows)
        if not args.json:
            print(tables[name] + "\n")
    targets = evaluate(rows)
    for target in targets:
        if target["value"] is None:
            target["verdict"] = "not measured"
        else:
            target["verdict"] = {True: "yes", False: "NO", None: "reported"}[target["holds"]]
        out.emit(target)
    if not args.json:
        print("## fltemu against the targets (64 B; each ratio is to a reference of the same run)")
        print(h.format_table(targets, TARGET_COLUMNS))
    h.finish(out, noise)
    if args.save:
        rows += targets + [out.rows[-1]]
        Path(args.save).write_text("".join(json.dumps(r) + "\n" for r in rows))
    missing = [t["id"] for t in targets if t["verdict"] == "not measured"]
    if args.write_readme and missing:
        print(f"run_all.py: not written: targets not measured: {', '.join(missing)}")
        return 1
    if args.write_readme:
        write_readme(h.BENCH_DIR.parent / "README.md", readme_block(env, targets))
        write_readme(h.BENCH_DIR / "README.md", sample_run_block(env, tables, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
