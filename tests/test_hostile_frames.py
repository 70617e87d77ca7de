"""Garbage on a node's ROUTER port: raw pyzmq DEALERs throw bad frames at a real node.

The node must never die of a frame: it refuses what it cannot read (a logged ProtocolError,
once per dialer), answers with a typed ERROR frame whenever the frame names a request id, and
goes on answering everybody else. The frames are generated from a fixed seed, so a failure
reproduces.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from autonomy import (
    AutonomyError,
    Context,
    MailboxFullError,
    Node,
    ProtocolError,
    SecurityError,
    WorkerNotFoundError,
    WorkerStartError,
)
from autonomy._peer import SEND_WINDOW
from autonomy._protocol import (
    BYE,
    CREDIT,
    ERROR,
    HELLO,
    KIND_NAMES,
    LIST,
    PING,
    REPLY,
    REQUEST,
    RESULT,
    SEND,
    START,
    STOP,
    VERSION,
    decode,
    encode,
    encode_error,
    encode_request,
    encode_send,
    error_from_wire,
    request_id_of,
)
from autonomy._secret import derive_seeds
from autonomy._sockets import CurveKeys, curve_keys

from .conftest import FrameReader, frames_of, join_as_member

LIMIT = 64 * 1024
"""The node's max_frame_bytes: small, so that oversized frames stay cheap."""

SEED = 20240611


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Echo:
    async def handle_message(self, context: Context, message: str) -> None:
        await context.reply(message)


class Gate:
    """Takes one-way messages, but handles none until the gate opens."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.seen: list[str] = []

    async def handle_message(self, context: Context, message: str) -> None:
        await self.open.wait()
        self.seen.append(message)


@pytest.fixture
def zone() -> str:
    return unique("zone")


@pytest.fixture
def secret() -> str:
    return f"secret-{uuid.uuid4().hex}"


@pytest.fixture
def keys(zone: str, secret: str) -> CurveKeys:
    """The zone's CURVE keys. The hostile dialers below hold them: they are members of the
    zone gone bad (or buggy), the worst case, since strangers are refused at the handshake."""
    return curve_keys(*derive_seeds(secret, zone))


def new_node(zone: str, secret: str, prefix: str, **options: Any) -> Node:
    """A node of the test's zone, without mDNS (the ROUTER is the subject here)."""
    return Node(
        name=unique(prefix), zone=zone, bind="127.0.0.1", secret=secret, discovery=False, **options
    )


@pytest.fixture
async def node(zone: str, secret: str) -> AsyncIterator[Node]:
    async with new_node(zone, secret, "target", max_frame_bytes=LIMIT) as started:
        await started.start_worker("echo", Echo())
        yield started


@pytest.fixture
async def zmq_context() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    try:
        yield context
    finally:
        context.term()  # every socket below is closed with linger 0 first


@asynccontextmanager
async def raw_dealer(
    context: zmq.asyncio.Context, node: Node, keys: CurveKeys | None
) -> AsyncIterator[zmq.asyncio.Socket]:
    """A bare DEALER to ``node``: a member if given the zone's ``keys``, else a stranger."""
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # queue the whole barrage without blocking
        sock.setsockopt(zmq.RCVHWM, 0)
        if keys is not None and node.secure:
            join_as_member(sock, keys)
        sock.connect(node.endpoint)
        yield sock
    finally:
        sock.close(linger=0)


# -- expectations ---------------------------------------------------------------------------


@dataclass
class Barrage:
    """Frames for one dialer, and the answer each request id must get."""

    frames: list[bytes | list[bytes]] = field(default_factory=list)
    answers: dict[int, tuple[str, Any]] = field(default_factory=dict)
    nacks: list[type[AutonomyError]] = field(default_factory=list)
    """Errors expected with request id 0: refused one-way messages (a nack each)."""
    next_rid: int = 1

    def rid(self) -> int:
        self.next_rid += 1
        return self.next_rid

    def add(self, data: bytes) -> None:
        """A frame the node cannot accept: answered with ProtocolError iff it names a rid."""
        self.frames.append(data)
        rid = request_id_of(data)
        if rid is not None:
            assert rid not in self.answers, "request ids must be unique per dialer"
            self.answers[rid] = ("ERROR", ProtocolError)

    def expect(self, data: bytes, rid: int, kind: str, value: Any) -> None:
        self.frames.append(data)
        assert rid not in self.answers
        self.answers[rid] = (kind, value)

    def silent(self, data: bytes | list[bytes]) -> None:
        """A frame that must get no answer at all."""
        self.frames.append(data)

    def finish(self) -> None:
        """A last PING: once its RESULT is back, every frame above has been read."""
        rid = self.rid()
        self.expect(encode(PING, rid), rid, "RESULT", None)


def pack(*items: Any) -> bytes:
    return msgpack.packb(list(items))  # type: ignore[no-any-return]


def random_bytes(rng: random.Random, count: int) -> Barrage:
    barrage = Barrage()
    while len(barrage.frames) < count:
        data = rng.randbytes(rng.randint(0, 300))
        if request_id_of(data) is not None:
            continue  # junk that happens to name a request id: its answer is not ours to pin
        try:
            decode(data, LIMIT)
        except ProtocolError:
            barrage.silent(data)
    return barrage


def truncated_msgpack(rng: random.Random, count: int) -> Barrage:
    barrage = Barrage()
    for i in range(count):
        rid = barrage.rid()
        whole = [
            encode_request(rid, "echo", "x" * rng.randint(0, 200), 1000),
            encode(HELLO, rid, "n", "z", "tcp://127.0.0.1:1", "i"),
            encode(START, rid, "w", rng.randbytes(50)),
            encode(ERROR, rid, 3, "boom", {"worker": "w", "node": "n"}),
        ][i % 4]
        barrage.add(whole[: rng.randint(1, len(whole) - 1)])
    return barrage


VERSIONS: list[Any] = [0, 2, 3, 7, 255, 65536, -1, 1.0, 1.5, "1", None, True, False, b"\x01", [1]]


def wrong_versions(rng: random.Random, count: int) -> Barrage:
    barrage = Barrage()
    for i in range(count):
        version = VERSIONS[i % len(VERSIONS)]
        rid = barrage.rid()
        barrage.add(
            [
                pack(version, REQUEST, rid, "echo", "hello", 1000),
                pack(version, PING, rid),
                pack(version, LIST, rid),
                pack(version, REPLY, rid, "forged"),
            ][rng.randrange(4)]
        )
    return barrage


LAST_KIND = max(KIND_NAMES)
KINDS: list[Any] = [0, LAST_KIND + 1, LAST_KIND + 2, 255, 256, 2**16, 2**40, -1, -12, "PING"]
KINDS += [b"\x0c", 3.0, 2.0]
KINDS += [None, True, [PING], {"k": 1}]


def unknown_kinds(rng: random.Random, count: int) -> Barrage:
    barrage = Barrage()
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        rid = barrage.rid()
        fields = [rid, "echo", "hello", rid] if rng.random() < 0.5 else [rid]
        barrage.add(pack(VERSION, kind, *fields))
    return barrage


WRONG_FIELDS: list[Any] = [
    lambda rid: pack(VERSION, PING),
    lambda rid: pack(VERSION, PING, rid, "extra"),
    lambda rid: pack(VERSION, REQUEST, rid, "echo", "m"),
    lambda rid: pack(VERSION, REQUEST, rid, "echo", "m", 100, "extra"),
    lambda rid: pack(VERSION, REQUEST, rid, b"echo", "m", 100),
    lambda rid: pack(VERSION, REQUEST, rid, "echo", b"m", 100),
    lambda rid: pack(VERSION, REQUEST, rid, "echo", "m", 1.5),
    lambda rid: pack(VERSION, REQUEST, rid, "echo", "m", True),
    lambda rid: pack(VERSION, REQUEST, rid, "echo", "m", -1),
    lambda rid: pack(VERSION, REQUEST, -rid, "echo", "m", 100),
    lambda rid: pack(VERSION, REQUEST, True, "echo", "m", 100),
    lambda rid: pack(VERSION, SEND, "echo", "m", -rid),
    lambda rid: pack(VERSION, SEND, "echo", 5, rid),
    lambda rid: pack(VERSION, HELLO, rid, "n", "z", "e"),
    lambda rid: pack(VERSION, START, rid, "w", "not bytes"),
    lambda rid: pack(VERSION, STOP, rid, None),
    lambda rid: pack(VERSION, LIST, float(rid)),
    lambda rid: pack(VERSION, BYE, rid),
    lambda rid: pack(VERSION, PING, {"rid": rid}),
    lambda rid: pack(VERSION, ERROR, rid, 3, "boom", {1: "int key"}),
]
"""Frames of a known kind and version with the wrong number or types of fields."""


def wrong_fields(rng: random.Random, count: int) -> Barrage:
    barrage = Barrage()
    for i in range(count):
        barrage.add(WRONG_FIELDS[i % len(WRONG_FIELDS)](barrage.rid()))
    rng.shuffle(barrage.frames)
    return barrage


def forged_answers(rng: random.Random, count: int) -> Barrage:
    """Frames only a peer's DEALER may receive: on a ROUTER they are refused, unanswered."""
    barrage = Barrage()
    for i in range(count):
        rid = rng.randint(1, 10_000)
        barrage.silent(
            [
                encode(REPLY, rid, "forged reply"),
                encode(RESULT, rid, ["forged", "result"]),
                encode_error(rid, WorkerNotFoundError("echo", "nobody")),
                encode(CREDIT, "echo", 1000),
            ][i % 4]
        )
    return barrage


def multipart(rng: random.Random, count: int) -> Barrage:
    """Valid requests, but in several parts: discarded whole, so never answered."""
    barrage = Barrage()
    for i in range(count):
        rid = barrage.rid()
        parts = [encode(PING, rid), b"extra"]
        if i % 2:
            parts.append(rng.randbytes(20))
        barrage.silent(parts)
    return barrage


def oversized(rng: random.Random, count: int) -> Barrage:
    """Between 1x and 2x the limit: libzmq lets them through, the protocol refuses them."""
    barrage = Barrage()
    for _ in range(count):
        rid = barrage.rid()
        barrage.add(encode_request(rid, "echo", "x" * rng.randint(LIMIT, 2 * LIMIT - 100), 1000))
    return barrage


def refused_requests(count: int, zone: str) -> Barrage:
    """Well-formed frames the node refuses (or answers) with a typed error or result."""
    barrage = Barrage()
    while len(barrage.frames) < count:
        rid = barrage.rid()
        barrage.expect(encode_request(rid, "nobody", "m", 1000), rid, "ERROR", WorkerNotFoundError)
        rid = barrage.rid()
        barrage.expect(encode_send("nobody", "m", rid), rid, "ERROR", WorkerNotFoundError)
        rid = barrage.rid()
        barrage.expect(encode(STOP, rid, "nobody"), rid, "ERROR", WorkerNotFoundError)
        rid = barrage.rid()
        barrage.expect(encode(START, rid, "w", b"not a pickle"), rid, "ERROR", WorkerStartError)
        rid = barrage.rid()
        hello = encode(HELLO, rid, "stranger", zone + "-other", "tcp://127.0.0.1:1", "ab")
        barrage.expect(hello, rid, "ERROR", SecurityError)
        rid = barrage.rid()
        barrage.expect(
            encode_request(rid, "echo", f"echo {rid}", 10_000), rid, "REPLY", f"echo {rid}"
        )
        rid = barrage.rid()
        barrage.expect(encode(PING, rid), rid, "RESULT", None)
    return barrage


def barrages(zone: str) -> dict[str, Barrage]:
    rng = random.Random(SEED)
    return {
        "random bytes": random_bytes(rng, 2500),
        "truncated msgpack": truncated_msgpack(rng, 1500),
        "wrong versions": wrong_versions(rng, 1000),
        "unknown kinds": unknown_kinds(rng, 1000),
        "wrong fields": wrong_fields(rng, 1000),
        "forged answers": forged_answers(rng, 2000),
        "multipart": multipart(rng, 500),
        "oversized": oversized(rng, 20),
        "refused requests": refused_requests(500, zone),
    }


async def fire(sock: zmq.asyncio.Socket, frames: list[bytes | list[bytes]]) -> None:
    """Queue every frame at once (no await per frame), then wait for the queueing to finish."""
    sent = [
        sock.send_multipart(frame) if isinstance(frame, list) else sock.send(frame)
        for frame in frames
    ]
    await asyncio.gather(*sent)


async def collect(sock: zmq.asyncio.Socket, barrage: Barrage, seconds: float) -> dict[int, Any]:
    """Read answers until every expected request id (and nack) has one; fail on anything
    unexpected."""
    got: dict[int, list[Any]] = {}
    nacks: list[type[AutonomyError]] = []
    reader = FrameReader(sock)
    async with asyncio.timeout(seconds):
        while len(got) < len(barrage.answers) or len(nacks) < len(barrage.nacks):
            frame = await reader.next(seconds)
            rid = frame[2]
            assert frame[1] in (REPLY, RESULT, ERROR), f"unexpected frame {frame!r}"
            if rid == 0 and frame[1] == ERROR:
                nacks.append(type(error_from_wire(frame[3], frame[4], frame[5])))
                assert len(nacks) <= len(barrage.nacks), f"unexpected nack {frame!r}"
                continue
            if rid not in barrage.answers and frame[1] == ERROR:
                # Random bytes can hold, after a first object, a list that names a request
                # id: a message is a stream of frames, and such a frame gets its error.
                continue
            assert rid in barrage.answers, f"answer to a frame that names no request: {frame!r}"
            assert rid not in got, f"two answers for request {rid}: {got[rid]!r}, {frame!r}"
            got[rid] = frame
    assert nacks == barrage.nacks
    return got


def check_answer(frame: list[Any], expected: tuple[str, Any]) -> None:
    kind, value = expected
    if kind == "ERROR":
        assert frame[1] == ERROR, frame
        error = error_from_wire(frame[3], frame[4], frame[5])
        assert type(error) is value, (error, frame)
    elif kind == "REPLY":
        assert frame[1:] == [REPLY, frame[2], value]
    else:
        assert frame[1] == RESULT, frame
        assert value is None or frame[3] == value


async def node_still_answers(node: Node, secret: str) -> None:
    assert await node.send_and_receive("echo", "local caller", timeout=5000) == "local caller"
    async with new_node(node.zone, secret, "friend") as friend:
        remote = await friend.connect(node.endpoint, timeout=5000)
        assert await remote.send_and_receive("echo", "remote caller", timeout=5000) == (
            "remote caller"
        )
        replies = await asyncio.gather(
            *(remote.send_and_receive("echo", f"{i}", timeout=5000) for i in range(100))
        )
        assert replies == [f"{i}" for i in range(100)]
    assert node.is_running()


# -- the barrage ------------------------------------------------------------------------------


async def test_ten_thousand_hostile_frames_leave_the_node_answering_with_typed_errors(
    node: Node, zmq_context: zmq.asyncio.Context, keys: CurveKeys, secret: str
) -> None:
    plan = barrages(node.zone)
    for barrage in plan.values():
        barrage.finish()
    assert sum(len(barrage.frames) for barrage in plan.values()) >= 10_000
    assert len(plan["refused requests"].answers) > 500
    assert len(plan["wrong versions"].answers) > 500

    async with (
        raw_dealer(zmq_context, node, keys) as s1,
        raw_dealer(zmq_context, node, keys) as s2,
        raw_dealer(zmq_context, node, keys) as s3,
        raw_dealer(zmq_context, node, keys) as s4,
        raw_dealer(zmq_context, node, keys) as s5,
        raw_dealer(zmq_context, node, keys) as s6,
        raw_dealer(zmq_context, node, keys) as s7,
        raw_dealer(zmq_context, node, keys) as s8,
        raw_dealer(zmq_context, node, keys) as s9,
    ):
        sockets = dict(zip(plan, (s1, s2, s3, s4, s5, s6, s7, s8, s9), strict=True))
        await asyncio.gather(*(fire(sockets[name], plan[name].frames) for name in plan))
        answers = await asyncio.gather(
            *(collect(sockets[name], plan[name], seconds=30) for name in plan)
        )
    for (name, barrage), got in zip(plan.items(), answers, strict=True):
        for rid, expected in barrage.answers.items():
            try:
                check_answer(got[rid], expected)
            except AssertionError as exc:
                raise AssertionError(f"{name}: request {rid}: {exc}") from None

    await node_still_answers(node, secret)
    (echo,) = await node.list_workers()
    assert echo["failed"] == 0


async def test_the_log_shows_one_warning_per_hostile_dialer_not_one_per_frame(
    node: Node,
    zmq_context: zmq.asyncio.Context,
    keys: CurveKeys,
    secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(SEED + 1)
    frames_each = 1500
    plan = [random_bytes(rng, frames_each), wrong_fields(rng, frames_each)]
    plan.append(forged_answers(rng, frames_each))
    for barrage in plan:
        barrage.finish()
    with caplog.at_level(logging.WARNING, logger="autonomy"):
        async with (
            raw_dealer(zmq_context, node, keys) as s1,
            raw_dealer(zmq_context, node, keys) as s2,
            raw_dealer(zmq_context, node, keys) as s3,
        ):
            sockets = (s1, s2, s3)
            await asyncio.gather(*(fire(s, b.frames) for s, b in zip(sockets, plan, strict=True)))
            await asyncio.gather(*(collect(s, b, 20) for s, b in zip(sockets, plan, strict=True)))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    firsts = [r for r in warnings if r.getMessage().startswith("refused a bad frame")]
    assert len(firsts) == 3, [r.getMessage() for r in firsts]
    assert len({r.args[0] for r in firsts if isinstance(r.args, tuple)}) == 3  # one per dialer
    # Beyond the first, at most a running count now and then, never a line per frame.
    assert len(warnings) <= 3 * (1 + (frames_each + 1) // 1000), [r.getMessage() for r in warnings]
    await node_still_answers(node, secret)


async def test_multipart_frames_are_logged_once_per_dialer_not_once_per_frame(
    node: Node,
    zmq_context: zmq.asyncio.Context,
    keys: CurveKeys,
    secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    barrage = multipart(random.Random(SEED), 200)
    barrage.finish()
    with caplog.at_level(logging.WARNING, logger="autonomy"):
        async with raw_dealer(zmq_context, node, keys) as sock:
            await fire(sock, barrage.frames)
            await collect(sock, barrage, 10)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, f"{len(warnings)} warnings for 200 frames from one dialer"


# -- sizes ------------------------------------------------------------------------------------


async def test_a_frame_at_the_limit_is_read_and_one_byte_over_is_refused_with_an_error(
    node: Node, zmq_context: zmq.asyncio.Context, keys: CurveKeys, secret: str
) -> None:
    def request_of_size(rid: int, size: int) -> bytes:
        base = len(encode_request(rid, "nobody", "", 1000))
        data = encode_request(rid, "nobody", "x" * (size - base - 2), 1000)  # str16 header: +2
        assert len(data) == size
        return data

    barrage = Barrage()
    barrage.expect(request_of_size(100, LIMIT), 100, "ERROR", WorkerNotFoundError)
    barrage.add(request_of_size(101, LIMIT + 1))
    assert barrage.answers[101] == ("ERROR", ProtocolError)
    barrage.finish()
    async with raw_dealer(zmq_context, node, keys) as sock:
        await fire(sock, barrage.frames)
        got = await collect(sock, barrage, 10)
    for rid, expected in barrage.answers.items():
        check_answer(got[rid], expected)


async def test_a_frame_over_twice_the_limit_is_cut_off_by_libzmq_and_the_node_goes_on(
    node: Node, zmq_context: zmq.asyncio.Context, keys: CurveKeys, secret: str
) -> None:
    async with raw_dealer(zmq_context, node, keys) as sock:
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        try:

            async def next_event() -> int:
                async with asyncio.timeout(10):
                    return int(parse_monitor_message(await monitor.recv_multipart())["event"])

            assert await next_event() == zmq.EVENT_HANDSHAKE_SUCCEEDED
            await sock.send(encode_request(5, "echo", "x" * (2 * LIMIT + 1), 1000))
            assert await next_event() == zmq.EVENT_DISCONNECTED
            assert await next_event() == zmq.EVENT_HANDSHAKE_SUCCEEDED  # the dealer redials
            await sock.send(encode(PING, 6))
            async with asyncio.timeout(10):
                assert frames_of(await sock.recv()) == [[VERSION, RESULT, 6, None]]
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
    await node_still_answers(node, secret)


# -- credit, forged answers, spoofed goodbyes -----------------------------------------------


async def test_one_way_messages_beyond_the_credit_window_are_refused_not_queued(
    node: Node, zmq_context: zmq.asyncio.Context, keys: CurveKeys, secret: str
) -> None:
    gate = Gate()
    await node.start_worker("gate", gate)
    accepted = 2 * SEND_WINDOW  # the node's hard bound: twice the window a sender is given
    barrage = Barrage()
    for i in range(accepted):
        barrage.silent(encode_send("gate", f"{i}"))
    for _ in range(50):
        barrage.silent(encode_send("gate", "over"))  # refused, with a nack (request id 0)
        barrage.nacks.append(MailboxFullError)
        rid = barrage.rid()
        barrage.expect(encode_send("gate", "over", rid), rid, "ERROR", MailboxFullError)
    barrage.finish()

    async with raw_dealer(zmq_context, node, keys) as sock:
        await fire(sock, barrage.frames)
        got = await collect(sock, barrage, 10)
        for rid, expected in barrage.answers.items():
            check_answer(got[rid], expected)
        (entry,) = [w for w in await node.list_workers() if w["name"] == "gate"]
        assert entry["queued"] == accepted - 1  # one is in the handler, behind the gate

        gate.open.set()
        credit = 0
        reader = FrameReader(sock)
        async with asyncio.timeout(10):
            while credit < accepted:
                frame = await reader.next(10)
                assert frame[:3] == [VERSION, CREDIT, "gate"], frame
                credit += frame[3]
    assert credit == accepted
    assert gate.seen == [f"{i}" for i in range(accepted)]
    await node_still_answers(node, secret)


async def test_forged_answers_on_the_router_do_not_resolve_the_nodes_own_calls(
    node: Node, zmq_context: zmq.asyncio.Context, keys: CurveKeys, secret: str
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    class Replier:
        async def handle_message(self, context: Context, message: str) -> None:
            arrived.set()
            await release.wait()
            await context.reply("genuine")

    async with new_node(node.zone, secret, "slow") as slow_node:
        await slow_node.start_worker("replier", Replier())
        remote = await node.connect(slow_node.endpoint, timeout=5000)
        call = asyncio.create_task(remote.send_and_receive("replier", "q", timeout=10_000))
        async with asyncio.timeout(5):
            await arrived.wait()  # the call is pending now, under one of the node's small ids
        barrage = Barrage()
        for rid in range(1, 200):
            barrage.silent(encode(REPLY, rid, "forged"))
            barrage.silent(encode(RESULT, rid, "forged"))
            barrage.silent(encode_error(rid, WorkerNotFoundError("replier", slow_node.name)))
        barrage.finish()
        async with raw_dealer(zmq_context, node, keys) as sock:
            await fire(sock, barrage.frames)
            await collect(sock, barrage, 10)
        assert not call.done()
        release.set()
        async with asyncio.timeout(10):
            assert await call == "genuine"


async def test_a_dialer_cannot_cut_the_node_off_from_a_peer_by_claiming_its_endpoint(
    node: Node, zmq_context: zmq.asyncio.Context, keys: CurveKeys, secret: str
) -> None:
    async with new_node(node.zone, secret, "peer") as peer:
        await peer.start_worker("echo", Echo())
        remote = await node.connect(peer.endpoint, timeout=5000)
        assert await remote.send_and_receive("echo", "before", timeout=5000) == "before"
        async with raw_dealer(zmq_context, node, keys) as sock:
            await sock.send(encode(HELLO, 1, peer.name, node.zone, peer.endpoint, "spoof"))
            async with asyncio.timeout(5):
                assert frames_of(await sock.recv())[0][:3] == [VERSION, RESULT, 1]
            await sock.send(encode(BYE, "pretending to be the peer"))
            await sock.send(encode(PING, 2))
            async with asyncio.timeout(5):
                assert frames_of(await sock.recv()) == [[VERSION, RESULT, 2, None]]
        assert await remote.send_and_receive("echo", "after", timeout=5000) == "after"


@pytest.mark.parametrize("name", ["", "bad\nname", "x" * 256], ids=["empty", "newline", "long"])
async def test_a_start_with_an_invalid_worker_name_is_refused_and_the_next_frame_answered(
    node: Node, zmq_context: zmq.asyncio.Context, keys: CurveKeys, name: str
) -> None:
    async with raw_dealer(zmq_context, node, keys) as sock:
        await sock.send(encode(START, 7, name, b"not a pickle"))
        await sock.send(encode(PING, 8))
        async with asyncio.timeout(2):
            reader = FrameReader(sock)
            first, second = await reader.next(), await reader.next()
    assert first[:3] == [VERSION, ERROR, 7]
    assert isinstance(error_from_wire(first[3], first[4], first[5]), AutonomyError)
    assert second == [VERSION, RESULT, 8, None]


# -- strangers ------------------------------------------------------------------------------

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


async def test_dialers_without_the_zone_secret_are_refused_at_the_handshake_and_logged_once(
    node: Node,
    zmq_context: zmq.asyncio.Context,
    keys: CurveKeys,
    secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not node.secure:
        pytest.skip("the node runs in plain mode (AUTONOMY_SECURE=0)")
    strangers: dict[str, CurveKeys | None] = {
        "plain": None,
        "another secret": curve_keys(*derive_seeds(f"not-{secret}", node.zone)),
        "another zone": curve_keys(*derive_seeds(secret, f"{node.zone}-other")),
    }
    # Our server key but a client key of another secret: refused by the ZAP handler.
    wrong_client = strangers["another secret"]
    assert wrong_client is not None
    impostor = CurveKeys.__new__(CurveKeys)
    impostor.server_public = keys.server_public
    impostor.client_public, impostor.client_secret = (
        wrong_client.client_public,
        wrong_client.client_secret,
    )
    strangers["our server key, another client key"] = impostor

    with caplog.at_level(logging.WARNING, logger="autonomy"):
        for label, stranger_keys in list(strangers.items()) * 3:
            sock = zmq_context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Watch before dialing: a refused handshake may be the only event there is.
            monitor = sock.get_monitor_socket(
                HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
            )
            try:
                if stranger_keys is not None:
                    sock.setsockopt(zmq.CURVE_SERVERKEY, stranger_keys.server_public)
                    sock.setsockopt(zmq.CURVE_PUBLICKEY, stranger_keys.client_public)
                    sock.setsockopt(zmq.CURVE_SECRETKEY, stranger_keys.client_secret)
                sock.connect(node.endpoint)
                await sock.send(encode(PING, 1))
                await sock.send(encode_request(2, "echo", "let me in", 1000))
                async with asyncio.timeout(10):
                    event = int(parse_monitor_message(await monitor.recv_multipart())["event"])
                assert event & HANDSHAKE_FAILED, (label, event)
                assert not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN, label
            finally:
                sock.disable_monitor()
                monitor.close(linger=0)
                sock.close(linger=0)
        await node_still_answers(node, secret)
    (echo,) = await node.list_workers()
    assert echo["handled"] == 102  # node_still_answers' requests, nothing from a stranger
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 2, warnings  # 12 refused connections, at most 2 lines
