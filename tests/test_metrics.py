"""A node's counters as Prometheus scrapes them: right after known traffic, parsed with
prometheus-client's own parser, served on loopback, gone when the node stops."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autonomy import ConfigError, Node, WorkerError

from .conftest import bounded, unique
from .workers import Counter, Echoer


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_a_scrape_counts_each_workers_messages_and_the_nodes_traffic(zone: str) -> None:
    async with (
        Node(unique("server"), zone=zone, bind="127.0.0.1", metrics="127.0.0.1:0") as server,
        Node(unique("client"), zone=zone, bind="127.0.0.1") as client,
    ):
        assert server.metrics_url.startswith("http://127.0.0.1:")
        await server.start_worker("counter", Counter())
        remote = await bounded(client.connect(server.endpoint))
        for _ in range(3):
            await remote.send_and_receive("counter", "increment", timeout=5000)
        with pytest.raises(WorkerError):
            await remote.send_and_receive("counter", "boom", timeout=5000)
        await server.send_and_receive("counter", "get", timeout=5000)
        samples = await bounded(scrape(server.metrics_url))
        labels = (("node", server.name), ("worker", "counter"))
        assert samples[("autonomy_messages_handled_total", labels)] == 5
        assert samples[("autonomy_messages_failed_total", labels)] == 1
        assert samples[("autonomy_mailbox_depth", labels)] == 0
        assert samples[("autonomy_handler_seconds_count", labels)] == 5
        infinity = tuple(sorted((*labels, ("le", "+Inf"))))
        assert samples[("autonomy_handler_seconds_bucket", infinity)] == 5
        assert samples[("autonomy_handler_seconds_sum", labels)] > 0
        node = (("node", server.name),)
        assert samples[("autonomy_messages_received_total", node)] >= 4
        assert samples[("autonomy_rejected_frames_total", node)] == 0
        assert ("autonomy_zone_members", (("node", server.name), ("zone", zone))) in samples
        # The client's side: the peer counters of its link to the server.
        stats = await client.stats()
        (peer,) = stats["peers"].values()
        assert peer["frames_sent"] >= 5
        assert peer["frames_received"] >= 5
        assert peer["in_flight"] == 0


async def test_metrics_are_served_on_loopback_by_default_and_stop_with_the_node(zone: str) -> None:
    async with Node(zone=zone, bind="127.0.0.1", metrics="0") as node:
        await node.start_worker("echo", Echoer())
        url = node.metrics_url
        assert url.startswith("http://127.0.0.1:")
        assert await bounded(scrape(url))
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=5) as client:
            await client.get(url)


async def test_a_metrics_address_that_cannot_be_bound_is_a_config_error(zone: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT or PORT"):
        Node(zone=zone, bind="127.0.0.1", metrics="not-a-port")
    with pytest.raises(ConfigError, match="cannot serve metrics"):
        async with Node(zone=zone, bind="127.0.0.1", metrics="192.0.2.1:9464"):
            pass


def test_the_readme_names_every_metric_with_its_type_and_labels() -> None:
    import re
    from pathlib import Path

    from autonomy._metrics import _families

    stats = {
        "node": "n",
        "zone": "z",
        "members": 1,
        "messages_sent": 0,
        "messages_received": 0,
        "refused_handshakes": 0,
        "rejected_frames": 0,
        "workers": {
            "w": {
                "handled": 0,
                "failed": 0,
                "queued": 0,
                "expired": 0,
                "handler_seconds": {"count": 0, "sum": 0.0, "buckets": {"+Inf": 0}},
            }
        },
        "peers": {"p": {"in_flight": 0}},
    }
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = {
        name: (kind, labels)
        for names, kind, labels in re.findall(
            r"(?m)^\| ((?:`autonomy_\w+`(?:, )?)+) \| (\w+) \| ?(`\w+`|) ?\|", readme
        )
        for name in re.findall(r"`(\w+)`", names)
    }
    families = {}
    for family in _families(stats):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {label for sample in family.samples for label in sample.labels} - {"node", "le"}
        families[name] = (family.type, f"`{labels.pop()}`" if labels else "")
    assert rows == families


class Sleeper:
    """Replies after sleeping the number of milliseconds it is sent."""

    async def handle_message(self, context, message):  # type: ignore[no-untyped-def]
        await asyncio.sleep(int(message) / 1000)
        await context.reply(message)


async def test_handler_time_is_the_handlers_own_not_the_idle_time_before_it(node: Node) -> None:
    await node.start_worker("sleeper", Sleeper())
    await node.stats()  # the first look: handler times are kept from now on
    await node.send_and_receive("sleeper", "20", timeout=5000)  # 20 ms: (0.01, 0.05]
    await asyncio.sleep(0.3)  # idle: time with nothing to handle is nobody's handler time
    await node.send_and_receive("sleeper", "0", timeout=5000)
    histogram = (await node.stats())["workers"]["sleeper"]["handler_seconds"]
    buckets = histogram["buckets"]
    assert histogram["count"] == 2
    assert buckets["0.01"] == 1  # the quick one, even on a loaded machine
    assert buckets["0.05"] == 2  # and the 20 ms one
    assert 0.02 <= histogram["sum"] < 0.1


async def test_back_to_back_handlers_sum_to_the_time_the_worker_was_busy(zone: str) -> None:
    async with Node(zone=zone, bind="127.0.0.1", handler_times=True) as node:
        await busy_then_idle(node)


async def busy_then_idle(node: Node) -> None:
    await node.start_worker("sleeper", Sleeper())
    for _ in range(3):  # queued at once: each handler starts where the one before ended
        await node.send_message("sleeper", "20")
    await node.send_and_receive("sleeper", "0", timeout=5000)
    await asyncio.sleep(0.2)  # idle again: not counted
    await node.send_and_receive("sleeper", "20", timeout=5000)
    histogram = (await node.stats())["workers"]["sleeper"]["handler_seconds"]
    assert histogram["count"] == 5
    assert histogram["buckets"]["0.01"] == 1
    assert histogram["buckets"]["0.05"] == 5
    assert histogram["buckets"]["+Inf"] == 5
    assert 0.08 <= histogram["sum"] < 0.08 + 0.15  # four sleeps of 20 ms, no idle time


async def test_handler_times_are_kept_from_the_first_look_unless_told_otherwise(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def three_then_look_then_two(node: Node) -> tuple[int, int]:
        await node.start_worker("counter", Counter())
        for _ in range(3):
            await node.send_and_receive("counter", "increment", timeout=5000)
        first = (await node.stats())["workers"]["counter"]
        for _ in range(2):
            await node.send_and_receive("counter", "increment", timeout=5000)
        then = (await node.stats())["workers"]["counter"]
        assert then["handled"] == 5
        return first["handler_seconds"]["count"], then["handler_seconds"]["count"]

    # By default a node reads no clock a message until someone looks at its counters.
    async with Node(zone=zone, bind="127.0.0.1") as node:
        assert await three_then_look_then_two(node) == (0, 2)
    # A worker started after the first look is timed from its first message.
    async with Node(zone=zone, bind="127.0.0.1") as node:
        await node.stats()
        assert await three_then_look_then_two(node) == (3, 5)
    # A node that serves metrics, or is told to, keeps them from the start.
    async with Node(zone=zone, bind="127.0.0.1", metrics="0") as node:
        assert await three_then_look_then_two(node) == (3, 5)
    monkeypatch.setenv("AUTONOMY_HANDLER_TIMES", "1")
    async with Node(zone=zone, bind="127.0.0.1") as node:
        assert await three_then_look_then_two(node) == (3, 5)


class Gated:
    """Holds its ``hold`` message until the test opens the gate; sleeps N ms for ``N``."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.gate = asyncio.Event()

    async def handle_message(self, context, message):  # type: ignore[no-untyped-def]
        if message == "hold":
            self.holding.set()
            await self.gate.wait()
        else:
            await asyncio.sleep(int(message) / 1000)
        await context.reply(message)


async def test_a_worker_busy_when_first_looked_at_is_timed_from_its_next_message(
    node: Node,
) -> None:
    gated = Gated()
    await node.start_worker("gated", gated)
    await node.send_message("gated", "hold")
    await bounded(gated.holding.wait())
    for _ in range(2):
        await node.send_message("gated", "20")
    assert (await node.stats())["workers"]["gated"]["handler_seconds"]["count"] == 0
    gated.gate.set()
    await node.send_and_receive("gated", "0", timeout=5000)
    histogram = (await node.stats())["workers"]["gated"]["handler_seconds"]
    assert histogram["count"] == 3  # the two queued ones and the last; not the one in hand
    assert histogram["buckets"]["0.01"] == 1
    assert histogram["buckets"]["0.05"] == 3
    assert 0.04 <= histogram["sum"] < 0.04 + 0.15


@pytest.mark.parametrize("how", ["argument", "environment"])
async def test_a_node_without_handler_times_counts_all_else(
    zone: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options: dict[str, object] = {"handler_times": False} if how == "argument" else {}
    if how == "environment":
        monkeypatch.setenv("AUTONOMY_HANDLER_TIMES", "off")
    async with Node(zone=zone, bind="127.0.0.1", metrics="0", **options) as node:  # type: ignore[arg-type]
        await node.start_worker("counter", Counter())
        for _ in range(3):
            await node.send_and_receive("counter", "increment", timeout=5000)
        counts = (await node.stats())["workers"]["counter"]
        assert counts["handled"] == 3
        assert "handler_seconds" not in counts
        samples = await bounded(scrape(node.metrics_url))
        labels = (("node", node.name), ("worker", "counter"))
        assert samples[("autonomy_messages_handled_total", labels)] == 3
        assert not [name for name, _ in samples if name.startswith("autonomy_handler_seconds")]


def test_a_handler_times_setting_that_means_nothing_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTONOMY_HANDLER_TIMES", "sometimes")
    with pytest.raises(ConfigError, match="AUTONOMY_HANDLER_TIMES"):
        Node(bind="127.0.0.1")
