"""The mesh query behind ``zone list``: which workers each running node of a zone hosts.

A temporary node joins the zone, finds the nodes asked for, and asks each for its workers,
through the public API only, within a bounded time. It never prints.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Sequence
from typing import Final

from autonomy import Node, RemoteNode, Zone

from ._text import brief_list

__all__ = ["DESCRIBE_TIMEOUT_S", "describe_workers"]

logger = logging.getLogger("autonomy.cli")

DESCRIBE_TIMEOUT_S: Final = 5.0
"""How long ``zone list`` spends finding a zone's nodes to ask for their workers (a zone
whose containers are not nodes, say a database, takes that long)..."""

_SETTLE_S: Final = 1.5
"""...but once one of them answered, only until no other joined for this long..."""

_LIST_TIMEOUT_S: Final = 2.0
"""...and then how long each node found has to answer ``list_workers``."""

_MESH_LOGGERS: Final = ("autonomy.node", "autonomy.discovery", "autonomy.transport")


def describe_workers(
    zone: str, nodes: Sequence[str], *, bind: str = "127.0.0.1"
) -> dict[str, list[str]] | None:
    """Hook for ``zone list``: the names of the workers each running node hosts, by node.

    Asks over the mesh, through the public API only: a temporary node (``cli-<hex>``, bound
    to ``bind``, the address the zone's nodes are bound to, mDNS discovery on) joins
    ``zone``, waits until the named nodes are members (``Zone.nodes``), and calls
    ``list_workers`` on each. Bounded: `DESCRIBE_TIMEOUT_S` to find them (`_SETTLE_S` after
    the last one joined, when some are missing), then `_LIST_TIMEOUT_S` for their answers.

    Returns ``{node name: [worker names]}``. A node that was not found in time, or did not
    answer, is **omitted** (never shown with an empty list: that would invent data); a node
    that answered with no workers maps to ``[]``. Returns None when the temporary node could
    not run at all (logged as a warning). Never prints, never hangs: the whole query is
    bounded, and it runs on a loop of its own (in a thread when called from inside one).

    Limits: nodes bound to another address than ``bind`` are not discovered from here (nor
    any, where ``bind`` is not an address of this machine's network); for a moment the zone
    has one more member, named ``cli-...``.
    """
    wanted = list(dict.fromkeys(nodes))
    if not wanted:
        return {}
    quiet = not logger.isEnabledFor(logging.DEBUG)
    saved = {name: logging.getLogger(name).level for name in _MESH_LOGGERS}
    if quiet:  # the temporary node's chatter (peers leaving, timeouts) is not for the user
        for name in _MESH_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(_ask_workers(zone, wanted, DESCRIBE_TIMEOUT_S, bind))
        result: list[dict[str, list[str]]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.append(asyncio.run(_ask_workers(zone, wanted, DESCRIBE_TIMEOUT_S, bind)))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, name="autonomy-describe-workers", daemon=True)
        thread.start()
        thread.join(DESCRIBE_TIMEOUT_S + _LIST_TIMEOUT_S + 10.0)
        if errors:
            raise errors[0]
        if not result:
            raise TimeoutError("no answer in time")
        return result[0]
    except Exception as exc:
        logger.warning("could not ask zone %s for its workers: %s", zone, exc)
        return None
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


async def _ask_workers(
    zone: str, wanted: list[str], timeout_s: float, bind: str
) -> dict[str, list[str]]:
    """`describe_workers` on an event loop: the answers that came in time.

    Finding the nodes takes at most ``timeout_s``; asking those found, at most
    `_LIST_TIMEOUT_S` more.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    found: dict[str, RemoteNode] = {}
    answers: dict[str, list[str]] = {}
    async with Node(f"cli-{secrets.token_hex(4)}", zone=zone, bind=bind, discovery=True) as node:
        try:
            # A guard only: Zone.nodes returns by itself at the deadline, with what it found.
            async with asyncio.timeout_at(deadline + 1.0):
                seen = 1  # members of the zone at the last look, this node included
                while loop.time() < deadline:
                    # Wait (on membership changes, not by polling) for one more member than
                    # last time: until the first node we want came, at most until the
                    # deadline; after that, running nodes answer mDNS together, so a quiet
                    # `_SETTLE_S` means the rest are not nodes (a container may be a database).
                    budget = deadline - loop.time()
                    if found:
                        budget = min(budget, _SETTLE_S)
                    members = await Zone.nodes(
                        node, count=seen + 1, timeout=max(1.0, budget * 1000)
                    )
                    found = {
                        m.name: m for m in members if isinstance(m, RemoteNode) and m.name in wanted
                    }
                    if len(found) == len(wanted) or (found and len(members) <= seen):
                        break
                    seen = len(members)
        except TimeoutError:
            pass
        if len(found) < len(wanted):
            logger.debug(
                "zone %s: not found in %g s: %s",
                zone,
                timeout_s,
                brief_list(name for name in wanted if name not in found),
            )
        names = list(found)
        replies = await asyncio.gather(
            *(asyncio.wait_for(found[name].list_workers(), _LIST_TIMEOUT_S) for name in names),
            return_exceptions=True,
        )
        for name, reply in zip(names, replies, strict=True):
            if isinstance(reply, BaseException):
                logger.debug("node %s of zone %s: no worker list: %r", name, zone, reply)
                continue
            answers[name] = [str(worker["name"]) for worker in reply]
    return answers
