"""The ``autonomy`` command: runs zone folders here, or prints them for Kubernetes.

This module runs the command (deploy, logs, list, delete, secret, manifests; dashboard and
top through ``_observe``) and prints. The
command line's grammar is ``_arguments``'; the work is done by:

- ``_zonefile``: autonomy.yaml → a validated `ZoneFile`; ``_dockerfile``: an image's command;
- ``_plan``: the zone's processes (`LaunchSpec`), or a share of them (``--nodes``);
  ``_containers``: docker or podman for containers that are not nodes;
  ``_processes``: /proc, signals, strays;
- ``_supervisor``: runs and stops a zone's processes (the foreground run);
- ``_detached``: the daemon of a detached zone and its state; ``_logs``: its logs;
- ``_mesh``: asks a running zone which workers its nodes host; ``_text``: tables and such;
- ``_manifests``: the zone's Kubernetes objects;
- ``_observe``: ``zone dashboard`` and ``zone top``, a running zone watched live (``_watcher``,
  ``_zoneview``, ``_dashboard``, ``_top``).

``main(argv)`` returns the exit status: 0 ok, 1 a runtime failure (a node failed, the zone
could not start), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, TextIO

from autonomy import ConfigError, Zone
from autonomy._config import Env

from ._arguments import build_parser, is_label
from ._detached import (
    DeploymentState,
    LaunchError,
    SupervisorStatus,
    delete_deployment,
    deploy_detached,
    deployment_key,
    deployments_of,
    list_deployments,
    load_state,
    refuse_if_detached,
    zone_state_dir,
)
from ._logs import print_logs
from ._manifests import image_name, manifests, render
from ._mesh import describe_workers
from ._observe import run_dashboard, run_top
from ._plan import select_nodes
from ._supervisor import NodeState, deploy_foreground
from ._text import brief_list, table, uptime
from ._zonefile import ZONE_FILE_NAME, ZoneFile, load_zone

__all__ = ["main"]

logger = logging.getLogger("autonomy.cli")


def _launcher_env(zone: ZoneFile) -> dict[str, str]:
    """Environment the launcher itself gives every node of a zone: the zone's secret.

    It wins over the containers' ``env`` and, in detached mode, reaches the supervisor
    through a pipe, never the disk.
    """
    return {Env.ZONE_SECRET.value: Zone.secret(zone.name)}


# --------------------------------------------------------------------------------------------
# Output


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = (
            ""
            if record.levelno < logging.WARNING
            else "warning: "
            if record.levelno < logging.ERROR
            else "error: "
        )
        text = f"autonomy: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _print_zone(state: DeploymentState, out: TextIO, *, workers_column: bool = True) -> None:
    supervisor = state.supervisor_status()
    alive = supervisor in (SupervisorStatus.RUNNING, SupervisorStatus.STOPPING)
    pid = f" (pid {state.supervisor_pid})" if alive else ""
    out.write(
        f"{state.title}: supervisor {supervisor}{pid}, {len(state.nodes)} node(s), "
        f"restart {'on' if state.restart else 'off'}\n"
    )
    out.write(f"  folder {state.zone_dir}\n  state  {state.dir}\n")
    if state.node_globs:
        out.write(f"  share  --nodes {' --nodes '.join(state.node_globs)}\n")
    workers = None
    if workers_column and supervisor is SupervisorStatus.RUNNING:
        workers = describe_workers(
            state.zone,
            [node.name for node in state.nodes if node.is_node],
            bind=state.bind or "127.0.0.1",
        )
    header = ["NODE", "PID", "STATUS", "RESTARTS", "UPTIME"]
    if workers is not None:
        header.append("WORKERS")
    rows = [header]
    for node in state.nodes:
        status = state.node_status(node)
        running = status == NodeState.RUNNING
        row = [
            node.name,
            str(node.pid) if running and node.pid else "-",
            status,
            str(node.restarts),
            uptime(node.started_at) if running else "-",
        ]
        if workers is not None:
            # "-": reached, no workers; "?": not reached over the mesh.
            names = workers.get(node.name)
            row.append("?" if names is None else ", ".join(names) or "-")
        rows.append(row)
    table(rows, out)


# --------------------------------------------------------------------------------------------
# Which zone


def _target_zone(zone: str | None, folder: str | None, *, required: bool) -> str | None:
    """The name of the zone the user means: --zone, a folder (or a deployed zone's name), or
    the autonomy.yaml of the current folder."""
    if zone:
        return zone
    if folder is not None:
        path = Path(folder)
        if path.exists():
            return load_zone(path, check_images=False).name
        if is_label(folder) and deployments_of(folder):
            return folder
        raise ConfigError("no such folder, and no deployed zone of that name", path=folder)
    if Path(ZONE_FILE_NAME).exists():
        return load_zone(ZONE_FILE_NAME, check_images=False).name
    if required:
        raise ConfigError(
            f"no {ZONE_FILE_NAME} in the current folder: name the zone with "
            "--zone NAME, or give its folder"
        )
    return None


def _any_target_zone(zone: str | None, folder: str | None) -> str | None:
    """The zone the user means, or None when nothing names one (as for ``zone list``)."""
    return _target_zone(zone, folder, required=False)


def _require_state(zone: str, bind: str | None) -> DeploymentState:
    """The one detached deployment of ``zone`` here (on ``bind``, if given)."""
    keys = [deployment_key(zone, bind)] if bind is not None else deployments_of(zone)
    if len(keys) > 1:
        binds = [key.partition("@")[2] or "loopback" for key in keys]
        raise ConfigError(
            f"zone {zone} has {len(keys)} deployments here, one per address: say which with "
            f"--bind ({', '.join(binds)})",
            key="--bind",
        )
    state = load_state(keys[0]) if keys else None
    if state is None:
        where = f" on {bind}" if bind is not None else ""
        raise LaunchError(
            f"zone {zone} is not deployed here in the background{where} (no state in "
            f"{zone_state_dir(deployment_key(zone, bind))}); `autonomy zone deploy --detach` "
            "starts one"
        )
    return state


def _keys(zone: str, bind: str | None) -> list[str]:
    """The deployments of ``zone`` that a command means: the one on ``bind``, or all here."""
    if bind is not None:
        return [deployment_key(zone, bind)]
    return deployments_of(zone) or [zone]


def _bindable(address: str) -> str:
    """``address`` if a socket can bind it here (an address of this machine).

    Raises:
        ConfigError: it cannot be bound.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError as exc:
        raise ConfigError(
            f"{address} is not an address of this machine ({exc.strerror or exc}): give this "
            "machine's LAN address",
            key="--bind",
        ) from None
    return address


def _exit_node(zone: ZoneFile, exit_with: str) -> str:
    """The node ``--exit-with`` names: its full name, or a part of exactly one node's name."""
    names = zone.node_names()
    named = [name for name in names if name == exit_with] or [
        name for name in names if exit_with in name
    ]
    if not named:
        raise ConfigError(
            f"{exit_with!r} names no node of zone {zone.name}; its nodes: {brief_list(names)}",
            key="--exit-with",
        )
    if len(named) > 1:
        raise ConfigError(
            f"{exit_with!r} names {len(named):,} nodes of zone {zone.name}: "
            f"{brief_list(named)}; give one node's full name",
            key="--exit-with",
        )
    return named[0]


# --------------------------------------------------------------------------------------------
# Commands


def _cmd_deploy(args: argparse.Namespace) -> int:
    zone = load_zone(args.dir)
    bind = _bindable(args.bind) if args.bind is not None else None
    nodes = select_nodes(zone, args.nodes) if args.nodes else None
    exit_with = _exit_node(zone, args.exit_with) if args.exit_with is not None else None
    if exit_with is not None and nodes is not None and exit_with not in nodes:
        raise ConfigError(
            f"{exit_with} is not among the nodes this deploy runs (--nodes "
            f"{' --nodes '.join(args.nodes)})",
            key="--exit-with",
        )
    if args.detach:
        state = deploy_detached(
            zone,
            restart=args.restart,
            extra_env=_launcher_env(zone),
            stop_timeout_s=args.timeout,
            nodes=nodes,
            bind=bind,
            node_globs=args.nodes or (),
        )
        _print_zone(state, sys.stdout, workers_column=False)
        which = f"--zone {zone.name}" + (f" --bind {bind}" if bind is not None else "")
        failed = [node.name for node in state.nodes if node.state is NodeState.FAILED]
        if failed:
            logger.warning(
                "could not start: %s (see `autonomy zone list %s`)", brief_list(failed), which
            )
        print(
            f"\n{state.title} runs in the background:\n"
            f"  autonomy zone logs -f {which}   follow its output\n"
            f"  autonomy zone list {which}      show its nodes\n"
            f"  autonomy zone delete {which}    stop it and remove its state"
        )
        return 0
    refuse_if_detached(zone.name, bind)
    result = deploy_foreground(
        zone,
        restart=args.restart,
        extra_env=_launcher_env(zone),
        stop_timeout_s=args.timeout,
        exit_with=exit_with,
        nodes=nodes,
        bind=bind,
    )
    if result.exit_node is not None and result.exit_node[1] != 0:
        name, code = result.exit_node
        print(f"autonomy: error: {name} exited with status {code}", file=sys.stderr)
        return 1
    if result.failures:
        name, what = result.failures[0]
        more = f" (and {len(result.failures) - 1} more)" if len(result.failures) > 1 else ""
        print(f"autonomy: error: zone {zone.name} failed: {name} {what}{more}", file=sys.stderr)
        return 1
    logger.info("zone %s %s", zone.name, "stopped" if result.interrupted else "ended")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    name = _target_zone(args.zone, args.dir, required=True)
    assert name is not None
    state = _require_state(name, args.bind)
    nodes = state.nodes
    if args.node:
        nodes = [n for n in nodes if n.name == args.node] or [
            n for n in nodes if args.node in n.name
        ]
        if not nodes:
            raise ConfigError(
                f"no node of zone {name} matches {args.node!r}; its nodes: "
                + brief_list(n.name for n in state.nodes)
            )
    try:
        print_logs(state, nodes, sys.stdout, follow=args.follow)
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    name = _target_zone(args.zone, args.dir, required=False)
    if name is not None:
        keys = _keys(name, args.bind)
    else:
        keys = [
            key
            for key in list_deployments()
            if args.bind is None or key.partition("@")[2] == args.bind
        ]
    if not keys:
        print("no zone is deployed here in the background")
        return 0
    for index, key in enumerate(keys):
        state = load_state(key)
        if index:
            print()
        if state is None:
            where = f" on {args.bind}" if args.bind is not None else ""
            print(f"zone {name}{where}: not deployed in the background")
            continue
        _print_zone(state, sys.stdout)
    return 0


def _cmd_manifests(args: argparse.Namespace) -> int:
    zone = load_zone(args.dir)
    objects = manifests(
        zone,
        secret=Zone.secret(zone.name),
        image_prefix=args.image_prefix,
        namespace=args.namespace,
    )
    images = sorted({c.image for pod in zone.pods for c in pod.containers if c.is_node})
    header = [
        f"Kubernetes objects of zone {zone.name} ({zone.path}), by `autonomy zone manifests`.",
        "Build and push its images first (a Docker engine; the images' FROM must hold autonomy):",
        *(
            f"  docker build -t {image_name(args.image_prefix, zone.name, image)} "
            f"{zone.image_dir(image)} && docker push "
            f"{image_name(args.image_prefix, zone.name, image)}"
            for image in images
        ),
        "then pipe this output to `kubectl apply -f -`. The Secret below holds the zone's",
        "secret: keep this output private.",
    ]
    sys.stdout.write(render(objects, header))
    return 0


def _cmd_secret(args: argparse.Namespace) -> int:
    name = args.zone
    if name is None:
        name = load_zone(args.dir or ".", check_images=False).name
    print(Zone.secret(name))
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    name = _target_zone(args.zone, args.dir, required=True)
    assert name is not None
    deleted = 0
    for key in _keys(name, args.bind):
        if delete_deployment(key, stop_timeout_s=args.timeout):
            where = key.partition("@")[2]
            print(f"zone {name}" + (f" on {where}" if where else "") + " deleted")
            deleted += 1
    if not deleted:
        where = f" on {args.bind}" if args.bind is not None else ""
        print(f"zone {name} is not deployed in the background{where}: nothing to delete")
    return 0


_COMMANDS: Final[Mapping[str, Callable[[argparse.Namespace], int]]] = {
    "deploy": _cmd_deploy,
    "logs": _cmd_logs,
    "list": _cmd_list,
    "delete": _cmd_delete,
    "secret": _cmd_secret,
    "manifests": _cmd_manifests,
    "dashboard": lambda args: run_dashboard(args, _any_target_zone),
    "top": lambda args: run_top(args, _any_target_zone),
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``autonomy`` command; return its exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    package_logger = logging.getLogger("autonomy")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(args.log_level or logging.INFO)
    func: Callable[[argparse.Namespace], int] = _COMMANDS[args.command]
    try:
        return func(args)
    except ConfigError as exc:
        print(f"autonomy: error: {exc}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"autonomy: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Our reader went away (`autonomy zone logs | head`): not an error of ours.
        with contextlib.suppress(OSError, ValueError), open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 0
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
