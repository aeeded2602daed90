"""Build hook: the wheel (and ``pip install .``) carries fltemu's Windows side prebuilt.

``build_py`` runs ``make -C client/windows`` (mingw-w64) and copies ``fltlib.dll`` and
``fltemu.sys`` into the package as ``fltemu/_windows/``, so that an installed fltemu runs
Windows agents under Wine with no compiler. The two files are the same x86_64 PE binaries on
every Linux machine. An editable install (``pip install -e .``) builds nothing here: run from a
checkout, ``fltemu wine`` rebuilds from ``client/windows`` itself (``fltemu/wine.py``).

``FLTEMU_BUILD_WINDOWS=0`` builds without the Windows side (then ``fltemu wine`` says so and
what to install); everything else in fltemu works the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import ExecError

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "client" / "windows"
BINARIES = ("fltlib.dll", "fltemu.sys")
MISSING = (
    "building fltemu's Windows side (fltlib.dll and fltemu.sys, which `fltemu wine` installs "
    "into Wine) needs {what}: apt-get install gcc-mingw-w64-x86-64 make (Debian/Ubuntu; "
    "Fedora: mingw64-gcc make). Or build without it: FLTEMU_BUILD_WINDOWS=0 pip install ..."
)


class BuildWithWindowsSide(build_py):
    """``build_py``, then the Windows side into ``fltemu/_windows`` of the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # a checkout: fltemu wine builds from client/windows when it runs
        target = Path(self.build_lib) / "fltemu" / "_windows"
        if os.environ.get("FLTEMU_BUILD_WINDOWS", "1") == "0":
            self.announce("FLTEMU_BUILD_WINDOWS=0: no Windows side in this build", level=2)
            shutil.rmtree(target, ignore_errors=True)  # what an earlier build left there
            return
        if not (SOURCES / "Makefile").is_file():
            raise ExecError(f"the Windows side's sources are missing: {SOURCES}")
        missing = [t for t in ("x86_64-w64-mingw32-gcc", "make") if shutil.which(t) is None]
        if missing:
            raise ExecError(MISSING.format(what=" and ".join(missing)))
        build_dir = Path(self.get_finalized_command("build").build_temp).resolve() / "windows"
        build_dir.mkdir(parents=True, exist_ok=True)
        argv = ["make", "-s", "-C", str(SOURCES), f"BUILD={build_dir}"]
        print("building fltemu's Windows side:", " ".join(argv), flush=True)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ExecError(
                f"building the Windows side failed ({' '.join(argv)}):\n{done.stdout}{done.stderr}"
            )
        target.mkdir(parents=True, exist_ok=True)
        for name in BINARIES:
            shutil.copyfile(build_dir / name, target / name)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        target = Path(self.build_lib) / "fltemu" / "_windows"
        outputs.extend(str(target / name) for name in BINARIES if (target / name).is_file())
        return outputs


setup(cmdclass={"build_py": BuildWithWindowsSide})
