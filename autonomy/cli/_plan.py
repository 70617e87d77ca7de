"""The launch plan: which processes a zone is, each with its command line, folder and environment.

`plan` turns a parsed zone file into one `LaunchSpec` per node: the image's command (from its
Dockerfile), run in ``images/<image>/``, with the node's identity in its environment; a
container that is not a node becomes a docker or podman command (``_containers``).
`select_nodes` picks a share of the zone (``--nodes GLOB``) for one machine of a LAN: every
node still expects the whole zone. It starts nothing; a spec round-trips through JSON, which
is how the detached supervisor gets its plan.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import logging
import os
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autonomy import ConfigError
from autonomy._config import Env

from ._containers import container_name, find_engine, remove_command, run_command
from ._dockerfile import command_for
from ._text import brief_list
from ._zonefile import NodeSpec, ZoneFile

__all__ = ["LaunchSpec", "bind_value", "plan", "select_nodes"]

logger = logging.getLogger("autonomy.cli")


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
    is_node: bool = True
    """False for a container that is not a node (run by docker or podman)."""
    stop_argv: tuple[str, ...] = ()
    """A command to run once the process has ended: removes a container the engine may still
    run (empty for a node)."""

    @property
    def launch_id(self) -> str | None:
        """The mark of the launch this process belongs to (``AUTONOMY_LAUNCH_ID``)."""
        return self.env.get(Env.LAUNCH_ID.value)

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "argv": list(self.argv),
            "env": dict(self.env),
            "stop_argv": list(self.stop_argv),
        }

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
            is_node=bool(data.get("is_node", True)),
            stop_argv=tuple(str(a) for a in data.get("stop_argv", ())),
        )


def select_nodes(zone: ZoneFile, globs: Sequence[str]) -> list[str]:
    """The names of the zone's processes that match any of ``globs`` (``fnmatch``, case
    sensitive: ``runner-pod-[0-2]-*``), in start order.

    Raises:
        ConfigError: a glob matches no process of the zone.
    """
    names = zone.node_names()
    for glob in globs:
        if not fnmatch.filter(names, glob):
            raise ConfigError(
                f"{glob!r} matches no node of zone {zone.name}; its nodes: {brief_list(names)}",
                key="--nodes",
            )
    return [name for name in names if any(fnmatch.fnmatchcase(name, glob) for glob in globs)]


def bind_value(address: str) -> str:
    """``AUTONOMY_BIND`` for a node bound to ``address`` on a free port: the address, in
    brackets if IPv6."""
    return (
        f"[{address}]"
        if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address)
        else address
    )


def _engine_or_error(zone: ZoneFile, node: NodeSpec, engine: str | None) -> str:
    if engine is not None:
        return engine
    search = find_engine()
    if search.engine is None:
        raise ConfigError(
            f"container {node.container.name!r} of pod {node.pod.name!r} runs the image "
            f"{node.container.image}, which is not a node: `zone deploy` runs such containers "
            f"with docker or podman, and {search.why_none()} (start one, or leave "
            f"{node.name} out with --nodes)",
            path=str(zone.path),
            key=f"{zone.key_of(node)}.image",
        )
    return search.engine


def plan(
    zone: ZoneFile,
    *,
    extra_env: Mapping[str, str] | None = None,
    launch_id: str | None = None,
    base_env: Mapping[str, str] | None = None,
    nodes: Collection[str] | None = None,
    bind: str | None = None,
    engine: str | None = None,
) -> list[LaunchSpec]:
    """The processes of a zone (or of the share of it named by ``nodes``), with their command
    lines and environments.

    Each node's environment is, lowest precedence first: ``base_env`` (default: this
    process's), ``PYTHONUNBUFFERED=1`` and ``AUTONOMY_WAIT_UNTIL_INTERRUPTED=1``, the
    container's ``env``, the node's identity (``AUTONOMY_ZONE``, ``AUTONOMY_NODE_NAME``,
    ``AUTONOMY_EXPECTED_NODES``: the whole zone's nodes, whatever share runs here,
    ``AUTONOMY_LAUNCH_ID``, and ``AUTONOMY_BIND`` when ``bind`` gives an address), then
    ``extra_env`` (the launcher's own settings, such as the zone's secret).

    A container that is not a node runs with ``engine`` (default: the first of docker and
    podman on PATH that answers), its ``env`` passed by name; it gets no autonomy setting.

    Raises:
        ConfigError: a container that is not a node is to run, and no engine answers
            (raised before anything starts).
    """
    base = dict(os.environ if base_env is None else base_env)
    launch_id = launch_id or secrets.token_hex(8)
    selected = [node for node in zone.nodes if nodes is None or node.name in nodes]
    expected = ",".join(zone.expected_nodes())
    specs: list[LaunchSpec] = []
    for node in selected:
        if not node.is_node:
            engine = _engine_or_error(zone, node, engine)  # looked for once
            specs.append(_container_spec(zone, node, base, launch_id, engine))
            continue
        image_dir = zone.image_dir(node.container.image)
        identity = {
            Env.ZONE.value: zone.name,
            Env.NODE_NAME.value: node.name,
            Env.EXPECTED_NODES.value: expected,
            Env.LAUNCH_ID.value: launch_id,
        }
        if bind is not None:
            identity[Env.BIND.value] = bind_value(bind)
        for name in identity.keys() & node.container.env.keys():
            logger.warning(
                "%s: env %s is set by the launcher; the container's value is ignored",
                node.name,
                name,
            )
        env = {
            **base,
            "PYTHONUNBUFFERED": "1",
            Env.WAIT_UNTIL_INTERRUPTED.value: "1",
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


def _container_spec(
    zone: ZoneFile, node: NodeSpec, base: Mapping[str, str], launch_id: str, engine: str
) -> LaunchSpec:
    """A container that is not a node: ``docker run`` (or podman) of its image, with its
    ``env`` in the client's environment (passed on by name) and this launch's mark."""
    name = container_name(zone.name, node.name, launch_id)
    container = node.container
    return LaunchSpec(
        name=node.name,
        pod=node.pod.name,
        clone=node.clone,
        container=container.name,
        image=container.image,
        argv=tuple(run_command(engine, name, container.image, container.args, container.env)),
        cwd=str(zone.dir),
        env={**base, **container.env, Env.LAUNCH_ID.value: launch_id},
        is_node=False,
        stop_argv=tuple(remove_command(engine, name)),
    )
