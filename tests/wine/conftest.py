"""Windows agents under Wine: the built Windows side, one prefix per run, and a line-driven
agent (``client/windows/agents/probe.c``) for the status tests.

These tests need Wine and mingw-w64 (``.ci/run`` installs them). Without them they are
skipped on a developer's machine, with the command that installs them, and fail in CI.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fltemu.testing import DaemonThread
from fltemu.wine import WineBuild, WinePrefix, agent_argv, agent_environment, build_windows_side

#: Seconds to wait for one answer of an agent (Wine's first start in a session is slow).
ANSWER_WAIT = 30.0


def _missing() -> str | None:
    for tool, package in (
        ("wine", "wine wine64"),
        ("x86_64-w64-mingw32-gcc", "gcc-mingw-w64-x86-64"),
        ("make", "make"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


@pytest.fixture(scope="session")
def wine_build(tmp_path_factory: pytest.TempPathFactory) -> WineBuild:
    """fltlib.dll, fltemu.sys and the test agents, built once per run."""
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the Wine tests must run in CI: {missing}")
        pytest.skip(missing)
    return build_windows_side(build_dir=tmp_path_factory.mktemp("winebuild"), targets=["agents"])


@pytest.fixture(scope="session")
def go_agent(wine_build: WineBuild) -> Path:
    """The Go test agent (``client/windows/agents/go``), built with GOOS=windows."""
    if shutil.which("go") is None:
        if os.environ.get("CI"):
            pytest.fail("the Go agent test must run in CI: go is not installed")
        pytest.skip("go is not installed (apt-get install golang-go)")
    build_windows_side(build_dir=wine_build.directory, targets=["go-agents"])
    return wine_build.agent("goagent")


@pytest.fixture(scope="session")
def wine_prefix(
    wine_build: WineBuild, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WinePrefix]:
    """A fresh Wine prefix with the build installed; its session is ended at the end."""
    prefix = WinePrefix(tmp_path_factory.mktemp("wine") / "prefix")
    prefix.ensure(wine_build)
    prefix.start_session(persistent=True)
    yield prefix
    subprocess.run(["wineserver", "-k"], env=prefix.environment(), check=False, capture_output=True)


@pytest.fixture
def wine_daemon() -> Iterator[DaemonThread]:
    """An in-process daemon for one test."""
    with DaemonThread() as daemon:
        yield daemon


class Agent:
    """A Windows program under Wine whose stdout is read line by line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.backlog: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\r\n"))
        self.lines.put(None)

    def line(self, timeout: float = ANSWER_WAIT) -> str:
        """The next line of output."""
        try:
            got = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s; so far: {self.seen}") from None
        if got is None:
            raise AssertionError(f"the agent ended; its output: {self.seen}")
        self.seen.append(got)
        return got

    def expect(self, prefix: str | tuple[str, ...], timeout: float = ANSWER_WAIT) -> str:
        """The first line, in output order, that starts with ``prefix`` (or one of them) and
        that no earlier ``expect`` took; lines skipped over stay for later calls."""
        for i, held in enumerate(self.backlog):
            if held.startswith(prefix):
                return self.backlog.pop(i)
        while True:
            got = self.line(timeout)
            if got.startswith(prefix):
                return got
            self.backlog.append(got)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def cmd(self, command: str, timeout: float = ANSWER_WAIT) -> str:
        """Send one command and return its answer line (which starts with the command, or
        is a completion for ``wait``)."""
        self.send(command)
        word = command.split()[0]
        answers = {
            "wait": ("done ", "wait "),
            "tget": ("tget-started ",),
            "tsend": ("tsend-started",),
            "xget": ("xget-started ",),
        }
        return self.expect(answers.get(word, (word + " ",)), timeout)

    def kill(self) -> None:
        """SIGKILL the Wine process of the agent."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(ANSWER_WAIT)

    def close(self) -> int:
        """End the agent (``exit`` for the probe, SIGKILL if it does not go) and release its
        pipes."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("exit 0")
            try:
                self.proc.wait(ANSWER_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._reader.join(ANSWER_WAIT)
        if self._reader.is_alive():
            # Something the agent started still holds its stdout: end its whole session.
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._reader.join(ANSWER_WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def fields(line: str) -> dict[str, str]:
    """``key=value`` words of an answer line."""
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


AgentFactory = Callable[..., Agent]


def _session_running(prefix: WinePrefix) -> bool:
    """Whether the prefix's wineserver runs (a process of Wine's with this WINEPREFIX)."""
    marker = f"WINEPREFIX={prefix.path}\0".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if b"wineserver" not in Path(f"/proc/{entry}/cmdline").read_bytes():
                continue
            if marker in Path(f"/proc/{entry}/environ").read_bytes():
                return True
        except OSError:
            continue
    return False


@pytest.fixture
def start_agent(wine_build: WineBuild, wine_prefix: WinePrefix) -> Iterator[AgentFactory]:
    """Start a test agent (``client/windows/agents/NAME.c``) against a daemon's socket."""
    started: list[Agent] = []

    def start(
        address: str, name: str = "probe", *args: str, env: dict[str, str] | None = None
    ) -> Agent:
        # The session runs before the agent starts: an agent that started it would leave
        # its stdout to the session's processes (and a test that ended the session, or a
        # benchmark that reinstalled the prefix, would leave the next agent to start it).
        if not _session_running(wine_prefix):
            wine_prefix.start_session(persistent=True)
        environment = agent_environment(wine_prefix, address)
        environment.update(env or {})
        agent = Agent(agent_argv(str(wine_build.agent(name)), args), environment)
        started.append(agent)
        if name == "probe":
            agent.expect("ready")
        return agent

    yield start
    for agent in started:
        agent.close()
