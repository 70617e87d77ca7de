"""The membership's gossip rules (``_gossip``), fed with news as tuples: no sockets, no loop.

The properties that matter: news about one run of a member is ordered by incarnation and
status whatever order it arrives in; a run that died stays dead unless it refutes; a node
refutes news of its own death; a restart replaces its predecessor, a second node of a taken
name does not; every piece of news is passed on a bounded number of times.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autonomy._gossip import (
    MAX_UPDATES,
    RETRANSMIT_MULT,
    TOMBSTONE_S,
    Book,
    Change,
    Record,
    Status,
    parse_updates,
)

EP = "tcp://127.0.0.1:5000"
OLD = "000000000001aaaaaaaa"
NEW = "000000000002bbbbbbbb"


def book(**kwargs: object) -> Book:
    return Book("me", "tcp://127.0.0.1:4000", "000000000000cccccccc", **kwargs)  # type: ignore[arg-type]


def news(name: str, status: Status, incarnation: int = 0, instance: str = OLD) -> tuple:
    return (name, EP, instance, incarnation, int(status))


def test_a_new_member_joins_and_its_news_is_passed_on() -> None:
    b = book()
    change, record = b.apply(news("a", Status.ALIVE))
    assert change is Change.JOINED
    assert record.status is Status.ALIVE
    assert b.has_news()
    assert b.take_news() == [news("a", Status.ALIVE)]


def test_news_of_a_run_that_is_already_known_changes_nothing() -> None:
    b = book()
    b.apply(news("a", Status.ALIVE, 3))
    assert b.apply(news("a", Status.ALIVE, 3)) is None
    assert b.apply(news("a", Status.ALIVE, 2)) is None


def test_suspect_overrides_alive_of_the_same_incarnation_and_alive_needs_a_higher_one() -> None:
    b = book()
    b.apply(news("a", Status.ALIVE, 1))
    assert b.apply(news("a", Status.SUSPECT, 1))[0] is Change.SUSPECTED
    assert b.apply(news("a", Status.ALIVE, 1)) is None
    assert b.records["a"].status is Status.SUSPECT
    assert b.apply(news("a", Status.ALIVE, 2))[0] is Change.ALIVE_AGAIN
    assert b.records["a"].status is Status.ALIVE


def test_dead_ends_a_run_for_good_unless_it_refutes_with_a_higher_incarnation() -> None:
    b = book()
    b.apply(news("a", Status.ALIVE, 1))
    change, record = b.apply(news("a", Status.DEAD, 1))
    assert change is Change.LEFT
    assert record.status is Status.DEAD
    assert "a" not in b.records
    # Stale news of the same run cannot revive it...
    assert b.apply(news("a", Status.ALIVE, 1)) is None
    assert b.apply(news("a", Status.SUSPECT, 1)) is None
    # ...but the run itself, declared dead while it was cut off, refutes.
    assert b.apply(news("a", Status.ALIVE, 2))[0] is Change.JOINED


def test_a_run_remembered_as_ended_is_forgotten_after_the_tombstone_time() -> None:
    now = [0.0]
    b = book(clock=lambda: now[0])
    b.apply(news("a", Status.ALIVE))
    b.apply(news("a", Status.LEFT))
    assert b.apply(news("a", Status.ALIVE)) is None
    now[0] += TOMBSTONE_S + 1
    assert b.apply(news("a", Status.ALIVE))[0] is Change.JOINED


def test_a_node_refutes_news_of_its_own_suspicion_or_death() -> None:
    b = book()
    assert b.incarnation == 0
    assert b.apply(("me", "tcp://127.0.0.1:4000", b.instance, 0, int(Status.SUSPECT))) is None
    assert b.incarnation == 1
    assert b.take_news() == [b.own()]
    b.apply(("me", "tcp://127.0.0.1:4000", b.instance, 1, int(Status.DEAD)))
    assert b.incarnation == 2
    # Old news about itself is no news.
    b.apply(("me", "tcp://127.0.0.1:4000", b.instance, 0, int(Status.SUSPECT)))
    assert b.incarnation == 2


def test_news_of_another_run_of_this_nodes_name_is_reported_not_applied() -> None:
    b = book()
    change, other = b.apply(("me", EP, OLD, 0, int(Status.ALIVE)))
    assert change is Change.SAME_NAME
    assert other.instance == OLD
    assert "me" not in b.records


def test_a_newer_run_replaces_an_older_one_that_is_gone() -> None:
    b = book(admit=lambda old, new: True)
    b.apply(news("a", Status.ALIVE, 5, OLD))
    change, record = b.apply(news("a", Status.ALIVE, 0, NEW))
    assert change is Change.JOINED
    assert record.instance == NEW
    # The old run is remembered as ended: its stale news cannot come back.
    assert b.apply(news("a", Status.ALIVE, 6, OLD)) is None


def test_a_newer_run_of_a_live_members_name_is_kept_out() -> None:
    asked: list[tuple[Record, Record]] = []

    def admit(old: Record, new: Record) -> bool:
        asked.append((old, new))
        return False

    b = book(admit=admit)
    b.apply(news("a", Status.ALIVE, 0, OLD))
    assert b.apply(news("a", Status.ALIVE, 0, NEW)) is None
    assert b.records["a"].instance == OLD
    assert asked[0][1].instance == NEW
    # The run that started first replaces a younger one whatever admit says.
    c = book(admit=admit)
    c.apply(news("a", Status.ALIVE, 0, NEW))
    assert c.apply(news("a", Status.ALIVE, 0, OLD))[0] is Change.JOINED


def test_each_piece_of_news_is_passed_on_a_bounded_number_of_times() -> None:
    b = book()
    for i in range(30):
        b.apply(news(f"n{i:02d}", Status.ALIVE))
    rounds = 0
    passed = 0
    while b.has_news():
        batch = b.take_news()
        assert len(batch) <= MAX_UPDATES
        passed += len(batch)
        rounds += 1
    # Each of the 30 pieces of news went out RETRANSMIT_MULT * log2(zone) times at most.
    assert passed <= 30 * RETRANSMIT_MULT * math.ceil(math.log2(30 + 2))
    assert rounds < 100


def test_a_suspicion_this_node_raises_is_spread_and_a_declared_death_ends_the_run() -> None:
    b = book()
    b.apply(news("a", Status.ALIVE, 2))
    b.take_news()
    record = b.suspect("a")
    assert record is not None
    assert record.status is Status.SUSPECT
    assert b.take_news() == [news("a", Status.SUSPECT, 2)]
    assert b.suspect("a") is None  # already suspected
    ended = b.declare("a", OLD, Status.DEAD)
    assert ended is not None
    assert ended.status is Status.DEAD
    assert "a" not in b.records
    assert news("a", Status.DEAD, 2) in b.snapshot()


def test_leaving_spreads_left_with_a_higher_incarnation() -> None:
    b = book()
    update = b.leave()
    assert update[4] == Status.LEFT
    assert update[3] == 1
    assert b.take_news() == [update]


@pytest.mark.parametrize(
    "item",
    [
        "not a list",
        ["a", EP, OLD, 0],
        ["", EP, OLD, 0, 0],
        ["a", "no-scheme", OLD, 0, 0],
        ["a", EP, "NOT-HEX", 0, 0],
        ["a", EP, OLD, -1, 0],
        ["a", EP, OLD, True, 0],
        ["a", EP, OLD, 0, 9],
        ["tab\there", EP, OLD, 0, 0],
        ["x" * 256, EP, OLD, 0, 0],
    ],
)
def test_malformed_news_is_dropped(item: object) -> None:
    assert parse_updates([item, ["ok", EP, OLD, 1, 0]]) == [("ok", EP, OLD, 1, 0)]


def test_a_payload_that_is_not_a_list_is_no_news() -> None:
    assert parse_updates({"a": 1}) == []
    assert parse_updates(None) == []


NEWS = st.tuples(st.integers(0, 4), st.sampled_from(list(Status)))


@given(st.lists(NEWS, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_news_of_one_run_gives_the_same_belief_whatever_order_it_arrives_in(
    items: list[tuple[int, Status]], random
) -> None:
    updates = [news("a", status, incarnation) for incarnation, status in items]
    shuffled = list(updates)
    random.shuffle(shuffled)
    first, second = book(), book()
    for update in updates:
        first.apply(update)
    for update in shuffled:
        second.apply(update)

    def belief(b: Book) -> object:
        record = b.records.get("a")
        return None if record is None else (record.incarnation, record.status)

    assert belief(first) == belief(second)
