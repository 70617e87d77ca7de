"""How fast is autonomy on this machine, next to raw pyzmq doing the same work in the same run?

    python -m benchmarks [--quick] [--out DIR] [--rounds N] [--seconds S] [--only SUBSTR]
                         [--no-memory] [--no-curve] [--no-uvloop]
    python -m benchmarks zone [--sizes 10,30,60,100] [--runs K] [--idle-seconds S] [--quick]

The ``zone`` subcommand is a separate benchmark (``benchmarks._zone``): zones of N nodes
started by the zone launcher, their cold start and their idle cost against N.

Starts runner processes (``benchmarks._runner``, each in its own session, killed with its
process group at the end): 4 plain autonomy nodes and 4 plain raw pyzmq servers for the plain
cases and the fan-out, then one of each with CURVE for the ``curve_*`` cases. Every node joins
a fresh zone with a fresh secret and no mDNS. Then every case of ``benchmarks._cases`` runs for
several rounds, alternating ours, raw, ours, raw... so that machine noise hits both alike,
and the memory section (``benchmarks._memory``) runs in fresh processes.
Writes ``bench-<time>.json`` and ``bench-<time>.png`` to ``--out`` (default
``benchmarks/results/``), prints progress and a table on stderr, and as the last line on
stdout a one-line JSON summary ``{"case": ours/raw ratio, ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from autonomy import Node

from . import _report
from ._cases import (
    FANOUT,
    LOCAL_INFLIGHT,
    PAYLOADS,
    REMOTE_INFLIGHT,
    TIMEOUT_MS,
    BareEcho,
    Bench,
    Case,
    Side,
    all_cases,
)
from ._common import PACKAGE_ROOT, Child, Mesh, loop_factory, machine_info, progress, spawn
from ._memory import run_memory
from ._rawzmq import ONE_WAY_HWM, RawPeer
from ._runner import Echo

DEFAULT_OUT = PACKAGE_ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="short samples, 2 rounds (< 60 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where JSON and PNG go")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 5, quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per sample (default 1, quick 0.2)")
    parser.add_argument("--only", default="", help="run only cases whose key contains this")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory section")
    parser.add_argument("--no-curve", action="store_true", help="skip the CURVE cases")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    if args.seconds is None:
        args.seconds = 0.2 if args.quick else 1.0
    args.warmup = min(0.2, args.seconds / 4)
    return args


def _describe(case: Case, sample: dict[str, Any]) -> str:
    if case.metric == "latency":
        return f"p50 {sample['p50_us']:.0f} us, p99 {sample['p99_us']:.0f} us ({sample['count']:,})"
    lost = f", lost {sample['lost']}" if sample.get("lost") else ""
    return f"{sample['rate']:,.0f} {case.unit}{lost}"


async def _start_runners(
    args: argparse.Namespace, mesh: Mesh, secure: bool, count: int
) -> tuple[list[Child], dict[str, list[str]]]:
    """``count`` runners of each kind (ours, raw), plain or CURVE."""
    flags = [*(["--secure"] if secure else []), *(["--no-uvloop"] if args.no_uvloop else [])]
    plan = [mode for mode in ("ours", "raw") for _ in range(count)]
    what = "CURVE" if secure else "plain"
    progress(f"starting {len(plan)} {what} runner processes (autonomy and raw pyzmq)")
    spawned = await asyncio.gather(
        *(spawn("benchmarks._runner", "--mode", mode, *flags, env=mesh.env()) for mode in plan),
        return_exceptions=True,
    )
    children = [child for child in spawned if isinstance(child, Child)]
    failures = [failure for failure in spawned if isinstance(failure, BaseException)]
    if failures:
        await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
        raise failures[0]
    endpoints: dict[str, list[str]] = {"ours": [], "raw": []}
    for child in children:
        endpoints[child.hello["mode"]].append(child.hello["endpoint"])
    return children, endpoints


async def run_phase(
    args: argparse.Namespace,
    mesh: Mesh,
    secure: bool,
    cases: list[Case],
    results: dict[str, dict[str, Any]],
    total: int,
) -> None:
    """Run ``cases`` against runners (and a main node) of one security mode.

    Each mode gets its own runners and main node, started for its cases only: nothing of one
    mode idles in the background while the other is measured.
    """
    runners = max(case.params.get("runners", 1) for case in cases)
    children, endpoints = await _start_runners(args, mesh, secure, runners)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    peers: list[RawPeer] = []
    bare = BareEcho()
    try:
        node = Node(
            name=f"bench-main-{'secure' if secure else 'plain'}",
            zone=mesh.zone,
            bind="127.0.0.1",
            secret=mesh.secret,
            secure=secure,
            discovery=False,
        )
        async with node:
            await node.start_worker("echo", Echo())
            remotes = [await node.connect(endpoint) for endpoint in endpoints["ours"]]
            if secure:
                # Shipping works end to end (not timed): a worker sent by cloudpickle answers.
                await remotes[0].start_worker("probe", Echo())
                assert await remotes[0].send_and_receive("probe", "ping", TIMEOUT_MS) == "ping"
                await remotes[0].stop_worker("probe")
            server_key = mesh.raw_server_public if secure else None
            peers = [RawPeer(context, e, server_key=server_key) for e in endpoints["raw"]]
            one_way = RawPeer(
                context, endpoints["raw"][0], sndhwm=ONE_WAY_HWM, server_key=server_key
            )
            peers.append(one_way)
            for peer in peers:
                assert await asyncio.wait_for(peer.request(b"ping"), 10) == b"ping"
            bench = Bench(node, bare, Side(remotes, peers[:-1], one_way))
            for case in cases:
                position = f"[{len(results) + 1}/{total}]"
                results[case.key] = await run_case(bench, case, args, position)
    finally:
        await bare.close()
        for peer in peers:
            peer.close()
        context.term()
        await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)


async def run_cases(args: argparse.Namespace, mesh: Mesh) -> dict[str, dict[str, Any]]:
    """Every selected case: the plain ones first, then the CURVE ones."""
    cases = [case for case in all_cases(not args.no_curve) if args.only in case.key]
    results: dict[str, dict[str, Any]] = {}
    for secure in (False, True):
        selected = [case for case in cases if bool(case.params.get("secure")) == secure]
        if selected:
            await run_phase(args, mesh, secure, selected, results, len(cases))
    return results


async def run_case(
    bench: Bench, case: Case, args: argparse.Namespace, position: str
) -> dict[str, Any]:
    sides = {"ours": case.ours, "raw": case.raw}
    for fn in sides.values():  # warm-up, discarded: connections, caches, first credit
        await fn(bench, case.payload, args.warmup)
    samples: dict[str, list[dict[str, Any]]] = {"ours": [], "raw": []}
    for round_ in range(1, args.rounds + 1):
        for side, fn in sides.items():  # alternating: ours, raw, ours, raw, ...
            gc.collect()
            sample = await fn(bench, case.payload, args.seconds)
            samples[side].append(sample)
            where = f"{position} {case.key} round {round_}/{args.rounds} {side}"
            progress(f"{where}: {_describe(case, sample)}")
    entry = _report.summarize_case(case, samples)
    ratio = entry["ratio"]
    shown = (
        f"p50 {ratio['p50']:.2f}, p99 {ratio['p99']:.2f}"
        if isinstance(ratio, dict)
        else f"{ratio:.2f}"
    )
    progress(f"{position} {case.key}: ours/raw {shown}")
    return entry


async def run(args: argparse.Namespace, loop_name: str) -> dict[str, Any]:
    started = time.time()
    mesh = Mesh.fresh()
    cases = await run_cases(args, mesh)
    memory = None if args.no_memory else await run_memory(args.quick, not args.no_uvloop, mesh)
    return {
        "machine": machine_info(loop_name),
        "params": {
            "quick": args.quick,
            "rounds": args.rounds,
            "sample_seconds": args.seconds,
            "warmup_seconds": args.warmup,
            "order": "per case: one discarded warm-up each, then ours, raw, ours, raw, ...",
            "payload_bytes": list(PAYLOADS),
            "local_inflight": LOCAL_INFLIGHT,
            "remote_inflight": REMOTE_INFLIGHT,
            "fanout_runners": list(FANOUT),
            "request_timeout_ms": TIMEOUT_MS,
            "transport": "tcp://127.0.0.1",
            "security": "remote_* and fanout_*: plain on both sides (Node(secure=False), raw"
            " without CURVE); curve_*: CURVE on both sides (our default mode with its ZAP"
            " handler; raw CURVE server without ZAP)",
            "discovery": "off (nodes dial endpoints)",
            "loop": loop_name,
            "only": args.only,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "cases": cases,
        "fanout": _report.fanout_table(cases),
        "curve_cost": _report.curve_cost(cases),
        "memory": memory,
        "targets": _report.check_targets(cases, memory),
        "summary": _report.summary_line(cases),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["zone"]:
        from . import _zone

        return _zone.main(argv[1:])
    args = parse_args(argv)
    factory, loop_name = loop_factory(not args.no_uvloop)
    progress(f"benchmarks: {'quick' if args.quick else 'full'} run on {loop_name}")
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(run(args, loop_name))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("bench-%Y%m%d-%H%M%S")
    json_path = args.out / f"{stem}.json"
    png_path = args.out / f"{stem}.png"
    _report.write_json(json_path, result)
    with contextlib.suppress(ImportError):
        _report.plot(png_path, result)
    if not png_path.exists():
        progress("matplotlib is not installed: no plot (pip install matplotlib)")
    print(_report.human_table(result), file=sys.stderr)
    if result["curve_cost"]:
        progress(f"CURVE cost, ours with CURVE / ours plain: {result['curve_cost']}")
    progress(f"wrote {json_path}" + (f" and {png_path}" if png_path.exists() else ""))
    print(json.dumps(result["summary"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
