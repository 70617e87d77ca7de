"""The workloads, each written twice: through autonomy ("ours") and on raw pyzmq ("raw"),
and two of them a third time, through Pyro5 ("pyro"): the round trip and concurrent calls.

A sample runs for a fixed time, then lets what is in flight finish: throughput is completed
requests (or delivered one-way messages, as counted by the receiver) over the elapsed time;
latency is the distribution of single round trips. Both sides of a case run on the same loop
in the same process, against runner processes of the same kind (Pyro5's client calls block,
so they run in threads of that process: ``benchmarks._pyro``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from autonomy import Node, RemoteNode

from ._common import latency_sample
from ._rawzmq import RawPeer
from ._runner import COUNT_QUERY

if TYPE_CHECKING:
    from ._pyro import PyroClients

LOCAL_INFLIGHT: Final = 100
REMOTE_INFLIGHT: Final = 1000
FLOOD_INFLIGHT: Final = 30_000
"""Three times MAX_PENDING_PER_PEER: callers past the limit wait for a slot as calls end."""
FANOUT: Final = (1, 2, 4)
PAYLOADS: Final = (100, 10 * 1024)
TIMEOUT_MS: Final = 10_000
"""Every request of ours carries a timeout, as real code does (a timer per request)."""

Sample = dict[str, Any]
Call = Callable[[], Awaitable[Any]]


def payload_label(size: int) -> str:
    return f"{size // 1024}KB" if size >= 1024 and size % 1024 == 0 else f"{size}B"


class BareEcho:
    """The local baseline: an asyncio queue, one task draining it, a future per request."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, asyncio.Future[str]]] = asyncio.Queue()
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        queue = self.queue
        while True:
            message, future = await queue.get()
            if not future.done():
                future.set_result(message)

    async def request(self, message: str) -> str:
        future: asyncio.Future[str] = self._loop.create_future()
        self.queue.put_nowait((message, future))
        return await future

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class Side:
    """The far ends of the remote cases for one security mode (plain, or CURVE)."""

    remotes: list[RemoteNode]
    """Our runner nodes, as seen from our main node of the same mode."""
    raw: list[RawPeer]
    """One DEALER per raw runner for request/reply (no SNDHWM)."""
    raw_one_way: RawPeer
    """A DEALER to the first raw runner with SNDHWM, for one-way floods and their count."""
    pyro: PyroClients | None = None
    """Pyro5 clients of the Pyro5 runner (plain mode only, and only when a case has a Pyro5
    side and Pyro5 is installed)."""


@dataclass
class Bench:
    """Everything a case needs: our node with its local echo, the runners, the baselines.

    One security mode at a time: the runners, the raw peers and our node are all plain, or
    all CURVE (a case's ``params["secure"]`` says which it needs)."""

    node: Node
    bare: BareEcho
    far: Side


@dataclass(frozen=True)
class Case:
    name: str
    """``local_1``, ``remote_pipelined``...; the key adds the payload: ``local_1_100B``."""
    title: str
    metric: str
    """``throughput`` (per second) or ``latency`` (µs, p50 and p99)."""
    payload: int
    ours: Callable[[Bench, int, float], Awaitable[Sample]]
    raw: Callable[[Bench, int, float], Awaitable[Sample]]
    unit: str = "req/s"
    notes: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    pyro: Callable[[Bench, int, float], Awaitable[Sample]] | None = None
    """The same workload through Pyro5, for the cases that have a third side."""

    @property
    def key(self) -> str:
        return f"{self.name}_{payload_label(self.payload)}"


# -- measuring -----------------------------------------------------------------------------------


async def measure_throughput(calls: Sequence[Call], seconds: float) -> Sample:
    """Run one loop per call (``len(calls)`` in flight) until the deadline, then drain.

    Each loop completes at least one call: with 30,000 in flight on a slow machine, the
    last loops start after a short sample's deadline, and a sample of nothing is no
    measurement."""
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds

    async def slot(call: Call) -> int:
        done = 0
        while True:
            await call()
            done += 1
            if clock() >= deadline:
                return done

    counts = await asyncio.gather(*(slot(call) for call in calls))
    elapsed = clock() - start
    total = sum(counts)
    return {"rate": total / elapsed, "count": total, "seconds": round(elapsed, 4)}


async def measure_latency(call: Call, seconds: float) -> Sample:
    """Round trips one at a time until the deadline: p50 and p99 in µs."""
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    latencies: list[int] = []
    append = latencies.append
    while True:
        before = clock()
        await call()
        after = clock()
        append(after - before)
        if after >= deadline:
            return latency_sample(latencies)


def _message(size: int) -> str:
    return "x" * size


def _raw_payload(size: int) -> bytes:
    return b"x" * size


# -- local send_and_receive --------------------------------------------------------------------


def _local(
    inflight: int,
) -> tuple[Callable[..., Awaitable[Sample]], Callable[..., Awaitable[Sample]]]:
    async def ours(bench: Bench, size: int, seconds: float) -> Sample:
        call = functools.partial(bench.node.send_and_receive, "echo", _message(size), TIMEOUT_MS)
        return await measure_throughput([call] * inflight, seconds)

    async def raw(bench: Bench, size: int, seconds: float) -> Sample:
        call = functools.partial(bench.bare.request, _message(size))
        return await measure_throughput([call] * inflight, seconds)

    return ours, raw


# -- remote one-way ------------------------------------------------------------------------------

Fn = Callable[[Bench, int, float], Awaitable[Sample]]


def _one_way() -> tuple[Fn, Fn]:
    async def ours(bench: Bench, size: int, seconds: float) -> Sample:
        runner = bench.far.remotes[0]
        message = _message(size)
        send = runner.send_message
        clock = time.perf_counter
        before = int(await runner.send_and_receive("sink", COUNT_QUERY, TIMEOUT_MS))
        start = clock()
        deadline = start + seconds
        sent = 0
        while True:
            for _ in range(64):
                await send("sink", message, TIMEOUT_MS)
            sent += 64
            if clock() >= deadline:
                break
        # Behind every one-way message in FIFO order: the count includes all delivered ones.
        after = int(await runner.send_and_receive("sink", COUNT_QUERY, 60_000))
        return _delivered(sent, after - before, clock() - start)

    async def raw(bench: Bench, size: int, seconds: float) -> Sample:
        peer = bench.far.raw_one_way
        frame = _raw_payload(size)
        clock = time.perf_counter
        before = await peer.count()
        start = clock()
        sent = await peer.flood(frame, start + seconds)
        after = await peer.count()
        return _delivered(sent, after - before, clock() - start)

    return ours, raw


def _delivered(sent: int, delivered: int, elapsed: float) -> Sample:
    return {
        "rate": delivered / elapsed,
        "count": delivered,
        "sent": sent,
        "lost": sent - delivered,
        "seconds": round(elapsed, 4),
    }


# -- remote request/reply ------------------------------------------------------------------------


def _pyro(bench: Bench) -> PyroClients:
    if bench.far.pyro is None:
        raise RuntimeError("this case has a Pyro5 side, but no Pyro5 runner was started")
    return bench.far.pyro


async def _pyro_rtt(bench: Bench, size: int, seconds: float) -> Sample:
    return await _pyro(bench).latency(_message(size), seconds)


async def _pyro_concurrent(bench: Bench, size: int, seconds: float) -> Sample:
    return await _pyro(bench).throughput(_message(size), seconds)


def _rtt() -> tuple[Fn, Fn]:
    async def ours(bench: Bench, size: int, seconds: float) -> Sample:
        runner = bench.far.remotes[0]
        call = functools.partial(runner.send_and_receive, "echo", _message(size), TIMEOUT_MS)
        return await measure_latency(call, seconds)

    async def raw(bench: Bench, size: int, seconds: float) -> Sample:
        call = functools.partial(bench.far.raw[0].request, _raw_payload(size))
        return await measure_latency(call, seconds)

    return ours, raw


def _pipelined(runners: int, inflight: int = REMOTE_INFLIGHT) -> tuple[Fn, Fn]:
    async def ours(bench: Bench, size: int, seconds: float) -> Sample:
        remotes = bench.far.remotes
        message = _message(size)
        calls = [
            functools.partial(remotes[slot % runners].send_and_receive, "echo", message, TIMEOUT_MS)
            for slot in range(inflight)
        ]
        return await measure_throughput(calls, seconds)

    async def raw(bench: Bench, size: int, seconds: float) -> Sample:
        peers = bench.far.raw
        payload = _raw_payload(size)
        calls = [
            functools.partial(peers[slot % runners].request, payload) for slot in range(inflight)
        ]
        return await measure_throughput(calls, seconds)

    return ours, raw


def all_cases(curve: bool = True, pyro: bool = True) -> list[Case]:
    """Every case at every payload, in the order they run (``curve``: with the CURVE ones;
    ``pyro``: with a Pyro5 side for the plain round trip and concurrent calls at 100 B)."""
    from ._pyro import PYRO_CLIENTS

    queue_note = "raw = asyncio.Queue + a future per request, one process"
    echo_note = "raw = loop-driven DEALER/ROUTER echo, future + request-id dict"
    cases: list[Case] = []
    for size in PAYLOADS:
        label = payload_label(size)
        for inflight in (1, LOCAL_INFLIGHT):
            ours, raw = _local(inflight)
            what = f"local send_and_receive, {inflight} in flight, {label}"
            params = {"inflight": inflight}
            cases.append(
                Case(
                    f"local_{inflight}",
                    what,
                    "throughput",
                    size,
                    ours,
                    raw,
                    "req/s",
                    queue_note,
                    params,
                )
            )
        for secure in (False, True) if curve else (False,):
            prefix, mode = ("curve", "CURVE") if secure else ("remote", "plain")
            params = {"secure": secure}
            ours, raw = _one_way()
            what = f"remote send_message one-way, {mode}, {label}"
            note = (
                "delivered messages as counted by the runner / time until it counted them;"
                " raw = DEALER->ROUTER bounded by SNDHWM/RCVHWM 1000"
            )
            cases.append(
                Case(f"{prefix}_oneway", what, "throughput", size, ours, raw, "msg/s", note, params)
            )
            # Pyro5 has no CURVE, and the comparison with it is at 100 B.
            with_pyro = pyro and not secure and size == PAYLOADS[0]
            ours, raw = _rtt()
            what = f"remote send_and_receive, one at a time, {mode}, {label}"
            note = "raw = DEALER/ROUTER echo, future per request"
            if with_pyro:
                note += "; pyro = one blocking Pyro5 proxy (msgpack), the loop in its thread"
            rtt = Case(f"{prefix}_rtt", what, "latency", size, ours, raw, "us", note, params)
            cases.append(dataclasses.replace(rtt, pyro=_pyro_rtt if with_pyro else None))
            ours, raw = _pipelined(1)
            what = f"remote send_and_receive, {REMOTE_INFLIGHT} in flight, {mode}, {label}"
            params = {"secure": secure, "inflight": REMOTE_INFLIGHT, "runners": 1}
            note = echo_note
            if with_pyro:
                note += (
                    f"; pyro = {PYRO_CLIENTS} threads, each calling through its own blocking"
                    " Pyro5 proxy (msgpack) in a loop: Pyro5's best concurrency on this"
                    " machine type (measured with 1 to 32 threads: it peaks at 2-4; more"
                    " threads only contend for the GIL, see benchmarks._pyro.PYRO_CLIENTS)"
                )
            pipelined = Case(
                f"{prefix}_pipelined", what, "throughput", size, ours, raw, "req/s", note, params
            )
            cases.append(
                dataclasses.replace(pipelined, pyro=_pyro_concurrent if with_pyro else None)
            )
        if size == PAYLOADS[0]:
            ours, raw = _pipelined(1, FLOOD_INFLIGHT)
            what = (
                f"remote send_and_receive, {FLOOD_INFLIGHT:,} in flight (past the limit of "
                f"calls in flight per peer), plain, {label}"
            )
            params = {"secure": False, "inflight": FLOOD_INFLIGHT, "runners": 1}
            flood = Case("remote_flood", what, "throughput", size, ours, raw, "req/s")
            cases.append(dataclasses.replace(flood, notes=echo_note, params=params))
        for runners in FANOUT[1:]:
            ours, raw = _pipelined(runners)
            what = f"fan-out to {runners} runners, {REMOTE_INFLIGHT} in flight round-robin, {label}"
            params = {"secure": False, "inflight": REMOTE_INFLIGHT, "runners": runners}
            cases.append(
                Case(
                    f"fanout_{runners}",
                    what,
                    "throughput",
                    size,
                    ours,
                    raw,
                    "req/s",
                    echo_note,
                    params,
                )
            )
    return cases
