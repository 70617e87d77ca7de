"""Zones: which nodes are in this node's zone, and `Zone.nodes(node, filter=...)` over them.

Two tables. *Candidates* are nodes we heard of: from mDNS (``_discovery``), from seed peers
and the peers they know (``AUTONOMY_PEERS``), and from nodes that dialed us. A candidate
becomes a *member* only once this node has reached it and it answered our hello from the
same zone, so `Zone.nodes` never returns a node that cannot be talked to (nor, with a zone
secret, one that lacks it). A member leaves when it says goodbye (over mDNS or the wire) or
when its connection stays down for ``PEER_UNREACHABLE_S``: liveness comes from the
transport, never from mDNS records, which outlive a killed node by many minutes.

Every node dials every member it verifies: fine for the dozens of nodes of a zone on a LAN.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from typing import TYPE_CHECKING, Any, Final, final

from ._base import timeout_seconds
from ._discovery import Discovery, Member, Membership
from ._errors import AutonomyError, ConfigError, DiscoveryError
from ._node import _env_flag
from ._protocol import MEMBERS, VERSION, check_name, encode
from ._secret import zone_secret

if TYPE_CHECKING:
    from ._node import Node, _Peer
    from ._remote import RemoteNode

__all__ = ["Zone", "ZoneAgent"]

log = logging.getLogger("autonomy.discovery")

ZONE_WAIT_MS: Final = 30_000
"""How long `Zone.nodes` waits for the nodes it expects (``count=``, or the zone launcher's
``AUTONOMY_EXPECTED_NODES``) before it returns what it found."""

SETTLE_AFTER_START_S: Final = 3.0
"""Without expectations, `Zone.nodes` first lets discovery run this long after the node
started: mDNS name probing takes ~1.2 s, and nodes started together saw each other ~1.5 s
after a common start (DESIGN.md)."""

SETTLE_QUIET_S: Final = 0.5
"""...and then until no node joined for this long..."""

SETTLE_MAX_S: Final = 6.0
"""...but never longer than this after the node started."""

GOSSIP_INTERVAL_S: Final = 1.0
"""How often a node with seed peers asks them (and its members) whom they know."""


def _seed_endpoint(seed: str) -> str:
    seed = seed.strip()
    if "://" in seed:
        return seed
    host, sep, port = seed.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"a seed peer must be HOST:PORT, got {seed!r}", key="AUTONOMY_PEERS")
    return f"tcp://{seed}"


def seed_endpoints(peers: list[str] | str | None) -> list[str]:
    """Seed peers from ``peers`` (a list or a comma-separated string), else ``AUTONOMY_PEERS``."""
    if peers is None:
        peers = os.environ.get("AUTONOMY_PEERS", "")
    if isinstance(peers, str):
        peers = [part for part in peers.split(",") if part.strip()]
    return [_seed_endpoint(seed) for seed in peers]


def discovery_enabled(discovery: bool | None) -> bool:
    """mDNS on unless ``discovery=False`` or ``AUTONOMY_DISCOVERY=0``."""
    return discovery if discovery is not None else _env_flag("AUTONOMY_DISCOVERY", True)


def _interfaces_for(endpoint: str) -> list[str]:
    """mDNS runs on the interface the node is bound to, so that it reaches exactly the
    machines that can dial the node: loopback by default, a LAN address when bound to one."""
    host = endpoint.partition("://")[2].rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"discovery needs the node bound to an IP address, not {host!r}", key="bind"
        ) from None
    if address.is_unspecified:
        raise ConfigError(
            "discovery cannot advertise a wildcard address: bind the LAN address other "
            "machines reach (AUTONOMY_BIND=192.168.1.20), or turn discovery off and use "
            "AUTONOMY_PEERS",
            key="bind",
        )
    return [str(address)]


class ZoneAgent:
    """Keeps one node's view of its zone (see the module docstring)."""

    def __init__(self, node: Node, *, discovery: bool, seeds: list[str]) -> None:
        self._node = node
        self.candidates = Membership(node.zone, node.name)
        """Nodes heard of, not yet (or no longer) verified."""
        self.members = Membership(node.zone, node.name)
        """Nodes of the zone this node has reached."""
        self._discovery: Discovery | None = None
        if discovery:
            self._discovery = Discovery(
                self.candidates,
                name=node.name,
                zone=node.zone,
                endpoint=node.endpoint,
                instance=node.instance,
                interfaces=_interfaces_for(node.endpoint),
            )
        self._seeds = seeds
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._verifying: dict[str, asyncio.Task[None]] = {}
        self._removals: dict[str, asyncio.TimerHandle] = {}
        self.started_at = asyncio.get_running_loop().time()
        self.candidates.subscribe(self._on_candidate, self._on_candidate_left)

    def __repr__(self) -> str:
        return (
            f"<ZoneAgent {self._node.name!r} zone={self._node.zone!r} "
            f"members={len(self.members.members())} candidates="
            f"{len(self.candidates.members())} seeds={len(self._seeds)}>"
        )

    def start(self) -> None:
        """Start discovering in the background: the node is usable at once."""
        if self._discovery is not None:
            self._spawn(self._start_discovery(self._discovery))
        if self._seeds:
            self._spawn(self._gossip())

    async def _start_discovery(self, discovery: Discovery) -> None:
        try:
            await discovery.start()
        except DiscoveryError as exc:
            if not self._stopping:
                log.error("node %s: %s; seed peers still work", self._node.name, exc)

    async def stop(self) -> None:
        """Withdraw from mDNS (a goodbye others see within milliseconds), stop every task."""
        self._stopping = True
        for handle in self._removals.values():
            handle.cancel()
        self._removals.clear()
        # Discovery first, and never by cancelling its start: a stop during start closes
        # zeroconf's sockets properly and makes start() return.
        if self._discovery is not None:
            await self._discovery.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- candidates become members once reached ------------------------------------------

    def _on_candidate(self, candidate: Member) -> None:
        member = self.members.get(candidate.name)
        if member is not None and member.instance == candidate.instance:
            return
        self._verify_soon(candidate)

    def _on_candidate_left(self, candidate: Member, reason: str) -> None:
        # A goodbye (mDNS) or a newer instance of the same name: the old one is gone.
        if self.members.remove(candidate.name, reason, instance=candidate.instance):
            self._node._forget_peer(candidate.endpoint)

    def _verify_soon(self, candidate: Member) -> None:
        running = self._verifying.get(candidate.name)
        if running is not None and not running.done():
            running.cancel()
        self._verifying[candidate.name] = self._spawn(self._verify(candidate))

    async def _verify(self, candidate: Member) -> None:
        from ._node import PEER_UNREACHABLE_S

        try:
            remote = await self._node.connect(
                candidate.endpoint, timeout=(PEER_UNREACHABLE_S + 2) * 1000
            )
        except AutonomyError as exc:
            log.debug("candidate %s at %s not reached: %s", candidate.name, candidate.endpoint, exc)
            return
        peer = remote._peer
        if peer.name != candidate.name:
            log.warning(
                "node at %s calls itself %r, but was announced as %r: ignored",
                candidate.endpoint,
                peer.name,
                candidate.name,
            )
            return
        self.members.add(
            Member(candidate.name, self._node.zone, candidate.endpoint, VERSION, peer.instance),
            "verified",
        )

    def heard_of(self, name: str, endpoint: str, instance: str, source: str) -> None:
        """A node told us of itself (a hello) or of others (gossip): a candidate."""
        if name == self._node.name or not instance:
            return
        known = self.members.get(name)
        if known is not None and known.instance == instance and known.endpoint == endpoint:
            return
        self.candidates.add(Member(name, self._node.zone, endpoint, VERSION, instance), source)

    # -- liveness from the transport ------------------------------------------------------

    def peer_changed(self, peer: _Peer) -> None:
        """The node's connection to ``peer`` changed state."""
        member = self.members.get(peer.name) if peer.name else None
        if member is None or member.endpoint != peer.endpoint:
            candidate = self.candidates.get(peer.name) if peer.name else None
            if (
                peer.state == "up"
                and candidate is not None
                and candidate.endpoint == peer.endpoint
                and member is None
            ):
                self._verify_soon(candidate)  # back after a partition: a member again
            return
        pending = self._removals.pop(peer.name, None)
        if pending is not None:
            pending.cancel()
        if peer.state == "up":
            return
        if peer.state in ("gone", "refused", "closed"):
            self._remove(member, peer.reason or peer.state)
            return
        from ._node import PEER_UNREACHABLE_S

        self._removals[peer.name] = asyncio.get_running_loop().call_later(
            PEER_UNREACHABLE_S, self._remove_if_down, member, peer
        )

    def _remove_if_down(self, member: Member, peer: _Peer) -> None:
        self._removals.pop(member.name, None)
        if peer.state != "up":
            self._remove(member, f"unreachable: {peer.reason}")

    def _remove(self, member: Member, reason: str) -> None:
        if self.members.remove(member.name, reason, instance=member.instance):
            # Forget the connection only when mDNS will not bring the same node back.
            candidate = self.candidates.get(member.name)
            if candidate is None or candidate.instance == member.instance:
                self.candidates.remove(member.name, reason, instance=member.instance)

    # -- seed peers and gossip --------------------------------------------------------------

    def member_list(self) -> list[list[str]]:
        """What this node tells others it knows: itself and its members."""
        node = self._node
        known = [[node.name, node.endpoint, node.instance]]
        known.extend([m.name, m.endpoint, m.instance] for m in self.members.members())
        return known

    async def _gossip(self) -> None:
        while True:
            targets = set(self._seeds)
            targets.update(m.endpoint for m in self.members.members())
            await asyncio.gather(*(self._exchange(endpoint) for endpoint in targets))
            await asyncio.sleep(GOSSIP_INTERVAL_S)

    async def _exchange(self, endpoint: str) -> None:
        node = self._node
        try:
            remote = await node.connect(endpoint, timeout=5000)
            rid = node._new_rid()
            known = await node._call(remote._peer, rid, encode(MEMBERS, rid), "", 5.0)
        except AutonomyError as exc:
            log.debug("no membership from %s: %s", endpoint, exc)
            return
        peer = remote._peer
        if peer.name and self.members.get(peer.name) is None:
            self.members.add(Member(peer.name, node.zone, endpoint, VERSION, peer.instance), "seed")
        if not isinstance(known, list):
            return
        for entry in known:
            if (
                isinstance(entry, list)
                and len(entry) == 3
                and all(isinstance(part, str) and part for part in entry)
            ):
                self.heard_of(entry[0], entry[1], entry[2], "peers")


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

        The first two wait at most ``timeout`` ms (default `ZONE_WAIT_MS`), then return the
        nodes found so far with a warning in the log.

        Raises:
            NodeClosedError: ``node`` is not running.
        """
        node._check_running()
        agent = node._zone_agent
        if agent is None:
            raise DiscoveryError(f"node {node.name!r} runs without a zone agent")
        pattern = filter or ""
        wait_s = timeout_seconds(timeout if timeout is not None else ZONE_WAIT_MS)
        include_self = pattern in node.name

        def matching(members: list[Member]) -> list[Member]:
            return [m for m in members if pattern in m.name]

        expected = [
            name.strip()
            for name in os.environ.get("AUTONOMY_EXPECTED_NODES", "").split(",")
            if name.strip() and pattern in name.strip() and name.strip() != node.name
        ]
        if count is not None:
            wanted = count - (1 if include_self else 0)
            if not await agent.members.wait_for(lambda ms: len(matching(ms)) >= wanted, wait_s):
                log.warning(
                    "Zone.nodes: %d nodes matching %r after %.0f s, %d wanted",
                    len(matching(agent.members.members())) + include_self,
                    pattern,
                    wait_s,
                    count,
                )
        elif expected:
            if not await agent.members.wait_for(
                lambda ms: {m.name for m in ms} >= set(expected), wait_s
            ):
                missing = set(expected) - {m.name for m in agent.members.members()}
                log.warning("Zone.nodes: still missing %s after %.0f s", sorted(missing), wait_s)
        else:
            loop = asyncio.get_running_loop()
            age = loop.time() - agent.started_at
            if age < SETTLE_AFTER_START_S:
                await asyncio.sleep(SETTLE_AFTER_START_S - age)
            age = loop.time() - agent.started_at
            await agent.members.wait_settled(SETTLE_QUIET_S, max(0.0, SETTLE_MAX_S - age))
        found: list[Node | RemoteNode] = [
            node._remote_for(m.endpoint, m.name) for m in matching(agent.members.members())
        ]
        if include_self:
            found.append(node)
        return sorted(found, key=lambda each: each.name)
