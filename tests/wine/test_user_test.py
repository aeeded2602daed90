"""README's Windows-agent test for users, run as written with the C test agents: the pytest
plugin's ``fltemu_wine_agent`` in a pytester session, as a user's own suite runs it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fltemu.wine import WineBuild, WinePrefix

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- the example below is run by tests/wine/test_user_test.py with the C test agents -->"

pytestmark = pytest.mark.timeout(240)


def readme_example() -> str:
    text = README.read_text()
    assert MARKER in text, "the README lost its Windows agent test"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block is not None
    return block.group(1)


PROBE_TESTS = r"""
import pytest


def test_input_output_and_exit_status(fltemu_daemon, fltemu_wine_agent):
    port = fltemu_daemon.create_port("\\ProbePort")
    agent = fltemu_wine_agent("bin/probe.exe")
    agent.wait_for_line("ready")
    agent.send("connect \\ProbePort")
    assert agent.wait_for_line("connect ") == "connect 0x00000000"
    port.wait_for_connection()
    agent.send("exit 3")
    assert agent.wait() == 3
    assert agent.lines == ["ready", "connect 0x00000000", "bye"]


def test_an_agent_that_ends_first_is_reported(fltemu_daemon, fltemu_wine_agent):
    agent = fltemu_wine_agent("bin/probe.exe")
    agent.send("exit 4")
    with pytest.raises(AssertionError, match="exited with status 4 before printing a line"):
        agent.wait_for_line("never printed")
    assert agent.lines == ["ready", "bye"]


def test_a_running_agent_is_stopped_at_the_end(fltemu_daemon_process, fltemu_wine_agent):
    fltemu_wine_agent("bin/probe.exe").wait_for_line("ready")


def test_no_daemon_is_a_clear_error(fltemu_wine_agent):
    with pytest.raises(pytest.UsageError, match="fltemu_wine_agent needs a daemon"):
        fltemu_wine_agent("bin/probe.exe")
"""


def user_folder(
    pytester: pytest.Pytester,
    wine_build: WineBuild,
    wine_prefix: WinePrefix,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The user's agents in ./bin; this run's prefix ($WINEPREFIX) and build, already made,
    stand in for the user's (so that the checkout's own build folder is left alone)."""
    (pytester.path / "bin").mkdir()
    for name in ("scanagent", "probe"):
        shutil.copyfile(wine_build.agent(name), pytester.path / "bin" / f"{name}.exe")
    monkeypatch.setenv("WINEPREFIX", str(wine_prefix.path))
    pytester.makeconftest(
        "import pytest\n"
        "from pathlib import Path\n"
        "from fltemu.wine import WineBuild\n\n"
        "@pytest.fixture(scope='session')\n"
        "def fltemu_wine_build():\n"
        f"    return WineBuild(Path({str(wine_build.directory)!r}))\n"
    )


def test_readme_windows_agent_test_runs_as_written(
    pytester: pytest.Pytester,
    wine_build: WineBuild,
    wine_prefix: WinePrefix,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user_folder(pytester, wine_build, wine_prefix, monkeypatch)
    pytester.makepyfile(test_my_windows_agent=readme_example())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def test_the_agent_fixture_feeds_input_waits_and_reports(
    pytester: pytest.Pytester,
    wine_build: WineBuild,
    wine_prefix: WinePrefix,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user_folder(pytester, wine_build, wine_prefix, monkeypatch)
    pytester.makepyfile(test_probe=PROBE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=4)
