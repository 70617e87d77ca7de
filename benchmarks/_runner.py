"""The process on the far side of the remote cases: an autonomy node, a raw pyzmq server or a
Pyro5 daemon.

    python -m benchmarks._runner --mode ours|raw|pyro [--secure] [--no-uvloop]

Binds ``tcp://127.0.0.1:*`` (``pyro``: 127.0.0.1 on an ephemeral port), prints one JSON line
``{"endpoint": ..., "pid": ..., "mode": ..., "build": ...}`` on stdout (``endpoint`` is the
Pyro5 URI in ``pyro`` mode; ``build`` is the ``autonomy.__build__`` this process imported, so
the parent can check that both ends run the same build), then serves until its stdin closes
or it gets SIGTERM. ``pyro`` serves ``benchmarks._pyro.PyroEcho`` with Pyro5's own blocking
daemon (no event loop) and is always plain: Pyro5 has no CURVE. ``--secure``: our node in its
default CURVE mode (zone and secret from ``AUTONOMY_ZONE``/``AUTONOMY_ZONE_SECRET``), or the
raw ROUTER as a CURVE server (secret key from ``BENCH_RAW_CURVE_SECRET``); without it both
are plain. mDNS stays off (``discovery=False``). In ``ours`` mode the node runs
three workers of its own: ``echo`` (replies with the message), ``sink`` (counts one-way
messages; answers ``"?"`` with the count) and ``slow`` (sleeps 1 ms per message, for the
memory flood). Starting them here rather than shipping them keeps cloudpickle out of the
measurement; shipping itself is exercised by the smoke run (``start_worker`` of a probe).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading

import autonomy
from autonomy import Context, Node

from ._common import loop_factory, when_stdin_closes
from ._rawzmq import RawServer

COUNT_QUERY = "?"
"""Sent with ``send_and_receive`` to a counting worker: the reply is how many it counted."""


class Echo:
    async def handle_message(self, context: Context, message: str) -> None:
        await context.reply(message)


class Sink:
    """Counts one-way messages; a ``"?"`` request (behind them in FIFO order) reads the count."""

    def __init__(self) -> None:
        self.n = 0

    async def handle_message(self, context: Context, message: str) -> None:
        if message == COUNT_QUERY:
            await context.reply(str(self.n))
        else:
            self.n += 1


class Slow:
    """Handles at most about 1,000 messages a second: the worker a flood must not drown."""

    def __init__(self) -> None:
        self.n = 0

    async def handle_message(self, context: Context, message: str) -> None:
        if message == COUNT_QUERY:
            await context.reply(str(self.n))
            return
        await asyncio.sleep(0.001)
        self.n += 1


def _stop_on_stdin_close_or_sigterm(stop: asyncio.Event) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    when_stdin_closes(stop.set)


def _hello(endpoint: str, mode: str, secure: bool) -> None:
    hello = {
        "endpoint": endpoint,
        "pid": os.getpid(),
        "mode": mode,
        "secure": secure,
        "build": autonomy.__build__,
    }
    print(json.dumps(hello), flush=True)


async def serve_ours(secure: bool) -> None:
    stop = asyncio.Event()
    _stop_on_stdin_close_or_sigterm(stop)
    node = Node(
        name=f"runner-{os.getpid()}",
        bind="127.0.0.1",
        secure=secure,
        discovery=False,
        allow_shipping=True,  # plain mode refuses shipped code unless told (loopback only)
    )
    async with node:
        await node.start_worker("echo", Echo())
        await node.start_worker("sink", Sink())
        await node.start_worker("slow", Slow())
        _hello(node.endpoint, "ours", secure)
        await stop.wait()


async def serve_raw(secure: bool) -> None:
    import zmq

    stop = asyncio.Event()
    _stop_on_stdin_close_or_sigterm(stop)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    curve_secret = os.environ["BENCH_RAW_CURVE_SECRET"].encode() if secure else None
    server = RawServer(context, "tcp://127.0.0.1:*", curve_secret)
    try:
        _hello(server.endpoint, "raw", secure)
        await stop.wait()
    finally:
        server.close()
        context.term()


def serve_pyro() -> None:
    """Pyro5's daemon in this (main) thread; a thread that reads stdin shuts it down at EOF."""
    from ._pyro import make_daemon

    daemon, uri = make_daemon()

    def shutdown_on_stdin_close() -> None:
        fd = sys.stdin.fileno()  # unbuffered reads: no lock held if the process exits
        while os.read(fd, 4096):
            pass
        daemon.shutdown()

    threading.Thread(target=shutdown_on_stdin_close, name="stdin", daemon=True).start()
    _hello(uri, "pyro", False)
    with daemon:
        daemon.requestLoop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["ours", "raw", "pyro"], required=True)
    parser.add_argument("--secure", action="store_true", help="CURVE (ours: the default mode)")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    if args.mode == "pyro":
        serve_pyro()
        return
    factory, _ = loop_factory(not args.no_uvloop)
    serve = serve_ours if args.mode == "ours" else serve_raw
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.secure))


if __name__ == "__main__":
    main()
