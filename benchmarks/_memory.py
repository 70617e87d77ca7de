"""Resident memory: an idle node, idle workers, and a node flooded by one-way messages.

Each figure comes from fresh processes, so nothing measured earlier in the run is counted:

- ``idle``: RSS of a process that imported autonomy and started one node bound on loopback
  with no workers, next to the bare interpreter's RSS: once as a user gets it by default
  (CURVE, mDNS discovery, both on loopback) and once minimal (plain, no discovery).
- ``workers``: (RSS after starting N idle workers - RSS before) / N, after a GC, in KiB;
  in a second process the same with ``tracemalloc`` (Python allocations only).
- ``flood``: a runner node with a worker that sleeps 1 ms per message, and a sender node in
  another process sending one-way messages to it as fast as ``send_message`` lets it, until
  a count or a time limit. Reported: RSS growth of the receiving and of the sending node
  (peak ``VmHWM`` at the end minus RSS when the flood began, and the peak of samples taken
  every 50 ms), messages accepted by ``send_message`` and handled by the worker.

    python -m benchmarks._memory idle|workers|flood ...   (a child; the parent is __main__)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from typing import Any, Final

from ._common import Child, Mesh, loop_factory, peak_rss_kb, progress, rss_kb, spawn

WORKERS: Final = 10_000
FLOOD_SIZE: Final = 100
"""Bytes per one-way message in the flood."""


def _emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


class Idle:
    async def handle_message(self, context: Any, message: str) -> None:
        return None


# -- children ------------------------------------------------------------------------------------


async def _child_idle(minimal: bool) -> None:
    bare = rss_kb()
    from autonomy import Node

    imported = rss_kb()
    options: dict[str, Any] = (
        {"secure": False, "discovery": False} if minimal else {"secure": True, "discovery": True}
    )
    async with Node(name=f"idle-{os.getpid()}", bind="127.0.0.1", **options):
        await asyncio.sleep(1.0)
        gc.collect()
        _emit({"rss_python_kb": bare, "rss_imported_kb": imported, "rss_idle_node_kb": rss_kb()})


async def _child_workers(count: int, method: str) -> None:
    import tracemalloc

    from autonomy import Node

    async with Node(name=f"workers-{os.getpid()}", bind="127.0.0.1", discovery=False) as node:
        await asyncio.sleep(0.1)
        gc.collect()
        if method == "tracemalloc":
            tracemalloc.start()
        before_rss = rss_kb()
        before_traced = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else 0
        for i in range(count):
            await node.start_worker(f"w{i}", Idle())
        for _ in range(3):  # let every worker's task reach its idle wait
            await asyncio.sleep(0.05)
        gc.collect()
        after_rss = rss_kb()
        result: dict[str, Any] = {"workers": count, "method": method}
        if method == "tracemalloc":
            after_traced = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            result["per_worker_kb"] = (after_traced - before_traced) / 1024 / count
        else:
            result["per_worker_kb"] = (after_rss - before_rss) / count
            result["rss_before_kb"] = before_rss
            result["rss_after_kb"] = after_rss
        listed = await node.list_workers()
        result["listed"] = len(listed)
        _emit(result)


async def _child_flood(endpoint: str, count: int, seconds: float) -> None:
    from autonomy import Node

    message = "x" * FLOOD_SIZE
    async with Node(name=f"flood-{os.getpid()}", bind="127.0.0.1", discovery=False) as node:
        runner = await node.connect(endpoint)
        await runner.send_message("slow", message)  # the first one is confirmed end to end
        sent = 1
        gc.collect()
        _emit({"phase": "start", "rss_kb": rss_kb()})
        clock = time.perf_counter
        start = clock()
        deadline = start + seconds
        send = runner.send_message
        while sent < count:
            await send("slow", message)
            sent += 1
            if not sent & 63 and clock() >= deadline:
                break
        flood_s = clock() - start
        peak_during = peak_rss_kb()
        # The count query queues behind every one-way message: it answers once all are handled.
        handled = int(await runner.send_and_receive("slow", "?", timeout=300_000))
        drained_s = clock() - start
        workers = {w["name"]: w for w in await runner.list_workers()}
        _emit(
            {
                "phase": "done",
                "accepted": sent,
                "handled": handled,
                "lost": sent - handled,
                "handled_listed": workers["slow"]["handled"] - 1,  # minus the count query
                "flood_seconds": round(flood_s, 3),
                "drain_seconds": round(drained_s - flood_s, 3),
                "handled_per_s": round(handled / drained_s, 1),
                "sender_hwm_kb": peak_during,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="a memory-measurement child process")
    parser.add_argument("what", choices=["idle", "workers", "flood"])
    parser.add_argument("--count", type=int, default=WORKERS)
    parser.add_argument("--method", choices=["rss", "tracemalloc"], default="rss")
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--minimal", action="store_true", help="idle: plain, no discovery")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    factory, _ = loop_factory(not args.no_uvloop)
    if args.what == "idle":
        coroutine = _child_idle(args.minimal)
    elif args.what == "workers":
        coroutine = _child_workers(args.count, args.method)
    else:
        _emit({"pid": os.getpid()})
        coroutine = _child_flood(args.endpoint, args.count, args.seconds)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coroutine)


# -- the parent's side ---------------------------------------------------------------------


async def _one_shot(*args: str, mesh: Mesh, timeout_s: float = 60.0) -> dict[str, Any]:
    child = await spawn("benchmarks._memory", *args, env=mesh.env(), timeout_s=timeout_s)
    try:
        return child.hello
    finally:
        await child.stop()


async def _flood(count: int, seconds: float, loop_args: list[str], mesh: Mesh) -> dict[str, Any]:
    runner = await spawn(
        "benchmarks._runner", "--mode", "ours", "--secure", *loop_args, env=mesh.env()
    )
    sender: Child | None = None
    samples: list[tuple[float, int, int]] = []
    try:
        sender = await spawn(
            "benchmarks._memory",
            "flood",
            "--endpoint",
            runner.hello["endpoint"],
            "--count",
            str(count),
            "--seconds",
            str(seconds),
            *loop_args,
            env=mesh.env(),
        )
        start = await sender.read_json(30)
        runner_base = rss_kb(runner.pid)
        sender_base = start["rss_kb"]
        began = time.monotonic()
        stop = asyncio.Event()

        async def sample() -> None:
            assert sender is not None
            while not stop.is_set():
                samples.append(
                    (round(time.monotonic() - began, 2), rss_kb(runner.pid), rss_kb(sender.pid))
                )
                try:
                    await asyncio.wait_for(stop.wait(), 0.05)
                except TimeoutError:
                    pass

        sampler = asyncio.create_task(sample())
        try:
            done = await sender.read_json(seconds + 300)
        finally:
            stop.set()
            await sampler
        runner_hwm = peak_rss_kb(runner.pid)
    finally:
        if sender is not None:
            await sender.stop()
        await runner.stop()
    runner_peak = max((s[1] for s in samples), default=runner_base)
    sender_peak = max((s[2] for s in samples), default=sender_base)
    return {
        "message_bytes": FLOOD_SIZE,
        "target_messages": count,
        "time_limit_s": seconds,
        "worker": "asyncio.sleep(0.001) per message",
        "security": "CURVE (default mode)",
        **{k: v for k, v in done.items() if k != "phase"},
        "receiver_rss_start_mb": round(runner_base / 1024, 1),
        "receiver_growth_mb": round((runner_hwm - runner_base) / 1024, 2),
        "receiver_growth_sampled_mb": round((runner_peak - runner_base) / 1024, 2),
        "sender_rss_start_mb": round(sender_base / 1024, 1),
        "sender_growth_mb": round((done["sender_hwm_kb"] - sender_base) / 1024, 2),
        "sender_growth_sampled_mb": round((sender_peak - sender_base) / 1024, 2),
        "rss_samples": samples[:: max(1, len(samples) // 200)],
    }


async def run_memory(quick: bool, use_uvloop: bool, mesh: Mesh) -> dict[str, Any]:
    """The memory section: idle node, per idle worker, flood growth (CURVE on throughout)."""
    loop_args = [] if use_uvloop else ["--no-uvloop"]
    progress("memory: idle node in a fresh process (default mode, then minimal)")
    idle = await _one_shot("idle", *loop_args, mesh=mesh)
    minimal = await _one_shot("idle", "--minimal", *loop_args, mesh=mesh)
    progress(
        f"memory: idle node RSS {idle['rss_idle_node_kb'] / 1024:.1f} MB "
        f"(minimal {minimal['rss_idle_node_kb'] / 1024:.1f} MB)"
    )
    progress(f"memory: {WORKERS:,} idle workers (RSS, then tracemalloc)")
    workers_rss = await _one_shot("workers", "--count", str(WORKERS), *loop_args, mesh=mesh)
    workers_traced = await _one_shot(
        "workers", "--count", str(WORKERS), "--method", "tracemalloc", *loop_args, mesh=mesh
    )
    progress(
        f"memory: {workers_rss['per_worker_kb']:.2f} KB/worker (RSS), "
        f"{workers_traced['per_worker_kb']:.2f} KB/worker (tracemalloc)"
    )
    count, seconds = (100_000, 5.0) if quick else (1_000_000, 20.0)
    progress(f"memory: flood of up to {count:,} one-way messages for at most {seconds:g} s")
    flood = await _flood(count, seconds, loop_args, mesh)
    progress(
        f"memory: flood accepted {flood['accepted']:,}, handled {flood['handled']:,}, "
        f"receiver +{flood['receiver_growth_mb']} MB, sender +{flood['sender_growth_mb']} MB"
    )
    return {
        "idle_node": {
            "rss_mb": round(idle["rss_idle_node_kb"] / 1024, 1),
            "python_alone_mb": round(idle["rss_python_kb"] / 1024, 1),
            "after_import_mb": round(idle["rss_imported_kb"] / 1024, 1),
            "minimal_rss_mb": round(minimal["rss_idle_node_kb"] / 1024, 1),
            "method": "VmRSS of a fresh process: import autonomy, start one Node on loopback,"
            " wait 1 s; rss_mb in the default mode (CURVE + mDNS discovery on loopback),"
            " minimal_rss_mb plain without discovery",
        },
        "idle_workers": {
            "workers": WORKERS,
            "per_worker_kb_rss": round(workers_rss["per_worker_kb"], 2),
            "per_worker_kb_tracemalloc": round(workers_traced["per_worker_kb"], 2),
            "method": "RSS delta / workers after gc (primary); tracemalloc delta in a second"
            " fresh process (Python allocations only)",
        },
        "flood": flood,
    }


if __name__ == "__main__":
    main()
