"""The Windows side's own ceiling, for ``fltemu bench -- fltemu wine ... -- agent.exe``.

A Windows agent under Wine is measured through Wine's path (fltlib.dll, the driver in
``winedevice.exe``, wineserver), which has a ceiling of its own far below fltemu's. When the
agent command is ``fltemu wine``, the limit check measures that ceiling instead of fltemu's:
``benchagent.exe get`` (``client/windows/agents/benchagent.c``: pending overlapped
FilterGetMessage calls on an I/O completion port, one worker replying to each message at
once, as the sample agents do) under the same ``fltemu wine`` options, with the run's mode,
messages in flight, message and reply sizes.
Not here: the calibration run itself (``load``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..wine import WineSetupError, build_windows_side

__all__ = ["BENCHAGENT_MAX_MESSAGE", "WineLauncher", "wine_launcher"]

#: The largest message benchagent.exe's buffers take (its MESSAGE body).
BENCHAGENT_MAX_MESSAGE: Final = 65536
#: Messages benchagent.exe is told to answer: more than any calibration run sends (it is
#: stopped when the run ends).
_BENCHAGENT_COUNT: Final = 1_000_000_000
#: ``fltemu wine`` options that take a value, and those kept for the calibration agent.
_VALUED: Final = ("--address", "--prefix", "--build-dir")


@dataclass(frozen=True)
class WineLauncher:
    """How the agent command starts its program under Wine.

    Attributes:
        launcher: the command up to and including ``wine`` (``fltemu wine``,
            ``python -m fltemu wine``).
        options: its options but ``--address`` (the calibration agent must reach the bench's
            own socket, which ``FLTEMU_SOCKET`` gives).
        build_dir: its ``--build-dir``, if any.
        program: the Windows program it runs.
    """

    launcher: tuple[str, ...]
    options: tuple[str, ...]
    build_dir: str | None
    program: str

    def ceiling_command(self, port: str, pending: int, message_bytes: int) -> list[str]:
        """``benchagent.exe get PORT COUNT PENDING`` under the same ``fltemu wine`` options,
        built first if needed.

        Raises:
            WineSetupError: it cannot be built, or the messages are too large for it.
        """
        if message_bytes > BENCHAGENT_MAX_MESSAGE:
            raise WineSetupError(
                f"benchagent.exe takes messages of up to {BENCHAGENT_MAX_MESSAGE} bytes, not "
                f"{message_bytes}"
            )
        build = build_windows_side(
            build_dir=None if self.build_dir is None else Path(self.build_dir),
            targets=["agents"],
        )
        agent = str(build.agent("benchagent"))
        return [
            *self.launcher,
            *self.options,
            "--",
            agent,
            "get",
            port,
            str(_BENCHAGENT_COUNT),
            str(pending),
        ]


def wine_launcher(agent: Sequence[str]) -> WineLauncher | None:
    """The ``fltemu wine`` launch in an agent command, or None when it has none.

    >>> wine_launcher(["fltemu", "wine", "--prefix", "/p", "--", "scan.exe", "-n", "3"])
    WineLauncher(launcher=('fltemu', 'wine'), options=('--prefix', '/p'), build_dir=None, \
program='scan.exe')
    >>> wine_launcher(["python", "examples/scanner_agent.py"]) is None
    True
    """
    for i in range(1, len(agent)):
        if agent[i] != "wine":
            continue
        before = agent[i - 1]
        is_script = os.path.basename(before) == "fltemu"
        is_module = before == "fltemu" and i >= 2 and agent[i - 2] == "-m"
        if not (is_script or is_module):
            continue
        rest = list(agent[i + 1 :])
        if "--" not in rest:
            return None
        split = rest.index("--")
        given, program = rest[:split], rest[split + 1 :]
        if not program:
            return None
        options: list[str] = []
        build_dir = None
        j = 0
        while j < len(given):
            option = given[j]
            name, equals, value = option.partition("=")
            if name in _VALUED and not equals:
                value = given[j + 1] if j + 1 < len(given) else ""
                j += 1
            if name == "--build-dir":
                build_dir = value
            if name != "--address":
                options += [name, value] if name in _VALUED else [option]
            j += 1
        return WineLauncher(tuple(agent[: i + 1]), tuple(options), build_dir, program[0])
    return None
