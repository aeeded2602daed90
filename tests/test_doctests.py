"""The examples in docstrings are tests too."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "fltemu.status",
        "fltemu.kernel.messaging",
        "fltemu.bench.histogram",
        "fltemu.bench.load",
        "fltemu.bench.gate",
        "fltemu.bench.command",
        "fltemu.bench.windows",
    ],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0
    assert result.failed == 0
