"""The terminal view of ``zone top``: the zone's picture drawn with rich, redrawn live.

`render` turns a snapshot (``ZoneView.snapshot``) into one screen: a line of totals, a table
of the nodes with their workers under them, and the latest events in the rows left.
`show` keeps it on the terminal's alternate screen, redrawn after each round of the
`ZoneWatcher` (and each join or leave), until ``stop`` is set: by ``q`` here, or by whoever
handles Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._watcher import ZoneWatcher

__all__ = ["QUIT_KEYS", "render", "show"]

QUIT_KEYS: Final = frozenset("qQ")

REDRAW_S: Final = 1.0
"""The screen is redrawn at least this often (the clock, a resized terminal)."""

_EVENT_STYLES: Final = {
    "joined": "green",
    "found": "green",
    "answering": "green",
    "started": "green",
    "left": "red",
    "unreachable": "red",
    "failed": "red",
    "rejected": "red",
    "refused": "red",
    "expired": "yellow",
    "restarted": "yellow",
    "stopped": "yellow",
}


def _integer(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _rate(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _millis(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.2f} ms"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _count(value: object, style: str) -> Text:
    text = _integer(value)
    if value == 0:
        return Text(text, style="dim")
    return Text(text, style=style)


def _node_line(node: Mapping[str, Any]) -> Text:
    if node["state"] == "waiting":
        return Text("joined, waiting for its counters", style="dim")
    if node["state"] == "unreachable":
        return Text(f"not answering: {node['error']}", style="red")
    connections = node.get("connections") or {}
    parts = [
        f"up {_duration(node.get('uptime_s'))}",
        f"{_integer(node.get('members'))} members",
        f"{sum(v for v in connections.values() if isinstance(v, int))} conns",
        f"in {_rate(node.get('received_per_s'))}/s out {_rate(node.get('sent_per_s'))}/s",
    ]
    text = Text(" · ".join(parts), style="dim")
    for key, what in (("rejected_frames", "rejected"), ("refused_handshakes", "refused")):
        if node.get(key):
            text.append(f" · {_integer(node[key])} {what}", style="red")
    return text


_COUNTS: Final = (
    ("HANDLED", 9),
    ("PER S", 6),
    ("FAILED", 6),
    ("QUEUED", 6),
    ("EXPIRED", 7),
    ("MEAN", 9),
)
"""The count columns and their widths: never shrunk (a count cut short would lie)."""


def _table(zone: Mapping[str, Any], width: int, rows: int) -> Table:
    # Sized to its cells, not to the terminal, so that a node's line stays next to its
    # numbers; on a narrow terminal the node's line gives way first, then the names.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    names = [node["name"] for node in zone["nodes"]]
    names += ["  " + worker["name"] for node in zone["nodes"] for worker in node["workers"]]
    room = width - sum(wide + 2 for _, wide in _COUNTS) - 2 - 8  # 8: the node's line, at least
    name_width = max(8, min(48, room, max(map(len, names), default=13)))
    table.add_column("NODE / WORKER", no_wrap=True, overflow="ellipsis", width=name_width)
    for name, wide in _COUNTS:
        table.add_column(name, justify="right", no_wrap=True, width=wide)
    spare = width - name_width - sum(wide + 2 for _, wide in _COUNTS) - 2
    table.add_column("NODE", no_wrap=True, overflow="ellipsis", max_width=max(4, spare))
    shown = 0
    nodes = zone["nodes"]
    for index, node in enumerate(nodes):
        lines = 1 + len(node["workers"])
        if shown and shown + lines > rows:
            more = len(nodes) - index
            table.add_row(Text(f"... and {more:,} more node{'s' * (more > 1)}", style="dim"))
            break
        style = {"up": "bold", "unreachable": "bold red"}.get(node["state"], "bold dim")
        table.add_row(Text(node["name"], style=style), *[""] * 6, _node_line(node))
        for worker in node["workers"]:
            table.add_row(
                Text("  " + worker["name"]),
                _integer(worker["handled"]),
                _rate(worker["handled_per_s"]),
                _count(worker["failed"], "bold red"),
                _count(worker["queued"], "yellow"),
                _count(worker["expired"], "yellow"),
                _millis(worker["mean_handler_ms"]),
                "",
            )
        if not node["workers"] and node["state"] == "up":
            table.add_row(Text("  (no workers)", style="dim"))
        shown += lines
    if not nodes:
        what = "looking for the zone's nodes..." if zone.get("discovering") else "no node found"
        table.add_row(Text(what, style="dim"))
    return table


def _events(zone: Mapping[str, Any], rows: int) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False, expand=True)
    table.add_column("time", no_wrap=True, style="dim")
    table.add_column("kind", no_wrap=True, width=11)
    table.add_column("text", no_wrap=True, overflow="ellipsis", ratio=1)
    for event in zone["events"][: max(0, rows)]:
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(event["time"])),
            Text(event["kind"].upper(), style=_EVENT_STYLES.get(event["kind"], "")),
            event["text"],
        )
    return table


def render(zone: Mapping[str, Any], width: int = 200, height: int = 50) -> RenderableType:
    """One screen of ``zone`` (a snapshot) for a terminal of ``width`` x ``height``."""
    totals = zone["totals"]
    header = Text()
    header.append(" autonomy zone top ", style="bold reverse")
    header.append(f"  zone {zone['zone']}", style="bold")
    header.append(
        f"   {_integer(totals['nodes'])} nodes · {_integer(totals['workers'])} workers · "
        f"{_rate(totals['handled_per_s'])} handled/s · {_integer(totals['handled'])} handled · "
    )
    header.append(
        f"{_integer(totals['failed'])} failed", style="bold red" if totals["failed"] else ""
    )
    header.append(f" · {_integer(totals['queued'])} queued")
    footer = Text(
        f" {time.strftime('%H:%M:%S', time.localtime(zone['time']))} · observer "
        f"{zone['observer']} · every {zone.get('interval_s', 1):g} s"
        f"{' · discovering...' if zone.get('discovering') else ''} · q quits",
        style="dim",
    )
    # Header, blank, table header and rule, ..., blank, "EVENTS", ..., footer.
    table_rows = max(3, height - 6 - min(len(zone["events"]), 8) - 2)
    table = _table(zone, width, table_rows)
    events_rows = max(0, height - 6 - min(table.row_count, table_rows + 1) - 1)
    parts: list[RenderableType] = [header, Text(), table]
    if events_rows and zone["events"]:
        parts += [Text("EVENTS", style="bold dim"), _events(zone, events_rows)]
    parts.append(footer)
    return Group(*parts)


@contextlib.contextmanager
def _keys(on_key: Callable[[str], None]) -> Iterator[None]:
    """Calls ``on_key`` for each key typed while inside (when stdin is a terminal): the
    terminal reads keys one by one (cbreak: Ctrl-C still interrupts), as it was after."""
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        yield
        return
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            return
        for key in data.decode(errors="replace"):
            on_key(key)

    tty.setcbreak(fd)
    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def show(watcher: ZoneWatcher, console: Console, stop: asyncio.Event) -> None:
    """Draw the zone on ``console`` (its alternate screen) until ``stop`` is set or ``q``."""
    wake = asyncio.Event()
    watcher.on_change(wake.set)

    def on_key(key: str) -> None:
        if key in QUIT_KEYS:
            stop.set()
            wake.set()

    async def stopped() -> None:
        await stop.wait()
        wake.set()

    waiter = asyncio.get_running_loop().create_task(stopped())
    try:
        with (
            _keys(on_key),
            Live(
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
        ):
            while not stop.is_set():
                size = console.size
                live.update(render(watcher.snapshot(), size.width, size.height), refresh=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REDRAW_S):
                        await wake.wait()
                wake.clear()
    finally:
        waiter.cancel()
        await asyncio.wait({waiter})
