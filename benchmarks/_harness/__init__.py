"""Shared machinery of the benchmark scripts: options, placement, processes, timing, output.

Every script measures a rate (requests or messages per second) over a fixed window after a
warm-up, repeats it with fresh server processes, and reports the median together with its
ratio to references measured in the same run (the C pair, the bare uvloop pair). On the
2-vCPU VMs this project runs on, absolute sequential rates are set by a ~20 µs vCPU wake-up
(docs/ipc-limits.md), so only such ratios carry over between runs.

The scripts ``import _harness as h`` and use the names below; each lives in the module of its
role:

* ``layout``: where the benchmarks' files are, the benchmark filter's port names;
* ``options``: the common options, ``Timing``, scenarios, payloads;
* ``machine``: CPU placement and /proc (memory, busy time);
* ``metadata``: the environment record (versions, machine, git state);
* ``processes``: server processes, the daemon under test, the C builds and the C client;
* ``stats``: a run's result, percentiles, medians and paired ratios;
* ``measure``: measurement windows, the thread and task drivers, the run matrix;
* ``report``: JSON or table output, the environment header, the noise row;
* ``script``: a script's preamble and end, written once (``measuring``);
* ``targets``: the speed targets run_all.py checks.

Not here: what is measured (the ``bench_*`` scripts, ``baseline``), the C code (``c/``).
"""

from __future__ import annotations

from .layout import (
    BENCH_DIR,
    BUILD_DIR,
    C_DIR,
    C_INCLUDE,
    CTL_PORT,
    ECHO_PORT,
    FILTER_MODULE,
    K2U_PORT,
)
from .machine import Placement, busy_cpu_s, own_cpu_s, pin_process, proc_status, read_file
from .measure import Impl, Window, drive_tasks, drive_threads, run_async, run_matrix
from .metadata import cc_version, environment, git_state
from .options import (
    DEFAULT_MEASURE_S,
    DEFAULT_REPEATS,
    DEFAULT_WARMUP_S,
    QUICK_MEASURE_S,
    QUICK_WARMUP_S,
    SCENARIOS,
    Timing,
    add_client_arg,
    add_loop_arg,
    add_payload_arg,
    add_scenario_args,
    base_parser,
    choices_list,
    csv_list,
    payload_bytes,
    scenario_configs,
)
from .processes import (
    STARTUP_TIMEOUT_S,
    CBuild,
    Server,
    build_c,
    daemon_argv,
    run_c_client,
    servers,
    short_tmpdir,
    start_c_server,
    start_daemon,
    start_server,
)
from .report import (
    NoiseMeter,
    Output,
    Table,
    finish,
    format_rate,
    format_table,
    print_env,
    render_tables,
    versions_and_exit,
)
from .script import ScriptRun, measuring
from .stats import RunResult, paired_ratio, percentiles, summarize
from .targets import TARGETS

__all__ = [
    "BENCH_DIR",
    "BUILD_DIR",
    "CTL_PORT",
    "C_DIR",
    "C_INCLUDE",
    "DEFAULT_MEASURE_S",
    "DEFAULT_REPEATS",
    "DEFAULT_WARMUP_S",
    "ECHO_PORT",
    "FILTER_MODULE",
    "K2U_PORT",
    "QUICK_MEASURE_S",
    "QUICK_WARMUP_S",
    "SCENARIOS",
    "STARTUP_TIMEOUT_S",
    "TARGETS",
    "CBuild",
    "Impl",
    "NoiseMeter",
    "Output",
    "Placement",
    "RunResult",
    "ScriptRun",
    "Server",
    "Table",
    "Timing",
    "Window",
    "add_client_arg",
    "add_loop_arg",
    "add_payload_arg",
    "add_scenario_args",
    "base_parser",
    "build_c",
    "busy_cpu_s",
    "cc_version",
    "choices_list",
    "csv_list",
    "daemon_argv",
    "drive_tasks",
    "drive_threads",
    "environment",
    "finish",
    "format_rate",
    "format_table",
    "git_state",
    "measuring",
    "own_cpu_s",
    "paired_ratio",
    "payload_bytes",
    "percentiles",
    "pin_process",
    "print_env",
    "proc_status",
    "read_file",
    "render_tables",
    "run_async",
    "run_c_client",
    "run_matrix",
    "scenario_configs",
    "servers",
    "short_tmpdir",
    "start_c_server",
    "start_daemon",
    "start_server",
    "summarize",
    "versions_and_exit",
]
