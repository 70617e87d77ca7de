"""Tests of the membership table and of mDNS discovery on loopback and between namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import zeroconf._core

from autonomy import _discovery
from autonomy._discovery import Discovery, Member, Membership
from autonomy._errors import DiscoveryError, InternalError
from tests.netns import NetnsLab, netns_available
from tests.processes import Child

LOOPBACK = ["127.0.0.1"]
REPO = Path(__file__).resolve().parent.parent
DISCOVERY_LOGGER = logging.getLogger("autonomy.discovery")


def unique_zone() -> str:
    return f"t-{uuid4().hex[:8]}"


def new_instance() -> str:
    return uuid4().hex


def member(name: str, zone: str = "z", instance: str = "a1", port: int = 5000) -> Member:
    return Member(
        name=name,
        zone=zone,
        endpoint=f"tcp://127.0.0.1:{port}",
        version=_discovery.PROTOCOL_VERSION,
        instance=instance,
    )


def names(members: list[Member]) -> list[str]:
    return [m.name for m in members]


def exactly(*expected: str) -> Callable[[list[Member]], bool]:
    """A `wait_for` predicate: the members are exactly these names."""
    return lambda members: names(members) == sorted(expected)


@pytest.fixture(autouse=True)
def no_zeroconf_threads() -> Iterator[None]:
    """Zeroconf must leave no thread behind once every Discovery has stopped.

    On a running loop zeroconf starts none (it runs a thread only when created without a
    loop); this guards against that changing. `conftest.no_leaks` checks all threads.
    """
    yield
    leaked = [t for t in threading.enumerate() if "zeroconf" in t.name.lower()]
    assert not leaked, f"zeroconf threads left running: {leaked}"


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """No task of ours or of zeroconf's may outlive the test (conftest looks at ours only)."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    assert not leaked, f"tasks left running: {leaked}"


@pytest.fixture
def quick_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorten mDNS timings so that tests wait milliseconds instead of seconds.

    Name probing (about 1.2 s per start) is turned off, as zeroconf's own tests do with
    `cooperating_responders`: our service names carry a random instance id, so they cannot
    clash. The pause between the three goodbye packets of `stop()` (125 ms in zeroconf) is
    cut to 10 ms. Neither changes what is sent, only when.
    """
    monkeypatch.setattr(_discovery, "PROBE_NAMES", False)
    monkeypatch.setattr(zeroconf._core, "_UNREGISTER_TIME", 10)


class LogSignal(logging.Handler):
    """Sets an asyncio event when the discovery logger emits a record matching `predicate`."""

    def __init__(self, predicate: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__(logging.DEBUG)
        self.predicate = predicate
        self.event = asyncio.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.predicate(record):
            self.records.append(record)
            self.event.set()


@contextlib.contextmanager
def log_signal(predicate: Callable[[logging.LogRecord], bool]) -> Iterator[LogSignal]:
    handler = LogSignal(predicate)
    old_level = DISCOVERY_LOGGER.level
    DISCOVERY_LOGGER.setLevel(logging.DEBUG)
    DISCOVERY_LOGGER.addHandler(handler)
    try:
        yield handler
    finally:
        DISCOVERY_LOGGER.removeHandler(handler)
        DISCOVERY_LOGGER.setLevel(old_level)


class Nodes:
    """Starts Discovery instances on loopback and stops them all at teardown."""

    def __init__(self) -> None:
        self.started: list[Discovery] = []

    async def start(
        self,
        name: str,
        zone: str,
        *,
        instance: str | None = None,
        port: int = 5000,
        endpoint: str | None = None,
    ) -> tuple[Discovery, Membership]:
        membership = Membership(zone, name)
        discovery = Discovery(
            membership,
            name=name,
            zone=zone,
            endpoint=endpoint or f"tcp://127.0.0.1:{port}",
            instance=instance or new_instance(),
            interfaces=LOOPBACK,
        )
        self.started.append(discovery)
        async with asyncio.timeout(15):
            await discovery.start()
        return discovery, membership

    async def stop_all(self) -> None:
        async with asyncio.timeout(10):
            await asyncio.gather(*(d.stop() for d in self.started))


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    started = Nodes()
    try:
        yield started
    finally:
        await started.stop_all()


# -- Membership ----------------------------------------------------------------------------


def test_membership_lists_members_sorted_by_name() -> None:
    table = Membership("z", "self")
    assert table.add(member("c"), "test")
    assert table.add(member("a"), "test")
    assert table.add(member("b"), "test")
    assert names(table.members()) == ["a", "b", "c"]
    assert table.get("b") == member("b")
    assert table.get("nobody") is None
    assert repr(table) == "<Membership zone='z' self='self' members=3>"


def test_membership_ignores_other_zones_and_its_own_node() -> None:
    table = Membership("z", "self")
    assert not table.add(member("a", zone="other"), "test")
    assert not table.add(member("self"), "test")
    assert table.members() == []


def test_membership_add_of_a_known_member_is_not_a_change() -> None:
    table = Membership("z", "self")
    joined: list[Member] = []
    table.subscribe(joined.append, lambda m, reason: None)
    assert table.add(member("a"), "test")
    assert not table.add(member("a"), "test")
    assert joined == [member("a")]


def test_membership_newer_instance_replaces_the_old_one_and_stale_removal_spares_it() -> None:
    table = Membership("z", "self")
    events: list[tuple[str, str, str]] = []
    table.subscribe(
        lambda m: events.append(("join", m.name, m.instance)),
        lambda m, reason: events.append(("leave", m.name, m.instance)),
    )
    old, new = member("a", instance="old"), member("a", instance="new", port=6000)
    assert table.add(old, "mdns")
    assert table.add(new, "mdns")
    assert table.get("a") == new
    assert events == [("join", "a", "old"), ("leave", "a", "old"), ("join", "a", "new")]

    assert table.remove("a", "goodbye of the dead process", instance="old") is None
    assert table.get("a") == new
    assert table.remove("a", "heartbeat timeout", instance="new") == new
    assert table.get("a") is None
    assert events[-1] == ("leave", "a", "new")


def test_membership_remove_without_instance_removes_whatever_is_there() -> None:
    table = Membership("z", "self")
    table.add(member("a"), "test")
    left: list[tuple[Member, str]] = []
    table.subscribe(lambda m: None, lambda m, reason: left.append((m, reason)))
    assert table.remove("a", "bye") == member("a")
    assert table.remove("a", "bye") is None
    assert left == [(member("a"), "bye")]


def test_membership_endpoint_change_is_a_leave_and_a_join() -> None:
    table = Membership("z", "self")
    table.add(member("a", port=1), "test")
    assert table.add(member("a", port=2), "test")
    assert table.get("a") == member("a", port=2)


def test_membership_callback_that_raises_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = Membership("z", "self")
    seen: list[str] = []

    def broken(m: Member) -> None:
        raise RuntimeError("subscriber bug")

    table.subscribe(broken, lambda m, reason: None)
    table.subscribe(lambda m: seen.append(m.name), lambda m, reason: seen.append("-" + m.name))
    with caplog.at_level(logging.ERROR, logger="autonomy.discovery"):
        assert table.add(member("a"), "test")
    assert seen == ["a"]
    assert "subscriber bug" in caplog.text
    assert table.remove("a", "bye") is not None
    assert seen == ["a", "-a"]


def test_membership_logs_joins_and_leaves_at_info(caplog: pytest.LogCaptureFixture) -> None:
    table = Membership("z", "self")
    with caplog.at_level(logging.INFO, logger="autonomy.discovery"):
        table.add(member("a"), "seed")
        table.remove("a", "heartbeat timeout")
    assert caplog.messages == [
        "node a joined zone z at tcp://127.0.0.1:5000 (via seed)",
        "node a left zone z: heartbeat timeout",
    ]


async def test_wait_for_is_woken_by_an_add() -> None:
    table = Membership("z", "self")
    asyncio.get_running_loop().call_soon(table.add, member("a"), "test")
    async with asyncio.timeout(2):
        # A long timeout: only the wake-up on add can return this within the 2 s bound.
        assert await table.wait_for(lambda ms: "a" in names(ms), timeout_s=30)


async def test_wait_for_returns_at_once_when_the_predicate_already_holds() -> None:
    table = Membership("z", "self")
    table.add(member("a"), "test")
    async with asyncio.timeout(2):
        assert await table.wait_for(lambda ms: len(ms) == 1, timeout_s=30)


async def test_wait_for_returns_the_predicate_at_the_deadline() -> None:
    table = Membership("z", "self")
    async with asyncio.timeout(2):
        assert not await table.wait_for(lambda ms: len(ms) == 1, timeout_s=0.05)


async def test_wait_settled_waits_for_a_quiet_period_after_the_last_change() -> None:
    table = Membership("z", "self")
    loop = asyncio.get_running_loop()
    started = loop.time()
    loop.call_later(0.1, table.add, member("a"), "test")
    async with asyncio.timeout(5):
        await table.wait_settled(quiet_s=0.2, max_s=30)
    # The add at 0.1 s restarted the 0.2 s quiet period.
    assert loop.time() - started >= 0.3 - 0.01
    assert table.get("a") is not None


async def test_wait_settled_gives_up_after_max_s() -> None:
    table = Membership("z", "self")
    async with asyncio.timeout(5):
        await table.wait_settled(quiet_s=60, max_s=0.05)


async def test_wait_settled_returns_at_once_when_already_quiet() -> None:
    table = Membership("z", "self")
    async with asyncio.timeout(5):
        await table.wait_settled(quiet_s=0, max_s=60)


# -- Discovery: arguments and lifecycle ------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"zone": "other"}, "membership is for zone"),
        ({"instance": "NOT-HEX"}, "instance must be"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": "x" * 300}, "too long for a TXT record"),
        ({"interfaces": []}, "at least one interface"),
        ({"interfaces": ["eth0"]}, "must be IP addresses"),
        ({"endpoint": "tcp://127.0.0.1:notaport"}, "no valid port"),
    ],
)
def test_discovery_checks_its_arguments_before_any_io(
    change: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {
        "name": "n",
        "zone": "z",
        "endpoint": "tcp://127.0.0.1:5000",
        "instance": new_instance(),
        "interfaces": LOOPBACK,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        Discovery(Membership("z", "n"), **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"name": "a", "zone": "z", "endpoint": "tcp://h:1", "version": "1", "instance": "ab"}, 1),
        (
            {"name": "a", "zone": "z", "endpoint": "tcp://h:1", "version": "²", "instance": "ab"},
            None,
        ),
        ({"name": "a", "zone": "z", "endpoint": "tcp://h:1", "version": "1"}, None),
        (
            {"name": None, "zone": "z", "endpoint": "tcp://h:1", "version": "1", "instance": "ab"},
            None,
        ),
    ],
)
def test_a_txt_record_becomes_a_member_only_when_complete(
    properties: dict[str, str | None], expected: int | None
) -> None:
    found = _discovery._member_from_properties(properties)
    assert (found.version if found else None) == expected


async def test_stop_is_idempotent_and_repr_shows_the_state(quick_timing: None) -> None:
    zone = unique_zone()
    table = Membership(zone, "n")
    discovery = Discovery(
        table,
        name="n",
        zone=zone,
        endpoint="tcp://127.0.0.1:5000",
        instance=new_instance(),
        interfaces=LOOPBACK,
    )
    assert repr(discovery) == f"<Discovery 'n' zone='{zone}' NEW tcp://127.0.0.1:5000 members=0>"
    async with asyncio.timeout(10):
        await discovery.start()
        assert "RUNNING" in repr(discovery)
        await asyncio.gather(discovery.stop(), discovery.stop())
        await discovery.stop()
    assert "STOPPED" in repr(discovery)
    with pytest.raises(InternalError):
        await discovery.start()


async def test_stop_before_start_does_nothing() -> None:
    table = Membership("z", "n")
    discovery = Discovery(
        table,
        name="n",
        zone="z",
        endpoint="tcp://127.0.0.1:5000",
        instance=new_instance(),
        interfaces=LOOPBACK,
    )
    async with asyncio.timeout(5):
        await discovery.stop()
    assert "STOPPED" in repr(discovery)


async def test_start_on_an_address_no_interface_has_raises_discovery_error() -> None:
    # 203.0.113.0/24 is TEST-NET-3: no interface of this machine has it, so joining the
    # multicast group on it fails before anything is sent.
    table = Membership("z", "n")
    discovery = Discovery(
        table,
        name="n",
        zone="z",
        endpoint="tcp://127.0.0.1:5000",
        instance=new_instance(),
        interfaces=["203.0.113.7"],
    )
    async with asyncio.timeout(10):
        with pytest.raises(DiscoveryError) as caught:
            await discovery.start()
    assert isinstance(caught.value.__cause__, OSError)
    assert "STOPPED" in repr(discovery)


# -- Discovery on loopback, one process ------------------------------------------------------


async def test_two_nodes_find_each_other_and_not_themselves(
    quick_timing: None, nodes: Nodes
) -> None:
    zone = unique_zone()
    a, table_a = await nodes.start("a", zone, port=5001)
    _, table_b = await nodes.start("b", zone, port=5002)
    async with asyncio.timeout(10):
        assert await table_a.wait_for(lambda ms: names(ms) == ["b"], timeout_s=10)
        assert await table_b.wait_for(lambda ms: names(ms) == ["a"], timeout_s=10)
    found = table_a.get("b")
    assert found is not None
    assert found.zone == zone
    assert found.endpoint == "tcp://127.0.0.1:5002"
    assert found.version == _discovery.PROTOCOL_VERSION
    assert repr(a).endswith("RUNNING tcp://127.0.0.1:5001 members=1>")


async def test_a_node_with_a_wildcard_or_ipc_endpoint_is_found_with_that_endpoint(
    quick_timing: None, nodes: Nodes
) -> None:
    zone = unique_zone()
    _, table_a = await nodes.start("a", zone)
    await nodes.start("b", zone, endpoint=f"ipc:///tmp/{zone}-b.sock")
    await nodes.start("c", zone, endpoint="tcp://0.0.0.0:7000")
    async with asyncio.timeout(10):
        assert await table_a.wait_for(exactly("b", "c"), timeout_s=10)
    assert [m.endpoint for m in table_a.members()] == [
        f"ipc:///tmp/{zone}-b.sock",
        "tcp://0.0.0.0:7000",
    ]


@pytest.mark.parametrize("yields", [1, 3, 20])
async def test_stop_while_starting_fails_the_start_and_leaves_nothing_behind(yields: int) -> None:
    # Default timing: name probing keeps start() busy for about a second, so stop() lands
    # at some step of it; `yields` varies the step (these are turns of the loop, not waits).
    zone = unique_zone()
    discovery = Discovery(
        Membership(zone, "n"),
        name="n",
        zone=zone,
        endpoint="tcp://127.0.0.1:5000",
        instance=new_instance(),
        interfaces=LOOPBACK,
    )
    starting = asyncio.create_task(discovery.start())
    async with asyncio.timeout(10):
        for _ in range(yields):
            await asyncio.sleep(0)
        await discovery.stop()
        with pytest.raises(DiscoveryError, match="stopped while starting"):
            await starting
    assert "STOPPED" in repr(discovery)


async def test_five_nodes_in_one_process_converge(quick_timing: None, nodes: Nodes) -> None:
    zone = unique_zone()
    all_names = [f"n{i}" for i in range(5)]
    started = await asyncio.gather(
        *(nodes.start(name, zone, port=5000 + i) for i, name in enumerate(all_names))
    )
    async with asyncio.timeout(10):
        results = await asyncio.gather(
            *(
                table.wait_for(exactly(*(n for n in all_names if n != name)), timeout_s=10)
                for name, (_, table) in zip(all_names, started, strict=True)
            )
        )
    assert all(results)


async def test_nodes_find_each_other_with_zeroconfs_default_timing(nodes: Nodes) -> None:
    # NOTE: with name probing on, each start takes about 1.2 s; the 10 s bound leaves room
    # for a loaded machine.
    zone = unique_zone()
    (_, table_a), (_, table_b) = await asyncio.gather(
        nodes.start("a", zone), nodes.start("b", zone)
    )
    async with asyncio.timeout(10):
        assert await table_a.wait_for(lambda ms: names(ms) == ["b"], timeout_s=10)
        assert await table_b.wait_for(lambda ms: names(ms) == ["a"], timeout_s=10)


async def test_graceful_stop_removes_the_node_from_the_others_quickly(
    quick_timing: None, nodes: Nodes
) -> None:
    zone = unique_zone()
    a, _ = await nodes.start("a", zone)
    _, table_b = await nodes.start("b", zone)
    _, table_c = await nodes.start("c", zone)
    async with asyncio.timeout(10):
        assert await table_b.wait_for(lambda ms: "a" in names(ms), timeout_s=10)
        assert await table_c.wait_for(lambda ms: "a" in names(ms), timeout_s=10)
    reasons: list[str] = []
    table_b.subscribe(lambda m: None, lambda m, reason: reasons.append(reason))
    # NOTE: goodbye packets arrive within milliseconds; the waits' bounds are not benchmarks.
    async with asyncio.timeout(10):
        await a.stop()
        assert await table_b.wait_for(lambda ms: "a" not in names(ms), timeout_s=5)
        assert await table_c.wait_for(lambda ms: "a" not in names(ms), timeout_s=5)
    assert reasons == ["unregistered from mDNS"]
    assert names(table_b.members()) == ["c"]


async def test_two_zones_never_see_each_other(quick_timing: None, nodes: Nodes) -> None:
    zone_1, zone_2 = unique_zone(), unique_zone()
    with log_signal(
        lambda r: r.getMessage().startswith("ignoring node") and zone_2 in r.getMessage()
    ) as ignored:
        _, table_1a = await nodes.start("a", zone_1)
        _, table_1b = await nodes.start("b", zone_1)
        _, table_2a = await nodes.start("a", zone_2)
        _, table_2b = await nodes.start("b", zone_2)
        async with asyncio.timeout(10):
            for table, peer in ((table_1a, "b"), (table_1b, "a"), (table_2a, "b"), (table_2b, "a")):
                assert await table.wait_for(exactly(peer), timeout_s=10)
            # Zone 1 did hear zone 2's nodes, and set them aside.
            await ignored.event.wait()
    for table, zone in (
        (table_1a, zone_1),
        (table_1b, zone_1),
        (table_2a, zone_2),
        (table_2b, zone_2),
    ):
        assert [m.zone for m in table.members()] == [zone]


async def test_a_node_of_another_protocol_version_is_ignored(
    quick_timing: None, nodes: Nodes
) -> None:
    zone = unique_zone()
    _, table_a = await nodes.start("a", zone)
    with log_signal(lambda r: "speaks protocol version 99" in r.getMessage()) as refused:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_discovery, "PROTOCOL_VERSION", 99)
            await nodes.start("future", zone)
        await nodes.start("b", zone)
        async with asyncio.timeout(10):
            assert await table_a.wait_for(lambda ms: "b" in names(ms), timeout_s=10)
            await refused.event.wait()
    assert "future" not in names(table_a.members())


async def test_a_restarted_node_replaces_its_stale_record(quick_timing: None, nodes: Nodes) -> None:
    zone = unique_zone()
    old_instance, new_instance_ = "0" * 16 + new_instance()[:16], "f" * 16 + new_instance()[:16]
    _, table_b = await nodes.start("b", zone)
    old, _ = await nodes.start("a", zone, instance=old_instance, port=6001)
    async with asyncio.timeout(10):
        assert await table_b.wait_for(
            lambda ms: [m.instance for m in ms] == [old_instance], timeout_s=10
        )
    # The "restarted" node comes up while its old record is still around, as after a SIGKILL.
    await nodes.start("a", zone, instance=new_instance_, port=6002)
    async with asyncio.timeout(10):
        assert await table_b.wait_for(
            lambda ms: [m.instance for m in ms] == [new_instance_], timeout_s=10
        )
    with log_signal(lambda r: "unregistered" in r.getMessage() or "left" in r.getMessage()) as gone:
        # The old record's goodbye must not remove the new instance.
        async with asyncio.timeout(10):
            await old.stop()
    assert gone.records == []
    member_a = table_b.get("a")
    assert member_a is not None
    assert member_a.instance == new_instance_
    assert member_a.endpoint == "tcp://127.0.0.1:6002"


# -- Discovery between processes -------------------------------------------------------------

CHILD = """
import asyncio, json, sys, time
from autonomy import _discovery
import zeroconf._core

async def main(name, zone, instance, address, quick):
    if quick == "1":
        _discovery.PROBE_NAMES = False
        zeroconf._core._UNREGISTER_TIME = 10
    began = time.monotonic()
    def say(**event):
        event["t"] = round(time.monotonic() - began, 4)
        sys.stdout.write(json.dumps(event) + "\\n")
        sys.stdout.flush()
    table = _discovery.Membership(zone, name)
    table.subscribe(
        lambda m: say(event="join", name=m.name, endpoint=m.endpoint),
        lambda m, reason: say(event="leave", name=m.name, reason=reason),
    )
    discovery = _discovery.Discovery(
        table, name=name, zone=zone, endpoint=f"tcp://{address}:5555",
        instance=instance, interfaces=[address],
    )
    await discovery.start()
    say(event="started")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    await discovery.stop()
    say(event="stopped")

asyncio.run(main(*sys.argv[1:]))
"""


class Observer:
    """One discovery node in its own process, reporting its view as JSON lines."""

    def __init__(self, name: str, child: Child) -> None:
        self.name = name
        self.child = child
        self.seen: set[str] = set()
        self.events: list[dict[str, object]] = []

    async def read_until(self, predicate: Callable[[Observer], bool], timeout_s: float) -> None:
        while not predicate(self):
            event = json.loads(await self.child.read_line(timeout_s))
            self.events.append(event)
            if event["event"] == "join":
                self.seen.add(str(event["name"]))
            elif event["event"] == "leave":
                self.seen.discard(str(event["name"]))


async def stop_observers(observers: list[Observer], timeout_s: float) -> None:
    for observer in observers:
        await observer.child.send("stop")
    await asyncio.gather(
        *(
            o.read_until(lambda o: bool(o.events) and o.events[-1]["event"] == "stopped", timeout_s)
            for o in observers
        )
    )
    returncodes = await asyncio.gather(*(o.child.wait(timeout_s) for o in observers))
    assert returncodes == [0] * len(observers)


async def run_children(commands: dict[str, list[str]], timeout_s: float) -> float:
    """Start one child per command; return the seconds until all saw all the others."""
    observers: list[Observer] = []
    async with contextlib.AsyncExitStack() as stack:
        began = time.monotonic()
        for name, command in commands.items():
            child = Child(*command, name=name, cwd=REPO, env={"PYTHONPATH": str(REPO)})
            observers.append(Observer(name, await stack.enter_async_context(child)))
        everyone = set(commands)
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(
                *(
                    o.read_until(lambda o: o.seen == everyone - {o.name}, timeout_s)
                    for o in observers
                )
            )
            converged = time.monotonic() - began
            await stop_observers(observers, timeout_s)
    # Each one saw the others leave with a goodbye before it stopped itself, or stopped
    # first: either way no child reported a stranger.
    for observer in observers:
        strangers = {e["name"] for e in observer.events if e["event"] == "join"} - everyone
        assert not strangers
    return converged


async def test_five_processes_on_loopback_find_each_other() -> None:
    # NOTE: default zeroconf timing (name probing on), as a node runs in production; the
    # bound is generous for a loaded machine.
    zone = unique_zone()
    commands = {
        f"p{i}": [sys.executable, "-c", CHILD, f"p{i}", zone, new_instance(), "127.0.0.1", "0"]
        for i in range(5)
    }
    converged = await run_children(commands, timeout_s=30)
    print(f"5 processes on loopback converged {converged:.2f} s after the first spawn")


@pytest.mark.netns
@pytest.mark.skipif(not netns_available(), reason="needs root and ip netns")
async def test_three_namespaces_find_each_other() -> None:
    zone = unique_zone()
    async with NetnsLab(3) as hosts:
        commands = {
            f"h{i}": host.command(
                sys.executable, "-c", CHILD, f"h{i}", zone, new_instance(), host.address, "0"
            )
            for i, host in enumerate(hosts)
        }
        converged = await run_children(commands, timeout_s=30)
    print(f"3 namespaces converged {converged:.2f} s after the first spawn")


@pytest.mark.netns
@pytest.mark.skipif(not netns_available(), reason="needs root and ip netns")
def test_netns_lab_deletes_everything_even_when_the_body_fails() -> None:
    lab = NetnsLab(2)

    def body_that_fails() -> None:
        with lab as hosts:
            assert [h.address.rsplit(".", 1)[1] for h in hosts] == ["10", "11"]
            assert hosts[0].command("true") == ["ip", "netns", "exec", hosts[0].name, "true"]
            raise RuntimeError("body failed")

    with pytest.raises(RuntimeError, match="body failed"):
        body_that_fails()
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
    ).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, timeout=10).stdout
    assert lab.tag not in namespaces
    assert lab.tag not in links


async def test_a_seed_given_by_address_is_dialled_as_it_is() -> None:
    from autonomy._addresses import resolve_seed

    assert await resolve_seed("tcp://10.1.2.3:7000") == ["tcp://10.1.2.3:7000"]
    assert await resolve_seed("tcp://[::1]:7000") == ["tcp://[::1]:7000"]


async def test_a_seed_given_by_name_is_dialled_at_every_address_the_name_has_now() -> None:
    from autonomy._addresses import resolve_seed

    endpoints = await resolve_seed("tcp://localhost:7000")
    assert "tcp://127.0.0.1:7000" in endpoints
    assert len(endpoints) == len(set(endpoints))
    assert await resolve_seed("tcp://no-such-host.invalid:7000") == []


async def test_waiting_while_members_join_extends_the_deadline_up_to_its_cap() -> None:
    table = Membership("z", "me")
    loop = asyncio.get_running_loop()

    async def join_one_every(seconds: float, count: int) -> None:
        for i in range(count):
            await asyncio.sleep(seconds)  # members arriving slowly is the scenario
            table.add(Member(f"n{i}", "z", f"tcp://127.0.0.1:{5000 + i}", 1, f"{i:08x}"), "t")

    joining = asyncio.ensure_future(join_one_every(0.15, 5))
    began = loop.time()
    # 0.3 s after the last join, 2 s in all: the five joins 0.15 s apart all count.
    assert await table.wait_for(lambda ms: len(ms) == 5, 0.3, while_joining_s=2.0)
    await joining
    assert loop.time() - began >= 0.7
    # Without it, the same wait gives up at 0.3 s.
    late = Membership("z", "me")
    assert not await late.wait_for(lambda ms: len(ms) == 5, 0.3)
