"""A node's counters: one snapshot (`snapshot`, what ``stats()`` returns) and the same as
Prometheus metrics served over HTTP (`MetricsServer`, with the ``prometheus-client`` package).

Nothing here is on the hot path: the counters are plain integers the node's parts keep
(``Mailbox``, ``Link``, ``Traffic``, ``Inbound``), read only when someone asks. A scrape runs
in the HTTP server's thread and asks the node's event loop for the snapshot, so the node's
state is never read from another thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ._errors import ConfigError
from ._inbound import Inbound
from ._mailbox import Workers
from ._membership import ZoneAgent
from ._peer import Identity, Links
from ._threads import in_thread
from ._transport import Transport

__all__ = ["SCRAPE_TIMEOUT_S", "MetricsServer", "metrics_address", "snapshot"]

log = logging.getLogger("autonomy.metrics")

SCRAPE_TIMEOUT_S: Final = 5.0
"""How long a scrape waits for the node's loop to take its snapshot."""


def snapshot(
    me: Identity,
    started: float,
    transport: Transport,
    links: Links,
    inbound: Inbound,
    agent: ZoneAgent,
    workers: Workers,
) -> dict[str, Any]:
    """Every counter of one node, as plain values (see ``NodeInterface.stats``). Someone
    looks: the workers' handler times are kept from now on (`Workers.keep_times`)."""
    workers.keep_times()
    peers: dict[str, Any] = {}
    for link in links:
        dealer = link.dealer
        peers[link.name or link.endpoint] = {
            "endpoint": link.endpoint,
            "state": link.state.value,
            "in_flight": len(link.pending),
            "frames_sent": link.frames_sent,
            "frames_received": link.frames_received,
            **(dealer.traffic.as_dict() if dealer is not None else {}),
            "reconnects": max(0, dealer.reconnects - 1) if dealer is not None else 0,
        }
    mailboxes = workers.mailboxes()
    return {
        "node": me.name,
        "zone": me.zone,
        "endpoint": me.endpoint,
        "instance": me.instance,
        "uptime_s": round(time.monotonic() - started, 3),
        "members": len(agent.members.members()),
        **transport.totals(),
        "rejected_frames": inbound.rejected,
        "expired_requests": sum(m.expired for m in mailboxes),
        "connections": {"dialed": len(links), "accepted": inbound.dialers},
        "workers": {
            m.name: {
                "handled": m.handled,
                "failed": m.failed,
                "queued": m.queued,
                "expired": m.expired,
                **({"handler_seconds": m.times.as_dict(m.handled)} if m.times else {}),
            }
            for m in mailboxes
        },
        "peers": peers,
    }


def metrics_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (loopback unless a host is given).

    Raises:
        ConfigError: not a port, or not a host and port.
    """
    host, _, port = value.strip().rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"expected HOST:PORT or PORT, got {value!r}", key="AUTONOMY_METRICS")
    return host, int(port)


def _families(stats: dict[str, Any]) -> Iterator[Metric]:
    node = stats["node"]

    def family(kind: type[Any], name: str, text: str, labels: list[str]) -> Any:
        return kind(name, text, labels=["node", *labels])

    handled = family(
        CounterMetricFamily, "autonomy_messages_handled", "Messages handled", ["worker"]
    )
    failed = family(
        CounterMetricFamily, "autonomy_messages_failed", "Messages whose handler raised", ["worker"]
    )
    expired = family(
        CounterMetricFamily,
        "autonomy_requests_expired",
        "Requests dropped unhandled: their caller had given up",
        ["worker"],
    )
    depth = family(GaugeMetricFamily, "autonomy_mailbox_depth", "Messages queued now", ["worker"])
    seconds = family(
        HistogramMetricFamily, "autonomy_handler_seconds", "Handler time (wall)", ["worker"]
    )
    for worker, counts in stats["workers"].items():
        handled.add_metric([node, worker], counts["handled"])
        failed.add_metric([node, worker], counts["failed"])
        expired.add_metric([node, worker], counts["expired"])
        depth.add_metric([node, worker], counts["queued"])
        histogram = counts.get("handler_seconds")
        if histogram is not None:  # None: the node keeps no handler times
            seconds.add_metric(
                [node, worker], list(histogram["buckets"].items()), sum_value=histogram["sum"]
            )
    yield from (handled, failed, expired, depth, seconds)

    in_flight = family(
        GaugeMetricFamily, "autonomy_peer_requests_in_flight", "Calls awaiting an answer", ["peer"]
    )
    per_peer = {
        key: family(CounterMetricFamily, f"autonomy_peer_{key}", text, ["peer"])
        for key, text in (
            ("frames_sent", "Frames sent to the peer"),
            ("frames_received", "Frames received from the peer"),
            ("bytes_sent", "Bytes sent to the peer"),
            ("bytes_received", "Bytes received from the peer"),
            ("reconnects", "Connections to the peer after the first"),
        )
    }
    for peer, counts in stats["peers"].items():
        in_flight.add_metric([node, peer], counts["in_flight"])
        for key, metric in per_peer.items():
            metric.add_metric([node, peer], counts.get(key, 0))
    yield in_flight
    yield from per_peer.values()

    members = GaugeMetricFamily(
        "autonomy_zone_members", "Members of the zone this node sees", labels=["node", "zone"]
    )
    members.add_metric([node, stats["zone"]], stats["members"])
    yield members
    for key, text in (
        ("messages_sent", "ZeroMQ messages sent (all sockets)"),
        ("messages_received", "ZeroMQ messages received (all sockets)"),
        ("refused_handshakes", "Connections whose handshake was refused or failed"),
        ("rejected_frames", "Frames refused as malformed or over the limit"),
    ):
        metric = CounterMetricFamily(f"autonomy_{key}", text, labels=["node"])
        metric.add_metric([node], stats[key])
        yield metric


class _Collector:
    """Asks the node's loop for a snapshot at each scrape (from the server's thread)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stats: Callable[[], Awaitable[dict[str, Any]]]
    ) -> None:
        self._loop = loop
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        async def take() -> dict[str, Any]:
            return await self._stats()

        try:
            stats = asyncio.run_coroutine_threadsafe(take(), self._loop).result(SCRAPE_TIMEOUT_S)
        except Exception as exc:  # a stopping node, a loop blocked: an empty scrape, logged
            log.warning("metrics: no snapshot from the node: %r", exc)
            return
        yield from _families(stats)


class MetricsServer:
    """``http://HOST:PORT/metrics`` in the Prometheus text format, for one node."""

    def __init__(self, address: str, stats: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._host, self._port = metrics_address(address)
        self._stats = stats
        self._server: Any = None
        self._thread: Any = None
        self.url = ""
        """``http://HOST:PORT/metrics``, once started."""

    def start(self) -> None:
        """Bind and serve (in a thread of prometheus-client's).

        Raises:
            ConfigError: the address cannot be bound.
        """
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(asyncio.get_running_loop(), self._stats))
        try:
            self._server, self._thread = start_http_server(
                self._port, addr=self._host, registry=registry
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self._host}:{self._port}: {exc}", key="metrics"
            ) from exc
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{self._server.server_port}/metrics"
        log.info("metrics at %s", self.url)

    async def stop(self) -> None:
        """Stop serving; the server's thread ends (waited for off the loop: a scrape in
        progress may be waiting for the loop)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = None

        def shut() -> None:
            server.shutdown()
            server.server_close()
            thread.join()

        await in_thread(shut, SCRAPE_TIMEOUT_S + 2)
