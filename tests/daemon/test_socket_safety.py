"""The fallback socket lives in a private folder, and clients talk only to a daemon they trust
(protocol §1)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import fltemu.daemon.server as server_module
import fltuser
from fltemu.daemon import Daemon
from fltemu.daemon.server import DaemonAddressUnsafeError
from fltemu.status import HResult
from fltemu.wire import PROTOCOL_VERSION, Control, is_trusted_peer
from fltuser.control import ControlError, call

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def private_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default socket folder, moved into the test's tmp_path."""
    folder = tmp_path / "fltemu-me"
    monkeypatch.setattr(server_module, "default_socket_dir", lambda: str(folder))
    return folder


async def test_the_private_folder_is_created_0700(private_dir: Path) -> None:
    async with Daemon(address=private_dir / "fltemu.sock"):
        assert private_dir.is_dir()
        assert private_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("kind", ["wide", "link", "file"])
async def test_a_folder_that_is_not_private_is_refused(
    private_dir: Path, tmp_path: Path, kind: str
) -> None:
    if kind == "wide":
        private_dir.mkdir(mode=0o700)
        private_dir.chmod(0o755)
    elif kind == "link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        private_dir.symlink_to(tmp_path / "elsewhere")
    else:
        private_dir.write_text("")
    with pytest.raises(DaemonAddressUnsafeError, match=str(private_dir)):
        async with Daemon(address=private_dir / "fltemu.sock"):
            pass


@needs_root
async def test_a_folder_of_another_user_is_refused(private_dir: Path) -> None:
    private_dir.mkdir(mode=0o700)
    os.chown(private_dir, NOBODY, NOBODY)
    with pytest.raises(DaemonAddressUnsafeError, match=f"belongs to uid {NOBODY}"):
        async with Daemon(address=private_dir / "fltemu.sock"):
            pass


def test_whom_a_client_trusts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLTEMU_TRUST_UID", raising=False)
    assert is_trusted_peer(os.geteuid()) and is_trusted_peer(0) and is_trusted_peer(None)
    assert not is_trusted_peer(4321)
    monkeypatch.setenv("FLTEMU_TRUST_UID", "4321")
    assert is_trusted_peer(4321) and not is_trusted_peer(4322)


@needs_root
async def test_clients_refuse_a_daemon_of_another_user() -> None:
    """Someone else's process at the socket path: every client refuses to talk to it."""
    folder = Path(tempfile.mkdtemp(prefix="fltemu-shared-"))
    folder.chmod(0o1777)  # a world-writable folder, as /tmp is
    path = folder / "impostor.sock"
    impostor = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, socket, time
                os.setgid({NOBODY}); os.setuid({NOBODY})
                s = socket.socket(socket.AF_UNIX); s.bind({str(path)!r}); s.listen(8)
                print("ready", flush=True)
                conns = [s.accept()[0] for _ in range(3)]
                time.sleep(30)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert impostor.stdout is not None and impostor.stdout.readline() == "ready\n"
        with pytest.raises(fltuser.HResultError) as info:
            fltuser.connect("\\P", address=path)
        assert info.value.hresult == HResult.E_ACCESSDENIED
        assert f"FLTEMU_TRUST_UID={NOBODY}" in str(info.value)
        with pytest.raises(fltuser.HResultError) as ainfo:
            await fltuser.aconnect("\\P", address=path)
        assert ainfo.value.hresult == HResult.E_ACCESSDENIED
        with pytest.raises(ControlError, match=f"runs as uid {NOBODY}"):
            await asyncio.to_thread(call, Control(PROTOCOL_VERSION, "ports"), str(path))
    finally:
        impostor.kill()
        impostor.communicate()
        shutil.rmtree(folder)
