"""``fltemu serve`` mistakes as a user makes them: each error names what is wrong and what to do."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import fltuser
from fltemu.cli import main

from .test_cli import Served, start

FLTEMU = str(Path(sys.executable).with_name("fltemu"))


def serve(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLTEMU, "serve", *args], capture_output=True, text=True, timeout=30, cwd=cwd
    )


def test_an_unknown_setting_is_an_error_that_lists_the_known_keys(socket_path: str) -> None:
    proc = serve("--address", socket_path, "--filter", "scanner", "--set", "scanner.sourse=dir:/x")
    assert proc.returncode == 1
    assert proc.stderr == (
        "fltemu: error: --set scanner.sourse: no such setting; filter scanner reads "
        "scanner.extensions, scanner.history, scanner.interval, scanner.seed, scanner.source\n"
    )
    assert not Path(socket_path).exists()


def test_a_filter_module_in_the_current_folder_is_found(socket_path: str, tmp_path: Path) -> None:
    (tmp_path / "mymodule.py").write_text(
        textwrap.dedent(
            """
            async def setup(flt):
                await flt.create_communication_port(
                    "\\\\Mine",
                    connect_notify=lambda cp, cookie, ctx: 0,
                    disconnect_notify=lambda cookie: None,
                    message_notify=lambda cookie, data, n: (0, data.upper()),
                    max_connections=1,
                )
            """
        )
    )
    # The console script, as a user runs it: its sys.path does not hold the current folder.
    proc = subprocess.Popen(
        [FLTEMU, "serve", "--address", socket_path, "--filter", "mymodule"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    s = Served(proc, line)
    try:
        assert "\\Mine" in line, proc.communicate(timeout=20)
        with fltuser.connect("\\Mine", address=socket_path) as port:
            assert port.send(b"abc", 3) == b"ABC"
    finally:
        assert s.stop()[0] == 0


def test_a_missing_filter_module_says_where_it_was_looked_for(
    socket_path: str, tmp_path: Path
) -> None:
    proc = serve("--address", socket_path, "--filter", "mymodule", cwd=str(tmp_path))
    assert proc.returncode == 1
    assert "cannot import mymodule (No module named 'mymodule')" in proc.stderr
    assert f"the current folder ({tmp_path})" in proc.stderr and "PYTHONPATH=" in proc.stderr


def test_a_second_daemon_is_told_to_use_another_address(socket_path: str) -> None:
    first = start(["--address", socket_path, "--filter", "echo"])
    try:
        proc = serve("--address", socket_path, "--filter", "echo")
        assert proc.returncode == 1
        assert proc.stderr.startswith(
            f"fltemu: error: a daemon is already listening on {socket_path}: stop it"
        )
        assert "--address PATH or FLTEMU_SOCKET" in proc.stderr and "Errno" not in proc.stderr
    finally:
        assert first.stop()[0] == 0


def test_a_socket_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "fltemu.sock"
    proc = serve("--address", str(path), "--filter", "echo")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"fltemu: error: cannot create the socket {path}: the folder {path.parent} does not exist\n"
    )


def _serve_as_nobody_if_root(path: str) -> tuple[int, str]:
    """``fltemu serve`` in a forked child, as uid/gid 65534 when we are root; (exit, stderr)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(read_fd)
            sys.stderr = open(write_fd, "w")  # noqa: SIM115 - closed by os._exit
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            code = main(["serve", "--address", path, "--filter", "echo"])
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        err = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


def test_a_folder_the_daemon_cannot_write_names_the_folder_and_the_uid() -> None:
    # A bind-mounted folder of another user: as root, the daemon runs as nobody; otherwise
    # the folder is read-only (mode 555) for its own user.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        folder = Path(tmp) / "mounted"
        folder.mkdir()
        os.chmod(folder, 0o555)
        path = folder / "fltemu.sock"
        code, err = _serve_as_nobody_if_root(str(path))
    uid = 65534 if os.geteuid() == 0 else os.geteuid()
    assert code == 1, err
    assert err.startswith(
        f"fltemu: error: cannot create the socket {path}: Permission denied (the daemon runs "
        f"as uid {uid}, gid "
    ), err
    assert f"the folder {folder} belongs to uid {os.geteuid()}" in err and "mode 555" in err
    assert f"chown {uid} {folder}" in err and f"--user {os.geteuid()}" in err


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("./good.py", "--filter ./good.py: give the module name, not a file name: --filter good "),
        ("good.py", "--filter good.py: give the module name, not a file name: --filter good "),
        ("good.py:start", "give the module name, not a file name: --filter good:start "),
        ("./nosuch.py", "not a file name (./nosuch.py does not exist): --filter nosuch "),
        ("sub/flt.py", "give the module name, not a file name: --filter sub.flt "),
        (".good", "a module name does not start with '.'"),
    ],
)
def test_a_file_name_as_filter_says_to_give_the_module_name(
    socket_path: str, tmp_path: Path, spec: str, text: str
) -> None:
    (tmp_path / "good.py").write_text("async def setup(flt):\n    pass\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "flt.py").write_text("async def setup(flt):\n    pass\n")
    proc = serve("--address", socket_path, "--filter", spec, cwd=str(tmp_path))
    assert proc.returncode == 1
    assert text in proc.stderr and "Traceback" not in proc.stderr


def test_a_file_outside_the_folder_gets_a_pythonpath_hint(socket_path: str, tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text("async def setup(flt):\n    pass\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = serve("--address", socket_path, "--filter", "../good.py", cwd=str(elsewhere))
    assert proc.returncode == 1
    assert f"PYTHONPATH={tmp_path} fltemu serve --filter good" in proc.stderr


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("def setup(flt)\n", "--filter broken: broken has a syntax error: {path}, line 1: "),
        (
            "import os\nraise RuntimeError('no config')\n",
            "--filter broken: importing broken raised RuntimeError('no config') at {path}, line 2",
        ),
    ],
)
def test_a_filter_module_that_fails_to_import_gets_one_line(
    socket_path: str, tmp_path: Path, source: str, text: str
) -> None:
    (tmp_path / "broken.py").write_text(source)
    proc = serve("--address", socket_path, "--filter", "broken", cwd=str(tmp_path))
    assert proc.returncode == 1
    assert text.format(path=tmp_path / "broken.py") in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_folder_as_address_says_to_give_the_socket_path(tmp_path: Path) -> None:
    proc = serve("--address", str(tmp_path), "--filter", "echo")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"fltemu: error: {tmp_path} is a folder: the address is the socket's own path, e.g. "
        f"{tmp_path / 'fltemu.sock'}\n"
    )
