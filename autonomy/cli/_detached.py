"""Detached zones: their state directory and state file, the daemon that supervises them, delete.

``deploy --detach`` starts a small daemon (a `Supervisor` that is nobody's child) and returns
once every node has been started. The daemon keeps the deployment's state file up to date in
``<state root>/zones/<key>/`` (with each node's log under ``logs/``); ``logs``, ``list``
and ``delete`` read it, checking each recorded pid against /proc, since a state file can
outlive its processes.

A deployment's key is the zone's name, or ``<zone>@<address>`` for one bound to a LAN
address (``--bind``): one machine may run several shares of a zone, each on its own address
(as network-namespace tests do), and their states never meet.
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
from collections.abc import Mapping, Sequence
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
    run_quietly,
    signal_group,
    signal_pid,
    wait_until,
)
from ._supervisor import (
    CLEANUP_TIMEOUT_S,
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
    "deployment_key",
    "deployments_of",
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


def deployment_key(zone: str, bind: str | None) -> str:
    """The key of a zone's deployment here: the zone's name, or ``<zone>@<address>`` for one
    bound to an address (zone names hold no ``@``)."""
    return zone if bind is None else f"{zone}@{bind}"


def zone_state_dir(key: str) -> Path:
    """Where a detached deployment's state and logs live: ``<state root>/zones/<key>/``
    (``key``: see `deployment_key`)."""
    if not key or "/" in key or key in (".", "..") or "\0" in key:
        raise ValueError(f"invalid zone name {key!r}")
    return state_root() / "zones" / key


def list_deployments() -> list[str]:
    """The keys of the deployments that have a state directory here, sorted."""
    root = state_root() / "zones"
    try:
        return sorted(p.name for p in root.iterdir() if (p / STATE_FILE).exists())
    except OSError:
        return []


def deployments_of(zone: str) -> list[str]:
    """The keys of a zone's deployments here: the whole zone's, and each share's."""
    return [key for key in list_deployments() if key.partition("@")[0] == zone]


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
    bind: str | None = None
    """The address its nodes are bound to (``--bind``), or None: loopback."""
    node_globs: list[str] = field(default_factory=list)
    """The ``--nodes`` globs that chose its share of the zone; empty: the whole zone."""
    dir: Path = field(default=Path(), compare=False)
    """The state directory (not stored in the file)."""

    def __post_init__(self) -> None:
        self.supervisor_state = SupervisorState(self.supervisor_state)  # from the file: a str

    @property
    def key(self) -> str:
        """The deployment's key (its state directory's name): see `deployment_key`."""
        return deployment_key(self.zone, self.bind)

    @property
    def title(self) -> str:
        """``zone NAME``, with its address when bound to one: for messages."""
        return f"zone {self.zone}" + (f" on {self.bind}" if self.bind else "")

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


def load_state(key: str) -> DeploymentState | None:
    """A detached deployment's state (``key``: see `deployment_key`), or None if it has none
    here.

    Raises:
        LaunchError: the state file exists but cannot be read.
    """
    directory = zone_state_dir(key)
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


def _delete_command(zone: str, bind: str | None) -> str:
    return f"autonomy zone delete --zone {zone}" + (f" --bind {bind}" if bind else "")


def refuse_if_detached(zone: str, bind: str | None = None) -> None:
    """Refuse to run a zone (bound to ``bind``) in the foreground while it runs detached.

    Raises:
        LaunchError: something of that detached deployment still runs.
    """
    existing = load_state(deployment_key(zone, bind))
    if existing is not None and existing.is_active():
        raise LaunchError(
            f"{existing.title} is already running detached (supervisor pid "
            f"{existing.supervisor_pid}): run `{_delete_command(zone, bind)}` first"
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
    nodes: Sequence[str] | None = None,
    bind: str | None = None,
    node_globs: Sequence[str] = (),
) -> DeploymentState:
    """Start a zone (or the share of it named by ``nodes``, bound to ``bind``) in the
    background under a supervisor process; return its state.

    Returns once every node has been started. The nodes' environments reach the supervisor
    through a pipe, never the disk. The state is kept under `deployment_key` (zone, bind).

    Raises:
        ConfigError: a container that is not a node is to run, and no docker or podman is
            installed (before anything is started or written).
        LaunchError: the deployment already runs, or its supervisor failed to start.
    """
    key = deployment_key(zone.name, bind)
    directory = zone_state_dir(key)
    existing = load_state(key)
    title = f"zone {zone.name}" + (f" on {bind}" if bind else "")
    if existing is not None and existing.is_active():
        raise LaunchError(
            f"{title} is already deployed (supervisor pid {existing.supervisor_pid}): "
            f"run `{_delete_command(zone.name, bind)}` first"
        )
    launch_id = secrets.token_hex(8)
    specs = plan(zone, extra_env=extra_env, launch_id=launch_id, nodes=nodes, bind=bind)
    if existing is not None:
        logger.info("replacing the stale state of %s in %s", title, directory)
    if directory.exists():
        shutil.rmtree(directory)
    (directory / LOGS_DIR).mkdir(parents=True, mode=0o700)
    directory.chmod(0o700)
    payload = json.dumps(
        {
            "state_dir": str(directory),
            "zone": zone.name,
            "bind": bind,
            "node_globs": list(node_globs),
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
            f"the supervisor of {title} failed to start ({outcome}): "
            f"see {directory / SUPERVISOR_LOG}"
        )
    state = load_state(key)
    if state is None:
        raise LaunchError(f"{title} started but left no state in {directory}")
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
        bind=payload["bind"],
        node_globs=list(payload["node_globs"]),
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


def delete_deployment(key: str, *, stop_timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop every process of a detached deployment (``key``: see `deployment_key`) and remove
    its state; False if it had none.

    The supervisor is asked first (it stops the nodes: SIGTERM, deadline, SIGKILL); then any
    node still alive (checked by pid *and* start time) has its group killed, any process
    still carrying the launch's mark is killed, and any container that is not a node is
    removed (``docker rm --force``), before the state directory goes.
    """
    zone = key
    directory = zone_state_dir(key)
    try:
        state = load_state(key)
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
            state = load_state(key) or state  # its last word: the nodes' latest pids
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
    for node in state.nodes:
        if node.stop_argv:  # the supervisor did it, unless it died: then this does
            run_quietly(node.stop_argv, None, CLEANUP_TIMEOUT_S)
    shutil.rmtree(directory, ignore_errors=True)
    return True
