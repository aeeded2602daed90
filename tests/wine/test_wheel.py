"""The wheel carries the Windows side: installed outside the checkout, in a fresh virtual
environment, ``fltemu wine`` runs an agent with only Wine on the PATH (no mingw-w64, no make),
and says what it is doing while Wine creates a fresh prefix; then README's Windows-agent test
runs there as README's "In CI" steps run it (``pip install 'WHEEL[test]'``, ``pytest``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fltemu.testing import DaemonThread
from fltemu.wine import WineBuild

from .test_user_test import readme_example

pytestmark = pytest.mark.timeout(300)

CHECKOUT = Path(__file__).resolve().parents[2]
#: Commands left off the agent's PATH: compilers, linkers and make.
BUILD_TOOLS = (
    "make",
    "gmake",
    "x86_64-w64-mingw32-",
    "i686-w64-mingw32-",
    "gcc",
    "cc",
    "c++",
    "g++",
    "ld",
    "go",
)


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}{done.stderr}"
    return done


def without_build_tools(folder: Path) -> Path:
    """A PATH folder: the system's commands (Wine's scripts use basename, cut...) less every
    build tool."""
    folder.mkdir()
    for system in ("/usr/local/bin", "/usr/bin", "/bin"):
        for command in sorted(Path(system).iterdir()):
            if command.name.startswith(BUILD_TOOLS) or (folder / command.name).exists():
                continue
            os.symlink(command, folder / command.name)
    for tool in ("make", "x86_64-w64-mingw32-gcc", "gcc", "cc"):
        assert shutil.which(tool, path=str(folder)) is None
    return folder


def test_building_without_mingw_names_what_to_install(tmp_path: Path) -> None:
    no_tools = without_build_tools(tmp_path / "no-build-tools")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(CHECKOUT)],
        capture_output=True, text=True, env={**os.environ, "PATH": str(no_tools)}, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "needs x86_64-w64-mingw32-gcc and make: apt-get install gcc-mingw-w64-x86-64 make" in (
        done.stdout + done.stderr
    )
    assert "Traceback" not in done.stdout + done.stderr


def test_a_wheel_built_without_the_windows_side_says_so(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(CHECKOUT)],
        env={**os.environ, "FLTEMU_BUILD_WINDOWS": "0"}, capture_output=True, check=True,
    )  # fmt: skip
    (wheel,) = dist.glob("fltemu-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if "_windows" in name]
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)])
    fltemu = str(venv / "bin" / "fltemu")
    done = subprocess.run(
        [fltemu, "wine", "--no-daemon-check", "--", "agent.exe"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "fltemu wine: error: this fltemu was installed without its Windows side" in done.stderr
    assert "apt-get install gcc-mingw-w64-x86-64 make" in done.stderr
    # --build-dir builds from sources, which an installed fltemu has not.
    done = subprocess.run(
        [fltemu, "wine", "--build-dir", str(tmp_path / "b"), "--", "agent.exe"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--build-dir is for building the Windows side from its sources" in done.stderr


def test_an_installed_wheel_runs_an_agent_with_only_wine(
    wine_build: WineBuild, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(CHECKOUT)])
    (wheel,) = dist.glob("fltemu-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert {"fltemu/_windows/fltlib.dll", "fltemu/_windows/fltemu.sys"} <= set(
            archive.namelist()
        )
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", f"{wheel}[test]"], cwd=tmp_path)

    no_tools = without_build_tools(tmp_path / "no-build-tools")
    env = {"PATH": str(no_tools), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    agent = tmp_path / "probe.exe"  # a C test agent, built beforehand, copied out of the build
    shutil.copyfile(wine_build.agent("probe"), agent)

    with DaemonThread() as daemon:
        port = daemon.create_port("\\WheelPort")
        done = subprocess.run(
            [
                str(venv / "bin" / "fltemu"), "wine", "--address", daemon.address,
                "--prefix", str(tmp_path / "prefix"), "--", str(agent),
            ],
            input="connect \\WheelPort\nexit 0\n", capture_output=True, text=True, env=env,
            cwd=tmp_path, timeout=240, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.replace("\r", "").splitlines() == ["ready", "connect 0x00000000", "bye"]
        port.wait_for_connection()
    said = done.stderr.splitlines()
    assert said[0].startswith(f"fltemu wine: creating the Wine prefix {tmp_path / 'prefix'}")
    assert said[1].startswith("fltemu wine: installing fltlib.dll and fltemu.sys")
    assert f"(from {venv}" in said[1] and "fltemu/_windows)" in said[1]
    assert said[2] == "fltemu wine: the Wine prefix is ready"

    # The user's CI job: their agent in bin/, their test beside it, the same prefix.
    user = tmp_path / "user"
    (user / "bin").mkdir(parents=True)
    shutil.copyfile(wine_build.agent("scanagent"), user / "bin" / "scanagent.exe")
    (user / "test_my_windows_agent.py").write_text(readme_example())
    tested = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_windows_agent.py"],
        capture_output=True, text=True, cwd=user, timeout=240, check=False,
        env={**env, "WINEPREFIX": str(tmp_path / "prefix")},
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout
