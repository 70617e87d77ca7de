"""Text for people: lists cut short, uptimes and tables, as the command line prints them."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Final, TextIO

__all__ = ["LISTED_NAMES", "brief_list", "table", "uptime"]

LISTED_NAMES: Final = 10
"""How many names a message lists before it says how many more there are (a zone may have a
thousand nodes: a message naming them all would bury what it says)."""


def brief_list(names: Iterable[str], limit: int = LISTED_NAMES) -> str:
    """``a, b, c`` or, past ``limit`` names, ``a, b, c, ... and 99,997 more``."""
    items = list(names)
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... and {len(items) - limit:,} more"


def uptime(started_at: float | None) -> str:
    """How long ago ``started_at`` (seconds since the epoch) was: ``42s``, ``3m05s``, ..."""
    if started_at is None:
        return "-"
    seconds = max(0, int(time.time() - started_at))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Write ``rows`` (the header first) as columns padded to their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")
