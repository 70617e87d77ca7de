"""The ``zone dashboard`` and ``zone top`` commands: their options, and their runs till stopped.

Both watch a running zone from an observer node (``_watcher``) and show what it sees: in
the browser (``_dashboard``, aiohttp) or in the terminal (``_top``, rich). Those modules,
and their libraries, are imported only when one of the two commands runs. Ctrl-C and
SIGTERM stop either cleanly (``q`` too, in ``top``): the web server closes its streams, the
observer node stops, the terminal is given back as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

from autonomy import ConfigError

from ._detached import list_deployments
from ._text import brief_list

__all__ = ["DEFAULT_PORT", "add_observe_arguments", "run_dashboard", "run_top"]

logger = logging.getLogger("autonomy.cli")

DEFAULT_PORT: Final = 8765
"""Where ``zone dashboard`` serves unless told (``--port``)."""

_MESH_LOGGERS: Final = ("autonomy.node", "autonomy.discovery", "autonomy.transport")


class _Subcommands(Protocol):
    """The ``zone`` command's subparsers (what ``add_subparsers`` returned)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


TargetZone = Callable[[str | None, str | None], str | None]
"""``(--zone, DIR) -> the zone's name``, or None when neither names one (the command
line's own rule, as for ``zone list``)."""


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected a port number (0 for any free one), got {text!r}"
        )
    return int(text)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0.1 to 3600 seconds, got {text}")
    return value


def add_observe_arguments(
    actions: _Subcommands,
    formatter: type[argparse.HelpFormatter],
    add_target_options: Callable[[argparse.ArgumentParser], None],
    add_verbosity: Callable[..., None],
) -> None:
    """Add ``dashboard`` and ``top`` to the ``zone`` command's ``actions`` (the grammar only:
    ``run_dashboard`` and ``run_top`` run them)."""
    dashboard = actions.add_parser(
        "dashboard",
        help="watch a running zone live in the browser",
        description="Watch a running zone in the browser: every node, its workers with "
        "their handled and failed messages and rates, queue depths, errors, and nodes "
        "joining and leaving, updated every second. It joins the zone as an observer (a "
        "node that reaches the members without being one, with the zone's secret as any "
        "node finds it) and serves one page, with no login: on 127.0.0.1 unless --host "
        "says otherwise. GET /api/zone gives the same as JSON, GET /api/events as "
        "server-sent events. Ctrl-C stops it.",
        epilog="Examples:\n"
        "  autonomy zone dashboard --zone distribute     http://127.0.0.1:8765/\n"
        "  autonomy zone dashboard --port 0              any free port (printed)\n"
        "  curl -s http://127.0.0.1:8765/api/zone        the same, as JSON",
        formatter_class=formatter,
    )
    add_target_options(dashboard)
    dashboard.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address to serve on (default: %(default)s; 0.0.0.0 opens it to the network)",
    )
    dashboard.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        metavar="PORT",
        help="the port to serve on (default: %(default)s; 0 for any free one)",
    )
    top = actions.add_parser(
        "top",
        help="watch a running zone live in the terminal",
        description="Watch a running zone in the terminal (over SSH too): every node, its "
        "workers with their handled and failed messages and rates, queue depths, and the "
        "latest events, redrawn every second. It joins the zone as an observer, as "
        "`zone dashboard` does. q or Ctrl-C quits.",
        formatter_class=formatter,
    )
    add_target_options(top)
    for parser in (dashboard, top):
        parser.add_argument(
            "--interval",
            type=_interval,
            default=1.0,
            metavar="SECONDS",
            help="how often each node is asked for its counters (default: %(default)g)",
        )
        add_verbosity(parser, default=False)
    dashboard.set_defaults(command="dashboard")
    top.set_defaults(command="top")


def _zone_of(args: argparse.Namespace, target_zone: TargetZone) -> str:
    """The zone named (``--zone``, DIR, ./autonomy.yaml), else the one zone deployed here."""
    name = target_zone(args.zone, args.dir)
    if name is not None:
        return name
    deployed = list_deployments()
    if len(deployed) == 1:
        return deployed[0]
    raise ConfigError(
        "which zone? name it with --zone NAME, or give its folder"
        + (f" (deployed here: {brief_list(deployed)})" if deployed else "")
    )


@contextlib.contextmanager
def _mesh_logs(level: int) -> Iterator[None]:
    """The observer node's own chatter (members coming and going) is what the dashboard
    shows; on the console it is noise, unless -v asked for it."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    saved = {name: logging.getLogger(name).level for name in _MESH_LOGGERS}
    for name in _MESH_LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, previous in saved.items():
            logging.getLogger(name).setLevel(previous)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C, SIGTERM, and SIGHUP (the terminal or the SSH session closed) set ``stop``."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def run_dashboard(args: argparse.Namespace, target_zone: TargetZone) -> int:
    """Run ``zone dashboard`` till stopped; return its exit status."""
    zone = _zone_of(args, target_zone)
    with _mesh_logs(logging.WARNING):
        try:
            return asyncio.run(_dashboard(zone, args.host, args.port, args.interval))
        except KeyboardInterrupt:  # before the signal handlers were in place
            return 130


async def _dashboard(zone: str, host: str, port: int, interval_s: float) -> int:
    from ._dashboard import Dashboard
    from ._watcher import ZoneWatcher

    stop = asyncio.Event()
    with _stop_on_signals(stop):
        watcher = ZoneWatcher(zone, interval_s=interval_s)
        dashboard = Dashboard(watcher, host, port)
        url = await dashboard.start()  # a port in use fails here, before the node starts
        try:
            async with watcher:
                print(f"zone {zone}: dashboard at {url} (Ctrl-C stops it)", flush=True)
                await stop.wait()
                logger.info("stopping the dashboard")
        finally:
            await dashboard.stop()
    return 0


def run_top(args: argparse.Namespace, target_zone: TargetZone) -> int:
    """Run ``zone top`` till ``q``, Ctrl-C or SIGTERM; return its exit status."""
    zone = _zone_of(args, target_zone)
    if not sys.stdout.isatty():
        raise ConfigError(
            "`zone top` draws on a terminal; for a program, `autonomy zone dashboard` "
            "serves the same as JSON at /api/zone"
        )
    # Anything the mesh logged would be drawn over: only its errors get through.
    with _mesh_logs(logging.ERROR):
        try:
            return asyncio.run(_top(zone, args.interval))
        except KeyboardInterrupt:
            return 130


async def _top(zone: str, interval_s: float) -> int:
    from rich.console import Console

    from ._top import show
    from ._watcher import ZoneWatcher

    stop = asyncio.Event()
    with _stop_on_signals(stop):
        async with ZoneWatcher(zone, interval_s=interval_s) as watcher:
            await show(watcher, Console(), stop)
    return 0
