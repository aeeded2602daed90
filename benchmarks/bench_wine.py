"""The Windows side under Wine: port calls of a Windows program, next to Wine's own round trip
and to the Python client, all in the same run.

Measured, each repeat with a fresh daemon (``_bench_filter``), nothing pinned (a call crosses
the agent, wineserver, ``winedevice.exe`` and the daemon):

* ``nop``: ``benchagent.exe nop``, an IOCTL on fltemu's device that the driver answers at
  once (an unconnected handle): the agent -> wineserver -> ``winedevice.exe`` -> agent round
  trip, the floor of every call through Wine;
* ``send``: sequential FilterSendMessage to ``\\BenchEcho``, by ``benchagent.exe send`` under
  Wine and by the Python sync client ``fltuser`` (the same daemon, the same port); ``send wine
  unchecked`` is the Windows side with ``FLTEMU_UNCHECKED_HANDLES=1`` (no handle check, so no
  wineserver request per call);
* ``k2u``: kernel->user, ``fltemu bench`` sending with N in flight to an agent that keeps N
  overlapped gets pending on a completion port and replies to each message with T worker
  threads (``benchagent.exe get``, one row per T in ``--threads``), and to the Python async
  client doing the same with N tasks (``_k2u_agent.py``).

``iocp ping-pong``: two threads of one program bounce a packet between two completion ports
(no fltemu): Wine's own floor for a message completed on a port (a round trip is two
completions).

Rows carry the median rate and ``ratio_nop`` (Wine send over the nop rate: how close a call
gets to Wine's own limit; for ``k2u`` the limit is half the nop rate, a reply and a re-armed
get per message) and ``ratio_python`` (Windows side over the Python client).
Needs Wine, mingw-w64 and make (the script builds the agents in ``_build/wine``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Final

import _harness as h

import fltuser
from fltemu.wine import WineBuild, WinePrefix, agent_argv, agent_environment, build_windows_side

K2U_AGENT: Final = h.BENCH_DIR / "_k2u_agent.py"


def wine_rate(
    build: WineBuild,
    prefix: WinePrefix,
    address: str,
    *args: str,
    extra_env: dict[str, str] | None = None,
) -> float:
    """Run ``benchagent.exe ARGS`` and return the rate it reports."""
    env = agent_environment(prefix, address)
    env.update(extra_env or {})
    done = subprocess.run(
        agent_argv(str(build.agent("benchagent")), args),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("rate ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchagent {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    _, count, seconds = lines[-1].split()
    return int(count) / float(seconds)


def python_send_rate(address: str, count: int, payload: bytes) -> float:
    with fltuser.connect(h.ECHO_PORT, address=address) as port:
        for _ in range(min(count // 10, 200)):  # warm-up
            port.send(payload, len(payload))
        start = time.perf_counter()
        for _ in range(count):
            port.send(payload, len(payload))
        return count / (time.perf_counter() - start)


def bench_rate(agent: list[str], env: dict[str, str], inflight: int, count: int) -> float:
    """``fltemu bench`` with ``inflight`` messages in flight against ``agent``."""
    done = subprocess.run(
        [
            sys.executable, "-m", "fltemu", "bench", "\\WineBench", "--size", "64",
            "--reply-length", "4", "--count", str(count), "--concurrency", str(inflight),
            "--timeout", "30", "--json", "--no-progress", "--no-limit-check", "--", *agent,
        ],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"fltemu bench failed:\n{done.stdout}{done.stderr}")
    report = json.loads(done.stdout)
    if report["completed"] != count:
        raise RuntimeError(f"fltemu bench answered {report['completed']} of {count}")
    return float(report["throughput"])


def main() -> int:
    parser = h.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="calls per run (default 3000)")
    parser.add_argument(
        "--inflight", type=int, default=16, help="kernel->user messages in flight (default 16)"
    )
    parser.add_argument(
        "--threads",
        default="1,4,16",
        help="worker threads of the Windows kernel->user agent, one row each (default 1,4,16)",
    )
    parser.add_argument(
        "--prefix", help="Wine prefix (default: a fresh one under _build/wine, reused)"
    )
    args = parser.parse_args()
    # Not pinned: a call crosses four processes (agent, wineserver, winedevice.exe, daemon),
    # which the scheduler places better than a split of two CPUs would.
    placement = h.Placement(False, None, None, "not pinned: Wine's processes and the daemon")
    env_row = h.environment(placement)
    if args.versions:
        print(json.dumps(env_row))
        return 0
    count = 200 if args.quick else args.count
    thread_counts = [int(t) for t in args.threads.split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    build = build_windows_side(build_dir=h.BUILD_DIR / "wine", targets=["agents"])
    prefix = WinePrefix(args.prefix or h.BUILD_DIR / "wine" / "prefix")
    prefix.ensure(build)
    # A session of its own lasts the whole run; someone else's (--prefix) is left running.
    own_session = args.prefix is None
    prefix.start_session(persistent=own_session)
    payload = h.payload_bytes(64, args.seed)
    runs: dict[str, list[float]] = {}
    try:
        for _ in range(repeats):
            server = h.start_daemon("uvloop", placement)
            try:
                runs.setdefault("nop", []).append(
                    wine_rate(build, prefix, server.address, "nop", str(count))
                )
                runs.setdefault("iocp ping-pong", []).append(
                    wine_rate(build, prefix, server.address, "iocp", str(count))
                )
                runs.setdefault("send wine", []).append(
                    wine_rate(build, prefix, server.address, "send", h.ECHO_PORT, str(count), "64")
                )
                runs.setdefault("send wine unchecked", []).append(
                    wine_rate(
                        build, prefix, server.address, "send", h.ECHO_PORT, str(count), "64",
                        extra_env={"FLTEMU_UNCHECKED_HANDLES": "1"},
                    )
                )  # fmt: skip
                runs.setdefault("send python", []).append(
                    python_send_rate(server.address, count, payload)
                )
            finally:
                server.stop()
            env = dict(os.environ, WINEPREFIX=str(prefix.path))
            for threads in thread_counts:
                wine_agent = [
                    sys.executable, "-m", "fltemu", "wine", "--prefix", str(prefix.path),
                    "--build-dir", str(build.directory), "--",
                    str(build.agent("benchagent")), "get", "\\WineBench", str(count),
                    str(args.inflight), str(threads),
                ]  # fmt: skip
                runs.setdefault(f"k2u wine {threads}T", []).append(
                    bench_rate(wine_agent, env, args.inflight, count)
                )
            python_agent = [sys.executable, str(K2U_AGENT), "\\WineBench", str(args.inflight)]
            runs.setdefault("k2u python", []).append(
                bench_rate(python_agent, env, args.inflight, count)
            )
    finally:
        if own_session:
            subprocess.run(["wineserver", "-k"], env=prefix.environment(), check=False)
    median = {name: statistics.median(values) for name, values in runs.items()}
    rows: list[dict[str, Any]] = []
    for name, value in median.items():
        values = runs[name]
        row: dict[str, Any] = {
            "bench": "wine",
            "impl": name,
            "msgs_per_s": round(value, 1),
            "runs_msgs_per_s": [round(v, 1) for v in values],
            "spread_pct": round(50 * (max(values) - min(values)) / value, 1),
            "repeats": repeats,
        }
        if name.startswith("send wine"):
            row["ratio_nop"] = round(value / median["nop"], 3)
            row["ratio_python"] = round(value / median["send python"], 3)
        if name.startswith("k2u wine"):
            row["ratio_nop"] = round(value / (median["nop"] / 2), 3)
            row["ratio_python"] = round(value / median["k2u python"], 3)
        rows.append(row)
    if args.json:
        print(json.dumps(env_row))
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"Windows side under Wine, {count} calls per run, median of {repeats}")
        print(f"{'what':<22}{'msgs/s':>12}{'±%':>7}{'x limit':>10}{'x python':>10}")
        for row in rows:
            print(
                f"{row['impl']:<22}{row['msgs_per_s']:>12,.0f}{row['spread_pct']:>7}"
                f"{row.get('ratio_nop', ''):>10}{row.get('ratio_python', ''):>10}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
