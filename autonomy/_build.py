"""The compiled build: the hot modules compiled with mypyc, beside their sources.

The same sources run either way: Python imports a module's compiled extension before its
``.py`` when both are there, so compiling only adds files. `build_info` says which runs.
``pip install .`` compiles them where mypy and a C compiler are at hand (``hatch_build.py``;
``AUTONOMY_PURE_PYTHON=1`` skips it), an editable install does not; ``scripts/compile``
compiles a source tree in place (``--clean`` undoes it).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["COMPILED", "build_info"]

COMPILED: Final = (
    "_protocol",
    "_deadlines",
    "_outbox",
    "_mailbox",
    "_peer",
    "_inbound",
    "_transport",
)
"""The modules every message goes through, compiled when the build is."""

PACKAGE: Final = Path(__file__).resolve().parent

_MYPY_CONFIG: Final = """\
[mypy]
strict = True
[mypy-zmq.*,zeroconf.*,cloudpickle.*,msgpack.*,uvloop.*,httpx.*,prometheus_client.*]
ignore_missing_imports = True
"""


def build_info() -> str:
    """``compiled with mypyc``, ``pure Python``, or ``partly compiled (...)``."""
    importlib.invalidate_caches()  # a build that just changed the files is seen
    compiled = []
    for name in COMPILED:
        spec = importlib.util.find_spec(f"autonomy.{name}")
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            compiled.append(name)
    if not compiled:
        return "pure Python"
    if len(compiled) == len(COMPILED):
        return "compiled with mypyc"
    return f"partly compiled ({', '.join(compiled)})"


def _artifacts(package: Path) -> list[Path]:
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = [p for p in package.iterdir() if p.name.endswith(suffixes)]
    found += [p for p in package.parent.iterdir() if "__mypyc" in p.name]
    return found


def clean(package: Path = PACKAGE) -> None:
    """Remove every compiled module of ``package``: it is pure Python again."""
    for path in _artifacts(package):
        path.unlink()


def compile_in_place(package: Path = PACKAGE) -> list[Path]:
    """Compile `COMPILED` of ``package`` with mypyc; the extensions land beside the
    sources, and the group's shared library beside the package. Returns what it made.

    Raises:
        subprocess.CalledProcessError: mypyc failed (no compiler, a type error...).
    """
    clean(package)
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "mypy.ini"
        config.write_text(_MYPY_CONFIG)
        # mypyc builds in its working directory and copies each extension to the source's
        # path relative to it: a link to the package there puts them beside the sources
        # (and keeps the project's pyproject.toml out of the build). The group's shared
        # library lands in the working directory: it goes beside the package.
        (Path(work) / "autonomy").symlink_to(package, target_is_directory=True)
        sources = [f"autonomy/{name}.py" for name in COMPILED]
        subprocess.run(
            [sys.executable, "-m", "mypyc", "--config-file", str(config), *sources],
            cwd=work,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for built in Path(work).glob("*__mypyc*"):
            shutil.copy2(built, package.parent / built.name)
    return _artifacts(package)
