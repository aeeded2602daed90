"""The ``fltemu`` command line: one parser, each sub-command's arguments and work in its own
module (``serve``, ``ctl`` for the control commands, ``bench``, ``wine``, ``faults`` for
``faults``, ``record`` and ``replay``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from . import bench, ctl, faults, serve, wine
from ._args import add_version

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fltemu``."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    # The parser, and each sub-command's own (its usage is the one a mistake is reported with).
    parser = argparse.ArgumentParser(
        prog="fltemu",
        description="Windows Filter Manager communication ports, emulated: a daemon that plays "
        "the kernel side (FltCreateCommunicationPort, FltSendMessage) for user-mode agents "
        "that use fltlib's FilterConnectCommunicationPort and friends.",
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {"serve": serve.add_parser(sub)}
    commands.update(ctl.add_parsers(sub))
    commands["bench"] = bench.add_parser(sub)
    commands["wine"] = wine.add_parser(sub)
    faults.add_parser(sub)  # fltemu faults, record, replay
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fltemu`` console script and ``python -m fltemu``."""
    parser, commands = _build()
    arguments = list(sys.argv[1:] if argv is None else argv)
    agent: list[str] = []
    if "--" in arguments:  # fltemu bench ... -- AGENT COMMAND
        split = arguments.index("--")
        arguments, agent = arguments[:split], arguments[split + 1 :]
    if arguments[:1] == ["wine"] and not agent:
        # `fltemu wine agent.exe` (no --): say where the program goes, with wine's usage.
        args, extra = parser.parse_known_args(arguments)
        if extra:
            options = shlex.join(arguments[1 : len(arguments) - len(extra)])
            commands["wine"].error(
                f"put the program after '--': fltemu wine {options + ' ' if options else ''}"
                f"-- {shlex.join(extra)}"
            )
        commands["wine"].error(
            "fltemu wine needs the program to run after '--': fltemu wine -- agent.exe"
        )
    if (arguments[:1] == ["replay"] or arguments[:2] == ["faults", "run"]) and not agent:
        # `fltemu faults run SCHEDULE python agent.py` (no --): say where the agent goes.
        args, extra = parser.parse_known_args(arguments)
        if extra:
            given = shlex.join(arguments[: len(arguments) - len(extra)])
            parser.error(f"put the agent after '--': fltemu {given} -- {shlex.join(extra)}")
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in faults.COMMANDS:
        return faults.run_command(args, agent)
    if agent and args.command not in ("bench", "wine"):
        parser.error("'-- COMMAND' is only for fltemu bench, wine, faults run and replay")
    if args.command == "wine":
        from ..wine import run_command as run_wine

        return run_wine(
            agent,
            address=args.address,
            prefix=args.prefix,
            build_dir=args.build_dir,
            daemon_check=args.daemon_check,
        )
    if args.command == "bench":
        from ..bench.command import run_command as run_bench_command

        return run_bench_command(commands["bench"], args, agent)
    if args.command == "serve":
        return serve.run_command(args)
    # Mistakes found after parsing are reported with the sub-command's usage, not fltemu's.
    return ctl.run_command(commands[args.command], args)
