"""`RemoteNode`: another node of the zone, with the same methods as the local `Node`.

A remote node is a view: the local node owns the connection (a `Link`), the requests in
flight and their timeouts; this class turns each public call into a call on that link.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, final

from ._base import NodeInterface, timeout_seconds
from ._errors import MessageTooLargeError, ProtocolError
from ._peer import Link
from ._protocol import ENVELOPE_OVERHEAD, LIST, PING, START, STOP
from ._shipping import dumps_worker, node_reference
from ._worker import Worker

__all__ = ["RemoteNode"]


@final
class RemoteNode(NodeInterface):
    """A node in another process (or on another machine) of the same zone.

    Built by the framework (`Zone.nodes`, `Node.connect`); never constructed directly.
    """

    __slots__ = ("_limit", "_link", "_zone")

    def __init__(self, zone: str, limit: int, link: Callable[[], Link]) -> None:
        self._zone = zone
        self._limit = limit
        self._link = link

    @property
    def name(self) -> str:
        """The remote node's name."""
        link = self._link()
        return link.name or link.endpoint

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint of the remote node's ROUTER."""
        return self._link().endpoint

    @property
    def zone(self) -> str:
        return self._zone

    @property
    def max_frame_bytes(self) -> int:
        return self._limit

    def is_up(self) -> bool:
        """True while the connection to the node is established."""
        return self._link().is_up()

    def __repr__(self) -> str:
        link = self._link()
        return f"<RemoteNode {self.name!r} {link.state.name} {link.endpoint}>"

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

    async def _do_send(self, name: str, message: str, timeout_s: float) -> None:
        await self._link().send(name, message, timeout_s)

    def _do_request(self, name: str, message: str, timeout_s: float) -> Awaitable[str]:
        return self._link().request(name, message, timeout_s)
