"""Processes on this machine: /proc, signals, parent-death signals, process groups, strays.

What the launcher needs to start a node so that it cannot outlive its launcher, to tell a
process from a later one that reused its pid, and to find and kill the processes of a launch
that left their process group (each carries its launch's ``AUTONOMY_LAUNCH_ID``); and to run
a short command to its end, bounded (removing a container). Nothing here knows of zones or
nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from autonomy._config import Env

__all__ = [
    "KILL_WAIT_S",
    "describe_exit",
    "is_alive",
    "kill_marked",
    "marked_pids",
    "pdeathsig_preexec",
    "process_start_time",
    "run_quietly",
    "run_quietly_async",
    "signal_group",
    "signal_pid",
    "wait_until",
]

KILL_WAIT_S: Final = 5.0
"""How long to wait for processes to be gone after SIGKILL."""

_PR_SET_PDEATHSIG: Final = 1
_HAVE_PROC: Final = os.path.isdir("/proc/self")
_DEAD_STATES: Final = ("Z", "X", "x")
"""/proc/<pid>/stat states of a process that is gone but not yet reaped (zombie, dead)."""


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks since boot) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, from /proc/<pid>/stat), or None."""
    stat = _proc_stat(pid)
    return stat[2] if stat else None


def is_alive(pid: int | None, start_time: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time`` and not a zombie.

    Without /proc (not Linux) a reused pid cannot be told apart: any process of that pid
    counts.
    """
    if not pid:
        return False
    if not _HAVE_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if start_time is None:
        return False
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in _DEAD_STATES and stat[2] == start_time


def marked_pids(launch_id: str) -> list[int]:
    """Live processes (zombies excluded) whose environment carries this launch's mark."""
    needle = f"\0{Env.LAUNCH_ID.value}={launch_id}\0".encode()
    me = os.getpid()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                environ = b"\0" + file.read()
        except OSError:
            continue
        if needle in environ:
            stat = _proc_stat(int(entry))
            if stat is not None and stat[0] not in _DEAD_STATES:
                found.append(int(entry))
    return found


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; whether it was delivered."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_pid(pid: int, sig: int) -> bool:
    """Send ``sig`` to one process; whether it was delivered."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout_s`` passes; whether it became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def kill_marked(launch_id: str, *, grace_s: float) -> int:
    """SIGTERM, then after ``grace_s`` SIGKILL, every live process of a launch. Returns count."""
    pids = marked_pids(launch_id)
    if not pids:
        return 0
    for pid in pids:
        signal_pid(pid, signal.SIGTERM)
    if not wait_until(lambda: not marked_pids(launch_id), grace_s):
        for pid in marked_pids(launch_id):
            signal_pid(pid, signal.SIGKILL)
        wait_until(lambda: not marked_pids(launch_id), KILL_WAIT_S)
    return len(pids)


def run_quietly(argv: Sequence[str], env: Mapping[str, str] | None, timeout_s: float) -> bool:
    """Run a command to its end, its output discarded, killed after ``timeout_s``; whether it
    ran and exited with 0 (a command that cannot start is no error here)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            timeout=timeout_s,
            check=False,
        )
        return done.returncode == 0
    return False


async def run_quietly_async(
    argv: Sequence[str], env: Mapping[str, str] | None, timeout_s: float
) -> bool:
    """`run_quietly` on the event loop: the command is killed after ``timeout_s``, or when the
    caller is cancelled."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )
    except OSError:
        return False
    try:
        async with asyncio.timeout(timeout_s):
            return await process.wait() == 0
    except TimeoutError:
        return False
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the child die (SIGKILL) with this thread, on Linux only.

    SIGKILL, not SIGTERM: this fires only when the launcher died without stopping its
    children (it was SIGKILLed or crashed), and then nothing is left to escalate.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def describe_exit(returncode: int) -> str:
    """``exited with status 3`` or ``was killed by signal 9 (SIGKILL)``."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"was killed by signal {-returncode}"
    return f"was killed by signal {-returncode} ({name})"
