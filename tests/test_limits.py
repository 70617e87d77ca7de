"""The bounds that keep a node's memory finite under a flood: calls in flight per peer, a
worker's queue for remote senders, and the deadline heap of requests in flight.

Two nodes in one process, plain mode (the limits are the same in CURVE mode): each limit is
patched small, so that reaching it takes a few hundred messages, not a hundred thousand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import autonomy._inbound as inbound_module
import autonomy._peer as peer_module
from autonomy import MailboxFullError, Node, RemoteNode, ReplyTimeoutError
from autonomy._deadlines import _COMPACT_AT, Deadlines

from .conftest import bounded, eventually, unique
from .workers import Echoer


class Gate:
    """Holds every message until ``opened`` is set (the test's hand on the worker)."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.entered = asyncio.Event()
        """Set once a message is in hand."""

    async def handle_message(self, context, message):
        self.entered.set()
        await self.opened.wait()
        await context.reply(message)


@pytest.fixture
async def pair(zone: str) -> AsyncIterator[tuple[Node, Node, RemoteNode]]:
    """A caller node, a callee node, and the callee as the caller sees it."""
    options = {"zone": zone, "bind": "127.0.0.1", "secure": False, "discovery": False}
    async with (
        Node(name=unique("caller"), **options) as caller,
        Node(name=unique("callee"), **options) as callee,
    ):
        remote = await bounded(caller.connect(callee.endpoint))
        yield caller, callee, remote


async def test_calls_past_the_pending_limit_wait_for_a_slot_and_all_complete(
    pair: tuple[Node, Node, RemoteNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_module, "MAX_PENDING_PER_PEER", 50)
    _, callee, remote = pair
    gate = Gate()
    await callee.start_worker("gate", gate)
    calls = [
        asyncio.ensure_future(remote.send_and_receive("gate", str(i), timeout=30_000))
        for i in range(200)
    ]
    link = remote._link()
    waiting = lambda: sum(not w.done() for w in link.slot_waiters)  # noqa: E731
    await eventually(lambda: len(link.pending) == 50 and waiting() == 150, 10, "150 to wait")
    # The callee holds no more than the limit: the other 150 never left the caller.
    assert (await callee.list_workers())[0]["queued"] == 49
    gate.opened.set()
    replies = await bounded(asyncio.gather(*calls), 20)
    assert replies == [str(i) for i in range(200)]
    assert not link.pending
    assert waiting() == 0


async def test_a_caller_waiting_for_a_slot_times_out_as_a_reply_timeout(
    pair: tuple[Node, Node, RemoteNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_module, "MAX_PENDING_PER_PEER", 5)
    _, callee, remote = pair
    gate = Gate()
    await callee.start_worker("gate", gate)
    held = [
        asyncio.ensure_future(remote.send_and_receive("gate", "held", timeout=30_000))
        for _ in range(5)
    ]
    link = remote._link()
    await eventually(lambda: len(link.pending) == 5, 10, "five calls in flight")
    with pytest.raises(ReplyTimeoutError):
        await remote.send_and_receive("gate", "late", timeout=100)
    gate.opened.set()
    assert await bounded(asyncio.gather(*held)) == ["held"] * 5
    # The slot the timed-out caller waited for is not lost.
    await callee.start_worker("echo", Echoer())
    assert await remote.send_and_receive("echo", "after", timeout=5000) == "after"


async def test_requests_past_the_remote_queue_limit_fail_with_mailbox_full(
    pair: tuple[Node, Node, RemoteNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbound_module, "REMOTE_QUEUE_LIMIT", 20)
    _, callee, remote = pair
    gate = Gate()
    await callee.start_worker("gate", gate)
    first = asyncio.ensure_future(remote.send_and_receive("gate", "in hand", timeout=30_000))
    await bounded(gate.entered.wait())
    calls = [
        asyncio.ensure_future(remote.send_and_receive("gate", str(i), timeout=30_000))
        for i in range(25)
    ]
    # 20 are queued; the 5 after them are refused at once, by type.
    refused = await bounded(asyncio.gather(*calls[20:], return_exceptions=True))
    assert all(isinstance(each, MailboxFullError) for each in refused), refused
    assert refused[0].limit == 20
    assert callee._workers.get("gate").queued == 20
    gate.opened.set()
    assert await bounded(asyncio.gather(first, *calls[:20])) == ["in hand", *map(str, range(20))]


async def test_the_deadline_heap_sheds_ended_requests_instead_of_growing() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    try:
        total = 3 * _COMPACT_AT
        futures = [loop.create_future() for _ in range(total)]
        entries = [deadlines.add(loop.time() + 60, future, "w", 60.0) for future in futures]
        # All but the last ten end before their deadline, as requests normally do.
        for entry in entries[:-10]:
            deadlines.discard(entry)
        assert len(deadlines) == 10
        # The heap was rebuilt as the dead outnumbered the live: it holds far fewer than all.
        assert len(deadlines._heap) <= _COMPACT_AT + 10
        # The live ones still time out, and only they.
        soon = loop.create_future()
        deadlines.add(loop.time() + 0.05, soon, "w", 0.05)
        with pytest.raises(ReplyTimeoutError):
            await bounded(soon, 5)
        assert not any(future.done() for future in futures)
    finally:
        deadlines.close()
