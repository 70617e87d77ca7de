"""A worker's bounded queue and the task that drains it, one message at a time.

Each queued entry is the message's `Context`: the message, the `ReplyChannel` of whoever
waits for the answer (None for a one-way message) and, for a remote one-way sender, its
`CreditLine`. One object per message, built when the message is queued: the hot path
allocates as little as it can (DESIGN.md, performance principles). Knows nothing of sockets
or frames: answers leave through the channels.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from bisect import bisect_left
from collections import deque
from typing import Any, Final

from ._errors import (
    NoReplyError,
    WorkerError,
    WorkerExistsError,
    WorkerNotFoundError,
    WorkerStoppedError,
)
from ._worker import _CLOSED, _OPEN, Context, CreditLine, Owner, ReplyChannel, Worker

__all__ = ["HANDLER_BUCKETS_S", "MAILBOX_SIZE", "HandlerTimes", "Mailbox", "Workers"]

log = logging.getLogger("autonomy.worker")

MAILBOX_SIZE: Final = 1000
"""Messages a worker may have queued from local senders before they wait for room."""


HANDLER_BUCKETS_S: Final[tuple[float, ...]] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0
)  # fmt: skip
"""Upper bounds (seconds) of the handler-time histogram's buckets (Prometheus style). Typed
as a tuple of any length: mypyc keeps a fixed-length one unboxed, and a compiled function
that takes it whole finds it unset ("value for final name ... was not set")."""


class HandlerTimes:
    """One worker's handler times, as a Prometheus histogram.

    A handler's time runs from the end of the one before it (or from the wake-up that found
    its message, or the drop of an expired request) to its own end: one clock reading a
    message, two after an idle wait. It includes the fraction of a microsecond of taking the
    message off the queue. Only times over the first bound are counted in their bucket (a
    comparison, no search, for the common quick handler): the first bucket holds the rest
    of the messages handled since ``base``.
    """

    __slots__ = ("base", "over", "sum")

    def __init__(self, base: int) -> None:
        self.base = base
        """The worker's handled count when its times began to be kept."""
        self.over = [0] * (len(HANDLER_BUCKETS_S) + 1)
        """Per bucket over the first (not cumulative; the first entry stays 0)."""
        self.sum = 0.0

    def as_dict(self, handled: int) -> dict[str, Any]:
        """``count``, ``sum`` and cumulative ``buckets`` keyed by their upper bound, for the
        worker's ``handled`` count."""
        over = self.over
        count = handled - self.base
        cumulative: dict[str, int] = {}
        total = count - sum(over)
        for index, bound in enumerate((*HANDLER_BUCKETS_S, "+Inf")):
            if index:
                total += over[index]
            cumulative[str(bound)] = total
        return {"count": count, "sum": self.sum, "buckets": cumulative}


class Mailbox:
    """The framework's side of one worker: its queue, its drain task and its counters."""

    __slots__ = (
        "_idle",
        "_queue",
        "_space",
        "_stopping",
        "_task",
        "credit_lines",
        "expired",
        "failed",
        "handled",
        "maxsize",
        "name",
        "owner",
        "times",
        "worker",
    )

    def __init__(
        self,
        owner: Owner,
        name: str,
        worker: Worker,
        maxsize: int = MAILBOX_SIZE,
        timed: bool = True,
    ) -> None:
        self.owner = owner
        self.name = name
        self.worker = worker
        self.maxsize = maxsize
        self.handled = 0
        """Messages whose handler has returned or raised."""
        self.failed = 0
        """Messages whose handler raised."""
        self.expired = 0
        """Requests dropped unhandled because their caller had given up."""
        self.times = HandlerTimes(0) if timed else None
        """How long each handler took (wall time, awaits included), once kept (`keep_times`)."""
        self.credit_lines: dict[Any, CreditLine] = {}
        """Per remote one-way sender (keyed by the sender's routing id), its window here."""
        self._queue: deque[Context] = deque()
        self._idle: asyncio.Future[None] | None = None
        self._space: deque[asyncio.Future[None]] = deque()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def keep_times(self) -> None:
        """Keep handler times from the next message taken off the queue."""
        if self.times is None:
            self.times = HandlerTimes(self.handled)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"autonomy-worker-{self.name}"
        )

    def __repr__(self) -> str:
        return f"<Mailbox {self.name!r} queued={len(self._queue)} handled={self.handled}>"

    @property
    def queued(self) -> int:
        return len(self._queue)

    def is_idle(self) -> bool:
        return not self._queue and self._idle is not None and not self._idle.done()

    def has_room(self) -> bool:
        return len(self._queue) < self.maxsize

    def put_nowait(
        self, message: str, channel: ReplyChannel | None, credit: CreditLine | None = None
    ) -> None:
        """Queue without a bound check (remote senders are bounded by their windows)."""
        self._queue.append(Context(self.owner, self.name, message, channel, credit))
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def wait_for_room(self) -> None:
        """Wait until a local sender may queue (backpressure); the caller bounds the wait.

        Raises:
            WorkerStoppedError: the worker stopped while we waited.
        """
        while len(self._queue) >= self.maxsize:
            if self._stopping:
                raise WorkerStoppedError(self.name, self.owner.name)
            waiter = asyncio.get_running_loop().create_future()
            self._space.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
                try:
                    self._space.remove(waiter)
                except ValueError:
                    pass

    def _wake_one_sender(self) -> None:
        while self._space:
            waiter = self._space.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _run(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        handle = self.worker.handle_message
        clock = time.perf_counter
        bounds = HANDLER_BUCKETS_S
        first = bounds[0]
        # Handler times (see HandlerTimes) with the current handler's start and the sum in
        # locals: one clock reading a message, none until someone looks.
        times: HandlerTimes | None = None
        over: list[int] = []
        total = start = 0.0
        while True:
            if times is None and self.times is not None:  # kept from the start, or looked at
                times = self.times
                times.base = self.handled
                over = times.over
                total = times.sum
                start = clock()
            if not queue:
                if self._stopping:
                    return
                self._idle = loop.create_future()
                await self._idle
                if times is not None:
                    start = clock()  # idle time is nobody's handler time
                continue
            context = queue.popleft()
            if self._space:
                self._wake_one_sender()
            channel = context._channel
            if channel is not None and channel.done():
                # The caller gave up (timed out, was cancelled, or its deadline passed).
                self.expired += 1
                log.info("worker %r: dropped a request whose caller gave up", self.name)
                if times is not None:
                    start = clock()  # not the next handler's time
                continue
            try:
                await handle(context, context._message)
            except asyncio.CancelledError:
                context._state = _CLOSED
                if channel is not None and not channel.done():
                    channel.set_exception(WorkerStoppedError(self.name, self.owner.name))
                raise
            except Exception as exc:
                self.failed += 1
                if context._state == _OPEN and channel is not None and not channel.done():
                    log.warning(
                        "worker %r raised %s: %s (sent to the caller)",
                        self.name,
                        type(exc).__qualname__,
                        exc,
                    )
                    channel.set_exception(
                        WorkerError(
                            self.name,
                            self.owner.name,
                            type(exc).__qualname__,
                            str(exc),
                            "".join(traceback.format_exception(exc)),
                        )
                    )
                else:
                    log.error("worker %r raised while handling a message", self.name, exc_info=exc)
            else:
                if context._state == _OPEN and channel is not None and not channel.done():
                    channel.set_exception(NoReplyError(self.name, self.owner.name))
            context._state = _CLOSED
            self.handled += 1
            if times is not None:
                now = clock()
                took = now - start
                if took > first:  # else the first bucket's: handled, not counted here
                    over[bisect_left(bounds, took)] += 1
                start = now
                total += took
                times.sum = total
            credit = context._credit
            if credit is not None:
                credit.handled(not queue)

    async def stop(self, grace_s: float) -> None:
        """Let the message in hand finish (up to ``grace_s``), fail everything queued.

        Queued requests get :class:`WorkerStoppedError`; remote senders of queued one-way
        messages are told once each; local one-way messages are counted in a warning.
        """
        if self._stopping:
            if self._task is not None:
                await asyncio.wait({self._task}, timeout=grace_s)
            return
        self._stopping = True
        error = WorkerStoppedError(self.name, self.owner.name)
        dropped_local = 0
        dropped_remote: dict[CreditLine, int] = {}
        while self._queue:
            context = self._queue.popleft()
            channel = context._channel
            if channel is not None:
                if not channel.done():
                    channel.set_exception(error)
            elif context._credit is not None:
                dropped_remote[context._credit] = dropped_remote.get(context._credit, 0) + 1
            else:
                dropped_local += 1
        if dropped_local:
            log.warning(
                "worker %r stopped with %d one-way messages queued: dropped",
                self.name,
                dropped_local,
            )
        for line, count in dropped_remote.items():
            line.dropped(count, error)
        for waiter in self._space:
            if not waiter.done():
                waiter.set_exception(error)
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=grace_s)
        if not done:
            log.warning(
                "worker %r did not finish its message within %.1f s: cancelled", self.name, grace_s
            )
            task.cancel()
            await asyncio.wait({task}, timeout=grace_s)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("worker %r task failed", self.name, exc_info=task.exception())


class Workers:
    """One node's worker registry: a `Mailbox` per worker name."""

    __slots__ = ("_owner", "by_name", "handler_times", "mailbox_size")

    def __init__(
        self, owner: Owner, mailbox_size: int = MAILBOX_SIZE, handler_times: bool | None = None
    ) -> None:
        self._owner = owner
        self.mailbox_size = mailbox_size
        self.handler_times = handler_times
        """True: handler times are kept (from the start, or since the first look); None: not
        until the first look (`keep_times`); False: never."""
        self.by_name: dict[str, Mailbox] = {}
        """The mailboxes by worker name (read-only for others: a lookup on the hot path)."""

    def __len__(self) -> int:
        return len(self.by_name)

    def keep_times(self) -> None:
        """Someone looks at the counters: keep every worker's handler times from now on
        (unless this node keeps none). Until then no clock is read a message."""
        if self.handler_times is not None:
            return
        self.handler_times = True
        for mailbox in self.by_name.values():
            mailbox.keep_times()

    def get(self, name: str) -> Mailbox | None:
        return self.by_name.get(name)

    def mailboxes(self) -> list[Mailbox]:
        return list(self.by_name.values())

    def add(self, name: str, worker: Worker) -> None:
        """Start ``worker`` under ``name``.

        Raises:
            WorkerExistsError: a worker of that name runs already.
        """
        if name in self.by_name:
            raise WorkerExistsError(name, self._owner.name)
        mailbox = Mailbox(self._owner, name, worker, self.mailbox_size, self.handler_times is True)
        self.by_name[name] = mailbox
        mailbox.start()
        log.debug("worker %r started on node %r", name, self._owner.name)

    async def stop(self, name: str, grace_s: float) -> None:
        """Stop the worker ``name`` (see `Mailbox.stop`).

        Raises:
            WorkerNotFoundError: no worker of that name runs.
        """
        mailbox = self.by_name.pop(name, None)
        if mailbox is None:
            raise WorkerNotFoundError(name, self._owner.name)
        await mailbox.stop(grace_s)
        log.debug("worker %r stopped on node %r", name, self._owner.name)

    async def stop_all(self, grace_s: float) -> None:
        mailboxes = list(self.by_name.values())
        self.by_name.clear()
        await asyncio.gather(*(mailbox.stop(grace_s) for mailbox in mailboxes))

    def describe(self) -> list[dict[str, Any]]:
        """``list_workers``: name, queued, handled and failed of each worker."""
        return [
            {"name": m.name, "queued": m.queued, "handled": m.handled, "failed": m.failed}
            for m in self.by_name.values()
        ]
