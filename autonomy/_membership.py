"""One node's view of its zone: which nodes are members, learnt from discovery, seeds and
gossip, and kept by liveness from the links.

Two tables. *Candidates* are nodes we heard of: from mDNS (``_discovery``), from seed peers
and the peers they know (``AUTONOMY_PEERS``), and from nodes that dialed us. A candidate
becomes a *member* only once this node has reached it and it answered our hello from the
same zone, so `Zone.nodes` never returns a node that cannot be talked to (nor, with a zone
secret, one that lacks it). A member leaves when it says goodbye (over mDNS or the wire) or
when its link stays down for ``PEER_UNREACHABLE_S``: liveness comes from the links, never
from mDNS records, which outlive a killed node by many minutes.

Sits below `Node`: it knows the node only as its `Identity` and its `Links`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from ._discovery import Discovery, Member, Membership
from ._errors import AutonomyError, ConfigError, DiscoveryError, PeerUnavailableError
from ._peer import PEER_UNREACHABLE_S, Identity, Link, Links, LinkState
from ._protocol import MEMBERS, VERSION

__all__ = ["GOSSIP_INTERVAL_S", "MemberLink", "ZoneAgent"]

log = logging.getLogger("autonomy.discovery")

GOSSIP_INTERVAL_S: Final = 1.0
"""How often a node with seed peers asks them (and its members) whom they know."""

DISCOVERY_RETRY_S: Final = 1.0
DISCOVERY_RETRY_MAX_S: Final = 30.0
"""mDNS that failed to start is started again after 1 s, then 2, 4... at most every 30 s."""


def interfaces_for(endpoint: str) -> list[str]:
    """mDNS runs on the interface the node is bound to, so that it reaches exactly the
    machines that can dial the node: loopback by default, a LAN address when bound to one.

    Raises:
        ConfigError: the node is bound to a host name or a wildcard address.
    """
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

    def __init__(
        self,
        identity: Identity,
        links: Links,
        *,
        discovery: bool,
        seeds: tuple[str, ...],
        expected: tuple[str, ...] = (),
        on_conflict: Callable[[ConfigError], None] | None = None,
    ) -> None:
        self._me = identity
        self._on_conflict = on_conflict
        self.expected = expected
        """The names of the zone's nodes, when its launcher said (``AUTONOMY_EXPECTED_NODES``)."""
        self._links = links
        self.candidates = Membership(identity.zone, identity.name, admit=self._admits)
        """Nodes heard of, not yet (or no longer) verified."""
        self.members = Membership(identity.zone, identity.name)
        """Nodes of the zone this node has reached."""
        self._discovery = self._new_discovery() if discovery else None
        self._seeds = seeds
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._verifying: dict[str, asyncio.Task[None]] = {}
        self._departed: dict[str, str] = {}
        self._duplicates: set[str] = set()
        """Instances refused as a second node of a member's name (logged once each)."""
        self._name_checks: dict[str, asyncio.Task[None]] = {}
        """Why each node that left did (the latest few): a call to it says so."""
        self._removals: dict[str, asyncio.TimerHandle] = {}
        self.started_at = time.monotonic()
        """When this node joined (monotonic clock): `Zone.nodes` lets discovery settle."""
        self.candidates.subscribe(self._on_candidate, self._on_candidate_left)
        self.members.subscribe(self._on_member_joined, self._on_member_left)
        links.on_change = self.link_changed

    def _new_discovery(self) -> Discovery:
        me = self._me
        return Discovery(
            self.candidates,
            name=me.name,
            zone=me.zone,
            endpoint=me.endpoint,
            instance=me.instance,
            interfaces=interfaces_for(me.endpoint),
            on_same_name=self._same_name,
        )

    def __repr__(self) -> str:
        return (
            f"<ZoneAgent {self._me.name!r} zone={self._me.zone!r} "
            f"members={len(self.members.members())} candidates="
            f"{len(self.candidates.members())} seeds={len(self._seeds)}>"
        )

    def start(self) -> None:
        """Start discovering in the background: the node is usable at once."""
        if self._discovery is not None:
            self._spawn(self._keep_discovering(self._discovery))
        if self._seeds:
            self._spawn(self._gossip())

    async def _keep_discovering(self, discovery: Discovery) -> None:
        """Start mDNS, and start it again for as long as it fails: a node whose loop was
        blocked at start (a model loaded synchronously before the first ``await``) misses
        zeroconf's deadlines once, and must not stay invisible for its whole life."""
        delay = DISCOVERY_RETRY_S
        while True:
            try:
                await discovery.start()
            except DiscoveryError as exc:
                if self._stopping:
                    return
                log.warning(
                    "node %s: %s; retrying in %.0f s (seed peers work meanwhile)",
                    self._me.name,
                    exc,
                    delay,
                )
            else:
                return
            await asyncio.sleep(delay)
            if self._stopping:
                return
            delay = min(delay * 2, DISCOVERY_RETRY_MAX_S)
            discovery = self._discovery = self._new_discovery()

    async def stop(self) -> None:
        """Withdraw from mDNS (a goodbye others see within milliseconds), stop every task."""
        self._stopping = True
        self._links.on_change = None
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

    # -- members by name ---------------------------------------------------------------------

    def link_to(self, name: str) -> Link:
        """The link to the member called ``name``, whichever instance of it is a member now.

        Raises:
            PeerUnavailableError: no node of that name is a member (it left, or never joined).
        """
        member = self.members.get(name)
        if member is None:
            reason = self._departed.get(name)
            raise PeerUnavailableError(
                repr(name),
                f"it left the zone ({reason})" if reason else "it is not a member of the zone",
            )
        return self._links.get(member.endpoint, name)

    def _on_member_joined(self, member: Member) -> None:
        self._departed.pop(member.name, None)

    def _on_member_left(self, member: Member, reason: str) -> None:
        if len(self._departed) >= 1000:
            self._departed.clear()
        self._departed[member.name] = reason

    # -- candidates become members once reached ------------------------------------------

    def _on_candidate(self, candidate: Member) -> None:
        member = self.members.get(candidate.name)
        if member is not None and member.instance == candidate.instance:
            return
        self._verify_soon(candidate)

    def _on_candidate_left(self, candidate: Member, reason: str) -> None:
        # A goodbye (mDNS) or a newer instance of the same name: the old one is gone.
        if self.members.remove(candidate.name, reason, instance=candidate.instance):
            self._links.forget(candidate.endpoint, "left the zone")

    def _verify_soon(self, candidate: Member) -> None:
        running = self._verifying.get(candidate.name)
        if running is not None and not running.done():
            running.cancel()
        self._verifying[candidate.name] = self._spawn(self._verify(candidate))

    async def _verify(self, candidate: Member) -> None:
        try:
            link = await self._links.connect(candidate.endpoint, PEER_UNREACHABLE_S + 2)
        except AutonomyError as exc:
            log.debug("candidate %s at %s not reached: %s", candidate.name, candidate.endpoint, exc)
            return
        if link.name != candidate.name:
            log.warning(
                "node at %s calls itself %r, but was announced as %r: ignored",
                candidate.endpoint,
                link.name,
                candidate.name,
            )
            return
        self.members.add(
            Member(candidate.name, self._me.zone, candidate.endpoint, VERSION, link.instance),
            "verified",
        )

    def heard_of(self, name: str, endpoint: str, instance: str, source: str) -> None:
        """A node told us of itself (a hello) or of others (gossip): a candidate."""
        if not instance:
            return
        if name == self._me.name:
            if instance != self._me.instance:
                self._same_name(Member(name, self._me.zone, endpoint, VERSION, instance))
            return
        known = self.members.get(name)
        if known is not None and known.instance == instance and known.endpoint == endpoint:
            return
        self.candidates.add(Member(name, self._me.zone, endpoint, VERSION, instance), source)

    # -- one name, one node -------------------------------------------------------------------

    def _admits(self, candidate: Member) -> bool:
        """A second node that calls itself like a live member is kept out: the first keeps
        its name (the second stops, see `_same_name`). A restarted node is let in: its
        predecessor's link is down, or it said goodbye."""
        member = self.members.get(candidate.name)
        if member is None or member.instance == candidate.instance:
            return True
        if candidate.instance < member.instance:
            return True  # the candidate started first: it keeps the name
        link = self._links.find(member.endpoint)
        if link is None or not link.is_up():
            return True
        if candidate.instance not in self._duplicates:
            self._duplicates.add(candidate.instance)
            log.warning(
                "node at %s also calls itself %r in zone %r: the node at %s keeps the name",
                candidate.endpoint,
                candidate.name,
                self._me.zone,
                member.endpoint,
            )
        return False

    def _same_name(self, other: Member) -> None:
        """Another node advertises this node's name. If it started first and answers, this
        node yields: it stops with a `ConfigError` (the one that arrives second fails)."""
        if other.instance >= self._me.instance or self._stopping:
            return  # it started later: it yields to us
        running = self._name_checks.get(other.instance)
        if running is None or running.done():
            self._name_checks[other.instance] = self._spawn(self._check_name(other))

    async def _check_name(self, other: Member) -> None:
        try:
            link = await self._links.connect(other.endpoint, PEER_UNREACHABLE_S + 2)
        except AutonomyError:
            return  # a record of a node that is gone
        if link.name != self._me.name or link.instance != other.instance:
            return
        error = ConfigError(
            f"node name {self._me.name!r} is taken in zone {self._me.zone!r} by the node at "
            f"{other.endpoint}, which started first: give this node another name",
            key="name",
        )
        log.error("%s", error)
        if self._on_conflict is not None:
            self._on_conflict(error)

    # -- liveness from the links ------------------------------------------------------------

    def link_changed(self, link: Link) -> None:
        """The node's link to a peer changed state."""
        member = self.members.get(link.name) if link.name else None
        if member is None or member.endpoint != link.endpoint:
            candidate = self.candidates.get(link.name) if link.name else None
            if (
                link.is_up()
                and candidate is not None
                and candidate.endpoint == link.endpoint
                and member is None
            ):
                self._verify_soon(candidate)  # back after a partition: a member again
            return
        pending = self._removals.pop(link.name, None)
        if pending is not None:
            pending.cancel()
        if link.is_up():
            return
        if link.state in (LinkState.GONE, LinkState.REFUSED, LinkState.CLOSED):
            self._remove(member, link.reason or link.state.value)
            return
        self._removals[link.name] = asyncio.get_running_loop().call_later(
            PEER_UNREACHABLE_S, self._remove_if_down, member, link
        )

    def _remove_if_down(self, member: Member, link: Link) -> None:
        self._removals.pop(member.name, None)
        if not link.is_up():
            self._remove(member, f"unreachable: {link.reason}")

    def _remove(self, member: Member, reason: str) -> None:
        if self.members.remove(member.name, reason, instance=member.instance):
            # Forget the connection only when mDNS will not bring the same node back.
            candidate = self.candidates.get(member.name)
            if candidate is None or candidate.instance == member.instance:
                self.candidates.remove(member.name, reason, instance=member.instance)

    # -- what Zone.nodes waits for ----------------------------------------------------------

    async def wait_for(self, predicate: Callable[[list[Member]], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(members)`` holds, or ``timeout_s``; returns whether it does."""
        return await self.members.wait_for(predicate, timeout_s)

    async def wait_settled(self, after_start_s: float, quiet_s: float, max_s: float) -> None:
        """Let discovery run ``after_start_s`` after the node started, then until no member
        joined for ``quiet_s``, but at most ``max_s`` after the start."""
        age = time.monotonic() - self.started_at
        if age < after_start_s:
            await asyncio.sleep(after_start_s - age)
        age = time.monotonic() - self.started_at
        await self.members.wait_settled(quiet_s, max(0.0, max_s - age))

    # -- seed peers and gossip --------------------------------------------------------------

    def member_list(self) -> list[list[str]]:
        """What this node tells others it knows: itself and its members."""
        me = self._me
        known = [[me.name, me.endpoint, me.instance]]
        known.extend([m.name, m.endpoint, m.instance] for m in self.members.members())
        return known

    async def _gossip(self) -> None:
        while True:
            targets = set(self._seeds)
            targets.update(m.endpoint for m in self.members.members())
            await asyncio.gather(*(self._exchange(endpoint) for endpoint in targets))
            await asyncio.sleep(GOSSIP_INTERVAL_S)

    async def _exchange(self, endpoint: str) -> None:
        try:
            link = await self._links.connect(endpoint, 5.0)
            known = await link.call(MEMBERS, timeout_s=5.0)
        except AutonomyError as exc:
            log.debug("no membership from %s: %s", endpoint, exc)
            return
        if link.name and self.members.get(link.name) is None:
            self.members.add(
                Member(link.name, self._me.zone, endpoint, VERSION, link.instance), "seed"
            )
        if not isinstance(known, list):
            return
        for entry in known:
            if (
                isinstance(entry, list)
                and len(entry) == 3
                and all(isinstance(part, str) and part for part in entry)
            ):
                self.heard_of(entry[0], entry[1], entry[2], "peers")


class MemberLink:
    """A node of the zone by name, resolved to a link on each call: while no node of that
    name is a member, calls fail at once; when one is again (a restart, at a new address),
    the same handle reaches it. The lookup is cached until the membership changes."""

    __slots__ = ("_agent", "_link", "_version", "name")

    def __init__(self, agent: ZoneAgent, name: str) -> None:
        self._agent = agent
        self.name = name
        self._link: Link | None = None
        self._version = -1

    def __call__(self) -> Link:
        version = self._agent.members.version
        link = self._link
        if link is None or version != self._version:
            link = self._link = self._agent.link_to(self.name)
            self._version = version
        return link

    def last(self) -> Link | None:
        """The link of the last successful lookup, if any."""
        return self._link
