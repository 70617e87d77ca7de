"""Zones on one machine: discovery over mDNS on loopback, Zone.nodes, seed peers, liveness.

Runners are separate processes; every node of a test shares a zone no other test uses.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

import autonomy._peer as peer_module
from autonomy import Node, PeerUnavailableError, Zone
from autonomy._zone import SETTLE_MAX_S

from .conftest import bounded, eventually, unique
from .workers import Echoer, ZoneLister


def names(nodes: list) -> list[str]:
    return [each.name for each in nodes]


async def test_five_runner_processes_and_the_main_node_find_each_other(
    node: Node, runner_factory
) -> None:
    runners = await asyncio.gather(*(runner_factory(f"runner-{i}") for i in range(5)))
    found = await bounded(Zone.nodes(node, filter="runner", count=5, timeout=20_000), 25)
    assert names(found) == [f"runner-{i}" for i in range(5)]
    assert [r.endpoint for r in sorted(runners, key=lambda r: r.name)] == [
        f.endpoint for f in found
    ]
    # Each runner found the others and the main node too (asked over the mesh).
    for remote in found:
        await bounded(remote.start_worker("echo", Echoer()))
        assert await remote.send_and_receive("echo", "hi", timeout=5000) == "hi"


async def test_the_filter_matches_by_substring_and_includes_the_local_node_if_it_matches(
    node_factory, runner_factory
) -> None:
    main = await node_factory("main-pod-main")
    await asyncio.gather(runner_factory("runner-pod-0-runner"), runner_factory("db-pod-db"))
    everyone = await bounded(Zone.nodes(main, count=3, timeout=20_000), 25)
    assert names(everyone) == ["db-pod-db", "main-pod-main", "runner-pod-0-runner"]
    assert everyone[1] is main
    assert names(await bounded(Zone.nodes(main, filter="runner", count=1))) == [
        "runner-pod-0-runner"
    ]
    assert names(await bounded(Zone.nodes(main, filter="pod-", count=3))) == names(everyone)
    assert await bounded(Zone.nodes(main, filter="nobody", count=0)) == []


async def test_expected_names_from_the_launcher_make_zone_nodes_wait_for_all_of_them(
    node_factory, runner_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = [f"runner-pod-{i}-runner" for i in range(3)]
    monkeypatch.setenv("AUTONOMY_EXPECTED_NODES", ",".join(["main", *expected]))
    main = await node_factory("main")
    spawning = asyncio.gather(*(runner_factory(name) for name in expected))
    found = await bounded(Zone.nodes(main, filter="runner"), 40)
    await spawning
    assert names(found) == expected


async def test_without_expectations_zone_nodes_waits_for_discovery_to_settle(
    node_factory, runner_factory
) -> None:
    await asyncio.gather(runner_factory("runner-a"), runner_factory("runner-b"))
    main = await node_factory("main")
    found = await bounded(Zone.nodes(main, filter="runner"), SETTLE_MAX_S + 5)
    assert names(found) == ["runner-a", "runner-b"]


async def test_two_zones_on_one_machine_never_see_each_other(node_factory) -> None:
    zone_a, zone_b = unique("zone-a"), unique("zone-b")
    a1 = await node_factory("a1", zone=zone_a)
    await node_factory("a2", zone=zone_a)
    b1 = await node_factory("b1", zone=zone_b)
    await node_factory("b2", zone=zone_b)
    assert names(await bounded(Zone.nodes(a1, count=2, timeout=15_000), 20)) == ["a1", "a2"]
    assert names(await bounded(Zone.nodes(b1, count=2, timeout=15_000), 20)) == ["b1", "b2"]
    await bounded(a1.membership.members.wait_settled(0.5, 2))
    assert names(a1.peers()) == ["a2"]


async def test_a_killed_runner_leaves_the_zone_within_the_bound_and_comes_back_on_restart(
    node: Node, runner_factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="autonomy.discovery")
    doomed = await runner_factory("runner-doomed")
    await runner_factory("runner-stays")
    await bounded(Zone.nodes(node, filter="runner", count=2, timeout=20_000), 25)
    doomed.kill()
    agent = node.membership
    # NOTE: the bound is PEER_UNREACHABLE_S after the connection drops (seen at once on a
    # kill); the wait gives it 3 s more, so that a loaded machine cannot fail the test.
    await eventually(
        lambda: agent.members.get("runner-doomed") is None,
        peer_module.PEER_UNREACHABLE_S + 3,
        "the killed runner to leave the zone",
    )
    assert names(await bounded(Zone.nodes(node, filter="runner", count=1))) == ["runner-stays"]
    assert any("runner-doomed left zone" in r.getMessage() for r in caplog.records)
    # The same name comes back as a new process (a new instance on a new port).
    await runner_factory("runner-doomed")
    back = await bounded(Zone.nodes(node, filter="runner", count=2, timeout=20_000), 25)
    assert names(back) == ["runner-doomed", "runner-stays"]
    await bounded(back[0].start_worker("echo", Echoer()))
    assert await back[0].send_and_receive("echo", "again", timeout=5000) == "again"


async def test_a_runner_that_stops_gracefully_leaves_at_once(node: Node, runner_factory) -> None:
    leaving = await runner_factory("runner-leaving")
    await bounded(Zone.nodes(node, filter="runner", count=1, timeout=20_000), 25)
    leaving.terminate()
    # A goodbye: gone at once, well before the 3 s a silent node would take.
    await eventually(
        lambda: node.membership.members.get("runner-leaving") is None,
        peer_module.PEER_UNREACHABLE_S,
        "a goodbye",
    )


async def test_with_multicast_off_one_seed_peer_is_enough_for_all_to_find_all(
    zone: str, runner_factory
) -> None:
    env = {"AUTONOMY_DISCOVERY": "0"}
    seed = await runner_factory("seed", env=env)
    seed_address = seed.endpoint.removeprefix("tcp://")
    await asyncio.gather(
        *(
            runner_factory(f"runner-{i}", env={**env, "AUTONOMY_PEERS": seed_address})
            for i in range(3)
        )
    )
    async with Node("main", zone=zone, bind="127.0.0.1", discovery=False,
                    peers=[seed_address]) as main:
        # count includes the local node when it matches the filter (here: everything).
        found = await bounded(Zone.nodes(main, count=5, timeout=20_000), 25)
        assert names(found) == ["main", "runner-0", "runner-1", "runner-2", "seed"]
        # The runners found each other through the seed too: ask one of them.
        runner = found[1]
        await bounded(runner.start_worker("lister", ZoneLister(runner)))
        seen = await runner.send_and_receive("lister", "runner 3", timeout=20_000)
        assert json.loads(seen) == ["runner-0", "runner-1", "runner-2"]


async def test_a_seed_given_as_an_unparseable_address_is_a_config_error(zone: str) -> None:
    from autonomy import ConfigError

    with pytest.raises(ConfigError, match="HOST:PORT"):
        async with Node(zone=zone, bind="127.0.0.1", peers=["no-port-here"]):
            pass


async def test_discovery_refuses_a_wildcard_bind_with_advice(zone: str) -> None:
    from autonomy import ConfigError

    with pytest.raises(ConfigError, match="wildcard"):
        async with Node(zone=zone, bind="0.0.0.0"):
            pass


async def test_a_handle_from_zone_nodes_fails_fast_while_its_node_is_away_and_reaches_it_again(
    node: Node, runner_factory
) -> None:
    first = await runner_factory("runner-b")
    (rb,) = await bounded(Zone.nodes(node, filter="runner-b", count=1, timeout=20_000), 25)
    await bounded(rb.start_worker("echo", Echoer()))
    assert await rb.send_and_receive("echo", "one", timeout=5000) == "one"
    first.terminate()  # a goodbye: it leaves the zone at once
    await eventually(lambda: node.membership.members.get("runner-b") is None, 5, "a goodbye")
    # Away: calls fail at once and by type (a timeout below PEER_UNREACHABLE_S proves it).
    with pytest.raises(PeerUnavailableError, match="left the zone"):
        await rb.send_and_receive("echo", "away", timeout=1000)
    with pytest.raises(PeerUnavailableError):
        await rb.start_worker("echo", Echoer())
    assert not rb.is_up()
    assert "ABSENT" in repr(rb)
    # A new process of the same name (a new instance, at a new address): the same handle.
    second = await runner_factory("runner-b")
    assert second.endpoint != first.endpoint
    await bounded(Zone.nodes(node, filter="runner-b", count=1, timeout=20_000), 25)
    await bounded(rb.start_worker("echo", Echoer()))
    assert await rb.send_and_receive("echo", "two", timeout=5000) == "two"
    assert rb.endpoint == second.endpoint
