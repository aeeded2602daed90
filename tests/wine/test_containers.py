"""The two images, built and run by a real Docker engine, as README.md's "In CI" recipe runs
them: the daemon image with the scanner sample, the Python example agent as another uid, the C
``scanagent.exe`` in the Wine image, the control commands from a third container, and
``fltemu bench`` against the Wine agent. Everything made is removed at the end.

Runs when ``FLTEMU_TEST_DOCKER=1`` (``.ci/run`` starts an engine and sets it, with
``FLTEMU_TEST_DOCKER_BASE`` naming a Debian base it made with debootstrap); skipped
otherwise. The images install fltemu and its dependencies from a wheelhouse built here and
served to the build over HTTP on 127.0.0.1, so the builds need no PyPI (apt still needs the
Debian archive).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fltemu.wine import WineBuild

from ..helpers import LineProcess

pytestmark = pytest.mark.timeout(600)

CHECKOUT = Path(__file__).resolve().parents[2]
#: Seconds for one step inside a container (an agent's answer, a container's start).
STEP = 60.0


def docker(*args: str, timeout: float = 600) -> str:
    """A docker command's standard output (it must succeed)."""
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"docker {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def logs(container: str) -> str:
    """What a container wrote, standard output and error (the daemon logs to the latter)."""
    done = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def engine() -> None:
    if os.environ.get("FLTEMU_TEST_DOCKER") != "1":
        if os.environ.get("CI"):
            pytest.fail("the container tests must run in CI: set FLTEMU_TEST_DOCKER=1")
        pytest.skip("set FLTEMU_TEST_DOCKER=1 to build and run the images (needs a Docker engine)")
    if shutil.which("docker") is None:
        pytest.fail("FLTEMU_TEST_DOCKER=1 but there is no docker command")
    docker("version")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; pip's requests are not the test's output."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def wheelhouse(folder: Path) -> Iterator[str]:
    """fltemu's wheel and its dependencies' wheels, served at the returned pip options."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(folder), str(CHECKOUT),
         "setuptools"],
        check=True,
    )  # fmt: skip
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"--no-index --find-links http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def images(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Both images, built from the checkout on FLTEMU_TEST_DOCKER_BASE (default: the official
    Python image); removed afterwards, with the Wine image's wheel stage."""
    name = f"fltemu-test-{uuid.uuid4().hex[:8]}"
    tags = {"daemon": f"{name}-daemon", "wheel": f"{name}-wheel", "wine": f"{name}-wine"}
    base = os.environ.get("FLTEMU_TEST_DOCKER_BASE", "python:3.11-slim")
    try:
        with wheelhouse(tmp_path_factory.mktemp("wheelhouse")) as pip_args:
            common = ["build", "--network", "host", "--build-arg", f"BASE={base}"]
            common += ["--build-arg", f"PIP_ARGS={pip_args}"]
            docker(*common, "-t", tags["daemon"], str(CHECKOUT))
            wine = [*common, "-f", str(CHECKOUT / "Dockerfile.wine")]
            docker(*wine, "--target", "wheel", "-t", tags["wheel"], str(CHECKOUT))
            docker(*wine, "-t", tags["wine"], str(CHECKOUT))
        yield {"name": name, **tags}
    finally:
        subprocess.run(["docker", "rmi", "-f", *tags.values()], capture_output=True, check=False)


class Stack:
    """The containers and volume of one run, removed by ``close``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.volume = f"{name}-sock"
        self.containers: list[str] = []
        self.watched: list[LineProcess] = []
        docker("volume", "create", self.volume)

    def container(self, role: str) -> str:
        self.containers.append(f"{self.name}-{role}")
        return self.containers[-1]

    def run(self, role: str, *args: str) -> LineProcess:
        """``docker run --rm`` in the foreground, its output watched line by line."""
        argv = ["docker", "run", "--rm", "--name", self.container(role), "--network", "none"]
        process = LineProcess([*argv, *args], wait=STEP)
        self.watched.append(process)
        return process

    def close(self) -> None:
        subprocess.run(["docker", "rm", "-f", *self.containers], capture_output=True, check=False)
        for process in self.watched:
            process.stop(kill=True)
        subprocess.run(
            ["docker", "volume", "rm", "-f", self.volume], capture_output=True, check=False
        )


def wait_healthy(container: str) -> None:
    """Until Docker's health check (``fltemu status``) passes; ``docker events`` says when."""
    events = LineProcess(
        ["docker", "events", "--filter", f"container={container}", "--filter",
         "event=health_status", "--since", "0"],
        wait=STEP,
    )  # fmt: skip
    try:
        events.wait_for(lambda line: "health_status: healthy" in line, "a healthy daemon")
    finally:
        events.stop(kill=True)


def scan(daemon: str, name: str, text: str) -> None:
    """Put a file in the scanned folder and open it: written under a name the scanner skips,
    renamed (no open) and read, so the scanner scans it once."""
    part = f"/scan/{name}.part"
    script = f"echo '{text}' > {part} && mv {part} /scan/{name} && cat /scan/{name}"
    docker("exec", daemon, "sh", "-c", script)


def control(stack: Stack, images: dict[str, str], *command: str) -> str:
    """A control command from a third container on the socket volume."""
    return docker(
        "run", "--rm", "--network", "none", "-v", f"{stack.volume}:/run/fltemu", images["daemon"],
        "fltemu", *command,
    )  # fmt: skip


def test_images_serve_python_and_windows_agents_across_containers(
    images: dict[str, str], wine_build: WineBuild, tmp_path: Path
) -> None:
    agents = tmp_path / "bin"  # the user's agent, built beforehand
    agents.mkdir()
    shutil.copyfile(wine_build.agent("scanagent"), agents / "scanagent.exe")
    stack = Stack(images["name"])
    try:
        daemon = stack.container("daemon")
        docker(
            "run", "-d", "--name", daemon, "--network", "none",
            "-v", f"{stack.volume}:/run/fltemu", "--tmpfs", "/scan:uid=10001,gid=10001",
            images["daemon"], "fltemu", "serve", "--socket-mode", "666", "--allow-everyone",
            "--set", "scanner.source=dir:/scan", "--set", "scanner.extensions=doc,txt",
        )  # fmt: skip
        wait_healthy(daemon)

        # The Python example agent, as a uid that is neither the daemon's nor root.
        python = stack.run(
            "python", "--user", "12345", "-v", f"{stack.volume}:/run/fltemu",
            "-v", f"{CHECKOUT / 'examples'}:/examples:ro", images["daemon"],
            "python", "/examples/scanner_agent.py",
        )  # fmt: skip
        python.wait_for(lambda line: "connected to \\ScannerPort" in line, "its connection")
        scan(daemon, "notes.txt", "nothing to see")
        python.wait_for(lambda line: line.endswith("scanned 15 bytes: safe"), "a safe verdict")
        scan(daemon, "report.doc", "some foul text")
        python.wait_for(lambda line: line.endswith("scanned 15 bytes: unsafe"), "a foul verdict")
        # The scanner's port takes one connection (MaxConnections 1, as Microsoft's): this one
        # leaves it, as its handle is closed by the kernel side, and exits 0.
        assert (
            control(stack, images, "disconnect", "\\ScannerPort") == "disconnected 1 connection\n"
        )
        assert python.wait_exit() == 0, python.output

        # In its own PID namespace, a client shows as pid 0 to ConnectNotify.
        assert "scanner: connected, port=#1 (pid 0)" in logs(daemon)

        # scanagent.exe in the Wine image (its entry point is `fltemu wine --`), in the
        # daemon's PID namespace: ConnectNotify sees the pid of its Wine driver host.
        wine = stack.run(
            "wine", "--pid", f"container:{daemon}", "-v", f"{stack.volume}:/run/fltemu",
            "-v", f"{agents}:/agent:ro", images["wine"], "/agent/scanagent.exe",
        )  # fmt: skip
        wine.wait_for(lambda line: "connected to \\ScannerPort" in line, "its connection")
        scan(daemon, "memo.txt", "nothing to see")
        wine.wait_for(lambda line: line.endswith("scanned 15 bytes: safe"), "a safe verdict")
        scan(daemon, "letter.doc", "some foul text")
        wine.wait_for(lambda line: line.endswith("scanned 15 bytes: unsafe"), "a foul verdict")
        assert control(stack, images, "unload", "scanner") == "filter 'scanner' unloaded\n"
        wine.wait_for(lambda line: "Port is disconnected" in line, "the unload")
        assert wine.wait_exit() == 0, wine.output
        seen = [line for line in logs(daemon).splitlines() if "port=#2 (pid" in line]
        assert len(seen) == 1 and "(pid 0)" not in seen[0], seen

        # fltemu bench hosts the port itself and runs the Wine agent in the same container.
        bench = stack.run(
            "bench", "-v", f"{agents}:/agent:ro", "--entrypoint", "fltemu", images["wine"],
            "bench", "\\ScannerPort", "--size", "1032", "--reply-length", "1",
            "--concurrency", "16", "--duration", "2", "--", "fltemu", "wine", "--",
            "/agent/scanagent.exe",
        )  # fmt: skip
        assert bench.wait_exit() == 0, bench.output
        assert "answered" in bench.output and "STATUS_SUCCESS" in bench.output, bench.output
        assert "not answered 0" in bench.output, bench.output
    finally:
        stack.close()
