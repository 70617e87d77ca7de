"""Cold starts of a whole zone on loopback: 1 main and 5 runners, all started at once.

Every cold start is a fresh zone started from nothing, as ``autonomy zone`` starts one: six
processes at the same moment, each told the names of all six (``AUTONOMY_EXPECTED_NODES``).
The main is a script that calls the guide's ``Zone.nodes(node, filter="runner")`` once,
while its runners are still starting, and prints the names it got. Everything is killed
after each start.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import RUNNER, unique
from .processes import Child

RUNNERS = [f"runner-{i}" for i in range(5)]

MAIN = r"""
import time

exec_at = time.monotonic()

import asyncio, json

from autonomy import Node, Zone


async def main():
    async with Node() as node:
        started_at = time.monotonic()
        found = await Zone.nodes(node, filter="runner")
        print(json.dumps({
            "names": [each.name for each in found],
            "exec_at": exec_at,
            "started_at": started_at,
            "found_at": time.monotonic(),
        }), flush=True)


asyncio.run(main())
"""


@dataclass
class ColdStart:
    names: list[str]
    seconds: float
    """From the spawn of the six processes to the main's answer."""
    zone_nodes_s: float
    """How long the main's Zone.nodes call took."""


async def cold_start(tmp_path: Path, *, expected: bool) -> ColdStart:
    """Start a fresh zone of 1 main + 5 runners at once; return what the main found."""
    zone = unique("cold")
    script = tmp_path / "main.py"
    if not script.exists():
        script.write_text(MAIN)
    common: dict[str, str | None] = {
        "PYTHONPATH": "", "AUTONOMY_ZONE": zone, "AUTONOMY_BIND": "127.0.0.1"
    }
    common["AUTONOMY_EXPECTED_NODES"] = ",".join(["main", *RUNNERS]) if expected else None
    commands = {
        name: [sys.executable, str(RUNNER), "--name", name, "--zone", zone, "--bind", "127.0.0.1"]
        for name in RUNNERS
    }
    commands["main"] = [sys.executable, str(script)]
    children: dict[str, Child] = {}
    async with AsyncExitStack() as stack:  # every process is killed after each start
        began = time.monotonic()
        for name, argv in commands.items():
            env = {**common, "AUTONOMY_NODE_NAME": name}
            child = Child(*argv, name=name, cwd=tmp_path, env=env)
            children[name] = await stack.enter_async_context(child)
        # NOTE: bounded by Zone.nodes' own default wait (ZONE_WAIT_MS, 30 s) plus start-up.
        answer = json.loads(await children["main"].read_line(45))
    return ColdStart(
        answer["names"],
        answer["found_at"] - began,
        answer["found_at"] - answer["started_at"],
    )


async def cold_starts(tmp_path: Path, times: int, *, expected: bool) -> list[ColdStart]:
    results = [await cold_start(tmp_path, expected=expected) for _ in range(times)]
    seconds = [each.seconds for each in results]
    print(
        f"\n{times} cold starts of 1 main + 5 runners (expected names: {expected}): "
        f"{sum(each.names == RUNNERS for each in results)}/{times} found all 5; "
        f"spawn to answer median {statistics.median(seconds):.2f} s, "
        f"min {min(seconds):.2f} s, max {max(seconds):.2f} s; Zone.nodes median "
        f"{statistics.median(each.zone_nodes_s for each in results):.2f} s"
    )
    return results


async def test_zone_nodes_finds_all_runners_in_3_of_3_cold_starts_of_1_main_and_5_runners(
    tmp_path: Path,
) -> None:
    results = await cold_starts(tmp_path, 3, expected=True)
    assert [each.names for each in results] == [RUNNERS] * 3


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_zone_nodes_finds_all_runners_in_50_of_50_cold_starts_of_1_main_and_5_runners(
    tmp_path: Path,
) -> None:
    results = await cold_starts(tmp_path, 50, expected=True)
    assert [each.names for each in results] == [RUNNERS] * 50
