"""`Zone`: the guide's ``await Zone.nodes(node, filter=...)``, and a zone's secret.

The public face of the zone. The work is below the node, in ``_membership``: this module
only decides what to wait for and returns the members that match.
"""

from __future__ import annotations

import logging
from typing import Final, final

from ._base import timeout_seconds
from ._discovery import Member
from ._node import Node
from ._protocol import check_name
from ._remote import RemoteNode
from ._secret import zone_secret

__all__ = ["SETTLE_AFTER_START_S", "SETTLE_MAX_S", "SETTLE_QUIET_S", "ZONE_WAIT_MS", "Zone"]

log = logging.getLogger("autonomy.discovery")

ZONE_WAIT_MS: Final = 30_000
"""How long `Zone.nodes` waits for the nodes it expects (``count=``, or the zone launcher's
``AUTONOMY_EXPECTED_NODES``) before it returns what it found."""

EXPECTED_WAIT_FACTOR: Final = 4
"""Waiting for the launcher's expected nodes, `Zone.nodes` waits ``timeout`` after the last
node that joined, and at most this many times ``timeout`` in all."""

SETTLE_AFTER_START_S: Final = 3.0
"""Without expectations, `Zone.nodes` first lets discovery run this long after the node
started: mDNS name probing takes ~1.2 s, and nodes started together saw each other ~1.5 s
after a common start (DESIGN.md)."""

SETTLE_QUIET_S: Final = 0.5
"""...and then until no node joined for this long..."""

SETTLE_MAX_S: Final = 6.0
"""...but never longer than this after the node started."""


@final
class Zone:
    """The zone a node belongs to: the guide's ``await Zone.nodes(node, filter="runner")``."""

    def __init__(self) -> None:
        raise TypeError("Zone is not instantiated: call Zone.nodes(node, ...)")

    @staticmethod
    def secret(zone: str) -> str:
        """The secret of ``zone`` on this machine, created on first use: copy it into
        ``AUTONOMY_ZONE_SECRET`` on the other machines of the zone.

        Raises:
            ConfigError: the secret is invalid or its file cannot be created.
            SecurityError: its file is readable by other users.
        """
        return zone_secret(check_name(zone, "zone"))

    @staticmethod
    async def nodes(
        node: Node,
        filter: str | None = None,
        *,
        count: int | None = None,
        timeout: float | None = None,
    ) -> list[Node | RemoteNode]:
        """The nodes of ``node``'s zone whose names contain ``filter``, sorted by name.

        Remote nodes come as `RemoteNode`s; ``node`` itself is included when its name
        matches. Which nodes to wait for, in this order:

        - ``count``: at least this many matching nodes;
        - else the names in ``AUTONOMY_EXPECTED_NODES`` (the zone launcher sets it) that
          match: all of them;
        - else discovery settles: at least `SETTLE_AFTER_START_S` after the node started,
          then until no node joined for `SETTLE_QUIET_S` (at most `SETTLE_MAX_S`).

        ``count`` waits at most ``timeout`` ms (default `ZONE_WAIT_MS`); expected nodes,
        ``timeout`` after the last one that joined (at most 4 times ``timeout``). Then it
        returns the nodes found so far, with a warning in the log.

        Raises:
            NodeClosedError: ``node`` is not running.
            TypeError: ``count`` is not an int (or ``filter`` not a str).
            ValueError: ``count`` is negative.
        """
        if count is not None and (type(count) is not int):
            raise TypeError(f"count must be an int, got {count!r}")
        if count is not None and count < 0:
            raise ValueError(f"count must be 0 or more, got {count}")
        if filter is not None and not isinstance(filter, str):
            raise TypeError(f"filter must be a str, got {filter!r}")
        agent = node.membership
        pattern = filter or ""
        wait_s = timeout_seconds(timeout if timeout is not None else ZONE_WAIT_MS)
        include_self = pattern in node.name

        def matching(members: list[Member]) -> list[Member]:
            return [m for m in members if pattern in m.name]

        expected = [name for name in agent.expected if pattern in name and name != node.name]
        if count is not None:
            wanted = count - (1 if include_self else 0)
            if not await agent.wait_for(lambda ms: len(matching(ms)) >= wanted, wait_s):
                log.warning(
                    "Zone.nodes: %d nodes matching %r after %.0f s, %d wanted",
                    len(matching(agent.members.members())) + include_self,
                    pattern,
                    wait_s,
                    count,
                )
        elif expected:
            # A big zone on a slow machine starts its last nodes late: keep waiting while
            # nodes keep joining, up to EXPECTED_WAIT_FACTOR times the timeout.
            if not await agent.wait_for(
                lambda ms: {m.name for m in ms} >= set(expected),
                wait_s,
                while_joining_s=wait_s * EXPECTED_WAIT_FACTOR,
            ):
                missing = sorted(set(expected) - {m.name for m in agent.members.members()})
                shown = ", ".join(missing[:10]) + (
                    f"... and {len(missing) - 10} more" if len(missing) > 10 else ""
                )
                log.warning(
                    "Zone.nodes: %d expected node(s) still missing after %.0f s without a "
                    "new one: %s",
                    len(missing),
                    wait_s,
                    shown,
                )
        else:
            await agent.wait_settled(SETTLE_AFTER_START_S, SETTLE_QUIET_S, SETTLE_MAX_S)
        found: list[Node | RemoteNode] = [
            remote for remote in node.peers() if pattern in remote.name
        ]
        if include_self:
            found.append(node)
        return sorted(found, key=lambda each: each.name)
