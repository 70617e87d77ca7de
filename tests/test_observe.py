"""`autonomy zone dashboard` and `autonomy zone top`, against a real zone: a runner process, the
test's own node sending it known traffic, the command in a process of its own, read through
its JSON, in headless Chromium, and on a tmux terminal.

Every wait has a deadline; the dashboard, Chromium and the tmux server are killed on the way
out whatever happened (`Child`, `Chromium`, `Tmux`).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from autonomy import Node, RemoteNode, WorkerError
from autonomy.cli import main
from autonomy.cli._top import render
from autonomy.cli._zoneview import ZoneView

from .chromium import Chromium
from .conftest import Runner, bounded
from .processes import Child
from .terminal import Tmux
from .workers import Counter

START_S = 60.0
"""How long the command gets to start (a loaded machine takes seconds to import and bind)."""

SEEN_S = 60.0
"""How long until what the zone did shows (discovery, then a round of stats: ~2-4 s here)."""


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "autonomy", "zone", *args]


@asynccontextmanager
async def dashboard(zone: str, cwd: Path, *args: str) -> AsyncIterator[tuple[str, Child]]:
    """``zone dashboard`` on any free port; yields its URL and its process."""
    argv = command("dashboard", "--zone", zone, "--port", "0", *args)
    async with Child(*argv, name="zone dashboard", cwd=cwd) as child:
        line = await child.wait_for_line("dashboard at", START_S)
        match = re.search(r"(http://\S+/)", line)
        assert match, line
        yield match.group(1), child


async def counter_on(node: Node, runner: Runner, increments: int) -> RemoteNode:
    """The runner with a ``counter`` worker that handled ``increments`` messages."""
    remote = await bounded(node.connect(runner.endpoint, timeout=10_000), 15)
    await bounded(remote.start_worker("counter", Counter()), 15)
    await increment(remote, increments)
    return remote


async def increment(remote: RemoteNode, times: int) -> None:
    for _ in range(times):
        await remote.send_and_receive("counter", "increment", timeout=10_000)


def node_of(zone: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((node for node in zone["nodes"] if node["name"] == name), None)


def worker_of(zone: dict[str, Any], node: str, worker: str) -> dict[str, Any] | None:
    found = node_of(zone, node)
    if found is None:
        return None
    return next((w for w in found["workers"] if w["name"] == worker), None)


async def until(
    url: str, predicate: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
) -> dict[str, Any]:
    """The first picture of the zone, from the dashboard's event stream, that satisfies
    ``predicate`` (each one is pushed as it changes: no polling)."""
    last: dict[str, Any] = {}
    try:
        async with (
            bounded_stream(timeout_s) as client,
            client.stream("GET", url + "api/events") as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    last = json.loads(line.removeprefix("data: "))
                    if predicate(last):
                        return last
    except (httpx.TimeoutException, TimeoutError):
        pass
    pytest.fail(f"no {what} within {timeout_s} s; last: {json.dumps(last, indent=1)[:3000]}")


@asynccontextmanager
async def bounded_stream(timeout_s: float) -> AsyncIterator[httpx.AsyncClient]:
    async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as client:
        yield client


async def get_zone(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url + "api/zone")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    data: dict[str, Any] = response.json()
    return data


# -- the JSON --------------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_the_api_lists_a_runner_and_its_worker_with_the_counts_of_known_traffic(
    node: Node, runner: Runner, zone: str, tmp_path: Path
) -> None:
    remote = await counter_on(node, runner, 3)
    async with dashboard(zone, tmp_path) as (url, _):
        seen = await until(
            url,
            lambda z: (worker_of(z, runner.name, "counter") or {}).get("handled") == 3,
            SEEN_S,
            "counter with 3 handled",
        )
        assert {n["name"] for n in seen["nodes"]} == {runner.name, node.name}  # no observer
        assert seen["observer"].startswith("observer-")
        with pytest.raises(WorkerError):
            await remote.send_and_receive("counter", "boom", timeout=10_000)
        await until(
            url,
            lambda z: any(e["kind"] == "failed" for e in z["events"]),
            SEEN_S,
            "an event for the failed message",
        )
        zone_now = await bounded(get_zone(url))
    assert zone_now["zone"] == zone
    runner_node = node_of(zone_now, runner.name)
    assert runner_node is not None
    assert runner_node["state"] == "up"
    assert runner_node["endpoint"] == runner.endpoint
    assert runner_node["messages_received"] > 0
    (counter,) = runner_node["workers"]
    assert counter["name"] == "counter"
    assert (counter["handled"], counter["failed"], counter["queued"], counter["expired"]) == (
        4,
        1,
        0,
        0,
    )
    assert counter["mean_handler_ms"] > 0
    assert zone_now["totals"]["handled"] == 4
    assert zone_now["totals"]["failed"] == 1
    assert node_of(zone_now, node.name)["workers"] == []  # type: ignore[index]
    failed = [e for e in zone_now["events"] if e["kind"] == "failed"]
    assert failed[0]["text"] == f"counter on {runner.name}: 1 message failed (the handler raised)"
    assert {e["node"] for e in zone_now["events"] if e["kind"] in ("found", "joined")} == {
        runner.name,
        node.name,
    }


@pytest.mark.timeout(180)
async def test_the_dashboard_tells_of_nodes_joining_and_leaving(
    node: Node, runner_factory: Callable[..., Awaitable[Runner]], zone: str, tmp_path: Path
) -> None:
    first = await runner_factory()
    async with dashboard(zone, tmp_path) as (url, _):
        await until(
            url,
            lambda z: node_of(z, first.name) is not None and not z["discovering"],
            SEEN_S,
            "the first runner, discovery settled",
        )
        second = await runner_factory()
        joined = await until(
            url, lambda z: node_of(z, second.name) is not None, SEEN_S, "the second runner"
        )
        assert any(e["kind"] == "joined" and e["node"] == second.name for e in joined["events"])
        second.terminate()  # it stops and says goodbye
        assert await bounded(second.child.wait(30), 40) == 0
        left = await until(
            url, lambda z: node_of(z, second.name) is None, SEEN_S, "the second runner gone"
        )
    (event,) = [e for e in left["events"] if e["kind"] == "left"]
    assert event["node"] == second.name
    assert event["text"].startswith(f"{second.name}: ")
    assert node_of(left, first.name) is not None


@pytest.mark.timeout(120)
async def test_the_dashboard_answers_only_requests_for_a_loopback_host(
    zone: str, tmp_path: Path
) -> None:
    async with dashboard(zone, tmp_path) as (url, _), httpx.AsyncClient(timeout=10) as client:
        page = await client.get(url)
        rebound = await client.get(url + "api/zone", headers={"Host": "attacker.example"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "<script src" not in page.text  # all inline
    assert "<link" not in page.text
    assert rebound.status_code == 403


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_ctrl_c_or_sigterm_stops_the_dashboard_cleanly(
    zone: str, tmp_path: Path, signum: int
) -> None:
    async with dashboard(zone, tmp_path) as (url, child):
        assert (await bounded(get_zone(url)))["zone"] == zone
        child.send_signal(signum)
        assert await child.wait(30) == 0
    assert "Traceback" not in child.stderr
    assert "stopping the dashboard" in child.stderr
    with pytest.raises(httpx.ConnectError):
        await bounded(get_zone(url))


def test_a_dashboard_port_in_use_is_a_usage_error(
    zone: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["zone", "dashboard", "--zone", zone, "--port", str(port)])
    assert code == 2
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in capsys.readouterr().err


def test_zone_top_needs_a_terminal(zone: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zone", "top", "--zone", zone]) == 2
    assert "draws on a terminal" in capsys.readouterr().err


# -- the page, in a real browser -------------------------------------------------------------


@pytest.mark.timeout(240)
async def test_the_page_in_chromium_shows_the_runner_its_worker_and_a_count_that_grows(
    node: Node, runner: Runner, zone: str, tmp_path: Path
) -> None:
    remote = await counter_on(node, runner, 3)
    selector = f'[data-node="{runner.name}"] [data-worker="counter"] [data-field="handled"]'
    cell = f"document.querySelector({json.dumps(selector)})?.textContent"
    async with dashboard(zone, tmp_path) as (url, _), Chromium(tmp_path / "chromium") as browser:
        page = await browser.open(url)
        assert await page.wait_for(f"{cell} === '3' && {cell}", SEEN_S) == "3"
        text = await page.evaluate("document.body.innerText")
        assert runner.name in text
        assert "counter" in text
        await increment(remote, 5)
        # The same page, never reloaded: the count grows as the events come in.
        assert await page.wait_for(f"{cell} === '8' && {cell}", SEEN_S) == "8"
        status = await page.wait_for(
            "document.getElementById('status').className.includes('live') && "
            "document.getElementById('status-text').textContent",
            SEEN_S,
        )
        assert status.startswith("live")
        assert await page.evaluate("document.getElementById('zone-name').textContent") == zone


# -- the terminal ----------------------------------------------------------------------------


def handled_on_screen(screen: str, worker: str) -> int | None:
    """The HANDLED count of ``worker``'s row on ``zone top``'s screen."""
    match = re.search(rf"(?m)^\s+{re.escape(worker)}\s+([\d,]+)\s", screen)
    return int(match.group(1).replace(",", "")) if match else None


@pytest.mark.timeout(240)
async def test_zone_top_in_tmux_shows_the_runner_its_worker_and_a_count_that_grows(
    node: Node, runner: Runner, zone: str, tmp_path: Path
) -> None:
    remote = await counter_on(node, runner, 3)
    async with Tmux(tmp_path, width=200, height=50) as tmux:
        await tmux.start(*command("top", "--zone", zone), cwd=tmp_path)
        screen = await tmux.wait_for(
            lambda s: handled_on_screen(s, "counter") == 3, SEEN_S, "counter with 3 handled"
        )
        assert re.search(rf"(?m)^{re.escape(runner.name)}\s+up ", screen), screen
        assert f"zone {zone}" in screen
        await increment(remote, 5)
        await tmux.wait_for(
            lambda s: handled_on_screen(s, "counter") == 8, SEEN_S, "counter with 8 handled"
        )
        await tmux.send_keys("q")
        assert await tmux.wait_exit(30) == 0
        assert "autonomy zone top" not in await tmux.screen()  # the terminal is given back


@pytest.mark.timeout(120)
async def test_ctrl_c_quits_zone_top_and_gives_the_terminal_back(zone: str, tmp_path: Path) -> None:
    async with Tmux(tmp_path, width=120, height=30) as tmux:
        await tmux.start(*command("top", "--zone", zone), cwd=tmp_path)
        await tmux.wait_for(lambda s: f"zone {zone}" in s, START_S, "the zone's name")
        await tmux.send_keys("C-c")
        assert await tmux.wait_exit(30) == 0
        assert "autonomy zone top" not in await tmux.screen()


def test_top_keeps_every_count_on_an_80_column_terminal() -> None:
    view = ZoneView("z", "observer-1")
    view.joined("runner-pod-0-runner-with-a-long-name", "tcp://127.0.0.1:40001", 0.0)
    view.observed("runner-pod-0-runner-with-a-long-name", fake_stats(1.0, 1_234, 7), 1.0)
    view.observed("runner-pod-0-runner-with-a-long-name", fake_stats(2.0, 1_334, 8), 2.0)
    console = Console(width=80, height=24, record=True, file=io.StringIO(), color_system=None)
    console.print(render(view.snapshot(2.0), 80, 24))
    screen = console.export_text()
    assert re.search(r"(?m)^\s+summarizer\s+1,334\s+100\s+8\s+0\s+0\s+\S+ ms", screen), screen
    assert "runner-pod-0-runner-with" in screen
    assert "FAILED" in screen  # the event
    assert max(len(line) for line in screen.splitlines()) <= 80


def fake_stats(uptime_s: float, handled: int, failed: int) -> dict[str, Any]:
    return {
        "instance": "i",
        "uptime_s": uptime_s,
        "members": 1,
        "workers": {
            "summarizer": {
                "handled": handled,
                "failed": failed,
                "queued": 0,
                "expired": 0,
                "handler_seconds": {"count": handled, "sum": handled * 0.01, "buckets": {}},
            }
        },
    }
