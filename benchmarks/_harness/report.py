"""Output: JSON lines or tables, the environment header, and the noise row at the end."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .machine import busy_cpu_s, own_cpu_s
from .metadata import environment


class Output:
    """Rows out: JSON lines with ``--json``, else an aligned text table at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.rows: list[dict[str, Any]] = []

    def emit(self, row: dict[str, Any]) -> None:
        """Record a row; in JSON mode print it at once."""
        self.rows.append(row)
        if self.as_json:
            print(json.dumps(row, sort_keys=False), flush=True)

    def note(self, text: str) -> None:
        """A remark for humans (stderr in JSON mode, so stdout stays parseable)."""
        print(text, file=sys.stderr if self.as_json else sys.stdout, flush=True)


def format_rate(value: float | None) -> str:
    """12345.6 -> '12.3k', 1234567 -> '1.23M'."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown-style table of ``rows`` with (key, header) ``columns``."""

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if "msgs_per_s" in key and isinstance(value, (int, float)):
            return format_rate(float(value))
        if isinstance(value, float):
            return f"{value:.2f}" if key.startswith("ratio") else f"{value:g}"
        return str(value)

    table = [[header for _, header in columns]]
    table += [[cell(row, key) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in table
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def print_env(out: Output, env: dict[str, Any]) -> None:
    """The environment record, as JSON or as a few readable lines."""
    if out.as_json:
        out.emit(env)
        return
    out.rows.append(env)
    placement = env.get("placement") or {}
    git = env.get("git") or {}
    where = f" @ {git['commit']}" if git else ""
    if git.get("modified_files"):
        where += f" + {git['modified_files']} modified files"
    print(
        f"# Python {env['python']}, msgspec {env['msgspec']}, uvloop {env['uvloop']}, "
        f"fltemu {env['fltemu']}{where}; {env['cpu_model']} x{env['cpu_count']}, {env['os']}; "
        f"load {env['loadavg']}; {placement.get('note', '')}"
    )


def versions_and_exit(args: argparse.Namespace) -> None:
    """``--versions``: print the environment and exit 0."""
    env = environment()
    if args.json:
        print(json.dumps(env))
    else:
        for key, value in env.items():
            print(f"{key}: {value}")
    raise SystemExit(0)


class NoiseMeter:
    """How much CPU time processes outside this benchmark took while it ran.

    Busy CPU time of the whole machine (/proc/stat) minus the CPU time of this process and
    its waited-for children (every server and load generator is waited for). On an idle
    machine ``other_cpu_pct`` stays near 0; a build or test run next to the benchmark
    shows up here, and its figures deserve less trust.
    """

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._busy = busy_cpu_s()
        self._own = own_cpu_s()
        self._load = os.getloadavg() if hasattr(os, "getloadavg") else None

    def result(self) -> dict[str, Any]:
        """The row to emit at the end of a script."""
        wall = time.monotonic() - self._wall
        busy = busy_cpu_s()
        own = own_cpu_s() - self._own
        other = None if busy is None or self._busy is None else max(0.0, busy - self._busy - own)
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        ncpu = os.cpu_count() or ncpu
        return {
            "bench": "noise",
            "wall_s": round(wall, 1),
            "own_cpu_s": round(own, 1),
            "other_cpu_s": round(other, 1) if other is not None else None,
            "other_cpu_pct": round(other / (wall * ncpu) * 100, 1) if other is not None else None,
            "loadavg_start": list(self._load) if self._load else None,
            "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        }


def finish(out: Output, noise: NoiseMeter) -> None:
    """Emit the interference row (and say it in words for humans)."""
    row = noise.result()
    out.emit(row)
    if not out.as_json and row["other_cpu_s"] is not None:
        print(
            f"# other processes used {row['other_cpu_s']} CPU-s during this {row['wall_s']} s run "
            f"({row['other_cpu_pct']}% of the machine); load {row['loadavg_start']} -> "
            f"{row['loadavg_end']}"
        )


@dataclass(frozen=True)
class Table:
    """One table a script prints: its (key, header) columns, of the rows that ``match``.

    A script lists its tables once (``TABLES``); the script prints them at the end of a run and
    run_all.py prints them from the script's JSON rows, so the two always agree.
    """

    columns: Sequence[tuple[str, str]]
    match: Mapping[str, Any] = field(default_factory=dict)

    def render(self, rows: Sequence[dict[str, Any]]) -> str:
        """The table of the measurement rows among ``rows`` (not the env and noise records)."""
        chosen = [
            row
            for row in rows
            if row.get("bench") not in ("env", "noise")
            and all(row.get(key) == value for key, value in self.match.items())
        ]
        return format_table(chosen, list(self.columns))


def render_tables(rows: Sequence[dict[str, Any]], tables: Sequence[Table]) -> str:
    """Every table of a script, a blank line between two."""
    return "\n\n".join(table.render(rows) for table in tables)
