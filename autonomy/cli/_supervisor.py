"""Local zones: starts a zone's processes on this machine and owns their lifecycle.

Every container of every clone of every pod becomes one process, in its own session and
process group, run in ``images/<image>/`` with the node's environment. In the foreground the
launcher streams each process's output prefixed by its node name and stops them all on
SIGINT/SIGTERM/SIGHUP (SIGTERM to each group, a deadline, then SIGKILL). Detached, a small
supervisor process does the same with each node's output in a log file, and records the
zone in a state directory that ``logs``, ``list`` and ``delete`` read.

No orphans: each process gets ``PR_SET_PDEATHSIG=SIGKILL`` (Linux), so it dies with its
launcher even when the launcher is SIGKILLed; when a node's main process exits, the rest of
its process group is killed (as Docker does when a container's main process exits); and
every process carries ``AUTONOMY_LAUNCH_ID``, so strays that left their group are found in
``/proc`` and killed at the end.

It knows nothing of the wire: nodes find each other themselves (``AUTONOMY_EXPECTED_NODES``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from ._zonefile import ZoneFile, command_for

__all__ = [
    "DeploymentState",
    "LaunchError",
    "LaunchSpec",
    "NodeRecord",
    "RunResult",
    "Supervisor",
    "delete_deployment",
    "deploy_detached",
    "deploy_foreground",
    "describe_exit",
    "is_alive",
    "list_deployments",
    "load_state",
    "node_status",
    "plan",
    "print_logs",
    "process_start_time",
    "state_root",
    "supervisor_status",
    "zone_state_dir",
]

logger = logging.getLogger("autonomy.cli")

# Environment variables the launcher sets for every node.
ZONE_ENV: Final = "AUTONOMY_ZONE"
NODE_NAME_ENV: Final = "AUTONOMY_NODE_NAME"
EXPECTED_NODES_ENV: Final = "AUTONOMY_EXPECTED_NODES"
WAIT_ENV: Final = "AUTONOMY_WAIT_UNTIL_INTERRUPTED"
LAUNCH_ID_ENV: Final = "AUTONOMY_LAUNCH_ID"
"""Marks every process of one launch, so that strays can be found in /proc and killed."""
STATE_DIR_ENV: Final = "AUTONOMY_STATE_DIR"

STOP_TIMEOUT_S: Final = 10.0
"""How long a node gets to exit after SIGTERM before SIGKILL (Docker's default)."""
KILL_WAIT_S: Final = 5.0
DRAIN_S: Final = 1.0
"""How long to wait for the rest of an exited node's output before closing its pipe."""
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 8.0
MAX_RESTARTS = 5
"""Restarts in a row before giving up on a node that keeps crashing."""
RESTART_RESET_S = 60.0
"""A node that ran this long before crashing starts its restart count afresh."""
READY_TIMEOUT_S = 30.0
"""How long ``deploy --detach`` waits for the supervisor to have started every node."""
MAX_LINE_BYTES: Final = 64 * 1024

STATE_FILE: Final = "state.json"
LOGS_DIR: Final = "logs"
SUPERVISOR_LOG: Final = "supervisor.log"
STATE_VERSION: Final = 1

_PR_SET_PDEATHSIG: Final = 1


class LaunchError(Exception):
    """A zone could not be started or stopped here (already running, supervisor failed...).

    CLI-internal: ``main()`` turns it into exit status 1; it never leaves ``autonomy.cli``.
    """


# --------------------------------------------------------------------------------------------
# /proc


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


_HAVE_PROC: Final = os.path.isdir("/proc/self")


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
    return stat is not None and stat[0] not in ("Z", "X", "x") and stat[2] == start_time


def _marked_pids(launch_id: str) -> list[int]:
    """Live processes (zombies excluded) whose environment carries this launch's mark."""
    needle = f"\0{LAUNCH_ID_ENV}={launch_id}\0".encode()
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
            if stat is not None and stat[0] not in ("Z", "X", "x"):
                found.append(int(entry))
    return found


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout_s`` passes; whether it became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def _kill_marked(launch_id: str, *, grace_s: float) -> int:
    """SIGTERM, then after ``grace_s`` SIGKILL, every live process of a launch. Returns count."""
    pids = _marked_pids(launch_id)
    if not pids:
        return 0
    for pid in pids:
        _signal_pid(pid, signal.SIGTERM)
    if not _wait_until(lambda: not _marked_pids(launch_id), grace_s):
        for pid in _marked_pids(launch_id):
            _signal_pid(pid, signal.SIGKILL)
        _wait_until(lambda: not _marked_pids(launch_id), KILL_WAIT_S)
    return len(pids)


def _pdeathsig_preexec() -> Callable[[], None] | None:
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


# --------------------------------------------------------------------------------------------
# What to start


@dataclass(frozen=True)
class LaunchSpec:
    """One process to start: a node's command line, folder and environment."""

    name: str
    pod: str
    clone: int | None
    container: str
    image: str
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "argv": list(self.argv), "env": dict(self.env)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LaunchSpec:
        return cls(
            name=str(data["name"]),
            pod=str(data["pod"]),
            clone=data["clone"],
            container=str(data["container"]),
            image=str(data["image"]),
            argv=tuple(str(a) for a in data["argv"]),
            cwd=str(data["cwd"]),
            env={str(k): str(v) for k, v in data["env"].items()},
        )


def plan(
    zone: ZoneFile,
    *,
    extra_env: Mapping[str, str] | None = None,
    launch_id: str | None = None,
    base_env: Mapping[str, str] | None = None,
) -> list[LaunchSpec]:
    """The processes of a zone, with their command lines and environments.

    Each environment is, lowest precedence first: ``base_env`` (default: this process's),
    ``PYTHONUNBUFFERED=1`` and ``AUTONOMY_WAIT_UNTIL_INTERRUPTED=1``, the container's
    ``env``, the node's identity (``AUTONOMY_ZONE``, ``AUTONOMY_NODE_NAME``,
    ``AUTONOMY_EXPECTED_NODES``, ``AUTONOMY_LAUNCH_ID``), then ``extra_env`` (the launcher's
    own settings, such as the zone's secret).
    """
    base = dict(os.environ if base_env is None else base_env)
    launch_id = launch_id or secrets.token_hex(8)
    nodes = zone.nodes
    expected = ",".join(node.name for node in nodes)
    specs: list[LaunchSpec] = []
    for node in nodes:
        image_dir = zone.image_dir(node.container.image)
        identity = {
            ZONE_ENV: zone.name,
            NODE_NAME_ENV: node.name,
            EXPECTED_NODES_ENV: expected,
            LAUNCH_ID_ENV: launch_id,
        }
        for name in identity.keys() & node.container.env.keys():
            logger.warning(
                "%s: env %s is set by the launcher; the container's value is ignored",
                node.name,
                name,
            )
        env = {
            **base,
            "PYTHONUNBUFFERED": "1",
            WAIT_ENV: "1",
            **node.container.env,
            **identity,
            **(extra_env or {}),
        }
        specs.append(
            LaunchSpec(
                name=node.name,
                pod=node.pod.name,
                clone=node.clone,
                container=node.container.name,
                image=node.container.image,
                argv=tuple(command_for(image_dir, node.container.args)),
                cwd=str(image_dir),
                env=env,
            )
        )
    return specs


# --------------------------------------------------------------------------------------------
# Running them


@dataclass
class NodeRecord:
    """What is known of one node's process: the state file's entry for it."""

    name: str
    pod: str
    clone: int | None
    container: str
    image: str
    argv: list[str]
    cwd: str
    log: str | None = None
    """The node's log file, relative to the state directory (detached only)."""
    pid: int | None = None
    pgid: int | None = None
    start_time: int | None = None
    """Clock ticks since boot, from /proc/<pid>/stat: tells the process from a reused pid."""
    started_at: float | None = None
    """Wall-clock time of the last start (seconds since the epoch)."""
    state: str = "starting"
    """starting, running, restarting, exited, stopped (by us) or failed."""
    returncode: int | None = None
    restarts: int = 0
    error: str | None = None


@dataclass
class RunResult:
    """How a zone's run ended."""

    failures: list[tuple[str, str]] = field(default_factory=list)
    """(node name, what happened) of each node that failed, first failure first."""
    interrupted: bool = False
    """Whether the run ended because it was asked to stop."""
    exit_node: tuple[str, int] | None = None
    """With ``exit_with``: the node whose exit ended the run, and its return code."""

    @property
    def exit_code(self) -> int:
        if self.exit_node is not None:
            return 0 if self.exit_node[1] == 0 else 1
        return 1 if self.failures else 0


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Receives one process's output and exit; lines go to the supervisor with a prefix."""

    def __init__(self, supervisor: Supervisor, child: _Child) -> None:
        self._supervisor = supervisor
        self._child = child
        self._buffer = b""
        self.exited = asyncio.Event()
        self.drained = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE_BYTES:
            lines.append(self._buffer)
            self._buffer = b""
        if lines:
            self._supervisor._emit(self._child.record.name, lines)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if self._buffer:
            self._supervisor._emit(self._child.record.name, [self._buffer])
            self._buffer = b""
        self.drained.set()

    def process_exited(self) -> None:
        self.exited.set()


@dataclass
class _Child:
    spec: LaunchSpec
    record: NodeRecord
    transport: asyncio.SubprocessTransport | None = None
    protocol: _ChildProtocol | None = None
    started_mono: float = 0.0
    quick_restarts: int = 0

    def is_running(self) -> bool:
        return self.transport is not None and self.transport.get_returncode() is None


class Supervisor:
    """Starts a zone's processes, watches them, restarts them if asked, and stops them all.

    In the foreground (``output`` given) each line a process writes goes to ``output`` as
    ``<node> | <line>``; detached (``log_dir`` given) each process writes to
    ``log_dir/<node>.log``. ``run()`` returns when every process has ended for good, or
    after ``request_stop()``; on every way out, nothing it started is left running.
    """

    def __init__(
        self,
        specs: Sequence[LaunchSpec],
        *,
        restart: bool = False,
        output: TextIO | None = None,
        log_dir: Path | None = None,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        launch_id: str | None = None,
        on_change: Callable[[], None] | None = None,
        zone: str = "",
        exit_with: str | None = None,
    ) -> None:
        if (output is None) == (log_dir is None):
            raise ValueError("give exactly one of output and log_dir")
        self.zone = zone
        self.exit_with = exit_with
        """A node name: when that node exits, the whole zone stops (a demo, a batch job)."""
        self.restart = restart
        self.stop_timeout_s = stop_timeout_s
        self.launch_id = launch_id or _launch_id_of(specs)
        self._output = output
        self._output_broken = False
        self._log_dir = log_dir
        self._on_change = on_change
        self._children = [
            _Child(
                spec,
                NodeRecord(
                    name=spec.name,
                    pod=spec.pod,
                    clone=spec.clone,
                    container=spec.container,
                    image=spec.image,
                    argv=list(spec.argv),
                    cwd=spec.cwd,
                    log=f"{LOGS_DIR}/{spec.name}.log" if log_dir is not None else None,
                ),
            )
            for spec in specs
        ]
        self._width = max((len(spec.name) for spec in specs), default=0)
        self._result = RunResult()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._stopping = False
        self._finished = False
        self.started = asyncio.Event()
        """Set once every process has been started (or failed to start) the first time."""

    def __repr__(self) -> str:
        running = sum(1 for child in self._children if child.is_running())
        state = (
            "stopped"
            if self._finished
            else "stopping"
            if self._stopping
            else "running"
            if self.started.is_set()
            else "new"
        )
        return (
            f"<Supervisor {self.zone!r} {state} nodes={len(self._children)} "
            f"running={running} failed={len(self._result.failures)}>"
        )

    @property
    def records(self) -> list[NodeRecord]:
        """The nodes' records (live objects: copy them to keep a snapshot)."""
        return [child.record for child in self._children]

    def request_stop(self, *, force: bool = False) -> None:
        """Stop every process: SIGTERM, then SIGKILL at the deadline (or now, if ``force``).

        A second call escalates at once. Call it on the event loop (signal handlers do).
        """
        if self._stop.is_set() or force:
            self._force.set()
        self._stop.set()

    async def run(self) -> RunResult:
        """Start every process and supervise them until all have ended or a stop is asked."""
        watchers: list[asyncio.Task[None]] = []
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            for child in self._children:
                if self._stop.is_set():
                    child.record.state = "stopped"  # never started: the zone was stopped
                elif not await self._spawn(child):
                    self._fail(child, child.record.error or "could not start")
            self._changed()
            self.started.set()
            watchers = [
                asyncio.create_task(self._watch(child))
                for child in self._children
                if child.transport is not None
            ]
            remaining: set[asyncio.Future[Any]] = set(watchers)
            while remaining and not self._stop.is_set():
                done, _ = await asyncio.wait(
                    {stop_wait, *remaining}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done & remaining:
                    task.result()  # a watcher's bug ends the run (and kills all, below)
                remaining -= done
            if self._stop.is_set():
                await self._terminate(watchers)
            await asyncio.gather(*watchers)
            self._result.interrupted = self._stopping
            return self._result
        finally:
            stop_wait.cancel()
            self._stopping = True
            # Any way out (a bug, a cancellation) kills what is left, at once.
            for child in self._children:
                if child.is_running() and child.record.pid:
                    _signal_group(child.record.pid, signal.SIGKILL)
            for task in watchers:
                task.cancel()
            for child in self._children:
                if child.transport is not None:
                    child.transport.close()
                    child.transport = None
            strays = _kill_marked(self.launch_id, grace_s=1.0)
            if strays:
                logger.warning("killed %d stray process(es) left by zone %s", strays, self.zone)
            self._finished = True
            self._changed()
            await asyncio.gather(stop_wait, *watchers, return_exceptions=True)

    async def _terminate(self, watchers: Sequence[asyncio.Task[None]]) -> None:
        self._stopping = True
        live = [child for child in self._children if child.is_running()]
        for child in live:
            assert child.record.pid is not None
            _signal_group(child.record.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout_s
        pending: set[asyncio.Future[Any]] = {task for task in watchers if not task.done()}
        force_wait = asyncio.ensure_future(self._force.wait())
        try:
            while pending and not self._force.is_set() and loop.time() < deadline:
                done, _ = await asyncio.wait(
                    {force_wait, *pending},
                    timeout=deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                pending -= done
        finally:
            force_wait.cancel()
        for child in self._children:
            if child.is_running() and child.record.pid:
                if not self._force.is_set():
                    logger.warning(
                        "%s did not stop within %g s: killing it",
                        child.record.name,
                        self.stop_timeout_s,
                    )
                _signal_group(child.record.pid, signal.SIGKILL)
        pending = {task for task in watchers if not task.done()}
        if pending:
            await asyncio.wait(pending, timeout=KILL_WAIT_S)

    async def _spawn(self, child: _Child) -> bool:
        loop = asyncio.get_running_loop()
        record = child.record
        log_fd: int | None = None
        stdout = subprocess.PIPE
        if self._log_dir is not None:
            log_fd = os.open(
                self._log_dir / f"{record.name}.log",
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
            stdout = log_fd
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ChildProtocol(self, child),
                *child.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=child.spec.cwd,
                env=dict(child.spec.env),
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            record.state = "failed"
            record.error = f"could not start {shlex.join(child.spec.argv)}: {exc}"
            logger.error("%s %s", record.name, record.error)
            return False
        finally:
            if log_fd is not None:
                os.close(log_fd)
        child.transport, child.protocol = transport, protocol
        if stdout != subprocess.PIPE:
            protocol.drained.set()
        pid = transport.get_pid()
        record.pid = record.pgid = pid
        record.start_time = process_start_time(pid)
        record.started_at = time.time()
        record.state = "running"
        record.returncode = None
        child.started_mono = time.monotonic()
        logger.info("started %s (pid %d): %s", record.name, pid, shlex.join(child.spec.argv))
        return True

    async def _watch(self, child: _Child) -> None:
        record = child.record
        while True:
            assert child.transport is not None
            assert child.protocol is not None
            await child.protocol.exited.wait()
            returncode = child.transport.get_returncode()
            assert returncode is not None
            # The node's main process is gone: so is its container, whatever else ran in it.
            if record.pid:
                _signal_group(record.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.protocol.drained.wait(), DRAIN_S)
            child.transport.close()
            child.transport = None
            record.returncode = returncode
            what = describe_exit(returncode)
            if record.name == self.exit_with and not self._stopping:
                record.state = "exited" if returncode == 0 else "failed"
                self._result.exit_node = (record.name, returncode)
                (logger.info if returncode == 0 else logger.warning)(
                    "%s %s: stopping the zone", record.name, what
                )
                self._changed()
                self.request_stop()
                return
            if self._stopping:
                record.state = "stopped"
                logger.info("%s %s", record.name, what)
                self._changed()
                return
            if returncode == 0:
                record.state = "exited"
                logger.info("%s %s", record.name, what)
                self._changed()
                return
            logger.warning("%s %s", record.name, what)
            if self.restart:
                if time.monotonic() - child.started_mono >= RESTART_RESET_S:
                    child.quick_restarts = 0
                if child.quick_restarts < MAX_RESTARTS:
                    delay = min(RESTART_BACKOFF_S * 2**child.quick_restarts, RESTART_BACKOFF_MAX_S)
                    record.state = "restarting"
                    self._changed()
                    logger.warning(
                        "restarting %s in %.1f s (restart %d of at most %d in a row)",
                        record.name,
                        delay,
                        child.quick_restarts + 1,
                        MAX_RESTARTS,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    if self._stop.is_set():
                        record.state = "stopped"
                        self._changed()
                        return
                    child.quick_restarts += 1
                    record.restarts += 1
                    if await self._spawn(child):
                        if self._stopping and record.pid:  # stopped while it was starting
                            _signal_group(record.pid, signal.SIGTERM)
                        self._changed()
                        continue
                    self._fail(child, record.error or "could not start")
                    return
                what = f"{what}; gave up after {MAX_RESTARTS} restarts in a row"
                logger.error(
                    "%s keeps failing: gave up after %d restarts in a row",
                    record.name,
                    MAX_RESTARTS,
                )
            record.state = "failed"
            self._fail(child, what)
            return

    def _fail(self, child: _Child, what: str) -> None:
        child.record.state = "failed"
        self._result.failures.append((child.record.name, what))
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                logger.exception("could not record the zone's state")

    def _emit(self, name: str, lines: Sequence[bytes]) -> None:
        if self._output is None or self._output_broken:
            return
        prefix = f"{name:<{self._width}} | "
        text = "".join(
            prefix + line.decode("utf-8", "replace").rstrip("\r") + "\n" for line in lines
        )
        try:
            self._output.write(text)
            self._output.flush()
        except (BrokenPipeError, ValueError, OSError):
            # Nobody reads our output any more: keep the zone running, drop the lines.
            self._output_broken = True


def _launch_id_of(specs: Sequence[LaunchSpec]) -> str:
    ids = {spec.env.get(LAUNCH_ID_ENV) for spec in specs}
    if len(ids) == 1 and (only := ids.pop()):
        return only
    raise ValueError(f"every spec must carry the same {LAUNCH_ID_ENV}")


async def _run_with_signals(supervisor: Supervisor, *, announce: bool) -> RunResult:
    """Run ``supervisor`` with SIGINT, SIGTERM and SIGHUP asking it to stop (twice: kill)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if announce:
            name = signal.Signals(signum).name
            if supervisor._stop.is_set():
                logger.warning("%s again: killing zone %s", name, supervisor.zone)
            else:
                logger.info("%s: stopping zone %s (again to kill at once)", name, supervisor.zone)
        supervisor.request_stop()

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await supervisor.run()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def deploy_foreground(
    zone: ZoneFile,
    *,
    restart: bool = False,
    extra_env: Mapping[str, str] | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    output: TextIO | None = None,
    exit_with: str | None = None,
) -> RunResult:
    """Run a zone here until every process has ended or a signal stops them all.

    With ``exit_with`` (a node name, or a part of one naming exactly one node), that node
    returns once its ``main`` does (AUTONOMY_WAIT_UNTIL_INTERRUPTED=0), and its exit stops
    the zone: the run's exit code is then 0 if it succeeded.

    Raises:
        LaunchError: the zone is already running detached, or ``exit_with`` names no node
            (or several).
    """
    existing = load_state(zone.name)
    if existing is not None and existing.is_active():
        raise LaunchError(
            f"zone {zone.name} is already running detached (supervisor pid "
            f"{existing.supervisor_pid}): run `autonomy zone delete --zone {zone.name}` first"
        )
    launch_id = secrets.token_hex(8)
    specs = plan(zone, extra_env=extra_env, launch_id=launch_id)
    exit_name = None
    if exit_with is not None:
        named = [s.name for s in specs if s.name == exit_with] or [
            s.name for s in specs if exit_with in s.name
        ]
        if len(named) != 1:
            raise LaunchError(
                f"--exit-with {exit_with!r} must name one node of {[s.name for s in specs]}"
            )
        exit_name = named[0]
        specs = [
            dataclasses.replace(s, env={**s.env, "AUTONOMY_WAIT_UNTIL_INTERRUPTED": "0"})
            if s.name == exit_name
            else s
            for s in specs
        ]
    supervisor = Supervisor(
        specs,
        restart=restart,
        output=output or sys.stdout,
        stop_timeout_s=stop_timeout_s,
        launch_id=launch_id,
        zone=zone.name,
        exit_with=exit_name,
    )
    logger.info(
        "deploying zone %s from %s: %d node(s); Ctrl-C stops it", zone.name, zone.dir, len(specs)
    )
    return asyncio.run(_run_with_signals(supervisor, announce=True))


# --------------------------------------------------------------------------------------------
# Detached zones: the state directory


def state_root() -> Path:
    """``$AUTONOMY_STATE_DIR``, else ``$XDG_STATE_HOME/autonomy``, else ~/.local/state/autonomy."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "autonomy"


def zone_state_dir(zone: str) -> Path:
    """Where a detached zone's state and logs live: ``<state root>/zones/<zone>/``."""
    if not zone or "/" in zone or zone in (".", "..") or "\0" in zone:
        raise ValueError(f"invalid zone name {zone!r}")
    return state_root() / "zones" / zone


def list_deployments() -> list[str]:
    """The names of the zones that have a state directory here."""
    root = state_root() / "zones"
    try:
        return sorted(p.name for p in root.iterdir() if (p / STATE_FILE).exists())
    except OSError:
        return []


@dataclass
class DeploymentState:
    """A detached zone, as its state file records it."""

    zone: str
    zone_dir: str
    zone_file: str
    launch_id: str
    restart: bool
    created: float
    supervisor_pid: int | None = None
    supervisor_start_time: int | None = None
    supervisor_state: str = "starting"
    """starting, running, stopping or stopped."""
    nodes: list[NodeRecord] = field(default_factory=list)
    version: int = STATE_VERSION
    dir: Path = field(default=Path(), compare=False)
    """The state directory (not stored in the file)."""

    def supervisor_alive(self) -> bool:
        return is_alive(self.supervisor_pid, self.supervisor_start_time)

    def live_nodes(self) -> list[NodeRecord]:
        return [n for n in self.nodes if is_alive(n.pid, n.start_time)]

    def is_active(self) -> bool:
        """Whether anything of this deployment still runs."""
        return (
            self.supervisor_alive() or bool(self.live_nodes()) or bool(_marked_pids(self.launch_id))
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["dir"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> DeploymentState:
        fields = {f.name for f in dataclasses.fields(NodeRecord)}
        nodes = [
            NodeRecord(**{k: v for k, v in n.items() if k in fields}) for n in data.get("nodes", [])
        ]
        known = {f.name for f in dataclasses.fields(cls)} - {"nodes", "dir"}
        return cls(**{k: v for k, v in data.items() if k in known}, nodes=nodes, dir=directory)

    def write(self) -> None:
        """Replace the state file atomically (readers never see half a file)."""
        path = self.dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def load_state(zone: str) -> DeploymentState | None:
    """A detached zone's state, or None if it has none here.

    Raises:
        LaunchError: the state file exists but cannot be read.
    """
    directory = zone_state_dir(zone)
    path = directory / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return DeploymentState.from_json(data, directory)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LaunchError(
            f"{path}: unreadable state ({exc}); remove {directory} by hand "
            "after checking that none of its processes runs"
        ) from exc


def supervisor_status(state: DeploymentState) -> str:
    """running / stopping / stopped / gone (it died without recording its end)."""
    if state.supervisor_alive():
        return "stopping" if state.supervisor_state == "stopping" else "running"
    return "stopped" if state.supervisor_state == "stopped" else "gone"


def node_status(state: DeploymentState, node: NodeRecord) -> str:
    """What a node is doing now, checked against /proc where the record says it runs."""
    if node.state in ("running", "starting"):
        if is_alive(node.pid, node.start_time):
            return "running"
        started = process_start_time(node.pid) if node.pid else None
        if started is not None and started != node.start_time:
            return f"lost (pid {node.pid} is now another process)"
        return "lost (its process is gone)"
    if node.state == "restarting":
        return "restarting" if state.supervisor_alive() else "lost (was restarting)"
    if node.error and node.returncode is None:
        return f"failed: {node.error}"
    if node.returncode is None:
        return node.state
    what = describe_exit(node.returncode)
    if node.state == "stopped":
        return f"stopped ({what})"
    if node.state == "failed":
        return f"failed ({what})"
    return what


_DAEMON_BOOT: Final = (
    "import sys; sys.path.insert(0, {path!r}); "
    "from autonomy.cli._supervisor import _daemon_main; "
    "sys.exit(_daemon_main(int(sys.argv[1])))"
)


def deploy_detached(
    zone: ZoneFile,
    *,
    restart: bool = False,
    extra_env: Mapping[str, str] | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> DeploymentState:
    """Start a zone in the background under a supervisor process; return its state.

    Returns once every node has been started. The nodes' environments reach the supervisor
    through a pipe, never the disk.

    Raises:
        LaunchError: the zone already runs, or its supervisor failed to start.
    """
    directory = zone_state_dir(zone.name)
    existing = load_state(zone.name)
    if existing is not None:
        if existing.is_active():
            raise LaunchError(
                f"zone {zone.name} is already deployed (supervisor pid "
                f"{existing.supervisor_pid}): run `autonomy zone delete --zone {zone.name}` "
                "first"
            )
        logger.info("replacing the stale state of zone %s in %s", zone.name, directory)
    if directory.exists():
        shutil.rmtree(directory)
    (directory / LOGS_DIR).mkdir(parents=True, mode=0o700)
    directory.chmod(0o700)
    launch_id = secrets.token_hex(8)
    specs = plan(zone, extra_env=extra_env, launch_id=launch_id)
    payload = json.dumps(
        {
            "state_dir": str(directory),
            "zone": zone.name,
            "zone_dir": str(zone.dir),
            "zone_file": str(zone.path),
            "launch_id": launch_id,
            "restart": restart,
            "stop_timeout_s": stop_timeout_s,
            "specs": [spec.to_json() for spec in specs],
        }
    ).encode()
    package_parent = str(Path(__file__).resolve().parents[2])
    read_fd, write_fd = os.pipe()
    try:
        with open(directory / SUPERVISOR_LOG, "ab") as log:
            first = subprocess.Popen(
                [sys.executable, "-c", _DAEMON_BOOT.format(path=package_parent), str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                pass_fds=(write_fd,),
                cwd=directory,
                start_new_session=True,
            )
        os.close(write_fd)
        write_fd = -1
        try:
            # The first process forks the supervisor and exits: the supervisor is nobody's child.
            first.communicate(payload, timeout=READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
        pid, outcome = _read_ready(read_fd, READY_TIMEOUT_S)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    if outcome != "ok":
        if pid is not None:
            _signal_pid(pid, signal.SIGKILL)
        _kill_marked(launch_id, grace_s=1.0)
        raise LaunchError(
            f"the supervisor of zone {zone.name} failed to start ({outcome}): "
            f"see {directory / SUPERVISOR_LOG}"
        )
    state = load_state(zone.name)
    if state is None:
        raise LaunchError(f"zone {zone.name} started but left no state in {directory}")
    return state


def _read_ready(fd: int, timeout_s: float) -> tuple[int | None, str]:
    """Read the supervisor's ``pid N`` and ``ok``/``error ...`` lines from the ready pipe."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome = "no answer in time"
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            outcome = "it exited"
            break
        data += chunk
        if b"\nok\n" in data or b"\nerror" in data:
            outcome = (
                "ok"
                if b"\nok\n" in data
                else data.split(b"\nerror", 1)[1].decode("utf-8", "replace").strip() or "error"
            )
            break
    pid: int | None = None
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("pid "):
            with contextlib.suppress(ValueError):
                pid = int(line[4:])
    return pid, outcome


def _daemon_main(ready_fd: int) -> int:
    """The detached supervisor's entry point (run by ``deploy_detached``, never by hand)."""
    payload = json.loads(sys.stdin.buffer.read())
    if os.fork():
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    ready = os.fdopen(ready_fd, "w")
    ready.write(f"pid {os.getpid()}\n")
    ready.flush()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return asyncio.run(_daemon(payload, ready))
    except Exception as exc:
        logger.exception("the supervisor failed")
        with contextlib.suppress(OSError, ValueError):
            ready.write(f"error {exc}\n")
            ready.close()
        return 1


async def _daemon(payload: Mapping[str, Any], ready: TextIO) -> int:
    directory = Path(payload["state_dir"])
    specs = [LaunchSpec.from_json(spec) for spec in payload["specs"]]
    state = DeploymentState(
        zone=payload["zone"],
        zone_dir=payload["zone_dir"],
        zone_file=payload["zone_file"],
        launch_id=payload["launch_id"],
        restart=bool(payload["restart"]),
        created=time.time(),
        supervisor_pid=os.getpid(),
        supervisor_start_time=process_start_time(os.getpid()),
        dir=directory,
    )
    supervisor = Supervisor(
        specs,
        restart=state.restart,
        log_dir=directory / LOGS_DIR,
        stop_timeout_s=float(payload["stop_timeout_s"]),
        launch_id=state.launch_id,
        zone=state.zone,
    )

    def record() -> None:
        state.nodes = [dataclasses.replace(r) for r in supervisor.records]
        if supervisor._stopping and state.supervisor_state == "running":
            state.supervisor_state = "stopping"
        state.write()

    supervisor._on_change = record
    state.nodes = [dataclasses.replace(r) for r in supervisor.records]
    state.write()
    logger.info("supervising zone %s (%d node(s))", state.zone, len(specs))
    run = asyncio.ensure_future(_run_with_signals(supervisor, announce=False))
    started = asyncio.ensure_future(supervisor.started.wait())
    await asyncio.wait({run, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    state.supervisor_state = "running"
    record()
    ready.write("ok\n")
    ready.close()
    result = await run
    state.supervisor_state = "stopped"
    record()
    logger.info("zone %s ended%s", state.zone, " (stopped)" if result.interrupted else "")
    return result.exit_code


def delete_deployment(zone: str, *, stop_timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop every process of a detached zone and remove its state; False if it had none.

    The supervisor is asked first (it stops the nodes: SIGTERM, deadline, SIGKILL); then any
    node still alive (checked by pid *and* start time) has its group killed, and any process
    still carrying the launch's mark is killed, before the state directory goes.
    """
    directory = zone_state_dir(zone)
    try:
        state = load_state(zone)
    except LaunchError:
        logger.warning("zone %s: unreadable state; removing %s", zone, directory)
        shutil.rmtree(directory, ignore_errors=True)
        return True
    if state is None:
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            return True
        return False
    if state.supervisor_alive():
        supervisor = state
        assert supervisor.supervisor_pid is not None
        _signal_pid(supervisor.supervisor_pid, signal.SIGTERM)
        gone = _wait_until(lambda: not supervisor.supervisor_alive(), stop_timeout_s + KILL_WAIT_S)
        if not gone:
            logger.warning("the supervisor of zone %s did not stop: killing it", zone)
            _signal_pid(supervisor.supervisor_pid, signal.SIGKILL)
            _wait_until(lambda: not supervisor.supervisor_alive(), KILL_WAIT_S)
        with contextlib.suppress(LaunchError):
            state = load_state(zone) or state  # its last word: the nodes' latest pids
    final = state
    live = final.live_nodes()
    for node in live:
        assert node.pid is not None
        logger.warning("%s is still running: stopping it", node.name)
        _signal_group(node.pid, signal.SIGTERM)
    if live and not _wait_until(lambda: not final.live_nodes(), stop_timeout_s):
        for node in final.live_nodes():
            assert node.pid is not None
            _signal_group(node.pid, signal.SIGKILL)
        _wait_until(lambda: not final.live_nodes(), KILL_WAIT_S)
    strays = _kill_marked(state.launch_id, grace_s=min(stop_timeout_s, 2.0))
    if strays:
        logger.warning("killed %d stray process(es) of zone %s", strays, zone)
    shutil.rmtree(directory, ignore_errors=True)
    return True


# --------------------------------------------------------------------------------------------
# Logs


def _log_path(state: DeploymentState, node: NodeRecord) -> Path:
    return state.dir / (node.log or f"{LOGS_DIR}/{node.name}.log")


def _lines_of(data: bytes) -> Iterator[str]:
    for line in data.split(b"\n"):
        yield line.decode("utf-8", "replace").rstrip("\r")


def print_logs(
    state: DeploymentState,
    nodes: Sequence[NodeRecord],
    out: TextIO,
    *,
    follow: bool = False,
    poll_s: float = 0.2,
) -> None:
    """Print the nodes' logs, each line prefixed by its node's name; follow them if asked.

    Following ends when the zone has ended (its supervisor and nodes are gone) or its state
    was deleted, after the last lines are printed.
    """
    width = max((len(node.name) for node in nodes), default=0)
    offsets = {node.name: 0 for node in nodes}
    partial = {node.name: b"" for node in nodes}

    def drain(final: bool) -> None:
        for node in nodes:
            try:
                with open(_log_path(state, node), "rb") as file:
                    if os.fstat(file.fileno()).st_size < offsets[node.name]:
                        offsets[node.name] = 0  # truncated or replaced: start again
                    file.seek(offsets[node.name])
                    data = file.read()
            except FileNotFoundError:
                data = b""
            offsets[node.name] += len(data)
            buffer = partial[node.name] + data
            if final:
                if not buffer:
                    continue
                complete, rest = buffer.removesuffix(b"\n"), b""
            else:
                complete, newline, rest = buffer.rpartition(b"\n")
                if not newline:
                    partial[node.name] = buffer
                    continue
            partial[node.name] = rest
            prefix = f"{node.name:<{width}} | "
            out.write("".join(prefix + line + "\n" for line in _lines_of(complete)))
        out.flush()

    if not follow:
        drain(final=True)
        return
    while True:
        try:
            current = load_state(state.zone) if state.dir.exists() else None
        except LaunchError:
            current = None
        ended = current is None or not (current.supervisor_alive() or current.live_nodes())
        drain(final=ended)
        if ended:
            return
        time.sleep(poll_s)
