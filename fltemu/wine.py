"""Running a Windows agent under Wine against fltemu: ``fltemu wine -- agent.exe ARGS``.

The Windows side is two binaries built from ``client/windows`` with mingw-w64: ``fltlib.dll``,
which the agent loads instead of Wine's stub, and ``fltemu.sys``, the message device that
Wine's ``winedevice.exe`` hosts and that talks to the daemon's socket (``docs/wine.md``).
This module finds them (``find_windows_side``: built from a checkout's sources, or the copies
an installed wheel ships in ``fltemu/_windows``), prepares a Wine prefix (creates it, installs
both, registers the driver as a kernel service) and runs the agent in it with
``FLTEMU_SOCKET`` set.

Not here: the C sources (``client/windows``), argument parsing (``fltemu.cli.wine``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import FltEmuError
from .wire.address import resolve_address

__all__ = [
    "SERVICE_NAME",
    "WineBuild",
    "WinePrefix",
    "WineSetupError",
    "agent_environment",
    "build_windows_side",
    "check_daemon",
    "check_program_file",
    "check_program_in_prefix",
    "default_prefix",
    "find_windows_side",
    "shipped_windows_side",
    "windows_sources",
]

#: The driver's service name (the same as ``FLTEMU_SERVICE_NAME`` in ``fltemu_ioctl.h``).
SERVICE_NAME: Final = "fltemu"
#: Where the driver lives inside the prefix, as Windows paths and relative to ``drive_c``.
DRIVER_WINDOWS_PATH: Final = "C:\\windows\\system32\\drivers\\fltemu.sys"
_DRIVER_IN_PREFIX: Final = "drive_c/windows/system32/drivers/fltemu.sys"
_DLL_IN_PREFIX: Final = "drive_c/windows/system32/fltlib.dll"
#: The longest socket path the Windows side can connect to (``sun_path`` less its NUL).
MAX_SOCKET_PATH_BYTES: Final = 107
#: Where an installed wheel keeps the prebuilt binaries (``setup.py`` puts them there).
SHIPPED_DIR: Final = Path(__file__).resolve().parent / "_windows"
#: What a prefix records once fltemu's binaries are installed in it.
_MARKER: Final = ".fltemu-installed"

_INSTALL_HINT: Final = {
    "wine": "Wine is not installed: apt-get install wine wine64 (Debian/Ubuntu)",
    "x86_64-w64-mingw32-gcc": "mingw-w64 is not installed, needed to build fltlib.dll and "
    "fltemu.sys: apt-get install gcc-mingw-w64-x86-64 make",
    "make": "make is not installed: apt-get install make",
}


class WineSetupError(FltEmuError):
    """Something the Windows side needs is missing or failed; the message says what to do."""


@dataclass(frozen=True)
class WineBuild:
    """The built Windows side: ``fltlib.dll``, ``fltemu.sys`` and the build folder."""

    directory: Path

    @property
    def dll(self) -> Path:
        return self.directory / "fltlib.dll"

    @property
    def driver(self) -> Path:
        return self.directory / "fltemu.sys"

    def agent(self, name: str) -> Path:
        """A test agent built by ``make agents`` (``client/windows/agents/NAME.c``)."""
        return self.directory / "agents" / f"{name}.exe"


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise WineSetupError(_INSTALL_HINT.get(tool, f"{tool} not found"))
    return path


def _checkout_sources() -> Path:
    return Path(__file__).resolve().parent.parent / "client" / "windows"


def windows_sources() -> Path:
    """The C sources of the Windows side: ``$FLTEMU_WINDOWS_SRC``, else ``client/windows``
    of the checkout this package runs from.

    Raises:
        WineSetupError: neither exists (an installed wheel carries no C sources, only the
            binaries: see ``find_windows_side``).
    """
    env = os.environ.get("FLTEMU_WINDOWS_SRC")
    candidate = Path(env) if env else _checkout_sources()
    if not (candidate / "Makefile").is_file():
        raise WineSetupError(
            f"the Windows side's sources are not at {candidate}: run fltemu from a checkout of "
            "its repository, or set FLTEMU_WINDOWS_SRC to its client/windows folder"
        )
    return candidate


def shipped_windows_side() -> WineBuild | None:
    """The prebuilt ``fltlib.dll`` and ``fltemu.sys`` an installed wheel carries, if any."""
    shipped = WineBuild(SHIPPED_DIR)
    return shipped if shipped.dll.is_file() and shipped.driver.is_file() else None


def find_windows_side(build_dir: Path | None = None) -> WineBuild:
    """The Windows side ``fltemu wine`` installs, in this order:

    1. built from ``$FLTEMU_WINDOWS_SRC`` when it is set;
    2. built from ``client/windows`` when fltemu runs from a checkout (an editable install:
       developers' changes to the C sources take effect on the next run; needs mingw-w64);
    3. the binaries an installed wheel ships (``fltemu/_windows``; no compiler needed).

    Args:
        build_dir: where a source build goes (default: ``build`` inside the sources). An
            installed wheel builds nothing, so this is an error there.

    Raises:
        WineSetupError: a build failed or its tools are missing, ``build_dir`` was given with
            no sources to build, or this fltemu was built without its Windows side.
    """
    if os.environ.get("FLTEMU_WINDOWS_SRC") or (_checkout_sources() / "Makefile").is_file():
        return build_windows_side(build_dir=build_dir)
    shipped = shipped_windows_side()
    if build_dir is not None:
        raise WineSetupError(
            "--build-dir is for building the Windows side from its sources, and this fltemu "
            "is installed without them (it ships the binaries"
            f"{'' if shipped else ' only when built with mingw-w64'}): leave it out, or set "
            "FLTEMU_WINDOWS_SRC to a checkout's client/windows folder"
        )
    if shipped is None:
        raise WineSetupError(
            f"this fltemu was installed without its Windows side (no {SHIPPED_DIR}: built "
            "with FLTEMU_BUILD_WINDOWS=0, or from a copy without client/windows). Reinstall "
            "it from a wheel of the project, or build it with mingw-w64: apt-get install "
            "gcc-mingw-w64-x86-64 make, then pip install --force-reinstall fltemu"
        )
    return shipped


def build_windows_side(
    sources: Path | None = None, build_dir: Path | None = None, *, targets: Sequence[str] = ()
) -> WineBuild:
    """Run ``make`` in ``client/windows`` (a no-op when everything is up to date).

    Args:
        sources: the ``client/windows`` folder (default: ``windows_sources()``).
        build_dir: where the binaries go (default: ``build`` inside ``sources``).
        targets: make targets besides the default, e.g. ``agents`` (the C test agents) or
            ``go-agents`` (the Go one).

    Raises:
        WineSetupError: mingw-w64 or make is missing, or the build failed (its output is in
            the message).
    """
    sources = sources or windows_sources()
    build_dir = build_dir or sources / "build"
    _require("make")
    _require("x86_64-w64-mingw32-gcc")
    argv = ["make", "-s", "-C", str(sources), f"BUILD={build_dir.resolve()}"]
    argv.extend(targets)
    build_dir.mkdir(parents=True, exist_ok=True)
    # Several fltemu wine runs may build at once: one at a time per build folder.
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise WineSetupError(
            f"building the Windows side failed ({' '.join(argv)}):\n{done.stdout}{done.stderr}"
        )
    return WineBuild(build_dir.resolve())


def default_prefix(environ: Mapping[str, str] | None = None) -> Path:
    """``$WINEPREFIX`` when set, else ``$XDG_CACHE_HOME/fltemu/wine`` (``~/.cache/...``)."""
    env = os.environ if environ is None else environ
    if env.get("WINEPREFIX"):
        return Path(env["WINEPREFIX"])
    cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fltemu" / "wine"


def _wine_environment(prefix: Path, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env["WINEPREFIX"] = str(prefix)
    env["WINEARCH"] = "win64"
    env.setdefault("WINEDEBUG", "-all")
    env.pop("DISPLAY", None)  # headless: no window, no X server needed
    overrides = [o for o in env.get("WINEDLLOVERRIDES", "").split(";") if o]
    env["WINEDLLOVERRIDES"] = ";".join(["fltlib=n", *overrides])
    return env


class WinePrefix:
    """A Wine prefix with fltemu's ``fltlib.dll`` and ``fltemu.sys`` installed.

    ``ensure`` is idempotent and safe to call from several processes at once (a lock file
    beside the prefix serializes them).
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_prefix()

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for Wine commands in this prefix: headless, quiet, with the
        ``fltlib=n`` override (so Wine loads fltemu's DLL, not its own stub)."""
        return _wine_environment(self.path, os.environ if base is None else base)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.parent / f".{self.path.name}.lock"
        with open(lock, "w") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = self.environment()
        # wineboot must not try to fetch Mono or Gecko (no network, no prompt).
        env["WINEDLLOVERRIDES"] += ";mscoree=d;mshtml=d"
        # Output goes to files, not pipes: the Wine processes a command starts (wineserver,
        # services) may keep its descriptors open long after the command itself is done.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                code = subprocess.run(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    timeout=timeout, check=False,
                ).returncode  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise WineSetupError(f"{' '.join(argv)} did not finish within {timeout} s") from exc
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(
                argv, code, out.read().decode(errors="replace"), err.read().decode(errors="replace")
            )

    def _check(self, *argv: str) -> None:
        done = self._run(*argv)
        if done.returncode != 0:
            raise WineSetupError(
                f"{' '.join(argv)} failed (exit status {done.returncode}) in {self.path}:\n"
                f"{done.stdout}{done.stderr}"
            )

    def ensure(self, build: WineBuild, progress: Callable[[str], None] | None = None) -> None:
        """Create the prefix if needed and install ``build`` into it.

        A prefix whose installed binaries differ from ``build`` is updated; its running Wine
        session (which has the old driver loaded) is ended first.

        Args:
            build: the binaries to install.
            progress: called with a line saying what is being done, before each slow step
                (creating the prefix, installing into it); nothing is said when the prefix is
                already up to date.

        Raises:
            WineSetupError: Wine is missing, or a Wine command failed.
        """
        _require("wine")
        with self._locked():
            # Read under the lock, then copy these very bytes: the marker describes them.
            dll, driver = build.dll.read_bytes(), build.driver.read_bytes()
            stamp = hashlib.sha256(dll + b"\0" + driver).hexdigest()
            marker = self.path / _MARKER
            if marker.is_file() and marker.read_text() == stamp:
                return
            say = progress or (lambda line: None)
            if not (self.path / "system.reg").is_file():
                say(
                    f"creating the Wine prefix {self.path} (once per prefix: Wine sets up "
                    "about 700 MB, which takes 10-30 s)"
                )
                done = self._run("wineboot", "-i")
                if done.returncode != 0:
                    raise WineSetupError(
                        f"could not create the Wine prefix {self.path}:\n{done.stderr[-2000:]}"
                    )
            else:
                # The session may still hold the old driver: end it before replacing it.
                self._run("wineserver", "-k")
            say(f"installing fltlib.dll and fltemu.sys into {self.path} (from {build.directory})")
            (self.path / _DRIVER_IN_PREFIX).write_bytes(driver)
            (self.path / _DLL_IN_PREFIX).write_bytes(dll)
            self._check(
                "wine", "reg", "add", "HKCU\\Software\\Wine\\DllOverrides", "/v", "fltlib",
                "/d", "native", "/f",
            )  # fmt: skip
            service = f"HKLM\\System\\CurrentControlSet\\Services\\{SERVICE_NAME}"
            if self._run("wine", "reg", "query", service).returncode != 0:
                self._check(
                    "wine", "sc", "create", SERVICE_NAME, "type=", "kernel", "start=", "auto",
                    "binPath=", DRIVER_WINDOWS_PATH,
                )  # fmt: skip
            # End the session (which also saves the registry), so that the next one starts
            # the driver at boot with the other services.
            self._run("wineserver", "-w")
            if not (self.path / "system.reg").is_file():
                raise WineSetupError(f"Wine did not set up the prefix {self.path}")
            marker.write_text(stamp)
            say("the Wine prefix is ready")

    def start_session(self, *, persistent: bool = False) -> None:
        """Start the prefix's Wine session (wineserver, services, fltemu.sys) if it is not
        running, with no standard streams, so that the agent started next finds its device
        ready and no long-lived Wine process holds the agent's stdout open after it exits.

        Args:
            persistent: keep the session until ``wineserver -k`` (for test suites), instead of
                Wine's default of ending it a few seconds after its last program.
        """
        if persistent:
            self._run("wineserver", "-p")
        done = self._run("wineboot")
        if done.returncode != 0:
            raise WineSetupError(f"could not start Wine in {self.path}:\n{done.stderr[-2000:]}")


def check_daemon(address: str) -> None:
    """Raise ``WineSetupError`` unless a daemon accepts connections at ``address``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(address)
        except OSError as exc:
            raise WineSetupError(
                f"no fltemu daemon at {address} ({exc.strerror or exc}): start one with "
                "'fltemu serve', or pass --address / set FLTEMU_SOCKET"
            ) from None


def agent_environment(
    prefix: WinePrefix, address: str | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment an agent runs in: the prefix's, and ``FLTEMU_SOCKET`` set to the
    daemon's socket (the usual resolution: ``address``, ``$FLTEMU_SOCKET``, the default)."""
    env = prefix.environment(base)
    path = os.path.abspath(resolve_address(address))
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise WineSetupError(
            f"the daemon's socket path {path!r} is longer than a Unix socket address can hold "
            f"({MAX_SOCKET_PATH_BYTES} bytes): use a shorter --address or FLTEMU_SOCKET"
        )
    env["FLTEMU_SOCKET"] = path
    return env


#: Where Wine looks for a program given by bare name, after the current folder.
_WINE_SEARCH_PATH: Final = ("drive_c/windows/system32", "drive_c/windows")


def _is_windows_path(program: str) -> bool:
    """``C:\\agents\\scan.exe`` or ``agents\\scan.exe``: Wine resolves it, not us."""
    return "\\" in program or (len(program) > 1 and program[1] == ":")


def check_program_file(program: str) -> None:
    """Refuse, with what to do, a program that Wine would fail to run or would run as a
    Linux program: one that is missing (when given as a path), a folder, unreadable, a
    Linux (ELF) program or script, or a file that is not a Windows executable (no ``MZ``).

    A bare name that is no file here (``notepad.exe``) is left to ``check_program_in_prefix``.

    Raises:
        WineSetupError: the program cannot be a Windows program; the message says why.
    """
    if _is_windows_path(program):
        return
    if not os.path.lexists(program):
        if os.sep in program:
            raise WineSetupError(f"{program}: no such file")
        return
    if os.path.isdir(program):
        raise WineSetupError(f"{program} is a folder, not a Windows program (.exe)")
    try:
        with open(program, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise WineSetupError(f"{program}: cannot read it: {exc.strerror or exc}") from None
    if head.startswith(b"\x7fELF") or head.startswith(b"#!"):
        kind = "a Linux program" if head.startswith(b"\x7fELF") else "a script"
        raise WineSetupError(
            f"{program} is {kind}, not a Windows one: run it directly, without fltemu wine "
            "(FLTEMU_SOCKET tells a Linux agent where the daemon is)"
        )
    if not head.startswith(b"MZ"):
        shown = head[:16].decode("ascii", "replace")
        printable = "".join(ch if ch.isprintable() else "." for ch in shown)
        raise WineSetupError(
            f"{program} is not a Windows program: a .exe starts with 'MZ', this file with "
            f"{printable!r} (a build that failed, or the wrong file?)"
        )


def check_program_in_prefix(program: str, prefix: WinePrefix) -> None:
    """Refuse a program given by bare name that is neither in the current folder nor where
    Wine looks in the prefix (``C:\\windows\\system32``, ``C:\\windows``): Wine would end
    with its raw status 0xc0000135 and exit status 53.

    Raises:
        WineSetupError: no such program; the message says where it was looked for.
    """
    if _is_windows_path(program) or os.path.lexists(program) or os.sep in program:
        return
    wanted = {program.lower(), program.lower() + ".exe"}
    for folder in _WINE_SEARCH_PATH:
        with contextlib.suppress(OSError):
            if any(name.lower() in wanted for name in os.listdir(prefix.path / folder)):
                return
    raise WineSetupError(
        f"{program}: no such program in the current folder ({os.getcwd()}) nor in the Wine "
        f"prefix's C:\\windows\\system32 or C:\\windows ({prefix.path}); give its path, "
        "e.g. ./agent.exe"
    )


def agent_argv(program: str, args: Sequence[str] = ()) -> list[str]:
    """The command that runs a Windows program under Wine."""
    return [_require("wine"), program, *args]


def run_command(
    program: Sequence[str],
    *,
    address: str | None,
    prefix: str | None,
    build_dir: str | None,
    daemon_check: bool = True,
) -> int:
    """``fltemu wine``: find or build the Windows side (``find_windows_side``), prepare the
    prefix (saying so on stderr when that is slow), then replace this process with the agent
    under Wine, so its stdin/stdout/stderr, signals and exit status are the agent's own.

    Returns 1 (after printing what is missing) if that cannot be done; otherwise it does not
    return.
    """
    import sys

    def say(line: str) -> None:
        print(f"fltemu wine: {line}", file=sys.stderr, flush=True)

    try:
        check_program_file(program[0])
        build = find_windows_side(Path(build_dir) if build_dir else None)
        where = WinePrefix(prefix)
        env = agent_environment(where, address)
        if daemon_check:
            check_daemon(env["FLTEMU_SOCKET"])
        where.ensure(build, progress=say)
        check_program_in_prefix(program[0], where)
        where.start_session()
        argv = agent_argv(program[0], program[1:])
    except (WineSetupError, OSError) as exc:
        print(f"fltemu wine: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
