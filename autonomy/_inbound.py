"""The ROUTER's side of the mesh: every frame a dialer sends us, dispatched and answered.

Requests and one-way messages go to the host node's mailboxes, with a reply route
(`DialerReply`) or a credit window (`DialerCredit`) that answer through the ROUTER;
HELLO, START, STOP, LIST, PING, MEMBERS and BYE are answered here. A malformed frame is
refused with an answer where it names a request, and logged once per dialer: nothing a peer
sends stops the socket or the node.

Knows the node only as its `Identity`, its `Workers` and a function that starts a shipped
worker, and the zone only through `ZoneView`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from ._errors import (
    AutonomyError,
    MailboxFullError,
    NodeClosedError,
    ProtocolError,
    SecurityError,
    WorkerNotFoundError,
    WorkerStartError,
)
from ._mailbox import Mailbox, Workers
from ._peer import SEND_WINDOW, Identity, Links
from ._protocol import (
    BYE,
    CREDIT,
    GOSSIP,
    HELLO,
    LIST,
    MEMBERS,
    PING,
    REQUEST,
    SEND,
    START,
    STATS,
    STOP,
    VERSION,
    check_frame,
    check_name,
    encode,
    encode_error,
    encode_reply,
    encode_result,
    request_id_in,
    request_id_of,
    split,
)
from ._transport import Transport
from ._worker import CreditLine

__all__ = ["CREDIT_BATCH", "REMOTE_QUEUE_LIMIT", "DialerCredit", "DialerReply", "Inbound"]

log = logging.getLogger("autonomy.node")

REMOTE_QUEUE_LIMIT: int = 100_000  # not Final: the tests lower it (see _peer.SEND_WINDOW)
"""Hard limit of a worker's queue for remote senders, who are bounded by their credit
windows and MAX_PENDING_PER_PEER already: past it, a sender that ignores those bounds gets
`MailboxFullError` instead of growing our memory."""

CREDIT_BATCH: Final = 100
"""A receiver returns credit for one-way messages in batches of this many."""


class ZoneView(Protocol):
    """What the inbound side tells the zone's membership, and asks of it."""

    def heard_of(self, name: str, endpoint: str, instance: str, source: str) -> None: ...

    def member_list(self) -> list[list[Any]]: ...

    def gossip(self, payload: object) -> None: ...

    def check(self, name: str) -> None: ...


class DialerReply:
    """The reply route of one remote request: a `ReplyChannel` answered through the ROUTER.

    It is done once answered, or once the caller's deadline has passed (then the request
    is dropped unhandled: nobody waits for it)."""

    __slots__ = ("_answered", "_deadline", "_ident", "_inbound", "_rid")

    def __init__(self, inbound: Inbound, ident: bytes, rid: int, deadline: float) -> None:
        self._inbound = inbound
        self._ident = ident
        self._rid = rid
        self._deadline = deadline
        self._answered = False

    def done(self) -> bool:
        return self._answered or (
            self._deadline != 0.0 and self._inbound.loop.time() > self._deadline
        )

    def set_result(self, result: str, /) -> None:
        self._answered = True
        self._inbound.answer(self._ident, encode_reply(self._rid, result))

    def set_exception(self, exception: BaseException, /) -> None:
        self._answered = True
        self._inbound.answer(self._ident, encode_error(self._rid, exception))


class DialerCredit:
    """One remote sender's window of one-way messages to one worker (a `CreditLine`):
    credit goes back in batches as they are handled, and all of it whenever the worker's
    queue runs dry, so that no sender's window can stall, whatever its size."""

    __slots__ = ("_ident", "_inbound", "_lines", "_worker", "owed", "queued")

    def __init__(self, inbound: Inbound, ident: bytes, worker: str, lines: dict[Any, Any]) -> None:
        self._inbound = inbound
        self._ident = ident
        self._worker = worker
        self._lines = lines
        self.queued = 0
        """One-way messages from this sender queued or in hand."""
        self.owed = 0
        """Handled, not credited yet."""

    def handled(self, queue_empty: bool) -> None:
        self.queued -= 1
        self.owed += 1
        if self.owed >= CREDIT_BATCH:
            self.flush()
        if queue_empty:
            for line in self._lines.values():
                line.flush()

    def flush(self) -> None:
        if self.owed:
            self._inbound.answer(self._ident, encode(CREDIT, self._worker, self.owed))
            self.owed = 0

    def dropped(self, count: int, error: Exception) -> None:
        log.warning(
            "worker %r stopped with %d one-way messages from %r queued: sender told",
            self._worker,
            count,
            self._inbound.dialer_name(self._ident),
        )
        self._inbound.answer(self._ident, encode_error(0, error))


class Inbound:
    """Dispatches the frames of the node's ROUTER."""

    def __init__(
        self,
        identity: Identity,
        transport: Transport,
        links: Links,
        workers: Workers,
        zone: ZoneView,
        *,
        start_shipped: Callable[[str, bytes], None],
        stats: Callable[[], dict[str, Any]],
        stop_grace_s: float,
    ) -> None:
        self._workers = workers
        self._start_shipped = start_shipped
        self._stats = stats
        self._stop_grace_s = stop_grace_s
        self.running = True
        """False once the node stops: requests are then refused with NodeClosedError."""
        self.rejected = 0
        """Frames refused as malformed, of another version, or over the limit."""
        self._identity = identity
        self._transport = transport
        self._links = links
        self._zone = zone
        self.loop = transport.loop
        self._max_frame_bytes = links.max_frame_bytes
        self._dialers: dict[bytes, tuple[str, str]] = {}
        """Routing id -> (name, endpoint) of the nodes that said hello."""
        self._bad_frames: dict[bytes, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        transport.on_unroutable = self._gone

    @property
    def dialers(self) -> int:
        """Nodes that dialed this one and said hello."""
        return len(self._dialers)

    def channels(self) -> list[tuple[str, bytes]]:
        """``(name, routing id)`` of the nodes connected to this one that said hello: frames
        can go back to them over their own connections (see `answer`)."""
        return [(name, ident) for ident, (name, _) in self._dialers.items()]

    def _gone(self, ident: bytes) -> None:
        """A dialer's connection is gone: no more frames go back to it that way, and the
        zone checks whether the node is."""
        known = self._dialers.pop(ident, None)
        if known is not None:
            self._zone.check(known[0])

    def dialer_name(self, ident: bytes) -> str:
        known = self._dialers.get(ident)
        return known[0] if known is not None else repr(ident)

    def answer(self, ident: bytes, frame: bytes) -> None:
        """Send ``frame`` to a dialer; one that is gone by then loses it (nobody to tell)."""
        if self.closed:
            return
        try:
            self._transport.router_send(ident, frame)
        except AutonomyError as exc:
            log.debug("cannot answer dialer %r: %s", ident, exc)

    def on_message(self, ident: bytes, data: bytes) -> None:
        """The transport's handler for one ZeroMQ message from a dialer (one or more frames).

        A burst of requests or one-way messages to one worker (a sender coalesces what it
        sends in one loop turn) is queued as a batch: the worker, the sender's window and
        the time are looked up once, not per frame. Each frame is still checked in full.
        """
        frames, error = split(data, self._max_frame_bytes)
        logged = False  # the log counts bad messages, not the frames in them
        worker = None  # the worker of the frames in a row of one kind, and where they go
        kind = 0
        mailbox: Mailbox | None = None
        line: CreditLine | None = None
        now = 0.0
        for each in frames:
            if (
                mailbox is not None
                and type(each) is list
                and len(each) >= 5
                and each[1] == kind
                and each[0] == VERSION
                and self.running
            ):
                if (
                    kind == REQUEST
                    and len(each) == 6
                    and each[3] == worker
                    and type(each[2]) is int
                    and each[2] > 0
                    and type(each[4]) is str
                    and type(each[5]) is int
                    and each[5] >= 0
                    and mailbox.queued < REMOTE_QUEUE_LIMIT
                ):
                    timeout_ms = each[5]
                    deadline = now + timeout_ms / 1000 if timeout_ms else 0.0
                    mailbox.put_nowait(each[4], DialerReply(self, ident, each[2], deadline))
                    continue
                if (
                    line is not None
                    and len(each) == 5
                    and each[2] == worker
                    and each[4] == 0
                    and type(each[3]) is str
                    and line.queued < 2 * SEND_WINDOW
                ):
                    line.queued += 1
                    mailbox.put_nowait(each[3], None, line)
                    continue
            mailbox = None
            try:
                frame = check_frame(each)
            except ProtocolError as exc:
                self._bad_frame(ident, request_id_in(each), exc, log_it=not logged)
                logged = True
                continue
            self._on_frame(ident, frame)
            kind = frame[1]
            if kind in (SEND, REQUEST) and self.running:
                worker = frame[3] if kind == REQUEST else frame[2]
                mailbox = self._workers.get(worker)
                if mailbox is not None:
                    line = mailbox.credit_lines.get(ident) if kind == SEND else None
                    now = self.loop.time()
        if error is not None:
            # Over the limit (under libzmq's cut at twice the limit) a whole request may
            # still name its id: answer it.
            rid = request_id_of(data) if not frames else None
            self._bad_frame(ident, rid, error, log_it=not logged)

    def _on_frame(self, ident: bytes, frame: list[Any]) -> None:
        kind = frame[1]
        if not self.running:
            rid = request_id_in(frame)
            if rid:
                self.answer(ident, encode_error(rid, NodeClosedError("node stopping")))
            return
        try:
            if kind == REQUEST:
                _, _, rid, worker, message, timeout_ms = frame
                mailbox = self._mailbox(worker)
                if mailbox.queued >= REMOTE_QUEUE_LIMIT:
                    raise MailboxFullError(worker, self._identity.name, REMOTE_QUEUE_LIMIT)
                deadline = self.loop.time() + timeout_ms / 1000 if timeout_ms else 0.0
                mailbox.put_nowait(message, DialerReply(self, ident, rid, deadline))
            elif kind == SEND:
                self._on_send(ident, frame[2], frame[3], frame[4])
            elif kind == HELLO:
                self._on_hello(ident, frame)
            elif kind == START:
                self._on_start(ident, frame[2], frame[3], frame[4])
            elif kind == STOP:
                self._spawn(self._on_stop(ident, frame[2], frame[3]))
            elif kind == LIST:
                self.answer(ident, encode_result(frame[2], self._workers.describe()))
            elif kind == PING:
                self.answer(ident, encode_result(frame[2], None))
            elif kind == STATS:
                self.answer(ident, encode_result(frame[2], self._stats()))
            elif kind == MEMBERS:
                self.answer(ident, encode_result(frame[2], self._zone.member_list()))
            elif kind == GOSSIP:
                self._zone.gossip(frame[2])
            elif kind == BYE:
                self._on_bye(ident)
            else:
                raise ProtocolError(f"a dialer may not send frames of kind {kind}")
        except AutonomyError as exc:
            rid = request_id_in(frame)
            if isinstance(exc, ProtocolError):
                self._bad_frame(ident, rid, exc)
            elif rid:
                self.answer(ident, encode_error(rid, exc))
            elif kind == SEND:
                self.answer(ident, encode_error(0, exc))

    def _mailbox(self, worker: str) -> Mailbox:
        mailbox = self._workers.get(worker)
        if mailbox is None:
            raise WorkerNotFoundError(worker, self._identity.name)
        return mailbox

    def _bad_frame(
        self, ident: bytes, rid: int | None, exc: ProtocolError, *, log_it: bool = True
    ) -> None:
        # Logged once per dialer at WARNING, then at DEBUG with a count: a misbehaving or
        # hostile dialer cannot flood the log.
        self.rejected += 1
        if rid:
            self.answer(ident, encode_error(rid, exc))
        if not log_it:
            return
        count = self._bad_frames.get(ident, 0) + 1
        if len(self._bad_frames) > 1000:
            self._bad_frames.clear()
        self._bad_frames[ident] = count
        if count == 1:
            log.warning("refused a bad frame from dialer %r: %s", ident, exc)
        elif count % 1000 == 0:
            log.warning("refused %d bad frames from dialer %r so far", count, ident)
        else:
            log.debug("refused a bad frame from dialer %r: %s", ident, exc)

    def _on_send(self, ident: bytes, worker: str, message: str, rid: int) -> None:
        mailbox = self._mailbox(worker)
        line = mailbox.credit_lines.get(ident)
        if line is None:
            line = mailbox.credit_lines[ident] = DialerCredit(
                self, ident, worker, mailbox.credit_lines
            )
        if line.queued >= 2 * SEND_WINDOW:
            # The sender ignored its credit window: refuse rather than queue without bound.
            raise MailboxFullError(worker, self._identity.name, 2 * SEND_WINDOW)
        line.queued += 1
        mailbox.put_nowait(message, None, line)
        if rid:
            self.answer(ident, encode_result(rid, None))

    def _on_hello(self, ident: bytes, frame: list[Any]) -> None:
        _, _, rid, name, zone, endpoint, instance = frame
        me = self._identity
        if zone != me.zone:
            raise SecurityError(f"node {name!r} of zone {zone!r} refused by zone {me.zone!r}")
        if ident not in self._dialers:
            log.debug("node %r (%s) dialed us", name, endpoint)
        self._dialers[ident] = (name, endpoint)
        self.answer(ident, encode_result(rid, [me.name, me.zone, me.endpoint, me.instance]))
        # Our dialers' routing id is their instance: a hello that claims another node's
        # instance is answered, but teaches the zone nothing.
        if endpoint and ident == instance.encode():
            self._zone.heard_of(name, endpoint, instance, "hello")

    def _on_bye(self, ident: bytes) -> None:
        known = self._dialers.pop(ident, None)
        for mailbox in self._workers.mailboxes():
            mailbox.credit_lines.pop(ident, None)
        if known is not None:
            self._links.dialer_left(known[1], ident)

    def _on_start(self, ident: bytes, rid: int, name: str, payload: bytes) -> None:
        try:
            check_name(name)
        except ValueError as exc:
            raise WorkerStartError(name, self._identity.name, str(exc)) from exc
        self._start_shipped(name, payload)
        self.answer(ident, encode_result(rid, None))

    async def _on_stop(self, ident: bytes, rid: int, name: str) -> None:
        try:
            await self._workers.stop(name, self._stop_grace_s)
        except AutonomyError as exc:
            self.answer(ident, encode_error(rid, exc))
        else:
            self.answer(ident, encode_result(rid, None))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def say_goodbye(self) -> None:
        """Tell every node that dialed us that we leave."""
        bye = encode(BYE, "node stopped")
        for ident in self._dialers:
            self.answer(ident, bye)

    async def close(self, grace_s: float) -> None:
        """Stop answering; let the STOP requests in progress end (up to ``grace_s``)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        self.closed = True
