"""Test helpers: a fake kernel channel, two wire connections back to back, frame builders,
and a subprocess whose output is watched line by line."""

from __future__ import annotations

import asyncio
import os
import queue
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

import fltuser
from fltemu.status import NtStatus
from fltemu.wire import NEED_DATA, Role, WireConnection


@dataclass
class GetCompletion:
    """One getter completion as the kernel reported it."""

    token: object
    status: NtStatus
    message_id: int = 0
    reply_length: int = 0
    data: bytes = b""
    required_size: int = 0


@dataclass
class FakeChannel:
    """A ``Channel`` that records completions instead of writing to a socket."""

    completions: list[GetCompletion] = field(default_factory=list)
    #: How many times the kernel said it ended the connection.
    disconnects: int = 0

    def complete_get(
        self,
        token: object,
        status: NtStatus,
        message_id: int = 0,
        reply_length: int = 0,
        data: bytes = b"",
        required_size: int = 0,
    ) -> None:
        self.completions.append(
            GetCompletion(token, NtStatus(status), message_id, reply_length, data, required_size)
        )

    def kernel_disconnected(self) -> None:
        self.disconnects += 1

    def pop(self) -> GetCompletion:
        return self.completions.pop(0)


class WirePair:
    """A USER and a KERNEL WireConnection joined back to back, in memory."""

    def __init__(self) -> None:
        self.user = WireConnection(Role.USER)
        self.kernel = WireConnection(Role.KERNEL)

    def user_sends(self, message: object) -> list[object]:
        self.kernel.receive_data(self.user.send(message))
        return drain(self.kernel)

    def kernel_sends(self, message: object) -> list[object]:
        self.user.receive_data(self.kernel.send(message))
        return drain(self.user)


def drain(conn: WireConnection) -> list[object]:
    """Every event ``conn`` has ready."""
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def frame(payload: bytes) -> bytes:
    """A raw frame around arbitrary payload bytes."""
    return struct.pack("<I", len(payload)) + payload


def raw_frame(obj: object) -> bytes:
    """A frame holding ``obj`` encoded as msgpack with no schema checks (for bad input)."""
    return frame(msgspec.msgpack.encode(obj))


async def until(predicate: object, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` is true (polling the loop), or fail the test."""
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


class LineProcess:
    """A subprocess whose output lines are read on a thread, as a user watches a terminal.

    Every wait is bounded by ``wait`` seconds; a failed wait shows the output so far.
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        wait: float = 20.0,
    ) -> None:
        # Line by line, as on a terminal (a pipe would buffer the examples' print()s).
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        self.wait = wait
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], what: str) -> str:
        """The first line (from now on) that satisfies ``predicate``."""
        deadline = time.monotonic() + self.wait
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"no {what} within {self.wait} s; output:\n{self.output}"
                ) from None
            if line is None:
                self._queue.put(None)  # keep the end visible to later waits
                raise AssertionError(f"it ended before {what}; output:\n{self.output}")
            self.lines.append(line)
            if predicate(line):
                return line

    def wait_exit(self) -> int:
        """The exit status, once the whole output has been read."""
        code = self.proc.wait(timeout=self.wait)
        while (line := self._queue.get(timeout=self.wait)) is not None:
            self.lines.append(line)
        self._queue.put(None)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) if it still runs; wait for it and its output's end."""
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
        self.proc.wait(timeout=self.wait)
        self._reader.join(timeout=self.wait)  # it closes the pipe at end of file


def connect_as_nobody(port_name: str, address: str) -> str:
    """Fork a child that drops to uid/gid 65534 and connects; return what it reports."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no asyncio, just the blocking client
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            try:
                fltuser.connect(port_name, address=address).close()
                report = "connected"
            except fltuser.HResultError as exc:
                report = f"{int(exc.hresult):#x} {exc.ntstatus!r} {exc}"
            os.write(write_fd, report.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(pid, 0)
    return report
