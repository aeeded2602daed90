"""The ``fltemu`` command line (``main``): each sub-command's arguments, and the printing of
what the daemon answers. The work itself is done by the daemon (``fltemu.daemon``), the load
generator (``fltemu.bench``), the Wine launcher (``fltemu.wine``) and the control client
(``fltuser.control``).
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
