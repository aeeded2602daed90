"""``python -m fltemu`` as a user runs it: in a subprocess, stopped by signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import fltuser


class Served:
    """A ``fltemu serve`` subprocess and the line it announced."""

    def __init__(self, proc: subprocess.Popen[str], line: str) -> None:
        self.proc = proc
        self.line = line

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err


def start(args: list[str], env: dict[str, str] | None = None) -> Served:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fltemu", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=20)
        raise AssertionError(f"fltemu serve exited with {proc.returncode}: {err}")
    return Served(proc, line)


@pytest.fixture
def served(socket_path: str) -> Iterator[Served]:
    s = start(["--address", socket_path, "--filter", "echo"])
    yield s
    if s.proc.poll() is None:
        s.stop()


def test_serve_announces_and_serves(served: Served, socket_path: str) -> None:
    assert served.line.startswith(f"fltemu: listening on {socket_path}")
    assert "\\EchoPort" in served.line
    with fltuser.connect("\\EchoPort", address=socket_path) as port:
        assert port.send(b"hello", 5) == b"hello"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(served: Served, socket_path: str, sig: int) -> None:
    port = fltuser.connect("\\EchoPort", address=socket_path)
    code, err = served.stop(sig)
    assert code == 0, err
    assert "Traceback" not in err
    assert not Path(socket_path).exists()
    with pytest.raises(fltuser.HResultError) as exc:
        port.get_message(64, timeout=5)
    assert exc.value.hresult == 0x80070006
    port.close()


def test_environment_variable_names_the_socket(
    socket_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLTEMU_SOCKET", socket_path)  # for the daemon and the client alike
    s = start(["--filter", "echo"])
    try:
        assert socket_path in s.line
        with fltuser.connect("\\EchoPort") as port:
            assert port.send(b"x", 1) == b"x"
    finally:
        assert s.stop()[0] == 0


def test_default_filters_are_the_builtin_samples(socket_path: str) -> None:
    s = start(["--address", socket_path])
    try:
        assert "\\EchoPort" in s.line
    finally:
        s.stop()


def test_user_filter_module_setup_and_teardown(socket_path: str, tmp_path: Path) -> None:
    marker = tmp_path / "teardown.txt"
    (tmp_path / "myfilter.py").write_text(
        textwrap.dedent(
            f"""
            from fltemu import NtStatus

            async def setup(flt):
                await flt.create_communication_port(
                    "\\\\MyPort",
                    connect_notify=lambda cp, cookie, ctx: NtStatus.STATUS_SUCCESS,
                    disconnect_notify=lambda cookie: None,
                    message_notify=lambda cookie, data, n: (0, data[::-1]),
                    max_connections=1,
                )

            async def teardown(flt):
                open({str(marker)!r}, "w").write(flt.name)
            """
        )
    )
    s = start(
        ["--address", socket_path, "--filter", "myfilter"],
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    with fltuser.connect("\\MyPort", address=socket_path) as port:
        assert port.send(b"abc", 3) == b"cba"
    assert s.stop()[0] == 0
    assert marker.read_text() == "myfilter"


def test_unknown_filter_fails_clearly(socket_path: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fltemu", "serve", "--address", socket_path, "--filter", "nosuch"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "nosuch" in proc.stderr and "built-in filters:" in proc.stderr and "echo" in proc.stderr
    assert not Path(socket_path).exists()


def test_second_daemon_on_the_same_socket_is_refused(served: Served, socket_path: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fltemu", "serve", "--address", socket_path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "already listening" in proc.stderr
    with fltuser.connect("\\EchoPort", address=socket_path) as port:  # the first still serves
        assert port.send(b"x", 1) == b"x"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_loop_choice(socket_path: str, loop: str) -> None:
    s = start(["--address", socket_path, "--filter", "echo", "--loop", loop])
    try:
        assert f"loop: {loop}" in s.line
        with fltuser.connect("\\EchoPort", address=socket_path) as port:
            assert port.send(b"x", 1) == b"x"
    finally:
        assert s.stop()[0] == 0


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"]])
def test_help_explains_with_examples(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fltemu", *args], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert "usage: fltemu" in proc.stdout
    if "serve" in args:
        assert "examples:" in proc.stdout and "--filter" in proc.stdout


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("fltemu")
    assert exe.exists(), "the fltemu console script is not installed next to python"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("fltemu ")


def test_bad_arguments_exit_2(socket_path: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fltemu", "serve", "--socket-mode", "999"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "permission mode" in proc.stderr or "octal" in proc.stderr


def test_settings_reach_the_filter_module(socket_path: str, tmp_path: Path) -> None:
    (tmp_path / "setfilter.py").write_text(
        textwrap.dedent(
            """
            async def setup(flt):
                await flt.create_communication_port(
                    flt.settings["port"],
                    connect_notify=lambda cp, cookie, ctx: 0,
                    disconnect_notify=lambda cookie: None,
                    message_notify=lambda cookie, data, n: (0, flt.settings["answer"].encode()),
                    max_connections=1,
                )
            """
        )
    )
    s = start(
        [
            "--address",
            socket_path,
            "--filter",
            "setfilter",
            "--set",
            "setfilter.port=\\FromSettings",
            "--set",
            "setfilter.answer=a=b",
        ],
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    try:
        with fltuser.connect("\\FromSettings", address=socket_path) as port:
            assert port.send(b"?", 8) == b"a=b"
    finally:
        assert s.stop()[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--filter", "echo", "--set", "nosuch.key=1"], "not loaded: nosuch"),
        (["--set", "novalue"], "FILTER.KEY=VALUE"),
    ],
)
def test_bad_settings_fail_clearly(socket_path: str, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fltemu", "serve", "--address", socket_path, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode in (1, 2)
    assert message in proc.stderr
    assert not Path(socket_path).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "0x80070005"),
        (["--allow-uid", "65534"], "connected"),
        (["--allow-gid", "65534"], "connected"),
        (["--allow-everyone"], "connected"),
    ],
)
def test_allow_options_widen_the_default_security(args: list[str], expected: str) -> None:
    import tempfile

    from ..helpers import connect_as_nobody

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        path = os.path.join(tmp, "d.sock")
        s = start(["--address", path, "--filter", "echo", "--socket-mode", "666", *args])
        try:
            assert connect_as_nobody("\\EchoPort", path).startswith(expected)
        finally:
            assert s.stop()[0] == 0


def test_failed_setup_still_runs_teardown(socket_path: str, tmp_path: Path) -> None:
    marker = tmp_path / "teardown.txt"
    (tmp_path / "badfilter.py").write_text(
        textwrap.dedent(
            f"""
            async def setup(flt):
                flt.context = "started something"
                raise RuntimeError("setup failed halfway")

            async def teardown(flt):
                open({str(marker)!r}, "w").write(flt.context)
            """
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fltemu",
            "serve",
            "--address",
            socket_path,
            "--filter",
            "badfilter",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        },
    )
    assert proc.returncode == 1
    assert "setup failed halfway" in proc.stderr
    assert marker.read_text() == "started something"


def _wine(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    # Each of these is refused before anything is built, so Wine need not be installed.
    command = [sys.executable, "-m", "fltemu", "wine", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize(
    ("make", "text"),
    [
        ("elf", "/bin/ls is a Linux program, not a Windows one: run it directly"),
        ("text", "is not a Windows program: a .exe starts with 'MZ', this file with 'some text."),
        ("script", "is a script, not a Windows one"),
        ("folder", "is a folder, not a Windows program (.exe)"),
        ("missing", "./nosuch.exe: no such file"),
    ],
)
def test_fltemu_wine_refuses_what_is_not_a_windows_program(
    tmp_path: Path, make: str, text: str
) -> None:
    program = {
        "elf": "/bin/ls",
        "text": str(tmp_path / "agent.exe"),
        "script": str(tmp_path / "run.exe"),
        "folder": str(tmp_path),
        "missing": "./nosuch.exe",
    }[make]
    (tmp_path / "agent.exe").write_text("some text\n")
    (tmp_path / "run.exe").write_text("#!/bin/sh\necho hi\n")
    done = _wine("--", program, cwd=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.startswith("fltemu wine: error: ") and text in done.stderr


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["agent.exe"], "put the program after '--': fltemu wine -- agent.exe"),
        (
            ["--prefix", "/tmp/p", "agent.exe", "-n", "3"],
            "put the program after '--': fltemu wine --prefix /tmp/p -- agent.exe -n 3",
        ),
        ([], "fltemu wine needs the program to run after '--': fltemu wine -- agent.exe"),
        (["--"], "fltemu wine needs the program to run after '--'"),
    ],
)
def test_fltemu_wine_without_dashes_says_where_the_program_goes(args: list[str], text: str) -> None:
    done = _wine(*args)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: fltemu wine ") and text in done.stderr
