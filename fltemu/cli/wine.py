"""``fltemu wine``'s arguments; the command itself is ``fltemu.wine``."""

from __future__ import annotations

import argparse

from ._args import Subparsers, add_version

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  fltemu wine -- scanuser.exe                      # your agent, unchanged
  fltemu wine --address /tmp/f.sock -- agent.exe --workers 4
  fltemu bench '\\ScannerPort' --reply-length 1 -- fltemu wine -- scanuser.exe

Uses the fltlib.dll and fltemu.sys that the installed package ships; run from a checkout of
fltemu (or with FLTEMU_WINDOWS_SRC set), builds them from client/windows instead if needed
(make, mingw-w64). Creates the Wine prefix if needed, saying so on stderr (--prefix, else
$WINEPREFIX, else ~/.cache/fltemu/wine; headless, WINEDEBUG=-all), installs both there and
registers the driver as a kernel service, then runs the program with FLTEMU_SOCKET set to the
daemon's socket (--address, else $FLTEMU_SOCKET, else the default path). The program's stdin,
stdout, stderr and exit status are its own. Exit status 1 with a message when Wine, the
Windows side, mingw-w64 (for a build) or the daemon is missing, or when PROGRAM is not a
Windows program: a file that is not a .exe (no MZ header), a Linux program or script (run
those directly), a folder, or a name found neither in the current folder nor in the prefix's
C:\\windows\\system32 and C:\\windows. The program goes after '--'.
"""


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    """Add ``wine`` to the ``fltemu`` parser."""
    wine = sub.add_parser(
        "wine",
        help="run a Windows agent .exe under Wine against the daemon",
        description="Run a Windows program that uses fltlib.dll (FilterConnectCommunicationPort "
        "and friends) under Wine, connected to fltemu's daemon.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="fltemu wine [-h] [--address PATH] [--prefix DIR] [--build-dir DIR] "
        "[--no-daemon-check] -- PROGRAM [ARGS...]",
    )
    wine.add_argument("--address", metavar="PATH", help="the daemon's socket")
    wine.add_argument("--prefix", metavar="DIR", help="the Wine prefix to use (created if missing)")
    wine.add_argument(
        "--build-dir",
        metavar="DIR",
        help="where to build fltlib.dll and fltemu.sys from a checkout's sources "
        "(default: client/windows/build)",
    )
    wine.add_argument(
        "--daemon-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refuse to start when no daemon listens (default: on)",
    )

    add_version(wine)
    return wine
