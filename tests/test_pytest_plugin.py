"""The pytest plugin's fixtures, run in pytester sessions as a user's own tests would be."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""


def run(pytester: pytest.Pytester, source: str, passed: int) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_agent=textwrap.dedent(source))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=passed)


def readme_example() -> str:
    text = README.read_text()
    marker = "<!-- the example below is run by tests/test_pytest_plugin.py -->"
    assert marker in text, "the README lost its pytest plugin example"
    block = re.search(r"```python\n(.*?)```", text[text.index(marker) :], re.S)
    assert block is not None
    return block.group(1)


def test_readme_example_runs(pytester: pytest.Pytester) -> None:
    run(pytester, readme_example(), passed=1)


def test_readme_example_is_quiet_in_a_suite_with_no_configuration(
    pytester: pytest.Pytester,
) -> None:
    # As a user runs it: their own folder, no pytest configuration at all.
    pytester.makepyfile(test_my_agent=readme_example())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)
    output = "\n".join(result.outlines + result.errlines)
    assert "Warning" not in output and "warnings summary" not in output, output


def test_in_process_daemon_from_a_plain_test(pytester: pytest.Pytester) -> None:
    run(
        pytester,
        """
        import threading
        import fltuser
        from fltemu import NtStatus

        def test_round_trip(fltemu_daemon):
            port = fltemu_daemon.create_port(
                "\\\\AgentPort", max_connections=2,
                message_notify=lambda cookie, data, n: (0, data.upper()),
            )
            with fltuser.connect("\\\\AgentPort", b"ctx", address=fltemu_daemon.address) as p:
                assert p.send(b"abc", 8) == b"ABC"
                client = port.wait_for_connection()
                assert port.contexts == [b"ctx"] and client.process.pid is not None
                def agent():
                    msg = p.get_message(64)
                    p.reply(msg.message_id, msg.data[::-1])
                t = threading.Thread(target=agent)
                t.start()
                result = port.send_message(b"file", reply_length=8, timeout=5)
                t.join()
                assert (result.status, result.reply) == (NtStatus.STATUS_SUCCESS, b"elif")
            port.wait_for_disconnect()

        def test_refusing_connections(fltemu_daemon):
            fltemu_daemon.create_port("\\\\Closed", connect_status=NtStatus.STATUS_ACCESS_DENIED)
            try:
                fltuser.connect("\\\\Closed", address=fltemu_daemon.address)
            except fltuser.HResultError as exc:
                assert exc.hresult == 0x80070005
            else:
                raise AssertionError("connected")

        def test_timeouts_are_reported_not_hung(fltemu_daemon):
            port = fltemu_daemon.create_port("\\\\Idle")
            with fltuser.connect("\\\\Idle", address=fltemu_daemon.address):
                port.wait_for_connection()
                assert port.send_message(b"x", timeout=0.05).status == NtStatus.STATUS_TIMEOUT
        """,
        passed=3,
    )


def test_in_process_daemon_from_an_asyncio_test(pytester: pytest.Pytester) -> None:
    run(
        pytester,
        """
        import asyncio
        import pytest
        import fltuser

        @pytest.mark.asyncio
        async def test_async_agent(fltemu_daemon):
            port = fltemu_daemon.create_port("\\\\AsyncPort")
            async with await fltuser.aconnect("\\\\AsyncPort", address=fltemu_daemon.address) as p:
                await asyncio.to_thread(port.wait_for_connection)
                sent = asyncio.ensure_future(port.asend_message(b"q", reply_length=1, timeout=5))
                msg = await p.get_message(64)
                await p.reply(msg.message_id, b"!")
                assert (await sent).reply == b"!"
        """,
        passed=1,
    )


def test_daemon_process_with_builtin_samples(pytester: pytest.Pytester) -> None:
    run(
        pytester,
        """
        import fltuser

        def test_echo(fltemu_daemon_process):
            assert "\\\\EchoPort" in fltemu_daemon_process.banner
            with fltuser.connect("\\\\EchoPort", address=fltemu_daemon_process.address) as p:
                assert p.send(b"hi", 2) == b"hi"
                fltemu_daemon_process.wait_for_connection("\\\\EchoPort")
                assert fltemu_daemon_process.send("\\\\EchoPort", b"x", timeout=0).status == 0x102
                assert fltemu_daemon_process.disconnect("\\\\EchoPort") == 1
        """,
        passed=1,
    )


def test_daemon_process_with_the_users_filter(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        myfilter="""
        async def setup(flt):
            await flt.create_communication_port(
                "\\\\Mine",
                connect_notify=lambda cp, cookie, ctx: 0,
                disconnect_notify=lambda cookie: None,
                message_notify=lambda cookie, data, n: (0, b"mine"),
                max_connections=1,
            )
        """
    )
    run(
        pytester,
        """
        import os
        import pytest
        import fltuser

        @pytest.fixture
        def fltemu_serve_args():
            return ["--filter", "myfilter"]

        def test_mine(fltemu_daemon_process):
            with fltuser.connect("\\\\Mine", address=fltemu_daemon_process.address) as p:
                assert p.send(b"?", 8) == b"mine"
            assert [f.name for f in fltemu_daemon_process.ports()] == ["myfilter"]
        """,
        passed=1,
    )
