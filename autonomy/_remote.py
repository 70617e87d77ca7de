"""`RemoteNode`: another node of the zone, with the same methods as the local `Node`.

A remote node is a view: the local node owns the connection (a `Link`), the requests in
flight and their timeouts; this class turns each public call into a call on that link. Which
link is decided on each call: a node of the zone is named (`Zone.nodes` gives handles that
follow the member of that name across restarts), a node reached with ``connect`` is an
endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, final

from ._base import NodeInterface, timeout_seconds
from ._errors import MessageTooLargeError, PeerUnavailableError, ProtocolError
from ._peer import Link
from ._protocol import ENVELOPE_OVERHEAD, LIST, PING, START, STATS, STOP
from ._shipping import dumps_worker, node_reference
from ._worker import Worker

__all__ = ["RemoteNode"]


@final
class RemoteNode(NodeInterface):
    """A node in another process (or on another machine) of the same zone.

    Built by the framework (`Zone.nodes`, `Node.connect`); never constructed directly.
    """

    __slots__ = ("_last", "_limit", "_link", "_name", "_names", "_zone")

    def __init__(self, zone: str, limit: int, name: str, link: Callable[[], Link]) -> None:
        self._names: set[str] = set()
        self._zone = zone
        self._limit = limit
        self._name = name
        self._link = link
        self._last: Link | None = None

    @property
    def name(self) -> str:
        """The remote node's name."""
        return self._name

    def _current(self) -> Link | None:
        try:
            self._last = self._link()
        except PeerUnavailableError:
            pass
        return self._last

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint of the remote node's ROUTER (the last known one while the
        node is away)."""
        link = self._current()
        return link.endpoint if link is not None else ""

    @property
    def zone(self) -> str:
        return self._zone

    @property
    def max_frame_bytes(self) -> int:
        return self._limit

    def is_up(self) -> bool:
        """True while the node is reachable and the connection to it established."""
        try:
            return self._link().is_up()
        except PeerUnavailableError:
            return False

    def __repr__(self) -> str:
        try:
            link = self._link()
        except PeerUnavailableError:
            return f"<RemoteNode {self._name!r} ABSENT>"
        return f"<RemoteNode {self._name!r} {link.state.name} {link.endpoint}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (node_reference, (self._zone, self.name, self.endpoint))

    async def ping(self, timeout: float = 5000) -> None:
        """Round trip to the node itself (no worker involved).

        Raises:
            PeerUnavailableError: the node cannot be reached.
            ReplyTimeoutError: no answer within ``timeout`` ms.
        """
        await self._link().call(PING, timeout_s=timeout_seconds(timeout))

    async def _do_start_worker(self, name: str, worker: Worker) -> None:
        payload = dumps_worker(worker, name, self.name)
        if len(payload) > self._limit - ENVELOPE_OVERHEAD:
            raise MessageTooLargeError(len(payload), self._limit - ENVELOPE_OVERHEAD)
        await self._link().call(START, name, payload, worker=name)

    async def _do_stop_worker(self, name: str) -> None:
        await self._link().call(STOP, name, worker=name)

    async def _do_list_workers(self) -> list[dict[str, Any]]:
        value = await self._link().call(LIST)
        if not isinstance(value, list) or not all(
            isinstance(item, dict) and isinstance(item.get("name"), str) for item in value
        ):
            raise ProtocolError(f"node {self.name!r} answered LIST with {value!r}")
        return value

    async def _do_stats(self) -> dict[str, Any]:
        value = await self._link().call(STATS)
        if not isinstance(value, dict):
            raise ProtocolError(f"node {self.name!r} answered STATS with {value!r}")
        return value

    async def _do_send(self, name: str, message: str, timeout_s: float) -> None:
        await self._link().send(name, message, timeout_s)

    def _do_request(self, name: str, message: str, timeout_s: float) -> Awaitable[str]:
        return self._link().request(name, message, timeout_s)
