"""Helpers shared by the benchmark modules: the event loop, statistics, child processes,
resident-memory readings and the facts about this machine that go into the JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The directory that holds ``benchmarks/`` (children run with it as cwd and on sys.path)."""

T0_VARIABLE = "BENCH_T0"
"""The benchmark's start on the monotonic clock (shared by every process on this machine):
a build's child process counts its progress seconds from the parent's start."""

T0 = float(os.environ.get(T0_VARIABLE) or time.monotonic())
_prefix = ""


def set_progress_prefix(prefix: str) -> None:
    """Start every later progress line with ``prefix`` (a build's child names its build)."""
    global _prefix
    _prefix = f"{prefix}: " if prefix else ""


def progress(message: str) -> None:
    """One progress line on stderr, with seconds since the benchmark started."""
    print(f"[{time.monotonic() - T0:6.1f}s] {_prefix}{message}", file=sys.stderr, flush=True)


def loop_factory(use_uvloop: bool) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop both sides run on: uvloop when installed and wanted, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '?')}"
    return None, "asyncio"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    middle = n // 2
    return ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def when_stdin_closes(callback: Callable[[], None]) -> None:
    """Call ``callback`` on the running loop once our stdin reaches its end: the parent
    that holds its other end is gone, however it ended."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)

    def on_stdin() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            callback()

    loop.add_reader(fd, on_stdin)


def latency_sample(latencies_ns: list[int]) -> dict[str, Any]:
    """A latency sample from round trips in ns: p50, p99 and mean in µs, and the count."""
    latencies_ns.sort()
    n = len(latencies_ns)

    def pct(q: float) -> float:
        return latencies_ns[min(n - 1, int(n * q / 100))] / 1000

    return {
        "p50_us": pct(50),
        "p99_us": pct(99),
        "mean_us": sum(latencies_ns) / n / 1000,
        "count": n,
    }


# -- memory -----------------------------------------------------------------------------------


def _status_kb(pid: int | str, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kb(pid: int | str = "self") -> int:
    """Resident set size now, in KiB."""
    return _status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int | str = "self") -> int:
    """The highest resident set size the process has had (``VmHWM``), in KiB."""
    return _status_kb(pid, "VmHWM")


# -- child processes ----------------------------------------------------------------------------


@dataclass
class Child:
    """A child Python process started in its own session (so its whole group can be killed)."""

    process: asyncio.subprocess.Process
    hello: dict[str, Any]
    """The JSON object the child printed as its first line (its endpoint, pid, ...)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read_json(self, timeout_s: float) -> dict[str, Any]:
        """The next JSON line the child prints on stdout."""
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
            if not line:
                raise RuntimeError(
                    f"child {self.pid} closed its stdout (exit {self.process.returncode})"
                )
            text = line.decode().strip()
            if text.startswith("{"):
                return json.loads(text)  # type: ignore[no-any-return]

    async def stop(self, grace_s: float = 3.0) -> None:
        """Close its stdin (it exits gracefully), then kill its process group if need be."""
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        if process.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), grace_s)
        kill_group(process)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), grace_s)


def kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the child's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def spawn(
    module: str, *args: str, env: dict[str, str] | None = None, timeout_s: float = 30.0
) -> Child:
    """Start ``python -m module args`` in its own session; wait for its first JSON line.

    The child inherits our stderr (its tracebacks show up with our progress lines), reads
    stdin only to notice that we closed it, and prints JSON lines on stdout. It imports
    ``benchmarks`` and ``autonomy`` from `PACKAGE_ROOT`, unless ``PYTHONPATH`` already names
    it: then its order stands, so that a build's copy of ``autonomy`` put before it (with
    ``PYTHONSAFEPATH``, which keeps the cwd off ``sys.path``) is the one every child imports.
    """
    child_env = {**os.environ, **(env or {})}
    paths = [path for path in child_env.get("PYTHONPATH", "").split(os.pathsep) if path]
    if str(PACKAGE_ROOT) not in paths:
        paths.insert(0, str(PACKAGE_ROOT))
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=PACKAGE_ROOT,
        env=child_env,
        start_new_session=True,
    )
    child = Child(process, {})
    try:
        child.hello = await child.read_json(timeout_s)
    except BaseException:
        kill_group(process)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), 3.0)
        raise
    return child


# -- the benchmark's zone ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mesh:
    """The zone every node of one benchmark run joins: a fresh name and secret (given to the
    children in their environment, never written to the user's config), no mDNS (everyone
    dials endpoints), and a CURVE keypair for the raw server of the CURVE cases."""

    zone: str
    secret: str
    raw_server_public: bytes
    raw_server_secret: bytes

    @classmethod
    def fresh(cls) -> Mesh:
        import secrets

        import zmq

        public, secret = zmq.curve_keypair()
        return cls(f"bench-{secrets.token_hex(4)}", secrets.token_urlsafe(32), public, secret)

    def env(self) -> dict[str, str]:
        return {
            "AUTONOMY_ZONE": self.zone,
            "AUTONOMY_ZONE_SECRET": self.secret,
            "AUTONOMY_DISCOVERY": "0",
            "BENCH_RAW_CURVE_SECRET": self.raw_server_secret.decode(),
        }


# -- machine facts ---------------------------------------------------------------------------


def machine_info(loop_name: str) -> dict[str, Any]:
    import msgpack
    import zmq

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        from importlib.metadata import version

        autonomy_version = version("autonomy")
    except Exception:
        autonomy_version = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "loop": loop_name,
        "autonomy": autonomy_version,
    }
