"""The asyncio transport: the daemon, its sessions, filter loading and the CLI.

Not here: protocol rules (``fltemu.wire``) and port semantics (``fltemu.kernel``).
"""

from __future__ import annotations

from .server import Daemon, DaemonAddressError, DaemonAddressInUseError

__all__ = ["Daemon", "DaemonAddressError", "DaemonAddressInUseError"]
