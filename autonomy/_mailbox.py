"""A worker's bounded queue and the task that drains it, one message at a time.

Each queued entry is ``(message, target)``, where the target says who waits for the reply:

- ``None``: a local ``send_message`` (nobody waits);
- ``bytes``: a remote ``send_message``; the bytes are the dialer's identity, told when the
  message was handled so that its credit window reopens;
- ``tuple``: a remote request ``(dialer identity, request id, deadline or 0.0)``;
- an ``asyncio.Future``: a local request.

Plain tuples and the future itself, not envelope objects: the hot path allocates as little
as it can (DESIGN.md, performance principles). Knows nothing of sockets: replies to remote
callers go out through the owning node.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from ._errors import NoReplyError, WorkerError, WorkerStoppedError
from ._protocol import encode_error
from ._worker import _CLOSED, _OPEN, Context

if TYPE_CHECKING:
    from ._node import Node
    from ._worker import Worker

__all__ = ["CREDIT_BATCH", "MAILBOX_SIZE", "Mailbox"]

log = logging.getLogger("autonomy.worker")

MAILBOX_SIZE: Final = 1000
"""Messages a worker may have queued from local senders before they wait for room."""

CREDIT_BATCH: Final = 100
"""A receiver returns credit for one-way messages in batches of this many."""


class Mailbox:
    """The framework's side of one worker: its queue, its drain task and its counters."""

    __slots__ = (
        "_idle",
        "_queue",
        "_space",
        "_stopping",
        "_task",
        "failed",
        "handled",
        "maxsize",
        "name",
        "owner",
        "remote",
        "worker",
    )

    def __init__(self, owner: Node, name: str, worker: Worker, maxsize: int = MAILBOX_SIZE) -> None:
        self.owner = owner
        self.name = name
        self.worker = worker
        self.maxsize = maxsize
        self.handled = 0
        """Messages whose handler has returned or raised."""
        self.failed = 0
        """Messages whose handler raised."""
        self.remote: dict[bytes, list[int]] = {}
        """Per remote sender: [one-way messages queued or in hand, handled but not credited]."""
        self._queue: deque[tuple[str, Any]] = deque()
        self._idle: asyncio.Future[None] | None = None
        self._space: deque[asyncio.Future[None]] = deque()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

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

    def put_nowait(self, message: str, target: Any) -> None:
        """Queue without a bound check (remote senders are bounded by their credit window)."""
        self._queue.append((message, target))
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
        owner = self.owner
        handle = self.worker.handle_message
        while True:
            if not queue:
                if self._stopping:
                    return
                self._idle = loop.create_future()
                await self._idle
                continue
            message, target = queue.popleft()
            if self._space:
                self._wake_one_sender()
            kind = type(target)
            if kind is tuple:
                deadline = target[2]
                if deadline and loop.time() > deadline:
                    log.info(
                        "worker %r: dropped a request whose caller gave up (deadline passed)",
                        self.name,
                    )
                    continue
            elif target is not None and kind is not bytes and target.done():
                continue  # a local caller that gave up (timed out or cancelled)
            context = Context(self, target)
            try:
                await handle(context, message)
            except asyncio.CancelledError:
                context._state = _CLOSED
                self._fail(target, WorkerStoppedError(self.name, owner.name))
                raise
            except Exception as exc:
                self.failed += 1
                if context._state == _OPEN and context.expects_reply():
                    log.warning(
                        "worker %r raised %s: %s (sent to the caller)",
                        self.name,
                        type(exc).__qualname__,
                        exc,
                    )
                    error = WorkerError(
                        self.name,
                        owner.name,
                        type(exc).__qualname__,
                        str(exc),
                        "".join(traceback.format_exception(exc)),
                    )
                    self._fail(target, error)
                else:
                    log.error("worker %r raised while handling a message", self.name, exc_info=exc)
            else:
                if context._state == _OPEN and kind is not bytes and target is not None:
                    self._fail(target, NoReplyError(self.name, owner.name))
            context._state = _CLOSED
            self.handled += 1
            if kind is bytes:
                self._credit(target)

    def _credit(self, ident: bytes) -> None:
        """A one-way message from ``ident`` was handled: return credit to its sender in
        batches, and all of it whenever the queue runs dry (so that no sender's window can
        stall, whatever its size)."""
        entry = self.remote.get(ident)
        if entry is None:
            return
        entry[0] -= 1
        entry[1] += 1
        if entry[1] >= CREDIT_BATCH:
            self.owner._send_credit(ident, self.name, entry[1])
            entry[1] = 0
        if not self._queue:
            for sender, counts in self.remote.items():
                if counts[1]:
                    self.owner._send_credit(sender, self.name, counts[1])
                    counts[1] = 0

    def _fail(self, target: Any, exc: Exception) -> None:
        """Tell whoever waits on ``target`` that its message failed with ``exc``."""
        kind = type(target)
        if target is None or kind is bytes:
            return
        if kind is tuple:
            self.owner._send_to_dialer(target[0], encode_error(target[1], exc))
        elif not target.done():
            target.set_exception(exc)

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
        dropped_remote: dict[bytes, int] = {}
        while self._queue:
            _, target = self._queue.popleft()
            if target is None:
                dropped_local += 1
            elif type(target) is bytes:
                dropped_remote[target] = dropped_remote.get(target, 0) + 1
            else:
                self._fail(target, error)
        if dropped_local:
            log.warning(
                "worker %r stopped with %d one-way messages queued: dropped",
                self.name,
                dropped_local,
            )
        for ident, count in dropped_remote.items():
            self.owner._nack_remote_sends(ident, self.name, count, error)
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
