"""The ``autonomy`` command: runs zone folders on this machine (deploy, logs, list, delete).

This module parses the command line, runs the command and prints. The work is done by:

- ``_zonefile``: autonomy.yaml → a validated `ZoneFile`; ``_dockerfile``: an image's command;
- ``_plan``: the zone's processes (`LaunchSpec`), ``_processes``: /proc, signals, strays;
- ``_supervisor``: runs and stops a zone's processes (the foreground run);
- ``_detached``: the daemon of a detached zone and its state; ``_logs``: its logs;
- ``_mesh``: asks a running zone which workers its nodes host; ``_text``: tables and such.
- ``_observe``: ``zone dashboard`` and ``zone top``, a running zone watched live (``_watcher``,
  ``_zoneview``, ``_dashboard``, ``_top``).

``main(argv)`` returns the exit status: 0 ok, 1 a runtime failure (a node failed, the zone
could not start), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from autonomy import ConfigError, Zone
from autonomy._config import Env

from ._detached import (
    DeploymentState,
    LaunchError,
    SupervisorStatus,
    delete_deployment,
    deploy_detached,
    list_deployments,
    load_state,
    refuse_if_detached,
    zone_state_dir,
)
from ._logs import print_logs
from ._mesh import describe_workers
from ._observe import add_observe_commands
from ._supervisor import STOP_TIMEOUT_S, NodeState, deploy_foreground
from ._text import brief_list, table, uptime
from ._zonefile import ZONE_FILE_NAME, ZoneFile, load_zone

__all__ = ["main"]

logger = logging.getLogger("autonomy.cli")

_LABEL_HELP = "lowercase letters, digits and '-'"


def _version() -> str:
    try:
        return importlib.metadata.version("autonomy")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


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
        f"zone {state.zone}: supervisor {supervisor}{pid}, {len(state.nodes)} node(s), "
        f"restart {'on' if state.restart else 'off'}\n"
    )
    out.write(f"  folder {state.zone_dir}\n  state  {state.dir}\n")
    workers = None
    if workers_column and supervisor is SupervisorStatus.RUNNING:
        workers = describe_workers(state.zone, [node.name for node in state.nodes])
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


def _is_label(text: str) -> bool:
    return (
        bool(text)
        and len(text) <= 63
        and text[0].isalnum()
        and text[-1].isalnum()
        and all(c.isdigit() or ("a" <= c <= "z") or c == "-" for c in text)
    )


def _zone_name_arg(text: str) -> str:
    if not _is_label(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a zone name ({_LABEL_HELP})")
    return text


def _target_zone(zone: str | None, folder: str | None, *, required: bool) -> str | None:
    """The name of the zone the user means: --zone, a folder (or a deployed zone's name), or
    the autonomy.yaml of the current folder."""
    if zone:
        return zone
    if folder is not None:
        path = Path(folder)
        if path.exists():
            return load_zone(path, check_images=False).name
        if _is_label(folder) and (zone_state_dir(folder)).exists():
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


def _require_state(zone: str) -> DeploymentState:
    state = load_state(zone)
    if state is None:
        raise LaunchError(
            f"zone {zone} is not deployed here in the background (no state in "
            f"{zone_state_dir(zone)}); `autonomy zone deploy --detach` starts one"
        )
    return state


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
    if args.detach:
        state = deploy_detached(
            zone, restart=args.restart, extra_env=_launcher_env(zone), stop_timeout_s=args.timeout
        )
        _print_zone(state, sys.stdout, workers_column=False)
        failed = [node.name for node in state.nodes if node.state is NodeState.FAILED]
        if failed:
            logger.warning(
                "could not start: %s (see `autonomy zone list --zone %s`)",
                brief_list(failed),
                zone.name,
            )
        print(
            f"\nzone {zone.name} runs in the background:\n"
            f"  autonomy zone logs -f --zone {zone.name}   follow its output\n"
            f"  autonomy zone list --zone {zone.name}      show its nodes\n"
            f"  autonomy zone delete --zone {zone.name}    stop it and remove its state"
        )
        return 0
    refuse_if_detached(zone.name)
    result = deploy_foreground(
        zone,
        restart=args.restart,
        extra_env=_launcher_env(zone),
        stop_timeout_s=args.timeout,
        exit_with=_exit_node(zone, args.exit_with) if args.exit_with is not None else None,
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
    state = _require_state(name)
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
    names = [name] if name is not None else list_deployments()
    if not names:
        print("no zone is deployed here in the background")
        return 0
    for index, zone in enumerate(names):
        state = load_state(zone)
        if index:
            print()
        if state is None:
            print(f"zone {zone}: not deployed in the background")
            continue
        _print_zone(state, sys.stdout)
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
    if delete_deployment(name, stop_timeout_s=args.timeout):
        print(f"zone {name} deleted")
    else:
        print(f"zone {name} is not deployed in the background: nothing to delete")
    return 0


# --------------------------------------------------------------------------------------------
# The parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _add_verbosity(parser: argparse.ArgumentParser, *, default: bool) -> None:
    group = parser.add_mutually_exclusive_group()
    kwargs: dict[str, Any] = {} if default else {"default": argparse.SUPPRESS}
    group.add_argument(
        "-v",
        "--verbose",
        action="store_const",
        const=logging.DEBUG,
        dest="log_level",
        help="say more (debug messages)",
        **kwargs,
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_const",
        const=logging.WARNING,
        dest="log_level",
        help="say only warnings and errors",
        **kwargs,
    )


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    """DIR or --zone: which deployed zone a command works on."""
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        help="the zone's folder, or its name (default: the current folder)",
    )
    _add_zone_options(parser)


def _add_stop_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-t",
        "--timeout",
        type=_positive_seconds,
        default=STOP_TIMEOUT_S,
        metavar="SECONDS",
        help="how long nodes get to stop after SIGTERM before SIGKILL (default: %(default)g)",
    )


def _add_zone_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zone",
        metavar="NAME",
        type=_zone_name_arg,
        help="the deployed zone's name (default: the name in ./autonomy.yaml)",
    )


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs; keeps paragraphs whose lines are indented (examples) as typed."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(paragraphs)


def _parser() -> argparse.ArgumentParser:
    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="autonomy",
        description="autonomy: a brokerless actor mesh for Python over ZeroMQ.",
        epilog="Run `autonomy zone --help` for running zones on this machine.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"autonomy {_version()}")
    _add_verbosity(parser, default=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    zone = commands.add_parser(
        "zone",
        help="run a zone folder on this machine",
        description="Run a zone folder (autonomy.yaml + images/<image>/) on this machine: "
        "every container of every clone of every pod becomes a local process.",
        epilog="Examples:\n"
        "  autonomy zone deploy                 run ./autonomy.yaml here; Ctrl-C stops it\n"
        "  autonomy zone deploy hello --detach  run the zone in hello/ in the background\n"
        "  autonomy zone logs -f runner         follow the output of the runner nodes\n"
        "  autonomy zone list                   show the nodes and their state\n"
        "  autonomy zone delete                 stop the zone and remove its state",
        formatter_class=formatter,
    )
    actions = zone.add_subparsers(title="commands", metavar="COMMAND", required=True)

    deploy = actions.add_parser(
        "deploy",
        help="start a zone's processes (in the foreground, or --detach)",
        description="Start every node of a zone as a local process, run in images/<image>/ "
        "with the image's Dockerfile ENTRYPOINT/CMD. In the foreground, each "
        "output line is prefixed by its node's name, and Ctrl-C (SIGINT) or "
        "SIGTERM stops them all. Exits with 1 if a node failed.",
        epilog="Each node's environment: this one's, plus AUTONOMY_ZONE, AUTONOMY_NODE_NAME "
        "({pod}-{container}, or {pod}-{i}-{container} for clone i of a pod with "
        "clones), AUTONOMY_EXPECTED_NODES (every node name, comma-separated), "
        "AUTONOMY_WAIT_UNTIL_INTERRUPTED=1, PYTHONUNBUFFERED=1, and its container's "
        "env.",
        formatter_class=formatter,
    )
    deploy.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default=".",
        help="the zone folder, holding autonomy.yaml (default: the current one)",
    )
    deploy.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="run in the background; see `logs`, `list` and `delete`",
    )
    deploy.add_argument(
        "--exit-with",
        metavar="NODE",
        help="(foreground) let NODE return when its main does, and stop the zone when it "
        "exits, with its success or failure: for demos and batch jobs (NODE may be a "
        "part of the name, e.g. main)",
    )
    deploy.add_argument(
        "--restart",
        action="store_true",
        help="restart nodes that crash (with a growing delay; a node that "
        "keeps crashing is given up)",
    )
    _add_stop_timeout(deploy)
    _add_verbosity(deploy, default=False)
    deploy.set_defaults(func=_cmd_deploy)

    logs = actions.add_parser(
        "logs",
        help="print a detached zone's output",
        description="Print the output of a detached zone's nodes, each line prefixed by its "
        "node's name.",
        formatter_class=formatter,
    )
    logs.add_argument(
        "node",
        metavar="NODE",
        nargs="?",
        help="only this node (a full node name, or part of one: `runner`)",
    )
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new output until the zone ends or Ctrl-C",
    )
    _add_zone_options(logs)
    logs.add_argument("--dir", metavar="DIR", help="the zone's folder (default: the current one)")
    _add_verbosity(logs, default=False)
    logs.set_defaults(func=_cmd_logs)

    listing = actions.add_parser(
        "list",
        help="show a detached zone's nodes and their state",
        description="Show the nodes of a detached zone: pid, state (running, or how it "
        "exited), restarts and uptime. Without a zone, and without autonomy.yaml "
        "in the current folder: every detached zone.",
        formatter_class=formatter,
    )
    _add_target_options(listing)
    _add_verbosity(listing, default=False)
    listing.set_defaults(func=_cmd_list)

    delete = actions.add_parser(
        "delete",
        help="stop a detached zone and remove its state",
        description="Stop every process of a detached zone (SIGTERM, then SIGKILL after "
        "--timeout) and remove its state and logs.",
        formatter_class=formatter,
    )
    _add_target_options(delete)
    _add_stop_timeout(delete)
    _add_verbosity(delete, default=False)
    delete.set_defaults(func=_cmd_delete)

    secret = actions.add_parser(
        "secret",
        help="print the zone's secret (created on first use)",
        description="Print the secret of a zone, creating it on first use. Every node of "
        "the zone needs it: on this machine they find it on their own; on another machine, "
        "set AUTONOMY_ZONE_SECRET to it.\n\n"
        "  autonomy zone secret --zone distribute\n"
        "  AUTONOMY_ZONE_SECRET=$(autonomy zone secret) python main.py",
        formatter_class=formatter,
    )
    secret.add_argument(
        "dir", metavar="DIR", nargs="?", help="the zone's folder (default: the current one)"
    )
    _add_zone_options(secret)
    _add_verbosity(secret, default=False)
    secret.set_defaults(func=_cmd_secret)

    add_observe_commands(  # zone dashboard, zone top
        actions,
        formatter,
        _add_target_options,
        _add_verbosity,
        lambda zone, folder: _target_zone(zone, folder, required=False),
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``autonomy`` command; return its exit status (0 ok, 1 failure, 2 usage)."""
    parser = _parser()
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
    func: Callable[[argparse.Namespace], int] = args.func
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
