"""One node's view of its zone: who is a member, learnt by discovery, seeds and gossip, and
kept by a failure detector whose cost per node does not grow with the zone.

- **Joining.** *Candidates* are nodes heard of over mDNS (``_discovery``) or from seed
  peers (``AUTONOMY_PEERS``). This node verifies a candidate itself (a hello answered from
  the same zone, over a connection only holders of the zone's secret can open) before it
  calls it a member, then exchanges whole views with it once. A node that says hello to us
  is a member at once (the connection proved it holds the secret), and members vouched for
  by members arrive by gossip: only the zone's members can gossip.
- **Gossip** (``_gossip``: SWIM's rules). News (joined, suspected, dead, left) is pushed to
  a few random members every ``GOSSIP_INTERVAL_S`` while there is any, each piece a bounded
  number of times; an idle zone exchanges nothing but one full pull every
  ``SYNC_INTERVAL_S`` per node, which repairs whatever gossip missed.
- **Failure detection.** Each node keeps a connection to ``WATCHED`` successors on a ring of
  the members' names; the kernel's keepalives on it (``_transport``) notice a silent or dead
  peer in seconds, at no user-space cost. A member whose connection drops (any connection:
  a watcher's, or a caller's) is *suspected*; it refutes if it is alive, else it is declared
  dead ``SUSPECT_TIMEOUT_S`` later. So a node holds a few connections, plus those it uses
  (opened on first use, closed after ``IDLE_LINK_S`` unused), whatever the zone's size.

Sits below `Node`: it knows the node only as its `Identity` and its `Links`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Final

from ._addresses import interfaces_for, resolve_seed
from ._discovery import Discovery, Member, Membership
from ._errors import AutonomyError, ConfigError, DiscoveryError, PeerUnavailableError
from ._gossip import MAX_UPDATES, Book, Change, Record, Status, Update, parse_updates
from ._neighbours import Neighbours, Outlets
from ._peer import PEER_UNREACHABLE_S, Identity, Link, Links, LinkState
from ._protocol import GOSSIP, MEMBERS, VERSION, encode

__all__ = ["GOSSIP_INTERVAL_S", "SUSPECT_TIMEOUT_S", "ZoneAgent"]

log = logging.getLogger("autonomy.discovery")

GOSSIP_INTERVAL_S: Final = 0.2
GOSSIP_FANOUT: Final = 3
"""While there is news, every 0.2 s it goes to 3 random members."""

SUSPECT_TIMEOUT_S: Final = PEER_UNREACHABLE_S
"""A suspected member that does not refute is declared dead this long after."""

SYNC_INTERVAL_S: Final = 30.0
"""Every ~30 s a node pulls one random member's whole view (and asks its seeds again)."""

SEED_RETRY_S: Final = 1.0
"""A node that has no member yet asks its seeds every second."""

IDLE_LINK_S: Final = 30.0
"""A connection unused this long (no call, nothing in flight, not watched) is closed; the
next call opens it again."""

RECONNECT_INTERVAL_S: Final = 10.0
RECONNECT_WINDOW_S: Final = 600.0
"""Every 10 s a node tries one member declared dead in the last 10 minutes: one that answers
was cut off, not dead (a partition that healed)."""

MAINTENANCE_S: Final = 1.0

DISCOVERY_RETRY_S: Final = 1.0
DISCOVERY_RETRY_MAX_S: Final = 30.0
"""mDNS that failed to start is started again after 1 s, then 2, 4... at most every 30 s."""

VERIFY_AT_ONCE: Final = 3
VERIFY_JITTER_S: Final = (1.0, 5.0)
"""The first few candidates are verified at once; later ones after a random delay, and not
at all if gossip made them members meanwhile (at a cold start of N nodes, everyone hears
everyone over mDNS: N x N hellos otherwise)."""


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
        self._links = links
        self.expected = expected
        """The names of the zone's nodes, when its launcher said (``AUTONOMY_EXPECTED_NODES``)."""
        self._on_conflict = on_conflict
        self.book = Book(identity.name, identity.endpoint, identity.instance, self._admits_run)
        """What this node believes of every member (the gossip state)."""
        self.candidates = Membership(identity.zone, identity.name, admit=self._admits, quiet=True)
        """Nodes heard of, not yet (or no longer) verified."""
        self.members = Membership(identity.zone, identity.name)
        """The zone's members as this node sees them (alive or suspected)."""
        self._discovery = self._new_discovery() if discovery else None
        self._seeds = seeds
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._verifying: dict[str, asyncio.Task[None]] = {}
        self._suspicions: dict[str, asyncio.TimerHandle] = {}
        self._departed: dict[str, str] = {}
        """Why each node that left did (the latest few): a call to it says so."""
        self._duplicates: set[str] = set()
        """Runs refused as a second node of a member's name (logged once each)."""
        self._waiting: dict[str, Update] = {}
        """Newer runs of members' names, waiting to know whether the member is gone."""
        self._name_checks: dict[str, asyncio.Task[None]] = {}
        self._dead: dict[str, tuple[str, str, float]] = {}
        """Members declared dead lately: name -> (endpoint, instance, until when to retry)."""
        self._news = asyncio.Event()
        self.started_at = time.monotonic()
        """When this node joined (monotonic clock): `Zone.nodes` lets discovery settle."""
        self.neighbours = Neighbours(
            identity.name, self.book, links, self._spawn, self._unreachable
        )
        """The connections this node keeps, and the ones gossip goes over."""
        self.candidates.subscribe(self._on_candidate, self._on_candidate_left)
        self.members.subscribe(self._on_member_joined, self._on_member_left)
        links.on_change = self.link_changed
        links.on_gossip = self.gossip

    def attach(self, outlets: Outlets) -> None:
        """Gossip may also go back over the connections other nodes opened to this one."""
        self.neighbours.outlets = outlets

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
            advertise=not me.observer,
        )

    def __repr__(self) -> str:
        return (
            f"<ZoneAgent {self._me.name!r} zone={self._me.zone!r} "
            f"members={len(self.book)} candidates="
            f"{len(self.candidates.members())} seeds={len(self._seeds)}>"
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start discovering, gossiping and watching in the background: the node is usable
        at once."""
        if self._discovery is not None:
            self._spawn(self._keep_discovering(self._discovery))
        self._spawn(self._gossip())
        self._spawn(self._maintain())

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
        """Leave: tell the members (no new work comes; what is in hand still gets its
        answer), withdraw from mDNS, and stop every task."""
        self.farewell()
        self._stopping = True
        self._links.on_change = None
        for handle in self._suspicions.values():
            handle.cancel()
        self._suspicions.clear()
        self.neighbours.stop()
        # Discovery first, and never by cancelling its start: a stop during start closes
        # zeroconf's sockets properly and makes start() return.
        if self._discovery is not None:
            await self._discovery.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def farewell(self) -> None:
        """This node leaves: tell every member it is connected to, either way (gossip
        spreads it from there)."""
        if self._me.observer:
            return  # never a member: nothing to take back
        farewell = encode(GOSSIP, [list(self.book.leave())])
        for send in self.neighbours.channels().values():
            send(farewell)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- news: applied here, mirrored in the members table -------------------------------------

    def gossip(self, payload: object) -> None:
        """A member pushed news (a GOSSIP frame)."""
        for update in parse_updates(payload):
            self._apply(update, "gossip")

    def _apply(self, update: Update, source: str) -> None:
        if self._stopping:
            return
        outcome = self.book.apply(update)
        if outcome is not None:
            self._act(*outcome, source)
        if self.book.has_news():
            self._news.set()

    def _act(self, change: Change, record: Record, source: str) -> None:
        if change is Change.JOINED:
            member = Member(record.name, self._me.zone, record.endpoint, VERSION, record.instance)
            self.members.add(member, source)
            if record.status is Status.SUSPECT:
                self._start_suspicion(record)
            self.neighbours.rechoose_soon()
        elif change is Change.SUSPECTED:
            self._start_suspicion(record)
            link = self._links.find(record.endpoint)
            if link is not None and link.is_up():
                # We reach it: tell it, so that it refutes at once.
                link.post(encode(GOSSIP, [list(record.update())]))
        elif change is Change.ALIVE_AGAIN:
            self._cancel_suspicion(record.name)
        elif change is Change.LEFT:
            self._cancel_suspicion(record.name)
            reason = "it left" if record.status is Status.LEFT else "it stopped answering"
            # A node that leaves still answers what it has in hand, then says goodbye on
            # each connection (its calls then fail at once): the link stays until then.
            if (
                self.members.remove(record.name, reason, instance=record.instance)
                and record.status is Status.DEAD
            ):
                self._links.forget(record.endpoint, "left the zone")
            waiting = self._waiting.pop(record.name, None)
            if waiting is not None and waiting[2] != record.instance:
                self._apply(waiting, "restart")  # the run that waited for this one to go
            if record.status is Status.DEAD:
                self._dead[record.name] = (
                    record.endpoint,
                    record.instance,
                    time.monotonic() + RECONNECT_WINDOW_S,
                )
            self.candidates.remove(record.name, reason, instance=record.instance)
            self.neighbours.rechoose_soon()
        elif change is Change.SAME_NAME:
            self._same_name(
                Member(record.name, self._me.zone, record.endpoint, VERSION, record.instance)
            )

    def _unreachable(self, name: str, endpoint: str) -> None:
        """A connection to ``name`` failed: suspect it (it refutes if it is alive)."""
        record = self.book.records.get(name)
        if self._stopping or record is None or record.endpoint != endpoint:
            return
        suspected = self.book.suspect(name)
        if suspected is not None:
            self._act(Change.SUSPECTED, suspected, "link")
            self._news.set()

    def _start_suspicion(self, record: Record) -> None:
        if record.name not in self._suspicions:
            log.info("node %s is suspected (no connection)", record.name)
            self._suspicions[record.name] = asyncio.get_running_loop().call_later(
                SUSPECT_TIMEOUT_S, self._expire, record.name, record.instance
            )

    def _cancel_suspicion(self, name: str) -> None:
        handle = self._suspicions.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, name: str, instance: str) -> None:
        self._suspicions.pop(name, None)
        record = self.book.records.get(name)
        if record is None or record.instance != instance or record.status is not Status.SUSPECT:
            return
        ended = self.book.declare(name, instance, Status.DEAD)
        if ended is not None:
            self._act(Change.LEFT, ended, "suspicion")
            self._news.set()

    # -- members by name ---------------------------------------------------------------------

    def link_to(self, name: str) -> Link:
        """The link to the member called ``name``, whichever run of it is a member now.

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
        record = self.book.records.get(candidate.name)
        if record is not None and record.instance == candidate.instance:
            return
        self._verify_soon(candidate)

    def _on_candidate_left(self, candidate: Member, reason: str) -> None:
        # A goodbye over mDNS, or a newer run of the name: that run is gone.
        ended = self.book.declare(candidate.name, candidate.instance, Status.LEFT)
        if ended is not None:
            self._act(Change.LEFT, ended, "mdns")
            self._news.set()

    def _verify_soon(self, candidate: Member) -> None:
        running = self._verifying.get(candidate.name)
        if running is not None and not running.done():
            running.cancel()
        self._verifying[candidate.name] = self._spawn(self._verify(candidate))

    async def _verify(self, candidate: Member) -> None:
        if len(self.book) >= VERIFY_AT_ONCE:
            await asyncio.sleep(random.uniform(*VERIFY_JITTER_S))
            record = self.book.records.get(candidate.name)
            if record is not None and record.instance == candidate.instance:
                return  # gossip was faster
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
        first = len(self.book) == 0
        outcome = self.book.add(candidate.name, candidate.endpoint, link.instance)
        if outcome is not None:
            self._act(*outcome, "verified")
            self._news.set()
        if first:
            await self._exchange(link)  # a new node learns the whole zone from its first member

    def heard_of(self, name: str, endpoint: str, instance: str, source: str) -> None:
        """A node said hello over a connection only the zone's members can open: a member.

        Its endpoint is not dialed back to check it: a node that advertises an address
        others cannot reach is suspected by the first that tries, and leaves."""
        if not instance:
            return
        if name == self._me.name:
            if instance != self._me.instance:
                self._same_name(Member(name, self._me.zone, endpoint, VERSION, instance))
            return
        record = self.book.records.get(name)
        if record is not None and record.instance == instance and record.endpoint == endpoint:
            return
        outcome = self.book.add(name, endpoint, instance)
        if outcome is not None:
            self._act(*outcome, source)
            self._news.set()

    # -- one name, one node -------------------------------------------------------------------

    def _admits_run(self, old: Record, new: Record) -> bool:
        """A newer run of a member's name replaces it only when the member is gone: while
        it is reachable, the newer one is a second node with a taken name (it stops, see
        `_same_name`). A restarted node is let in: its predecessor is suspected, or our
        connection to it is down. When we cannot tell (no connection to it yet), the newer
        run waits while we dial the member: it comes in once the member is declared dead."""
        if old.status is Status.SUSPECT:
            return True
        link = self._links.find(old.endpoint)
        if link is not None and not link.is_up() and link.state is not LinkState.CONNECTING:
            return True
        if link is not None and link.retrying:
            return True
        if link is None or not link.is_up():
            self._waiting[old.name] = new.update()
            self.check(old.name)
            return False
        if new.instance not in self._duplicates:
            self._duplicates.add(new.instance)
            log.warning(
                "node at %s also calls itself %r in zone %r: the node at %s keeps the name",
                new.endpoint,
                new.name,
                self._me.zone,
                old.endpoint,
            )
        return False

    def _admits(self, candidate: Member) -> bool:
        record = self.book.records.get(candidate.name)
        if record is None or record.instance == candidate.instance:
            return True
        if candidate.instance < record.instance:
            return True  # the candidate started first: it keeps the name
        return self._admits_run(
            record,
            Record(candidate.name, candidate.endpoint, candidate.instance, 0, Status.ALIVE),
        )

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
        """A link of this node changed state."""
        record = self.book.records.get(link.name) if link.name else None
        if record is None or record.endpoint != link.endpoint:
            candidate = self.candidates.get(link.name) if link.name else None
            if link.is_up() and candidate is not None and candidate.endpoint == link.endpoint:
                self._verify_soon(candidate)  # back after a partition: a member again
            return
        if link.is_up():
            if record.status is Status.SUSPECT:
                link.post(encode(GOSSIP, [list(record.update())]))  # it refutes
            return
        if link.state is LinkState.GONE:
            ended = self.book.declare(record.name, record.instance, Status.LEFT)
            if ended is not None:
                self._act(Change.LEFT, ended, "goodbye")
        elif link.state in (LinkState.DOWN, LinkState.REFUSED) or link.retrying:
            self._unreachable(record.name, record.endpoint)
        self._news.set()

    def check(self, name: str) -> None:
        """A connection ``name`` had to this node is gone: dial it, unless we reach it
        already (a refused connect makes it suspected, see `link_changed`)."""
        record = self.book.records.get(name)
        if record is None or self._stopping:
            return
        link = self._links.find(record.endpoint)
        if link is None:
            self._links.get(record.endpoint, record.name)

    async def _gossip(self) -> None:
        while True:
            if not self.book.has_news():
                self._news.clear()
                await self._news.wait()
            news = self.book.take_news()
            if news:
                frame = encode(GOSSIP, [list(update) for update in news])
                self.neighbours.send(frame, GOSSIP_FANOUT)
            await asyncio.sleep(GOSSIP_INTERVAL_S)

    async def _exchange(self, link: Link) -> None:
        """A full state exchange with ``link``'s node: push our whole view, then pull its
        (in that order, on one connection, so that what we pushed is in what we pull). Two
        sides of a healed partition, each declared dead by the other, both refute that
        way, and learn each other again."""
        snapshot = self.member_list()
        for start in range(0, len(snapshot), 4 * MAX_UPDATES):
            link.post(encode(GOSSIP, snapshot[start : start + 4 * MAX_UPDATES]))
        try:
            view = await link.call(MEMBERS, timeout_s=5.0, quiet=True)
        except AutonomyError as exc:
            log.debug("no membership from %s: %s", link.label, exc)
            return
        for update in parse_updates(view):
            self._apply(update, "pull")

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        next_sync = loop.time() + SYNC_INTERVAL_S * random.uniform(0.5, 1.0)
        next_seeds = loop.time()
        next_idle = loop.time() + IDLE_LINK_S / 2
        next_reconnect = loop.time() + RECONNECT_INTERVAL_S
        while True:
            now = loop.time()
            if self._seeds and now >= next_seeds:
                addresses = await asyncio.gather(*(resolve_seed(seed) for seed in self._seeds))
                endpoints = {e for each in addresses for e in each} - {self._me.endpoint}
                await asyncio.gather(*(self._ask_seed(endpoint) for endpoint in endpoints))
                next_seeds = now + (SEED_RETRY_S if not len(self.book) else SYNC_INTERVAL_S)
            if now >= next_sync:
                for record in self.neighbours.pick(1):
                    await self._exchange(self._links.get(record.endpoint, record.name))
                next_sync = now + SYNC_INTERVAL_S * random.uniform(0.8, 1.2)
            if now >= next_reconnect:
                await self._reconnect()
                next_reconnect = now + RECONNECT_INTERVAL_S
            if now >= next_idle:
                self._links.retire_idle()
                next_idle = now + IDLE_LINK_S / 2
            await asyncio.sleep(MAINTENANCE_S)

    async def _reconnect(self) -> None:
        """Try one member declared dead lately: if it answers, it was cut off, not dead
        (a partition that healed), and an exchange brings both sides together again."""
        now = time.monotonic()
        self._dead = {k: v for k, v in self._dead.items() if v[2] > now}
        if not self._dead:
            return
        name = random.choice(list(self._dead))
        endpoint, instance, _ = self._dead[name]
        try:
            link = await self._links.connect(endpoint, PEER_UNREACHABLE_S)
        except AutonomyError:
            return
        if link.name != name:
            return
        log.info("node %s answers again at %s: exchanging views", name, endpoint)
        del self._dead[name]
        if link.instance != instance:  # restarted there: a new run, verified by the hello
            outcome = self.book.add(name, endpoint, link.instance)
            if outcome is not None:
                self._act(*outcome, "reconnect")
        await self._exchange(link)

    async def _ask_seed(self, endpoint: str) -> None:
        try:
            link = await self._links.connect(endpoint, 5.0)
        except AutonomyError as exc:
            log.debug("seed %s not reached: %s", endpoint, exc)
            return
        if link.name and link.name != self._me.name:
            outcome = self.book.add(link.name, endpoint, link.instance)
            if outcome is not None:
                self._act(*outcome, "seed")
        await self._exchange(link)

    def settled(self) -> bool:
        """No news to pass on, no suspicion running, no connection being chosen or opened,
        no candidate being verified: what an idle zone looks like from here."""
        return (
            not self.book.has_news()
            and not self._suspicions
            and self.neighbours.settled()
            and all(task.done() for task in self._verifying.values())
        )

    # -- what other nodes ask of this one -----------------------------------------------------

    def member_list(self) -> list[list[Any]]:
        """This node's whole view, itself included (the answer to MEMBERS)."""
        snapshot = self.book.snapshot()
        if self._me.observer:
            snapshot = snapshot[1:]  # not a member: it does not list itself
        return [list(update) for update in snapshot]

    # -- what Zone.nodes waits for ----------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[list[Member]], bool],
        timeout_s: float,
        *,
        while_joining_s: float = 0.0,
    ) -> bool:
        """Wait until ``predicate(members)`` holds, or ``timeout_s`` (after the last join,
        with ``while_joining_s`` in all at most); returns whether it does."""
        return await self.members.wait_for(predicate, timeout_s, while_joining_s=while_joining_s)

    async def wait_settled(self, after_start_s: float, quiet_s: float, max_s: float) -> None:
        """Let discovery run ``after_start_s`` after the node started, then until no member
        joined for ``quiet_s``, but at most ``max_s`` after the start."""
        age = time.monotonic() - self.started_at
        if age < after_start_s:
            await asyncio.sleep(after_start_s - age)
        age = time.monotonic() - self.started_at
        await self.members.wait_settled(quiet_s, max(0.0, max_s - age))
