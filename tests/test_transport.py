"""The transport on real sockets: a node's ROUTER talking to raw pyzmq DEALERs, and a node's
DEALERs seeing their peers die, come back, or never answer.

Peers run in child processes (a small script below, killed by process group in teardown);
everything binds 127.0.0.1 on ephemeral ports. Nodes hold an explicit zone secret (the raw
sockets derive the zone's CURVE keys from it) and run without mDNS: the transport is the
subject here, discovery has its own tests.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import zmq
import zmq.asyncio

from autonomy import Node, PeerUnavailableError, RemoteNode, SecurityError
from autonomy._peer import PEER_UNREACHABLE_S
from autonomy._protocol import (
    ERROR,
    HELLO,
    PING,
    RESULT,
    VERSION,
    encode,
    error_from_wire,
)
from autonomy._secret import derive_seeds
from autonomy._sockets import CurveKeys, curve_keys

from .conftest import FrameReader, bounded, join_as_member
from .processes import Child

DETECTION_S = 2.0
"""How fast a SIGKILLed peer must be noticed. The kernel closes its connections, so the
transport sees it in milliseconds (DESIGN.md); this bound only keeps loaded CI machines quiet,
and is far below the 60 s the callers below are willing to wait."""

LONG_TIMEOUT_MS = 60_000
"""The user's timeout in these tests: a failure must come from the transport, long before."""

CHILD = r"""
import asyncio, sys
from autonomy import Node

class Echo:
    async def handle_message(self, context, message):
        await context.reply(message)

class Hang:
    async def handle_message(self, context, message):
        await asyncio.Event().wait()

async def main():
    name, zone, bind, secret = sys.argv[1:]
    async with Node(name=name, zone=zone, bind=bind, secret=secret, discovery=False) as node:
        await node.start_worker("echo", Echo())
        await node.start_worker("hang", Hang())
        print(node.endpoint, flush=True)
        # Serve until killed, or until the test process goes away (stdin closes).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Peer:
    """A peer node in a child process (CHILD above)."""

    child: Child
    endpoint: str

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])


@pytest.fixture
def zone() -> str:
    return unique("zone")


@pytest.fixture
def secret() -> str:
    """The zone's secret, given explicitly to every node (and to the raw sockets' keys)."""
    return f"secret-{uuid.uuid4().hex}"


@pytest.fixture
def keys(zone: str, secret: str) -> CurveKeys:
    """The zone's CURVE keys: a raw socket that holds them is a member of the zone."""
    return curve_keys(*derive_seeds(secret, zone))


@pytest.fixture
async def spawn(zone: str, secret: str) -> AsyncIterator[Callable[..., Any]]:
    """Start peer nodes in child processes; every one is SIGKILLed and reaped at teardown."""
    async with AsyncExitStack() as stack:

        async def start(bind: str = "127.0.0.1") -> Peer:
            name = unique("peer")
            child = Child(sys.executable, "-c", CHILD, name, zone, bind, secret, name=name)
            await stack.enter_async_context(child)
            line = await child.read_line(20)
            assert line.startswith("tcp://127.0.0.1:"), f"child printed {line!r}"
            return Peer(child, line)

        yield start


@pytest.fixture
async def node(zone: str, secret: str) -> AsyncIterator[Node]:
    async with Node(
        name=unique("main"), zone=zone, bind="127.0.0.1", secret=secret, discovery=False
    ) as started:
        yield started


@asynccontextmanager
async def raw_dealer(node: Node, keys: CurveKeys) -> AsyncIterator[zmq.asyncio.Socket]:
    """A bare pyzmq DEALER that holds the zone's keys, connected to ``node`` (linger 0,
    closed on exit)."""
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if node.secure:
            join_as_member(sock, keys)
        sock.connect(node.endpoint)
        yield sock
    finally:
        sock.close(linger=0)
        context.term()


_readers: dict[int, FrameReader] = {}


async def receive_frame(sock: zmq.asyncio.Socket, seconds: float = 5.0) -> list[Any]:
    """The next frame from ``sock`` (a node coalesces the frames of one loop turn)."""
    reader = _readers.setdefault(id(sock), FrameReader(sock))
    if reader.sock is not sock:  # a new socket at a recycled id
        reader = _readers[id(sock)] = FrameReader(sock)
    return await reader.next(seconds)


def free_port_nobody_listens_on() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- a node's ROUTER and raw dialers ------------------------------------------------------------


async def test_a_nodes_router_answers_a_raw_dealers_ping_with_an_empty_result(
    node: Node, keys: CurveKeys
) -> None:
    async with raw_dealer(node, keys) as sock:
        await sock.send(encode(PING, 41))
        assert await receive_frame(sock) == [VERSION, RESULT, 41, None]


async def test_a_nodes_router_answers_a_raw_dealers_hello_with_who_it_is(
    node: Node, keys: CurveKeys
) -> None:
    async with raw_dealer(node, keys) as sock:
        await sock.send(encode(HELLO, 7, "raw", node.zone, "tcp://127.0.0.1:1", "feedbeef"))
        frame = await receive_frame(sock)
    assert frame == [VERSION, RESULT, 7, [node.name, node.zone, node.endpoint, node.instance]]


async def test_a_hello_from_another_zone_is_answered_with_a_security_error(
    node: Node, keys: CurveKeys
) -> None:
    async with raw_dealer(node, keys) as sock:
        await sock.send(encode(HELLO, 8, "stranger", "other-zone", "tcp://127.0.0.1:1", "ab"))
        frame = await receive_frame(sock)
        assert frame[:3] == [VERSION, ERROR, 8]
        assert isinstance(error_from_wire(frame[3], frame[4], frame[5]), SecurityError)
        # Refused, not cut off: the same dialer still gets answers.
        await sock.send(encode(PING, 9))
        assert await receive_frame(sock) == [VERSION, RESULT, 9, None]


async def test_each_dialer_gets_the_answers_to_its_own_frames(node: Node, keys: CurveKeys) -> None:
    async with raw_dealer(node, keys) as first, raw_dealer(node, keys) as second:
        for rid in range(1, 51):
            await first.send(encode(PING, rid))
            await second.send(encode(PING, 1000 + rid))
        first_rids = [(await receive_frame(first))[2] for _ in range(50)]
        second_rids = [(await receive_frame(second))[2] for _ in range(50)]
    assert first_rids == list(range(1, 51))
    assert second_rids == list(range(1001, 1051))


async def test_a_remote_node_reaches_a_node_in_another_process(
    node: Node, spawn: Callable[..., Any]
) -> None:
    peer = await spawn()
    remote = await node.connect(peer.endpoint, timeout=10_000)
    assert remote.is_up()
    assert remote.endpoint == peer.endpoint
    assert await remote.send_and_receive("echo", "über 😀", timeout=10_000) == "über 😀"
    assert {w["name"] for w in await remote.list_workers()} == {"echo", "hang"}


# -- a node's DEALERs and dying, returning or absent peers ----------------------------------


async def start_hanging_requests(remote: RemoteNode, count: int) -> list[asyncio.Task[str]]:
    """Requests that the peer takes but never answers; returns once the peer has them all."""
    tasks = [
        asyncio.create_task(remote.send_and_receive("hang", f"{i}", timeout=LONG_TIMEOUT_MS))
        for i in range(count)
    ]
    # Frames on one connection arrive in order: once this answer is back, the peer holds
    # every request above.
    assert await remote.send_and_receive("echo", "sync", timeout=10_000) == "sync"
    assert not any(task.done() for task in tasks)
    return tasks


async def test_a_sigkilled_peer_fails_every_pending_request_with_peer_unavailable_at_once(
    node: Node, spawn: Callable[..., Any]
) -> None:
    doomed, survivor = await spawn(), await spawn()
    remote = await node.connect(doomed.endpoint, timeout=10_000)
    other = await node.connect(survivor.endpoint, timeout=10_000)
    tasks = await start_hanging_requests(remote, 100)
    doomed.child.kill()
    async with asyncio.timeout(DETECTION_S):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, PeerUnavailableError) for result in results), results
    assert not remote.is_up()

    # The caller's node goes on with its other peers, and with itself.
    assert await other.send_and_receive("echo", "still here", timeout=10_000) == "still here"
    assert await node.list_workers() == []


async def test_a_call_to_a_peer_that_died_fails_within_the_unreachable_bound(
    node: Node, spawn: Callable[..., Any]
) -> None:
    peer = await spawn()
    remote = await node.connect(peer.endpoint, timeout=10_000)
    (pending,) = await start_hanging_requests(remote, 1)
    peer.child.kill()
    with pytest.raises(PeerUnavailableError):
        async with asyncio.timeout(DETECTION_S):
            await pending

    with pytest.raises(PeerUnavailableError):
        async with asyncio.timeout(PEER_UNREACHABLE_S + 2):
            await remote.send_and_receive("echo", "anyone?", timeout=LONG_TIMEOUT_MS)


async def test_traffic_resumes_when_a_peer_restarts_at_the_same_endpoint(
    node: Node, spawn: Callable[..., Any]
) -> None:
    first = await spawn()
    remote = await node.connect(first.endpoint, timeout=10_000)
    assert await remote.send_and_receive("echo", "before", timeout=10_000) == "before"
    (pending,) = await start_hanging_requests(remote, 1)

    first.child.kill()
    with pytest.raises(PeerUnavailableError):
        async with asyncio.timeout(DETECTION_S):
            await pending
    await first.child.aclose()  # reaped: its port is free

    second = await spawn(bind=f"127.0.0.1:{first.port}")
    assert second.endpoint == first.endpoint
    # The node redials on its own (no connect(), no new RemoteNode): wait for the link.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not remote.is_up():
        assert loop.time() < deadline, f"no reconnect to {second.endpoint}: {remote!r}"
        await asyncio.sleep(0.02)
    replies = await asyncio.gather(
        *(remote.send_and_receive("echo", f"after {i}", timeout=10_000) for i in range(20))
    )
    assert replies == [f"after {i}" for i in range(20)]
    assert {w["name"] for w in await remote.list_workers()} == {"echo", "hang"}


async def test_a_call_made_while_the_peer_is_down_fails_at_once_and_goes_through_once_it_is_back(
    node: Node, spawn: Callable[..., Any]
) -> None:
    first = await spawn()
    remote = await node.connect(first.endpoint, timeout=10_000)
    (pending,) = await start_hanging_requests(remote, 1)
    first.child.kill()
    with pytest.raises(PeerUnavailableError):
        async with asyncio.timeout(DETECTION_S):
            await pending
    await first.child.aclose()  # reaped: its port is free

    # Issued while nothing listens: the peer is known to be gone, so the call fails at once.
    # Its timeout is shorter than PEER_UNREACHABLE_S: a call that waited for the peer would
    # fail with ReplyTimeoutError instead.
    with pytest.raises(PeerUnavailableError, match="connection lost"):
        await bounded(remote.send_and_receive("echo", "patience", timeout=1000))
    # Back at the same endpoint: the node redials on its own, and calls go through.
    await spawn(bind=f"127.0.0.1:{first.port}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not remote.is_up():
        assert loop.time() < deadline, f"no reconnect to {first.endpoint}: {remote!r}"
        await asyncio.sleep(0.02)
    assert await remote.send_and_receive("echo", "back", timeout=10_000) == "back"


async def test_a_call_to_a_peer_that_left_fails_with_an_error_naming_the_peer_once(
    node: Node, secret: str
) -> None:
    leaver_node = Node(
        name=unique("leaver"), zone=node.zone, bind="127.0.0.1", secret=secret, discovery=False
    )
    async with leaver_node as leaver:
        remote = await node.connect(leaver.endpoint, timeout=10_000)
    # The leaver said goodbye on its way out; wait for the node to have heard it.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while remote.is_up():
        assert loop.time() < deadline, "the goodbye never arrived"
        await asyncio.sleep(0.01)
    # At once: with a timeout below PEER_UNREACHABLE_S, waiting would be a ReplyTimeoutError.
    with pytest.raises(PeerUnavailableError) as caught:
        await bounded(remote.send_and_receive("echo", "anyone?", timeout=1000))
    assert "stopped" in str(caught.value)
    assert str(caught.value).count("is unavailable") == 1, str(caught.value)


async def test_connecting_to_an_endpoint_nobody_listens_on_fails_within_the_unreachable_bound(
    node: Node, keys: CurveKeys
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port_nobody_listens_on()}"
    with pytest.raises(PeerUnavailableError) as caught:
        async with asyncio.timeout(PEER_UNREACHABLE_S + 3):
            await node.connect(endpoint, timeout=LONG_TIMEOUT_MS)
    assert endpoint in str(caught.value)
    # The node itself is unharmed.
    async with raw_dealer(node, keys) as sock:
        await sock.send(encode(PING, 1))
        assert await receive_frame(sock) == [VERSION, RESULT, 1, None]
