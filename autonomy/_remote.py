"""`RemoteNode`: another node of the zone, with the same methods as the local `Node`.

A remote node is a view: the local node owns the connection (its DEALER to the peer), the
requests in flight and their timeouts; this class only turns each public call into frames.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, final

from ._base import NodeInterface, timeout_seconds
from ._errors import ProtocolError
from ._protocol import LIST, START, STOP, encode, encode_request
from ._shipping import dumps_worker, node_reference

if TYPE_CHECKING:
    from ._node import Node, _Peer
    from ._worker import Worker

__all__ = ["RemoteNode"]


@final
class RemoteNode(NodeInterface):
    """A node in another process (or on another machine) of the same zone.

    Built by the framework (`Zone.nodes`, `Node.connect`); never constructed directly.
    """

    __slots__ = ("_limit", "_local", "_peer")

    def __init__(self, local: Node, peer: _Peer) -> None:
        self._local = local
        self._peer = peer
        self._limit = local.max_frame_bytes

    @property
    def name(self) -> str:
        """The remote node's name."""
        return self._peer.name or self._peer.endpoint

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint of the remote node's ROUTER."""
        return self._peer.endpoint

    @property
    def zone(self) -> str:
        return self._local.zone

    @property
    def max_frame_bytes(self) -> int:
        return self._limit

    def is_up(self) -> bool:
        """True while the connection to the node is established."""
        return self._peer.state == "up"

    def __repr__(self) -> str:
        return f"<RemoteNode {self.name!r} {self._peer.state.upper()} {self.endpoint}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (node_reference, (self._local.zone, self.name, self.endpoint))

    async def ping(self, timeout: float = 5000) -> None:
        """Round trip to the node itself (no worker involved).

        Raises:
            PeerUnavailableError: the node cannot be reached.
            ReplyTimeoutError: no answer within ``timeout`` ms.
        """
        await self._local._ping(self._peer, timeout_seconds(timeout))

    async def _do_start_worker(self, name: str, worker: Worker) -> None:
        payload = dumps_worker(worker)
        if len(payload) > self._local.max_frame_bytes - 1024:
            from ._errors import MessageTooLargeError

            raise MessageTooLargeError(len(payload), self._local.max_frame_bytes - 1024)
        local = self._local
        rid = local._new_rid()
        await local._call(self._peer, rid, encode(START, rid, name, payload), name)

    async def _do_stop_worker(self, name: str) -> None:
        local = self._local
        rid = local._new_rid()
        await local._call(self._peer, rid, encode(STOP, rid, name), name)

    async def _do_list_workers(self) -> list[dict[str, Any]]:
        local = self._local
        rid = local._new_rid()
        value = await local._call(self._peer, rid, encode(LIST, rid), "")
        if not isinstance(value, list) or not all(
            isinstance(item, dict) and isinstance(item.get("name"), str) for item in value
        ):
            raise ProtocolError(f"node {self.name!r} answered LIST with {value!r}")
        return value

    async def _do_send(self, name: str, message: str, timeout_s: float) -> None:
        await self._local._send_remote(self._peer, name, message, timeout_s)

    def _do_request(self, name: str, message: str, timeout_s: float) -> Awaitable[str]:
        # A plain function returning the call's coroutine: one coroutine frame less per
        # request on the hot path.
        local = self._local
        rid = local._new_rid()
        frame = encode_request(rid, name, message, int(timeout_s * 1000) or 1)
        return local._call(self._peer, rid, frame, name, timeout_s)
