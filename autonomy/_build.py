"""The compiled build: the hot modules compiled with mypyc, in place, beside their sources.

    python -m autonomy._build            compile (needs mypy and a C compiler)
    python -m autonomy._build --clean    back to pure Python

The same sources run either way: Python imports a module's compiled extension before its
``.py`` when both are there, so compiling only adds files. `build_info` says which runs.
"""

from __future__ import annotations

import argparse
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
    """``compiled (mypyc)``, ``pure Python``, or ``partly compiled (...)``."""
    compiled = []
    for name in COMPILED:
        spec = importlib.util.find_spec(f"autonomy.{name}")
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            compiled.append(name)
    if not compiled:
        return "pure Python"
    if len(compiled) == len(COMPILED):
        return "compiled (mypyc)"
    return f"partly compiled ({', '.join(compiled)})"


def _artifacts() -> list[Path]:
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = [p for p in PACKAGE.iterdir() if p.name.endswith(suffixes)]
    found += [p for p in PACKAGE.parent.iterdir() if "__mypyc" in p.name]
    return found


def clean() -> None:
    """Remove every compiled module: the package is pure Python again."""
    for path in _artifacts():
        path.unlink()


def compile_in_place() -> None:
    """Compile `COMPILED` with mypyc; the extensions land beside the sources.

    Raises:
        subprocess.CalledProcessError: mypyc failed (no compiler, a type error...).
    """
    clean()
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "mypy.ini"
        config.write_text(_MYPY_CONFIG)
        # mypyc builds in its working directory and copies each extension to the source's
        # path relative to it: a link to the package there puts them beside the sources
        # (and keeps the project's pyproject.toml out of the build). The group's shared
        # library lands in the working directory: it goes beside the package.
        (Path(work) / "autonomy").symlink_to(PACKAGE, target_is_directory=True)
        sources = [f"autonomy/{name}.py" for name in COMPILED]
        subprocess.run(
            [sys.executable, "-m", "mypyc", "--config-file", str(config), *sources],
            cwd=work,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for built in Path(work).glob("*__mypyc*"):
            shutil.copy2(built, PACKAGE.parent / built.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autonomy._build", description=__doc__)
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = parser.parse_args(argv)
    if args.clean:
        clean()
    else:
        compile_in_place()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
