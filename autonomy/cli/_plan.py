"""The launch plan: which processes a zone is, each with its command line, folder and environment.

`plan` turns a parsed zone file into one `LaunchSpec` per node: the image's command (from its
Dockerfile), run in ``images/<image>/``, with the node's identity in its environment. It
starts nothing; a spec round-trips through JSON, which is how the detached supervisor gets
its plan.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autonomy._config import Env

from ._dockerfile import command_for
from ._zonefile import ZoneFile

__all__ = ["LaunchSpec", "plan"]

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

    @property
    def launch_id(self) -> str | None:
        """The mark of the launch this process belongs to (``AUTONOMY_LAUNCH_ID``)."""
        return self.env.get(Env.LAUNCH_ID.value)

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
            Env.ZONE.value: zone.name,
            Env.NODE_NAME.value: node.name,
            Env.EXPECTED_NODES.value: expected,
            Env.LAUNCH_ID.value: launch_id,
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
