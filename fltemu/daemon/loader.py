"""Imports the filter modules named on the command line and runs their setup and teardown.

A filter module has ``async def setup(flt: fltemu.Filter) -> None`` and optionally
``async def teardown(flt)``; ``module:function`` names another entry point, and an optional
``SETTINGS`` (the keys it reads from ``flt.settings``) makes an unknown ``--set`` key an error.
Built-in samples have short names. Not here: the daemon itself (``server``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from ..errors import FltEmuError
from ..kernel import Filter
from .server import Daemon

__all__ = ["BUILTIN_FILTERS", "FilterLoadError", "LoadedFilter", "load_filter", "unload_filters"]

log = logging.getLogger(__name__)

#: Short names of the filters that ship with fltemu, and their modules.
BUILTIN_FILTERS: Final[dict[str, str]] = {
    "echo": "fltemu.samples.echo",
    "scanner": "fltemu.samples.scanner",
    "minispy": "fltemu.samples.minispy",
    "avscan": "fltemu.samples.avscan",
}


class FilterLoadError(FltEmuError):
    """A ``--filter`` could not be imported or set up."""


@dataclass
class LoadedFilter:
    """A filter module that was set up, with what to call at shutdown."""

    spec: str
    filter: Filter
    teardown: Callable[[Filter], Awaitable[None] | None] | None


def _module_name_hint(spec: str, module_part: str) -> str:
    """What to write instead of a file path (``./good.py``, ``pkg/flt.py``) in --filter."""
    path = os.path.normpath(module_part)
    stem = path[: -len(".py")] if path.endswith(".py") else path
    folder, base = os.path.split(os.path.abspath(stem))
    relative = os.path.relpath(os.path.abspath(stem), os.getcwd())
    func = spec.partition(":")[2]
    tail = f":{func}" if func else ""
    if not relative.startswith(os.pardir) and not os.path.isabs(relative):
        dotted = relative.replace(os.sep, ".")
        return f"--filter {dotted}{tail} (from this folder)"
    return f"PYTHONPATH={folder} fltemu serve --filter {base}{tail}"


def _resolve(spec: str) -> tuple[str, str, str]:
    """(filter name, module path, entry function) for a ``--filter`` value."""
    module_part, _, func = spec.partition(":")
    if not module_part:
        raise FilterLoadError(f"--filter {spec!r}: no module named")
    if os.sep in module_part or module_part.endswith(".py"):
        missing = "" if os.path.exists(module_part) else f" ({module_part} does not exist)"
        raise FilterLoadError(
            f"--filter {spec}: give the module name, not a file name{missing}: "
            f"{_module_name_hint(spec, module_part)}"
        )
    if module_part.startswith("."):
        raise FilterLoadError(
            f"--filter {spec}: a module name does not start with '.': give it in full "
            "(package.module), as an import statement would"
        )
    name = module_part
    module_path = BUILTIN_FILTERS.get(module_part, module_part)
    return name, module_path, func or "setup"


def _where(exc: BaseException) -> str:
    """ " at FILE, line N" of the innermost frame of ``exc``'s traceback, or ""."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {last.filename}, line {last.lineno}"


async def load_filter(
    daemon: Daemon, spec: str, settings: dict[str, str] | None = None
) -> LoadedFilter:
    """Import ``spec``, register its filter and await its entry point.

    Args:
        daemon: the daemon to register the filter with.
        spec: ``NAME`` of a built-in sample, or ``MODULE[:FUNCTION]``.
        settings: the filter's ``settings`` (``--set NAME.KEY=VALUE``).

    Raises:
        FilterLoadError: the module or function cannot be found, or setup raised.
    """
    name, module_path, func_name = _resolve(spec)
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        known = ", ".join(sorted(BUILTIN_FILTERS))
        hint = ""
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing and module_path.startswith(missing):
            hint = (
                f"; the current folder ({os.getcwd()}) and PYTHONPATH are searched: run from "
                "the folder that holds it, or set PYTHONPATH=/path/to/that/folder"
            )
        raise FilterLoadError(
            f"--filter {spec}: cannot import {module_path} ({exc}){hint}; built-in filters: {known}"
        ) from exc
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else module_path
        raise FilterLoadError(
            f"--filter {spec}: {module_path} has a syntax error: {where}: {exc.msg}"
        ) from exc
    except Exception as exc:  # the module's own code failed while it was imported
        raise FilterLoadError(
            f"--filter {spec}: importing {module_path} raised {exc!r}{_where(exc)}"
        ) from exc
    entry: Any = getattr(module, func_name, None)
    if not callable(entry):
        raise FilterLoadError(f"--filter {spec}: {module_path} has no function {func_name}()")
    declared = getattr(module, "SETTINGS", None)
    if settings and declared is not None:
        unknown = sorted(set(settings) - set(declared))
        if unknown:
            keys = ", ".join(f"{name}.{key}" for key in sorted(declared)) or "none"
            raise FilterLoadError(
                f"--set {', '.join(f'{name}.{key}' for key in unknown)}: "
                f"{'no such setting' if len(unknown) == 1 else 'no such settings'}; "
                f"filter {name} reads {keys}"
            )
    flt = daemon.register_filter(name)
    flt.settings = dict(settings or {})
    teardown = getattr(module, "teardown", None) if func_name == "setup" else None
    # The module's teardown is the driver's FilterUnloadCallback: `fltemu unload` and the
    # daemon's shutdown both run it before the filter is unregistered.
    flt.unload_callback = teardown if callable(teardown) else None
    try:
        result = entry(flt)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        # Whatever setup started before it failed is the teardown's to stop.
        await flt.unload_requested()
        raise FilterLoadError(f"--filter {spec}: {func_name}() raised {exc!r}") from exc
    log.debug("loaded filter %s (%s)", name, module_path)
    return LoadedFilter(spec, flt, flt.unload_callback)


async def unload_filters(loaded: list[LoadedFilter]) -> None:
    """Unload each filter as the Filter Manager would: its teardown, then FltUnregisterFilter.

    Filters already unloaded (``fltemu unload``) are skipped; errors are logged, not raised.
    """
    for item in reversed(loaded):
        await item.filter.unload_requested()
