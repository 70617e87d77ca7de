"""The raw pyzmq baseline: the same workloads written directly on DEALER/ROUTER sockets.

Written as well as raw pyzmq can be on this machine (DESIGN.md, "Facts measured"), so that
the ratio ours/raw measures what our stack costs and nothing else:

- plain (blocking-API) sockets driven by the event loop: ``loop.add_reader`` on ``zmq.FD``,
  then ``recv(zmq.NOBLOCK)`` until ``zmq.Again`` (the issue's "reads every ready message per
  wake-up"; no ``zmq.asyncio`` await per message). One ``zmq.Again`` per wake-up (~2.5 µs)
  is cheaper than ``getsockopt(EVENTS)`` per message (~0.95 µs each: it runs libzmq's
  command processing with a ``poll()`` syscall), measured here;
- the FD is edge-triggered, so the reader runs once right after ``add_reader`` and a send
  schedules one re-check per loop turn (a send can consume the edge);
- one frame per message, a fixed 9-byte header (kind, request id) where a request needs one,
  a future per request in a dict keyed by request id (the issue's "106,000 requests/s");
- one-way sends are bounded by ZeroMQ's own high-water mark (the raw counterpart of our
  credit window): ``SNDHWM`` on a DEALER used for one-way sends only, ``RCVHWM`` on the
  ROUTER. Request/reply uses a DEALER without ``SNDHWM``: the requests in flight bound it,
  and at 1,000 in flight libzmq's lagging pipe accounting would otherwise refuse sends.

Frames, DEALER to ROUTER:

=================  ============================  ==============================
first byte          rest                          answer
=================  ============================  ==============================
``0x01`` ECHO       request id (u64 LE), payload   the same frame
``0x02`` COUNT      request id (u64 LE)            COUNT, id, one-way count (u64)
anything else       the whole frame is a payload   none (counted)
=================  ============================  ==============================

Payloads are ``b"x" * n``, so a one-way frame never starts with 0x01 or 0x02. With CURVE
(the counterpart of our secure mode) the ROUTER is a CURVE server and each DEALER a client
with its own keypair; ZAP is per connection, not per message, so it is left out.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Final

import zmq

__all__ = ["COUNT", "ECHO", "ONE_WAY_HWM", "RawPeer", "RawServer"]

ECHO: Final = 1
COUNT: Final = 2
ONE_WAY_HWM: Final = 1000
"""Messages ZeroMQ may queue per direction before a one-way sender must wait (as our window)."""

_HEADER: Final = struct.Struct("<BQ")
_COUNT_REPLY: Final = struct.Struct("<BQQ")
# Plain ints: pyzmq's flag enums cost ~0.4-0.65 µs per `|` or `&` (measured here).
_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)
_EVENTS: Final = int(zmq.EVENTS)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_MORE_NOBLOCK: Final = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_Again: Final = zmq.Again


class RawPeer:
    """A DEALER to one raw server, with a future per request keyed by request id."""

    __slots__ = ("_fd", "_loop", "_rid", "_scheduled", "_writable", "pending", "sock")

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        sndhwm: int = 0,
        server_key: bytes | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.RCVHWM, 0)
        if server_key is not None:  # CURVE: encrypted, as our secure mode
            public, secret = zmq.curve_keypair()
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.connect(endpoint)
        self.sock = sock
        self.pending: dict[int, asyncio.Future[bytes | int]] = {}
        self._rid = 0
        self._scheduled = False
        self._writable: asyncio.Future[None] | None = None
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._loop.add_reader(self._fd, self._drain)
        self.kick()  # edge-triggered: frames already queued would never wake us

    def kick(self) -> None:
        """Re-check the socket once in the next loop turn (after sends)."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        recv = self.sock.recv
        pending = self.pending
        try:
            while True:
                frame = recv(_NOBLOCK)
                future = pending.pop(int.from_bytes(frame[1:9], "little"), None)
                if future is not None:
                    if frame[0] == ECHO:
                        future.set_result(frame[9:])
                    else:
                        future.set_result(_COUNT_REPLY.unpack(frame)[2])
        except _Again:
            pass
        writable = self._writable
        if (
            writable is not None
            and not writable.done()
            and self.sock.getsockopt(_EVENTS) & _POLLOUT  # type: ignore[operator]
        ):
            writable.set_result(None)

    async def request(self, payload: bytes) -> bytes:
        """One echo round trip (on a peer without ``sndhwm``: in-flight bounds the queue)."""
        self._rid = rid = self._rid + 1
        future = self._loop.create_future()
        self.pending[rid] = future
        self.sock.send(_HEADER.pack(ECHO, rid) + payload, _NOBLOCK)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)
        reply: bytes = await future
        return reply

    async def count(self) -> int:
        """How many one-way frames the server has received (after all we sent before)."""
        self._rid = rid = self._rid + 1
        future = self._loop.create_future()
        self.pending[rid] = future
        await self.wait_writable()
        self.sock.send(_HEADER.pack(COUNT, rid), _NOBLOCK)
        self.kick()
        count: int = await future
        return count

    async def wait_writable(self) -> None:
        """Wait until ``SNDHWM`` lets another frame out."""
        while not self.sock.getsockopt(_EVENTS) & _POLLOUT:  # type: ignore[operator]
            waiter = self._writable
            if waiter is None or waiter.done():
                waiter = self._writable = self._loop.create_future()
            await waiter

    async def flood(self, frame: bytes, deadline: float) -> int:
        """Send ``frame`` one way as fast as ZeroMQ takes it until ``deadline``; the count."""
        sock = self.sock
        send = sock.send
        sent = 0
        clock = time.perf_counter
        while True:
            for _ in range(64):
                try:
                    send(frame, _NOBLOCK)
                except zmq.Again:  # the high-water mark: wait for the pipe to drain
                    self.kick()
                    await self.wait_writable()
                    continue
                sent += 1
            self.kick()
            if clock() >= deadline:
                return sent

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self.sock.close(linger=0)


class RawServer:
    """The raw runner's ROUTER: echoes ECHO frames, answers COUNT, counts everything else."""

    __slots__ = ("_fd", "_loop", "count", "endpoint", "sock")

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        address: str,
        curve_secret: bytes | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, ONE_WAY_HWM)
        if curve_secret is not None:  # CURVE server; no ZAP handler: every client admitted
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve_secret)
        sock.bind(address)
        self.sock = sock
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.count = 0
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._loop.add_reader(self._fd, self._drain)
        self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        sock = self.sock
        recv = sock.recv
        send = sock.send
        # Read until zmq.Again: the last (failed) read comes after our own sends, so an edge
        # they consumed is not lost, and nothing is left unread when we return.
        try:
            while True:
                ident = recv(_NOBLOCK)
                frame = recv(_NOBLOCK)
                kind = frame[0]
                if kind == ECHO:
                    send(ident, _MORE_NOBLOCK)
                    send(frame, _NOBLOCK)
                elif kind == COUNT:
                    send(ident, _MORE_NOBLOCK)
                    send(frame[:9] + self.count.to_bytes(8, "little"), _NOBLOCK)
                else:
                    self.count += 1
        except _Again:
            pass

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self.sock.close(linger=0)
