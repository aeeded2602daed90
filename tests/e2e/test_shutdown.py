"""``fltemu serve`` always ends on SIGTERM: a callback that never returns is cancelled after
the grace (its caller gets 0x80070006), and a second signal ends the process at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import fltuser
from fltemu.daemon.control import call
from fltemu.status import HResult
from fltemu.wire import PROTOCOL_VERSION, Control

HANG_FILTER = textwrap.dedent(
    """
    import asyncio
    from fltemu import NtStatus

    async def setup(flt):
        async def on_message(cookie, data, n):
            await asyncio.Event().wait()  # never returns

        async def on_disconnect(cookie):
            await asyncio.Event().wait()  # never returns either

        await flt.create_communication_port(
            "\\\\Hang", connect_notify=lambda *a: NtStatus.STATUS_SUCCESS,
            disconnect_notify=on_disconnect, message_notify=on_message, max_connections=4)
    """
)


def serve_module(folder: Path, socket_path: str, name: str, source: str) -> subprocess.Popen[str]:
    """``fltemu serve --filter NAME`` with the module NAME written from ``source``."""
    (folder / f"{name}.py").write_text(source)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fltemu", "serve", "--filter", name, "--address", socket_path],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None and "listening on" in proc.stdout.readline()
    return proc


@pytest.fixture
def hanging_daemon(tmp_path: Path, socket_path: str) -> subprocess.Popen[str]:
    return serve_module(tmp_path, socket_path, "hangflt", HANG_FILTER)


def stuck_send(socket_path: str) -> tuple[threading.Thread, list[BaseException]]:
    """A client blocked in FilterSendMessage on the hanging MessageNotify."""
    errors: list[BaseException] = []
    port = fltuser.connect("\\Hang", address=socket_path)

    def run() -> None:
        try:
            port.send(b"x", 4)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            errors.append(exc)
        finally:
            port.close()

    thread = threading.Thread(target=run)
    thread.start()
    # Wait until the daemon runs the MessageNotify (its connection counts the send).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        filters = call(Control(PROTOCOL_VERSION, "ports"), socket_path).filters
        if any(c.sends_from_user for f in filters for p in f.ports for c in p.connections):
            break
        time.sleep(0.02)
    return thread, errors


def test_sigterm_ends_hung_callbacks(
    hanging_daemon: subprocess.Popen[str], socket_path: str
) -> None:
    thread, errors = stuck_send(socket_path)
    hanging_daemon.send_signal(signal.SIGTERM)
    output, _ = hanging_daemon.communicate(timeout=60)
    assert hanging_daemon.returncode == 0, output
    assert "cancelling 1 MessageNotify call(s) still running" in output
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], fltuser.HResultError)
    assert errors[0].hresult == HResult.E_HANDLE


def signal_twice(proc: subprocess.Popen[str], second: signal.Signals) -> None:
    """SIGTERM, wait for the shutdown to begin, then ``second``: the daemon exits at once with
    128 + its number."""
    assert proc.stdout is not None
    proc.send_signal(signal.SIGTERM)
    for line in proc.stdout:
        if "shutting down" in line:
            break
    proc.send_signal(second)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + second, output
    assert f"{second.name} again during shutdown" in output


def test_a_second_signal_exits_at_once(
    hanging_daemon: subprocess.Popen[str], socket_path: str
) -> None:
    thread, errors = stuck_send(socket_path)
    # The graceful path would exit 0 after the grace; the second signal exits 128 + 15.
    signal_twice(hanging_daemon, signal.SIGTERM)
    thread.join(30)
    assert len(errors) == 1


def test_a_second_signal_exits_even_while_a_callback_blocks_the_loop(
    tmp_path: Path, socket_path: str
) -> None:
    blocker = textwrap.dedent(
        """
        import time

        async def setup(flt):
            pass

        def teardown(flt):
            time.sleep(120)  # a plain teardown that blocks the event loop
        """
    )
    signal_twice(serve_module(tmp_path, socket_path, "blocker", blocker), signal.SIGINT)
