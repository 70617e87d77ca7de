"""`Node`: one process's place in the mesh: its lifecycle, its workers, and the public API.

A node is assembled from the layers below it: a `Transport` (its ROUTER and DEALERs), the
`Links` it dials (``_peer``: the caller's side), the `Inbound` dispatch of what its dialers
send (``_inbound``), its `Workers` (``_mailbox``) and its view of the zone (``_membership``).
It starts and stops them in order, runs local calls on its own mailboxes, and hands out
`RemoteNode`s for the others.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Self

from ._base import NodeInterface, check_worker, timeout_seconds
from ._config import Settings, bind_address, seed_endpoints
from ._deadlines import Deadlines
from ._errors import (
    ConfigError,
    NodeClosedError,
    ReplyTimeoutError,
    SecurityError,
    WorkerNotFoundError,
    WorkerStartError,
)
from ._handles import EndpointLink, MemberLink
from ._inbound import Inbound
from ._mailbox import MAILBOX_SIZE, Mailbox, Workers
from ._membership import ZoneAgent
from ._metrics import MetricsServer, metrics_address, snapshot
from ._peer import Identity, Links
from ._protocol import MAX_FRAME_BYTES, check_name
from ._remote import RemoteNode
from ._secret import derive_seeds, zone_secret
from ._shipping import loads_worker, node_reference
from ._transport import Transport, curve_keys
from ._worker import Worker

__all__ = ["CONTROL_TIMEOUT_MS", "STOP_GRACE_S", "Node", "NodeState"]

log = logging.getLogger("autonomy.node")

STOP_GRACE_S: Final = 5.0
"""How long stopping a worker (or the node) lets the message in hand finish."""

CONTROL_TIMEOUT_MS: Final = 15_000
"""Default timeout of start_worker / stop_worker / list_workers on a remote node."""


class NodeState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def _default_name() -> str:
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{secrets.token_hex(3)}"


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
            seed is enough. A seed's name may resolve to several nodes (a headless Service).
        observer: watch the zone without joining it: the node reaches the members (their
            ``stats()``, ``list_workers()``...) but is no member itself, so that it never
            appears in another node's `Zone.nodes` (tools such as ``autonomy zone top``).
        metrics: serve Prometheus metrics at ``http://HOST:PORT/metrics`` (``HOST:PORT`` or
            ``PORT``, loopback unless a host is given); default ``AUTONOMY_METRICS``, else
            none.
        handler_times: keep each worker's handler times (``handler_seconds`` in `stats` and
            the metrics) from the start (True) or never (False). Default
            ``AUTONOMY_HANDLER_TIMES``, else from the first look at the counters (`stats`,
            a dashboard), or from the start when the node serves metrics: until then no
            clock is read a message.

    Raises:
        ConfigError: a setting (argument or ``AUTONOMY_*`` variable) is invalid.
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
        metrics: str | None = None,
        observer: bool = False,
        handler_times: bool | None = None,
    ) -> None:
        settings = Settings.from_env()
        self._settings = settings
        self._name = check_name(name or settings.node_name or _default_name(), "node name")
        self.zone: str = check_name(zone or settings.zone or "default", "zone")
        """The zone this node belongs to."""
        self._bind = bind_address(bind) if bind is not None else settings.bind
        self._max_frame_bytes = max_frame_bytes
        self.mailbox_size = mailbox_size
        self.instance: str = f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(4)}"
        """Id of this run of the node: its start time (ms, hex) then 8 random hex digits. A
        restarted node has a new one; of two nodes of one name, the older sorts first."""
        self.endpoint: str = ""
        """The bound ROUTER's address (``tcp://127.0.0.1:53211``), set once started."""
        self.control_timeout_s = CONTROL_TIMEOUT_MS / 1000
        if allowed_workers is None and settings.allowed_workers is not None:
            allowed_workers = list(settings.allowed_workers)
        self._allowed: frozenset[str] | None = (
            frozenset(allowed_workers) if allowed_workers is not None else None
        )
        self.secure: bool = secure if secure is not None else settings.secure
        """Whether connections are CURVE-encrypted and authenticated (the default)."""
        self._secret = secret
        if allow_shipping is None:
            allow_shipping = (
                settings.allow_shipping if settings.allow_shipping is not None else self.secure
            )
        self._allow_shipping = allow_shipping or allowed_workers is not None
        self._discovery = discovery if discovery is not None else settings.discovery
        self._seeds = seed_endpoints(peers) if peers is not None else settings.peers
        self._observer = observer
        self._metrics_address = metrics if metrics is not None else settings.metrics
        if self._metrics_address is not None:
            metrics_address(self._metrics_address)  # a bad address fails here, not later
        self._metrics: MetricsServer | None = None
        self._started_at = 0.0
        self._state = NodeState.NEW
        if handler_times is None:
            handler_times = settings.handler_times
        if handler_times is None and self._metrics_address is not None:
            handler_times = True  # every scrape shows every handler's time
        self._workers = Workers(self, mailbox_size, handler_times)
        self._names: set[str] = set()
        self._remotes: dict[str, tuple[EndpointLink, RemoteNode]] = {}
        """Per endpoint, the `RemoteNode` handed out for its current link (``connect``)."""
        self._members: dict[str, RemoteNode] = {}
        """Per name, the `RemoteNode` that follows the zone's member of that name."""
        self._transport: Transport | None = None
        self._links: Links | None = None
        self._inbound: Inbound | None = None
        self._agent: ZoneAgent | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._failure: ConfigError | None = None
        """Why the node stopped on its own (its name was taken in the zone)."""
        self._failing: asyncio.Task[None] | None = None
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

    @property
    def membership(self) -> ZoneAgent:
        """This node's view of its zone: its members and the waits behind `Zone.nodes`.

        Raises:
            NodeClosedError: the node is not running.
        """
        self._check_running()
        assert self._agent is not None
        return self._agent

    def __repr__(self) -> str:
        return (
            f"<Node {self._name!r} {self._state.name} {self.endpoint or '-'} "
            f"workers={len(self._workers)} peers={len(self._links or ())}>"
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
            secret = zone_secret(self.zone, self._secret, self._settings)
            keys = curve_keys(*derive_seeds(secret, self.zone))
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
            keys=keys,
            zap_domain=self.zone,
        )
        try:
            self.endpoint = transport.bind(self._bind, self._on_router_message)
            identity = Identity(
                self._name, self.zone, self.endpoint, self.instance, observer=self._observer
            )
            links = Links(
                transport,
                identity,
                max_frame_bytes=self._max_frame_bytes,
                control_timeout_s=self.control_timeout_s,
            )
            agent = ZoneAgent(
                identity,
                links,
                discovery=self._discovery,
                seeds=self._seeds,
                expected=self._settings.expected_nodes,
                on_conflict=self._fail,
            )
        except BaseException:
            transport.close(0)
            raise
        self._transport = transport
        self._links = links
        self._agent = agent
        self._inbound = Inbound(
            identity,
            transport,
            links,
            self._workers,
            agent,
            start_shipped=self._start_shipped,
            stats=self._stats,
            stop_grace_s=STOP_GRACE_S,
        )
        agent.attach(self._inbound)
        self._started_at = time.monotonic()
        self._state = NodeState.RUNNING
        agent.start()
        if self._metrics_address is not None:
            try:
                self._metrics = MetricsServer(self._metrics_address, self._do_stats)
                self._metrics.start()
            except BaseException:
                await self.stop()
                raise
        log.info("node %r of zone %r listening at %s", self._name, self.zone, self.endpoint)

    def _fail(self, error: ConfigError) -> None:
        """The node cannot go on (its name is taken in the zone): it stops, and `Node.start`
        raises ``error``; later calls fail with `NodeClosedError` saying why."""
        if self._failure is None and self._state is NodeState.RUNNING:
            self._failure = error
            assert self._loop is not None
            self._failing = self._loop.create_task(self.stop())

    def _on_router_message(self, ident: bytes, data: bytes) -> None:
        inbound = self._inbound
        if inbound is not None:
            inbound.on_message(ident, data)

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
        transport, links, inbound = self._transport, self._links, self._inbound
        assert transport is not None
        assert links is not None
        assert inbound is not None
        try:
            inbound.running = False
            if self._metrics is not None:
                await self._metrics.stop()
            if self._agent is not None:
                await self._agent.stop()
            await self._workers.stop_all(STOP_GRACE_S)
            inbound.say_goodbye()
            links.close(f"node {self._name!r} stopped")
            await inbound.close(STOP_GRACE_S)
            transport.close()
            self._deadlines.close()
        finally:
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
            TypeError: ``main`` is a plain ``def`` (it must be ``async def``).
            RuntimeError: called from inside a running event loop (use ``async with Node()``).
            ConfigError: an ``AUTONOMY_*`` setting is invalid, or the node's name is taken
                in its zone by a node that started first.
        """
        if main is not None and _plain_function(main):
            raise TypeError(
                f"Node.start(main) needs `async def {main.__name__}(node)`: "
                f"{main.__name__} is a plain function"
            )
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Node.start() runs its own event loop; inside a running loop use "
                "`async with Node(...) as node:`"
            )
        settings = Settings.from_env()
        if wait_until_interrupted is None:
            wait_until_interrupted = settings.wait_until_interrupted
        _configure_logging(settings.log_level)
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
                assert node._stopped is not None
                ending = [
                    loop.create_task(interrupted.wait()),
                    loop.create_task(node._stopped.wait()),  # it stopped on its own
                ]
                try:
                    if main is not None:
                        main_task = loop.create_task(
                            _as_coroutine(main(node)), name="autonomy-main"
                        )
                        await asyncio.wait(
                            {main_task, *ending}, return_when=asyncio.FIRST_COMPLETED
                        )
                        if not main_task.done():
                            main_task.cancel()
                            await asyncio.wait({main_task})
                        elif not main_task.cancelled():
                            main_task.result()  # re-raise main's exception, after the stop
                    if wait and not any(task.done() for task in ending):
                        await asyncio.wait(ending, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in ending:
                        task.cancel()
                if node._failure is not None:
                    raise node._failure
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    # -- workers on this node -----------------------------------------------------------

    def _check_running(self) -> None:
        if self._state is not NodeState.RUNNING:
            why = f": {self._failure}" if self._failure is not None else ""
            raise NodeClosedError(f"node {self._name!r} is {self._state.value}{why}")

    async def _do_start_worker(self, name: str, worker: Worker) -> None:
        self._check_running()
        self._workers.add(name, worker)

    def _start_shipped(self, name: str, payload: bytes) -> None:
        """Start a worker shipped by a member of the zone (a START frame)."""
        if not self._allow_shipping:
            raise SecurityError(
                f"node {self._name!r} does not accept shipped workers"
                + ("" if self.secure else " (plain mode; pass allow_shipping=True to allow)")
            )
        try:
            worker = loads_worker(payload, self._resolve_reference, self._allowed)
            check_worker(worker)
        except Exception as exc:
            raise WorkerStartError(name, self._name, f"{type(exc).__name__}: {exc}") from exc
        self._workers.add(name, worker)  # type: ignore[arg-type]

    def _resolve_reference(self, zone: str, name: str, endpoint: str) -> Node | RemoteNode:
        """The node a shipped worker refers to: this one, or another reached from here."""
        if zone != self.zone:
            raise SecurityError(f"the worker refers to node {name!r} of another zone ({zone!r})")
        if name == self._name:
            return self
        assert self._agent is not None
        if self._agent.members.get(name) is not None:
            return self._member(name)
        return self._remote(endpoint, name)

    async def _do_stop_worker(self, name: str) -> None:
        self._check_running()
        await self._workers.stop(name, STOP_GRACE_S)

    async def _do_list_workers(self) -> list[dict[str, Any]]:
        self._check_running()
        return self._workers.describe()

    async def _do_stats(self) -> dict[str, Any]:
        self._check_running()
        return self._stats()

    def _stats(self) -> dict[str, Any]:
        transport, links, inbound, agent = self._transport, self._links, self._inbound, self._agent
        assert transport is not None
        assert links is not None
        assert inbound is not None
        assert agent is not None
        me = Identity(self._name, self.zone, self.endpoint, self.instance)
        return snapshot(me, self._started_at, transport, links, inbound, agent, self._workers)

    @property
    def metrics_url(self) -> str:
        """``http://HOST:PORT/metrics`` where Prometheus scrapes this node ("" if none)."""
        return self._metrics.url if self._metrics is not None else ""

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
        mailbox = self._workers.by_name.get(name)
        if mailbox is None or self._state is not NodeState.RUNNING:
            mailbox = self._mailbox(name)
        if not mailbox.has_room():
            await self._wait_room(mailbox, timeout_s)
        mailbox.put_nowait(message, None)

    async def _do_request(self, name: str, message: str, timeout_s: float) -> str:
        mailbox = self._workers.by_name.get(name)
        if mailbox is None or self._state is not NodeState.RUNNING:
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

    # -- other nodes ------------------------------------------------------------------------

    async def connect(self, endpoint: str, timeout: float = 5000) -> RemoteNode:
        """Reach the node bound at ``endpoint`` (``tcp://host:port``) and return it.

        The documented way in when discovery is not used; `Zone.nodes` uses it too.

        Raises:
            PeerUnavailableError: nothing answered at ``endpoint`` in time.
            SecurityError: the node there belongs to another zone.
        """
        self._check_running()
        assert self._links is not None
        link = await self._links.connect(endpoint, timeout_seconds(timeout))
        return self._remote(link.endpoint, link.name)

    def peers(self) -> list[RemoteNode]:
        """The other nodes of the zone this node has reached and holds as members, sorted by
        name. Each follows the member of its name: it reaches a restarted node too."""
        agent = self._agent
        if agent is None or self._state is not NodeState.RUNNING:
            return []
        return [self._member(m.name) for m in agent.members.members()]

    def _member(self, name: str) -> RemoteNode:
        """The `RemoteNode` for the zone's member called ``name``, now or later."""
        remote = self._members.get(name)
        if remote is None:
            assert self._agent is not None
            link = MemberLink(self._agent, name)
            remote = self._members[name] = RemoteNode(self.zone, self._max_frame_bytes, name, link)
        return remote

    def _remote(self, endpoint: str, name: str) -> RemoteNode:
        """The `RemoteNode` for the peer at ``endpoint`` (its link is dialed now)."""
        self._check_running()
        assert self._links is not None
        link = self._links.get(endpoint, name)
        known = self._remotes.get(endpoint)
        if known is not None and known[0]() is link:
            return known[1]
        reopening = EndpointLink(self._links, link)
        remote = RemoteNode(self.zone, self._max_frame_bytes, link.name or endpoint, reopening)
        self._remotes[endpoint] = (reopening, remote)
        return remote


def _plain_function(main: Callable[..., object]) -> bool:
    """A ``def`` (not ``async def``) function or method: a main that cannot be awaited. A
    lambda or a callable object may still return an awaitable: `_as_coroutine` checks."""
    function = getattr(main, "__func__", main)
    return (
        inspect.isfunction(function)
        and not inspect.iscoroutinefunction(function)
        and function.__name__ != "<lambda>"
    )


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    if not inspect.isawaitable(awaitable):
        raise TypeError(
            f"Node.start(main): main(node) returned {type(awaitable).__name__}, not an "
            f"awaitable; write `async def main(node)`"
        )
    return await awaitable


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _configure_logging(level: str) -> None:
    """`Node.start` is a program's entry point: show warnings (level from
    ``AUTONOMY_LOG_LEVEL``) unless the program configured logging itself."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
