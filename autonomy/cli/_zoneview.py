"""The zone's picture behind ``zone dashboard`` and ``zone top``: rates, totals and events.

In: the members' ``stats()`` answers, their joins and leaves, and the calls that failed. Out:
`ZoneView.snapshot`, plain values ready for JSON (the dashboard's ``/api/zone``) or a
terminal table. Sans-IO: no node, no event loop, no clock of its own (every call says
when it happened), so it is tested with dicts.

Rates are counted on each node's own clock (its ``uptime_s``), over the last
`RATE_WINDOW_S`: a slow answer does not make a worker look slower.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["COALESCE_S", "HISTORY", "MAX_EVENTS", "RATE_WINDOW_S", "ZoneView"]

RATE_WINDOW_S: Final = 5.0
"""Rates per second are taken over this much of a node's clock (smooth, yet current)."""

HISTORY: Final = 60
"""Rates kept per worker, one per answer: a minute of sparkline at one poll a second."""

MAX_EVENTS: Final = 200
"""Events kept (the newest); older ones are forgotten."""


COALESCE_S: Final = 30.0
"""Trouble of one kind at one worker (or node) makes at most one event this often, which
counts what happened since the last: a worker failing all the time does not bury the joins
and leaves."""

_TROUBLE: Final = {
    "failed": ("message", "failed (the handler raised)"),
    "expired": ("request", "expired in the queue (the caller had given up)"),
    "rejected_frames": ("frame", "rejected (malformed or too large)"),
    "refused_handshakes": ("connection", "refused (not of the zone?)"),
}
"""Per counter: what it counts, and what happened to them."""


@dataclass
class _Tally:
    count: int = 0
    told_at: float = -math.inf


@dataclass
class _Counts:
    """A worker's (or a node's) counters at one moment of its node's clock."""

    uptime_s: float
    handled: int
    failed: int


@dataclass
class _WorkerTrack:
    samples: deque[_Counts] = field(default_factory=deque)
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    latest: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _NodeTrack:
    name: str
    endpoint: str
    joined_at: float
    stats: Mapping[str, Any] | None = None
    """The latest answer, or None before the first."""
    error: str | None = None
    """Why the latest call failed, or None if it was answered."""
    answered_at: float | None = None
    workers: dict[str, _WorkerTrack] = field(default_factory=dict)
    traffic: deque[_Counts] = field(default_factory=deque)
    """``handled`` = messages sent, ``failed`` = messages received (ZeroMQ, all sockets)."""


def _count(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _rate(samples: deque[_Counts], attribute: str) -> float | None:
    """Per second of the node's clock, from the oldest to the newest sample (None with one)."""
    if len(samples) < 2:
        return None
    first, last = samples[0], samples[-1]
    span = last.uptime_s - first.uptime_s
    if span <= 0:
        return None
    grown = float(getattr(last, attribute) - getattr(first, attribute))
    return round(max(0.0, grown) / span, 2)


def _keep(samples: deque[_Counts], sample: _Counts) -> None:
    """Add ``sample``; drop those older than the window, but always keep one before it."""
    samples.append(sample)
    while len(samples) > 2 and samples[1].uptime_s <= sample.uptime_s - RATE_WINDOW_S:
        samples.popleft()


class ZoneView:
    """What an observer knows of a zone (see the module docstring).

    Args:
        zone: the zone's name.
        observer: the observer node's name (shown, never listed among the nodes).
    """

    def __init__(self, zone: str, observer: str) -> None:
        self.zone = zone
        self.observer = observer
        self._nodes: dict[str, _NodeTrack] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._tallies: dict[tuple[str, str | None, str], _Tally] = {}
        self._event_id = 0

    def __repr__(self) -> str:
        return f"<ZoneView {self.zone!r} nodes={len(self._nodes)} events={self._event_id}>"

    @property
    def names(self) -> list[str]:
        """The nodes in the zone now, sorted."""
        return sorted(self._nodes)

    # -- what happened ------------------------------------------------------------------------

    def joined(self, name: str, endpoint: str, now: float, *, found: bool = False) -> None:
        """``name`` is a member now; ``found``: it was there before the observer came."""
        self._nodes[name] = _NodeTrack(name, endpoint, now)
        if found:
            self._event(now, "found", name, f"{name} at {endpoint}")
        else:
            self._event(now, "joined", name, f"{name} at {endpoint}")

    def left(self, name: str, reason: str, now: float) -> None:
        """``name`` is no longer a member."""
        self._flush(name, now, force=True)
        if self._nodes.pop(name, None) is not None:
            self._event(now, "left", name, f"{name}: {reason}")

    def unreachable(self, name: str, error: str, now: float) -> None:
        """A call to ``name`` failed (or timed out): ``error`` says how."""
        track = self._nodes.get(name)
        if track is None:
            return
        if track.error is None:
            self._event(now, "unreachable", name, f"{name} did not answer: {error}")
        track.error = error

    def observed(self, name: str, stats: Mapping[str, Any], now: float) -> None:
        """``name`` answered ``stats()`` with ``stats``."""
        track = self._nodes.get(name)
        if track is None:
            return  # it left while we asked
        if track.error is not None and track.stats is not None:
            self._event(now, "answering", name, f"{name} answers again")
        track.error = None
        uptime = stats.get("uptime_s")
        uptime_s = float(uptime) if isinstance(uptime, int | float) else 0.0
        previous = track.stats
        if previous is not None and (
            previous.get("instance") != stats.get("instance")
            or uptime_s < float(previous.get("uptime_s") or 0.0)
        ):
            self._event(now, "restarted", name, f"{name} restarted")
            previous = None
            track.workers.clear()
            track.traffic.clear()
        if previous is not None:
            self._compare(name, previous, stats, now)
        track.stats = stats
        track.answered_at = now
        _keep(
            track.traffic,
            _Counts(uptime_s, _count(stats, "messages_sent"), _count(stats, "messages_received")),
        )
        workers = stats.get("workers")
        workers = workers if isinstance(workers, Mapping) else {}
        for gone in set(track.workers) - set(workers):
            del track.workers[gone]
            self._event(now, "stopped", name, f"worker {gone} stopped on {name}", worker=gone)
        for worker, counts in workers.items():
            if not isinstance(counts, Mapping):
                continue
            worker_track = track.workers.get(worker)
            if worker_track is None:
                worker_track = track.workers[worker] = _WorkerTrack()
                if previous is not None:
                    self._event(
                        now, "started", name, f"worker {worker} started on {name}", worker=worker
                    )
            _keep(
                worker_track.samples,
                _Counts(uptime_s, _count(counts, "handled"), _count(counts, "failed")),
            )
            worker_track.latest = counts
            rate = _rate(worker_track.samples, "handled")
            if rate is not None:
                worker_track.history.append(rate)
        self._flush(name, now)

    def _compare(
        self, name: str, before: Mapping[str, Any], after: Mapping[str, Any], now: float
    ) -> None:
        """Tally what went wrong between two answers of one node (`_flush` tells it)."""
        old_workers = before.get("workers")
        new_workers = after.get("workers")
        if isinstance(old_workers, Mapping) and isinstance(new_workers, Mapping):
            for worker, counts in new_workers.items():
                old = old_workers.get(worker)
                if isinstance(old, Mapping) and isinstance(counts, Mapping):
                    for key in ("failed", "expired"):
                        self._tally(name, worker, key, _count(counts, key) - _count(old, key))
        for key in ("rejected_frames", "refused_handshakes"):
            self._tally(name, None, key, _count(after, key) - _count(before, key))

    def _tally(self, node: str, worker: str | None, key: str, more: int) -> None:
        if more > 0:
            self._tallies.setdefault((node, worker, key), _Tally()).count += more

    def _flush(self, node: str, now: float, *, force: bool = False) -> None:
        """An event for each of ``node``'s tallies not told for `COALESCE_S` (all: ``force``)."""
        for (name, worker, key), tally in self._tallies.items():
            if name != node or not tally.count:
                continue
            if not force and now - tally.told_at < COALESCE_S:
                continue
            what = _TROUBLE[key]
            count = f"{tally.count:,} {what[0]}{'s' * (tally.count > 1)}"
            since = f" in {now - tally.told_at:.0f} s" if tally.told_at > -math.inf else ""
            where = f"{worker} on {node}" if worker is not None else node
            kind = key.split("_")[0]
            self._event(now, kind, node, f"{where}: {count} {what[1]}{since}", worker=worker)
            tally.count = 0
            tally.told_at = now
        if force:
            for told in [told for told in self._tallies if told[0] == node]:
                del self._tallies[told]

    # Each event is shown after its kind (``JOINED runner-1 at tcp://...``): its text does
    # not say the kind again.
    def _event(
        self, now: float, kind: str, node: str, text: str, *, worker: str | None = None
    ) -> None:
        self._event_id += 1
        event = {"id": self._event_id, "time": now, "kind": kind, "node": node, "text": text}
        if worker is not None:
            event["worker"] = worker
        self._events.append(event)

    # -- the picture --------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything known now: ``zone``, ``observer``, ``time``, ``nodes`` (sorted by name,
        each with its ``workers``), ``totals``, and ``events`` (newest first)."""
        nodes = [self._node(self._nodes[name]) for name in sorted(self._nodes)]
        workers = [worker for node in nodes for worker in node["workers"]]
        totals = {
            "nodes": len(nodes),
            "answering": sum(node["state"] == "up" for node in nodes),
            "workers": len(workers),
            **{
                key: sum(worker[key] for worker in workers)
                for key in ("handled", "failed", "queued", "expired")
            },
            "handled_per_s": round(sum(w["handled_per_s"] or 0.0 for w in workers), 2),
            "failed_per_s": round(sum(w["failed_per_s"] or 0.0 for w in workers), 2),
        }
        return {
            "zone": self.zone,
            "observer": self.observer,
            "time": now,
            "nodes": nodes,
            "totals": totals,
            "events": list(reversed(self._events)),
        }

    def _node(self, track: _NodeTrack) -> dict[str, Any]:
        stats = track.stats or {}
        state = "waiting" if track.stats is None else "up"
        if track.error is not None:
            state = "unreachable"
        connections = stats.get("connections")
        peers = stats.get("peers")
        return {
            "name": track.name,
            "endpoint": track.endpoint,
            "state": state,
            "error": track.error,
            "joined_at": track.joined_at,
            "answered_at": track.answered_at,
            "uptime_s": stats.get("uptime_s"),
            "members": stats.get("members"),
            **{
                key: _count(stats, key)
                for key in (
                    "messages_sent",
                    "messages_received",
                    "rejected_frames",
                    "refused_handshakes",
                    "expired_requests",
                )
            },
            "sent_per_s": _rate(track.traffic, "handled"),
            "received_per_s": _rate(track.traffic, "failed"),
            "connections": dict(connections) if isinstance(connections, Mapping) else {},
            "peers": len(peers) if isinstance(peers, Mapping) else 0,
            "workers": [
                self._worker(worker, track.workers[worker]) for worker in sorted(track.workers)
            ],
        }

    @staticmethod
    def _worker(name: str, track: _WorkerTrack) -> dict[str, Any]:
        counts = track.latest
        seconds = counts.get("handler_seconds")
        mean_ms = None
        if isinstance(seconds, Mapping) and _count(seconds, "count") > 0:
            total = seconds.get("sum")
            if isinstance(total, int | float):
                mean_ms = round(1000 * total / _count(seconds, "count"), 3)
        return {
            "name": name,
            **{key: _count(counts, key) for key in ("handled", "failed", "queued", "expired")},
            "handled_per_s": _rate(track.samples, "handled"),
            "failed_per_s": _rate(track.samples, "failed"),
            "mean_handler_ms": mean_ms,
            "history": list(track.history),
        }
