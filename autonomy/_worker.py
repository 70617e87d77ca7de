"""What a worker is (a `Protocol`: any object with `async handle_message`), its `Context`, and
the reply channel a `Context` answers through.

No base class is required and no attribute is ever set on the user's object: the framework's
state for a worker lives in its `Mailbox` (``_mailbox``). A `Context` knows nothing of frames
or nodes: it answers through a `ReplyChannel`, which is a local caller's future or a remote
caller's reply route (``_inbound``), and returns credit to a remote one-way sender through
a `CreditLine`.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol, final, runtime_checkable

from ._errors import ReplyError
from ._protocol import check_message

__all__ = ["Context", "CreditLine", "ReplyChannel", "Worker"]

log = logging.getLogger("autonomy.worker")

_OPEN: Final = 0
_REPLIED: Final = 1
_CLOSED: Final = 2


@runtime_checkable
class Worker(Protocol):
    """Anything with ``async def handle_message(self, context, message)`` is a worker.

    The node calls it once per message, one message at a time, in arrival order.
    """

    async def handle_message(self, context: Context, message: str) -> None: ...


class ReplyChannel(Protocol):
    """Whoever waits for the answer to one message. An ``asyncio.Future`` is one (a local
    caller); ``_inbound`` routes answers to a remote caller.

    ``done()`` is true once answered or once nobody waits any more (the caller timed out,
    was cancelled, or its deadline passed): the message is then not handled at all, and no
    answer is sent.
    """

    def done(self) -> bool: ...

    def set_result(self, result: str, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class CreditLine(Protocol):
    """A remote one-way sender's window on one worker: told when its messages were handled
    (so that the window reopens) or dropped (so that the sender hears of it)."""

    queued: int
    """The sender's one-way messages queued or in hand."""

    def handled(self, queue_empty: bool) -> None: ...

    def dropped(self, count: int, error: Exception) -> None: ...


class Owner(Protocol):
    """What a worker's context may say of the node the worker runs on."""

    @property
    def name(self) -> str: ...

    @property
    def max_frame_bytes(self) -> int: ...


@final
class Context:
    """The handle a worker gets with each message: it replies to that message's sender.

    Built by the framework only (one per message). Reply rules:

    - A reply to a message sent with ``send_message`` (nobody waits for it) is discarded,
      with a debug log line: a worker written for ``send_and_receive`` keeps working when
      someone only notifies it.
    - One reply per message: a second ``reply``, or a ``reply`` after ``handle_message``
      returned, raises :class:`ReplyError`. A request whose handler returns without replying
      fails at once at the caller with :class:`NoReplyError` (not by timeout).
    """

    __slots__ = ("_channel", "_credit", "_message", "_owner", "_state", "_worker")

    def __init__(
        self,
        owner: Owner,
        worker: str,
        message: str,
        channel: ReplyChannel | None,
        credit: CreditLine | None = None,
    ) -> None:
        self._owner = owner
        self._worker = worker
        self._message = message
        self._channel = channel
        self._credit = credit
        self._state = _OPEN

    @property
    def worker(self) -> str:
        """The name of the worker handling this message."""
        return self._worker

    @property
    def node(self) -> Any:
        """The local `Node` the worker runs on."""
        return self._owner

    def expects_reply(self) -> bool:
        """True when the sender waits for a reply (``send_and_receive``)."""
        return self._channel is not None

    async def reply(self, message: str) -> None:
        """Send ``message`` back to the sender of the message being handled.

        Raises:
            MessageTypeError: ``message`` is not a ``str`` (nothing is sent).
            MessageTooLargeError: it does not fit in a frame.
            ReplyError: this message was already replied to, or its handler returned.
        """
        check_message(message, self._owner.max_frame_bytes, "reply")
        if self._state != _OPEN:
            raise ReplyError(
                "context.reply() called twice for one message"
                if self._state == _REPLIED
                else "context.reply() called after handle_message returned"
            )
        self._state = _REPLIED
        channel = self._channel
        if channel is None:
            log.debug("worker %r replied to a one-way message: reply discarded", self._worker)
        elif not channel.done():  # done: the caller gave up meanwhile
            channel.set_result(message)

    def __repr__(self) -> str:
        state = ("open", "replied", "closed")[self._state]
        return f"<Context worker={self._worker!r} {state}>"
