"""``fltemu ports / send / disconnect / unload`` as a user runs them, against a live daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import fltuser

from .test_cli import Served, start


def fltemu(*args: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fltemu", *args, "--address", address],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def served(socket_path: str) -> Iterator[Served]:
    s = start(["--address", socket_path, "--filter", "echo"])
    yield s
    if s.proc.poll() is None:
        s.stop()


def test_ports_table_and_json(served: Served, socket_path: str) -> None:
    with fltuser.connect("\\EchoPort", address=socket_path):
        table = fltemu("ports", address=socket_path)
        assert table.returncode == 0, table.stderr
        header, row, blank, connection_header, connection = table.stdout.splitlines()
        assert header.split() == ["FILTER", "PORT", "STATE", "CONNECTIONS"]
        assert row.split() == ["echo", "\\EchoPort", "open", "1/64"]
        assert connection_header.split()[:5] == ["ID", "PORT", "PID", "UID", "STATE"]
        assert connection.split()[1:5] == [
            "\\EchoPort",
            str(os.getpid()),
            str(os.getuid()),
            "connected",
        ]
        as_json = fltemu("ports", "--json", address=socket_path)
        document = json.loads(as_json.stdout)
        assert document[0]["ports"][0]["connections"][0]["uid"] is not None


def test_send_hex_with_reply(served: Served, socket_path: str) -> None:
    with fltuser.connect("\\EchoPort", address=socket_path) as port:
        seen: list[fltuser.Message] = []

        def agent() -> None:
            msg = port.get_message(64, timeout=30)
            seen.append(msg)
            port.reply(msg.message_id, b"\x01")

        thread = threading.Thread(target=agent)
        thread.start()
        proc = fltemu(
            "send", "\\EchoPort", "--hex", "0400 0000", "--reply-length", "1", address=socket_path
        )
        thread.join(30)
        assert proc.returncode == 0, proc.stderr
        assert "STATUS_SUCCESS" in proc.stdout and "reply: 1 bytes: 01" in proc.stdout
        assert seen[0].data == b"\x04\x00\x00\x00" and seen[0].reply_length == 17


def test_send_file_and_json(served: Served, socket_path: str, tmp_path: Path) -> None:
    payload = tmp_path / "msg.bin"
    payload.write_bytes(b"\x00\xffdata")
    with fltuser.connect("\\EchoPort", address=socket_path) as port:
        got: list[bytes] = []
        thread = threading.Thread(target=lambda: got.append(port.get_message(64, timeout=30).data))
        thread.start()
        proc = fltemu("send", "\\EchoPort", "--file", str(payload), "--json", address=socket_path)
        thread.join(30)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["status_name"] == "STATUS_SUCCESS"
        assert got == [b"\x00\xffdata"]


def test_send_timeout_is_reported_and_fails(served: Served, socket_path: str) -> None:
    with fltuser.connect("\\EchoPort", address=socket_path):
        proc = fltemu("send", "\\EchoPort", "--data", "x", "--timeout", "0", address=socket_path)
        assert proc.returncode == 1
        assert "STATUS_TIMEOUT" in proc.stdout


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["send", "\\Nope", "--data", "x"], 1, "no port named '\\Nope' (ports: \\EchoPort)"),
        (["send", "\\EchoPort", "--data", "x"], 1, "no connected client"),
        (["send", "\\EchoPort", "--file", "/nonexistent/file"], 2, "No such file"),
        (["send", "\\EchoPort", "--hex", "zz"], 2, "--hex"),
        (["send", "\\EchoPort", "--hex", "zz"], 2, "usage: fltemu send"),
        (["send", "\\EchoPort", "--file", "/nonexistent"], 2, "usage: fltemu send"),
        (["disconnect", "\\Nope"], 1, "no port named '\\Nope' (ports: \\EchoPort)"),
        (["disconnect", "\\EchoPort", "42"], 1, "no connection #42"),
        (["unload", "nosuch"], 1, "no filter named 'nosuch' (loaded: echo)"),
        (
            ["send", "EchoPort", "--data", "x"],
            1,
            "no port named 'EchoPort' (ports: \\EchoPort); did you mean '\\EchoPort'? "
            "(quote the backslash in your shell)",
        ),
        (
            ["trace", "EchoPort"],
            1,
            "bad port name 'EchoPort': a port name starts with a backslash: did you mean "
            "'\\EchoPort'? (quote the backslash in your shell)",
        ),
    ],
)
def test_mistakes_say_what_is_wrong(
    served: Served, socket_path: str, args: list[str], code: int, text: str
) -> None:
    proc = fltemu(*args, address=socket_path)
    assert proc.returncode == code
    assert text in proc.stdout + proc.stderr
    assert "\\\\" not in proc.stdout + proc.stderr  # names as written, not repr()'d


def test_disconnect_without_connections_succeeds(served: Served, socket_path: str) -> None:
    proc = fltemu("disconnect", "\\EchoPort", address=socket_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "'\\EchoPort' has no connection to disconnect\n"


def test_ports_stops_listing_a_connection_after_disconnect(
    served: Served, socket_path: str
) -> None:
    with fltuser.connect("\\EchoPort", address=socket_path):
        assert "connected" in fltemu("ports", address=socket_path).stdout
        assert fltemu("disconnect", "\\EchoPort", address=socket_path).returncode == 0
        table = fltemu("ports", address=socket_path).stdout  # the handle is still open
        assert table.splitlines() == [
            "FILTER  PORT       STATE  CONNECTIONS",
            "echo    \\EchoPort  open   0/64",
        ]


def test_disconnect_and_unload(served: Served, socket_path: str) -> None:
    port = fltuser.connect("\\EchoPort", address=socket_path)
    proc = fltemu("disconnect", "\\EchoPort", address=socket_path)
    assert proc.returncode == 0 and "disconnected 1 connection" in proc.stdout
    with pytest.raises(fltuser.HResultError) as exc:
        port.send(b"x", 1)
    assert exc.value.hresult == 0x80070006
    port.close()
    proc = fltemu("unload", "echo", address=socket_path)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(fltuser.HResultError) as exc:
        fltuser.connect("\\EchoPort", address=socket_path)
    assert exc.value.hresult == 0x80070002


def test_daemon_not_running(socket_path: str) -> None:
    proc = fltemu("ports", address=socket_path)
    assert proc.returncode == 1
    assert "no fltemu daemon is listening" in proc.stderr


@pytest.mark.parametrize("command", ["ports", "send", "disconnect", "unload"])
def test_every_command_has_help_with_examples(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fltemu", command, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "root and the daemon's own user" in proc.stdout


def test_unload_runs_the_module_teardown_first(socket_path: str, tmp_path: Path) -> None:
    # `fltemu unload` is fltmc unload: FilterUnloadCallback (the module's teardown), then
    # FltUnregisterFilter, while the daemon keeps running.
    import os
    import textwrap

    from .test_cli import start

    marker = tmp_path / "teardown.txt"
    (tmp_path / "tdfilter.py").write_text(
        textwrap.dedent(
            f"""
            async def setup(flt):
                await flt.create_communication_port(
                    "\\\\Td",
                    connect_notify=lambda cp, cookie, ctx: 0,
                    disconnect_notify=lambda cookie: None,
                    max_connections=1,
                )

            async def teardown(flt):
                ports = [p.name for p in flt.server_ports]
                open({str(marker)!r}, "a").write(f"teardown with ports open: {{ports}}\\n")
            """
        )
    )
    s = start(
        ["--address", socket_path, "--filter", "tdfilter"],
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    try:
        proc = fltemu("unload", "tdfilter", address=socket_path)
        assert proc.returncode == 0, proc.stderr
        assert marker.read_text() == "teardown with ports open: ['\\\\Td']\n"
    finally:
        assert s.stop()[0] == 0
    assert marker.read_text().count("teardown") == 1  # not run again at shutdown


def test_trace_of_an_open_connection_starts(served: Served, socket_path: str) -> None:
    with fltuser.connect("\\EchoPort", address=socket_path) as port:
        ports = json.loads(fltemu("ports", "--json", address=socket_path).stdout)
        connection = ports[0]["ports"][0]["connections"][0]["id"]
        command = [sys.executable, "-m", "fltemu", "trace", "\\EchoPort", "--connection"]
        command += [str(connection), "--json", "--count", "1", "--address", socket_path]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert '"kind":"start"' in proc.stdout.readline()
        port.send(b"x", 1)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and '"kind":"send"' in out


def test_send_to_a_client_that_goes_away_says_so(served: Served, socket_path: str) -> None:
    port = fltuser.connect("\\EchoPort", address=socket_path)

    def agent() -> None:
        port.get_message(4096, timeout=30)
        port.close()  # gone without replying

    thread = threading.Thread(target=agent)
    thread.start()
    proc = fltemu("send", "\\EchoPort", "--data", "x", "--reply-length", "1", address=socket_path)
    thread.join(30)
    assert proc.returncode == 1
    assert "STATUS_PORT_DISCONNECTED" in proc.stdout
    assert f"(pid {os.getpid()}) disconnected before answering" in proc.stdout


@pytest.mark.parametrize(
    ("args", "note"),
    [
        (["\\Nope"], "no port named '\\Nope' (ports: \\EchoPort): waiting for one"),
        (
            ["--connection", "99"],
            "the daemon has no connection #99 now (connected: none; 'fltemu ports' lists them)",
        ),
        (["\\EchoPort", "--connection", "99"], "port '\\EchoPort' has no connection #99 now"),
    ],
)
def test_trace_of_what_is_not_there_says_so_at_once(
    served: Served, socket_path: str, args: list[str], note: str
) -> None:
    command = [sys.executable, "-m", "fltemu", "trace", *args, "--address", socket_path]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert note in first and first.rstrip().endswith("(Ctrl-C to stop)"), first
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
