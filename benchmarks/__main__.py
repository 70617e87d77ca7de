"""How fast is autonomy on this machine, next to raw pyzmq doing the same work in the same run?

    python -m benchmarks [--quick] [--out DIR] [--rounds N] [--seconds S] [--only SUBSTR]
                         [--builds pure,compiled] [--no-memory] [--no-counters] [--no-curve]
                         [--no-pyro] [--no-uvloop]
    python -m benchmarks zone [--sizes 10,30,60,100] [--runs K] [--idle-seconds S] [--quick]

The ``zone`` subcommand is a separate benchmark (``benchmarks._zone``): zones of N nodes
started by the zone launcher, their cold start and their idle cost against N.

Each build of autonomy (``--builds``: ``pure`` Python, ``compiled`` with mypyc; by default
both where mypy and a C compiler are at hand) runs the whole case list below in a child
process of its own, its runners included (``benchmarks._builds``), and the results are
merged. Within a build's child: starts runner processes (``benchmarks._runner``, each in its
own session, killed with its process group at the end): 4 plain autonomy nodes and 4 plain
raw pyzmq servers for the plain cases and the fan-out (and a Pyro5 daemon,
``benchmarks._pyro``, for the two cases with a Pyro5 side), then one of each with CURVE for
the ``curve_*`` cases. Every node joins a fresh
zone with a fresh secret and no mDNS. Then every case of ``benchmarks._cases`` runs for
several rounds, alternating ours, raw (, pyro), ours, raw... so that machine noise hits them
alike; the counters section (``benchmarks._counters``: what keeping handler times costs,
timed against untimed nodes of the same build) runs in the build's process, and the memory
section (``benchmarks._memory``) in fresh processes.

Writes ``bench-<time>.json`` (every build's cases, samples, medians, ratios and targets under
``builds``) and ``bench-<time>.png`` to ``--out`` (default ``benchmarks/results/``), prints
progress and a table with the builds side by side on stderr, and as the last line on stdout a
one-line JSON summary, nested by build: ``{"case": {"pure": ours/raw, "compiled": ours/raw},
...}``; a latency case gives ``case_p50`` and ``case_p99``, and a case with a Pyro5 side also
``case_vs_pyro`` (``case_p50_vs_pyro``...): ours/Pyro5.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any, Final

import zmq

import autonomy
from autonomy import Node

from . import _builds, _report
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
from ._common import (
    PACKAGE_ROOT,
    Child,
    Mesh,
    loop_factory,
    machine_info,
    progress,
    set_progress_prefix,
    spawn,
)
from ._counters import run_counters
from ._memory import run_memory
from ._pyro import PyroClients
from ._rawzmq import ONE_WAY_HWM, RawPeer
from ._runner import Echo

DEFAULT_OUT = PACKAGE_ROOT / "benchmarks" / "results"
COUNTER_PAIRS: Final = 300
COUNTER_PAIRS_QUICK: Final = 60
COUNTER_SAMPLE_S: Final = 0.02
"""Short samples, many pairs: what differs by ~2% shows through noise of ~10% a sample."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="short samples, 2 rounds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where JSON and PNG go")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 5, quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per sample (default 1, quick 0.2)")
    parser.add_argument("--only", default="", help="run only cases whose key contains this")
    parser.add_argument(
        "--builds",
        type=_builds.parse_builds,
        help="builds to run, comma-separated: pure, compiled (default: both where mypy and a"
        " C compiler are at hand, else pure)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory section")
    parser.add_argument(
        "--no-counters", action="store_true", help="skip the counters' cost section"
    )
    parser.add_argument("--no-curve", action="store_true", help="skip the CURVE cases")
    parser.add_argument("--no-pyro", action="store_true", help="skip the Pyro5 side")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    # A build's child process (started by the parent, see _builds): its build, its result.
    parser.add_argument("--as-build", choices=list(_builds.BUILDS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
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
    args: argparse.Namespace, mesh: Mesh, secure: bool, count: int, pyro: bool
) -> tuple[list[Child], dict[str, list[str]]]:
    """``count`` runners of each kind (ours, raw), plain or CURVE, and a Pyro5 one if asked."""
    flags = [*(["--secure"] if secure else []), *(["--no-uvloop"] if args.no_uvloop else [])]
    plan = [mode for mode in ("ours", "raw") for _ in range(count)] + (["pyro"] if pyro else [])
    what = "CURVE" if secure else "plain"
    kinds = "autonomy, raw pyzmq" + (" and Pyro5" if pyro else "")
    progress(f"starting {len(plan)} {what} runner processes ({kinds})")
    spawned = await asyncio.gather(
        *(spawn("benchmarks._runner", "--mode", mode, *flags, env=mesh.env()) for mode in plan),
        return_exceptions=True,
    )
    children = [child for child in spawned if isinstance(child, Child)]
    failures: list[BaseException] = [f for f in spawned if isinstance(f, BaseException)]
    for child in children:  # both ends of every case run the same build
        if child.hello.get("build") != autonomy.__build__:
            build = child.hello.get("build")
            failures.append(
                RuntimeError(f"runner {child.pid} runs {build!r}, not {autonomy.__build__!r}")
            )
    if failures:
        await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
        raise failures[0]
    endpoints: dict[str, list[str]] = {"ours": [], "raw": [], "pyro": []}
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
    with_pyro = any(case.pyro is not None for case in cases)
    children, endpoints = await _start_runners(args, mesh, secure, runners, with_pyro)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    peers: list[RawPeer] = []
    pyro = PyroClients(endpoints["pyro"][0]) if with_pyro else None
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
            if pyro is not None:
                await asyncio.wait_for(pyro.connect(), 10)
            bench = Bench(node, bare, Side(remotes, peers[:-1], one_way, pyro))
            for case in cases:
                position = f"[{len(results) + 1}/{total}]"
                results[case.key] = await run_case(bench, case, args, position)
    finally:
        if pyro is not None:
            await pyro.close()
        await bare.close()
        for peer in peers:
            peer.close()
        context.term()
        await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)


async def run_cases(args: argparse.Namespace, mesh: Mesh) -> dict[str, dict[str, Any]]:
    """Every selected case: the plain ones first, then the CURVE ones."""
    every = all_cases(not args.no_curve, pyro=not args.no_pyro)
    cases = [case for case in every if args.only in case.key]
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
    if case.pyro is not None:
        sides["pyro"] = case.pyro
    for fn in sides.values():  # warm-up, discarded: connections, caches, first credit
        await fn(bench, case.payload, args.warmup)
    samples: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for round_ in range(1, args.rounds + 1):
        for side, fn in sides.items():  # alternating: ours, raw, (pyro,) ours, raw, ...
            gc.collect()
            sample = await fn(bench, case.payload, args.seconds)
            samples[side].append(sample)
            where = f"{position} {case.key} round {round_}/{args.rounds} {side}"
            progress(f"{where}: {_describe(case, sample)}")
    entry = _report.summarize_case(case, samples)
    shown = f"ours/raw {_report.ratio_text(entry['ratio'])}"
    if "ratio_pyro" in entry:
        shown += f", ours/pyro {_report.ratio_text(entry['ratio_pyro'])}"
    progress(f"{position} {case.key}: {shown}")
    return entry


async def run(args: argparse.Namespace, loop_name: str) -> dict[str, Any]:
    """One build's whole run (in its child process): the cases, the counters' cost, memory."""
    started = time.time()
    _builds.cancel_when_stdin_closes()
    mesh = Mesh.fresh()
    cases = await run_cases(args, mesh)
    counters = None
    if not args.no_counters:
        pairs = COUNTER_PAIRS_QUICK if args.quick else COUNTER_PAIRS
        counters = await run_counters(mesh, pairs, COUNTER_SAMPLE_S)
    memory = None if args.no_memory else await run_memory(args.quick, not args.no_uvloop, mesh)
    return {
        "machine": machine_info(loop_name),
        "params": {
            "quick": args.quick,
            "rounds": args.rounds,
            "sample_seconds": args.seconds,
            "warmup_seconds": args.warmup,
            "order": "per case: one discarded warm-up each, then ours, raw, ours, raw, ..."
            " (ours, raw, pyro, ... for the cases with a Pyro5 side)",
            "payload_bytes": list(PAYLOADS),
            "local_inflight": LOCAL_INFLIGHT,
            "remote_inflight": REMOTE_INFLIGHT,
            "fanout_runners": list(FANOUT),
            "request_timeout_ms": TIMEOUT_MS,
            "transport": "tcp://127.0.0.1",
            "security": "remote_* and fanout_*: plain on both sides (Node(secure=False), raw"
            " without CURVE, Pyro5 has none); curve_*: CURVE on both sides (our default mode"
            " with its ZAP handler; raw CURVE server without ZAP)",
            "discovery": "off (nodes dial endpoints)",
            "loop": loop_name,
            "only": args.only,
        },
        "build": autonomy.__build__,
        "autonomy_path": str(Path(autonomy.__file__).parent),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "cases": cases,
        "fanout": _report.fanout_table(cases),
        "curve_cost": _report.curve_cost(cases),
        "counters": counters,
        "memory": memory,
        "targets": _report.check_targets(cases, memory, counters),
        "summary": _report.summary_line(cases, counters),
    }


def run_build(args: argparse.Namespace) -> int:
    """A build's child process: check that this build runs, run, write the result."""
    set_progress_prefix(args.as_build)
    _builds.check_build(args.as_build)
    if args.result is None:
        raise SystemExit("--as-build needs --result FILE")
    factory, loop_name = loop_factory(not args.no_uvloop)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(run(args, loop_name))
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("interrupted: runners stopped")
        return 130
    _report.write_json(args.result, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["zone"]:
        from . import _zone

        return _zone.main(argv[1:])
    args = parse_args(argv)
    if args.as_build:
        return run_build(args)
    _, loop_name = loop_factory(not args.no_uvloop)
    progress(f"benchmarks: {'quick' if args.quick else 'full'} run on {loop_name}")
    try:
        result = _builds.run_builds(args)
    except KeyboardInterrupt:
        progress("interrupted: nothing written")
        return 130
    _report.write_outputs(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
