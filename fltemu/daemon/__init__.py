"""The asyncio transport: the daemon, its sessions, the control commands it answers,
tracing, filter loading and the run loop. The server alone: the command line is
``fltemu.cli``, the clients are ``fltuser``.

Not here: protocol rules (``fltemu.wire``) and port semantics (``fltemu.kernel``).
"""

from __future__ import annotations

from .server import Daemon, DaemonAddressError, DaemonAddressInUseError

__all__ = ["Daemon", "DaemonAddressError", "DaemonAddressInUseError"]
