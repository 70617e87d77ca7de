"""The caller's side of the mesh: a `Link` to each peer this node dials, and `Links`, all of them.

A link owns what one node has in flight to one peer: the DEALER socket, the calls waiting for
an answer (by request id), the slots that bound them, the credit windows of one-way
messages, and the peer's connection state. Its API is what `RemoteNode` and the zone's
membership use, by name: `Link.call`, `Link.request`, `Link.send`, and `Links.lost`.

Answers to our calls (REPLY, RESULT, ERROR), credit and goodbyes arrive on the link's DEALER
and are dispatched here. Knows nothing of workers, zones or zeroconf.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from ._deadlines import Deadlines
from ._errors import (
    AutonomyError,
    NodeClosedError,
    PeerUnavailableError,
    ProtocolError,
    ReplyTimeoutError,
    SecurityError,
)
from ._protocol import (
    BYE,
    CREDIT,
    ERROR,
    GOSSIP,
    HELLO,
    REPLY,
    RESULT,
    check_frame,
    encode,
    encode_request,
    encode_send,
    error_from_wire,
    split,
)
from ._transport import DealerSocket, PeerEvent, Transport

__all__ = [
    "MAX_PENDING_PER_PEER",
    "PEER_UNREACHABLE_S",
    "SEND_WINDOW",
    "Identity",
    "Link",
    "LinkState",
    "Links",
]

log = logging.getLogger("autonomy.node")

PEER_UNREACHABLE_S: Final = 3.0
"""A call to a peer never reached yet waits this long for it to connect, then fails with
`PeerUnavailableError`. A peer known to be gone (it said goodbye, its connection dropped, it
refused us) fails calls at once: a connected peer that dies is seen at once (the kernel
closes the connection), a silent partition in about 2 s (ZMTP heartbeats, ``_transport``)."""

# Limits that the tests lower are not Final: a compiled build would fold a Final into the
# code, where no test could reach it.
SEND_WINDOW: int = 1000
"""One-way messages a sender may have in flight to one remote worker before it waits for
credit: the remote end of the mailbox bound (backpressure across the wire)."""

MAX_PENDING_PER_PEER: int = 10_000
"""Calls one node may have in flight to one peer; more wait for a slot (backpressure)."""


class LinkState(enum.Enum):
    """What this node knows of its connection to a peer."""

    CONNECTING = "connecting"
    """Dialed, never connected yet."""
    UP = "up"
    DOWN = "down"
    """Lost; libzmq keeps reconnecting."""
    REFUSED = "refused"
    """The handshake was refused (another zone's secret, plain against secure)."""
    GONE = "gone"
    """The peer said goodbye."""
    CLOSED = "closed"
    """We closed it (the peer left the zone, or this node stopped)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this node is on the wire: what its hello says."""

    name: str
    zone: str
    endpoint: str
    instance: str
    observer: bool = False
    """It watches the zone without being a member: its hello names no endpoint, so no
    node takes it for one."""

    def hello(self, rid: int) -> bytes:
        endpoint = "" if self.observer else self.endpoint
        return encode(HELLO, rid, self.name, self.zone, endpoint, self.instance)


class Link:
    """This node's connection to one peer: state, calls in flight, one-way credit windows."""

    __slots__ = (
        "_links",
        "_rid",
        "credit",
        "credit_waiters",
        "dealer",
        "endpoint",
        "frames_received",
        "frames_sent",
        "handshake_closed",
        "instance",
        "name",
        "pending",
        "quiet",
        "reason",
        "retired",
        "retrying",
        "since",
        "slot_waiters",
        "state",
        "up_waiters",
        "used_mark",
        "watched",
    )

    def __init__(self, links: Links, endpoint: str, name: str, since: float) -> None:
        self._links = links
        self._rid = 0
        self.endpoint = endpoint
        self.name = name
        self.instance = ""
        self.state = LinkState.CONNECTING
        self.reason = "not connected yet"
        self.retired = False
        """Closed for idleness (not because the peer went): a new link takes its place."""
        self.retrying = False
        """Never connected, and a connect already failed (nothing listened there)."""
        self.handshake_closed = False
        """The last drop happened during a handshake (its reason says more than a later
        'connection lost')."""
        self.since = since
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.quiet = 0
        """Calls in flight that are the node's own business (hellos, membership pulls): their
        failing is not worth a warning."""
        self.credit: dict[str, int] = {}
        """One-way messages in flight per remote worker; no entry until the first is confirmed."""
        self.credit_waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self.up_waiters: deque[asyncio.Future[None]] = deque()
        self.slot_waiters: deque[asyncio.Future[None]] = deque()
        self.dealer: DealerSocket | None = None
        self.frames_sent = 0
        """Frames sent (calls, one-way messages, gossip): an idle link's count stands still."""
        self.frames_received = 0
        self.used_mark = 0
        self.watched = False
        """Kept open by the zone's failure detector, used or not."""

    @property
    def label(self) -> str:
        return f"{self.name!r} at {self.endpoint}" if self.name else self.endpoint

    def is_up(self) -> bool:
        return self.state is LinkState.UP

    def __repr__(self) -> str:
        return f"<Link {self.label} {self.state.name} pending={len(self.pending)}>"

    def next_rid(self) -> int:
        self._rid += 1
        return self._rid

    # -- calls: a frame that expects an answer ---------------------------------------------

    async def call(
        self,
        kind: int,
        *fields: Any,
        worker: str = "",
        timeout_s: float = 0.0,
        quiet: bool = False,
    ) -> Any:
        """Send ``[kind, rid, *fields]`` and await its answer (a RESULT or an ERROR).

        ``timeout_s`` 0 means the node's control timeout; ``quiet`` marks the node's own
        calls (see `Link.quiet`).
        """
        rid = self.next_rid()
        if not quiet:
            return await self._call(rid, encode(kind, rid, *fields), worker, timeout_s)
        self.quiet += 1
        try:
            return await self._call(rid, encode(kind, rid, *fields), worker, timeout_s)
        finally:
            self.quiet -= 1

    def request(self, worker: str, message: str, timeout_s: float) -> Awaitable[str]:
        """A worker's ``send_and_receive``: its REPLY, or the error it failed with."""
        # A plain function returning the call's coroutine: one coroutine frame less on the
        # hot path.
        rid = self.next_rid()
        frame = encode_request(rid, worker, message, int(timeout_s * 1000) or 1)
        return self._call(rid, frame, worker, timeout_s)

    async def _call(self, rid: int, frame: bytes, worker: str, timeout_s: float) -> Any:
        self.frames_sent += 1
        links = self._links
        loop = links.loop
        if not timeout_s:
            timeout_s = links.control_timeout_s
        deadline = loop.time() + timeout_s
        if self.state is not LinkState.UP or len(self.pending) >= MAX_PENDING_PER_PEER:
            await self._admit(deadline, worker, timeout_s)
        future: asyncio.Future[Any] = loop.create_future()
        pending = self.pending
        pending[rid] = future
        try:
            assert self.dealer is not None
            self.dealer.send(frame)
            entry = links.deadlines.add(deadline, future, worker, timeout_s)
            try:
                return await future
            finally:
                links.deadlines.discard(entry)
        finally:
            del pending[rid]
            if self.slot_waiters:
                _wake_first(self.slot_waiters)

    async def _admit(self, deadline: float, worker: str, timeout_s: float) -> None:
        """A call that cannot go at once: the node stopped, the peer is not up, or its call
        slots are all taken."""
        if self._links.closed:
            raise NodeClosedError(self._links.closed_reason)
        if self.state is not LinkState.UP:
            await self._wait_up(deadline, worker, timeout_s)
        if len(self.pending) >= MAX_PENDING_PER_PEER:
            await self._wait_slot(deadline, worker, timeout_s)

    async def _wait_up(self, deadline: float, worker: str, timeout_s: float) -> None:
        # A peer known to be gone (it said goodbye, its connection dropped, it refused us)
        # fails calls at once; only a peer never reached yet is waited for.
        if self.state is not LinkState.CONNECTING:
            raise PeerUnavailableError(self.label, self.reason)
        now = self._links.loop.time()
        limit = min(deadline, max(self.since, now) + PEER_UNREACHABLE_S)
        if not await _park(self.up_waiters, limit):
            if limit >= deadline:
                raise ReplyTimeoutError(worker, timeout_s * 1000)
            raise PeerUnavailableError(
                self.label, f"{self.reason} (waited {PEER_UNREACHABLE_S:g} s)"
            )

    async def _wait_slot(self, deadline: float, worker: str, timeout_s: float) -> None:
        """Wait (backpressure) until fewer than MAX_PENDING_PER_PEER calls are in flight."""
        while len(self.pending) >= MAX_PENDING_PER_PEER:
            if not await _park(self.slot_waiters, deadline):
                raise ReplyTimeoutError(worker, timeout_s * 1000)

    # -- one-way messages --------------------------------------------------------------------

    async def send(self, worker: str, message: str, timeout_s: float) -> None:
        """A worker's ``send_message``: queued at the peer, within the worker's window."""
        links = self._links
        if links.closed:
            raise NodeClosedError(links.closed_reason)
        inflight = self.credit.get(worker)
        if inflight is None:
            # The first message to a remote worker is confirmed (one round trip), so that a
            # wrong worker name fails at the call, not in a log on the other machine.
            self.credit[worker] = 1
            rid = self.next_rid()
            try:
                await self._call(rid, encode_send(worker, message, rid), worker, timeout_s)
            except BaseException:
                self.credit.pop(worker, None)
                raise
            return
        if inflight >= SEND_WINDOW or self.state is not LinkState.UP:
            await self._wait_credit(worker, timeout_s)
        self.credit[worker] = self.credit.get(worker, 0) + 1
        assert self.dealer is not None
        self.dealer.send(encode_send(worker, message))
        self.frames_sent += 1

    async def _wait_credit(self, worker: str, timeout_s: float) -> None:
        deadline = self._links.loop.time() + timeout_s
        while True:
            if self.state is not LinkState.UP:
                await self._wait_up(deadline, worker, timeout_s)
            if self.credit.get(worker, 0) < SEND_WINDOW:
                return
            if not await _park(self.credit_waiters.setdefault(worker, deque()), deadline):
                raise ReplyTimeoutError(worker, timeout_s * 1000)

    def post(self, frame: bytes) -> bool:
        """Send a frame that expects no answer (gossip), unless the peer is known to be
        gone; a link still connecting sends it once connected. Returns whether it went."""
        if self.dealer is None or self.state not in (LinkState.UP, LinkState.CONNECTING):
            return False
        try:
            self.dealer.send(frame)
        except AutonomyError:
            return False
        self.frames_sent += 1
        return True

    def is_idle(self) -> bool:
        """Nothing in flight, nobody waiting, no one-way window open."""
        return not (
            self.pending
            or self.slot_waiters
            or self.up_waiters
            or any(self.credit.values())
            or any(self.credit_waiters.values())
        )

    # -- what arrives on our DEALER ---------------------------------------------------------

    def _on_message(self, data: bytes) -> None:
        frames, error = split(data, self._links.max_frame_bytes)
        self.frames_received += len(frames)
        for each in frames:
            try:
                frame = check_frame(each)
            except ProtocolError as exc:
                log.warning("bad frame from peer %s: %s", self.label, exc)
                continue
            self._on_frame(frame)
        if error is not None:
            log.warning("bad frame from peer %s: %s", self.label, error)

    def _on_frame(self, frame: list[Any]) -> None:
        kind = frame[1]
        if kind in (REPLY, RESULT):
            future = self.pending.get(frame[2])
            if future is not None and not future.done():
                future.set_result(frame[3])
        elif kind == CREDIT:
            worker, count = frame[2], frame[3]
            inflight = self.credit.get(worker)
            if inflight is not None:
                self.credit[worker] = max(0, inflight - count)
                waiters = self.credit_waiters.get(worker)
                if waiters:
                    _wake_all(waiters)
        elif kind == ERROR:
            rid, code, message, fields = frame[2], frame[3], frame[4], frame[5]
            error = error_from_wire(code, message, fields)
            if rid == 0:
                self._on_refused_sends(error, fields)
                return
            future = self.pending.get(rid)
            if future is not None and not future.done():
                future.set_exception(error)
        elif kind == GOSSIP:
            if self._links.on_gossip is not None:
                self._links.on_gossip(frame[2])
        elif kind == BYE:
            log.info("peer %s left: %s", self.label, frame[2])
            self._links.lost(self, LinkState.GONE, "the node stopped")
        else:
            log.warning("unexpected frame kind %d from peer %s", kind, self.label)

    def _on_refused_sends(self, error: AutonomyError, fields: dict[str, Any]) -> None:
        """A peer refused one-way messages (unknown or stopped worker, window exceeded)."""
        worker = fields.get("worker")
        if isinstance(worker, str) and self.credit.pop(worker, None) is not None:
            log.warning(
                "one-way messages to %s on %s were not delivered: %s", worker, self.label, error
            )
            _fail_all(self.credit_waiters.get(worker, deque()), error)
        else:
            log.debug("one-way messages to %s on %s refused: %s", worker, self.label, error)

    def _on_event(self, event: PeerEvent, reason: str) -> None:
        links = self._links
        if event is PeerEvent.RETRYING:
            if self.state is LinkState.CONNECTING and not self.retrying:
                self.retrying = True  # never reached, and nothing listens there (yet)
                self.reason = reason
                links.changed(self)
            return
        if event is PeerEvent.UP:
            was = self.state
            self.state = LinkState.UP
            self.reason = ""
            self.handshake_closed = False
            self.since = links.loop.time()
            _wake_all(self.up_waiters)
            links.changed(self)
            if was is not LinkState.CONNECTING and was is not LinkState.UP:
                log.info("peer %s is back", self.label)
                # A restarted peer does not know us yet: introduce ourselves again.
                with contextlib.suppress(AutonomyError):
                    assert self.dealer is not None
                    self.dealer.send(links.identity.hello(self.next_rid()))
            return
        if self.state in (LinkState.GONE, LinkState.CLOSED, LinkState.REFUSED) and (
            event is not PeerEvent.REFUSED
        ):
            return
        state = LinkState.REFUSED if event is PeerEvent.REFUSED else LinkState.DOWN
        if state is LinkState.DOWN and self.state is LinkState.DOWN and self.handshake_closed:
            reason = self.reason  # "connection lost" after a failed handshake says less
        if self.state is not state:
            # Loud only when it fails somebody; a connection that drops with nothing in
            # flight (a node stopping before our hello reached it) is news, not trouble.
            waiting = sum(not w.done() for w in (*self.up_waiters, *self.slot_waiters))
            busy = len(self.pending) + waiting > self.quiet or any(
                _any_waiting(waiters) for waiters in self.credit_waiters.values()
            )
            log.log(
                logging.WARNING if busy or state is LinkState.REFUSED else logging.INFO,
                "peer %s: %s",
                self.label,
                reason,
            )
        links.lost(self, state, reason)
        self.handshake_closed = event is PeerEvent.HANDSHAKE_CLOSED or (
            self.handshake_closed and event is PeerEvent.LOST
        )


class Links:
    """Every peer this node dials, by endpoint: dialed on first use, kept until forgotten."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        *,
        max_frame_bytes: int,
        control_timeout_s: float,
    ) -> None:
        self.transport = transport
        self.identity = identity
        self.loop = transport.loop
        self.deadlines = Deadlines(self.loop)
        self.max_frame_bytes = max_frame_bytes
        self.control_timeout_s = control_timeout_s
        self.closed = False
        self.closed_reason = ""
        self.on_change: Callable[[Link], None] | None = None
        """Told of every change of a link's state (the zone's membership listens)."""
        self.on_gossip: Callable[[object], None] | None = None
        """Told of the gossip a peer sends back over our connection to it."""
        self._links: dict[str, Link] = {}

    def __len__(self) -> int:
        return len(self._links)

    def __iter__(self) -> Any:
        return iter(list(self._links.values()))

    def find(self, endpoint: str) -> Link | None:
        """The link to ``endpoint``, if this node dialed it."""
        return self._links.get(endpoint)

    def get(self, endpoint: str, name: str = "") -> Link:
        """The link to ``endpoint``, dialed now if it is new.

        Raises:
            NodeClosedError: this node is stopping.
            PeerUnavailableError: ``endpoint`` cannot be dialed (malformed).
        """
        link = self._links.get(endpoint)
        if link is not None:
            if name and not link.name:
                link.name = name
            return link
        if self.closed:
            raise NodeClosedError(self.closed_reason)
        link = Link(self, endpoint, name, self.loop.time())
        link.dealer = self.transport.dial(endpoint, link._on_message, link._on_event)
        self._links[endpoint] = link
        return link

    async def connect(self, endpoint: str, timeout_s: float) -> Link:
        """Reach the node at ``endpoint``: a hello answered from the same zone.

        Raises:
            PeerUnavailableError: nothing answered in time.
            SecurityError: the node there belongs to another zone.
            ProtocolError: it answered with something that is not a hello.
        """
        link = self.get(endpoint)
        rid = link.next_rid()
        link.quiet += 1
        try:
            info = await link._call(rid, self.identity.hello(rid), "", timeout_s)
        except ReplyTimeoutError as exc:
            raise PeerUnavailableError(endpoint, "no answer to hello") from exc
        finally:
            link.quiet -= 1
        if (
            not isinstance(info, list)
            or len(info) != 4
            or not all(isinstance(part, str) for part in info)
        ):
            raise ProtocolError(f"node at {endpoint} answered hello with {info!r}")
        name, zone, _, instance = info
        if zone != self.identity.zone:
            raise SecurityError(f"node {name!r} at {endpoint} belongs to zone {zone!r}")
        link.name = name
        link.instance = instance
        return link

    def changed(self, link: Link) -> None:
        if self.on_change is not None and not self.closed:
            self.on_change(link)

    def lost(self, link: Link, state: LinkState, reason: str) -> None:
        """Fail everything waiting on ``link``: it is down, refused us, left, or we close it."""
        link.state = state
        link.reason = reason
        link.since = self.loop.time()
        if state is LinkState.CLOSED and self.closed:
            error: AutonomyError = NodeClosedError(self.closed_reason)
        else:
            error = PeerUnavailableError(link.label, reason)
        for future in link.pending.values():
            if not future.done():
                future.set_exception(_fresh(error))
        for waiters in link.credit_waiters.values():
            _fail_all(waiters, error)
        _fail_all(link.up_waiters, error)
        _fail_all(link.slot_waiters, error)
        # Windows restart from zero: a restarted peer has fresh mailboxes.
        link.credit.clear()
        self.changed(link)  # liveness decides membership

    def dialer_left(self, endpoint: str, ident: bytes) -> None:
        """A node that dialed us said goodbye: if we dial it too, that link is gone. Only
        the node itself may say so: its dialer's routing id is its instance."""
        link = self._links.get(endpoint)
        if (
            link is not None
            and ident == link.instance.encode()
            and link.state not in (LinkState.GONE, LinkState.CLOSED)
        ):
            log.info("peer %s left", link.label)
            self.lost(link, LinkState.GONE, "the node stopped")

    def forget(self, endpoint: str, reason: str) -> None:
        """Close the link to a node that left the zone for good."""
        link = self._links.pop(endpoint, None)
        if link is None:
            return
        self.lost(link, LinkState.CLOSED, reason)
        if link.dealer is not None:
            self.transport.forget(link.dealer)

    def retire_idle(self) -> int:
        """Close the links unused since the last call (and not watched); returns how many.
        A call on a closed link's node opens a new one."""
        retired = 0
        for link in list(self._links.values()):
            if link.watched or link.frames_sent != link.used_mark or not link.is_idle():
                link.used_mark = link.frames_sent
                continue
            del self._links[link.endpoint]
            link.state = LinkState.CLOSED
            link.reason = "closed for idleness"
            link.retired = True
            if link.dealer is not None:
                self.transport.forget(link.dealer)
            retired += 1
        if retired:
            log.debug("closed %d idle connection(s)", retired)
        return retired

    def close(self, reason: str) -> None:
        """Say goodbye on every live link and fail everything in flight with
        `NodeClosedError`. The sockets close with the transport."""
        self.closed = True
        self.closed_reason = reason
        bye = encode(BYE, "node stopped")
        for link in self._links.values():
            if link.dealer is not None and link.state is LinkState.UP:
                with contextlib.suppress(AutonomyError):
                    link.dealer.send(bye)
            self.lost(link, LinkState.CLOSED, reason)
        self.deadlines.close()


async def _park(waiters: deque[asyncio.Future[None]], deadline: float) -> bool:
    """Wait in ``waiters`` until woken (True) or until ``deadline`` in loop time (False).
    Whoever wakes a waiter may also fail it: that exception is raised here.

    A waiter is never searched for and removed: wakers pop waiters from the front and skip
    those already done (timed out or cancelled). Removing it by value cost O(waiters) each,
    and made 30,000 callers waiting for 10,000 call slots quadratic.
    """
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        async with asyncio.timeout_at(deadline):
            await waiter
    except TimeoutError:
        return False
    return True


def _wake_first(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)


def _fail_all(waiters: deque[asyncio.Future[None]], error: AutonomyError) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_exception(_fresh(error))


def _any_waiting(waiters: deque[asyncio.Future[None]]) -> bool:
    return any(not waiter.done() for waiter in waiters)


def _fresh(error: AutonomyError) -> AutonomyError:
    """A new instance of ``error`` (one exception object must not be raised in many tasks)."""
    reduced: Any = error.__reduce__()
    return reduced[0](*reduced[1])  # type: ignore[no-any-return]
