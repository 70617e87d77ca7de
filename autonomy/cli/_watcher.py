"""A zone watched live: an observer node that follows the members and polls their ``stats()``.

`ZoneWatcher` starts a ``Node(observer=True)`` in the zone (the zone's secret from the usual
settings, as for any node): it reaches every member without being one, so it never shows
in ``Zone.nodes`` nor in its own picture. Joins and leaves come from the node's membership
table as they happen; every `POLL_INTERVAL_S` each member is asked for its ``stats()``, at
most `MAX_CONCURRENT_CALLS` at a time, each within `STATS_TIMEOUT_S`. What comes back
goes into a `ZoneView`; whoever shows it (``_dashboard``, ``_top``) is told after each
round, and of each join and leave.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, Self

from autonomy import Node, RemoteNode, Zone

from ._zoneview import ZoneView

__all__ = ["MAX_CONCURRENT_CALLS", "POLL_INTERVAL_S", "STATS_TIMEOUT_S", "ZoneWatcher"]

logger = logging.getLogger("autonomy.cli")

POLL_INTERVAL_S: Final = 1.0
"""How often every member is asked for its counters."""

STATS_TIMEOUT_S: Final = 2.0
"""How long one member has to answer; one that does not is shown as not answering."""

MAX_CONCURRENT_CALLS: Final = 32
"""Calls in flight at once: a zone of a thousand nodes is asked in rounds, not all at once."""

_DISCOVERY_TIMEOUT_MS: Final = 10_000
"""Members that join within this (or before discovery settles) were there before us: they
are "found", not "joined"."""


class _Member(Protocol):
    """What the membership table's callbacks tell of a member."""

    @property
    def name(self) -> str: ...

    @property
    def endpoint(self) -> str: ...


class ZoneWatcher:
    """Watches ``zone`` from an observer node while entered (``async with``).

    Args:
        zone: the zone's name.
        interval_s: seconds between two rounds of ``stats()`` calls.
        timeout_s: how long each member has to answer.
        max_concurrent: calls in flight at once.
        clock: wall-clock time of the events (``time.time``).
        node_options: passed to `Node` (``bind``, ``peers``, ``discovery``...).
    """

    def __init__(
        self,
        zone: str,
        *,
        interval_s: float = POLL_INTERVAL_S,
        timeout_s: float = STATS_TIMEOUT_S,
        max_concurrent: int = MAX_CONCURRENT_CALLS,
        clock: Callable[[], float] = time.time,
        **node_options: Any,
    ) -> None:
        self.zone = zone
        self.node = Node(
            f"observer-{secrets.token_hex(4)}", zone=zone, observer=True, **node_options
        )
        """The observer node (not a member of the zone)."""
        self.view = ZoneView(zone, self.node.name)
        self.rounds = 0
        """Rounds of ``stats()`` calls done."""
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._limit = asyncio.Semaphore(max_concurrent)
        self._clock = clock
        self._settled = False
        self._listeners: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._entered = False

    def __repr__(self) -> str:
        return f"<ZoneWatcher {self.zone!r} nodes={len(self.view.names)} rounds={self.rounds}>"

    def snapshot(self) -> dict[str, Any]:
        """The zone now (`ZoneView.snapshot`), with the poll interval in it."""
        snapshot = self.view.snapshot(self._clock())
        snapshot["interval_s"] = self._interval_s
        snapshot["discovering"] = not self._settled
        return snapshot

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each round, join and leave (on the event loop)."""
        self._listeners.append(listener)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.node.__aenter__()
        self._entered = True
        try:
            members = self.node.membership.members
            members.subscribe(self._joined, self._left)
            for member in members.members():
                self._joined(member)
            self._spawn(self._discover())
            self._spawn(self._poll_forever())
        except BaseException:
            await self.aclose()
            raise
        logger.debug("watching zone %s as %s", self.zone, self.node.name)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop polling and stop the observer node. Idempotent."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._entered:
            self._entered = False
            await self.node.stop()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the membership -----------------------------------------------------------------------

    def _joined(self, member: _Member) -> None:
        self.view.joined(member.name, member.endpoint, self._clock(), found=not self._settled)
        self._changed()

    def _left(self, member: _Member, reason: str) -> None:
        self.view.left(member.name, reason, self._clock())
        self._changed()

    async def _discover(self) -> None:
        """Until discovery settles, the members that come were there before us."""
        await Zone.nodes(self.node, timeout=_DISCOVERY_TIMEOUT_MS)
        self._settled = True
        self._changed()

    # -- the counters -------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.poll()
            # The cadence, not a wait for something: the next round is due then.
            await asyncio.sleep(max(0.0, started + self._interval_s - loop.time()))

    async def poll(self) -> None:
        """One round: ask every member for its ``stats()`` (bounded), then tell the listeners."""
        await asyncio.gather(*(self._ask(remote) for remote in self.node.peers()))
        self.rounds += 1
        self._changed()

    async def _ask(self, remote: RemoteNode) -> None:
        async with self._limit:
            try:
                async with asyncio.timeout(self._timeout_s):
                    stats = await remote.stats()
            except TimeoutError:
                self.view.unreachable(
                    remote.name, f"no answer in {self._timeout_s:g} s", self._clock()
                )
            except Exception as exc:  # it left, it broke, it answered nonsense: shown, not fatal
                self.view.unreachable(remote.name, f"{type(exc).__name__}: {exc}", self._clock())
            else:
                self.view.observed(remote.name, stats, self._clock())

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                logger.exception("zone watcher: listener %r failed", listener)
