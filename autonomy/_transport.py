"""ZeroMQ sockets: one bound ROUTER per node, one DEALER per peer, driven by the event loop.

With ``_sockets`` (its parts: options, loop-driven sockets, keys, ZAP), the only module that
imports ``zmq``. It moves opaque frames (bytes) and reports connection
events; it knows nothing of workers, requests or the frame format. ``zmq`` errors are
translated here into autonomy errors (``raise ... from exc``).

Why plain (blocking-API) sockets and not ``zmq.asyncio``: measured here, one ``await recv()``
per message caps request/reply at ~29,000 msg/s, while a socket woken by ``loop.add_reader``
on its ``zmq.FD`` and drained with ``NOBLOCK`` does ~180,000 (DESIGN.md). The FD is
edge-triggered, so every socket is drained until ``EVENTS`` says it is empty, the reader runs
once right after ``add_reader``, and sends schedule a re-check (a send can consume the edge).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

import zmq
from zmq.utils.monitor import parse_monitor_message

from ._errors import ConfigError, NodeClosedError, PeerUnavailableError
from ._outbox import Outbox, Traffic
from ._sockets import (
    _MECHANISM_MISMATCH,
    _MONITORED,
    _NOBLOCK,
    _RCVMORE,
    _SNDMORE_NOBLOCK,
    BATCH,
    CLOSE_LINGER_MS,
    RECONNECT_IVL_MAX_MS,
    RECONNECT_IVL_MS,
    SILENT_LINK_S,
    CurveKeys,
    Driven,
    PeerEvent,
    ZapHandler,
    common_options,
    curve_keys,
)

__all__ = ["SILENT_LINK_S", "CurveKeys", "DealerSocket", "PeerEvent", "Transport", "curve_keys"]

log = logging.getLogger("autonomy.transport")


class DealerSocket:
    """Our DEALER to one peer's ROUTER, with a monitor that reports up/down/refused."""

    __slots__ = (
        "_driven",
        "_monitor",
        "_on_event",
        "_on_frame",
        "_outbox",
        "_transport",
        "endpoint",
        "reconnects",
        "traffic",
    )

    def __init__(
        self,
        transport: Transport,
        endpoint: str,
        on_frame: Callable[[bytes], None],
        on_event: Callable[[PeerEvent, str], None],
    ) -> None:
        self.endpoint = endpoint
        self._on_frame = on_frame
        self._on_event = on_event
        sock = transport.context.socket(zmq.DEALER)
        common_options(sock, transport.max_frame_bytes)
        # A fixed routing id per dialing node, with ROUTER_HANDOVER on the other side: replies
        # after a reconnect reach the new connection (without it 2 of 4 runs lost them).
        sock.setsockopt(zmq.ROUTING_ID, transport.identity)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        keys = transport.keys
        if keys is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)
        # A refused handshake (wrong secret, other zone, plain vs secure) would otherwise be
        # retried every 100 ms forever, each attempt logged by the other side.
        sock.setsockopt(zmq.RECONNECT_STOP, zmq.RECONNECT_STOP_HANDSHAKE_FAILED)
        monitor = sock.get_monitor_socket(_MONITORED)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            raise PeerUnavailableError(endpoint, f"cannot dial: {exc}") from exc
        self._transport = transport
        self.traffic = Traffic()
        self.reconnects = 0
        """Connections made after the first (the peer restarted, or the network broke)."""
        self._outbox = Outbox(self._send)
        self._driven = Driven(transport.loop, sock, self._drain)
        self._monitor = Driven(transport.loop, monitor, self._drain_monitor)

    def _drain(self) -> None:
        # Read until EAGAIN: one exception per wake-up is cheaper than asking EVENTS (a
        # syscall inside libzmq) before every frame.
        sock = self._driven.sock
        recv = sock.recv
        getsockopt = sock.getsockopt
        on_frame = self._on_frame
        count = size = 0
        try:
            for _ in range(BATCH):
                frame = recv(_NOBLOCK)
                count += 1
                size += len(frame)
                if getsockopt(_RCVMORE):
                    # Our peers send single-part frames; anything else is discarded whole.
                    while getsockopt(_RCVMORE):
                        recv(_NOBLOCK)
                    log.debug("discarded a multipart frame from %s", self.endpoint)
                    continue
                try:
                    on_frame(frame)
                except Exception:
                    log.exception("error while handling a frame from %s", self.endpoint)
        except zmq.Again:
            return
        finally:
            traffic = self.traffic
            traffic.messages_received += count
            traffic.bytes_received += size
        self._driven.kick()  # a full batch: more may wait, after the others had a turn

    def _drain_monitor(self) -> None:
        driven = self._monitor
        while driven.readable():
            event = parse_monitor_message(driven.sock.recv_multipart(zmq.NOBLOCK))
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.reconnects += 1
                self._on_event(PeerEvent.UP, "")
            elif kind == zmq.EVENT_DISCONNECTED:
                self._on_event(PeerEvent.LOST, "connection lost")
            elif kind == zmq.EVENT_CONNECT_RETRIED:
                self._on_event(PeerEvent.RETRYING, "nothing answers at its address")
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._on_event(
                    PeerEvent.REFUSED, "it refused our key: we do not hold its zone's secret"
                )
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                if event["value"] == _MECHANISM_MISMATCH:
                    reason = (
                        "one of the two nodes is secure (CURVE) and the other runs in plain "
                        "mode: set AUTONOMY_SECURE alike on every node of the zone"
                    )
                else:
                    reason = "the handshake failed: it speaks another protocol"
                self._on_event(PeerEvent.REFUSED, reason)
            else:
                # No detail: the peer closed the connection during the handshake. A node
                # with other CURVE keys does that, and so does a plain node (to our CURVE
                # greeting), and one that is just stopping: a drop, libzmq keeps retrying.
                self._on_event(
                    PeerEvent.HANDSHAKE_CLOSED,
                    "the connection closed during the handshake: the node there does not hold "
                    "this zone's secret, or runs in plain mode"
                    if self._transport.keys is not None
                    else "the connection closed during the handshake: the node there is "
                    "secure (CURVE) and this one runs in plain mode",
                )

    def send(self, frame: bytes) -> None:
        """Queue one frame to the peer; it leaves at the end of this loop turn, with the
        others queued in the same turn, in one ZeroMQ message (never blocks).

        Raises:
            PeerUnavailableError: the socket is closed.
        """
        if self._driven._closed:
            raise PeerUnavailableError(self.endpoint, "the connection is closed")
        outbox = self._outbox
        if not outbox.frames:
            self._transport._dirty(self)
        outbox.add(frame)

    def flush(self) -> None:
        """Send what is queued, as one ZeroMQ message."""
        self._outbox.flush()

    def _send(self, data: bytes) -> None:
        if self._driven._closed:
            return
        try:
            self._driven.sock.send(data, _NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("lost a message to %s: %s", self.endpoint, exc)
            return
        traffic = self.traffic
        traffic.messages_sent += 1
        traffic.bytes_sent += len(data)
        self._driven.kick()

    def close(self, linger_ms: int = CLOSE_LINGER_MS) -> None:
        if self._driven._closed:
            return
        self.flush()
        try:
            self._driven.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(0)
        self._driven.close(linger_ms)


class Transport:
    """The node's ZeroMQ context, its bound ROUTER, and the DEALERs it dials."""

    def __init__(
        self,
        *,
        identity: bytes,
        max_frame_bytes: int,
        keys: CurveKeys | None,
        zap_domain: str,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.identity = identity
        self.max_frame_bytes = max_frame_bytes
        self.keys = keys
        self._zap_domain = zap_domain
        self._on_router_frame: Callable[[bytes, bytes], None] = _unbound
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        self._router: Driven | None = None
        self._router_out: dict[bytes, Outbox] = {}
        """Per dialer, the frames queued for it in this loop turn."""
        self._dirty_dealers: list[DealerSocket] = []
        self._flush_scheduled = False
        self._router_monitor: Driven | None = None
        self._failed_handshakes = 0
        self._zap: ZapHandler | None = None
        self._dealers: list[DealerSocket] = []
        self.endpoint = ""
        self.traffic = Traffic()
        """What the ROUTER moved."""
        self.on_unroutable: Callable[[bytes], None] | None = None
        """Told of a dialer whose connection is gone (a frame to it was unroutable)."""
        self._retired = Traffic()
        """What the DEALERs closed so far moved."""

    def bind(self, address: str, on_frame: Callable[[bytes, bytes], None]) -> str:
        """Bind the ROUTER to ``address`` (``tcp://host:port``, port ``*`` for any); returns
        the endpoint actually bound. ``on_frame(dialer identity, data)`` gets what arrives.

        Raises:
            ConfigError: the address cannot be bound (in use, not this machine's,
                malformed); its ``__cause__`` is the ZeroMQ error.
        """
        self._on_router_frame = on_frame
        sock = self.context.socket(zmq.ROUTER)
        common_options(sock, self.max_frame_bytes)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self.keys is not None:
            # Every connection is CURVE-encrypted, and our ZAP handler admits only clients
            # that hold the zone's client key: nothing from a stranger reaches a frame.
            self._zap = ZapHandler(
                self.context, self.loop, self._zap_domain, self.keys.client_public
            )
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.server_public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.server_secret)
            sock.setsockopt_string(zmq.ZAP_DOMAIN, self._zap_domain)
        # Unroutable replies raise EHOSTUNREACH instead of vanishing: we log them.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ConfigError(f"cannot bind {address}: {exc}", key="bind") from exc
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._router = Driven(self.loop, sock, self._drain_router)
        if self.keys is not None:
            # Handshakes that fail before ZAP is asked (a plain client, a wrong server key)
            # are visible only here.
            monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            )
            self._router_monitor = Driven(self.loop, monitor, self._drain_router_monitor)
        return self.endpoint

    def _drain_router_monitor(self) -> None:
        driven = self._router_monitor
        assert driven is not None
        while driven.readable():
            event = parse_monitor_message(driven.sock.recv_multipart(zmq.NOBLOCK))
            self._failed_handshakes += 1
            count = self._failed_handshakes
            # A close mid-handshake is most often a node that stops: counted, not told.
            quiet = event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            if not quiet and (count == 1 or count % 1000 == 0):
                log.warning(
                    "refused %d connection(s) whose handshake failed: a client without this "
                    "zone's secret, or without encryption",
                    count,
                )

    def _drain_router(self) -> None:
        driven = self._router
        if driven is None:
            return
        sock = driven.sock
        recv = sock.recv
        getsockopt = sock.getsockopt
        on_frame = self._on_router_frame
        count = size = 0
        try:
            for _ in range(BATCH):
                ident = recv(_NOBLOCK)  # a ROUTER always prefixes the dialer's identity
                frame = recv(_NOBLOCK)
                count += 1
                size += len(frame)
                if getsockopt(_RCVMORE):
                    while getsockopt(_RCVMORE):
                        recv(_NOBLOCK)
                    # Our nodes send single-part frames: handled as a bad frame (logged once
                    # per dialer by the node).
                    frame = b""
                try:
                    on_frame(ident, frame)
                except Exception:
                    # A bug in handling one frame must neither kill the node nor stall the
                    # socket.
                    log.exception("error while handling a frame from dialer %r", ident)
        except zmq.Again:
            return
        finally:
            traffic = self.traffic
            traffic.messages_received += count
            traffic.bytes_received += size
        driven.kick()  # a full batch: more may wait, after the others had a turn

    def router_send(self, ident: bytes, frame: bytes) -> None:
        """Queue one frame to the dialer ``ident``; like `DealerSocket.send`, it leaves at
        the end of this loop turn, coalesced with the others to the same dialer. A dialer
        that is gone by then loses it (logged at DEBUG): nobody is left to tell.

        Raises:
            NodeClosedError: the transport is closed.
        """
        driven = self._router
        if driven is None or driven._closed:
            raise NodeClosedError("the node's transport is closed")
        outbox = self._router_out.get(ident)
        if outbox is None:
            outbox = self._router_out[ident] = Outbox(partial(self._router_send_now, ident))
            self._schedule_flush()
        outbox.add(frame)

    def _router_send_now(self, ident: bytes, data: bytes) -> None:
        driven = self._router
        if driven is None or driven._closed:
            return
        sock = driven.sock
        try:
            sock.send(ident, _SNDMORE_NOBLOCK)
            sock.send(data, _NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("lost a message to dialer %r: %s", ident, exc.strerror)
            if exc.errno == zmq.EHOSTUNREACH and self.on_unroutable is not None:
                self.on_unroutable(ident)  # its connection is gone
            return
        traffic = self.traffic
        traffic.messages_sent += 1
        traffic.bytes_sent += len(data)
        driven.kick()

    def _dirty(self, dealer: DealerSocket) -> None:
        self._dirty_dealers.append(dealer)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send everything queued in this loop turn: one ZeroMQ message per destination.

        Coalescing is what lets a burst go out at a fraction of the cost: each ZeroMQ send
        that finds the pipe drained wakes libzmq's I/O thread (a syscall); one send per
        peer per turn wakes it once."""
        self._flush_scheduled = False
        dealers, self._dirty_dealers = self._dirty_dealers, []
        for dealer in dealers:
            dealer.flush()
        if self._router_out:
            outboxes, self._router_out = self._router_out, {}
            for outbox in outboxes.values():
                outbox.flush()

    def dial(
        self,
        endpoint: str,
        on_frame: Callable[[bytes], None],
        on_event: Callable[[PeerEvent, str], None],
    ) -> DealerSocket:
        """Open a DEALER to a peer's ROUTER; ``on_event`` hears what its monitor says."""
        dealer = DealerSocket(self, endpoint, on_frame, on_event)
        self._dealers.append(dealer)
        return dealer

    def forget(self, dealer: DealerSocket) -> None:
        """Close one DEALER (the peer left for good, or the link was idle)."""
        dealer.close()
        if dealer in self._dealers:
            self._dealers.remove(dealer)
            self._retired.add(dealer.traffic)

    def totals(self) -> dict[str, int]:
        """Messages and bytes moved by every socket of this transport since it started, and
        the handshakes refused."""
        total = Traffic()
        total.add(self.traffic)
        total.add(self._retired)
        for dealer in self._dealers:
            total.add(dealer.traffic)
        return {**total.as_dict(), "refused_handshakes": self.refused_handshakes}

    @property
    def refused_handshakes(self) -> int:
        """Connections refused at the handshake: ZAP refusals and failed handshakes."""
        zap = self._zap.refusals if self._zap is not None else 0
        return self._failed_handshakes + zap

    def close(self, linger_ms: int = CLOSE_LINGER_MS) -> None:
        """Send what is queued, close every socket (with a bounded linger) and terminate
        the context."""
        self.flush()
        for dealer in self._dealers:
            dealer.close(linger_ms)
        self._dealers.clear()
        if self._router is not None:
            if self._router_monitor is not None:
                try:
                    self._router.sock.disable_monitor()
                except zmq.ZMQError:
                    pass
                self._router_monitor.close(0)
            self._router.close(linger_ms)
        if self._zap is not None:
            self._zap.close()
        # Every socket is closed with a finite linger, so term() returns within linger_ms.
        self.context.term()


def _unbound(ident: bytes, data: bytes) -> None:
    raise RuntimeError("the ROUTER received a frame before bind() set its handler")
