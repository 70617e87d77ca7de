"""`Node`: one process's place in the mesh: lifecycle, its workers, local and remote dispatch.

A node owns its workers (a `Mailbox` each), its transport (one ROUTER it binds, one DEALER per
peer it dials), the requests it has in flight to each peer, and the credit windows that bound
what it may send. Frames from dialers arrive on the ROUTER (requests, one-way messages,
control) and are answered there; frames from the peers we dialed (replies, credit, goodbye)
arrive on their DEALERs.

Knows nothing of zeroconf: zones and discovery (``_discovery``, ``_zone``) sit on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Self

from ._base import NodeInterface, check_worker, timeout_seconds
from ._deadlines import Deadlines
from ._errors import (
    AutonomyError,
    MailboxFullError,
    NodeClosedError,
    PeerUnavailableError,
    ProtocolError,
    ReplyTimeoutError,
    SecurityError,
    WorkerExistsError,
    WorkerNotFoundError,
    WorkerStartError,
)
from ._mailbox import MAILBOX_SIZE, Mailbox
from ._protocol import (
    BYE,
    CREDIT,
    ERROR,
    HELLO,
    LIST,
    MAX_FRAME_BYTES,
    MEMBERS,
    PING,
    REPLY,
    REQUEST,
    RESULT,
    SEND,
    START,
    STOP,
    check_frame,
    check_name,
    encode,
    encode_error,
    encode_result,
    encode_send,
    error_from_wire,
    request_id_in,
    request_id_of,
    split,
)
from ._remote import RemoteNode
from ._secret import derive_seeds, zone_secret
from ._shipping import loads_worker, node_reference
from ._transport import DealerSocket, PeerEvent, Transport, curve_keys
from ._worker import Worker

if TYPE_CHECKING:
    from ._zone import ZoneAgent

__all__ = ["Node", "NodeState"]

log = logging.getLogger("autonomy.node")

PEER_UNREACHABLE_S: Final = 3.0
"""A call to a peer that is not connected waits this long for it to (re)connect, then fails
with `PeerUnavailableError`. A connected peer that dies is seen at once (the kernel closes
the connection); a silent partition in about 2 s (ZMTP heartbeats, see ``_transport``)."""

STOP_GRACE_S: Final = 5.0
"""How long stopping a worker (or the node) lets the message in hand finish."""

SEND_WINDOW: Final = 1000
"""One-way messages a sender may have in flight to one remote worker before it waits for
credit: the remote end of the mailbox bound (backpressure across the wire)."""

MAX_PENDING_PER_PEER: Final = 10_000
"""Calls one node may have in flight to one peer; more wait for a slot (backpressure)."""

REMOTE_QUEUE_LIMIT: Final = 100_000
"""Hard limit of a worker's queue for remote senders, who are bounded by their credit
windows and MAX_PENDING_PER_PEER already: past it, a sender that ignores those bounds gets
`MailboxFullError` instead of growing our memory."""

CONTROL_TIMEOUT_MS: Final = 15_000
"""Default timeout of start_worker / stop_worker / list_workers on a remote node."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class NodeState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def bind_address(bind: str | None) -> str:
    """The ZeroMQ address to bind: ``HOST``, ``HOST:PORT`` or a full ``tcp://``/``ipc://``
    address, from ``bind``, else ``AUTONOMY_BIND``, else loopback on any free port."""
    value = bind if bind is not None else os.environ.get("AUTONOMY_BIND", "")
    value = value.strip() or "127.0.0.1"
    if "://" in value:
        return value
    if value.startswith("["):  # [v6]:port or [v6]
        host, _, port = value.partition("]")
        return f"tcp://{host}]:{port.lstrip(':') or '*'}"
    host, sep, port = value.rpartition(":")
    if sep and host and ":" not in host:
        return f"tcp://{host}:{port or '*'}"
    return f"tcp://{value}:*"


def _default_name() -> str:
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{secrets.token_hex(3)}"


class _Peer:
    """What the local node knows of one peer it dialed: connection state, calls in flight,
    and the credit windows of its workers."""

    __slots__ = (
        "credit",
        "credit_waiters",
        "dealer",
        "endpoint",
        "instance",
        "name",
        "pending",
        "reason",
        "remote",
        "since",
        "slot_waiters",
        "state",
        "up_waiters",
    )

    def __init__(self, endpoint: str, name: str, since: float) -> None:
        self.endpoint = endpoint
        self.name = name
        self.instance = ""
        self.state = "connecting"
        """connecting, up, down (lost, reconnecting), refused (handshake), gone (said bye)."""
        self.reason = "not connected yet"
        self.since = since
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.credit: dict[str, int] = {}
        """One-way messages in flight per remote worker; no entry until the first is confirmed."""
        self.credit_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.up_waiters: list[asyncio.Future[None]] = []
        self.slot_waiters: list[asyncio.Future[None]] = []
        self.dealer: DealerSocket | None = None
        self.remote: RemoteNode | None = None

    @property
    def label(self) -> str:
        return f"{self.name!r} at {self.endpoint}" if self.name else self.endpoint


class Node(NodeInterface):
    """A node of the mesh: it runs workers and reaches the workers of other nodes.

    Most programs call :meth:`Node.start` with their ``main``. Programs that own their event
    loop (and tests) use the async context manager::

        async with Node(name="main") as node:
            await node.start_worker("echoer", Echoer())

    Args:
        name: unique in the zone; default ``AUTONOMY_NODE_NAME``, else ``<host>-<6 hex>``.
        zone: default ``AUTONOMY_ZONE``, else ``"default"``.
        bind: ``HOST``, ``HOST:PORT`` or a ZeroMQ address; default ``AUTONOMY_BIND``, else
            ``127.0.0.1`` on a free port (nothing is reachable from outside the machine).
        max_frame_bytes: the largest frame sent or accepted (messages slightly less).
        mailbox_size: messages a worker may have queued before local senders wait.
        allow_shipping: accept workers shipped as code (cloudpickle) by members of the zone;
            default on (off in plain mode), or ``AUTONOMY_ALLOW_SHIPPING``.
        allowed_workers: if given, accept only shipped workers whose classes (and anything
            else in their state that pickle imports) are named here as ``module.qualname``:
            no code travels then. Default ``AUTONOMY_ALLOWED_WORKERS`` (comma-separated).
        secret: the zone's secret (see ``autonomy zone secret``); default
            ``AUTONOMY_ZONE_SECRET``, else ``AUTONOMY_ZONE_SECRET_FILE``, else this user's
            secret file for the zone, created on first use.
        secure: encrypt and authenticate every connection with CURVE keys derived from the
            secret (default). ``False`` (or ``AUTONOMY_SECURE=0``) is plain mode, for
            benchmarks only: anyone who reaches the port may use the node, so it then
            refuses shipped code unless ``allow_shipping=True`` is passed explicitly.
        discovery: advertise and browse the zone over mDNS, on the interface the node is
            bound to; default on unless ``AUTONOMY_DISCOVERY=0``.
        peers: seed peers (``HOST:PORT`` each) for networks without multicast; default
            ``AUTONOMY_PEERS`` (comma-separated). Nodes exchange whom they know, so one
            seed is enough.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        zone: str | None = None,
        bind: str | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        mailbox_size: int = MAILBOX_SIZE,
        allow_shipping: bool | None = None,
        allowed_workers: list[str] | None = None,
        secret: str | None = None,
        secure: bool | None = None,
        discovery: bool | None = None,
        peers: list[str] | str | None = None,
    ) -> None:
        self._name = check_name(
            name or os.environ.get("AUTONOMY_NODE_NAME") or _default_name(), "node name"
        )
        self.zone: str = check_name(zone or os.environ.get("AUTONOMY_ZONE") or "default", "zone")
        """The zone this node belongs to."""
        self._bind = bind_address(bind)
        self._max_frame_bytes = max_frame_bytes
        self.mailbox_size = mailbox_size
        self.instance: str = secrets.token_hex(8)
        """Random id of this run of the node: a restarted node has a new one."""
        self.endpoint: str = ""
        """The bound ROUTER's address (``tcp://127.0.0.1:53211``), set once started."""
        self.control_timeout_s = CONTROL_TIMEOUT_MS / 1000
        if allowed_workers is None and os.environ.get("AUTONOMY_ALLOWED_WORKERS"):
            allowed_workers = [
                name.strip()
                for name in os.environ["AUTONOMY_ALLOWED_WORKERS"].split(",")
                if name.strip()
            ]
        self._allowed: frozenset[str] | None = (
            frozenset(allowed_workers) if allowed_workers is not None else None
        )
        self.secure: bool = secure if secure is not None else _env_flag("AUTONOMY_SECURE", True)
        """Whether connections are CURVE-encrypted and authenticated (the default)."""
        self._secret = secret
        if allow_shipping is None:
            allow_shipping = _env_flag("AUTONOMY_ALLOW_SHIPPING", self.secure)
        self._allow_shipping = allow_shipping or allowed_workers is not None
        self._state = NodeState.NEW
        self._workers: dict[str, Mailbox] = {}
        self._peers: dict[str, _Peer] = {}
        self._dialers: dict[bytes, tuple[str, str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bad_frames: dict[bytes, int] = {}
        self._rid = 0
        self._discovery_option = discovery
        self._peers_option = peers
        self._zone_agent: ZoneAgent | None = None
        self._transport: Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._deadlines: Deadlines

    # -- identity and state -------------------------------------------------------------

    @property
    def name(self) -> str:
        """This node's name, unique in its zone."""
        return self._name

    @property
    def max_frame_bytes(self) -> int:
        return self._max_frame_bytes

    @property
    def state(self) -> NodeState:
        return self._state

    def is_running(self) -> bool:
        return self._state is NodeState.RUNNING

    def __repr__(self) -> str:
        return (
            f"<Node {self._name!r} {self._state.name} {self.endpoint or '-'} "
            f"workers={len(self._workers)} peers={len(self._peers)}>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (node_reference, (self.zone, self._name, self.endpoint))

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _open(self) -> None:
        if self._state is not NodeState.NEW:
            raise NodeClosedError(f"node {self._name!r} was already started")
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop)
        self._stopped = asyncio.Event()
        keys = None
        if self.secure:
            keys = curve_keys(*derive_seeds(zone_secret(self.zone, self._secret), self.zone))
        else:
            log.warning(
                "node %r runs in PLAIN mode: no encryption, and anyone who reaches %s can "
                "send it messages (use it for benchmarks only)",
                self._name,
                self._bind,
            )
        transport = Transport(
            identity=self.instance.encode(),
            max_frame_bytes=self._max_frame_bytes,
            on_router_frame=self._on_router_message,
            keys=keys,
            zap_domain=self.zone,
        )
        try:
            self.endpoint = transport.bind(self._bind)
        except BaseException:
            transport.close(0)
            raise
        self._transport = transport
        self._state = NodeState.RUNNING
        # The zone layer sits above the node (it imports zeroconf): imported here, once.
        from ._zone import ZoneAgent, discovery_enabled, seed_endpoints

        try:
            self._zone_agent = ZoneAgent(
                self,
                discovery=discovery_enabled(self._discovery_option),
                seeds=seed_endpoints(self._peers_option),
            )
        except BaseException:
            await self.stop()
            raise
        self._zone_agent.start()
        log.info("node %r of zone %r listening at %s", self._name, self.zone, self.endpoint)

    async def stop(self) -> None:
        """Stop the node: workers finish the message in hand, peers are told goodbye, pending
        calls fail with `NodeClosedError`, sockets close. Idempotent."""
        if self._state is NodeState.NEW:
            self._state = NodeState.STOPPED
            return
        if self._state is not NodeState.RUNNING:
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._state = NodeState.STOPPING
        try:
            if self._zone_agent is not None:
                await self._zone_agent.stop()
            mailboxes = list(self._workers.values())
            self._workers.clear()
            await asyncio.gather(*(mailbox.stop(STOP_GRACE_S) for mailbox in mailboxes))
            transport = self._transport
            assert transport is not None
            bye = encode(BYE, "node stopped")
            for ident in self._dialers:
                with contextlib.suppress(AutonomyError):
                    transport.router_send(ident, bye)
            for peer in self._peers.values():
                if peer.dealer is not None and peer.state == "up":
                    with contextlib.suppress(AutonomyError):
                        peer.dealer.send(bye)
                self._peer_lost(peer, "closed", NodeClosedError(f"node {self._name!r} stopped"))
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
            transport.close()
            self._deadlines.close()
        finally:
            self._zone_agent = None
            self._state = NodeState.STOPPED
            assert self._stopped is not None
            self._stopped.set()
            log.info("node %r stopped", self._name)

    @classmethod
    def start(
        cls,
        main: Callable[[Node], Awaitable[object]] | None = None,
        *,
        wait_until_interrupted: bool | None = None,
        **node_options: Any,
    ) -> None:
        """Run a node in this process: start it, await ``main(node)``, then serve until
        SIGINT or SIGTERM, and stop gracefully.

        Makes its own event loop (uvloop when installed) and blocks until the node stops.

        Args:
            main: ``async def main(node)``; omit it to only serve workers (a runner).
            wait_until_interrupted: keep serving after ``main`` returns; default from
                ``AUTONOMY_WAIT_UNTIL_INTERRUPTED`` (``0`` to return), else True.
            **node_options: passed to :class:`Node` (``name``, ``zone``, ``bind``...).

        Raises:
            RuntimeError: called from inside a running event loop (use ``async with Node()``).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Node.start() runs its own event loop; inside a running loop use "
                "`async with Node(...) as node:`"
            )
        if wait_until_interrupted is None:
            wait_until_interrupted = _env_flag("AUTONOMY_WAIT_UNTIL_INTERRUPTED", True)
        _configure_logging()
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(cls._serve(main, wait_until_interrupted, node_options))

    @classmethod
    async def _serve(
        cls,
        main: Callable[[Node], Awaitable[object]] | None,
        wait: bool,
        node_options: dict[str, Any],
    ) -> None:
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, interrupted.set)
        try:
            async with cls(**node_options) as node:
                if main is not None:
                    main_task = loop.create_task(_as_coroutine(main(node)), name="autonomy-main")
                    stop_task = loop.create_task(interrupted.wait())
                    try:
                        await asyncio.wait(
                            {main_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        stop_task.cancel()
                    if not main_task.done():
                        main_task.cancel()
                        await asyncio.wait({main_task})
                        return
                    main_task.result()  # re-raise main's exception, after the graceful stop
                if wait:
                    await interrupted.wait()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    # -- workers on this node -----------------------------------------------------------

    def _check_running(self) -> None:
        if self._state is not NodeState.RUNNING:
            raise NodeClosedError(f"node {self._name!r} is {self._state.value}")

    def _add_worker(self, name: str, worker: Worker) -> None:
        self._check_running()
        if name in self._workers:
            raise WorkerExistsError(name, self._name)
        mailbox = Mailbox(self, name, worker, self.mailbox_size)
        self._workers[name] = mailbox
        mailbox.start()
        log.debug("worker %r started on node %r", name, self._name)

    async def _do_start_worker(self, name: str, worker: Worker) -> None:
        self._add_worker(name, worker)

    async def _do_stop_worker(self, name: str) -> None:
        self._check_running()
        mailbox = self._workers.pop(name, None)
        if mailbox is None:
            raise WorkerNotFoundError(name, self._name)
        await mailbox.stop(STOP_GRACE_S)
        log.debug("worker %r stopped on node %r", name, self._name)

    async def _do_list_workers(self) -> list[dict[str, Any]]:
        self._check_running()
        return self._worker_list()

    def _worker_list(self) -> list[dict[str, Any]]:
        return [
            {"name": m.name, "queued": m.queued, "handled": m.handled, "failed": m.failed}
            for m in self._workers.values()
        ]

    def _mailbox(self, name: str) -> Mailbox:
        if self._state is not NodeState.RUNNING:
            self._check_running()
        mailbox = self._workers.get(name)
        if mailbox is None:
            raise WorkerNotFoundError(name, self._name)
        return mailbox

    async def _wait_room(self, mailbox: Mailbox, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await mailbox.wait_for_room()
        except TimeoutError:
            raise ReplyTimeoutError(mailbox.name, timeout_s * 1000) from None

    async def _do_send(self, name: str, message: str, timeout_s: float) -> None:
        mailbox = self._mailbox(name)
        if not mailbox.has_room():
            await self._wait_room(mailbox, timeout_s)
        mailbox.put_nowait(message, None)

    async def _do_request(self, name: str, message: str, timeout_s: float) -> str:
        mailbox = self._mailbox(name)
        if not mailbox.has_room():
            await self._wait_room(mailbox, timeout_s)
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[str] = loop.create_future()
        mailbox.put_nowait(message, future)
        entry = self._deadlines.add(loop.time() + timeout_s, future, name, timeout_s)
        try:
            return await future
        finally:
            self._deadlines.discard(entry)

    # -- peers we dial --------------------------------------------------------------------

    async def connect(self, endpoint: str, timeout: float = 5000) -> RemoteNode:
        """Reach the node bound at ``endpoint`` (``tcp://host:port``) and return it.

        The documented way in when discovery is not used; `Zone.nodes` uses it too.

        Raises:
            PeerUnavailableError: nothing answered at ``endpoint`` in time.
            SecurityError: the node there belongs to another zone.
        """
        self._check_running()
        peer = self._peer(endpoint, "")
        rid = self._new_rid()
        hello = encode(HELLO, rid, self._name, self.zone, self.endpoint, self.instance)
        try:
            info = await self._call(peer, rid, hello, "", timeout_seconds(timeout))
        except ReplyTimeoutError as exc:
            raise PeerUnavailableError(endpoint, "no answer to hello") from exc
        if (
            not isinstance(info, list)
            or len(info) != 4
            or not all(isinstance(part, str) for part in info)
        ):
            raise ProtocolError(f"node at {endpoint} answered hello with {info!r}")
        name, zone, _, instance = info
        if zone != self.zone:
            raise SecurityError(f"node {name!r} at {endpoint} belongs to zone {zone!r}")
        peer.name = name
        peer.instance = instance
        assert peer.remote is not None
        return peer.remote

    def peers(self) -> list[RemoteNode]:
        """The other nodes of the zone this node has reached and holds as members."""
        agent = self._zone_agent
        if agent is None:
            return []
        return [self._remote_for(m.endpoint, m.name) for m in agent.members.members()]

    def _forget_peer(self, endpoint: str) -> None:
        """Close the connection to a node that left the zone for good."""
        peer = self._peers.pop(endpoint, None)
        if peer is None:
            return
        self._peer_lost(peer, "closed", PeerUnavailableError(peer.label, "left the zone"))
        if peer.dealer is not None and self._transport is not None:
            self._transport.forget(peer.dealer)

    def _remote_for(self, endpoint: str, name: str) -> RemoteNode:
        """A `RemoteNode` for a peer known by reference (its connection is dialed now)."""
        self._check_running()
        remote = self._peer(endpoint, name).remote
        assert remote is not None
        return remote

    def _peer(self, endpoint: str, name: str) -> _Peer:
        peer = self._peers.get(endpoint)
        if peer is not None:
            if name and not peer.name:
                peer.name = name
            return peer
        transport = self._transport
        assert transport is not None
        assert self._loop is not None
        peer = _Peer(endpoint, name, self._loop.time())
        peer.remote = RemoteNode(self, peer)
        peer.dealer = transport.dial(
            endpoint,
            lambda data: self._on_peer_message(peer, data),
            lambda event, reason: self._on_peer_event(peer, event, reason),
        )
        self._peers[endpoint] = peer
        return peer

    def _new_rid(self) -> int:
        self._rid += 1
        return self._rid

    async def _wait_up(self, peer: _Peer, deadline: float, worker: str, timeout_s: float) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if peer.state != "connecting" and now - peer.since > PEER_UNREACHABLE_S:
            raise PeerUnavailableError(peer.label, peer.reason)
        limit = min(deadline, max(peer.since, now) + PEER_UNREACHABLE_S)
        if not await _park(peer.up_waiters, limit):
            if limit >= deadline:
                raise ReplyTimeoutError(worker, timeout_s * 1000)
            raise PeerUnavailableError(
                peer.label, f"{peer.reason} (waited {PEER_UNREACHABLE_S:g} s)"
            )

    async def _call(
        self, peer: _Peer, rid: int, frame: bytes, worker: str, timeout_s: float | None = None
    ) -> Any:
        """Send a frame that expects an answer (REPLY, RESULT or ERROR) and await it."""
        if self._state is not NodeState.RUNNING:
            self._check_running()
        if timeout_s is None:
            timeout_s = self.control_timeout_s
        loop = self._loop
        assert loop is not None
        deadline = loop.time() + timeout_s
        if peer.state != "up":
            await self._wait_up(peer, deadline, worker, timeout_s)
        if len(peer.pending) >= MAX_PENDING_PER_PEER:
            await self._wait_slot(peer, deadline, worker, timeout_s)
        future: asyncio.Future[Any] = loop.create_future()
        peer.pending[rid] = future
        try:
            assert peer.dealer is not None
            peer.dealer.send(frame)
            entry = self._deadlines.add(deadline, future, worker, timeout_s)
            try:
                return await future
            finally:
                self._deadlines.discard(entry)
        finally:
            del peer.pending[rid]
            if peer.slot_waiters:
                _wake_first(peer.slot_waiters)

    async def _wait_slot(self, peer: _Peer, deadline: float, worker: str, timeout_s: float) -> None:
        """Wait (backpressure) until the peer has fewer than MAX_PENDING_PER_PEER calls."""
        while len(peer.pending) >= MAX_PENDING_PER_PEER:
            if not await _park(peer.slot_waiters, deadline):
                raise ReplyTimeoutError(worker, timeout_s * 1000)

    async def _ping(self, peer: _Peer, timeout_s: float) -> None:
        rid = self._new_rid()
        await self._call(peer, rid, encode(PING, rid), "", timeout_s)

    async def _send_remote(self, peer: _Peer, worker: str, message: str, timeout_s: float) -> None:
        if self._state is not NodeState.RUNNING:
            self._check_running()
        inflight = peer.credit.get(worker)
        if inflight is None:
            # The first message to a remote worker is confirmed (one round trip), so that a
            # wrong worker name fails at the call, not in a log on the other machine.
            peer.credit[worker] = 1
            rid = self._new_rid()
            try:
                await self._call(peer, rid, encode_send(worker, message, rid), worker, timeout_s)
            except BaseException:
                peer.credit.pop(worker, None)
                raise
            return
        if inflight >= SEND_WINDOW or peer.state != "up":
            await self._wait_credit(peer, worker, timeout_s)
        peer.credit[worker] = peer.credit.get(worker, 0) + 1
        assert peer.dealer is not None
        peer.dealer.send(encode_send(worker, message))

    async def _wait_credit(self, peer: _Peer, worker: str, timeout_s: float) -> None:
        loop = self._loop
        assert loop is not None
        deadline = loop.time() + timeout_s
        while True:
            if peer.state != "up":
                await self._wait_up(peer, deadline, worker, timeout_s)
            if peer.credit.get(worker, 0) < SEND_WINDOW:
                return
            if not await _park(peer.credit_waiters.setdefault(worker, []), deadline):
                raise ReplyTimeoutError(worker, timeout_s * 1000)

    def _on_peer_event(self, peer: _Peer, event: PeerEvent, reason: str) -> None:
        assert self._loop is not None
        if event == "up":
            was = peer.state
            peer.state = "up"
            peer.reason = ""
            peer.since = self._loop.time()
            for waiter in peer.up_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self._zone_agent is not None:
                self._zone_agent.peer_changed(peer)
            if was not in ("connecting", "up"):
                log.info("peer %s is back", peer.label)
                # A restarted peer does not know us yet: introduce ourselves again.
                rid = self._new_rid()
                hello = encode(HELLO, rid, self._name, self.zone, self.endpoint, self.instance)
                with contextlib.suppress(AutonomyError):
                    assert peer.dealer is not None
                    peer.dealer.send(hello)
            return
        if event == "down" and peer.state in ("gone", "closed", "refused"):
            return
        state = "down" if event == "down" else "refused"
        if state == peer.state == "down" and "handshake" in peer.reason:
            reason = peer.reason  # "connection lost" after a failed handshake says less
        if peer.state != state:
            # Loud only when it fails somebody; a connection that drops with nothing in
            # flight (a node stopping before our hello reached it) is news, not trouble.
            busy = peer.pending or peer.up_waiters or any(peer.credit_waiters.values())
            log.log(
                logging.WARNING if busy or state == "refused" else logging.INFO,
                "peer %s: %s",
                peer.label,
                reason,
            )
        self._peer_lost(peer, state, PeerUnavailableError(peer.label, reason))

    def _peer_lost(self, peer: _Peer, state: str, error: AutonomyError) -> None:
        """Fail everything waiting on ``peer``: it is down, refused us, left, or we stop."""
        assert self._loop is not None
        peer.state = state
        peer.reason = getattr(error, "reason", None) or str(error)
        peer.since = self._loop.time()
        for future in peer.pending.values():
            if not future.done():
                future.set_exception(_fresh(error))
        for waiters in peer.credit_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(_fresh(error))
        for waiter in peer.up_waiters:
            if not waiter.done() and state in ("refused", "closed"):
                waiter.set_exception(_fresh(error))
        for waiter in peer.slot_waiters:
            if not waiter.done():
                waiter.set_exception(_fresh(error))
        # Windows restart from zero: a restarted peer has fresh mailboxes.
        peer.credit.clear()
        if self._zone_agent is not None and self._state is NodeState.RUNNING:
            self._zone_agent.peer_changed(peer)  # liveness decides membership

    def _on_peer_message(self, peer: _Peer, data: bytes) -> None:
        frames, error = split(data, self._max_frame_bytes)
        for each in frames:
            try:
                frame = check_frame(each)
            except ProtocolError as exc:
                log.warning("bad frame from peer %s: %s", peer.label, exc)
                continue
            self._on_peer_frame(peer, frame)
        if error is not None:
            log.warning("bad frame from peer %s: %s", peer.label, error)

    def _on_peer_frame(self, peer: _Peer, frame: list[Any]) -> None:
        kind = frame[1]
        if kind in (REPLY, RESULT):
            future = peer.pending.get(frame[2])
            if future is not None and not future.done():
                future.set_result(frame[3])
        elif kind == CREDIT:
            worker, count = frame[2], frame[3]
            inflight = peer.credit.get(worker)
            if inflight is not None:
                peer.credit[worker] = max(0, inflight - count)
                for waiter in peer.credit_waiters.get(worker, ()):
                    if not waiter.done():
                        waiter.set_result(None)
        elif kind == ERROR:
            rid, code, message, fields = frame[2], frame[3], frame[4], frame[5]
            error = error_from_wire(code, message, fields)
            if rid == 0:
                self._on_nack(peer, error, fields)
                return
            future = peer.pending.get(rid)
            if future is not None and not future.done():
                future.set_exception(error)
        elif kind == BYE:
            log.info("peer %s left: %s", peer.label, frame[2])
            self._peer_lost(peer, "gone", PeerUnavailableError(peer.label, "the node stopped"))
        else:
            log.warning("unexpected frame kind %d from peer %s", kind, peer.label)

    def _on_nack(self, peer: _Peer, error: AutonomyError, fields: dict[str, Any]) -> None:
        """A peer refused one-way messages (unknown or stopped worker, window exceeded)."""
        worker = fields.get("worker")
        if isinstance(worker, str) and peer.credit.pop(worker, None) is not None:
            log.warning(
                "one-way messages to %s on %s were not delivered: %s", worker, peer.label, error
            )
            for waiter in peer.credit_waiters.get(worker, ()):
                if not waiter.done():
                    waiter.set_exception(_fresh(error))
        else:
            log.debug("one-way messages to %s on %s refused: %s", worker, peer.label, error)

    # -- frames from the nodes that dialed us -----------------------------------------------

    def _send_to_dialer(self, ident: bytes, frame: bytes) -> None:
        transport = self._transport
        if transport is None or self._state is NodeState.STOPPED:
            return
        try:
            transport.router_send(ident, frame)
        except AutonomyError as exc:
            # The caller is gone (it died or stopped): nobody is left to tell.
            log.debug("cannot answer dialer %r: %s", ident, exc)

    def _on_router_message(self, ident: bytes, data: bytes) -> None:
        frames, error = split(data, self._max_frame_bytes)
        logged = False  # the log counts bad messages, not the frames in them
        for each in frames:
            try:
                frame = check_frame(each)
            except ProtocolError as exc:
                self._bad_frame(ident, request_id_in(each), exc, log_it=not logged)
                logged = True
                continue
            self._on_router_frame(ident, frame)
        if error is not None:
            # Over the limit (under libzmq's cut at twice the limit) a whole request may
            # still name its id: answer it.
            rid = request_id_of(data) if not frames else None
            self._bad_frame(ident, rid, error, log_it=not logged)

    def _on_router_frame(self, ident: bytes, frame: list[Any]) -> None:
        kind = frame[1]
        if self._state is not NodeState.RUNNING:
            rid = request_id_in(frame)
            if rid:
                self._send_to_dialer(ident, encode_error(rid, NodeClosedError("node stopping")))
            return
        try:
            if kind == REQUEST:
                _, _, rid, worker, message, timeout_ms = frame
                mailbox = self._workers.get(worker)
                if mailbox is None:
                    raise WorkerNotFoundError(worker, self._name)
                if mailbox.queued >= REMOTE_QUEUE_LIMIT:
                    raise MailboxFullError(worker, self._name, REMOTE_QUEUE_LIMIT)
                assert self._loop is not None
                deadline = self._loop.time() + timeout_ms / 1000 if timeout_ms else 0.0
                mailbox.put_nowait(message, (ident, rid, deadline))
            elif kind == SEND:
                self._on_send(ident, frame[2], frame[3], frame[4])
            elif kind == HELLO:
                self._on_hello(ident, frame)
            elif kind == START:
                self._on_start(ident, frame[2], frame[3], frame[4])
            elif kind == STOP:
                self._spawn(self._on_stop(ident, frame[2], frame[3]))
            elif kind == LIST:
                self._send_to_dialer(ident, encode_result(frame[2], self._worker_list()))
            elif kind == PING:
                self._send_to_dialer(ident, encode_result(frame[2], None))
            elif kind == MEMBERS:
                known = (
                    self._zone_agent.member_list()
                    if self._zone_agent is not None
                    else [[self._name, self.endpoint, self.instance]]
                )
                self._send_to_dialer(ident, encode_result(frame[2], known))
            elif kind == BYE:
                self._on_dialer_bye(ident)
            else:
                raise ProtocolError(f"a dialer may not send frames of kind {kind}")
        except AutonomyError as exc:
            rid = request_id_in(frame)
            if isinstance(exc, ProtocolError):
                self._bad_frame(ident, rid, exc)
            elif rid:
                self._send_to_dialer(ident, encode_error(rid, exc))
            elif kind == SEND:
                self._send_to_dialer(ident, encode_error(0, exc))

    def _bad_frame(
        self, ident: bytes, rid: int | None, exc: ProtocolError, *, log_it: bool = True
    ) -> None:
        # Logged once per dialer at WARNING, then at DEBUG with a count: a misbehaving or
        # hostile dialer cannot flood the log.
        if rid:
            self._send_to_dialer(ident, encode_error(rid, exc))
        if not log_it:
            return
        count = self._bad_frames.get(ident, 0) + 1
        if len(self._bad_frames) > 1000:
            self._bad_frames.clear()
        self._bad_frames[ident] = count
        if count == 1:
            log.warning("refused a bad frame from dialer %r: %s", ident, exc)
        elif count % 1000 == 0:
            log.warning("refused %d bad frames from dialer %r so far", count, ident)
        else:
            log.debug("refused a bad frame from dialer %r: %s", ident, exc)

    def _on_send(self, ident: bytes, worker: str, message: str, rid: int) -> None:
        mailbox = self._workers.get(worker)
        if mailbox is None:
            raise WorkerNotFoundError(worker, self._name)
        entry = mailbox.remote.get(ident)
        if entry is None:
            entry = mailbox.remote[ident] = [0, 0]
        if entry[0] >= 2 * SEND_WINDOW:
            # The sender ignored its credit window: refuse rather than queue without bound.
            raise MailboxFullError(worker, self._name, 2 * SEND_WINDOW)
        entry[0] += 1
        mailbox.put_nowait(message, ident)
        if rid:
            self._send_to_dialer(ident, encode_result(rid, None))

    def _send_credit(self, ident: bytes, worker: str, count: int) -> None:
        self._send_to_dialer(ident, encode(CREDIT, worker, count))

    def _nack_remote_sends(
        self, ident: bytes, worker: str, count: int, error: AutonomyError
    ) -> None:
        """Tell a remote sender that ``count`` of its one-way messages were dropped."""
        log.warning(
            "worker %r stopped with %d one-way messages from %r queued: sender told",
            worker,
            count,
            self._dialers.get(ident, (ident,))[0],
        )
        self._send_to_dialer(ident, encode_error(0, error))

    def _on_hello(self, ident: bytes, frame: list[Any]) -> None:
        _, _, rid, name, zone, endpoint, instance = frame
        if zone != self.zone:
            raise SecurityError(f"node {name!r} of zone {zone!r} refused by zone {self.zone!r}")
        known = self._dialers.get(ident)
        if known is None:
            log.debug("node %r (%s) dialed us", name, endpoint)
        self._dialers[ident] = (name, endpoint)
        self._send_to_dialer(
            ident, encode_result(rid, [self._name, self.zone, self.endpoint, self.instance])
        )
        # Our dialers' routing id is their instance: a hello that claims another node's
        # instance is answered, but teaches the zone nothing.
        if self._zone_agent is not None and endpoint and ident == instance.encode():
            self._zone_agent.heard_of(name, endpoint, instance, "hello")

    def _on_dialer_bye(self, ident: bytes) -> None:
        known = self._dialers.pop(ident, None)
        for mailbox in self._workers.values():
            mailbox.remote.pop(ident, None)
        if known is None:
            return
        _name, endpoint = known
        peer = self._peers.get(endpoint)
        # Only the node itself may say that it leaves: its dialer's routing id is its instance.
        if (
            peer is not None
            and ident == peer.instance.encode()
            and peer.state not in ("gone", "closed")
        ):
            log.info("peer %s left", peer.label)
            self._peer_lost(peer, "gone", PeerUnavailableError(peer.label, "the node stopped"))

    def _on_start(self, ident: bytes, rid: int, name: str, payload: bytes) -> None:
        try:
            check_name(name)
        except ValueError as exc:
            raise WorkerStartError(name, self._name, str(exc)) from exc
        if not self._allow_shipping:
            raise SecurityError(
                f"node {self._name!r} does not accept shipped workers"
                + ("" if self.secure else " (plain mode; pass allow_shipping=True to allow)")
            )
        try:
            worker = loads_worker(payload, self, self._allowed)
            check_worker(worker)
        except Exception as exc:
            raise WorkerStartError(name, self._name, f"{type(exc).__name__}: {exc}") from exc
        self._add_worker(name, worker)  # type: ignore[arg-type]
        self._send_to_dialer(ident, encode_result(rid, None))

    async def _on_stop(self, ident: bytes, rid: int, name: str) -> None:
        try:
            await self._do_stop_worker(name)
        except AutonomyError as exc:
            self._send_to_dialer(ident, encode_error(rid, exc))
        else:
            self._send_to_dialer(ident, encode_result(rid, None))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(_as_coroutine(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _park(waiters: list[asyncio.Future[None]], deadline: float) -> bool:
    """Wait in ``waiters`` until woken (True) or until ``deadline`` in loop time (False).
    Whoever wakes a waiter may also fail it: that exception is raised here."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        async with asyncio.timeout_at(deadline):
            await waiter
    except TimeoutError:
        return False
    finally:
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)
    return True


def _wake_first(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
            return


def _fresh(error: AutonomyError) -> AutonomyError:
    """A new instance of ``error`` (one exception object must not be raised in many tasks)."""
    reduced: Any = error.__reduce__()
    return reduced[0](*reduced[1])  # type: ignore[no-any-return]


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return default


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _configure_logging() -> None:
    """`Node.start` is a program's entry point: show warnings (level from
    ``AUTONOMY_LOG_LEVEL``) unless the program configured logging itself."""
    root = logging.getLogger()
    if not root.handlers:
        level = os.environ.get("AUTONOMY_LOG_LEVEL", "WARNING").upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
