"""The Pyro5 baseline: an echo object behind a Pyro5 daemon, and blocking Pyro5 clients in threads.

Pyro5 is the RPC library that makes one call at a time faster than we do (issue 16), so the
round trip and the concurrent calls also run against it, in the same run, alternating with
ours and raw. Its best configuration here: the msgpack serializer (its fastest), the daemon's
default thread-pool server on ``tcp://127.0.0.1`` and an ephemeral port, and on the client
side plain blocking proxies. Pyro5 has no encryption of its own, so it only joins plain
mode. Pyro5 is imported only by the functions that need it: without it installed, the
benchmark runs without the Pyro5 column.

A Pyro5 proxy belongs to the thread that made it, and its calls block, so each client proxy
lives in a thread of its own (a single-thread executor) for its whole life: the event loop
awaits the threads and is never blocked, and a latency sample runs entirely inside one
thread, with no thread hop per call.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from ._common import latency_sample

PYRO_SERIALIZER: Final = "msgpack"
PYRO_OBJECT: Final = "echo"
PYRO_CLIENTS: Final = 4
"""Concurrent clients (threads, each with its own proxy and connection) in the throughput
case: Pyro5's best here. Measured on this project's machine type (2 cores), 100 B, medians
of three 1 s samples, with 1, 2, 4, 8, 16 and 32 clients against the daemon's thread-pool
server: 8.4k, 9.0k, 9.1k, 8.3k, 6.3k and 5.4k calls/s (another process busy meanwhile). 2 to
4 clients keep both processes busy; past that, threads only contend for the GIL on both
sides. Its multiplexing server did no better at any count (1.9k to 9.1k)."""


def pyro_available() -> bool:
    try:
        import Pyro5  # noqa: F401
    except ImportError:
        return False
    return True


class PyroEcho:
    """The served object: hands the message back."""

    def echo(self, message: str) -> str:
        return message


def make_daemon(servertype: str = "thread") -> tuple[Any, str]:
    """A Pyro5 daemon on 127.0.0.1 (ephemeral port) serving `PyroEcho`, and its URI."""
    import Pyro5
    import Pyro5.api

    Pyro5.config.SERVERTYPE = servertype
    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Pyro5.api.expose(PyroEcho)(), PYRO_OBJECT)
    return daemon, str(uri)


def _call_until(proxy: Any, message: str, deadline: float) -> int:
    """Blocking calls until ``deadline`` (at least one); how many completed."""
    echo = proxy.echo
    clock = time.perf_counter
    done = 0
    while True:
        echo(message)
        done += 1
        if clock() >= deadline:
            return done


def _latencies(proxy: Any, message: str, seconds: float) -> list[int]:
    """Blocking round trips one at a time until the deadline, in ns each."""
    echo = proxy.echo
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    latencies: list[int] = []
    append = latencies.append
    while True:
        before = clock()
        echo(message)
        after = clock()
        append(after - before)
        if after >= deadline:
            return latencies


class PyroClients:
    """``count`` blocking Pyro5 clients, each a thread with its own proxy to the echo object."""

    def __init__(self, uri: str, count: int = PYRO_CLIENTS) -> None:
        self.uri = uri
        self._threads = [
            ThreadPoolExecutor(1, thread_name_prefix=f"pyro-client-{n}") for n in range(count)
        ]
        self._proxies: list[Any] = []

    def __repr__(self) -> str:
        return f"<PyroClients {self.uri} clients={len(self._threads)}>"

    def _connect(self) -> Any:
        import Pyro5.api

        proxy = Pyro5.api.Proxy(self.uri)
        proxy._pyroSerializer = PYRO_SERIALIZER
        proxy._pyroBind()
        if proxy.echo("ping") != "ping":
            raise RuntimeError(f"Pyro5 echo at {self.uri} did not echo")
        return proxy

    async def _in(self, index: int, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads[index], fn, *args)

    async def connect(self) -> None:
        """Make each thread's proxy and check it echoes."""
        self._proxies = await asyncio.gather(
            *(self._in(n, self._connect) for n in range(len(self._threads)))
        )

    async def latency(self, message: str, seconds: float) -> dict[str, Any]:
        """Round trips one at a time, all inside the first client's thread: p50, p99 (µs)."""
        return latency_sample(await self._in(0, _latencies, self._proxies[0], message, seconds))

    async def throughput(self, message: str, seconds: float) -> dict[str, Any]:
        """Every client calling in a loop until the deadline: completed calls per second."""
        clock = time.perf_counter
        start = clock()
        deadline = start + seconds
        counts = await asyncio.gather(
            *(
                self._in(n, _call_until, proxy, message, deadline)
                for n, proxy in enumerate(self._proxies)
            )
        )
        elapsed = clock() - start
        total = sum(counts)
        return {"rate": total / elapsed, "count": total, "seconds": round(elapsed, 4)}

    async def close(self) -> None:
        """Release each proxy in its own thread, then end the threads."""
        proxies, self._proxies = self._proxies, []
        await asyncio.gather(
            *(self._in(n, proxy._pyroRelease) for n, proxy in enumerate(proxies)),
            return_exceptions=True,
        )
        for thread in self._threads:
            thread.shutdown(wait=True)
