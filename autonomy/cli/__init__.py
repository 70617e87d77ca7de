"""The ``autonomy`` command: runs zone folders on this machine (deploy, logs, list, delete).

Layout: ``_zonefile`` reads autonomy.yaml and Dockerfiles, ``_supervisor`` runs and stops the
processes, and this module parses the command line and prints. ``main(argv)`` returns the exit
status: 0 ok, 1 a runtime failure (a node failed, the zone could not start), 2 a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import secrets
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from autonomy import ConfigError, Node, RemoteNode, Zone

from ._supervisor import (
    STOP_TIMEOUT_S,
    DeploymentState,
    LaunchError,
    delete_deployment,
    deploy_detached,
    deploy_foreground,
    list_deployments,
    load_state,
    node_status,
    print_logs,
    supervisor_status,
    zone_state_dir,
)
from ._zonefile import ZONE_FILE_NAME, ZoneFile, load_zone

__all__ = ["main"]

logger = logging.getLogger("autonomy.cli")

_LABEL_HELP = "lowercase letters, digits and '-'"


def _version() -> str:
    try:
        return importlib.metadata.version("autonomy")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


DESCRIBE_TIMEOUT_S: Final = 5.0
"""How long ``zone list`` spends finding a zone's nodes to ask for their workers (a zone
whose containers are not nodes, say a database, takes that long)..."""

_SETTLE_S: Final = 1.5
"""...but once one of them answered, only until no other joined for this long..."""

_LIST_TIMEOUT_S: Final = 2.0
"""...and then how long each node found has to answer ``list_workers``."""

_MESH_LOGGERS: Final = ("autonomy.node", "autonomy.discovery", "autonomy.transport")


def _describe_workers(zone: str, nodes: Sequence[str]) -> dict[str, list[str]] | None:
    """Hook for ``zone list``: the names of the workers each running node hosts, by node.

    Asks over the mesh, through the public API only: a temporary node (``cli-<hex>``, bound
    to 127.0.0.1, mDNS discovery on) joins ``zone``, waits until the named nodes are members
    (``Zone.nodes``), and calls ``list_workers`` on each. Bounded: `DESCRIBE_TIMEOUT_S` to
    find them (`_SETTLE_S` after the last one joined, when some are missing: containers that
    are not nodes), then `_LIST_TIMEOUT_S` for their answers.

    Returns ``{node name: [worker names]}``. A node that was not found in time, or did not
    answer, is **omitted** (never shown with an empty list: that would invent data); a node
    that answered with no workers maps to ``[]``. Returns None when the temporary node could
    not run at all (logged as a warning). Never prints, never hangs: the whole query is
    bounded, and it runs on a loop of its own (in a thread when called from inside one).

    Limits: nodes bound to another interface than loopback (``AUTONOMY_BIND``) are not
    discovered from here; for a moment the zone has one more member, named ``cli-...``.
    """
    wanted = list(dict.fromkeys(nodes))
    if not wanted:
        return {}
    quiet = not logger.isEnabledFor(logging.DEBUG)
    saved = {name: logging.getLogger(name).level for name in _MESH_LOGGERS}
    if quiet:  # the temporary node's chatter (peers leaving, timeouts) is not for the user
        for name in _MESH_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(_ask_workers(zone, wanted, DESCRIBE_TIMEOUT_S))
        result: list[dict[str, list[str]]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.append(asyncio.run(_ask_workers(zone, wanted, DESCRIBE_TIMEOUT_S)))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, name="autonomy-describe-workers", daemon=True)
        thread.start()
        thread.join(DESCRIBE_TIMEOUT_S + _LIST_TIMEOUT_S + 10.0)
        if errors:
            raise errors[0]
        if not result:
            raise TimeoutError("no answer in time")
        return result[0]
    except Exception as exc:
        logger.warning("could not ask zone %s for its workers: %s", zone, exc)
        return None
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


async def _ask_workers(zone: str, wanted: list[str], timeout_s: float) -> dict[str, list[str]]:
    """`_describe_workers` on an event loop: the answers that came in time.

    Finding the nodes takes at most ``timeout_s``; asking those found, at most
    `_LIST_TIMEOUT_S` more.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    found: dict[str, RemoteNode] = {}
    answers: dict[str, list[str]] = {}
    async with Node(
        f"cli-{secrets.token_hex(4)}", zone=zone, bind="127.0.0.1", discovery=True
    ) as node:
        try:
            # A guard only: Zone.nodes returns by itself at the deadline, with what it found.
            async with asyncio.timeout_at(deadline + 1.0):
                seen = 1  # members of the zone at the last look, this node included
                while loop.time() < deadline:
                    # Wait (on membership changes, not by polling) for one more member than
                    # last time: until the first node we want came, at most until the
                    # deadline; after that, running nodes answer mDNS together, so a quiet
                    # `_SETTLE_S` means the rest are not nodes (a container may be a database).
                    budget = deadline - loop.time()
                    if found:
                        budget = min(budget, _SETTLE_S)
                    members = await Zone.nodes(
                        node, count=seen + 1, timeout=max(1.0, budget * 1000)
                    )
                    found = {
                        m.name: m for m in members if isinstance(m, RemoteNode) and m.name in wanted
                    }
                    if len(found) == len(wanted) or (found and len(members) <= seen):
                        break
                    seen = len(members)
        except TimeoutError:
            pass
        if len(found) < len(wanted):
            logger.debug(
                "zone %s: not found in %g s: %s",
                zone,
                timeout_s,
                ", ".join(name for name in wanted if name not in found),
            )
        names = list(found)
        replies = await asyncio.gather(
            *(asyncio.wait_for(found[name].list_workers(), _LIST_TIMEOUT_S) for name in names),
            return_exceptions=True,
        )
        for name, reply in zip(names, replies, strict=True):
            if isinstance(reply, BaseException):
                logger.debug("node %s of zone %s: no worker list: %r", name, zone, reply)
                continue
            answers[name] = [str(worker["name"]) for worker in reply]
    return answers


def _launcher_env(zone: ZoneFile) -> dict[str, str]:
    """Environment the launcher itself gives every node of a zone: the zone's secret.

    It wins over the containers' ``env`` and, in detached mode, reaches the supervisor
    through a pipe, never the disk.
    """
    return {"AUTONOMY_ZONE_SECRET": Zone.secret(zone.name)}


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


def _uptime(started_at: float | None) -> str:
    if started_at is None:
        return "-"
    seconds = max(0, int(time.time() - started_at))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


def _print_zone(state: DeploymentState, out: TextIO, *, workers_column: bool = True) -> None:
    supervisor = supervisor_status(state)
    pid = f" (pid {state.supervisor_pid})" if supervisor in ("running", "stopping") else ""
    out.write(
        f"zone {state.zone}: supervisor {supervisor}{pid}, {len(state.nodes)} node(s), "
        f"restart {'on' if state.restart else 'off'}\n"
    )
    out.write(f"  folder {state.zone_dir}\n  state  {state.dir}\n")
    workers = None
    if workers_column and supervisor == "running":
        workers = _describe_workers(state.zone, [node.name for node in state.nodes])
    header = ["NODE", "PID", "STATUS", "RESTARTS", "UPTIME"]
    if workers is not None:
        header.append("WORKERS")
    rows = [header]
    for node in state.nodes:
        status = node_status(state, node)
        running = status == "running"
        row = [
            node.name,
            str(node.pid) if running and node.pid else "-",
            status,
            str(node.restarts),
            _uptime(node.started_at) if running else "-",
        ]
        if workers is not None:
            # "-": reached, no workers; "?": not reached over the mesh.
            names = workers.get(node.name)
            row.append("?" if names is None else ", ".join(names) or "-")
        rows.append(row)
    _table(rows, out)


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


# --------------------------------------------------------------------------------------------
# Commands


def _cmd_deploy(args: argparse.Namespace) -> int:
    zone = load_zone(args.dir)
    if args.detach:
        state = deploy_detached(
            zone, restart=args.restart, extra_env=_launcher_env(zone), stop_timeout_s=args.timeout
        )
        _print_zone(state, sys.stdout, workers_column=False)
        failed = [node.name for node in state.nodes if node.state == "failed"]
        if failed:
            logger.warning(
                "could not start: %s (see `autonomy zone list --zone %s`)",
                ", ".join(failed),
                zone.name,
            )
        print(
            f"\nzone {zone.name} runs in the background:\n"
            f"  autonomy zone logs -f --zone {zone.name}   follow its output\n"
            f"  autonomy zone list --zone {zone.name}      show its nodes\n"
            f"  autonomy zone delete --zone {zone.name}    stop it and remove its state"
        )
        return 0
    result = deploy_foreground(
        zone,
        restart=args.restart,
        extra_env=_launcher_env(zone),
        stop_timeout_s=args.timeout,
        exit_with=args.exit_with,
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
                + ", ".join(n.name for n in state.nodes)
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
