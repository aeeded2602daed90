"""Wineserver requests per call of the Windows side, counted with Wine's own trace.

How it counts: with ``WINEDEBUG=+server`` the wineserver writes one line per request it
receives, from every process of the Wine session (the agent, ``winedevice.exe`` with
fltemu.sys, Wine's own services), to the standard error of the process that started it. So
each run starts a fresh session: the session is ended (``wineserver -k``), and the agent,
the first Wine process, starts it with the trace on and its standard error going to a file.
Each operation runs with N and with 2N calls, and the difference of the two counts over N is
the count per call: starting the session and the agent, connecting and ending cancel out.
``nop`` is an IOCTL that fltemu.sys answers at once; ``send`` sequential FilterSendMessage
(``send unchecked`` with ``FLTEMU_UNCHECKED_HANDLES=1``); ``k2u`` one kernel->user message
(``fltemu bench`` sends 16 at a time; ``benchagent.exe get`` keeps 16 overlapped gets on a
completion port and one worker thread replies and re-arms).

``--windows-src DIR`` counts another revision's Windows side (a ``git worktree`` of it, say)
against this daemon. Needs Wine and mingw-w64.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import _harness as h

from fltemu.wine import WinePrefix, build_windows_side

#: A request line of the trace, "0044: get_key_value( hkey=... )"; its reply reads
#: "0044: get_key_value() = 0 { ... }".
_REQUEST = re.compile(r"^[0-9a-f]{4}: [a-z_0-9]+\( ", re.MULTILINE)


def count_requests(text: str) -> int:
    """The requests in a ``WINEDEBUG=+server`` trace."""
    return len(_REQUEST.findall(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="N (default 1000)")
    parser.add_argument("--windows-src", help="the client/windows folder to build and count")
    parser.add_argument("--json", action="store_true", help="one JSON object per operation")
    args = parser.parse_args()
    if args.windows_src:
        os.environ["FLTEMU_WINDOWS_SRC"] = args.windows_src
    work = Path(tempfile.mkdtemp(prefix="fltemu-requests-"))
    build = build_windows_side(build_dir=work / "build", targets=["agents"])
    prefix = WinePrefix(work / "prefix")
    prefix.ensure(build)
    server = h.start_daemon("uvloop", h.Placement(False, None, None, "not pinned"))
    env = prefix.environment()
    env["FLTEMU_SOCKET"] = server.address
    env["WINEDEBUG"] = "+server"
    agent = shlex.quote(str(build.agent("benchagent")))
    trace = work / "trace.log"

    def count(shell_command: str, extra: dict[str, str] | None = None) -> int:
        """Requests of a fresh session whose first process is ``shell_command``'s agent."""
        subprocess.run(["wineserver", "-k"], env=env, check=False, capture_output=True)
        subprocess.run(["wineserver", "-w"], env=env, check=False, capture_output=True)
        done = subprocess.run(
            ["sh", "-c", shell_command], env={**env, **(extra or {})}, capture_output=True,
            text=True, errors="replace", timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{shell_command} failed:\n{done.stdout}{done.stderr}")
        return count_requests(trace.read_text(errors="replace"))

    def k2u(n: int) -> str:
        agent_command = f"exec wine {agent} get '\\WineBench' {n} 16 2>{trace}"
        return shlex.join(
            [
                sys.executable, "-m", "fltemu", "bench", "\\WineBench", "--size", "64",
                "--reply-length", "4", "--count", str(n), "--concurrency", "16",
                "--timeout", "60", "--no-progress", "--no-limit-check", "--",
                "sh", "-c", agent_command,
            ]
        )  # fmt: skip

    operations = {
        "nop": (lambda n: f"exec wine {agent} nop {n} 2>{trace}", None),
        "send": (lambda n: f"exec wine {agent} send '\\BenchEcho' {n} 64 2>{trace}", None),
        "send unchecked": (
            lambda n: f"exec wine {agent} send '\\BenchEcho' {n} 64 2>{trace}",
            {"FLTEMU_UNCHECKED_HANDLES": "1"},
        ),
        "k2u": (k2u, None),
    }
    rows = []
    try:
        for name, (command, extra) in operations.items():
            once = count(command(args.calls), extra)
            twice = count(command(2 * args.calls), extra)
            rows.append({"operation": name, "requests_per_call": (twice - once) / args.calls})
    finally:
        server.stop()
        subprocess.run(["wineserver", "-k"], env=env, check=False, capture_output=True)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['operation']:<16}{row['requests_per_call']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
