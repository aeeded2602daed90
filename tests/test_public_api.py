"""The public namespaces and the import rules between layers (README.md, "How it is built")."""

from __future__ import annotations

import subprocess
import sys

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
