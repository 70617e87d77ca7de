"""The command line's grammar: the argparse parser, its options and the checks of their values.

`build_parser` describes every command, option and help text; each command sets
``args.command`` to its name, and ``autonomy.cli.main`` runs it. Nothing here reads a zone
or starts anything.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import ipaddress
import logging
import textwrap
from typing import Any

import autonomy

from ._manifests import MESH_PORT, SIZES
from ._observe import add_observe_arguments
from ._supervisor import STOP_TIMEOUT_S

__all__ = ["build_parser", "is_label"]

_LABEL_HELP = "lowercase letters, digits and '-'"


def _version() -> str:
    try:
        return importlib.metadata.version("autonomy")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def is_label(text: str) -> bool:
    return (
        bool(text)
        and len(text) <= 63
        and text[0].isalnum()
        and text[-1].isalnum()
        and all(c.isdigit() or ("a" <= c <= "z") or c == "-" for c in text)
    )


def _zone_name_arg(text: str) -> str:
    if not is_label(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a zone name ({_LABEL_HELP})")
    return text


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


def _address_arg(text: str) -> str:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an IP address of this machine (each node binds a free port on it), "
            f"got {text!r}"
        ) from None
    if address.is_unspecified:
        raise argparse.ArgumentTypeError(
            f"{text} is a wildcard: give the LAN address other machines reach this one at "
            "(mDNS advertises it)"
        )
    return str(address)


def _namespace_arg(text: str) -> str:
    if not is_label(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Kubernetes namespace name ({_LABEL_HELP})"
        )
    return text


def _add_bind_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind",
        metavar="ADDRESS",
        type=_address_arg,
        help="the deployment bound to this address (`deploy --bind`), when the zone has "
        "several here",
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
                        break_on_hyphens=False,  # node names hold hyphens
                    )
                )
        return "\n\n".join(paragraphs)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line; each command sets ``args.command`` (its name)."""
    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="autonomy",
        description="autonomy: a brokerless actor mesh for Python over ZeroMQ.",
        epilog="Run `autonomy zone --help` for running zones here, across a LAN, or in Kubernetes.",
        formatter_class=formatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"autonomy {_version()} ({autonomy.__build__})"
    )
    _add_verbosity(parser, default=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    zone = commands.add_parser(
        "zone",
        help="run a zone folder on this machine (or a share of it), or print it for Kubernetes",
        description="Run a zone folder (autonomy.yaml + images/<image>/) on this machine: "
        "every container of every clone of every pod becomes a local process (a container "
        "whose image is an image reference, such as postgres:16, runs under docker or "
        "podman). Or run this machine's share of a zone spread over a LAN (deploy --nodes "
        "--bind), or print the zone's Kubernetes objects (manifests).",
        epilog="Examples:\n"
        "  autonomy zone deploy                 run ./autonomy.yaml here; Ctrl-C stops it\n"
        "  autonomy zone deploy hello --detach  run the zone in hello/ in the background\n"
        "  autonomy zone logs -f runner         follow the output of the runner nodes\n"
        "  autonomy zone list                   show the nodes and their state\n"
        "  autonomy zone delete                 stop the zone and remove its state\n"
        "  autonomy zone manifests | kubectl apply -f -   run the zone in Kubernetes\n"
        "  autonomy zone dashboard              watch the running zone in the browser\n"
        "  autonomy zone top                    the same in the terminal",
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
        "clones), AUTONOMY_EXPECTED_NODES (the name of every node of the zone, whatever share "
        "runs here, comma-separated), AUTONOMY_BIND (with --bind), "
        "AUTONOMY_WAIT_UNTIL_INTERRUPTED=1, PYTHONUNBUFFERED=1, and its container's env.",
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
    deploy.add_argument(
        "--nodes",
        metavar="GLOB",
        action="append",
        help="run only the nodes whose names match (shell pattern, repeatable): this "
        "machine's share of a zone that spans a LAN, e.g. 'runner-pod-[0-2]-*'; every node "
        "still expects the whole zone",
    )
    deploy.add_argument(
        "--bind",
        metavar="ADDRESS",
        type=_address_arg,
        help="bind every node to this LAN address of this machine (a free port each; mDNS "
        "runs on its interface), so that the other machines' nodes reach them",
    )
    _add_stop_timeout(deploy)
    _add_verbosity(deploy, default=False)
    deploy.set_defaults(command="deploy")

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
    _add_bind_choice(logs)
    logs.add_argument("--dir", metavar="DIR", help="the zone's folder (default: the current one)")
    _add_verbosity(logs, default=False)
    logs.set_defaults(command="logs")

    listing = actions.add_parser(
        "list",
        help="show a detached zone's nodes and their state",
        description="Show the nodes of a detached zone: pid, state (running, or how it "
        "exited), restarts and uptime. Without a zone, and without autonomy.yaml "
        "in the current folder: every detached zone.",
        formatter_class=formatter,
    )
    _add_target_options(listing)
    _add_bind_choice(listing)
    _add_verbosity(listing, default=False)
    listing.set_defaults(command="list")

    delete = actions.add_parser(
        "delete",
        help="stop a detached zone and remove its state",
        description="Stop every process of a detached zone (SIGTERM, then SIGKILL after "
        "--timeout) and remove its state and logs.",
        formatter_class=formatter,
    )
    _add_target_options(delete)
    _add_bind_choice(delete)
    _add_stop_timeout(delete)
    _add_verbosity(delete, default=False)
    delete.set_defaults(command="delete")

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
    secret.set_defaults(command="secret")

    sizes = ", ".join(
        f"{name} ({r.cpu} CPU, {r.memory} requested, {r.memory_limit} limit)"
        for name, r in SIZES.items()
    )
    kube = actions.add_parser(
        "manifests",
        help="print the zone's Kubernetes objects (for kubectl apply -f -)",
        description="Print the Kubernetes objects of a zone folder: a StatefulSet per pod "
        "(clones: replicas; pod runner-pod-3 with container runner is the node "
        "runner-pod-3-runner, as here), a headless Service named after the zone whose DNS "
        "name seeds every node (mDNS off), and a Secret with the zone's secret (read "
        "through secretKeyRef). Each node binds its pod's IP on port "
        f"{MESH_PORT} (a pod's next node containers: the next ports). A container whose "
        "image is an image reference (postgres:16) goes in as it is.",
        epilog=f"size: {sizes}; no size: small. public: true only labels the pods "
        "autonomy/public=true (nodes serve nothing outside the mesh). Images: "
        "<prefix><zone>-<image>, one per images/<image>/.\n\n"
        "  autonomy zone manifests examples/distribute --image-prefix registry.example.com/me/ "
        "| kubectl apply -f -",
        formatter_class=formatter,
    )
    kube.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default=".",
        help="the zone folder, holding autonomy.yaml (default: the current one)",
    )
    kube.add_argument(
        "--image-prefix",
        metavar="PREFIX",
        default="",
        help="put before each image name <zone>-<image>: a registry and path, with its "
        "trailing slash (registry.example.com/team/)",
    )
    kube.add_argument(
        "--namespace",
        metavar="NS",
        type=_namespace_arg,
        help="the namespace of every object (it must exist); nodes then seed from "
        "<zone>.<NS>.svc (default: no namespace in the objects, the short name)",
    )
    _add_verbosity(kube, default=False)
    kube.set_defaults(command="manifests")

    add_observe_arguments(actions, formatter, _add_target_options, _add_verbosity)
    return parser
