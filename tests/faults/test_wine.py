"""A fault schedule against a Windows agent under Wine: scanagent.exe (scanUser.c's shape:
an I/O completion port, overlapped FilterGetMessage calls) started by ``fltemu wine``.

Needs Wine and mingw-w64, like the tests in tests/wine (whose fixtures build the Windows
side and the prefix): skipped without them on a developer's machine, failed in CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fltemu.wine import WineBuild, WinePrefix

from ..wine.conftest import wine_build, wine_prefix  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]

COPES = """
format = 1
name = "windows-agent"
filter = "scanner"
seed = 2

[thresholds]
reconnect_within = 10.0
answer_within = 20.0
hang_after = 5.0

[[step]]
fault = "files"
files = 4

[[step]]
fault = "short_timeout"
count = 3

[[step]]
fault = "burst"
count = 30

[[step]]
fault = "malformed"
kind = "short"

[[step]]
fault = "files"
files = 2
"""

#: scanagent.exe exits with status 3 on a BytesToScan over its buffer (the C sample asserts).
OUT_OF_RANGE = COPES.replace('kind = "short"', 'kind = "out_of_range"')


def run_against_scanagent(
    text: str, tmp_path: Path, build: WineBuild, prefix: WinePrefix
) -> tuple[int, dict[str, object]]:
    schedule = tmp_path / "schedule.toml"
    schedule.write_text(text)
    if not prefix.path.exists():  # pragma: no cover - the fixture made it
        raise AssertionError("no Wine prefix")
    done = subprocess.run(
        [
            sys.executable, "-m", "fltemu", "faults", "run", str(schedule), "--quiet",
            "--json", "-", "--start-timeout", "120", "--",
            sys.executable, "-m", "fltemu", "wine", "--prefix", str(prefix.path),
            "--build-dir", str(build.directory), "--", str(build.agent("scanagent")),
        ],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_scanagent_exe_copes_with_timeouts_bursts_and_a_short_message(
    wine_build: WineBuild,  # noqa: F811
    wine_prefix: WinePrefix,  # noqa: F811
    tmp_path: Path,
) -> None:
    code, report = run_against_scanagent(COPES, tmp_path, wine_build, wine_prefix)
    assert code == 0, report
    events = report["events"]
    assert isinstance(events, list)
    short_timeout = events[1]
    # Its late replies got 0x801F0020 and were counted (the agent goes on after them).
    assert short_timeout["late_replies"] == 3
    assert report["files"] == {"sent": 6, "answered": 6, "wrong": 0, "lost": 0}


def test_scanagent_exe_exiting_on_an_out_of_range_field_is_named(
    wine_build: WineBuild,  # noqa: F811
    wine_prefix: WinePrefix,  # noqa: F811
    tmp_path: Path,
) -> None:
    code, report = run_against_scanagent(OUT_OF_RANGE, tmp_path, wine_build, wine_prefix)
    assert code == 1
    assert report["problems"] == [
        "#4 malformed: the agent exited with status 3 after a malformed message "
        "(out_of_range, 1032 bytes)"
    ]
    output = report["output"]
    assert isinstance(output, list)
    assert any("BytesToScan 4294967295 is over the buffer" in line for line in output)
