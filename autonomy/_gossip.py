"""Gossip of the zone's membership: what one node believes of each member, how news of the
others is merged into it, and which news to pass on. No sockets and no event loop.

The rules are SWIM's (Das, Gupta, Motivala, 2002) with Serf/memberlist's refinements:

- Each node's record of a member has a status (alive, suspect, dead, left) and the member's
  *incarnation*, a number only the member itself raises.
- News about the same run (``instance``) of a member is ordered by incarnation: ``alive``
  overrides ``suspect`` only with a higher incarnation; ``suspect`` overrides ``alive`` with
  the same one; ``dead`` and ``left`` end that run for good.
- A node that hears itself suspected (or declared dead) refutes it: it raises its
  incarnation and spreads ``alive``. So a slow or briefly cut-off node is not lost.
- A newer run of a name (a restart: a later ``instance``, which starts with the start time)
  replaces the older run, unless the older is still alive and reachable: then the newer is
  a second node with a taken name, and is kept out (the caller decides, see ``admit``).
- Every piece of news is passed on a bounded number of times (``RETRANSMIT_MULT`` times
  log2 of the zone's size), a few pieces per message: news reaches all N members in
  O(log N) rounds, and a zone with no news sends nothing at all.
"""

from __future__ import annotations

import enum
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "MAX_UPDATES",
    "RETRANSMIT_MULT",
    "Book",
    "Change",
    "Record",
    "Status",
    "Update",
    "parse_updates",
]

RETRANSMIT_MULT: Final = 3
"""Each piece of news is passed on RETRANSMIT_MULT * ceil(log2(N + 1)) times."""

MAX_UPDATES: Final = 64
"""Pieces of news in one gossip message (each ~100 bytes)."""

TOMBSTONE_S: Final = 60.0
"""How long a run that died or left is remembered, so that stale news cannot revive it."""

_INSTANCE: Final = re.compile(r"[0-9a-f]{8,32}")

FINAL: Final = 2**62 - 1
"""The incarnation of a run that a newer run replaced: higher than any it could refute with."""


class Status(enum.IntEnum):
    """What a node believes of a member (its value travels on the wire)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


Update = tuple[str, str, str, int, int]
"""One piece of news: ``(name, endpoint, instance, incarnation, status)``."""


@dataclass(slots=True)
class Record:
    """This node's belief about one member."""

    name: str
    endpoint: str
    instance: str
    incarnation: int
    status: Status

    def update(self, status: Status | None = None) -> Update:
        return (
            self.name,
            self.endpoint,
            self.instance,
            self.incarnation,
            int(status if status is not None else self.status),
        )


class Change(enum.Enum):
    """What applying a piece of news changed; the caller acts on it."""

    JOINED = "joined"
    """A new member (or a new run of a name, after ``LEFT`` of the old one)."""
    SUSPECTED = "suspected"
    ALIVE_AGAIN = "alive again"
    """A suspected member refuted the suspicion."""
    LEFT = "left"
    """The member died or left; ``Record.status`` says which."""
    SAME_NAME = "same name"
    """News of another run of this node's own name."""


def parse_updates(value: object) -> list[Update]:
    """The well-formed pieces of news in a gossip payload (anything else is dropped)."""
    if not isinstance(value, list):
        return []
    return [
        (item[0], item[1], item[2], item[3], item[4])
        for item in value[: 4 * MAX_UPDATES]
        if isinstance(item, list)
        and len(item) == 5
        and isinstance(item[0], str)
        and item[0]
        and item[0].isprintable()
        and len(item[0]) <= 255
        and isinstance(item[1], str)
        and "://" in item[1]
        and isinstance(item[2], str)
        and _INSTANCE.fullmatch(item[2])
        and type(item[3]) is int
        and 0 <= item[3] < 2**62
        and type(item[4]) is int
        and 0 <= item[4] <= max(Status)
    ]


class Book:
    """One node's gossip state: its records of the others, its own incarnation, the news it
    still has to pass on, and the runs it knows ended."""

    def __init__(
        self,
        name: str,
        endpoint: str,
        instance: str,
        admit: Callable[[Record, Record], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``admit(old, new)`` decides whether a newer run ``new`` of a member's name may
        replace the run ``old`` that is not known to have ended (default: yes)."""
        self.name = name
        self.endpoint = endpoint
        self.instance = instance
        self.incarnation = 0
        self.records: dict[str, Record] = {}
        self._admit = admit
        self._clock = clock
        self._news: dict[str, list[Any]] = {}
        """name -> [update, transmissions left]."""
        self._ended: dict[str, tuple[Update, float]] = {}
        """name -> (the news of its end, until when it is remembered): runs known to have
        died or left."""

    def __len__(self) -> int:
        return len(self.records)

    # -- news in ---------------------------------------------------------------------------

    def apply(self, update: Update) -> tuple[Change, Record] | None:
        """Merge one piece of news; returns what changed (None: nothing did)."""
        name, endpoint, instance, incarnation, raw_status = update
        status = Status(raw_status)
        if name == self.name:
            return self._about_me(update, status)
        record = self.records.get(name)
        if self._has_ended(name, instance, incarnation):
            return None
        if record is None:
            return self._unknown(update, status)
        if instance != record.instance:
            return self._other_run(record, update, status)
        if status is Status.ALIVE:
            if incarnation <= record.incarnation:
                return None
            was = record.status
            record.incarnation = incarnation
            record.endpoint = endpoint
            record.status = Status.ALIVE
            self.spread(record.update())
            return (Change.ALIVE_AGAIN, record) if was is Status.SUSPECT else None
        if status is Status.SUSPECT:
            if incarnation < record.incarnation or (
                incarnation == record.incarnation and record.status is Status.SUSPECT
            ):
                return None
            record.incarnation = incarnation
            record.status = Status.SUSPECT
            self.spread(record.update())
            return Change.SUSPECTED, record
        if incarnation < record.incarnation:
            return None
        return self._end(record, status, incarnation)

    def _about_me(self, update: Update, status: Status) -> tuple[Change, Record] | None:
        _, endpoint, instance, incarnation, _ = update
        if instance != self.instance:
            if status in (Status.ALIVE, Status.SUSPECT):
                other = Record(self.name, endpoint, instance, incarnation, status)
                return Change.SAME_NAME, other
            return None
        if status is not Status.ALIVE and incarnation >= self.incarnation:
            self.refute()
        return None

    def refute(self) -> None:
        """Someone suspects us (or declared us dead): a higher incarnation, spread alive."""
        self.incarnation += 1
        self.spread(self.own())

    def _unknown(self, update: Update, status: Status) -> tuple[Change, Record] | None:
        name, endpoint, instance, incarnation, _ = update
        if status in (Status.DEAD, Status.LEFT):
            self._remember_end(update)
            return None
        record = Record(name, endpoint, instance, incarnation, status)
        self.records[name] = record
        self.spread(record.update())
        return Change.JOINED, record

    def _other_run(
        self, record: Record, update: Update, status: Status
    ) -> tuple[Change, Record] | None:
        name, endpoint, instance, incarnation, _ = update
        if status in (Status.DEAD, Status.LEFT):
            self._remember_end(update)
            return None
        new = Record(name, endpoint, instance, incarnation, status)
        # The run that started first keeps the name, unless it is known to be gone.
        if instance > record.instance and self._admit is not None and not self._admit(record, new):
            return None
        # Replaced by a newer run: the old one is over for good (no incarnation revives it).
        self._remember_end((name, record.endpoint, record.instance, FINAL, int(Status.LEFT)))
        self.records[name] = new
        self.spread(new.update())
        return Change.JOINED, new

    def _end(self, record: Record, status: Status, incarnation: int) -> tuple[Change, Record]:
        del self.records[record.name]
        record.status = status
        record.incarnation = incarnation
        self._remember_end(record.update())
        self.spread(record.update())
        return Change.LEFT, record

    def _remember_end(self, update: Update) -> None:
        now = self._clock()
        if len(self._ended) > 4096:
            self._ended = {k: v for k, v in self._ended.items() if v[1] > now}
        self._ended[update[0]] = (update, now + TOMBSTONE_S)

    def _has_ended(self, name: str, instance: str, incarnation: int) -> bool:
        ended = self._ended.get(name)
        if ended is None:
            return False
        if ended[1] <= self._clock():
            del self._ended[name]
            return False
        # A run that ended stays ended, unless it refuted with a higher incarnation (it was
        # declared dead while alive, cut off for a while).
        return ended[0][2] == instance and incarnation <= ended[0][3]

    # -- what this node itself decides -----------------------------------------------------

    def suspect(self, name: str) -> Record | None:
        """This node lost its connection to ``name``: suspect it (and spread that)."""
        record = self.records.get(name)
        if record is None or record.status is not Status.ALIVE:
            return None
        record.status = Status.SUSPECT
        self.spread(record.update())
        return record

    def declare(self, name: str, instance: str, status: Status) -> Record | None:
        """``name``'s run ``instance`` died (a suspicion that nobody refuted) or left."""
        record = self.records.get(name)
        if record is None or record.instance != instance:
            return None
        return self._end(record, status, record.incarnation)[1]

    def add(self, name: str, endpoint: str, instance: str) -> tuple[Change, Record] | None:
        """A node this node reached itself (it answered a hello): alive."""
        return self.apply((name, endpoint, instance, 0, int(Status.ALIVE)))

    def leave(self) -> Update:
        """This node leaves: the news to send."""
        self.incarnation += 1
        update = self.own(Status.LEFT)
        self.spread(update)
        return update

    def own(self, status: Status = Status.ALIVE) -> Update:
        return (self.name, self.endpoint, self.instance, self.incarnation, int(status))

    # -- news out --------------------------------------------------------------------------

    def spread(self, update: Update) -> None:
        """Pass ``update`` on a few times (it replaces older news of the same name)."""
        times = RETRANSMIT_MULT * math.ceil(math.log2(len(self.records) + 2))
        self._news[update[0]] = [update, times]

    def has_news(self) -> bool:
        return bool(self._news)

    def take_news(self, limit: int = MAX_UPDATES) -> list[Update]:
        """The news for one gossip message: the least passed on first."""
        chosen = sorted(self._news.values(), key=lambda entry: -entry[1])[:limit]
        for entry in chosen:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._news[entry[0][0]]
        return [entry[0] for entry in chosen]

    def snapshot(self) -> list[Update]:
        """Everything this node believes, itself included (a full state exchange), and the
        runs it knows ended lately: a node declared dead while it was cut off learns it
        from a pull, and refutes."""
        now = self._clock()
        ended = [update for update, until in self._ended.values() if until > now]
        return [self.own(), *(record.update() for record in self.records.values()), *ended]

    def alive(self) -> Iterable[Record]:
        return (r for r in self.records.values() if r.status is not Status.DEAD)
