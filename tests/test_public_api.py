"""The public namespaces and the import rules between layers (README.md, "How it is built")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

import fltemu
import fltemu.kernel
import fltemu.wire
import fltuser


@pytest.mark.parametrize("module", [fltemu, fltemu.wire, fltemu.kernel, fltuser])
def test_all_is_sorted_and_resolves(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]

    # isort style (ruff RUF022): CONSTANTS, then Classes, then functions, each alphabetical.
    def key(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=key), f"{module.__name__}.__all__ is not sorted"  # type: ignore[attr-defined]
    for name in names:
        assert getattr(module, name) is not None


def test_the_documented_names_exist() -> None:
    # The names the README and the docs promise users.
    for name in ["Daemon", "Filter", "StatusError", "NtStatus", "HResult", "nt_success"]:
        assert hasattr(fltemu, name)
    for name in ["connect", "aconnect", "Port", "AsyncPort", "HResult", "HResultError", "NtStatus"]:
        assert hasattr(fltuser, name)
    assert fltuser.HResult is fltemu.HResult
    assert fltuser.HResultError is fltemu.HResultError


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(out.split())


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        (
            "import fltemu.wire",
            {"asyncio", "socket", "threading", "fltemu.kernel", "fltemu.daemon"},
        ),
        ("import fltemu.status, fltemu.errors", {"asyncio", "socket", "msgspec"}),
        ("import fltemu", {"asyncio", "socket", "fltemu.kernel", "fltemu.daemon", "uvloop"}),
        ("import fltemu.kernel", {"msgspec", "fltemu.wire", "fltemu.daemon", "uvloop"}),
        ("import fltuser", {"fltemu.kernel", "fltemu.daemon", "uvloop"}),
        ("import fltuser.control", {"fltemu.kernel", "fltemu.daemon", "uvloop"}),
        (
            "import fltemu.daemon",
            {
                "fltemu.cli",
                "fltemu.bench",
                "fltemu.wine",
                "fltemu.samples",
                "fltemu.testing",
                "fltuser",
            },
        ),
    ],
)
def test_import_rules(statement: str, forbidden: set[str]) -> None:
    loaded = _modules_after(statement)
    assert not forbidden & loaded, f"{statement!r} pulled in {sorted(forbidden & loaded)}"


def test_kernel_and_wire_sources_import_no_socket() -> None:
    # asyncio itself imports socket, so sys.modules cannot tell; the sources can.
    import ast
    from pathlib import Path

    for package in (fltemu.kernel, fltemu.wire):
        for path in Path(package.__file__).parent.glob("*.py"):  # type: ignore[arg-type]
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                assert not {"socket", "selectors", "ssl"} & set(names), f"{path} imports {names}"


_SOURCES = {"fltemu": Path(fltemu.__file__).parent, "fltuser": Path(fltuser.__file__).parent}


def _module_name(path: Path, sources: dict[str, Path]) -> str:
    for top, root in sources.items():
        if path.is_relative_to(root):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def _packages_above(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def _imports(sources: dict[str, Path] = _SOURCES) -> dict[str, set[str]]:
    """Every module of ``sources`` (fltemu and fltuser), and the modules of theirs each one
    imports: at the top, in a function or under TYPE_CHECKING alike. Importing ``a.b.c`` runs
    ``a/__init__`` and ``a/b/__init__`` first: those packages count as imported too (unless
    they hold the importing module, whose own import is already running them)."""
    modules = {
        _module_name(path, sources): path
        for root in sources.values()
        for path in root.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        own = set(_packages_above(name))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = (
                    node.module or ""
                    if node.level == 0
                    else ".".join(filter(None, [base, node.module]))
                )
                # ``from package import submodule`` imports the submodule.
                targets = [
                    f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                    for a in node.names
                ]
            else:
                continue
            for target in targets:
                for imported in (*_packages_above(target), target):
                    if imported in modules and imported != name and imported not in own:
                        edges.add(imported)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import cycle of ``graph``, as the modules along it, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            found = visit(target, [*path, module])
            if found is not None:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [])
        if found is not None:
            return found
    return None


def _within(module: str, names: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def _layer_breaks(graph: dict[str, set[str]], layer: str, allowed: tuple[str, ...]) -> list[str]:
    """``module -> target`` for every import of ``layer``'s modules outside ``allowed``."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _within(module, (layer,))
        for target in targets
        if not _within(target, (layer, *allowed))
    )


def test_no_import_cycles() -> None:
    cycle = _cycle(_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


_BASE: Final = ("fltemu.errors", "fltemu.status", "fltemu._limits", "fltemu._version")


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        # The server alone: the command line, the tools, the samples and the clients sit
        # above it.
        ("fltemu.daemon", ("fltemu.wire", "fltemu.kernel", *_BASE)),
        # The kernel model: no wire, no daemon, no sockets (README, "How it is built").
        ("fltemu.kernel", _BASE),
        ("fltemu.wire", _BASE),
        # The clients: the wire and the statuses, never the kernel or the daemon (``fltemu``
        # itself is imported for its version; its own imports of those are lazy).
        ("fltuser", ("fltemu", "fltemu.wire", *_BASE)),
    ],
)
def test_each_layer_imports_only_the_layers_below_it(layer: str, allowed: tuple[str, ...]) -> None:
    # Statically, TYPE_CHECKING included: test_import_rules sees only what runs.
    graph = _imports()
    assert any(_within(module, (layer,)) for module in graph), layer
    breaks = _layer_breaks(graph, layer, allowed)
    assert not breaks, f"{layer} imports beyond its layer: {breaks}"


def test_the_import_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    # A kernel module that imports the daemon only under TYPE_CHECKING, and a daemon whose
    # module imports a kernel submodule (running kernel/__init__) that leads back to it.
    files = {
        "__init__.py": "",
        "kernel/__init__.py": "from .ports import Port\n",
        "kernel/ports.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..daemon.server import Daemon\n",
        "kernel/queues.py": "",
        "daemon/__init__.py": "from .server import Daemon\n",
        "daemon/server.py": "from fltemu.kernel.queues import Q\n",
    }
    for name, text in files.items():
        path = tmp_path / "fltemu" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    graph = _imports({"fltemu": tmp_path / "fltemu"})
    assert _layer_breaks(graph, "fltemu.kernel", _BASE) == [
        "fltemu.kernel.ports -> fltemu.daemon",
        "fltemu.kernel.ports -> fltemu.daemon.server",
    ]
    # daemon.server -> kernel (its __init__) -> kernel.ports -> daemon.server
    assert _cycle(graph) is not None
