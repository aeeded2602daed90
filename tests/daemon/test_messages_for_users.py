"""What the daemon and the control commands print, checked without a daemon: the ``ports``
table and the errors for a socket the daemon cannot create."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from fltemu.cli.ctl import format_ports
from fltemu.daemon.server import DaemonAddressError, explain_address_error
from fltemu.wire import ConnectionInfo, FilterInfo, PortInfo


def _connection(id: int, pid: int) -> ConnectionInfo:
    return ConnectionInfo(
        id=id,
        pid=pid,
        uid=0,
        gid=0,
        state="connected",
        pending_getters=2,
        blocked_senders=0,
        awaiting_reply=1,
        sends_from_user=5,
        messages_delivered=1234,
        messages_timed_out=0,
    )


def test_ports_table_columns_line_up() -> None:
    filters = (
        FilterInfo(
            "avscan",
            "registered",
            (
                PortInfo("\\MicrosoftAvSampleFilterScanPort", "open", 1, 1, (_connection(12, 7),)),
                PortInfo("\\Q", "open", 1, 0),
            ),
        ),
        FilterInfo(
            "echo",
            "unloading",
            (PortInfo("\\EchoPort", "closed", 64, 1, (_connection(3, 123456),)),),
        ),
        FilterInfo("bare", "registered"),
    )
    text = format_ports(filters)
    ports, connections = text.split("\n\n")
    assert ports.splitlines() == [
        "FILTER            PORT                              STATE   CONNECTIONS",
        "avscan            \\MicrosoftAvSampleFilterScanPort  open    1/1",
        "avscan            \\Q                                open    0/1",
        "echo (unloading)  \\EchoPort                         closed  1/64",
        "bare              -                                 -       -",
    ]
    lines = connections.splitlines()
    # Every column starts where its header starts.
    for column in ("PORT", "PID", "UID", "STATE", "GETS", "DELIVERED", "USER_SENDS"):
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines)
    assert lines[1].split()[:5] == [
        "#12",
        "\\MicrosoftAvSampleFilterScanPort",
        "7",
        "0",
        "connected",
    ]
    assert lines[1].split()[5:] == ["2", "0", "1", "1234", "0", "5"]


def test_permission_denied_names_the_socket_the_folder_and_the_uid(tmp_path: Path) -> None:
    folder = tmp_path / "mounted"
    folder.mkdir(mode=0o755)
    path = str(folder / "fltemu.sock")
    error = explain_address_error(path, PermissionError(errno.EACCES, "Permission denied"))
    assert isinstance(error, DaemonAddressError) and error.errno == errno.EACCES
    text = str(error)
    assert text.startswith(f"cannot create the socket {path}: Permission denied")
    assert f"runs as uid {os.geteuid()}, gid {os.getegid()}" in text
    assert f"the folder {folder} belongs to uid {os.stat(folder).st_uid}" in text
    assert "mode 755" in text
    assert f"chown {os.geteuid()} {folder}" in text and "--address" in text
    assert "[Errno" not in text


def test_missing_folder_is_named(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere" / "fltemu.sock")
    error = explain_address_error(path, FileNotFoundError(errno.ENOENT, "No such file"))
    assert str(error) == (
        f"cannot create the socket {path}: the folder {tmp_path / 'nowhere'} does not exist"
    )
