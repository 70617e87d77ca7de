"""What the counters cost: local requests to a node that keeps handler times and to one that
does not, in one process, alternating.

Of a node's counters only the handler-time histogram reads a clock (once a message, twice
after an idle wait); the others are integer additions. A node keeps handler times from the
first look at its counters (``stats()``, a dashboard, ``zone top``), or from its start when
it serves metrics or is built with ``handler_times=True``: until then its workers read no
clock. Two nodes in this build's process: ``timed`` (``handler_times=True``, what a node
pays once looked at) and ``untimed`` (a default node that nobody looks at), an echo worker
on each, local ``send_and_receive`` at 1 and at 100 in flight: the path where a message
costs least, so a fixed cost per message weighs most (at 1 in flight every message finds
its worker idle: two clock readings). Samples are short and many, alternating timed,
untimed, untimed, timed... and each pair gives a ratio; reported per case are the median
throughput and CPU time per request of each side, the median of the pairs' ratios and
their quartiles. Both ratios are timed/untimed: the cost of keeping handler times is
1 - throughput ratio, or CPU ratio - 1.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from typing import Any, Final

from autonomy import Node

from ._cases import TIMEOUT_MS, measure_throughput
from ._common import Mesh, progress
from ._runner import Echo

INFLIGHT: Final = (1, 100)
SIDES: Final = ("timed", "untimed")


async def _sample(node: Node, inflight: int, seconds: float) -> dict[str, float]:
    gc.collect()
    call = functools.partial(node.send_and_receive, "echo", "x" * 100, TIMEOUT_MS)
    cpu = time.process_time()
    sample = await measure_throughput([call] * inflight, seconds)
    used = time.process_time() - cpu
    return {"rate": sample["rate"], "cpu_us": used / sample["count"] * 1e6}


def _ratios(samples: dict[str, list[dict[str, float]]], field: str) -> list[float]:
    """timed/untimed of ``field``, pair by pair."""
    return [
        timed[field] / untimed[field]
        for timed, untimed in zip(samples["timed"], samples["untimed"], strict=True)
    ]


def _quartiles(values: list[float]) -> list[float]:
    return [round(q, 4) for q in statistics.quantiles(values, n=4)]


async def run_counters(mesh: Mesh, pairs: int, seconds: float) -> dict[str, Any]:
    """Both nodes, both cases: ``pairs`` pairs of ``seconds``-long samples each."""
    cases: dict[str, Any] = {}
    nodes = [
        Node(
            name=f"bench-{side}",
            zone=mesh.zone,
            secret=mesh.secret,
            bind="127.0.0.1",
            secure=False,
            discovery=False,
            handler_times=True if side == "timed" else None,
        )
        for side in SIDES
    ]
    async with nodes[0] as timed, nodes[1] as untimed:
        by_side = {"timed": timed, "untimed": untimed}
        for node in by_side.values():
            await node.start_worker("echo", Echo())
        for inflight in INFLIGHT:
            for node in by_side.values():  # warm-up, discarded
                await _sample(node, inflight, seconds)
            samples: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
            for pair in range(pairs):
                order = SIDES if pair % 2 == 0 else SIDES[::-1]
                for side in order:
                    samples[side].append(await _sample(by_side[side], inflight, seconds))
            rate_ratios = _ratios(samples, "rate")
            cpu_ratios = _ratios(samples, "cpu_us")
            key = f"local_{inflight}_100B"
            cases[key] = {
                "title": f"local send_and_receive, {inflight} in flight, 100B",
                **{
                    side: {
                        "rate": round(statistics.median(s["rate"] for s in samples[side])),
                        "cpu_us_per_request": round(
                            statistics.median(s["cpu_us"] for s in samples[side]), 3
                        ),
                    }
                    for side in SIDES
                },
                "ratio": round(statistics.median(rate_ratios), 4),
                "ratio_quartiles": _quartiles(rate_ratios),
                "cpu_ratio": round(statistics.median(cpu_ratios), 4),
                "cpu_ratio_quartiles": _quartiles(cpu_ratios),
            }
            entry = cases[key]
            progress(
                f"counters {key}: timed/untimed throughput {entry['ratio']:.3f}"
                f" (quartiles {entry['ratio_quartiles'][0]:.3f}-{entry['ratio_quartiles'][2]:.3f}),"
                f" CPU per request {entry['cpu_ratio']:.3f}"
            )
    return {
        "pairs": pairs,
        "sample_seconds": seconds,
        "cases": cases,
    }
