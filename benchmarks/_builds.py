"""The builds of autonomy under test: a copy of the package per build, a child process per build
that runs the whole case list against it, and the merge of their results.

The parent (``python -m benchmarks``) copies ``autonomy/`` into a temporary directory once
per build: ``pure`` without any compiled module (a source tree compiled in place by
``scripts/compile`` still gives a pure run), ``compiled`` then compiled by
``autonomy._build.compile_in_place`` (about a minute). Then, one build after the other, it
runs ``python -m benchmarks --as-build NAME --result FILE`` with ``PYTHONPATH`` putting that
copy first (``benchmarks`` itself comes from the source tree behind it) and
``PYTHONSAFEPATH=1`` (so the working directory's ``autonomy/`` does not come first). The
runner and memory processes the child starts inherit that environment, so both ends of
every case run the build; the child checks ``autonomy.__build__`` in itself and in every
runner's hello, and fails loudly on a mismatch. Each build's ratios are measured against raw
(and Pyro5) in its own child, never across builds.

The temporary directory goes at the end, also on failure, Ctrl-C or SIGTERM; a child stops
(its runners with it) when its stdin closes, that is when the parent ends in any way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from ._common import PACKAGE_ROOT, T0, T0_VARIABLE, progress, when_stdin_closes
from ._pyro import pyro_available

BUILDS: Final = {"pure": "pure Python", "compiled": "compiled with mypyc"}
"""Build name -> what ``autonomy.__build__`` says in a process that runs it."""

CHILD_GRACE_S: Final = 30.0
"""How long an interrupted child gets to stop its runners before it is killed."""


# -- which builds --------------------------------------------------------------------------------


def parse_builds(text: str) -> list[str]:
    """``pure,compiled`` -> ``["pure", "compiled"]`` (argparse type)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BUILDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"builds are a comma-separated list of {', '.join(BUILDS)}; got {text!r}"
        )
    return list(dict.fromkeys(names))


def why_not_compiled() -> str | None:
    """Why the compiled build cannot be made here, or None if it can."""
    if importlib.util.find_spec("mypyc") is None:
        return "mypy (mypyc) is not installed (pip install -e '.[dev]')"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} is not on PATH)"
    return None


def default_builds() -> list[str]:
    reason = why_not_compiled()
    if reason is None:
        return ["pure", "compiled"]
    progress(f"builds: pure only: {reason}")
    return ["pure"]


def check_build(name: str) -> None:
    """Fail loudly unless this process runs build ``name``."""
    import autonomy

    if autonomy.__build__ != BUILDS[name]:
        raise SystemExit(
            f"benchmarks: the {name} build's process runs {autonomy.__build__!r} from "
            f"{Path(autonomy.__file__).parent}, not {BUILDS[name]!r}"
        )
    where = Path(autonomy.__file__).parent
    progress(f"running autonomy {autonomy.__build__} from {where}")


# -- the copies ----------------------------------------------------------------------------------


def _copy_package(destination: Path) -> Path:
    """Copy ``autonomy/`` of the source tree, without caches or compiled modules."""
    suffixes = [f"*{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    package = destination / "autonomy"
    shutil.copytree(
        PACKAGE_ROOT / "autonomy", package, ignore=shutil.ignore_patterns("__pycache__", *suffixes)
    )
    return package


def prepare(name: str, work: Path) -> Path:
    """The directory to put first on ``PYTHONPATH`` for build ``name``."""
    directory = work / name
    package = _copy_package(directory)
    if name == "compiled":
        from autonomy._build import compile_in_place

        progress("compiling a copy of autonomy with mypyc (about a minute)")
        started = time.monotonic()
        made = compile_in_place(package)
        progress(f"compiled {len(made)} modules in {time.monotonic() - started:.0f} s")
    return directory


# -- the children --------------------------------------------------------------------------------


def child_argv(args: argparse.Namespace, name: str, result: Path) -> list[str]:
    """The command line of build ``name``'s child: the parent's options, resolved."""
    argv = [sys.executable, "-m", "benchmarks", "--as-build", name, "--result", str(result)]
    argv += ["--rounds", str(args.rounds), "--seconds", str(args.seconds)]
    if args.only:
        argv += ["--only", args.only]
    flags = ("quick", "no_memory", "no_counters", "no_curve", "no_pyro", "no_uvloop")
    argv += [f"--{flag.replace('_', '-')}" for flag in flags if getattr(args, flag)]
    return argv


def child_env(directory: Path) -> dict[str, str]:
    """Our environment, with ``directory``'s copy of autonomy first on the import path."""
    paths = [str(directory), str(PACKAGE_ROOT)]
    paths += [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONSAFEPATH": "1",
        T0_VARIABLE: repr(T0),
    }


def run_child(name: str, argv: list[str], env: dict[str, str]) -> None:
    """Run one build's child to its end; if we are interrupted, it stops first."""
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, cwd=PACKAGE_ROOT, env=env)
    try:
        code = process.wait()
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the child's signal to stop, if it still runs
        try:
            process.wait(CHILD_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if code != 0:
        raise SystemExit(f"benchmarks: the {name} build's run failed (exit {code})")


def cancel_when_stdin_closes() -> None:
    """In a build's child: cancel the running task when the parent closes our stdin."""
    if sys.stdin is None or sys.stdin.isatty():
        return
    task = asyncio.current_task()

    def cancel() -> None:
        if task is not None:
            progress("the parent is gone: stopping")
            task.cancel()

    when_stdin_closes(cancel)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that the temporary directory goes and children stop."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_builds(args: argparse.Namespace) -> dict[str, Any]:
    """Every build's run, one after the other, merged."""
    builds: list[str] = args.builds or default_builds()
    if "compiled" in builds and (reason := why_not_compiled()):
        raise SystemExit(f"benchmarks: no compiled build here: {reason}")
    if not args.no_pyro and not pyro_available():
        progress("Pyro5 is not installed: no Pyro5 side (pip install -e '.[dev]')")
        args.no_pyro = True
    started = time.time()
    results: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    with _sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="autonomy-bench-") as tmp:
        work = Path(tmp)
        directories = {}
        for name in builds:  # compile first: a build that cannot be made fails before any run
            before = time.monotonic()
            directories[name] = prepare(name, work)
            timings[f"prepare_{name}_s"] = round(time.monotonic() - before, 1)
        for name in builds:
            progress(f"build {name}: {BUILDS[name]}, in a child process of its own")
            result = work / f"{name}.json"
            run_child(name, child_argv(args, name, result), child_env(directories[name]))
            results[name] = json.loads(result.read_text())
    return merge(results, started, timings)


# -- the merge -----------------------------------------------------------------------------------


def merge(
    results: dict[str, dict[str, Any]], started: float, timings: dict[str, float]
) -> dict[str, Any]:
    """One result: machine and parameters once, each build's own figures under ``builds``,
    and the summary nested by build: ``{"case": {"pure": ratio, "compiled": ratio}}``."""
    first = next(iter(results.values()))
    summary: dict[str, dict[str, float]] = {}
    for name, result in results.items():
        for key, ratio in result["summary"].items():
            summary.setdefault(key, {})[name] = ratio
    return {
        "machine": first["machine"],
        "params": {
            **first["params"],
            "builds": {name: result["build"] for name, result in results.items()},
            "build_order": "one build after the other, each in a child process of its own"
            " with its own runners; each ratio against raw (and Pyro5) of the same child",
            **timings,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "builds": {
            name: {key: value for key, value in result.items() if key not in ("machine", "params")}
            for name, result in results.items()
        },
        "summary": summary,
    }
