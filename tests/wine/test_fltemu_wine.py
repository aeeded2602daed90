"""``fltemu wine``: what it says when something is missing, and Wine sessions that end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fltemu.testing import DaemonThread
from fltemu.wine import WineBuild, WinePrefix

from .conftest import ANSWER_WAIT, AgentFactory

pytestmark = pytest.mark.timeout(240)


def fltemu_wine(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fltemu", "wine", *args],
        capture_output=True,
        text=True,
        timeout=ANSWER_WAIT * 2,
        env=env,
        check=False,
    )


def test_no_daemon_is_named_with_the_fix(wine_build: WineBuild, wine_prefix: WinePrefix) -> None:
    done = fltemu_wine(
        "--address", "/nonexistent/fltemu.sock", "--prefix", str(wine_prefix.path),
        "--build-dir", str(wine_build.directory), "--", str(wine_build.agent("probe")),
    )  # fmt: skip
    assert done.returncode == 1
    assert "no fltemu daemon at /nonexistent/fltemu.sock" in done.stderr
    assert "fltemu serve" in done.stderr


def test_missing_wine_is_named_with_the_install_command(
    wine_build: WineBuild, tmp_path: Path
) -> None:
    # A PATH with the build tools but no Wine (the build is up to date: make does nothing).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "x86_64-w64-mingw32-gcc"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, bin_dir / tool)
    env = dict(os.environ, PATH=str(bin_dir))
    with DaemonThread() as daemon:
        done = fltemu_wine(
            "--address", daemon.address, "--prefix", str(tmp_path / "prefix"),
            "--build-dir", str(wine_build.directory), "--", "agent.exe",
            env=env,
        )  # fmt: skip
    assert done.returncode == 1
    assert "Wine is not installed: apt-get install wine wine64" in done.stderr


def test_missing_compiler_is_named_with_the_install_command(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))
    done = fltemu_wine("--build-dir", str(tmp_path / "b"), "--", "agent.exe", env=env)
    assert done.returncode == 1
    assert "apt-get install" in done.stderr and "make" in done.stderr


def test_no_program_is_a_usage_error() -> None:
    done = fltemu_wine()
    assert done.returncode == 2
    assert "needs the program to run after '--'" in done.stderr


def test_a_new_wine_session_reconnects(
    wine_daemon: DaemonThread, wine_prefix: WinePrefix, start_agent: AgentFactory
) -> None:
    """The Wine session ends (every Wine process of the prefix, the driver's host included):
    the daemon runs DisconnectNotify once; a new session's agent connects again."""
    harness = wine_daemon.create_port("\\SessionPort")
    agent = start_agent(wine_daemon.address)
    assert agent.cmd("connect \\SessionPort") == "connect 0x00000000"
    subprocess.run(["wineserver", "-k"], env=wine_prefix.environment(), check=True)
    harness.wait_for_disconnect()
    assert len(harness.disconnects) == 1
    wine_prefix.start_session(persistent=True)
    again = start_agent(wine_daemon.address)
    assert again.cmd("connect \\SessionPort") == "connect 0x00000000"
    harness.wait_for_connection(2)


def test_the_agents_streams_and_exit_status_pass_through(
    wine_build: WineBuild, wine_prefix: WinePrefix
) -> None:
    with DaemonThread() as daemon:
        done = subprocess.run(
            [
                sys.executable, "-m", "fltemu", "wine", "--address", daemon.address,
                "--prefix", str(wine_prefix.path), "--build-dir", str(wine_build.directory),
                "--", str(wine_build.agent("probe")),
            ],
            input="sleep 1\nexit 3\n", capture_output=True, text=True, timeout=ANSWER_WAIT * 2,
            check=False,
        )  # fmt: skip
    assert done.returncode == 3
    assert done.stdout.replace("\r", "").splitlines() == ["ready", "slept", "bye"]


def test_a_program_wine_cannot_find_is_named_with_where_it_was_looked_for(
    wine_build: WineBuild, wine_prefix: WinePrefix, tmp_path: Path
) -> None:
    done = fltemu_wine(
        "--no-daemon-check", "--prefix", str(wine_prefix.path),
        "--build-dir", str(wine_build.directory), "--", "nosuch.exe",
    )  # fmt: skip
    assert done.returncode == 1
    assert "fltemu wine: error: nosuch.exe: no such program in the current folder" in done.stderr
    assert "C:\\windows\\system32" in done.stderr and "c0000135" not in done.stderr
