"""ZeroMQ's parts under the transport: socket options, loop-driven sockets, CURVE keys, ZAP.

With ``_transport`` (which builds the ROUTER and the DEALERs from these parts), the only
module that imports ``zmq``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Final

import zmq
from zmq.utils import z85

from ._errors import ConfigError
from ._protocol import BATCH_BYTES

__all__ = [
    "BATCH",
    "CLOSE_LINGER_MS",
    "SILENT_LINK_S",
    "CurveKeys",
    "Driven",
    "PeerEvent",
    "ZapHandler",
    "common_options",
    "curve_keys",
]

log = logging.getLogger("autonomy.transport")

KEEPALIVE_IDLE_S: Final = 2
KEEPALIVE_INTERVAL_S: Final = 1
KEEPALIVE_PROBES: Final = 2
"""Liveness of a connection is the kernel's: an idle connection is probed after 2 s of
silence, then every second, and closed when 2 probes go unanswered (~4 s of silence).

No ZMTP heartbeats: they cost every connection two CURVE messages a second in libzmq's
I/O thread (an idle 31-node zone used 4 s of CPU in 10 s) and trip libzmq's ``!_io_error``
assert when many peers leave at once. Keepalives are answered while Python is blocked, as
ZMTP heartbeats were, and cost no user-space CPU."""

UNACKED_TIMEOUT_MS: Final = 3000
"""Data sent and not acknowledged for this long closes the connection (TCP_USER_TIMEOUT,
ZeroMQ's TCP_MAXRT): a request sent into a silent partition fails in ~3 s."""

SILENT_LINK_S: Final = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES + 1
"""The bound on noticing a silent peer (a partition, a host that vanished): ~5 s."""

RECONNECT_IVL_MS: Final = 100
RECONNECT_IVL_MAX_MS: Final = 1000
"""Reconnect backoff: fast for a restarting peer, at most once a second for a gone one."""

CLOSE_LINGER_MS: Final = 200
"""Linger at close: long enough to flush a BYE on a live connection, short enough that stop()
never hangs on a dead one."""

BATCH: Final = 512
"""Frames read per wake-up before yielding to the loop, so one busy socket cannot starve the
others (or the workers)."""

# Events of a DEALER's monitor that change what we know of the peer.
_MONITORED: Final = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_CONNECT_RETRIED
)

# Plain ints: pyzmq's flag enums cost ~0.6 µs an operation on the hot path (measured here).
_NOBLOCK: Final = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE: Final = int(zmq.RCVMORE)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_MECHANISM_MISMATCH: Final = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)


class PeerEvent(enum.Enum):
    """What a DEALER's monitor says of its connection."""

    UP = "up"
    """The handshake succeeded."""
    LOST = "lost"
    """The connection dropped; libzmq reconnects."""
    HANDSHAKE_CLOSED = "handshake closed"
    """The peer closed the connection during the handshake (another secret, or stopping)."""
    REFUSED = "refused"
    """The handshake was refused: retrying cannot help."""
    RETRYING = "retrying"
    """A connect failed (nothing listens there); libzmq tries again."""


ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"


class CurveKeys:
    """A zone's CURVE keys (z85): one server pair shared by every ROUTER of the zone, one
    client pair shared by every DEALER. Holding them is being a member."""

    __slots__ = ("client_public", "client_secret", "server_public", "server_secret")

    def __init__(self, server_seed: bytes, client_seed: bytes) -> None:
        self.server_secret = z85.encode(server_seed)
        self.server_public = zmq.curve_public(self.server_secret)
        self.client_secret = z85.encode(client_seed)
        self.client_public = zmq.curve_public(self.client_secret)

    def __repr__(self) -> str:
        return f"<CurveKeys server={self.server_public[:8].decode()}...>"


def curve_keys(server_seed: bytes, client_seed: bytes) -> CurveKeys:
    """Build the zone's keys from 32-byte seeds (derived from the zone secret)."""
    if not zmq.has("curve"):
        raise ConfigError(
            "this libzmq was built without CURVE, so the mesh cannot be secured: install "
            "pyzmq's wheels (they bundle it), or run in plain mode (AUTONOMY_SECURE=0)",
            key="secure",
        )
    return CurveKeys(server_seed, client_seed)


def common_options(sock: zmq.Socket[bytes], max_frame_bytes: int) -> None:
    # Our own mailboxes and credit windows bound memory; libzmq's high-water marks stay off.
    # A full receive queue would also stop libzmq from answering heartbeats (DESIGN.md).
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
    # A connection whose sender exceeds twice our frame limit is cut by libzmq before the
    # frame is allocated; frames between 1x and 2x are refused by the protocol with a reply.
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max(max_frame_bytes, BATCH_BYTES))
    # The kernel finds silent peers (see KEEPALIVE_IDLE_S): no user-space work, answered
    # even while Python is blocked, and it keeps idle connections through NATs.
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTERVAL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_PROBES)
    sock.setsockopt(zmq.TCP_MAXRT, UNACKED_TIMEOUT_MS)


class Driven:
    """A socket read by the event loop: add_reader on its FD, drained until EVENTS is empty."""

    __slots__ = ("_closed", "_fd", "_loop", "_on_ready", "_scheduled", "sock")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket[bytes], on_ready: Callable[[], None]
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._on_ready = on_ready
        self._closed = False
        self._scheduled = False
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        loop.add_reader(self._fd, self._wake)
        self.kick()  # the FD is edge-triggered: frames already queued would never wake us

    def _wake(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        try:
            self._on_ready()
        except zmq.ZMQError as exc:
            if not self._closed:
                log.warning("socket error while reading: %s", exc)

    def kick(self) -> None:
        """Re-check the socket in the next loop turn (after a send, or a partial drain)."""
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._wake)

    def readable(self) -> bool:
        return bool(self.sock.getsockopt(_EVENTS) & _POLLIN)  # type: ignore[operator]

    def close(self, linger_ms: int) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self.sock.close(linger=linger_ms)


class ZapHandler:
    """ZeroMQ's authentication hook (ZAP, RFC 27) for this node's context: admits a CURVE
    client only if its public key is the zone's client key. Refusals are logged once per
    address at WARNING (then at DEBUG), so a stranger knocking cannot flood the log."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        loop: asyncio.AbstractEventLoop,
        domain: str,
        client_key: bytes,
    ) -> None:
        self._client_key = z85.decode(client_key)
        self._domain = domain.encode()
        self._refused: dict[bytes, int] = {}
        self.refusals = 0
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ZAP_ENDPOINT)
        self._driven = Driven(loop, sock, self._drain)

    def _drain(self) -> None:
        driven = self._driven
        sock = driven.sock
        while driven.readable():
            frames = sock.recv_multipart(zmq.NOBLOCK)
            # [routing id, empty, version, request id, domain, address, identity,
            #  mechanism, credentials...]
            if len(frames) < 8:
                log.warning("malformed ZAP request (%d frames)", len(frames))
                continue
            route, _, version, request_id, domain, address, _, mechanism = frames[:8]
            credentials = frames[8:]
            if (
                mechanism == b"CURVE"
                and domain == self._domain
                and credentials == [self._client_key]
            ):
                status, text = b"200", b"OK"
            else:
                status, text = b"400", b"not a member of this zone"
                self._log_refusal(address, mechanism)
            sock.send_multipart(
                [route, b"", version, request_id, status, text, b"", b""], zmq.NOBLOCK
            )

    def _log_refusal(self, address: bytes, mechanism: bytes) -> None:
        self.refusals += 1
        count = self._refused.get(address, 0) + 1
        if len(self._refused) > 1000:
            self._refused.clear()
        self._refused[address] = count
        level = logging.WARNING if count == 1 else logging.DEBUG
        log.log(
            level,
            "refused a connection from %s (%s): it does not hold this zone's secret%s",
            address.decode(errors="replace"),
            mechanism.decode(errors="replace") or "no mechanism",
            "" if count == 1 else f" (attempt {count})",
        )

    def close(self) -> None:
        self._driven.close(0)
