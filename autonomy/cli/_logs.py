"""Log tailing: a detached zone's node logs, printed with each line prefixed by its node's name."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

from ._detached import DeploymentState, LaunchError, load_state
from ._supervisor import NodeRecord

__all__ = ["print_logs"]


def _lines_of(data: bytes) -> Iterator[str]:
    for line in data.split(b"\n"):
        yield line.decode("utf-8", "replace").rstrip("\r")


def print_logs(
    state: DeploymentState,
    nodes: Sequence[NodeRecord],
    out: TextIO,
    *,
    follow: bool = False,
    poll_s: float = 0.2,
) -> None:
    """Print the nodes' logs, each line prefixed by its node's name; follow them if asked.

    Following ends when the zone has ended (its supervisor and nodes are gone) or its state
    was deleted, after the last lines are printed.
    """
    width = max((len(node.name) for node in nodes), default=0)
    offsets = {node.name: 0 for node in nodes}
    partial = {node.name: b"" for node in nodes}

    def drain(final: bool) -> None:
        for node in nodes:
            try:
                with open(state.log_path(node), "rb") as file:
                    if os.fstat(file.fileno()).st_size < offsets[node.name]:
                        offsets[node.name] = 0  # truncated or replaced: start again
                    file.seek(offsets[node.name])
                    data = file.read()
            except FileNotFoundError:
                data = b""
            offsets[node.name] += len(data)
            buffer = partial[node.name] + data
            if final:
                if not buffer:
                    continue
                complete, rest = buffer.removesuffix(b"\n"), b""
            else:
                complete, newline, rest = buffer.rpartition(b"\n")
                if not newline:
                    partial[node.name] = buffer
                    continue
            partial[node.name] = rest
            prefix = f"{node.name:<{width}} | "
            out.write("".join(prefix + line + "\n" for line in _lines_of(complete)))
        out.flush()

    if not follow:
        drain(final=True)
        return
    while True:
        try:
            current = load_state(state.key) if state.dir.exists() else None
        except LaunchError:
            current = None
        ended = current is None or not (current.supervisor_alive() or current.live_nodes())
        drain(final=ended)
        if ended:
            return
        time.sleep(poll_s)
