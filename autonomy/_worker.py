"""What a worker is (a `Protocol`: any object with `async handle_message`) and its `Context`.

No base class is required and no attribute is ever set on the user's object: the framework's
state for a worker lives in its `Mailbox` (``_mailbox``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, Protocol, final, runtime_checkable

from ._errors import ReplyError
from ._protocol import check_message, encode_reply

if TYPE_CHECKING:
    from ._mailbox import Mailbox

__all__ = ["Context", "Worker"]

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


@final
class Context:
    """The handle a worker gets with each message: it replies to that message's sender.

    Built by the framework only (one per message). Reply rules, decided here:

    - A reply to a message sent with ``send_message`` (nobody waits for it) is discarded,
      with a debug log line: a worker written for ``send_and_receive`` keeps working when
      someone only notifies it.
    - One reply per message: a second ``reply``, or a ``reply`` after ``handle_message``
      returned, raises :class:`ReplyError`. A request whose handler returns without replying
      fails at once at the caller with :class:`NoReplyError` (not by timeout).
    """

    __slots__ = ("_mailbox", "_state", "_target")

    def __init__(self, mailbox: Mailbox, target: Any) -> None:
        self._mailbox = mailbox
        self._target = target
        self._state = _OPEN

    @property
    def worker(self) -> str:
        """The name of the worker handling this message."""
        return self._mailbox.name

    @property
    def node(self) -> Any:
        """The local `Node` the worker runs on."""
        return self._mailbox.owner

    def expects_reply(self) -> bool:
        """True when the sender waits for a reply (``send_and_receive``)."""
        target = self._target
        return target is not None and type(target) is not bytes

    async def reply(self, message: str) -> None:
        """Send ``message`` back to the sender of the message being handled.

        Raises:
            MessageTypeError: ``message`` is not a ``str`` (nothing is sent).
            MessageTooLargeError: it does not fit in a frame.
            ReplyError: this message was already replied to, or its handler returned.
        """
        mailbox = self._mailbox
        check_message(message, mailbox.owner.max_frame_bytes, "reply")
        if self._state != _OPEN:
            raise ReplyError(
                "context.reply() called twice for one message"
                if self._state == _REPLIED
                else "context.reply() called after handle_message returned"
            )
        self._state = _REPLIED
        target = self._target
        if target is None or type(target) is bytes:
            log.debug("worker %r replied to a one-way message: reply discarded", mailbox.name)
        elif type(target) is tuple:  # a remote request: (dialer identity, request id, deadline)
            mailbox.owner._send_to_dialer(target[0], encode_reply(target[1], message))
        elif not target.done():  # a local request's future (done if the caller gave up)
            target.set_result(message)

    def __repr__(self) -> str:
        state = ("open", "replied", "closed")[self._state]
        return f"<Context worker={self._mailbox.name!r} {state}>"
