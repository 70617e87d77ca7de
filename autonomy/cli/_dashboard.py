"""The web dashboard of ``zone dashboard``: a page, its JSON and its live updates (aiohttp).

Serves what a `ZoneWatcher` knows:

- ``GET /``: one self-contained page (``dashboard.html``: inline CSS and JavaScript, nothing
  fetched from elsewhere, which its Content-Security-Policy enforces), rendered at once from
  the snapshot embedded in it, then kept live by ...
- ``GET /api/events``: server-sent events, one ``data:`` line of JSON per change;
- ``GET /api/zone``: the same JSON, once (``ZoneView.snapshot``: nodes, their workers and
  counters, totals, events).

On loopback (the default) it answers only requests that name a loopback host, so that a web
page elsewhere cannot read the zone through the browser (DNS rebinding). It has no login:
bound elsewhere, anyone who reaches the port sees the zone's names and counters.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Final

from aiohttp import web

from autonomy import ConfigError

from ._watcher import ZoneWatcher

__all__ = ["KEEPALIVE_S", "Dashboard"]

logger = logging.getLogger("autonomy.cli")

KEEPALIVE_S: Final = 15.0
"""A quiet event stream gets a comment this often (proxies and browsers keep it open)."""

WRITE_TIMEOUT_S: Final = 10.0
"""A browser that does not read its event stream for this long is dropped."""

SHUTDOWN_TIMEOUT_S: Final = 3.0
"""How long requests in progress get when the dashboard stops."""

_PLACEHOLDER: Final = "__SNAPSHOT__"
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.", "ip6-localhost"})
_CSP: Final = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _script_json(data: bytes) -> str:
    """JSON that is safe inside ``<script>`` (a node named ``</script>`` stays text)."""
    return (
        data.decode()
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


class Dashboard:
    """The dashboard's web server, over a running `ZoneWatcher`.

    Args:
        watcher: the zone's watcher (entered).
        host: the address to bind (``127.0.0.1`` unless the user said otherwise).
        port: the port (0: any free one; `url` says which).
    """

    def __init__(self, watcher: ZoneWatcher, host: str, port: int) -> None:
        self._watcher = watcher
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._page = (
            resources.files(__package__ or "autonomy.cli")
            .joinpath("dashboard.html")
            .read_text(encoding="utf-8")
        )
        self._payload: bytes | None = None
        self._tick = asyncio.Event()
        self._closing = False
        self.url = ""
        """``http://HOST:PORT/``, once started."""
        watcher.on_change(self._changed)

    def __repr__(self) -> str:
        return f"<Dashboard {self.url or 'not started'} zone={self._watcher.zone!r}>"

    async def start(self) -> str:
        """Bind and serve; returns the page's URL.

        Raises:
            ConfigError: the address cannot be bound.
        """
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/zone", self._zone)
        app.router.add_get("/api/events", self._events)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"cannot serve the dashboard on {self._host}:{self._port}: {exc.strerror or exc}",
                key="--port",
            ) from exc
        self._runner = runner
        address = runner.addresses[0]
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        self.url = f"http://{host}:{address[1]}/"
        if not _is_loopback(self._host):
            logger.warning(
                "the dashboard on %s has no login: whoever reaches it sees the zone's nodes, "
                "workers and counters",
                self._host,
            )
        return self.url

    async def stop(self) -> None:
        """Close the event streams and stop serving. Idempotent."""
        runner, self._runner = self._runner, None
        self._closing = True
        self._changed()
        if runner is not None:
            await runner.cleanup()

    # -- what changed -------------------------------------------------------------------------

    def _changed(self) -> None:
        self._payload = None
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _snapshot(self) -> bytes:
        if self._payload is None:
            self._payload = json.dumps(self._watcher.snapshot(), separators=(",", ":")).encode()
        return self._payload

    # -- the routes ---------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_loopback(self._host) and not _is_loopback(request.url.host or ""):
            return web.Response(status=403, text="this dashboard answers on loopback only\n")
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    async def _index(self, request: web.Request) -> web.Response:
        page = self._page.replace(_PLACEHOLDER, _script_json(self._snapshot()), 1)
        response = web.Response(text=page, content_type="text/html")
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    async def _zone(self, request: web.Request) -> web.Response:
        return web.Response(body=self._snapshot(), content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        try:
            await self._write(response, b"retry: 1000\n\ndata: " + self._snapshot() + b"\n\n")
            while not self._closing:
                tick = self._tick
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        await tick.wait()
                except TimeoutError:
                    await self._write(response, b": keepalive\n\n")
                    continue
                if self._closing:
                    break
                await self._write(response, b"data: " + self._snapshot() + b"\n\n")
        except (ConnectionError, TimeoutError):
            pass  # the browser went away, or stopped reading
        return response

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> None:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.write(data)
