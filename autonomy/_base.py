"""The public node interface shared by `Node` and `RemoteNode`: validation and timeouts.

Every public method validates its arguments here, before any I/O, then hands over to one
``_do_*`` method that a local node implements with its mailboxes and a remote node with
frames on the wire. So a local and a remote worker behave the same to the caller, errors
included (STYLE.md, "local and remote nodes share one interface").
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import Any, Final

from ._protocol import check_message, check_name
from ._worker import Worker

__all__ = ["DEFAULT_TIMEOUT_MS", "NodeInterface", "timeout_seconds"]

DEFAULT_TIMEOUT_MS: Final = 30_000
"""Every waiting call has this finite default: nothing waits forever."""


def timeout_seconds(timeout: object, what: str = "timeout") -> float:
    """Convert a public timeout in milliseconds to seconds, validating it.

    A bad timeout is the caller's bug, found before any I/O: it raises the builtin the way
    any Python API does for a bad argument (the typed errors are for what can also happen
    across the wire).

    Raises:
        TypeError: it is not a number.
        ValueError: it is not a positive, finite number.
    """
    if type(timeout) is int and timeout > 0:  # the common case, first
        return timeout / 1000.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of milliseconds, got {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"{what} must be a positive number of milliseconds, got {timeout!r}")
    return timeout / 1000.0


def check_worker(worker: object) -> Worker:
    """Check that ``worker`` has an ``async def handle_message(self, context, message)``.

    Raises:
        TypeError: it has no such method (the builtin, as for any argument of the wrong
            type).
    """
    handler = getattr(worker, "handle_message", None)
    if handler is None or not callable(handler):
        raise TypeError(
            f"a worker needs an `async def handle_message(self, context, message)` method; "
            f"{type(worker).__name__} has none"
        )
    return worker  # type: ignore[return-value]


NAMES_REMEMBERED: Final = 4096


class NodeInterface(ABC):
    """The methods every node offers, local or remote (the user guide's API)."""

    __slots__ = ()
    _names: set[str]
    """Worker names this node's callers used that passed `check_name` (each subclass
    makes the set)."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The node's name, unique in its zone."""

    @property
    @abstractmethod
    def max_frame_bytes(self) -> int:
        """The largest frame this node sends or accepts."""

    async def start_worker(self, name: str, worker: Worker) -> None:
        """Start ``worker`` under ``name`` on this node.

        On a remote node the worker object is shipped by value (cloudpickle), so classes
        defined in your ``__main__`` work there too.

        Raises:
            WorkerExistsError: a worker of that name already runs on the node.
            WorkerStartError: (remote) the worker could not be unpickled or started there.
            TypeError: ``worker`` has no ``handle_message`` method.
        """
        check_name(name)
        await self._do_start_worker(name, check_worker(worker))

    async def stop_worker(self, name: str) -> None:
        """Stop the worker: the message in hand finishes, queued requests fail with
        :class:`WorkerStoppedError`.

        Raises:
            WorkerNotFoundError: no worker of that name runs on the node.
        """
        check_name(name)
        await self._do_stop_worker(name)

    async def list_workers(self) -> list[dict[str, Any]]:
        """The node's workers: a dict each with ``name``, ``queued``, ``handled``, ``failed``."""
        return await self._do_list_workers()

    async def stats(self) -> dict[str, Any]:
        """The node's counters: its workers, its peers, its traffic and its zone.

        A dict of plain values (the same for a local and a remote node): ``node``, ``zone``,
        ``endpoint``, ``instance``, ``uptime_s``, ``members``,
        ``messages_sent``/``_received`` and ``bytes_sent``/``_received`` (ZeroMQ messages,
        all sockets), ``refused_handshakes``, ``rejected_frames``, ``expired_requests``,
        ``connections`` (``dialed``, ``accepted``), ``workers`` (per name: ``handled``,
        ``failed``, ``queued``, ``expired``, and ``handler_seconds`` with its ``count``,
        ``sum`` and cumulative ``buckets``: the messages handled since the node's first
        ``stats()`` unless it keeps them from its start, absent if it keeps none) and
        ``peers`` (per peer: ``endpoint``, ``state``, ``in_flight``,
        ``frames_sent``/``_received``, ``messages_sent``/``_received``,
        ``bytes_sent``/``_received``, ``reconnects``).
        """
        return await self._do_stats()

    async def send_message(
        self, name: str, message: str, timeout: float = DEFAULT_TIMEOUT_MS
    ) -> None:
        """Send ``message`` to worker ``name`` without waiting for it to be handled.

        Delivery is at most once: a message already on the wire when its peer node dies is
        lost. ``timeout`` (ms) bounds only the wait for room when the worker's mailbox is full.

        Raises:
            MessageTypeError: ``message`` is not a ``str``.
            WorkerNotFoundError: no such worker (remotely: on the first message to it, or on
                the next one after it was stopped).
            ReplyTimeoutError: the worker's mailbox stayed full for ``timeout`` ms.
        """
        if type(name) is not str or name not in self._names:
            self._check_name(name)
        check_message(message, self.max_frame_bytes)
        await self._do_send(name, message, timeout_seconds(timeout))

    async def send_and_receive(
        self, name: str, message: str, timeout: float = DEFAULT_TIMEOUT_MS
    ) -> str:
        """Send ``message`` to worker ``name`` and return its reply.

        Args:
            name: the worker's name on this node.
            message: a ``str`` (use ``json.dumps`` for structured data).
            timeout: milliseconds to wait for the reply.

        Raises:
            MessageTypeError: ``message`` is not a ``str``.
            MessageTooLargeError: ``message`` does not fit in a frame.
            WorkerNotFoundError: no such worker on the node.
            WorkerError: the worker's handler raised (its type and message are attached).
            NoReplyError: the handler returned without replying.
            WorkerStoppedError: the worker was stopped with this message queued.
            PeerUnavailableError: (remote) the node died, left or cannot be reached.
            ReplyTimeoutError: no reply within ``timeout`` (an ``asyncio.TimeoutError``).
        """
        if type(name) is not str or name not in self._names:
            self._check_name(name)
        check_message(message, self.max_frame_bytes)
        return await self._do_request(name, message, timeout_seconds(timeout))

    def _check_name(self, name: object) -> None:
        """Validate a worker name once: the names that passed are remembered (a few
        thousand at most), so that a hot path checks a set instead."""
        check_name(name)
        names = self._names
        if len(names) >= NAMES_REMEMBERED:
            names.clear()
        names.add(name)  # type: ignore[arg-type]

    @abstractmethod
    async def _do_start_worker(self, name: str, worker: Worker) -> None: ...

    @abstractmethod
    async def _do_stop_worker(self, name: str) -> None: ...

    @abstractmethod
    async def _do_list_workers(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def _do_stats(self) -> dict[str, Any]: ...

    @abstractmethod
    async def _do_send(self, name: str, message: str, timeout_s: float) -> None: ...

    @abstractmethod
    def _do_request(self, name: str, message: str, timeout_s: float) -> Awaitable[str]: ...
