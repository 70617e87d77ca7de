"""Fixtures: real nodes on 127.0.0.1, runner processes, leak checks.

Every node binds 127.0.0.1 on a free port and gets a unique zone, so tests never see each
other. Runner processes are `processes.Child`ren: in their own session, and killed (whole
process group) and reaped in teardown, also when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
import pytest

from autonomy import Node, RemoteNode

from . import workers
from .processes import Child, still_open

# Ship the test workers by value: runners start in a directory where tests/ is not importable.
cloudpickle.register_pickle_by_value(workers)

T = TypeVar("T")
RUNNER = Path(__file__).with_name("_runner.py")
REPO = Path(__file__).resolve().parent.parent


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def bounded(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    """Await with a deadline (every network await in a test has one)."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` (sync or async) until true, failing with ``what`` after ``timeout``
    seconds. Only for state that has no signal to await (a remote worker's queue length)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            async with asyncio.timeout(max(0.01, deadline - loop.time())):
                result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Runner:
    """A runner node in a child process (tests/_runner.py)."""

    name: str
    zone: str
    endpoint: str
    pid: int
    child: Child
    """The process; its merged stdout and stderr are the runner's log."""

    def kill(self) -> None:
        """SIGKILL the runner's whole process group (no goodbye)."""
        self.child.kill()

    def terminate(self) -> None:
        """SIGTERM the runner's process group: it stops gracefully and says goodbye."""
        self.child.terminate()


async def spawn_runner(
    zone: str,
    name: str,
    cwd: Path,
    bind: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> Runner:
    """Start a runner and wait for its ready line; the caller closes ``runner.child``."""
    argv = [sys.executable, str(RUNNER), "--name", name, "--zone", zone, "--bind", bind]
    child = Child(
        *argv, name=f"runner {name}", prefix=prefix, cwd=cwd,
        env={"PYTHONPATH": "", **(env or {})}, merge_stderr=True,
    )
    await child.start()
    try:
        info = await child.read_json(20)
    except BaseException:
        await child.aclose()
        raise
    return Runner(name, zone, info["endpoint"], info["pid"], child)


@pytest.fixture(scope="session", autouse=True)
def private_config_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Zone secrets created by the tests (one per test zone) go to a temporary config home,
    not the user's; child processes inherit it."""
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    os.environ.pop("AUTONOMY_ZONE_SECRET", None)
    os.environ.pop("AUTONOMY_ZONE_SECRET_FILE", None)


@pytest.fixture
def zone() -> str:
    return unique("zone")


@pytest.fixture
async def node(zone: str) -> AsyncIterator[Node]:
    async with Node(name=unique("main"), zone=zone, bind="127.0.0.1") as started:
        yield started


@pytest.fixture
async def node_factory(zone: str) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Start extra nodes of the test's zone; all are stopped at teardown."""
    started: list[Node] = []

    async def make(name: str | None = None, **options: Any) -> Node:
        options.setdefault("zone", zone)
        options.setdefault("bind", "127.0.0.1")
        new = Node(name=name or unique("node"), **options)
        await new.__aenter__()
        started.append(new)
        return new

    try:
        yield make
    finally:
        for each in reversed(started):
            await each.stop()


@pytest.fixture
async def runner_factory(
    zone: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Runner]]]:
    """Start runner nodes in child processes; all are killed at teardown."""
    async with AsyncExitStack() as stack:

        async def make(name: str | None = None, **options: Any) -> Runner:
            runner = await spawn_runner(
                options.pop("zone", zone), name or unique("runner"), tmp_path, **options
            )
            stack.push_async_callback(runner.child.aclose)
            return runner

        yield make


@pytest.fixture
async def runner(runner_factory: Callable[..., Awaitable[Runner]]) -> Runner:
    return await runner_factory()


@pytest.fixture(params=["local", "remote"])
async def target(
    request: pytest.FixtureRequest, node: Node, runner_factory: Callable[..., Awaitable[Runner]]
) -> Node | RemoteNode:
    """The node under test: the local node itself, or a runner in another process seen
    through the local node (STYLE.md §7.8: one suite, both kinds)."""
    if request.param == "local":
        return node
    started = await runner_factory()
    return await node.connect(started.endpoint, timeout=10_000)


@pytest.fixture(autouse=True)
async def no_leaks() -> AsyncIterator[None]:
    """Fail a test that leaves child processes, asyncio tasks or threads behind (the
    children are killed and reaped first, so that the next test does not inherit them)."""
    threads_before = set(threading.enumerate())
    current = asyncio.current_task()
    tasks_before = asyncio.all_tasks() - {current}
    yield
    children = still_open()
    for child in children:
        await child.aclose()
    assert not children, f"child processes left running: {children}"
    finalizer = asyncio.current_task()  # teardown runs in a task of its own
    leftover = [
        task
        for task in asyncio.all_tasks() - {current, finalizer} - tasks_before
        if not task.done()
    ]
    assert not leftover, f"tasks left behind: {leftover}"
    await eventually(
        lambda: not set(threading.enumerate()) - threads_before,
        what=f"threads to end: {set(threading.enumerate()) - threads_before}",
    )


def raw_dealer(
    context: Any, zone: str, endpoint: str, *, member: bool = True, secret: str | None = None
) -> Any:
    """A raw pyzmq DEALER connected to a node's ROUTER (linger 0; the caller closes it).

    ``member=True`` gives it the zone's CURVE keys (from ``secret`` or the zone's secret
    file), as a node of the zone has; ``member=False`` leaves it a plain client."""
    import zmq

    from autonomy._secret import derive_seeds, zone_secret
    from autonomy._sockets import curve_keys

    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if member:
        join_as_member(sock, curve_keys(*derive_seeds(zone_secret(zone, secret), zone)))
    sock.connect(endpoint)
    return sock


def join_as_member(sock: Any, keys: Any) -> None:
    """Give a raw client socket the zone's CURVE client keys (before it connects)."""
    import zmq

    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)


def frames_of(data: bytes) -> list[list[Any]]:
    """The frames of one message from a node: it coalesces the frames it sends to one peer
    in one loop turn into one ZeroMQ message."""
    from autonomy._protocol import check_frame, split

    frames, error = split(data)
    assert error is None, error
    return [check_frame(frame) for frame in frames]


class FrameReader:
    """Reads a raw socket frame by frame, whatever the messages they came in."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buffered: list[list[Any]] = []

    async def next(self, seconds: float = 5.0) -> list[Any]:
        while not self.buffered:
            async with asyncio.timeout(seconds):
                self.buffered.extend(frames_of(await self.sock.recv()))
        return self.buffered.pop(0)
