"""Containers that are not nodes, run locally: the docker or podman command lines for them.

A zone's container whose ``image`` is an image reference (``postgres:16``, an MCP server)
is not an autonomy node. In a Kubernetes pod its containers share one network namespace, so
the nodes reach it on localhost; locally, ``zone deploy`` runs it with docker or podman on
the host's network (``--network host``), which keeps that true. Its ``env`` reaches it by
name only (``-e NAME``, the value taken from the client's environment), so no value shows on
a command line or in the launcher's log. This module finds an engine that answers and builds
the command lines; the supervisor runs them. It starts no container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ENGINES",
    "EngineSearch",
    "container_name",
    "find_engine",
    "remove_command",
    "run_command",
]

ENGINES: Final = ("docker", "podman")
"""The container engines ``zone deploy`` looks for on PATH, in this order."""

PROBE_TIMEOUT_S: Final = 10.0
"""How long ``ENGINE version`` may take to say whether the engine answers."""

_NAME_UNSAFE_RE: Final = re.compile(r"[^a-zA-Z0-9_.-]")


@dataclass(frozen=True)
class EngineSearch:
    """What `find_engine` found: an engine that answers, or why there is none."""

    engine: str | None = None
    """The path of the first engine on PATH that answers; None if none does."""
    failures: dict[str, str] = field(default_factory=dict)
    """Engine name → why it does not answer (its daemon is down...), for those installed."""

    def why_none(self) -> str:
        """Why no engine can run a container: for an error message."""
        if not self.failures:
            return f"neither {' nor '.join(ENGINES)} is installed here"
        return "; ".join(f"{name} does not answer ({why})" for name, why in self.failures.items())


def find_engine() -> EngineSearch:
    """The first of docker and podman on PATH whose ``version`` command succeeds (the
    docker client alone is not enough: its daemon must answer)."""
    failures: dict[str, str] = {}
    for engine in ENGINES:
        path = shutil.which(engine)
        if path is None:
            continue
        why = _probe(path)
        if why is None:
            return EngineSearch(engine=path, failures=failures)
        failures[engine] = why
    return EngineSearch(failures=failures)


def _probe(path: str) -> str | None:
    """None if the engine answers, else what it said (its last line of errors)."""
    try:
        done = subprocess.run(
            [path, "version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`{os.path.basename(path)} version` took over {PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"`{os.path.basename(path)} version` exited {done.returncode}"


def container_name(zone: str, name: str, launch_id: str) -> str:
    """The engine's name for one run of a container: unique to the zone, the process and the
    launch (``autonomy-<zone>-<name>-<launch>``), so that a container left by a launch that
    was killed never blocks the next one."""
    return _NAME_UNSAFE_RE.sub("-", f"autonomy-{zone}-{name}-{launch_id[:8]}")


def run_command(
    engine: str, name: str, image: str, args: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """``ENGINE run --rm --name NAME --network host -e NAME... IMAGE ARGS...``.

    ``env``'s names are passed with ``-e NAME``: the values must be in the environment the
    command runs in. ``args`` replace the image's CMD, as in Kubernetes.
    """
    names = [flag for key in env for flag in ("-e", key)]
    return [engine, "run", "--rm", "--name", name, "--network", "host", *names, image, *args]


def remove_command(engine: str, name: str) -> list[str]:
    """``ENGINE rm --force NAME``: stops and removes the container, if it is still there (the
    ``run`` client may have been killed before it could stop it)."""
    return [engine, "rm", "--force", name]
