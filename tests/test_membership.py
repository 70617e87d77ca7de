"""A zone's membership with real nodes: joins through one seed, gossip, quiet when idle, few
connections per node whatever the zone's size, leaves seen by all.

Nodes of one process, discovery off (seeds only), CURVE on: the membership is the same
whether its members share a process or not (the processes' cases are in test_zone and
test_zone_netns).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import autonomy._membership as membership_module
from autonomy import Node, Zone
from autonomy._neighbours import FINGERS, WATCHED

from .conftest import bounded, eventually, unique

SIZE = 8
KEPT = WATCHED + FINGERS
"""The most connections a node keeps once idle: its ring successors and fingers."""


@pytest.fixture
async def zone_of_eight(zone: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Node]]:
    """Eight nodes, each seeded with the first; connections idle for 1 s close."""
    monkeypatch.setattr(membership_module, "IDLE_LINK_S", 1.0)
    nodes: list[Node] = []
    try:
        first = Node(name="node-0", zone=zone, bind="127.0.0.1", discovery=False)
        await first.__aenter__()
        nodes.append(first)
        seed = first.endpoint.removeprefix("tcp://")
        for i in range(1, SIZE):
            node = Node(name=f"node-{i}", zone=zone, bind="127.0.0.1", discovery=False, peers=seed)
            await node.__aenter__()
            nodes.append(node)
        for node in nodes:
            await bounded(Zone.nodes(node, count=SIZE, timeout=20_000), 25)
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.stop()


def settled(nodes: list[Node]) -> bool:
    return all(node.membership.settled() for node in nodes)


def only_kept_links(nodes: list[Node]) -> bool:
    """Every node's connections are the ones it keeps (successors and fingers): the others,
    opened to join, verify or gossip, have closed for idleness."""
    return all(all(link.watched for link in node._links) for node in nodes)


async def test_every_node_of_a_seeded_zone_knows_every_other(zone_of_eight: list[Node]) -> None:
    for node in zone_of_eight:
        names = [peer.name for peer in node.peers()]
        assert names == sorted(f"node-{i}" for i in range(SIZE) if f"node-{i}" != node.name)


async def test_an_idle_zone_exchanges_no_message_and_keeps_few_connections(
    zone_of_eight: list[Node],
) -> None:
    nodes = zone_of_eight
    await eventually(lambda: settled(nodes), 10, "the news to have been passed on")
    # Connections opened to join, to verify and to gossip close once idle: each node
    # keeps those to its ring successors and fingers (and the few others keep to it).
    await eventually(lambda: only_kept_links(nodes), 10, "idle links to close")
    # Settled means no news is left to pass on, but the last gossip may still be in flight, or
    # queued for the end of the loop turn (not counted as sent yet). The window starts once
    # every frame sent was received, twice in a row: a frame queued at the first look is sent
    # (counted) by the second, 10 ms later.
    before: list[dict[str, Any]] = []
    last: list[tuple[int, int]] = []

    async def quiet() -> bool:
        if not settled(nodes):
            return False
        before[:] = [await node.stats() for node in nodes]
        totals = [(stats["messages_sent"], stats["messages_received"]) for stats in before]
        stable = totals == last
        last[:] = totals
        return stable and sum(t[0] for t in totals) == sum(t[1] for t in totals)

    await eventually(quiet, 10, "the zone to settle and its last frames to arrive")
    # NOTE: the only traffic of a settled zone is one full exchange per node every ~30 s
    # (SYNC_INTERVAL_S, first after 15 s at the earliest): 2 s of it must be silent.
    await asyncio.sleep(2.0)  # idleness over time is the behaviour under test
    after = [await node.stats() for node in nodes]
    for start, end in zip(before, after, strict=True):
        assert end["messages_sent"] == start["messages_sent"], end["node"]
        assert end["messages_received"] == start["messages_received"], end["node"]
        assert end["connections"]["dialed"] <= KEPT


async def test_a_node_that_leaves_is_gone_from_every_view_even_without_a_connection_to_it(
    zone_of_eight: list[Node],
) -> None:
    nodes = zone_of_eight
    await eventually(lambda: settled(nodes), 10, "the news to have been passed on")
    await eventually(lambda: only_kept_links(nodes), 10, "idle links to close")
    leaving = nodes[3]
    connected = {node.name for node in nodes if node._links.find(leaving.endpoint) is not None}
    await leaving.stop()
    rest = [node for node in nodes if node is not leaving]
    # Most nodes hold no connection to it: they hear of it by gossip.
    assert len(connected) < len(rest)
    await eventually(
        lambda: all(node.membership.members.get(leaving.name) is None for node in rest),
        5,
        "every node to see the leave",
    )


async def test_a_new_node_joining_through_any_member_is_learnt_by_all(
    zone_of_eight: list[Node], zone: str
) -> None:
    nodes = zone_of_eight
    seed = nodes[5].endpoint.removeprefix("tcp://")
    async with Node(
        name=unique("late"), zone=zone, bind="127.0.0.1", discovery=False, peers=seed
    ) as late:
        await eventually(
            lambda: all(node.membership.members.get(late.name) for node in nodes),
            10,
            "every node to learn of the late joiner",
        )
        assert len(await bounded(Zone.nodes(late, count=SIZE + 1, timeout=10_000))) == SIZE + 1


async def test_an_observer_sees_the_zone_and_reads_its_stats_but_is_no_member(
    zone_of_eight: list[Node], zone: str
) -> None:
    nodes = zone_of_eight
    seed = nodes[2].endpoint.removeprefix("tcp://")
    async with Node(
        name="observer", zone=zone, bind="127.0.0.1", discovery=False, peers=seed, observer=True
    ) as observer:
        seen = await bounded(Zone.nodes(observer, count=SIZE + 1, timeout=10_000))
        assert len(seen) == SIZE + 1  # every member, and itself
        stats = await bounded(seen[0].stats())
        assert stats["members"] == SIZE - 1
        await eventually(lambda: settled([*nodes, observer]), 10, "the news to settle")
        for node in nodes:
            assert node.membership.members.get("observer") is None
            assert "observer" not in [peer.name for peer in node.peers()]


async def test_a_handle_whose_connection_closed_for_idleness_opens_a_new_one(
    zone_of_eight: list[Node],
) -> None:
    from .workers import Echoer

    caller = zone_of_eight[0]
    await eventually(lambda: settled(zone_of_eight), 10, "the news to settle")
    kept = caller.membership.neighbours.watched
    callee = next(node for node in zone_of_eight[1:] if node.endpoint not in kept)
    await callee.start_worker("echo", Echoer())
    by_endpoint = await bounded(caller.connect(callee.endpoint))
    (by_name,) = [peer for peer in caller.peers() if peer.name == callee.name]
    assert await by_endpoint.send_and_receive("echo", "one", timeout=5000) == "one"
    assert await by_name.send_and_receive("echo", "two", timeout=5000) == "two"
    await eventually(
        lambda: caller._links.find(callee.endpoint) is None, 10, "the idle link to close"
    )
    assert await by_endpoint.send_and_receive("echo", "three", timeout=5000) == "three"
    assert await by_name.send_and_receive("echo", "four", timeout=5000) == "four"
