"""The zone's picture behind the dashboard and `zone top`, fed with ``stats()`` dicts: rates
on each node's own clock, totals, and the events (joins, leaves, trouble told once per
`COALESCE_S`, restarts)."""

from __future__ import annotations

import json
from typing import Any

from autonomy.cli._zoneview import COALESCE_S, HISTORY, RATE_WINDOW_S, ZoneView


def stats(
    uptime_s: float,
    workers: dict[str, tuple[int, int]],
    *,
    instance: str = "run-1",
    sent: int = 0,
    received: int = 0,
    rejected: int = 0,
) -> dict[str, Any]:
    """What a node's ``stats()`` answers, with ``workers`` as name -> (handled, failed)."""
    return {
        "node": "n",
        "zone": "z",
        "instance": instance,
        "uptime_s": uptime_s,
        "members": 2,
        "messages_sent": sent,
        "messages_received": received,
        "rejected_frames": rejected,
        "refused_handshakes": 0,
        "expired_requests": 0,
        "connections": {"dialed": 1, "accepted": 2},
        "workers": {
            name: {
                "handled": handled,
                "failed": failed,
                "queued": 0,
                "expired": 0,
                "handler_seconds": {"count": handled, "sum": handled * 0.002, "buckets": {}},
            }
            for name, (handled, failed) in workers.items()
        },
        "peers": {"other": {}},
    }


def worker(view: ZoneView, node: str, name: str, now: float = 0.0) -> dict[str, Any]:
    (found,) = [
        w
        for n in view.snapshot(now)["nodes"]
        if n["name"] == node
        for w in n["workers"]
        if w["name"] == name
    ]
    return found


def kinds(view: ZoneView) -> list[str]:
    return [event["kind"] for event in reversed(view.snapshot(0)["events"])]


def test_a_node_that_joined_waits_for_its_counters_then_shows_its_workers() -> None:
    view = ZoneView("z", "observer-1")
    view.joined("runner", "tcp://127.0.0.1:1", 100.0)
    (node,) = view.snapshot(100.0)["nodes"]
    assert (node["state"], node["workers"]) == ("waiting", [])
    view.observed("runner", stats(10.0, {"echo": (5, 1)}), 101.0)
    (node,) = view.snapshot(101.0)["nodes"]
    assert node["state"] == "up"
    assert node["connections"] == {"dialed": 1, "accepted": 2}
    assert node["peers"] == 1
    (echo,) = node["workers"]
    assert (echo["name"], echo["handled"], echo["failed"], echo["queued"]) == ("echo", 5, 1, 0)
    assert echo["handled_per_s"] is None  # one sample: no rate yet
    assert echo["mean_handler_ms"] == 2.0


def test_rates_are_counted_on_the_nodes_clock_over_the_window() -> None:
    view = ZoneView("z", "o")
    view.joined("a", "tcp://a", 0.0)
    # The answers arrive late and unevenly; the node's uptime says when they were taken.
    view.observed("a", stats(10.0, {"w": (0, 0)}, sent=0, received=0), 50.0)
    view.observed("a", stats(11.0, {"w": (20, 2)}, sent=40, received=30), 53.0)
    w = worker(view, "a", "w")
    assert (w["handled_per_s"], w["failed_per_s"]) == (20.0, 2.0)
    (node,) = view.snapshot(53.0)["nodes"]
    assert (node["sent_per_s"], node["received_per_s"]) == (40.0, 30.0)
    # Past the window, the oldest samples no longer count.
    for second in range(12, 12 + int(RATE_WINDOW_S) + 2):
        view.observed("a", stats(float(second), {"w": (20 + (second - 11) * 4, 2)}), 60.0)
    w = worker(view, "a", "w")
    assert w["handled_per_s"] == 4.0
    assert w["failed_per_s"] == 0.0
    assert len(w["history"]) == int(RATE_WINDOW_S) + 3
    assert view.snapshot(60.0)["totals"]["handled_per_s"] == 4.0


def test_the_history_keeps_the_last_minute_of_rates() -> None:
    view = ZoneView("z", "o")
    view.joined("a", "tcp://a", 0.0)
    for second in range(HISTORY + 20):
        view.observed("a", stats(float(second), {"w": (second * 3, 0)}), float(second))
    history = worker(view, "a", "w")["history"]
    assert len(history) == HISTORY
    assert set(history) == {3.0}


def test_totals_add_up_the_workers_of_every_node() -> None:
    view = ZoneView("z", "o")
    for name in ("a", "b"):
        view.joined(name, f"tcp://{name}", 0.0)
    view.joined("c", "tcp://c", 0.0)  # never answers
    view.observed("a", stats(1.0, {"x": (3, 1), "y": (4, 0)}), 1.0)
    view.observed("b", stats(1.0, {"x": (10, 2)}), 1.0)
    view.unreachable("c", "no answer in 2 s", 1.0)
    totals = view.snapshot(1.0)["totals"]
    assert totals == {
        "nodes": 3,
        "answering": 2,
        "workers": 3,
        "handled": 17,
        "failed": 3,
        "queued": 0,
        "expired": 0,
        "handled_per_s": 0.0,
        "failed_per_s": 0.0,
    }
    assert view.names == ["a", "b", "c"]


def test_joins_and_leaves_are_events_and_a_node_that_left_is_gone() -> None:
    view = ZoneView("z", "o")
    view.joined("a", "tcp://a", 1.0, found=True)
    view.joined("b", "tcp://b", 2.0)
    view.left("b", "it left", 3.0)
    view.left("never-joined", "it left", 4.0)
    events = view.snapshot(5.0)["events"]
    assert [(e["kind"], e["node"], e["text"]) for e in events] == [
        ("left", "b", "b: it left"),
        ("joined", "b", "b at tcp://b"),
        ("found", "a", "a at tcp://a"),
    ]
    assert [e["id"] for e in events] == [3, 2, 1]
    assert view.names == ["a"]


def test_failures_make_one_event_at_once_then_at_most_one_per_interval() -> None:
    view = ZoneView("z", "o")
    view.joined("a", "tcp://a", 0.0)
    view.observed("a", stats(1.0, {"w": (10, 0)}), 1.0)
    view.observed("a", stats(2.0, {"w": (11, 1)}), 2.0)
    assert kinds(view) == ["joined", "failed"]
    # A worker that keeps failing: its failures are counted, and told once per interval.
    for second in range(3, 2 + int(COALESCE_S)):
        view.observed("a", stats(float(second), {"w": (second * 10, second)}), float(second))
    assert kinds(view) == ["joined", "failed"]
    view.observed("a", stats(2.0 + COALESCE_S, {"w": (1000, 40)}), 2.0 + COALESCE_S)
    assert kinds(view) == ["joined", "failed", "failed"]
    newest = view.snapshot(0)["events"][0]
    assert newest["worker"] == "w"
    assert (
        newest["text"] == f"w on a: 39 messages failed (the handler raised) in {COALESCE_S:.0f} s"
    )


def test_failures_not_yet_told_are_told_when_their_node_leaves() -> None:
    view = ZoneView("z", "o")
    view.joined("a", "tcp://a", 0.0)
    view.observed("a", stats(1.0, {"w": (1, 0)}, rejected=0), 1.0)
    view.observed("a", stats(2.0, {"w": (2, 1)}, rejected=2), 2.0)
    view.observed("a", stats(3.0, {"w": (3, 2)}, rejected=2), 3.0)
    view.left("a", "it stopped answering", 4.0)
    texts = [e["text"] for e in reversed(view.snapshot(4.0)["events"])]
    assert texts == [
        "a at tcp://a",
        "w on a: 1 message failed (the handler raised)",
        "a: 2 frames rejected (malformed or too large)",
        "w on a: 1 message failed (the handler raised) in 2 s",
        "a: it stopped answering",
    ]


def test_workers_starting_and_stopping_and_a_restart_are_events() -> None:
    view = ZoneView("z", "o")
    view.joined("a", "tcp://a", 0.0)
    view.observed("a", stats(1.0, {"old": (5, 0)}), 1.0)  # there before: no event
    view.observed("a", stats(2.0, {"old": (5, 0), "new": (0, 0)}), 2.0)
    view.observed("a", stats(3.0, {"new": (1, 0)}), 3.0)
    view.observed("a", stats(0.5, {"new": (0, 0)}, instance="run-2"), 4.0)
    assert kinds(view) == ["joined", "started", "stopped", "restarted"]
    # After a restart the counters start again: no negative rate, no failure event.
    assert worker(view, "a", "new")["handled_per_s"] is None


def test_a_node_that_stops_answering_and_answers_again_is_told_once_each() -> None:
    view = ZoneView("z", "o")
    view.joined("a", "tcp://a", 0.0)
    view.observed("a", stats(1.0, {}), 1.0)
    view.unreachable("a", "no answer in 2 s", 2.0)
    view.unreachable("a", "no answer in 2 s", 3.0)
    (node,) = view.snapshot(3.0)["nodes"]
    assert (node["state"], node["error"]) == ("unreachable", "no answer in 2 s")
    view.observed("a", stats(4.0, {}), 4.0)
    assert kinds(view) == ["joined", "unreachable", "answering"]
    view.unreachable("gone", "PeerUnavailableError", 5.0)  # not a member: ignored
    assert view.names == ["a"]


def test_answers_from_other_versions_missing_fields_or_odd_values_do_not_break_it() -> None:
    view = ZoneView("z", "o")
    view.joined("a", "tcp://a", 0.0)
    view.observed("a", {"workers": {"w": {"handled": "many"}, "x": None}}, 1.0)
    (node,) = view.snapshot(1.0)["nodes"]
    assert node["state"] == "up"
    assert node["messages_sent"] == 0
    assert [(w["name"], w["handled"]) for w in node["workers"]] == [("w", 0)]


def test_the_snapshot_is_plain_json() -> None:
    view = ZoneView("z", "o")
    view.joined("a", "tcp://a", 0.0)
    view.observed("a", stats(1.0, {"w": (1, 0)}), 1.0)
    view.observed("a", stats(2.0, {"w": (2, 1)}), 2.0)
    snapshot = view.snapshot(2.0)
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert repr(view) == "<ZoneView 'z' nodes=1 events=2>"
