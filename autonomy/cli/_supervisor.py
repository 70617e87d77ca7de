"""The supervisor: starts a zone's processes, watches them, restarts them if asked, stops them all.

Every node becomes one process in its own session and process group, run in
``images/<image>/`` with the environment its `LaunchSpec` gives. In the foreground
(`deploy_foreground`) the supervisor streams each process's output prefixed by its node
name and stops them all on SIGINT/SIGTERM/SIGHUP (SIGTERM to each group, a deadline, then
SIGKILL); the detached daemon (``_detached``) runs the same `Supervisor` with each node's
output in a log file.

No orphans: each process gets ``PR_SET_PDEATHSIG=SIGKILL`` (Linux), so it dies with its
launcher even when the launcher is SIGKILLed; when a node's main process exits, the rest of
its process group is killed (as Docker does when a container's main process exits); and
every process carries ``AUTONOMY_LAUNCH_ID``, so strays that left their group are found in
``/proc`` and killed at the end. A container that is not a node runs under docker or podman,
whose container outlives a killed client: its ``stop_argv`` (``docker rm --force``) runs
whenever its process has ended.

It knows nothing of the wire: nodes find each other themselves (``AUTONOMY_EXPECTED_NODES``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from autonomy._config import Env

from ._plan import LaunchSpec, plan
from ._processes import (
    KILL_WAIT_S,
    describe_exit,
    kill_marked,
    pdeathsig_preexec,
    process_start_time,
    run_quietly,
    run_quietly_async,
    signal_group,
)
from ._text import brief_list
from ._zonefile import ZoneFile

__all__ = [
    "NodeRecord",
    "NodeState",
    "RunResult",
    "STOP_TIMEOUT_S",
    "Supervisor",
    "SupervisorState",
    "deploy_foreground",
    "run_with_signals",
]

logger = logging.getLogger("autonomy.cli")

STOP_TIMEOUT_S: Final = 10.0
"""How long a node gets to exit after SIGTERM before SIGKILL (Docker's default)."""
DRAIN_S: Final = 1.0
"""How long to wait for the rest of an exited node's output before closing its pipe."""
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 8.0
MAX_RESTARTS = 5
"""Restarts in a row before giving up on a node that keeps crashing."""
RESTART_RESET_S = 60.0
"""A node that ran this long before crashing starts its restart count afresh."""
MAX_LINE_BYTES: Final = 64 * 1024
CLEANUP_TIMEOUT_S: Final = 15.0
"""How long a process's ``stop_argv`` (removing a container) may take."""


class NodeState(enum.StrEnum):
    """Where a node's process is in its life, as its record (and the state file) says."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    """It crashed; the supervisor starts it again after a delay."""
    EXITED = "exited"
    """It ended by itself, with status 0 (or, for ``--exit-with``'s node, any status)."""
    STOPPED = "stopped"
    """The supervisor stopped it (or never started it: the zone was being stopped)."""
    FAILED = "failed"
    """It could not start, or crashed and is not restarted."""


class SupervisorState(enum.StrEnum):
    """Where a supervisor is in its run (the state file records it for a detached zone)."""

    STARTING = "starting"
    RUNNING = "running"
    """Every node has been started (or failed to start) once."""
    STOPPING = "stopping"
    STOPPED = "stopped"


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
    """The node's log file, relative to the folder that holds ``log_dir`` (the detached
    zone's state directory); None in the foreground."""
    pid: int | None = None
    pgid: int | None = None
    start_time: int | None = None
    """Clock ticks since boot, from /proc/<pid>/stat: tells the process from a reused pid."""
    started_at: float | None = None
    """Wall-clock time of the last start (seconds since the epoch)."""
    state: NodeState = NodeState.STARTING
    returncode: int | None = None
    restarts: int = 0
    error: str | None = None
    is_node: bool = True
    """False for a container that is not a node (``zone list`` asks nodes only)."""
    stop_argv: list[str] = field(default_factory=list)
    """What removes its container, should the process be gone and the container not."""

    def __post_init__(self) -> None:
        self.state = NodeState(self.state)  # from a state file: a plain str


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
    """Receives one process's output and exit; hands whole lines to ``emit``."""

    def __init__(self, emit: Callable[[Sequence[bytes]], None]) -> None:
        self._emit = emit
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
            self._emit(lines)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if self._buffer:
            self._emit([self._buffer])
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
    needs_cleanup: bool = False
    """Its process ran, and its ``stop_argv`` has not run since."""

    def is_running(self) -> bool:
        return self.transport is not None and self.transport.get_returncode() is None


class Supervisor:
    """Starts a zone's processes, watches them, restarts them if asked, and stops them all.

    In the foreground (``output`` given) each line a process writes goes to ``output`` as
    ``<node> | <line>``; detached (``log_dir`` given) each process writes to
    ``log_dir/<node>.log``. ``run()`` returns when every process has ended for good, or
    after ``request_stop()``; on every way out, nothing it started is left running.
    ``on_change`` is called after each change of a node's record or of the supervisor's
    state (the detached daemon writes its state file then).
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
                    log=f"{log_dir.name}/{spec.name}.log" if log_dir is not None else None,
                    is_node=spec.is_node,
                    stop_argv=list(spec.stop_argv),
                ),
            )
            for spec in specs
        ]
        self._width = max((len(spec.name) for spec in specs), default=0)
        self._result = RunResult()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._state = SupervisorState.STARTING
        self.started = asyncio.Event()
        """Set once every process has been started (or failed to start) the first time."""

    def __repr__(self) -> str:
        running = sum(1 for child in self._children if child.is_running())
        return (
            f"<Supervisor {self.zone!r} {self._state} nodes={len(self._children)} "
            f"running={running} failed={len(self._result.failures)}>"
        )

    @property
    def state(self) -> SupervisorState:
        """Starting, running (every node started once), stopping, or stopped (run() ended)."""
        return self._state

    @property
    def stop_requested(self) -> bool:
        """Whether `request_stop` was called (or the ``exit_with`` node exited)."""
        return self._stop.is_set()

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

    def _is_stopping(self) -> bool:
        return self._state in (SupervisorState.STOPPING, SupervisorState.STOPPED)

    async def run(self) -> RunResult:
        """Start every process and supervise them until all have ended or a stop is asked."""
        watchers: list[asyncio.Task[None]] = []
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            for child in self._children:
                if self._stop.is_set():
                    child.record.state = NodeState.STOPPED  # never started: the zone was stopped
                elif not await self._spawn(child):
                    self._fail(child, child.record.error or "could not start")
            self._state = SupervisorState.RUNNING
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
            self._result.interrupted = self._is_stopping()
            return self._result
        finally:
            stop_wait.cancel()
            self._state = SupervisorState.STOPPING
            # Any way out (a bug, a cancellation) kills what is left, at once.
            for child in self._children:
                if child.is_running() and child.record.pid:
                    signal_group(child.record.pid, signal.SIGKILL)
            for task in watchers:
                task.cancel()
            for child in self._children:
                if child.transport is not None:
                    child.transport.close()
                    child.transport = None
            for child in self._children:
                if child.needs_cleanup:  # its watcher was cancelled before it could
                    child.needs_cleanup = False
                    run_quietly(child.spec.stop_argv, child.spec.env, CLEANUP_TIMEOUT_S)
            strays = kill_marked(self.launch_id, grace_s=1.0)
            if strays:
                logger.warning("killed %d stray process(es) left by zone %s", strays, self.zone)
            self._state = SupervisorState.STOPPED
            self._changed()
            await asyncio.gather(stop_wait, *watchers, return_exceptions=True)

    async def _terminate(self, watchers: Sequence[asyncio.Task[None]]) -> None:
        self._state = SupervisorState.STOPPING
        live = [child for child in self._children if child.is_running()]
        for child in live:
            assert child.record.pid is not None
            signal_group(child.record.pid, signal.SIGTERM)
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
                signal_group(child.record.pid, signal.SIGKILL)
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
        emit = functools.partial(self._emit, record.name)
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ChildProtocol(emit),
                *child.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=child.spec.cwd,
                env=dict(child.spec.env),
                start_new_session=True,
                preexec_fn=pdeathsig_preexec(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            record.state = NodeState.FAILED
            record.error = f"could not start {shlex.join(child.spec.argv)}: {exc}"
            logger.error("%s %s", record.name, record.error)
            return False
        finally:
            if log_fd is not None:
                os.close(log_fd)
        child.transport, child.protocol = transport, protocol
        child.needs_cleanup = bool(child.spec.stop_argv)
        if stdout != subprocess.PIPE:
            protocol.drained.set()
        pid = transport.get_pid()
        record.pid = record.pgid = pid
        record.start_time = process_start_time(pid)
        record.started_at = time.time()
        record.state = NodeState.RUNNING
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
                signal_group(record.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.protocol.drained.wait(), DRAIN_S)
            child.transport.close()
            child.transport = None
            await _clean_up(child)
            record.returncode = returncode
            what = describe_exit(returncode)
            if record.name == self.exit_with and not self._is_stopping():
                record.state = NodeState.EXITED if returncode == 0 else NodeState.FAILED
                self._result.exit_node = (record.name, returncode)
                (logger.info if returncode == 0 else logger.warning)(
                    "%s %s: stopping the zone", record.name, what
                )
                self._changed()
                self.request_stop()
                return
            if self._is_stopping():
                record.state = NodeState.STOPPED
                logger.info("%s %s", record.name, what)
                self._changed()
                return
            if returncode == 0:
                record.state = NodeState.EXITED
                logger.info("%s %s", record.name, what)
                self._changed()
                return
            logger.warning("%s %s", record.name, what)
            if self.restart:
                if time.monotonic() - child.started_mono >= RESTART_RESET_S:
                    child.quick_restarts = 0
                if child.quick_restarts < MAX_RESTARTS:
                    delay = min(RESTART_BACKOFF_S * 2**child.quick_restarts, RESTART_BACKOFF_MAX_S)
                    record.state = NodeState.RESTARTING
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
                        record.state = NodeState.STOPPED
                        self._changed()
                        return
                    child.quick_restarts += 1
                    record.restarts += 1
                    if await self._spawn(child):
                        if self._is_stopping() and record.pid:  # stopped while it was starting
                            signal_group(record.pid, signal.SIGTERM)
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
            record.state = NodeState.FAILED
            self._fail(child, what)
            return

    def _fail(self, child: _Child, what: str) -> None:
        child.record.state = NodeState.FAILED
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


async def _clean_up(child: _Child) -> None:
    """Run a process's ``stop_argv`` (``docker rm --force``), bounded; a failure is logged."""
    if child.needs_cleanup:
        argv = child.spec.stop_argv
        if not await run_quietly_async(argv, child.spec.env, CLEANUP_TIMEOUT_S):
            logger.debug("%s: %s failed or found nothing", child.record.name, shlex.join(argv))
        child.needs_cleanup = False


def _launch_id_of(specs: Sequence[LaunchSpec]) -> str:
    ids = {spec.launch_id for spec in specs}
    if len(ids) == 1 and (only := ids.pop()):
        return only
    raise ValueError(f"every spec must carry the same {Env.LAUNCH_ID.value}")


async def run_with_signals(supervisor: Supervisor, *, announce: bool) -> RunResult:
    """Run ``supervisor`` with SIGINT, SIGTERM and SIGHUP asking it to stop (twice: kill)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if announce:
            name = signal.Signals(signum).name
            if supervisor.stop_requested:
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
    nodes: Sequence[str] | None = None,
    bind: str | None = None,
) -> RunResult:
    """Run a zone (or the share of it ``nodes`` names, bound to ``bind``: see `plan`) here
    until every process has ended or a signal stops them all.

    With ``exit_with`` (a node's name), that node returns once its ``main`` does
    (AUTONOMY_WAIT_UNTIL_INTERRUPTED=0), and its exit stops the zone: the run's exit code is
    then 0 if it succeeded. Whether the zone already runs detached is the caller's to check.

    Raises:
        ValueError: ``exit_with`` is not the name of a node of the zone (or of the share).
        ConfigError: a container that is not a node is to run, and no docker or podman is
            installed (before anything starts).
    """
    if exit_with is not None and exit_with not in (nodes or zone.node_names()):
        raise ValueError(f"exit_with={exit_with!r} is not a node of zone {zone.name}")
    launch_id = secrets.token_hex(8)
    specs = [
        dataclasses.replace(spec, env={**spec.env, Env.WAIT_UNTIL_INTERRUPTED.value: "0"})
        if spec.name == exit_with
        else spec
        for spec in plan(zone, extra_env=extra_env, launch_id=launch_id, nodes=nodes, bind=bind)
    ]
    supervisor = Supervisor(
        specs,
        restart=restart,
        output=output or sys.stdout,
        stop_timeout_s=stop_timeout_s,
        launch_id=launch_id,
        zone=zone.name,
        exit_with=exit_with,
    )
    share = f" ({brief_list(spec.name for spec in specs)})" if nodes is not None else ""
    where = f", bound to {bind}" if bind is not None else ""
    logger.info(
        "deploying zone %s from %s: %d node(s)%s%s; Ctrl-C stops it",
        zone.name,
        zone.dir,
        len(specs),
        share,
        where,
    )
    return asyncio.run(run_with_signals(supervisor, announce=True))
