"""The node API, run once against a local node and once against a runner in another
process (the same cases, the same typed errors: a remote worker behaves like a local one)."""

from __future__ import annotations

import asyncio
import json

import pytest

from autonomy import (
    AutonomyError,
    MessageTooLargeError,
    MessageTypeError,
    Node,
    NoReplyError,
    RemoteNode,
    ReplyTimeoutError,
    WorkerError,
    WorkerExistsError,
    WorkerNotFoundError,
    WorkerStoppedError,
)

from .conftest import bounded, eventually, unique
from .workers import (
    BadReplier,
    Calculator,
    Counter,
    DoubleReplier,
    Echoer,
    Recorder,
    Silent,
    Sleeper,
)

Target = Node | RemoteNode


async def still_answers(target: Target) -> None:
    """The standard's second half: after bad input, the same node answers a normal request."""
    name = unique("echo")
    await bounded(target.start_worker(name, Echoer()))
    assert await target.send_and_receive(name, "still here", timeout=5000) == "still here"


async def test_a_worker_replies_to_send_and_receive(target: Target) -> None:
    await bounded(target.start_worker("echoer", Echoer()))
    assert await target.send_and_receive("echoer", "hello", timeout=5000) == "hello"


async def test_the_guide_calculator_adds_json_numbers(target: Target) -> None:
    await bounded(target.start_worker("calc", Calculator()))
    reply = await target.send_and_receive("calc", json.dumps({"x": 10, "y": 32}), timeout=5000)
    assert json.loads(reply) == {"result": 42}


@pytest.mark.parametrize("bad", [{"x": 1}, b"bytes", 42, None, ["a"]])
async def test_a_message_that_is_not_a_string_raises_type_error_before_sending(
    target: Target, bad: object
) -> None:
    await bounded(target.start_worker("calc", Calculator()))
    with pytest.raises(MessageTypeError, match="message must be str") as info:
        await target.send_and_receive("calc", bad, timeout=5000)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError):
        await target.send_message("calc", bad)  # type: ignore[arg-type]
    await still_answers(target)


async def test_a_reply_that_is_not_a_string_fails_the_request_with_the_type_error(
    target: Target,
) -> None:
    await bounded(target.start_worker("bad", BadReplier()))
    with pytest.raises(WorkerError) as info:
        await target.send_and_receive("bad", "x", timeout=5000)
    assert info.value.remote_type == "MessageTypeError"
    assert "reply must be str" in info.value.remote_message
    await still_answers(target)


async def test_an_unknown_worker_fails_at_once_not_by_timeout(target: Target) -> None:
    # Each call's timeout is 20 s: failing with WorkerNotFoundError (not a timeout) is
    # failing at once.
    with pytest.raises(WorkerNotFoundError) as info:
        await target.send_and_receive("nobody", "hello", timeout=20_000)
    assert info.value.worker == "nobody"
    assert isinstance(info.value, LookupError)
    with pytest.raises(WorkerNotFoundError):
        await target.send_message("nobody", "hello", timeout=20_000)
    with pytest.raises(WorkerNotFoundError):
        await bounded(target.stop_worker("nobody"))
    await still_answers(target)


async def test_a_duplicate_worker_name_is_refused(target: Target) -> None:
    await bounded(target.start_worker("counter", Counter()))
    await target.send_and_receive("counter", "increment", timeout=5000)
    with pytest.raises(WorkerExistsError) as info:
        await bounded(target.start_worker("counter", Counter()))
    assert info.value.worker == "counter"
    # The first worker is untouched.
    assert await target.send_and_receive("counter", "get", timeout=5000) == "Count: 1"


@pytest.mark.parametrize("bad", ["", "tab\there", "x" * 256])
async def test_an_invalid_worker_name_is_refused(target: Target, bad: str) -> None:
    with pytest.raises(ValueError, match="worker name"):
        await bounded(target.start_worker(bad, Echoer()))
    with pytest.raises(TypeError):
        await bounded(target.start_worker(7, Echoer()))  # type: ignore[arg-type]
    await still_answers(target)


async def test_an_object_without_handle_message_is_not_a_worker(target: Target) -> None:
    with pytest.raises(TypeError, match="handle_message") as caught:
        await bounded(target.start_worker("nothing", object()))  # type: ignore[arg-type]
    # A TypeError about the worker, not the error for messages that are not str.
    assert not isinstance(caught.value, MessageTypeError)
    await still_answers(target)


async def test_a_handler_that_raises_fails_the_caller_and_the_worker_keeps_its_state(
    target: Target,
) -> None:
    await bounded(target.start_worker("counter", Counter()))
    await target.send_and_receive("counter", "increment", timeout=5000)
    with pytest.raises(WorkerError) as info:
        await target.send_and_receive("counter", "boom", timeout=5000)
    error = info.value
    assert error.worker == "counter"
    assert error.remote_type == "ValueError"
    assert error.remote_message == "boom at count 1"
    assert "Traceback" in error.remote_traceback
    assert "boom at count" in error.remote_traceback
    assert await target.send_and_receive("counter", "increment", timeout=5000) == "Count: 2"
    workers = {w["name"]: w for w in await bounded(target.list_workers())}
    assert workers["counter"]["failed"] == 1


async def test_a_handler_that_raises_on_a_one_way_message_keeps_the_worker(
    target: Target,
) -> None:
    await bounded(target.start_worker("counter", Counter()))
    await target.send_message("counter", "boom")
    await target.send_message("counter", "increment")
    assert await target.send_and_receive("counter", "get", timeout=5000) == "Count: 1"


async def test_a_request_left_without_reply_fails_at_once_with_no_reply_error(
    target: Target,
) -> None:
    await bounded(target.start_worker("silent", Silent()))
    with pytest.raises(NoReplyError):  # its timeout is 20 s: not by timeout
        await target.send_and_receive("silent", "anyone?", timeout=20_000)


async def test_a_second_reply_raises_reply_error_in_the_handler(target: Target) -> None:
    await bounded(target.start_worker("double", DoubleReplier()))
    assert await target.send_and_receive("double", "x", timeout=5000) == "first"
    assert json.loads(await target.send_and_receive("double", "get", timeout=5000)) == [
        "ReplyError"
    ]


async def test_a_reply_to_a_one_way_message_is_discarded(target: Target) -> None:
    await bounded(target.start_worker("counter", Counter()))
    await target.send_message("counter", "increment")  # Counter replies: nobody listens
    assert await target.send_and_receive("counter", "get", timeout=5000) == "Count: 1"


async def test_messages_are_handled_one_at_a_time_in_sending_order(target: Target) -> None:
    await bounded(target.start_worker("recorder", Recorder()))
    sent = [f"m{i}" for i in range(300)]
    for message in sent[:150]:
        await target.send_message("recorder", message)
    await asyncio.gather(*(target.send_message("recorder", m) for m in sent[150:]))
    assert json.loads(await target.send_and_receive("recorder", "get", timeout=10_000)) == sent


async def test_many_concurrent_requests_all_get_their_own_reply(target: Target) -> None:
    await bounded(target.start_worker("echoer", Echoer()))
    messages = [f"n{i}" for i in range(500)]
    replies = await bounded(
        asyncio.gather(*(target.send_and_receive("echoer", m, timeout=10_000) for m in messages))
    )
    assert replies == messages


async def test_a_slow_reply_raises_a_timeout_that_is_an_asyncio_timeout(target: Target) -> None:
    await bounded(target.start_worker("sleeper", Sleeper()))
    with pytest.raises(asyncio.TimeoutError) as info:
        await target.send_and_receive("sleeper", "0.5", timeout=50)
    assert isinstance(info.value, ReplyTimeoutError)
    assert info.value.timeout_ms == 50
    # The worker goes on, and a later request gets its own reply, not the late one.
    assert await target.send_and_receive("sleeper", "0", timeout=5000) == "slept 0"


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "1000", True])
async def test_a_bad_timeout_is_refused(target: Target, bad: object) -> None:
    await bounded(target.start_worker("echoer", Echoer()))
    with pytest.raises((ValueError, TypeError)):
        await target.send_and_receive("echoer", "x", timeout=bad)  # type: ignore[arg-type]
    await still_answers(target)


async def test_stopping_a_worker_finishes_the_message_in_hand_and_fails_the_queued(
    target: Target,
) -> None:
    await bounded(target.start_worker("sleeper", Sleeper()))
    in_hand = asyncio.ensure_future(target.send_and_receive("sleeper", "0.3", timeout=5000))
    await asyncio.sleep(0)  # let the first request go out first (ordering, not waiting)
    queued = [
        asyncio.ensure_future(target.send_and_receive("sleeper", "0", timeout=5000))
        for _ in range(5)
    ]
    # The stop must arrive while the first message is in hand: wait until it is.
    async def five_queued() -> bool:
        return any(w["name"] == "sleeper" and w["queued"] == 5 for w in await target.list_workers())

    await eventually(five_queued, what="5 requests queued behind the one in hand")
    await bounded(target.stop_worker("sleeper"))
    assert await bounded(in_hand) == "slept 0.3"
    for request in queued:
        with pytest.raises(WorkerStoppedError):
            await bounded(request)
    assert "sleeper" not in [w["name"] for w in await bounded(target.list_workers())]
    with pytest.raises(WorkerNotFoundError):
        await target.send_and_receive("sleeper", "0", timeout=5000)


async def test_list_workers_names_each_worker_with_its_counters(target: Target) -> None:
    await bounded(target.start_worker("a", Echoer()))
    await bounded(target.start_worker("b", Counter()))
    await target.send_and_receive("a", "x", timeout=5000)
    workers = await bounded(target.list_workers())
    assert [w["name"] for w in workers] == ["a", "b"]
    assert workers[0] == {"name": "a", "queued": 0, "handled": 1, "failed": 0}
    await bounded(target.stop_worker("a"))
    assert [w["name"] for w in await bounded(target.list_workers())] == ["b"]


async def test_a_message_over_the_size_limit_is_refused_before_sending(target: Target) -> None:
    await bounded(target.start_worker("echoer", Echoer()))
    too_big = "x" * target.max_frame_bytes
    with pytest.raises(MessageTooLargeError) as info:
        await target.send_and_receive("echoer", too_big, timeout=5000)
    assert info.value.size > info.value.limit
    assert isinstance(info.value, ValueError)
    # A large message under the limit goes through.
    big = "y" * (1024 * 1024)
    assert await target.send_and_receive("echoer", big, timeout=10_000) == big


async def test_a_cancelled_request_leaves_no_pending_state(target: Target, node: Node) -> None:
    await bounded(target.start_worker("sleeper", Sleeper()))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await target.send_and_receive("sleeper", "0.3", timeout=5000)
    # NOTE: only the target's connection: the zone agent may have a hello of its own in
    # flight to another node at this moment.
    if isinstance(target, RemoteNode):
        assert not target._link().pending
    assert "RUNNING" in repr(node)
    assert await target.send_and_receive("sleeper", "0", timeout=5000) == "slept 0"


async def test_every_error_is_an_autonomy_error(target: Target) -> None:
    with pytest.raises(AutonomyError):
        await target.send_and_receive("nobody", "x", timeout=5000)


async def test_stats_count_a_workers_messages_and_the_nodes_traffic(target: Target) -> None:
    await bounded(target.start_worker("counter", Counter()))
    before = await bounded(target.stats())
    for _ in range(5):
        await target.send_and_receive("counter", "increment", timeout=5000)
    with pytest.raises(WorkerError):
        await target.send_and_receive("counter", "boom", timeout=5000)
    stats = await bounded(target.stats())
    assert stats["node"] == target.name
    counts = stats["workers"]["counter"]
    assert {key: counts[key] for key in ("handled", "failed", "queued", "expired")} == {
        "handled": 6,
        "failed": 1,
        "queued": 0,
        "expired": 0,
    }
    assert counts["handler_seconds"]["count"] == 6
    assert isinstance(stats["members"], int)
    assert set(stats["connections"]) == {"dialed", "accepted"}
    if isinstance(target, RemoteNode):
        # The runner received at least our 6 requests and the two STATS, and answered them.
        assert stats["messages_received"] - before["messages_received"] >= 7
        assert stats["messages_sent"] - before["messages_sent"] >= 7
