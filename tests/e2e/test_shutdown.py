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
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

import fltuser
from fltemu.daemon.runner import WATCHDOG_MARGIN
from fltemu.daemon.server import SHUTDOWN_SLACK
from fltemu.status import HResult
from fltemu.wire import PROTOCOL_VERSION, Control
from fltuser.control import call

from ..helpers import LineProcess

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


# Every kind of callback hangs, in every filter: ConnectNotify (for the context b"hang"),
# MessageNotify, DisconnectNotify and the module's teardown (its FilterUnloadCallback).
EVERYTHING_HANGS = textwrap.dedent(
    """
    import asyncio
    from fltemu import NtStatus

    def say(text):
        print(text, flush=True)

    async def setup(flt):
        name = flt.name

        async def on_connect(client_port, cookie, context):
            if context == b"hang":
                say(f"{name}: ConnectNotify hangs")
                await asyncio.Event().wait()
            return NtStatus.STATUS_SUCCESS

        async def on_message(cookie, data, size):
            say(f"{name}: MessageNotify hangs")
            await asyncio.Event().wait()

        async def on_disconnect(cookie):
            say(f"{name}: DisconnectNotify hangs")
            await asyncio.Event().wait()

        await flt.create_communication_port(
            f"\\\\Hang_{name}", connect_notify=on_connect, disconnect_notify=on_disconnect,
            message_notify=on_message, max_connections=8)

    async def teardown(flt):
        say(f"{flt.name}: teardown hangs")
        await asyncio.Event().wait()
    """
)

GRACE = 1.0
#: The bound on the whole shutdown, from the signal to the process's exit: the grace, the
#: daemon's fixed slack and the watchdog's margin (past which it exits with status 1), and
#: room for a slow machine to start and end a Python process.
EXIT_BOUND = GRACE + SHUTDOWN_SLACK + WATCHDOG_MARGIN + 10.0


def line_is(text: str) -> Callable[[str], bool]:
    return lambda line: line == text


class Blocked:
    """A client call on a thread that stays blocked until the daemon answers it."""

    def __init__(self, what: str, call: Callable[[], object]) -> None:
        self.what = what
        self.error: BaseException | None = None
        self.returned = False
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            call()
            self.returned = True
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            self.error = exc

    def join(self) -> None:
        self._thread.join(EXIT_BOUND)
        assert not self._thread.is_alive(), f"{self.what}: still blocked"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_shutdown_is_bounded_in_all_by_the_grace_whatever_hangs(
    tmp_path: Path, socket_path: str, loop: str
) -> None:
    names = ["hang_a", "hang_b", "hang_c"]
    for name in names:
        (tmp_path / f"{name}.py").write_text(EVERYTHING_HANGS)
    filters = [arg for name in names for arg in ("--filter", name)]
    daemon = LineProcess(
        [sys.executable, "-m", "fltemu", "serve", *filters, "--address", socket_path]
        + ["--shutdown-grace", str(GRACE), "--loop", loop],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
    )
    try:
        daemon.wait_for(lambda line: "listening on" in line, "the ready line")
        expect_e_handle: list[Blocked] = []
        closes: list[Blocked] = []
        ports: list[fltuser.Port] = []
        for name in names:
            port_name = f"\\Hang_{name}"
            sender = fltuser.connect(port_name, address=socket_path)
            getter = fltuser.connect(port_name, address=socket_path)
            ports += [sender, getter]
            expect_e_handle.append(Blocked(f"{name} send", partial(sender.send, b"x", 4)))
            daemon.wait_for(line_is(f"{name}: MessageNotify hangs"), "a send")
            expect_e_handle.append(Blocked(f"{name} get", partial(getter.get_message, 64)))
            hang = partial(fltuser.connect, port_name, b"hang", address=socket_path)
            expect_e_handle.append(Blocked(f"{name} connect", hang))
            daemon.wait_for(line_is(f"{name}: ConnectNotify hangs"), "a connect")
            # A DisconnectNotify already running when the shutdown begins (CloseHandle waits).
            closing = fltuser.connect(port_name, address=socket_path)
            closes.append(Blocked(f"{name} close", closing.close))
            daemon.wait_for(line_is(f"{name}: DisconnectNotify hangs"), "a disconnect")
        daemon.proc.send_signal(signal.SIGTERM)
        # Exit status 0: the shutdown ended by itself, not by the watchdog (status 1).
        assert daemon.proc.wait(timeout=EXIT_BOUND) == 0, daemon.output
        daemon.wait_exit()
    finally:
        daemon.stop(kill=True)
    for blocked in expect_e_handle:
        blocked.join()
        assert isinstance(blocked.error, fltuser.HResultError), (blocked.what, blocked.error)
        assert blocked.error.hresult == HResult.E_HANDLE, blocked.what
    for blocked in closes:
        blocked.join()
        assert blocked.returned, (blocked.what, blocked.error)
    for port in ports:
        port.close()
    output = daemon.output
    for name in names:
        quoted = f"'\\Hang_{name}'"
        for abandoned in (
            f"the unload callback (teardown) of filter '{name}' did not return",
            f"ConnectNotify of port {quoted} (pid",
            f"port {quoted}: cancelling 1 MessageNotify call(s) still running on connection #",
            f"DisconnectNotify of port {quoted} (connection #",
        ):
            assert abandoned in output, output


def test_the_watchdog_ends_a_shutdown_that_a_blocking_callback_holds(
    tmp_path: Path, socket_path: str
) -> None:
    # A plain teardown that blocks the event loop: nothing inside the loop can stop it, so
    # the watchdog the signal started ends the process, and says where it was.
    blocker = textwrap.dedent(
        """
        import time

        async def setup(flt):
            pass

        def teardown(flt):
            time.sleep(120)
        """
    )
    (tmp_path / "blocker.py").write_text(blocker)
    daemon = LineProcess(
        [sys.executable, "-m", "fltemu", "serve", "--filter", "blocker", "--address", socket_path]
        + ["--shutdown-grace", "0"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
    )
    try:
        daemon.wait_for(lambda line: "listening on" in line, "the ready line")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=SHUTDOWN_SLACK + WATCHDOG_MARGIN + 10.0) == 1
        daemon.wait_exit()
    finally:
        daemon.stop(kill=True)
    assert "fltemu: shutdown did not end within 2.0 s of the signal" in daemon.output
    assert "in teardown" in daemon.output and "time.sleep(120)" in daemon.output
