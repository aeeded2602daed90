"""How long the Filter Manager waits for filter callbacks: forever, or until the rundown ends.

Windows waits for a ConnectNotify, MessageNotify, DisconnectNotify or FilterUnloadCallback
as long as it takes. An emulator asked to stop cannot: once shutdown begins, one deadline
(``Rundown.begin``) bounds every such wait, the ones already running included, so that the
whole shutdown ends by it however many callbacks hang. Not here: what the waits are for
(``manager``, ``ports``), when shutdown begins (``fltemu.daemon``).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final

__all__ = ["CANCEL_SLACK", "CallbackTimeout", "Rundown"]

#: Seconds after the deadline that the cancelled callbacks get to unwind (a cancelled
#: coroutine normally ends at its next await, within one turn of the loop).
CANCEL_SLACK: Final = 0.5


class Rundown:
    """The bound on callback waits: none, a per-wait timeout, or a shutdown's deadline.

    Attributes:
        timeout: seconds a teardown waits for in-flight MessageNotify calls and for
            DisconnectNotify; ``None`` (Windows' behaviour) waits as long as they take.
        deadline: the event loop time at which shutdown abandons every callback still
            running; ``None`` until ``begin``.
    """

    def __init__(self) -> None:
        self.timeout: float | None = None
        self.deadline: float | None = None
        self._active: set[asyncio.Timeout] = set()

    def __repr__(self) -> str:
        waits = len(self._active)
        return f"<Rundown timeout={self.timeout} deadline={self.deadline} waits={waits}>"

    def begin(self, deadline: float) -> None:
        """Shutdown: every callback wait, running or yet to start, ends by ``deadline``."""
        if self.deadline is not None and self.deadline <= deadline:
            return
        self.deadline = deadline
        for timeout in list(self._active):
            when = timeout.when()
            if when is None or when > deadline:
                timeout.reschedule(deadline)

    def wait(self) -> CallbackTimeout:
        """``async with rundown.wait() as bound:`` around awaiting a callback.

        The awaiting task is cancelled when the bound passes, and the block raises
        ``TimeoutError`` (``bound.expired`` tells it from the callback's own).
        """
        when = self.deadline
        if self.timeout is not None:
            relative = asyncio.get_running_loop().time() + self.timeout
            when = relative if when is None else min(when, relative)
        return CallbackTimeout(self, when)

    def after_cancel(self) -> float | None:
        """Seconds to wait for callbacks just cancelled to unwind (``None``: as long as needed)."""
        if self.deadline is None:
            return self.timeout
        remaining = self.deadline + CANCEL_SLACK - asyncio.get_running_loop().time()
        return max(0.0, remaining)

    def describe(self) -> str:
        """How the bound reads in a log line: "by the end of the shutdown grace", "within 5.0 s"."""
        if self.deadline is not None or self.timeout is None:
            return "by the end of the shutdown grace"
        return f"within {self.timeout:.1f} s"

    def _enter(self, timeout: asyncio.Timeout) -> None:
        self._active.add(timeout)
        if self.deadline is not None:
            when = timeout.when()
            if when is None or when > self.deadline:
                timeout.reschedule(self.deadline)

    def _exit(self, timeout: asyncio.Timeout) -> None:
        self._active.discard(timeout)


class CallbackTimeout:
    """One bounded wait for a callback (see ``Rundown.wait``)."""

    __slots__ = ("_rundown", "_timeout")

    def __init__(self, rundown: Rundown, when: float | None) -> None:
        self._rundown = rundown
        self._timeout = asyncio.timeout_at(when)

    @property
    def expired(self) -> bool:
        """Whether the bound passed (rather than the callback raising TimeoutError itself)."""
        return self._timeout.expired()

    async def __aenter__(self) -> CallbackTimeout:
        await self._timeout.__aenter__()
        self._rundown._enter(self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._rundown._exit(self._timeout)
        await self._timeout.__aexit__(exc_type, exc, tb)
