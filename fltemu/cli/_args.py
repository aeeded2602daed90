"""Argument types and options that several ``fltemu`` sub-commands share."""

from __future__ import annotations

import argparse
from typing import TypeAlias

from .._version import __version__

__all__ = [
    "Subparsers",
    "add_version",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
]

#: What ``ArgumentParser.add_subparsers`` returns: each sub-command module adds its parser to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``, on a sub-command too."""
    parser.add_argument("--version", action="version", version=f"fltemu {__version__}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value
