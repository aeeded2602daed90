"""``fltemu trace`` as a user runs it, against ``fltemu serve`` with the built-in samples: the
lines it prints for a scripted exchange, with the scanner's messages decoded, and ``--json``."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

import fltuser

from .test_cli import Served, start

STAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d{6}  ", re.M)


@pytest.fixture
def served(socket_path: str) -> Iterator[Served]:
    s = start(["--address", socket_path, "--filter", "scanner", "--filter", "echo"])
    yield s
    if s.proc.poll() is None:
        s.stop()


def trace(socket_path: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fltemu", "trace", "--address", socket_path, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the trace is on
    assert "(Ctrl-C to stop)" in first or '"kind":"start"' in first, first
    return proc


def scanner_exchange(socket_path: str) -> None:
    """An agent that finds a file foul, and a kernel message about that file."""
    with fltuser.connect("\\ScannerPort", address=socket_path) as port:

        def agent() -> None:
            msg = port.get_message(1048, timeout=30)
            port.reply(msg.message_id, b"\x00")

        thread = threading.Thread(target=agent)
        thread.start()
        message = struct.pack("<II", 15, 0) + b"some foul text\n"
        sent = subprocess.run(
            [sys.executable, "-m", "fltemu", "send", "\\ScannerPort", "--hex", message.hex()]
            + ["--reply-length", "1", "--timeout", "30", "--address", socket_path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        thread.join(30)


def test_trace_prints_one_line_per_event_with_previews_and_decoded_fields(
    served: Served, socket_path: str
) -> None:
    proc = trace(socket_path, "\\ScannerPort", "--count", "6")
    scanner_exchange(socket_path)
    with fltuser.connect("\\EchoPort", address=socket_path) as echo:  # another port: not shown
        echo.send(b"x", 1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    pid, uid = os.getpid(), os.getuid()
    who = f"\\ScannerPort  #1  pid {pid} uid {uid}"
    lines = [re.sub(r"after \d+(\.\d+)? (µs|ms|s)$", "after T", line) for line in out.splitlines()]
    assert [STAMP.sub("", line) for line in lines] == [
        f"{who}  connect       FilterConnectCommunicationPort: STATUS_SUCCESS, context 0 bytes",
        f"{who}  get           FilterGetMessage with a 1048-byte buffer",
        f"{who}  message       FltSendMessage id 1 23 bytes, reply up to 1 byte, timeout 30 s",
        "    SCANNER_NOTIFICATION BytesToScan=15 Contents='some foul text\\n'",
        "    0000  0f 00 00 00 00 00 00 00 73 6f 6d 65 20 66 6f 75  |........some fou|",
        "    0010  6c 20 74 65 78 74 0a                             |l text.|",
        f"{who}  reply         FilterReplyMessage id 1, 1 byte, status STATUS_SUCCESS: "
        "returned STATUS_SUCCESS",
        "    SCANNER_REPLY SafeToOpen=0 (unsafe)",
        "    0000  00                                               |.|",
        f"{who}  message_done  FltSendMessage id 1 returned STATUS_SUCCESS, reply 1 byte after T",
        "    SCANNER_REPLY SafeToOpen=0 (unsafe)",
        "    0000  00                                               |.|",
        f"{who}  disconnect    disconnected: the user closed its handle (CloseHandle)",
    ]


def test_trace_json_lines_for_tools(served: Served, socket_path: str) -> None:
    proc = trace(socket_path, "--json", "--type", "message,message_done", "--count", "2")
    scanner_exchange(socket_path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    message, done = (json.loads(line) for line in out.splitlines())
    assert (message["kind"], message["port"], message["size"], message["buffer"]) == (
        "message",
        "\\ScannerPort",
        23,
        1,
    )
    assert message["data"].startswith("0f000000") and message["status_name"] is None
    assert message["decoded"].startswith("SCANNER_NOTIFICATION BytesToScan=15")
    assert (done["kind"], done["message_id"], done["status_name"], done["data"]) == (
        "message_done",
        1,
        "STATUS_SUCCESS",
        "00",
    )
    assert done["latency"] > 0


def test_trace_needs_a_daemon_and_known_kinds(socket_path: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fltemu", "trace", "--address", socket_path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and "no fltemu daemon is listening" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "fltemu", "trace", "--type", "nonsense"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "usage: fltemu trace" in proc.stderr and "unknown event kind nonsense" in proc.stderr
