"""The public namespaces and the import rules between layers (README.md, "How it is built")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def _module_name(path: Path) -> str:
    for top, root in _SOURCES.items():
        if path.is_relative_to(root):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def _imports() -> dict[str, set[str]]:
    """Every module of fltemu and fltuser, and the modules of theirs each one imports: at the
    top, in a function or under TYPE_CHECKING alike."""
    modules = {
        _module_name(path): path for root in _SOURCES.values() for path in root.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
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
            edges.update(t for t in targets if t in modules and t != name)
    return graph


def test_no_import_cycles() -> None:
    graph = _imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_daemon_imports_only_the_layers_below_it() -> None:
    # The server alone: the command line, the tools, the samples and the clients sit above it.
    allowed = (
        *("fltemu.daemon", "fltemu.wire", "fltemu.kernel", "fltemu.errors", "fltemu.status"),
        *("fltemu._limits", "fltemu._version"),
    )
    for module, targets in _imports().items():
        if module.startswith("fltemu.daemon"):
            wrong = sorted(t for t in targets if not t.startswith(allowed))
            assert not wrong, f"{module} imports {wrong}"
