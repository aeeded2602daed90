"""What every measuring script does around its measurements, written once.

A script's ``main`` builds its parser (``options.base_parser`` plus its own options), parses,
and measures inside ``measuring(args, TABLES, ...)``: that answers ``--versions``, chooses the
timing and the placement (pinning this process), builds the C program it needs, prints the
environment record, starts the noise meter; on the way out it prints the script's tables
(text mode) and the noise row.
Not here: the options themselves (``options``), the output primitives (``report``).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .machine import Placement
from .metadata import environment
from .options import Timing
from .processes import CBuild, build_c
from .report import NoiseMeter, Output, Table, finish, print_env, render_tables, versions_and_exit


@dataclass
class ScriptRun:
    """What a script measures with, and what it prints at the end.

    Attributes:
        args: the parsed options.
        timing: warm-up, window and repeats (``--quick``, ``--warmup``, ``--duration``,
            ``--repeats``).
        placement: where the client and the servers run (``--no-pin``).
        out: where rows go.
        env: the environment record, already printed.
        build: the C program asked for, or why there is none; ``None`` when the script runs
            no C.
        tables: printed at the end in text mode; a script that measured nothing empties it.
        epilogue: lines printed after the tables in text mode.
    """

    args: argparse.Namespace
    timing: Timing
    placement: Placement
    out: Output
    env: dict[str, Any]
    build: CBuild | None
    tables: Sequence[Table]
    epilogue: list[str] = field(default_factory=list)


@contextlib.contextmanager
def measuring(
    args: argparse.Namespace,
    tables: Sequence[Table],
    *,
    c_program: str | None = None,
    c_wanted: bool = True,
    c_key: str = "c_reference",
    env_extra: Mapping[str, Any] | None = None,
    without_c: str = "",
) -> Iterator[ScriptRun]:
    """The preamble and the end of a script's run, around its measurements.

    Args:
        args: parsed by a parser from ``options.base_parser``.
        tables: the script's tables, printed at the end unless ``--json``.
        c_program: the C program to build (``c/NAME.c``) and record under ``c_key`` in the
            environment; ``None``: the script runs no C.
        c_wanted: ``False`` when the options turned the C reference off (``--baseline``).
        c_key: the environment record's key for the C build's note.
        env_extra: more keys for the environment record, after the C build's.
        without_c: appended to the note printed when there is no C program.

    Raises:
        SystemExit: ``--versions`` (status 0, after printing the environment).
    """
    if args.versions:
        versions_and_exit(args)
    timing = Timing.from_args(args)
    placement = Placement.choose(args.no_pin)
    out = Output(args.json)
    env = environment(placement)
    build: CBuild | None = None
    if c_program is not None:
        build = build_c(c_program) if c_wanted else CBuild(None, "C reference not asked for")
        env[c_key] = build.note
    env.update(env_extra or {})
    print_env(out, env)
    noise = NoiseMeter()
    if build is not None and build.binary is None:
        out.note(f"# {build.note}{without_c}")
    run = ScriptRun(args, timing, placement, out, env, build, tables)
    yield run
    if not out.as_json:
        if run.tables:
            print(render_tables(out.rows, run.tables))
        for line in run.epilogue:
            print(line)
    finish(out, noise)
