"""Detached zones: their state directory and state file, the daemon that supervises them, delete.

``deploy --detach`` starts a small daemon (a `Supervisor` that is nobody's child) and returns
once every node has been started. The daemon keeps the zone's state file up to date in
``<state root>/zones/<zone>/`` (with each node's log under ``logs/``); ``logs``, ``list``
and ``delete`` read it, checking each recorded pid against /proc, since a state file can
outlive its processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from autonomy._config import Env

from ._plan import LaunchSpec, plan
from ._processes import (
    KILL_WAIT_S,
    describe_exit,
    is_alive,
    kill_marked,
    marked_pids,
    process_start_time,
    signal_group,
    signal_pid,
    wait_until,
)
from ._supervisor import (
    STOP_TIMEOUT_S,
    NodeRecord,
    NodeState,
    Supervisor,
    SupervisorState,
    run_with_signals,
)
from ._zonefile import ZoneFile

__all__ = [
    "DeploymentState",
    "LaunchError",
    "SupervisorStatus",
    "delete_deployment",
    "deploy_detached",
    "list_deployments",
    "load_state",
    "refuse_if_detached",
    "state_root",
    "zone_state_dir",
]

logger = logging.getLogger("autonomy.cli")

READY_TIMEOUT_S = 30.0
"""How long ``deploy --detach`` waits for the supervisor to have started every node."""
STATE_FILE: Final = "state.json"
LOGS_DIR: Final = "logs"
SUPERVISOR_LOG: Final = "supervisor.log"
STATE_VERSION: Final = 1


class LaunchError(Exception):
    """A zone could not be started or stopped here (already running, supervisor failed...).

    CLI-internal: ``main()`` turns it into exit status 1; it never leaves ``autonomy.cli``.
    """


class SupervisorStatus(enum.StrEnum):
    """What a detached zone's supervisor is doing now, its state file checked against /proc."""

    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    GONE = "gone"
    """It died without recording its end."""


# --------------------------------------------------------------------------------------------
# The state directory


def state_root() -> Path:
    """``$AUTONOMY_STATE_DIR``, else ``$XDG_STATE_HOME/autonomy``, else ~/.local/state/autonomy."""
    override = os.environ.get(Env.STATE_DIR.value)
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
    supervisor_state: SupervisorState = SupervisorState.STARTING
    nodes: list[NodeRecord] = field(default_factory=list)
    version: int = STATE_VERSION
    dir: Path = field(default=Path(), compare=False)
    """The state directory (not stored in the file)."""

    def __post_init__(self) -> None:
        self.supervisor_state = SupervisorState(self.supervisor_state)  # from the file: a str

    def supervisor_alive(self) -> bool:
        return is_alive(self.supervisor_pid, self.supervisor_start_time)

    def live_nodes(self) -> list[NodeRecord]:
        return [n for n in self.nodes if is_alive(n.pid, n.start_time)]

    def is_active(self) -> bool:
        """Whether anything of this deployment still runs."""
        return (
            self.supervisor_alive() or bool(self.live_nodes()) or bool(marked_pids(self.launch_id))
        )

    def supervisor_status(self) -> SupervisorStatus:
        """What the supervisor is doing now (its record checked against /proc)."""
        if self.supervisor_alive():
            if self.supervisor_state is SupervisorState.STOPPING:
                return SupervisorStatus.STOPPING
            return SupervisorStatus.RUNNING
        if self.supervisor_state is SupervisorState.STOPPED:
            return SupervisorStatus.STOPPED
        return SupervisorStatus.GONE

    def node_status(self, node: NodeRecord) -> str:
        """What a node is doing now, checked against /proc where the record says it runs:
        ``running``, ``lost (...)``, ``failed (exited with status 3)``..."""
        if node.state in (NodeState.RUNNING, NodeState.STARTING):
            if is_alive(node.pid, node.start_time):
                return NodeState.RUNNING.value
            started = process_start_time(node.pid) if node.pid else None
            if started is not None and started != node.start_time:
                return f"lost (pid {node.pid} is now another process)"
            return "lost (its process is gone)"
        if node.state is NodeState.RESTARTING:
            return node.state.value if self.supervisor_alive() else "lost (was restarting)"
        if node.error and node.returncode is None:
            return f"failed: {node.error}"
        if node.returncode is None:
            return node.state.value
        what = describe_exit(node.returncode)
        if node.state in (NodeState.STOPPED, NodeState.FAILED):
            return f"{node.state.value} ({what})"
        return what

    def log_path(self, node: NodeRecord) -> Path:
        """The file that holds a node's output."""
        return self.dir / (node.log or f"{LOGS_DIR}/{node.name}.log")

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


def refuse_if_detached(zone: str) -> None:
    """Refuse to run a zone in the foreground while it runs detached.

    Raises:
        LaunchError: something of the zone's detached deployment still runs.
    """
    existing = load_state(zone)
    if existing is not None and existing.is_active():
        raise LaunchError(
            f"zone {zone} is already running detached (supervisor pid "
            f"{existing.supervisor_pid}): run `autonomy zone delete --zone {zone}` first"
        )


# --------------------------------------------------------------------------------------------
# The daemon


_DAEMON_BOOT: Final = (
    "import sys; sys.path.insert(0, {path!r}); "
    "from autonomy.cli._detached import _daemon_main; "
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
            signal_pid(pid, signal.SIGKILL)
        kill_marked(launch_id, grace_s=1.0)
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

    def record() -> None:
        state.nodes = [dataclasses.replace(r) for r in supervisor.records]
        stopping = supervisor.state in (SupervisorState.STOPPING, SupervisorState.STOPPED)
        if stopping and state.supervisor_state is SupervisorState.RUNNING:
            state.supervisor_state = SupervisorState.STOPPING
        state.write()

    supervisor = Supervisor(
        specs,
        restart=state.restart,
        log_dir=directory / LOGS_DIR,
        stop_timeout_s=float(payload["stop_timeout_s"]),
        launch_id=state.launch_id,
        on_change=record,
        zone=state.zone,
    )
    state.nodes = [dataclasses.replace(r) for r in supervisor.records]
    state.write()
    logger.info("supervising zone %s (%d node(s))", state.zone, len(specs))
    run = asyncio.ensure_future(run_with_signals(supervisor, announce=False))
    started = asyncio.ensure_future(supervisor.started.wait())
    await asyncio.wait({run, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    state.supervisor_state = SupervisorState.RUNNING
    record()
    ready.write("ok\n")
    ready.close()
    result = await run
    state.supervisor_state = SupervisorState.STOPPED
    record()
    logger.info("zone %s ended%s", state.zone, " (stopped)" if result.interrupted else "")
    return result.exit_code


# --------------------------------------------------------------------------------------------
# Delete


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
        signal_pid(supervisor.supervisor_pid, signal.SIGTERM)
        gone = wait_until(lambda: not supervisor.supervisor_alive(), stop_timeout_s + KILL_WAIT_S)
        if not gone:
            logger.warning("the supervisor of zone %s did not stop: killing it", zone)
            signal_pid(supervisor.supervisor_pid, signal.SIGKILL)
            wait_until(lambda: not supervisor.supervisor_alive(), KILL_WAIT_S)
        with contextlib.suppress(LaunchError):
            state = load_state(zone) or state  # its last word: the nodes' latest pids
    final = state
    live = final.live_nodes()
    for node in live:
        assert node.pid is not None
        logger.warning("%s is still running: stopping it", node.name)
        signal_group(node.pid, signal.SIGTERM)
    if live and not wait_until(lambda: not final.live_nodes(), stop_timeout_s):
        for node in final.live_nodes():
            assert node.pid is not None
            signal_group(node.pid, signal.SIGKILL)
        wait_until(lambda: not final.live_nodes(), KILL_WAIT_S)
    strays = kill_marked(state.launch_id, grace_s=min(stop_timeout_s, 2.0))
    if strays:
        logger.warning("killed %d stray process(es) of zone %s", strays, zone)
    shutil.rmtree(directory, ignore_errors=True)
    return True
