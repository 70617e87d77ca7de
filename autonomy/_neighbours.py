"""The connections a node keeps to other members, and the ones its gossip goes over.

Each node keeps connections to its ``WATCHED`` successors on a ring of the members' names
(hashed, so that the ring mixes the zone) and to ``FINGERS`` members a half, a quarter and
an eighth of the ring away. The kernel's keepalives on them notice a dead or silent member
(``_transport``); gossip goes over them, and over the connections other nodes keep to this
one, so that news crosses the zone in O(log N) hops without opening connections: a CURVE
handshake costs ~1.4 ms of CPU at each end, and N nodes gossiping to random members would
open N x N of them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from ._errors import AutonomyError
from ._gossip import Book, Record, Status
from ._peer import PEER_UNREACHABLE_S, Links

__all__ = ["FINGERS", "WATCHED", "Neighbours", "Outlets"]

log = logging.getLogger("autonomy.discovery")

WATCHED: Final = 3
"""Members each node keeps a connection to (its successors on the ring), to notice deaths."""

FINGERS: Final = 3
"""...and to the members a half, a quarter and an eighth of the ring away."""

REWATCH_DELAY_S: Final = 1.0
REWATCH_MAX_DELAY_S: Final = 5.0
"""The connections kept are chosen again once the membership was still for 1 s, at most
5 s after it changed (a cold start of N nodes changes the ring N times in a few seconds)."""


class Outlets(Protocol):
    """The connections other nodes opened to this one (its ROUTER's side)."""

    def channels(self) -> list[tuple[str, bytes]]: ...

    def answer(self, ident: bytes, frame: bytes) -> None: ...


def _ring_key(name: str) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=8).digest()


class Neighbours:
    """Chooses, opens and keeps the connections of one node (see the module docstring)."""

    def __init__(
        self,
        name: str,
        book: Book,
        links: Links,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        unreachable: Callable[[str, str], None],
    ) -> None:
        """``unreachable(name, endpoint)`` is told of a member a kept connection cannot reach."""
        self._unreachable = unreachable
        self._name = name
        self._book = book
        self._links = links
        self._spawn = spawn
        self.outlets: Outlets | None = None
        self.watched: set[str] = set()
        """The endpoints this node keeps connections to."""
        self._timer: asyncio.TimerHandle | None = None
        self._opening = 0
        self._by = 0.0
        self._stopped = False

    def settled(self) -> bool:
        """No choice of connections pending, none being opened."""
        return self._timer is None and not self._opening

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()

    def rechoose_soon(self) -> None:
        """The membership changed: choose the connections again, once it is still."""
        if self._stopped:
            return
        loop = asyncio.get_running_loop()
        if self._timer is None:
            self._by = loop.time() + REWATCH_MAX_DELAY_S
        else:
            self._timer.cancel()
        when = min(loop.time() + REWATCH_DELAY_S, self._by)
        self._timer = loop.call_at(when, self._rechoose_now)

    def _rechoose_now(self) -> None:
        self._timer = None
        self.rechoose()

    def rechoose(self) -> None:
        """Keep connections to the ring successors and the fingers, and only to them."""
        if self._stopped:
            return
        me = _ring_key(self._name)
        ring = sorted(
            self._book.alive(), key=lambda r: (_ring_key(r.name) <= me, _ring_key(r.name))
        )
        chosen = ring[:WATCHED]
        for step in range(1, FINGERS + 1):
            offset = len(ring) >> step
            if offset >= WATCHED:
                chosen.append(ring[offset])
        wanted = {record.endpoint: record.name for record in chosen}
        for endpoint in self.watched - wanted.keys():
            link = self._links.find(endpoint)
            if link is not None:
                link.watched = False
        for endpoint, name in wanted.items():
            if endpoint not in self.watched:
                self._spawn(self._keep(endpoint, name))
        self.watched = set(wanted)

    async def _keep(self, endpoint: str, name: str) -> None:
        link = self._links.get(endpoint, name)
        link.watched = True
        self._opening += 1
        try:
            # A hello: the kept node can then gossip back over this connection.
            await self._links.connect(endpoint, PEER_UNREACHABLE_S + 2)
        except AutonomyError as exc:
            log.debug("kept node %s at %s not reached: %s", name, endpoint, exc)
            if endpoint in self.watched:
                self._unreachable(name, endpoint)  # it died before we ever reached it
        finally:
            self._opening -= 1

    def channels(self) -> dict[str, Callable[[bytes], object]]:
        """Per member, a way to send it a frame over a connection that is open already:
        ours to it, or its to us."""
        channels: dict[str, Callable[[bytes], object]] = {}
        records = self._book.records
        if self.outlets is not None:
            outlets = self.outlets
            for name, ident in outlets.channels():
                if name in records:
                    channels[name] = functools.partial(outlets.answer, ident)
        for link in self._links:
            record = records.get(link.name)
            if link.is_up() and record is not None and record.endpoint == link.endpoint:
                channels[link.name] = link.post
        return channels

    def send(self, frame: bytes, count: int) -> None:
        """``frame`` to ``count`` random members, over open connections where there are
        enough."""
        channels = self.channels()
        names = random.sample(list(channels), min(count, len(channels)))
        for name in names:
            channels[name](frame)
        if len(names) < count:
            for record in self.pick(count - len(names), exclude=set(names)):
                self._links.get(record.endpoint, record.name).post(frame)

    def pick(self, count: int, exclude: set[str] | None = None) -> list[Record]:
        """``count`` random members known alive."""
        alive = [
            r
            for r in self._book.alive()
            if r.status is Status.ALIVE and (exclude is None or r.name not in exclude)
        ]
        return random.sample(alive, min(count, len(alive)))
