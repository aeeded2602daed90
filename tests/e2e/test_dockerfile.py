"""What the Dockerfile's image does at run time, checked without Docker: its CMD with its
environment, then its HEALTHCHECK command, as a client in another container would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent.parent.parent / "Dockerfile"


def _instructions(name: str) -> list[str]:
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    return [ln[len(name) + 1 :].strip() for ln in lines if ln.startswith(name + " ")]


def _instruction(name: str) -> str:
    (line,) = _instructions(name)
    return line


def _environment() -> dict[str, str]:
    """The image's ENV settings (KEY=VALUE forms) that are not paths of the image."""
    settings = dict(pair.split("=", 1) for line in _instructions("ENV") for pair in line.split())
    del settings["PATH"]  # the virtual environment's bin first: here, this interpreter's
    return settings


def _exec_form(text: str) -> list[str]:
    start = text.index("[")
    value = json.loads(text[start:])
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_image_cmd_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    image_env = _environment()
    assert set(image_env) == {"FLTEMU_SOCKET", "FLTEMU_TRUST_UID"}
    # The volume, here a temporary directory.
    socket_path = str(tmp_path / Path(image_env["FLTEMU_SOCKET"]).name)
    env = {**os.environ, **image_env, "FLTEMU_SOCKET": socket_path}
    cmd = _exec_form(_instruction("CMD"))
    assert cmd[0] == "fltemu"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fltemu", *cmd[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert daemon.stdout is not None
        banner = daemon.stdout.readline()
        assert socket_path in banner and "\\EchoPort" in banner
        assert oct(os.stat(socket_path).st_mode & 0o777) == "0o666"
        assert _health(env).returncode == 0
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert "Traceback" not in err


def _health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    health = _exec_form(_instruction("HEALTHCHECK").split("CMD", 1)[1])
    assert health[0] == "fltemu"
    return subprocess.run(
        [sys.executable, "-m", "fltemu", *health[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_checks_the_daemon_not_a_port(tmp_path: Path) -> None:
    # A container started with the user's own filter (no \EchoPort): healthy once it serves.
    (tmp_path / "myfilter.py").write_text(
        "async def setup(flt):\n"
        "    await flt.create_communication_port('\\\\Mine', connect_notify=lambda *a: 0,\n"
        "        disconnect_notify=lambda c: None, max_connections=1)\n"
    )
    socket_path = str(tmp_path / "fltemu.sock")
    env = {**os.environ, "FLTEMU_SOCKET": socket_path, "PYTHONPATH": str(tmp_path)}
    unhealthy = _health(env)  # nothing serves yet
    assert unhealthy.returncode == 1 and "no fltemu daemon" in unhealthy.stderr
    cmd = _exec_form(_instruction("CMD"))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fltemu", *cmd[1:], "--filter", "myfilter"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert daemon.stdout is not None and "\\Mine" in daemon.stdout.readline()
        healthy = _health(env)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err


def test_the_build_context_leaves_out_the_repository_and_virtualenvs() -> None:
    ignored = (DOCKERFILE.parent / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    lines = DOCKERFILE.read_text().splitlines()
    # COPY SOURCE... DEST: the sources are what the build needs from the context.
    copied = {name for line in lines if line.startswith("COPY ") for name in line.split()[1:-1]}
    assert copied == {"pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "fltemu", "client"}
    assert not copied & set(ignored)


def test_image_runs_as_a_non_root_user() -> None:
    assert _instruction("USER") == "fltemu"
