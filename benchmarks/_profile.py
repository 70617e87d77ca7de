"""One side of one case, repeated for a while: something to point a profiler at.

    python -m benchmarks._profile CASE_KEY [--side ours|raw] [--seconds S] [--cprofile FILE]

For example, with py-spy (``pip install py-spy``)::

    py-spy record -r 500 -f speedscope -o pipelined.json -- \\
        python -m benchmarks._profile remote_pipelined_100B --seconds 10

or with cProfile (``--cprofile out.prof``, then ``python -m pstats out.prof``). Only the
main process is profiled; the runner is started the same way as in the benchmark. It ends
with the CPU time per request (or one-way message) of this process and of the runners:
what a side costs, apart from the time spent waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import sys
import time
from pathlib import Path

import zmq

from autonomy import Node

from ._cases import BareEcho, Bench, Side, all_cases
from ._common import Child, Mesh, loop_factory, progress, spawn
from ._rawzmq import ONE_WAY_HWM, RawPeer
from ._runner import Echo


def _cpu_seconds(children: list[Child]) -> float:
    """User and system CPU time of ``children`` so far (``/proc/<pid>/stat``), threads
    included."""
    total = 0
    for child in children:
        fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


async def profile_case(key: str, side: str, seconds: float, cprofile: str | None) -> None:
    case = next((c for c in all_cases() if c.key == key), None)
    if case is None:
        raise SystemExit(f"no case {key!r}; one of: {', '.join(c.key for c in all_cases())}")
    runners = case.params.get("runners", 1)
    secure = bool(case.params.get("secure", False))
    mesh = Mesh.fresh()
    mode = "ours" if side == "ours" else "raw"
    flags = ["--mode", mode, *(["--secure"] if secure else [])]
    children: list[Child] = []
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    bare = BareEcho()
    peers: list[RawPeer] = []
    try:
        spawned = [spawn("benchmarks._runner", *flags, env=mesh.env()) for _ in range(runners)]
        children = list(await asyncio.gather(*spawned))
        endpoints = [child.hello["endpoint"] for child in children]
        progress(f"runner pids: {' '.join(str(child.pid) for child in children)}")
        node = Node(
            name="profile-main",
            zone=mesh.zone,
            bind="127.0.0.1",
            secret=mesh.secret,
            secure=secure,
            discovery=False,
        )
        async with node:
            await node.start_worker("echo", Echo())
            remotes = [await node.connect(e) for e in endpoints] if mode == "ours" else []
            if mode == "raw":
                key_ = mesh.raw_server_public if secure else None
                peers = [RawPeer(context, e, server_key=key_) for e in endpoints]
                peers.append(RawPeer(context, endpoints[0], sndhwm=ONE_WAY_HWM, server_key=key_))
            far = Side(remotes, peers[:-1], peers[-1] if peers else None)  # type: ignore[arg-type]
            bench = Bench(node, bare, far)
            fn = case.ours if side == "ours" else case.raw
            await fn(bench, case.payload, 0.5)  # warm-up
            profiler = cProfile.Profile() if cprofile else None
            if profiler:
                profiler.enable()
            main_cpu, runner_cpu = time.process_time(), _cpu_seconds(children)
            sample = await fn(bench, case.payload, seconds)
            main_cpu, runner_cpu = (
                time.process_time() - main_cpu,
                _cpu_seconds(children) - runner_cpu,
            )
            if profiler and cprofile:
                profiler.disable()
                profiler.dump_stats(cprofile)
            progress(f"{key} {side}: {sample}")
            count = sample["count"]
            progress(
                f"CPU per request or message: this process {main_cpu / count * 1e6:.1f} us,"
                f" the runners {runner_cpu / count * 1e6:.1f} us"
                + (" (under cProfile: inflated)" if profiler else "")
            )
    finally:
        await bare.close()
        for peer in peers:
            peer.close()
        context.term()
        await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("--side", choices=["ours", "raw"], default="ours")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cprofile", help="write cProfile stats to this file")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    factory, _ = loop_factory(not args.no_uvloop)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(profile_case(args.case, args.side, args.seconds, args.cprofile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
