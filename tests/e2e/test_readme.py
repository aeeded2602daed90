"""README.md's examples, run as written: the quickstart (daemon, scanner agent, files, trace,
unload) and the kernel-side and user-side examples of "Writing the kernel side" and "Writing
the user side". Only the socket and the watched folder are moved to temporary places."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import LineProcess

ROOT = Path(__file__).resolve().parent.parent.parent
README = (ROOT / "README.md").read_text()
WAIT = 30.0


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


class Process(LineProcess):
    """A README command's process, run from the repository's root by default."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        super().__init__(argv, env, cwd, wait=WAIT)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def venv(command: str) -> list[str]:
    """``.venv/bin/fltemu ...`` and ``.venv/bin/python ...`` as this test's interpreter."""
    argv = shlex.split(command)
    if argv[0] == ".venv/bin/fltemu":
        return [sys.executable, "-m", "fltemu", *argv[1:]]
    assert argv[0] == ".venv/bin/python", command
    return [sys.executable, *argv[1:]]


def test_the_quickstart_as_written(
    socket_path: str, tmp_path: Path, processes: list[Process]
) -> None:
    quickstart = section("Quickstart")
    env = {**os.environ, "FLTEMU_SOCKET": socket_path}  # the default socket, elsewhere
    scan = str(tmp_path / "scan")

    # 1. Install and start the daemon (the install is this test's own environment).
    first = blocks(quickstart, "sh")[0]
    serve = first.split(" && ")[-1].strip().replace("/tmp/scan", scan)
    os.mkdir(scan)
    daemon = Process(venv(serve), env)
    processes.append(daemon)
    ready = daemon.wait_for(lambda line: "listening" in line, "the ready line")
    described = re.search(r"It prints one line, `(.*?)`, once clients", quickstart, re.S)
    assert described is not None
    head, tail = " ".join(described.group(1).split()).split("/run/user/…/fltemu.sock")
    first_ports, last_ports = tail.split(", …, ")
    assert ready.startswith(head + socket_path + first_ports + ", ")
    assert ready.endswith(", " + last_ports)

    # 2. The example scanner agent, and a trace of the port in another shell.
    agent = Process(venv(blocks(quickstart, "sh")[1].strip()), env)
    processes.append(agent)
    agent.wait_for(lambda line: "connected to \\ScannerPort" in line, "the agent's connect line")
    trace_example = blocks(section("Control commands"), "console")[0]
    trace_command = trace_example.splitlines()[0].removeprefix("$ ")
    trace = Process(venv(trace_command), env)
    processes.append(trace)
    started = trace.wait_for(lambda line: "(Ctrl-C to stop)" in line, "the trace's first line")
    assert started.split("  ", 1)[1] == trace_example.splitlines()[1].split("  ", 1)[1]

    # 3. Write the two files.
    write = blocks(quickstart, "sh")[2].strip().replace("/tmp/scan", scan)
    subprocess.run(["bash", "-c", write], check=True, timeout=WAIT, stdout=subprocess.DEVNULL)
    verdicts = [
        agent.wait_for(lambda line: line.startswith("Scanner: message "), "a verdict")
        for _ in range(2)
    ]
    assert sorted(v.split("): ")[1] for v in verdicts) == [
        "scanned 15 bytes: safe",
        "scanned 15 bytes: unsafe",
    ]
    assert all(re.fullmatch(r"Scanner: message \d+ \(1048 bytes\): .*", v) for v in verdicts)
    assert "`Scanner: message 1 (1048 bytes): scanned 15 bytes: safe`" in " ".join(
        quickstart.split()
    )
    daemon.wait_for(lambda line: f"scanner: open {scan}/report.doc: UNSAFE" in line, "its log")

    # The trace shows report.doc's message as the README's example does.
    trace.wait_for(lambda line: "SafeToOpen=0" in line, "the unsafe reply")
    trace.wait_for(lambda line: "SafeToOpen=0" in line, "the unsafe message_done")
    # (Both files' messages may be in flight at once: pick report.doc's events.)
    seen = events(trace.lines)
    foul = [
        next(e for e in seen if " message " in e[0] and "some foul" in "\n".join(e)),
        next(e for e in seen if " reply " in e[0] and "SafeToOpen=0" in "\n".join(e)),
        next(e for e in seen if " message_done " in e[0] and "SafeToOpen=0" in "\n".join(e)),
    ]
    shown = events([line for line in trace_example.splitlines()[2:] if line != "    ..."])
    # The README cuts the last event short ("    ..."): compare what it shows.
    assert [shape(e)[: len(s)] for e, s in zip(foul, shown, strict=True)] == [
        shape(s) for s in shown
    ]

    # Unloading: every agent thread says the port is disconnected; the agent exits 0.
    prose = " ".join(quickstart.split())
    assert "`.venv/bin/fltemu unload scanner` unloads the filter" in prose
    unloaded = subprocess.run(venv(".venv/bin/fltemu unload scanner"), env=env, timeout=WAIT)
    assert unloaded.returncode == 0
    assert agent.wait_exit() == 0
    said = "Scanner: Port is disconnected, probably due to scanner filter unloading."
    assert f"prints `{said}`, and the agent exits 0" in prose
    threads = [line for line in agent.lines if line == said]
    assert threads and len(threads) == int(re.search(r"(\d+) threads", agent.output).group(1))  # type: ignore[union-attr]


def events(lines: list[str]) -> list[list[str]]:
    """Trace output cut into events: a line, then its indented lines."""
    grouped: list[list[str]] = []
    for line in lines:
        if line.startswith("    ") and grouped:
            grouped[-1].append(line)
        else:
            grouped.append([line])
    return grouped


def shape(lines: list[str]) -> list[str]:
    """Trace lines without what changes from run to run: times, pids, ids, latencies."""
    out = []
    for line in lines:
        line = re.sub(r"^\d\d:\d\d:\d\d\.\d{6}  ", "", line)
        line = re.sub(r"pid \d+ uid \d+", "pid P uid U", line)
        line = re.sub(r"id \d+", "id N", line)
        out.append(re.sub(r"after \d+(\.\d+)? (µs|ms|s)", "after T", line))
    return out


def test_the_kernel_side_and_user_side_examples_as_written(
    socket_path: str, tmp_path: Path, processes: list[Process]
) -> None:
    kernel = next(b for b in blocks(section("Writing the kernel side"), "python"))
    assert kernel.startswith("# myscanner.py\n")
    (tmp_path / "myscanner.py").write_text(kernel)
    user = blocks(section("Writing the user side"), "python")[0]
    (tmp_path / "agent.py").write_text(user)
    env = {**os.environ, "FLTEMU_SOCKET": socket_path}
    # `fltemu serve --filter mymodule` from the folder that holds it, as the README says.
    daemon = Process(venv(".venv/bin/fltemu serve --filter myscanner"), env, cwd=tmp_path)
    processes.append(daemon)
    daemon.wait_for(lambda line: "\\MyScannerPort" in line, "the ready line")
    agent = Process([sys.executable, "agent.py"], env, cwd=tmp_path)
    processes.append(agent)
    assert agent.wait_for(bool, "the agent's first line") == "b'pong'"  # FilterSendMessage
    connected = daemon.wait_for(lambda line: "agent connected" in line, "ConnectNotify's print")
    assert f"pid={agent.proc.pid}" in connected
    assert daemon.wait_for(lambda line: line in ("safe", "unsafe"), "a verdict") == "safe"


def test_install_commands_run_as_root_everywhere() -> None:
    # The tests section installs as root; the Windows-agent section must not differ.
    installs = [line for line in README.splitlines() if "apt-get install" in line]
    assert len(installs) >= 2
    assert not [line for line in installs if "sudo" in line]


def test_the_sample_bench_output_matches_its_command() -> None:
    text = section("Run your Windows agent")
    command = next(b for b in blocks(text, "sh") if "fltemu bench" in b).split()
    found = re.search(r"```\n(fltemu bench [^\n]*)\n", text)
    assert found, "no sample output"
    headline = found[1]
    concurrency = command[command.index("--concurrency") + 1]
    size = command[command.index("--size") + 1]
    reply = command[command.index("--reply-length") + 1]
    assert f"closed loop, {concurrency} in flight, {size}-byte messages, reply {reply} " in (
        headline
    ), headline
