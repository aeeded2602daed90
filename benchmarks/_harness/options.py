"""The options every script shares, and the timing and payloads they choose.

Not here: what a script does with them (``script``).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

#: The measurement method of docs/ipc-limits.md: 0.3 s warm-up, 1.0 s measured, 5 fresh runs.
DEFAULT_WARMUP_S: Final = 0.3
DEFAULT_MEASURE_S: Final = 1.0
DEFAULT_REPEATS: Final = 5
#: --quick: just long enough to push every code path through a few hundred messages.
QUICK_WARMUP_S: Final = 0.02
QUICK_MEASURE_S: Final = 0.06

#: The default scenarios: name -> (connections, requests in flight per connection).
SCENARIOS: Final[dict[str, tuple[int, int]]] = {
    "seq": (1, 1),
    "pipe64": (1, 64),
    "conc8": (8, 1),
}


def csv_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type for comma-separated lists: ``64,4096``."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(part) for part in text.split(",") if part]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def choices_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated subset of ``allowed``."""

    def parse(text: str) -> list[str]:
        items = [part for part in text.split(",") if part]
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated)")
        return items

    return parse


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every script has."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny windows and one repeat: a smoke test that the script works (used by tests)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument(
        "--versions", action="store_true", help="print the environment and versions, then exit"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the payload bytes")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"runs per configuration, each with fresh servers (default {DEFAULT_REPEATS}, "
        "1 with --quick); the median is reported",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help=f"seconds of warm-up (default {DEFAULT_WARMUP_S})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds measured per run (default {DEFAULT_MEASURE_S})",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin processes to CPUs (default: servers on one CPU, clients on another)",
    )
    return parser


def add_loop_arg(parser: argparse.ArgumentParser, default: str = "uvloop") -> None:
    """``--loop asyncio|uvloop`` (comma-separated for several)."""
    parser.add_argument(
        "--loop",
        type=choices_list(["uvloop", "asyncio"]),
        default=default.split(","),
        help=f"event loop(s) of the daemon and the async client (default {default})",
    )


def add_client_arg(parser: argparse.ArgumentParser, default: str = "sync,async") -> None:
    """``--client sync|async`` (comma-separated for both)."""
    parser.add_argument(
        "--client",
        type=choices_list(["sync", "async"]),
        default=default.split(","),
        help=f"fltuser flavour(s): sync Port, async AsyncPort (default {default})",
    )


def add_scenario_args(parser: argparse.ArgumentParser) -> None:
    """``--scenario seq,pipe,conc``, ``--inflight N`` (pipe) and ``--connections K`` (conc)."""
    parser.add_argument(
        "--scenario",
        type=choices_list(["seq", "pipe", "conc", *SCENARIOS]),
        default=["seq", "pipe", "conc"],
        help="seq: 1 connection, 1 request in flight; pipe: 1 connection, --inflight requests "
        "in flight; conc: --connections connections, each sequential (default: all three)",
    )
    parser.add_argument(
        "--inflight", type=int, default=64, help="requests in flight for pipe (default 64)"
    )
    parser.add_argument(
        "--connections", type=int, default=8, help="connections for conc (default 8)"
    )


def scenario_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One configuration per (payload, scenario): its name, payload, connections, in flight."""
    shapes: dict[str, tuple[int, int]] = {}
    for name in args.scenario:
        kind = name.rstrip("0123456789")
        if kind == "seq":
            shapes["seq"] = (1, 1)
        elif kind == "pipe":
            shapes[f"pipe{args.inflight}"] = (1, args.inflight)
        else:
            shapes[f"conc{args.connections}"] = (args.connections, 1)
    return [
        {"scenario": name, "payload": payload, "connections": conns, "inflight": inflight}
        for payload in args.payload
        for name, (conns, inflight) in shapes.items()
    ]


def add_payload_arg(parser: argparse.ArgumentParser, default: str = "64,4096") -> None:
    """``--payload 64,4096``: payload sizes in bytes."""
    parser.add_argument(
        "--payload",
        type=csv_list(int),
        default=[int(x) for x in default.split(",")],
        help=f"payload sizes in bytes (default {default})",
    )


@dataclass(frozen=True)
class Timing:
    """Warm-up, window and repeats chosen from the options."""

    warmup_s: float
    measure_s: float
    repeats: int
    quick: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Timing:
        """Defaults depend on ``--quick``; explicit options win."""
        quick = bool(args.quick)
        warmup = (
            args.warmup
            if args.warmup is not None
            else (QUICK_WARMUP_S if quick else DEFAULT_WARMUP_S)
        )
        measure = (
            args.duration
            if args.duration is not None
            else (QUICK_MEASURE_S if quick else DEFAULT_MEASURE_S)
        )
        repeats = args.repeats if args.repeats is not None else (1 if quick else DEFAULT_REPEATS)
        return cls(warmup, measure, max(1, repeats), quick)


def payload_bytes(size: int, seed: int) -> bytes:
    """Deterministic payload content for a given size and seed."""
    return random.Random(seed * 1_000_003 + size).randbytes(size)
