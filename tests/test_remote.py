"""What only a remote node does: shipping workers, node references, peer failure, goodbye,
deadlines carried with requests, and credit-window backpressure across the wire."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

import pytest

import autonomy._node as node_module
import autonomy._peer as peer_module
from autonomy import (
    Node,
    NodeClosedError,
    PeerUnavailableError,
    ReplyTimeoutError,
    WorkerNotFoundError,
    WorkerStartError,
    WorkerStoppedError,
)

from .conftest import bounded, eventually, unique
from .processes import Child
from .workers import Echoer, NodeHolder, Recorder, Sleeper


async def test_a_runner_killed_mid_flight_fails_all_100_requests_fast_and_others_go_on(
    node: Node, runner_factory
) -> None:
    doomed_runner = await runner_factory()
    healthy_runner = await runner_factory()
    doomed = await node.connect(doomed_runner.endpoint, timeout=10_000)
    healthy = await node.connect(healthy_runner.endpoint, timeout=10_000)
    await bounded(doomed.start_worker("sleeper", Sleeper()))
    await bounded(healthy.start_worker("echoer", Echoer()))
    requests = [
        asyncio.ensure_future(doomed.send_and_receive("sleeper", "30", timeout=60_000))
        for _ in range(100)
    ]
    # All 100 are on the runner (one in hand, 99 queued) before it dies.
    async def all_queued() -> bool:
        return (await doomed.list_workers())[0]["queued"] == 99

    await eventually(all_queued, 10, "99 requests queued on the runner")
    doomed_runner.kill()
    # A SIGKILLed peer's connection is closed by the kernel: seen within milliseconds. The
    # requests' own timeout is 60 s, so failing by type proves they failed by the event.
    results = await bounded(asyncio.gather(*requests, return_exceptions=True), 10)
    assert all(isinstance(r, PeerUnavailableError) for r in results), results
    assert await healthy.send_and_receive("echoer", "still here", timeout=5000) == "still here"
    # New calls to the dead runner fail by type, within the documented bound.
    with pytest.raises(PeerUnavailableError):
        await doomed.send_and_receive("sleeper", "0", timeout=30_000)


async def test_a_runner_that_stops_gracefully_fails_every_pending_request_by_type(
    node: Node, runner
) -> None:
    remote = await node.connect(runner.endpoint, timeout=10_000)
    await bounded(remote.start_worker("sleeper", Sleeper()))
    in_hand = asyncio.ensure_future(remote.send_and_receive("sleeper", "30", timeout=60_000))
    queued = asyncio.ensure_future(remote.send_and_receive("sleeper", "0", timeout=60_000))
    async def one_queued() -> bool:
        return (await remote.list_workers())[0]["queued"] == 1

    await eventually(one_queued, 10, "a request queued on the runner")
    runner.terminate()  # SIGTERM: the runner stops gracefully and says goodbye
    with pytest.raises(WorkerStoppedError):  # its own timeout is 60 s: failed by the goodbye
        await bounded(queued, 5)
    # The message in hand gets the stop grace period, then fails by type too.
    with pytest.raises((WorkerStoppedError, PeerUnavailableError)):
        await bounded(in_hand, node_module.STOP_GRACE_S + 5)
    with pytest.raises(PeerUnavailableError):
        await remote.send_and_receive("sleeper", "0", timeout=30_000)


async def test_a_worker_holding_its_runner_gets_the_runners_own_node(node: Node, runner) -> None:
    """The guide's CodeAnalyzer(runner): the reference arrives as the runner's local Node."""
    remote = await node.connect(runner.endpoint, timeout=10_000)
    await bounded(remote.start_worker("holder", NodeHolder(remote)))
    assert await remote.send_and_receive("holder", "whoami", timeout=5000) == (
        f"Node:{runner.name}"
    )
    spawned = json.loads(await remote.send_and_receive("holder", "spawn", timeout=5000))
    assert spawned == ["holder", "spawned"]


async def test_a_worker_holding_a_third_node_reaches_it_from_the_runner(
    node: Node, runner_factory
) -> None:
    first = await runner_factory()
    second = await runner_factory()
    to_first = await node.connect(first.endpoint, timeout=10_000)
    to_second = await node.connect(second.endpoint, timeout=10_000)
    await bounded(to_second.start_worker("echo", Echoer()))
    await bounded(to_first.start_worker("holder", NodeHolder(to_second)))
    assert await to_first.send_and_receive("holder", "whoami", timeout=5000) == (
        f"RemoteNode:{second.name}"
    )
    assert await to_first.send_and_receive("holder", "via", timeout=10_000) == "via"


async def test_a_worker_holding_the_callers_node_calls_back(node: Node, runner) -> None:
    await node.start_worker("echo", Echoer())
    remote = await node.connect(runner.endpoint, timeout=10_000)
    await bounded(remote.start_worker("holder", NodeHolder(node)))
    assert await remote.send_and_receive("holder", "whoami", timeout=5000) == (
        f"RemoteNode:{node.name}"
    )
    assert await remote.send_and_receive("holder", "back", timeout=10_000) == "back"


async def test_a_worker_that_cannot_be_unpickled_on_the_runner_fails_with_the_reason(
    node: Node, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module only this process can import: the worker travels by reference to it.
    package = tmp_path / "only_here"
    package.mkdir()
    (package / "__init__.py").write_text(
        "class Local:\n    async def handle_message(self, context, message):\n"
        "        await context.reply(message)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from only_here import Local  # type: ignore[import-not-found]

    remote = await node.connect(runner.endpoint, timeout=10_000)
    with pytest.raises(WorkerStartError) as info:
        await bounded(remote.start_worker("local", Local()))
    assert "only_here" in info.value.reason
    assert "ModuleNotFoundError" in info.value.reason
    await bounded(remote.start_worker("echo", Echoer()))
    assert await remote.send_and_receive("echo", "fine", timeout=5000) == "fine"
    sys.modules.pop("only_here", None)


async def test_a_worker_whose_state_does_not_pickle_is_refused_before_sending(
    node: Node, runner
) -> None:
    holder = NodeHolder(asyncio.Lock())
    holder.bad = asyncio.get_running_loop()  # an event loop cannot be pickled
    remote = await node.connect(runner.endpoint, timeout=10_000)
    with pytest.raises(Exception, match="cannot ship worker"):
        await bounded(remote.start_worker("bad", holder))


async def test_a_class_defined_in_the_callers_main_runs_on_a_runner_without_its_code(
    runner, tmp_path: Path
) -> None:
    script = tmp_path / "caller" / "main.py"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            f"""
            import json
            from autonomy import Node

            class Shouter:
                async def handle_message(self, context, message):
                    await context.reply(json.dumps(message.upper()))

            async def main(node):
                runner = await node.connect({runner.endpoint!r})
                await runner.start_worker("shouter", Shouter())
                print(json.loads(await runner.send_and_receive("shouter", "hi", timeout=5000)))

            Node.start(main, zone={runner.zone!r}, wait_until_interrupted=False)
            """
        )
    )
    async with Child(sys.executable, script, cwd=script.parent) as caller:
        assert await caller.wait(30) == 0, caller.stderr
    assert caller.stdout.strip() == "HI"


async def test_a_request_whose_caller_gave_up_is_dropped_by_the_runner(node: Node, runner) -> None:
    remote = await node.connect(runner.endpoint, timeout=10_000)
    await bounded(remote.start_worker("sleeper", Sleeper()))
    first = asyncio.ensure_future(remote.send_and_receive("sleeper", "0.4", timeout=5000))
    await asyncio.sleep(0)  # let the first request go out first (ordering, not waiting)
    with pytest.raises(ReplyTimeoutError):
        await remote.send_and_receive("sleeper", "0", timeout=100)
    assert await bounded(first) == "slept 0.4"
    workers = await bounded(remote.list_workers())
    # The second request's deadline passed while it was queued: it was never handled.
    assert workers[0]["handled"] == 1


async def test_one_way_messages_to_a_slow_remote_worker_wait_for_credit(
    node: Node, runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_module, "SEND_WINDOW", 20)
    remote = await node.connect(runner.endpoint, timeout=10_000)
    await bounded(remote.start_worker("recorder", Recorder()))
    await bounded(remote.start_worker("sleeper", Sleeper()))
    peer = node._links.find(runner.endpoint)
    # A flood to a worker that is blocked: the sender stops at its window.
    # The first one-way message is confirmed once queued: it blocks the worker for 0.5 s.
    await remote.send_message("sleeper", "0.5")
    sent = 1
    for _ in range(19):
        await remote.send_message("sleeper", "0", timeout=200)
        sent += 1
    assert peer.credit["sleeper"] == 20
    with pytest.raises(ReplyTimeoutError):
        await remote.send_message("sleeper", "0", timeout=200)
    assert sent == 20
    # Credit comes back as the worker drains: sending resumes, nothing was lost.
    for i in range(50):
        await remote.send_message("recorder", str(i), timeout=5000)
    assert json.loads(await remote.send_and_receive("recorder", "get", timeout=5000)) == [
        str(i) for i in range(50)
    ]


async def test_one_way_messages_to_a_stopped_remote_worker_are_refused_next_time(
    node: Node, runner
) -> None:
    remote = await node.connect(runner.endpoint, timeout=10_000)
    await bounded(remote.start_worker("recorder", Recorder()))
    await remote.send_message("recorder", "a")
    await bounded(remote.stop_worker("recorder"))
    # The sender does not know yet: this one is refused by the runner, which tells us...
    await remote.send_message("recorder", "b")
    await eventually(
        lambda: "recorder" not in node._links.find(runner.endpoint).credit,
        what="the runner's refusal to reach the sender",
    )
    # ...so the next one fails at the call.
    with pytest.raises(WorkerNotFoundError):
        await remote.send_message("recorder", "c")


async def test_a_peer_that_never_answers_fails_by_the_unreachable_deadline(node: Node) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PeerUnavailableError):
        await node.connect(f"tcp://127.0.0.1:{port}", timeout=60_000)
    assert loop.time() - started < peer_module.PEER_UNREACHABLE_S + 2


async def test_a_node_of_another_zone_is_refused(node: Node, runner_factory) -> None:
    stranger = await runner_factory(zone=unique("other-zone"))
    with pytest.raises(PeerUnavailableError, match="secret"):
        await node.connect(stranger.endpoint, timeout=5000)


async def test_calls_through_a_stopped_node_raise_node_closed(node_factory, runner) -> None:
    caller = await node_factory()
    remote = await caller.connect(runner.endpoint, timeout=10_000)
    await caller.stop()
    with pytest.raises(NodeClosedError):
        await remote.send_and_receive("echo", "x", timeout=1000)


async def test_a_handler_that_blocks_its_node_past_the_silence_bound_is_busy_not_gone(
    node: Node, runner
) -> None:
    """The kernel answers keepalives while Python is blocked, so a runner whose event loop is
    blocked stays connected: its callers wait (busy) instead of failing (gone)."""
    from autonomy._sockets import SILENT_LINK_S

    from .workers import Hog

    remote = await node.connect(runner.endpoint, timeout=10_000)
    await bounded(remote.start_worker("hog", Hog()))
    await bounded(remote.start_worker("echo", Echoer()))
    seconds = SILENT_LINK_S + 1
    hogged = asyncio.ensure_future(remote.send_and_receive("hog", str(seconds), timeout=20_000))
    await asyncio.sleep(0)  # the hog's request goes out first (ordering, not waiting)
    echoed = await remote.send_and_receive("echo", "behind the hog", timeout=20_000)
    assert echoed == "behind the hog"
    assert await bounded(hogged, 20) == f"hogged {seconds}"
    assert remote.is_up()
    assert node._links.find(runner.endpoint).is_up()


async def test_a_node_with_a_small_frame_limit_takes_coalesced_bursts_from_a_default_node(
    node: Node, node_factory
) -> None:
    small = await node_factory(max_frame_bytes=16 * 1024)
    await small.start_worker("echo", Echoer())
    remote = await node.connect(small.endpoint, timeout=5000)
    messages = [f"{i:04d}" + "x" * 1000 for i in range(300)]  # ~300 KB in one loop turn
    replies = await bounded(
        asyncio.gather(*(remote.send_and_receive("echo", m, timeout=10_000) for m in messages))
    )
    assert replies == messages
