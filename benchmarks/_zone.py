"""What does a zone cost as it grows? Cold start, membership and idle cost against N nodes.

    python -m benchmarks zone [--sizes 10,30,60,100] [--runs K] [--idle-seconds S] [--quick]
                              [--steady-after S] [--wait-quiet S] [--netns]
                              [--stop-timeout S] [--out DIR]

Each run is a cold start of a fresh zone of N nodes (1 main + N-1 runners, one process each)
by the zone launcher, ``autonomy zone deploy DIR --exit-with main-pod-main``, on loopback:
a unique zone name, a temporary ``AUTONOMY_STATE_DIR`` (and ``XDG_CONFIG_HOME``, where the
launcher keeps the zone's secret), nodes bound to 127.0.0.1, mDNS on 127.0.0.1 only. The zone
folder is generated per run in a temporary directory (`write_zone`): the runners run the
guide's ``Node.start()``; the main (`MAIN_PY`) awaits ``Zone.nodes(node, filter="runner")``,
prints when it got its answer, then obeys the harness's commands from a FIFO (``stats TAG``:
ask every node for its counters with ``stats()``; ``exit``: return, which stops the zone).

Measured per run (the JSON's ``runs[].metrics``; medians over runs per size in ``sizes``):

- ``launch_to_found_s``: from the launcher's spawn until ``Zone.nodes`` returned (every
  runner found, or its 30 s wait over); ``last_start_to_found_s``: from the last node's
  process start (``/proc/<pid>/stat``) until then; ``missing``: runners not in its answer.
- then the zone settles: ``stats`` rounds (1 s apart, at most `SETTLE_MAX_S`) until every
  node counts N-1 members and the cold start's gossip is over (`QUIET_MESSAGES_PER_NODE_S`).
  The last round opens the idle window of ``--idle-seconds``:
- ``idle_cpu_ms_per_s_*``: utime+stime of every node process over the window (median and
  max per node, and the zone's total); ``rss_mb_*``: VmRSS at its end; ``tcp_sockets_*``:
  TCP sockets each node process holds at its end (its ``/proc/<pid>/fd`` links to sockets
  listed in ``/proc/<pid>/net/tcp``, the listener included);
- ``messages_per_s_*``: ZeroMQ messages sent + received per node between the ``stats()``
  rounds that open and close the window, less the rounds' own messages;
- ``mdns_*``: mDNS packets and bytes seen on 127.0.0.1 by a socket of this process that
  only listens (joined to 224.0.0.251 on loopback), from launch until ``Zone.nodes``
  returned (cold start) and over the idle window;
- ``died_by_signal``: node processes whose exit (as the launcher reports it) was a signal,
  including those the launcher had to SIGKILL after its stop timeout: each is a bug, listed
  in ``problems`` and on stderr;
- ``steady_*`` (unless ``--steady-after 0``, as with ``--quick``): CPU, TCP sockets and
  messages per node over a second window of the same length, `STEADY_AFTER_S` after the
  first, once the connections of the cold start went unused long enough to be closed. Its
  sockets are counted before the stats round that opens it (which connects the main to
  every runner again).

Every autonomy node on a loopback browses the same mDNS service type, whatever its zone, so
zones running meanwhile on the machine (a test suite, another benchmark) and this one cost
each other: their cold starts make every node of this zone answer, and its cold start theirs.
``--netns`` (root) runs each zone in a network namespace of its own, with its own loopback;
the listener above then listens there. Other work on the machine still competes for its CPU:
each run records how busy the machine was (``--wait-quiet S`` waits for it to calm first).

Everything started is killed and reaped at the end of each run, on failure, on Ctrl-C and
on SIGTERM:
the launcher is asked to stop the zone (SIGTERM), then killed; its nodes die with it
(``PR_SET_PDEATHSIG``), and any process left with the run's zone in its environment is killed.
Writes ``zone-<time>.json``, ``zone-<time>.png`` and ``zone-<time>.log`` (every run's launcher
output) to ``--out`` (default ``benchmarks/results/``); a table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from autonomy.cli._processes import describe_exit, pdeathsig_preexec

from ._common import PACKAGE_ROOT, machine_info, median, progress, rss_kb
from ._zone_report import (
    METRICS,
    STEADY_METRICS,
    human_table,
    plot,
    summarize_sizes,
)

DEFAULT_OUT: Final = PACKAGE_ROOT / "benchmarks" / "results"
DEFAULT_SIZES: Final = (10, 30, 60, 100)
QUICK_SIZES: Final = (5, 10)
QUICK_IDLE_S: Final = 3.0

MAIN_NODE: Final = "main-pod-main"

ZONE_NODES_WAIT_S: Final = 30.0
"""`Zone.nodes`' own wait (``ZONE_WAIT_MS``): the main answers within this after it started."""

LATE_WAIT_S: Final = 60.0
"""When runners were missing, how much longer the main waits to see whether they come late."""
START_BUDGET_S: Final = 60.0
START_BUDGET_PER_NODE_S: Final = 1.5
"""How long the harness waits for the main's answer: budget + per node + `ZONE_NODES_WAIT_S`
(a 100-node zone takes ~40 s to start on 2 cores)."""
SETTLE_POLL_S: Final = 1.0
SETTLE_MAX_S: Final = 60.0
QUIET_MESSAGES_PER_NODE_S: Final = 1.0
"""Settled: stats rounds every `SETTLE_POLL_S` until every node knows every other and the
zone sends fewer messages than this per node and second (the cold start's gossip is over;
an idle zone's periodic pulls are ~0.1), at most `SETTLE_MAX_S`; past it the run goes on,
marked ``settled: false``."""
STEADY_AFTER_S: Final = 45.0
"""The second idle window starts this long after the first ends: a connection unused for
``IDLE_LINK_S`` (30 s) is closed at the next check, 15 s apart, so by then the cold
start's connections are closed and what is measured is the zone's steady state."""
STATS_DEADLINE_S: Final = 40.0
"""How long the harness waits for one stats round (each call in it is bounded by 15 s)."""
STOP_GRACE_S: Final = 15.0
"""After ``exit``: how long beyond the launcher's stop timeout its zone may take to stop."""
KILL_WAIT_S: Final = 10.0
BUSY_PROBE_S: Final = 1.0
BUSY_WARNING: Final = 0.25
"""Before each launch the machine's CPU is watched for `BUSY_PROBE_S`; past this share busy
(something else runs: a test suite, another zone) a warning says the numbers are noisy."""

MDNS_GROUP: Final = "224.0.0.251"
MDNS_PORT: Final = 5353
# Linux socket options the socket module may not name.
_IP_MULTICAST_ALL: Final = getattr(socket, "IP_MULTICAST_ALL", 49)
_SO_RXQ_OVFL: Final = getattr(socket, "SO_RXQ_OVFL", 40)
_SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)
_CLONE_NEWNET: Final = 0x40000000

_HZ: Final = os.sysconf("SC_CLK_TCK")
IP_COMMAND_TIMEOUT_S: Final = 10.0

T = TypeVar("T")


class ZoneBenchError(RuntimeError):
    """A run could not be measured: the launcher or the main did not do what it should."""

    deaths: list[dict[str, Any]]
    """The zone's nodes that died by a signal, as far as the launcher said (often the why)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.deaths = []


# -- the zone folder ---------------------------------------------------------------------------

DOCKERFILE: Final = (
    'FROM ghcr.io/build-trust/autonomy-python\nCOPY . .\nENTRYPOINT ["python", "main.py"]\n'
)

RUNNER_PY: Final = """\
from autonomy import Node

Node.start()  # Wait for work from main
"""

MAIN_PY: Final = '''\
"""The main node of a `python -m benchmarks zone` run (generated by benchmarks/_zone.py).

Finds the runners with the guide's Zone.nodes and prints when, as one JSON line; then obeys
the harness's lines in the FIFO $ZONEBENCH_CONTROL: `stats TAG` asks this node and every
runner for its counters (one JSON line), `exit` returns (the launcher then stops the zone).
"""

import time

EXEC_AT = time.time()

import asyncio
import json
import os

from autonomy import Node, Zone

CONTROL = os.environ["ZONEBENCH_CONTROL"]
LATE_WAIT_MS = int(os.environ["ZONEBENCH_LATE_WAIT_MS"])
STATS_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 600.0  # a harness that went away leaves no zone behind for long


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


class Commands:
    """The harness's lines, read from the FIFO by the event loop (never blocking it)."""

    def __init__(self, path):
        # O_RDWR: the open never waits for a writer, and no EOF comes between two writers.
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.lines = asyncio.Queue()
        self.partial = b""
        asyncio.get_running_loop().add_reader(self.fd, self.read)

    def read(self):
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            *lines, self.partial = (self.partial + data).split(b"\\n")
            for line in lines:
                self.lines.put_nowait(line.decode().strip())

    async def next(self):
        return await asyncio.wait_for(self.lines.get(), COMMAND_TIMEOUT_S)

    def close(self):
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


def counters(stats):
    return {
        "sent": stats["messages_sent"],
        "received": stats["messages_received"],
        "members": stats["members"],
        "dialed": stats["connections"]["dialed"],
        "accepted": stats["connections"]["accepted"],
    }


async def ask(runner):
    stats = await asyncio.wait_for(runner.stats(), STATS_TIMEOUT_S)
    return {**counters(stats), "at": time.time()}


async def stats_round(node, runners, tag):
    """Every runner's counters, then this node's own: they count the round's calls (and
    the hellos of any connection the round had to open again) already."""
    began = time.time()
    answers = await asyncio.gather(*(ask(runner) for runner in runners), return_exceptions=True)
    nodes, errors = {}, {}
    for runner, answer in zip(runners, answers):
        if isinstance(answer, Exception):
            errors[runner.name] = f"{type(answer).__name__}: {answer}"
        else:
            nodes[runner.name] = answer
    nodes[node.name] = {**counters(await node.stats()), "at": time.time()}
    emit("stats", tag=tag, began=began, ended=time.time(), asked=len(runners), nodes=nodes,
         errors=errors)


async def main(node):
    commands = Commands(CONTROL)
    try:
        started_at = time.time()
        expected = {name for name in os.environ["AUTONOMY_EXPECTED_NODES"].split(",")
                    if "runner" in name}
        runners = await Zone.nodes(node, filter="runner")
        found_at = time.time()
        missing = sorted(expected - {runner.name for runner in runners})
        emit("found", pid=os.getpid(), exec_at=EXEC_AT, started_at=started_at,
             found_at=found_at, found=len(runners), expected=len(expected), missing=missing)
        if missing:
            runners = await Zone.nodes(node, filter="runner", timeout=LATE_WAIT_MS)
            emit("late", at=time.time(), found=len(runners),
                 missing=sorted(expected - {runner.name for runner in runners}))
        while (line := await commands.next()) != "exit":
            if line.startswith("stats "):
                await stats_round(node, runners, line.removeprefix("stats "))
    finally:
        commands.close()


Node.start(main)
'''


def write_zone(folder: Path, zone: str, nodes: int, control: Path) -> None:
    """A zone folder of 1 main and ``nodes - 1`` runners, and the main's control FIFO."""
    runner_lines = (
        f"  - name: runner-pod\n    clones: {nodes - 1}\n    containers:\n"
        "      - name: runner\n        image: runner\n"
    )
    (folder / "autonomy.yaml").write_text(
        f"name: {zone}\npods:\n"
        "  - name: main-pod\n    containers:\n      - name: main\n        image: main\n"
        "        env:\n"
        f"          ZONEBENCH_CONTROL: {json.dumps(str(control))}\n"
        f'          ZONEBENCH_LATE_WAIT_MS: "{int(LATE_WAIT_S * 1000)}"\n'
        + (runner_lines if nodes > 1 else "")
    )
    for image, code in (("main", MAIN_PY), ("runner", RUNNER_PY)):
        image_dir = folder / "images" / image
        image_dir.mkdir(parents=True)
        (image_dir / "main.py").write_text(code)
        (image_dir / "Dockerfile").write_text(DOCKERFILE)
    os.mkfifo(control, 0o600)


# -- /proc -------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[bytes] | None:
    """``/proc/<pid>/stat`` after the command name (field 3, the state, comes first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks (None: it is gone)."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])


def start_wall_time(pid: int) -> float | None:
    """When a process started, as a ``time.time()`` stamp (to a clock tick, 10 ms)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    since_boot = int(fields[19]) / _HZ
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + since_boot


def machine_busy_ticks() -> int:
    """Ticks every CPU of the machine spent not idle since boot (``/proc/stat``)."""
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:]]
    return sum(values) - values[3] - values[4]  # less idle and iowait


async def machine_busy_share(seconds: float) -> float:
    """The share (0-1) of the machine's CPU time that was not idle over the next ``seconds``."""
    before, at = machine_busy_ticks(), time.monotonic()
    await asyncio.sleep(seconds)  # a measurement over a fixed time
    elapsed = time.monotonic() - at
    return (machine_busy_ticks() - before) / _HZ / (elapsed * (os.cpu_count() or 1))


async def wait_quiet(timeout_s: float) -> float:
    """Watch the machine's CPU for `BUSY_PROBE_S` at a time until less than `BUSY_WARNING` of
    it is busy, at most ``timeout_s``; return the last share seen."""
    deadline = time.monotonic() + timeout_s
    busy = await machine_busy_share(BUSY_PROBE_S)
    if busy > BUSY_WARNING and timeout_s > 0:
        progress(f"  the machine is {busy:.0%} busy: waiting up to {timeout_s:g} s for quiet")
        while busy > BUSY_WARNING and time.monotonic() < deadline:
            busy = await machine_busy_share(BUSY_PROBE_S)
    return busy


def tcp_table(pid: int) -> dict[int, str]:
    """Socket inode → TCP state (hex, ``01`` established, ``0A`` listening) in the network
    namespace of ``pid``."""
    table: dict[int, str] = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as file:
            next(file, None)
            for line in file:
                parts = line.split()
                if len(parts) > 9:
                    table[int(parts[9])] = parts[3]
    return table


def socket_inodes(pid: int) -> list[int]:
    """The inodes of the sockets a process holds open (its ``/proc/<pid>/fd`` links)."""
    inodes: list[int] = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    return inodes


def zone_pids(zone: str) -> list[int]:
    """Live processes whose environment names this zone (``AUTONOMY_ZONE=<zone>``)."""
    needle = f"\0AUTONOMY_ZONE={zone}\0".encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                environ = b"\0" + file.read()
        except OSError:
            continue
        fields = _stat_fields(int(entry))
        if needle in environ and fields is not None and fields[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return found


async def kill_zone_strays(zone: str) -> int:
    """SIGKILL every process left with this run's zone in its environment; wait until each
    has exited (its pidfd turns readable), at most `KILL_WAIT_S`."""
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    fds: list[int] = []
    for pid in zone_pids(zone):
        try:
            fd = os.pidfd_open(pid)  # a handle on this process, not on whoever reuses its pid
        except ProcessLookupError:
            continue
        fds.append(fd)
        exited = loop.create_future()
        loop.add_reader(fd, lambda f=exited: f.done() or f.set_result(None))
        waits.append(exited)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    try:
        if waits:
            await asyncio.wait(waits, timeout=KILL_WAIT_S)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)
    return len(fds)


@dataclass
class ProcSnapshot:
    """What /proc says of the zone's processes at one moment."""

    at: float
    ticks: dict[str, int | None]
    machine_busy: int
    launcher_ticks: int | None

    @classmethod
    def take(cls, pids: dict[str, int], launcher: int) -> ProcSnapshot:
        return cls(
            time.time(),
            {name: cpu_ticks(pid) for name, pid in pids.items()},
            machine_busy_ticks(),
            cpu_ticks(launcher),
        )


# -- a network namespace per zone (--netns) ----------------------------------------------------


async def _ip(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "ip",
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(IP_COMMAND_TIMEOUT_S):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ZoneBenchError(f"`ip {' '.join(argv)}` did not finish in time") from None
    if process.returncode:
        raise ZoneBenchError(f"`ip {' '.join(argv)}` failed: {err.decode().strip()}")


@contextlib.asynccontextmanager
async def private_loopback(name: str) -> AsyncIterator[str]:
    """A network namespace of its own with its loopback up: the zone's mDNS and TCP stay in
    it, so other zones on the machine (a test suite, another benchmark) neither reach the
    zone nor hear it. Deleted on the way out. Needs root."""
    await _ip("netns", "add", name)
    try:
        await _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        await _ip("netns", "delete", name)


def in_netns(name: str, make: Callable[[], T]) -> T:
    """``make()`` called in a thread that entered the network namespace ``name``: a socket
    it opens stays in that namespace (the calling thread never changes namespace)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def inside() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{name}") as namespace:
                if libc.setns(namespace.fileno(), _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
            result.append(make())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=inside, name=f"netns-{name}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


# -- mDNS --------------------------------------------------------------------------------------


class MdnsCounter:
    """Counts the mDNS packets sent to 224.0.0.251:5353 on loopback. It only listens.

    Each packet is kept as (time, bytes, whether it names this run's zone): other zones on the
    machine (a test suite running meanwhile) share the group, and only answers carry a zone.
    """

    def __init__(self, zone: str, netns: str | None = None) -> None:
        """Listen on the loopback of this process, or of the network namespace ``netns``."""
        self.packets: list[tuple[float, int, bool]] = []
        self.dropped = 0
        """Packets the kernel dropped because this socket's buffer was full."""
        self._needle = f"zone={zone}".encode()
        sock = self._listener() if netns is None else in_netns(netns, self._listener)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)

    @staticmethod
    def _listener() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:  # room for a cold start's burst: past net.core.rmem_max where allowed (root)
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 * 1024 * 1024)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            with contextlib.suppress(OSError):  # Linux: only the groups this socket joined
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
            with contextlib.suppress(OSError):  # Linux: a count of drops with each packet
                sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
            sock.bind((MDNS_GROUP, MDNS_PORT))
            membership = socket.inet_aton(MDNS_GROUP) + socket.inet_aton("127.0.0.1")
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _read(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self._sock.recvmsg(9000, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            self.packets.append((time.time(), len(data), self._needle in data))
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(value) >= 4:
                    self.dropped = struct.unpack("=I", value[:4])[0]

    def between(self, start: float, end: float) -> dict[str, int]:
        inside = [p for p in self.packets if start <= p[0] < end]
        return {
            "packets": len(inside),
            "bytes": sum(p[1] for p in inside),
            "packets_naming_zone": sum(1 for p in inside if p[2]),
        }

    def close(self) -> None:
        """Stop listening; what was queued already is counted."""
        self._read()
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()


# -- the launcher ------------------------------------------------------------------------------

_OUTPUT_RE: Final = re.compile(r"^(?P<node>\S+)\s*\| ?(?P<text>.*)$")
_STARTED_RE: Final = re.compile(r"^autonomy: started (?P<node>\S+) \(pid (?P<pid>\d+)\)")
_EXIT_RE: Final = re.compile(
    r"^autonomy: (?:warning: |error: )?(?P<node>\S+) "
    r"(?:exited with status (?P<status>\d+)|was killed by signal (?P<signal>\d+))"
)
_KILLING_RE: Final = re.compile(r"^autonomy: warning: (?P<node>\S+) did not stop within")
_TROUBLE_RE: Final = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Assertion|Error:")


@dataclass
class NodeExit:
    node: str
    returncode: int
    at: float
    killed_after_stop_timeout: bool
    while_running: bool
    """It ended before the harness asked the zone to stop."""


@dataclass
class Launcher:
    """``autonomy zone deploy DIR --exit-with main-pod-main``, its output parsed as it comes:
    the main's JSON events, each node's pid, each node's exit, and every line for the log."""

    process: asyncio.subprocess.Process
    control: Path
    log: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    exits: dict[str, NodeExit] = field(default_factory=dict)
    trouble: list[str] = field(default_factory=list)
    """Lines that look like a warning, an error or a traceback (the nodes' and the
    launcher's)."""
    stopping: bool = False
    _events: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    _killing: set[str] = field(default_factory=set)
    _pumps: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls, folder: Path, control: Path, env: dict[str, str], prefix: list[str]
    ) -> Launcher:
        """Start the launcher, behind ``prefix`` (``ip netns exec NAME``, which execs it)."""
        argv = [*prefix, sys.executable, "-m", "autonomy", "zone", "deploy", str(folder)]
        argv += ["--exit-with", MAIN_NODE]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=folder.parent,
            env=env,
            start_new_session=True,
            preexec_fn=pdeathsig_preexec(),  # it dies with us, and its nodes with it
            limit=1 << 20,  # the main's stats lines of a 100-node zone are ~15 KB
        )
        launcher = cls(process, control)
        assert process.stdout is not None
        assert process.stderr is not None
        launcher._pumps = [
            asyncio.create_task(launcher._pump(process.stdout, launcher._on_node_line, True)),
            asyncio.create_task(launcher._pump(process.stderr, launcher._on_launcher_line)),
        ]
        return launcher

    async def _pump(
        self, stream: asyncio.StreamReader, handle: Callable[[str], None], events: bool = False
    ) -> None:
        try:
            while line := await stream.readline():
                text = line.decode(errors="replace").rstrip("\n")
                self.log.append(f"{time.time():.3f} {text}")
                handle(text)
        finally:
            if events:
                self._events.put_nowait(None)  # the main can say nothing more

    def _on_node_line(self, text: str) -> None:
        match = _OUTPUT_RE.match(text)
        if match is None:
            return
        node, body = match["node"], match["text"]
        if node == MAIN_NODE and body.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(body)
                if isinstance(event, dict) and "event" in event:
                    self._events.put_nowait(event)
                    return
        if _TROUBLE_RE.search(body):
            self.trouble.append(text)

    def _on_launcher_line(self, text: str) -> None:
        if text.startswith(("autonomy: warning:", "autonomy: error:")):
            self.trouble.append(text)
        if match := _STARTED_RE.match(text):
            self.pids[match["node"]] = int(match["pid"])
        elif match := _KILLING_RE.match(text):
            self._killing.add(match["node"])
        elif match := _EXIT_RE.match(text):
            node = match["node"]
            code = int(match["status"]) if match["status"] else -int(match["signal"])
            self.exits[node] = NodeExit(
                node, code, time.time(), node in self._killing, not self.stopping
            )

    async def event(self, kind: str, timeout_s: float) -> dict[str, Any]:
        """The main's next JSON event, which must be of this kind."""
        try:
            event = await asyncio.wait_for(self._events.get(), timeout_s)
        except TimeoutError:
            what = f"no {kind!r} from the main in {timeout_s:.0f} s"
            raise ZoneBenchError(self._describe(what)) from None
        if event is None:
            self._events.put_nowait(None)
            raise ZoneBenchError(self._describe(f"the zone's output ended before {kind!r}"))
        if event["event"] != kind:
            raise ZoneBenchError(self._describe(f"expected {kind!r} from the main, got {event}"))
        return event

    def command(self, line: str) -> None:
        """Write one line into the main's control FIFO (fails at once if nobody reads it)."""
        try:
            fd = os.open(self.control, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise ZoneBenchError(self._describe(f"the main's control FIFO: {exc}")) from exc
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)

    async def stats(self, tag: str) -> dict[str, Any]:
        self.command(f"stats {tag}")
        event = await self.event("stats", STATS_DEADLINE_S)
        if event["tag"] != tag:
            raise ZoneBenchError(f"stats round {event['tag']!r} answered for {tag!r}")
        return event

    async def wait(self, timeout_s: float) -> int | None:
        """The launcher's exit status once it exited and its output is read (None: not in
        time)."""
        try:
            async with asyncio.timeout(timeout_s):
                code = await self.process.wait()
                await asyncio.gather(*self._pumps)
        except TimeoutError:
            return None
        return code

    async def close(self, stop_timeout_s: float) -> None:
        """Stop the zone if it still runs (SIGTERM to the launcher, then SIGKILL).

        Once the main exited, the launcher is stopping the zone already: a SIGTERM now would
        be its second, which kills every node at once.
        """
        self.stopping = True
        if self.process.returncode is None:
            if MAIN_NODE not in self.exits:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGTERM)
            if await self.wait(stop_timeout_s + STOP_GRACE_S) is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.wait(KILL_WAIT_S)
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    def _describe(self, what: str) -> str:
        tail = "\n".join(self.log[-40:])
        status = self.process.returncode
        return f"{what} (launcher {'running' if status is None else f'exit {status}'})\n{tail}"


# -- one run -----------------------------------------------------------------------------------


def _summary(values: Iterable[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "max": None, "mean": None, "total": None}
    return {
        "median": round(median(present), 3),
        "max": round(max(present), 3),
        "mean": round(sum(present) / len(present), 3),
        "total": round(sum(present), 3),
    }


def _zone_env(tmp: Path) -> dict[str, str]:
    """This process's environment without any AUTONOMY_* setting, plus the run's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTONOMY_")}
    env.update(
        {
            "AUTONOMY_STATE_DIR": str(tmp / "state"),
            "XDG_CONFIG_HOME": str(tmp / "config"),  # the launcher keeps the secret there
            "AUTONOMY_BIND": "127.0.0.1",  # and so mDNS runs on 127.0.0.1 only
        }
    )
    return env


async def settle(launcher: Launcher, nodes: int) -> tuple[dict[str, Any], bool, int]:
    """Stats rounds, `SETTLE_POLL_S` apart, until the zone has settled: every node counts
    every other as a member, and since the round before the zone exchanged fewer than
    `QUIET_MESSAGES_PER_NODE_S` messages per node and second (its gossip of the cold start
    is over). At most `SETTLE_MAX_S`.

    Returns the last round (it opens the idle window), whether the zone settled, and how
    many rounds it took.
    """
    deadline = time.monotonic() + SETTLE_MAX_S
    rounds = 0
    previous: dict[str, Any] | None = None
    while True:
        rounds += 1
        event = await launcher.stats(f"settle-{rounds}")
        members = [each["members"] for each in event["nodes"].values()]
        converged = len(members) == nodes and min(members) >= nodes - 1 and not event["errors"]
        if converged and previous is not None:
            rates = message_rates(previous, event).values()
            if None not in rates and sum(rates) < QUIET_MESSAGES_PER_NODE_S * nodes:  # type: ignore[arg-type]
                return event, True, rounds
        if time.monotonic() >= deadline:
            return event, False, rounds
        previous = event
        await asyncio.sleep(SETTLE_POLL_S)  # between polls the zone is left alone


def message_rates(start: dict[str, Any], end: dict[str, Any]) -> dict[str, float | None]:
    """ZeroMQ messages per second per node between two stats rounds, less the rounds' own.

    A runner answers a STATS after counting the request and before sending the reply: its
    counters moved by one reply (of the first round) and one request (of the second). The
    main asks first and reads its own counters last in each round: its counters moved by
    the second round's requests and replies.
    """
    rates: dict[str, float | None] = {}
    replies = len(end["nodes"]) - 1
    for name, before in start["nodes"].items():
        after = end["nodes"].get(name)
        if after is None:
            rates[name] = None
            continue
        moved = after["sent"] - before["sent"] + after["received"] - before["received"]
        ours = end["asked"] + replies if name == MAIN_NODE else 2
        seconds = after["at"] - before["at"]
        rates[name] = round((moved - ours) / seconds, 3) if seconds > 0 else None
    return rates


@dataclass
class Window:
    """What /proc says of every node over a stretch of idle time, and at its end."""

    before: ProcSnapshot
    after: ProcSnapshot
    nodes: dict[str, dict[str, Any]]
    """Per node: ``cpu_ms_per_s``, ``rss_mb``, ``tcp_sockets``, ``tcp_established``."""

    @property
    def seconds(self) -> float:
        return self.after.at - self.before.at

    def zone_cpu_ms_per_s(self) -> float:
        ticks = sum(
            (self.after.ticks[name] or 0) - (tick or 0)
            for name, tick in self.before.ticks.items()
            if tick is not None
        )
        return round(ticks / _HZ * 1000 / self.seconds, 3)

    def summary(self, key: str) -> dict[str, float | None]:
        return _summary(info[key] for info in self.nodes.values())

    def describe(self) -> dict[str, Any]:
        """The window's facts beyond the metrics: what ran besides the zone, and so on."""
        zone_ticks = self.zone_cpu_ms_per_s() * self.seconds * _HZ / 1000
        launcher_ticks = (self.after.launcher_ticks or 0) - (self.before.launcher_ticks or 0)
        outside = self.after.machine_busy - self.before.machine_busy - zone_ticks - launcher_ticks
        return {
            "seconds": round(self.seconds, 3),
            "cpu_ms_per_s": self.summary("cpu_ms_per_s"),
            "rss_mb": self.summary("rss_mb"),
            "tcp_sockets": self.summary("tcp_sockets"),
            "tcp_established": self.summary("tcp_established"),
            "launcher_cpu_ms_per_s": round(launcher_ticks / _HZ * 1000 / self.seconds, 3),
            "machine_busy_outside_zone_ms_per_s": round(outside / _HZ * 1000 / self.seconds, 1),
        }

    @classmethod
    async def measure(
        cls,
        pids: dict[str, int],
        launcher: int,
        seconds: float,
        tcp: dict[str, dict[str, int]] | None = None,
    ) -> Window:
        """CPU over the next ``seconds``, RSS at their end, and TCP sockets then (or the
        counts ``tcp`` taken earlier)."""
        before = ProcSnapshot.take(pids, launcher)
        await asyncio.sleep(seconds)  # the window itself: nothing happens, by design
        after = ProcSnapshot.take(pids, launcher)
        tcp = tcp or tcp_counts(pids, launcher)
        nodes: dict[str, dict[str, Any]] = {}
        for name, pid in pids.items():
            t0, t1 = before.ticks[name], after.ticks[name]
            nodes[name] = {
                "cpu_ms_per_s": (
                    round((t1 - t0) / _HZ * 1000 / (after.at - before.at), 3)
                    if t0 is not None and t1 is not None
                    else None
                ),
                "rss_mb": round(rss_kb(pid) / 1024, 1) or None,
                **tcp[name],
            }
        return cls(before, after, nodes)


def tcp_counts(pids: dict[str, int], launcher: int) -> dict[str, dict[str, int]]:
    """Per node: the TCP sockets its process holds (``tcp_sockets``, the listener included)
    and how many of them are connected (``tcp_established``)."""
    table = tcp_table(launcher)
    counts = {}
    for name, pid in pids.items():
        inodes = socket_inodes(pid)
        counts[name] = {
            "tcp_sockets": sum(1 for inode in inodes if inode in table),
            "tcp_established": sum(1 for inode in inodes if table.get(inode) == "01"),
        }
    return counts


@dataclass
class RunSpec:
    nodes: int
    run: int
    idle_s: float
    steady_after_s: float
    stop_timeout_s: float
    wait_quiet_s: float
    netns: bool


async def run_zone(spec: RunSpec, log: list[str]) -> dict[str, Any]:
    """One cold start of a zone of ``spec.nodes`` processes, its idle windows, and its stop.

    Raises:
        ZoneBenchError: the run could not be measured (what was seen is in the message).
    """
    zone = f"zb-{secrets.token_hex(4)}"
    if not spec.netns:
        return await _run_zone(spec, zone, None, log)
    async with private_loopback(zone) as netns:
        return await _run_zone(spec, zone, netns, log)


async def _run_zone(spec: RunSpec, zone: str, netns: str | None, log: list[str]) -> dict[str, Any]:
    nodes, run = spec.nodes, spec.run
    where = f"N={nodes} run {run}"
    problems: list[str] = []
    busy_before = await wait_quiet(spec.wait_quiet_s)
    if busy_before > BUSY_WARNING:
        progress(f"  {where}: the machine is {busy_before:.0%} busy before the launch: noise")
    loadavg = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="autonomy-zonebench-"))
    mdns: MdnsCounter | None = None
    launcher: Launcher | None = None
    failure: ZoneBenchError | None = None
    launched_at = time.time()
    try:
        folder = tmp / zone
        folder.mkdir()
        control = tmp / "control"
        write_zone(folder, zone, nodes, control)
        mdns = MdnsCounter(zone, netns)
        launched_at = time.time()
        prefix = ["ip", "netns", "exec", netns] if netns is not None else []
        launcher = await Launcher.start(folder, control, _zone_env(tmp), prefix)
        budget = START_BUDGET_S + START_BUDGET_PER_NODE_S * nodes + ZONE_NODES_WAIT_S
        found = await launcher.event("found", budget)
        progress(
            f"  {where}: Zone.nodes returned {found['found']}/{found['expected']} runners "
            f"{found['found_at'] - launched_at:.1f} s after launch"
        )
        late = None
        if found["missing"]:
            late = await launcher.event("late", LATE_WAIT_S + 30)
            names = ", ".join(found["missing"][:5]) + (", ..." if len(found["missing"]) > 5 else "")
            problems.append(
                f"{where}: Zone.nodes missed {len(found['missing'])} runner(s) after its "
                f"{ZONE_NODES_WAIT_S:.0f} s wait ({names}); {len(late['missing'])} still "
                f"missing {late['at'] - found['found_at']:.0f} s later"
            )
        if len(launcher.pids) != nodes:
            raise ZoneBenchError(f"the launcher started {len(launcher.pids)} of {nodes} nodes")
        pids = dict(launcher.pids)
        starts = {name: start_wall_time(pid) for name, pid in pids.items()}

        settle_began = time.time()
        opening, settled, rounds = await settle(launcher, nodes)
        if not settled:
            low = min(each["members"] for each in opening["nodes"].values())
            problems.append(
                f"{where}: not settled in {SETTLE_MAX_S:.0f} s (lowest member count {low} of "
                f"{nodes - 1}, stats errors {len(opening['errors'])}); measured anyway"
            )
        progress(
            f"  {where}: {'settled' if settled else 'NOT settled'} in "
            f"{time.time() - settle_began:.1f} s ({rounds} stats rounds); idle {spec.idle_s:g} s"
        )
        idle = await Window.measure(pids, launcher.process.pid, spec.idle_s)
        closing = await launcher.stats("end")
        steady = steady_rates = None
        steady_rounds: list[dict[str, Any]] = []
        if spec.steady_after_s > 0:
            progress(
                f"  {where}: {spec.steady_after_s:g} s for idle links to close, then "
                f"{spec.idle_s:g} s more"
            )
            await asyncio.sleep(spec.steady_after_s)  # a time-out of the library's to pass
            # Sockets first: the stats round opens the main's connections to the runners again.
            tcp = tcp_counts(pids, launcher.process.pid)
            steady_rounds.append(await launcher.stats("steady-start"))
            steady = await Window.measure(pids, launcher.process.pid, spec.idle_s, tcp)
            steady_rounds.append(await launcher.stats("steady-end"))
            steady_rates = message_rates(*steady_rounds)

        stop_began = time.time()
        launcher.stopping = True
        launcher.command("exit")
        code = await launcher.wait(spec.stop_timeout_s + STOP_GRACE_S)
        stop_s = time.time() - stop_began
        if code is None:
            problems.append(f"{where}: the zone did not stop in time")
        elif code != 0:
            problems.append(f"{where}: the launcher exited with status {code}")
    except ZoneBenchError as exc:
        failure = exc
        raise
    finally:
        try:
            if launcher is not None:
                await launcher.close(spec.stop_timeout_s)
                if failure is not None:
                    failure.deaths = _deaths(launcher)
        finally:
            strays = await kill_zone_strays(zone)
            if mdns is not None:
                mdns.close()
            inside = f" in network namespace {netns}" if netns else ""
            log.append(f"=== {where} zone {zone}{inside} (launched at {launched_at:.3f})")
            log.extend(launcher.log if launcher is not None else [])
            shutil.rmtree(tmp, ignore_errors=True)
    if strays:
        problems.append(f"{where}: {strays} process(es) outlived the launcher")
    deaths = _deaths(launcher)
    problems += [f"{where}: {death['node']} {death['exit']} ({death['when']})" for death in deaths]
    unreported = sorted(set(pids) - set(launcher.exits))
    if unreported:
        problems.append(f"{where}: the launcher reported no exit for {len(unreported)} node(s)")
    errors = {k: v for r in (opening, closing, *steady_rounds) for k, v in r["errors"].items()}
    if errors:
        problems.append(
            f"{where}: stats() failed for {len(errors)} node(s): {next(iter(errors.values()))}"
        )

    rates = message_rates(opening, closing)
    for name, info in idle.nodes.items():
        info["pid"] = pids[name]
        info["started_at"] = starts[name]
        info["messages_per_s"] = rates.get(name)
        info["members"] = closing["nodes"].get(name, {}).get("members")
        if steady is not None and steady_rates is not None:
            for key in ("cpu_ms_per_s", "rss_mb", "tcp_sockets", "tcp_established"):
                info[f"steady_{key}"] = steady.nodes[name][key]
            info["steady_messages_per_s"] = steady_rates.get(name)
    found_at = found["found_at"]
    known_starts = [s for s in starts.values() if s is not None]
    last_start = max(known_starts) if known_starts else None
    cpu, rss, tcp = (
        idle.summary("cpu_ms_per_s"),
        idle.summary("rss_mb"),
        idle.summary("tcp_sockets"),
    )
    messages = _summary(rates.values())
    cold = mdns.between(launched_at, found_at)
    quiet = mdns.between(idle.before.at, idle.after.at)
    metrics = {
        "launch_to_found_s": round(found_at - launched_at, 3),
        "last_start_to_found_s": round(found_at - last_start, 3) if last_start else None,
        "missing": len(found["missing"]),
        "idle_cpu_ms_per_s_median": cpu["median"],
        "idle_cpu_ms_per_s_max": cpu["max"],
        "idle_cpu_ms_per_s_zone": idle.zone_cpu_ms_per_s(),
        "rss_mb_median": rss["median"],
        "rss_mb_max": rss["max"],
        "tcp_sockets_median": tcp["median"],
        "tcp_sockets_max": tcp["max"],
        "messages_per_s_median": messages["median"],
        "messages_per_s_max": messages["max"],
        "messages_per_s_zone": messages["total"],
        "mdns_cold_start_packets": cold["packets"],
        "mdns_cold_start_bytes": cold["bytes"],
        "mdns_idle_packets": quiet["packets"],
        "mdns_idle_bytes": quiet["bytes"],
        "died_by_signal": len(deaths),
    }
    if steady is not None and steady_rates is not None:
        steady_cpu, steady_tcp = steady.summary("cpu_ms_per_s"), steady.summary("tcp_sockets")
        steady_messages = _summary(steady_rates.values())
        metrics |= {
            "steady_cpu_ms_per_s_median": steady_cpu["median"],
            "steady_cpu_ms_per_s_max": steady_cpu["max"],
            "steady_cpu_ms_per_s_zone": steady.zone_cpu_ms_per_s(),
            "steady_tcp_sockets_median": steady_tcp["median"],
            "steady_tcp_sockets_max": steady_tcp["max"],
            "steady_messages_per_s_median": steady_messages["median"],
            "steady_messages_per_s_max": steady_messages["max"],
            "steady_messages_per_s_zone": steady_messages["total"],
        }
    detail = {
        "launched_at": launched_at,
        "loadavg_at_launch": [round(x, 2) for x in loadavg],
        "machine_busy_before_launch": round(busy_before, 3),
        "launch_to_last_start_s": round(last_start - launched_at, 3) if last_start else None,
        "main_exec_to_found_s": round(found_at - found["exec_at"], 3),
        "main_node_started_to_found_s": round(found_at - found["started_at"], 3),
        "missing_names": found["missing"],
        "late": None
        if late is None
        else {"seconds_after_first_answer": round(late["at"] - found_at, 3), **late},
        "settled": settled,
        "settle_s": round(opening["ended"] - settle_began, 3),
        "settle_rounds": rounds,
        "idle": idle.describe(),
        "messages_window_s": round(closing["began"] - opening["ended"], 3),
        "steady": None
        if steady is None
        else {
            "starts_after_idle_window_s": round(steady.before.at - idle.after.at, 1),
            **steady.describe(),
            "messages_per_s": _summary((steady_rates or {}).values()),
            "mdns": mdns.between(steady.before.at, steady.after.at),
        },
        "rounds": {r["tag"]: _round_summary(r) for r in (opening, closing, *steady_rounds)},
        "mdns_cold_start": cold,
        "mdns_idle": {**quiet, "packets_per_s": round(quiet["packets"] / idle.seconds, 2)},
        "mdns_dropped_by_listener": mdns.dropped,
        "stop_s": round(stop_s, 3),
        "launcher_exit": code,
        "deaths": deaths,
        "node_trouble_lines": launcher.trouble[:50],
        "node_trouble_count": len(launcher.trouble),
        "members_at_end": _summary(info["members"] for info in idle.nodes.values()),
        "nodes": idle.nodes,
    }
    for problem in problems:
        progress(f"PROBLEM: {problem}")
    return {
        "nodes": nodes,
        "run": run,
        "zone": zone,
        "metrics": metrics,
        "detail": detail,
        "problems": problems,
    }


def _round_summary(event: dict[str, Any]) -> dict[str, Any]:
    """What one stats round saw of the zone: members (each node's count) and links."""
    nodes = event["nodes"].values()
    return {
        "at": event["began"],
        "answered": len(event["nodes"]),
        "errors": len(event["errors"]),
        "members": _summary(each["members"] for each in nodes),
        "dialed": _summary(each["dialed"] for each in nodes),
        "accepted": _summary(each["accepted"] for each in nodes),
    }


def _deaths(launcher: Launcher) -> list[dict[str, Any]]:
    """The node processes that ended by a signal, and when."""
    deaths = []
    for exit_ in launcher.exits.values():
        if exit_.returncode >= 0:
            continue
        when = (
            "killed by the launcher after its stop timeout"
            if exit_.killed_after_stop_timeout
            else "while the zone ran"
            if exit_.while_running
            else "while the zone stopped"
        )
        deaths.append(
            {
                "node": exit_.node,
                "signal": -exit_.returncode,
                "exit": describe_exit(exit_.returncode),
                "when": when,
            }
        )
    return deaths


# -- the whole benchmark -----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks zone", description=__doc__.splitlines()[0]
    )

    def sizes(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected N,N,...: {text!r}") from None
        if not values or min(values) < 2:
            raise argparse.ArgumentTypeError("every size must be 2 nodes or more")
        return values

    parser.add_argument(
        "--sizes", type=sizes, help="zone sizes in nodes, main included (default 10,30,60,100)"
    )
    parser.add_argument("--runs", type=int, default=1, help="cold starts per size (default 1)")
    parser.add_argument("--idle-seconds", type=float, help="the idle window (default 10, quick 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"sizes {','.join(map(str, QUICK_SIZES))}, a {QUICK_IDLE_S:g} s idle window, no "
        "steady window (~20 s)",
    )
    parser.add_argument(
        "--steady-after",
        type=float,
        help=f"seconds between the idle window and a second one, once the cold start's idle "
        f"connections closed (default {STEADY_AFTER_S:g}; 0 skips it, as --quick does)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"before each launch, wait up to this long for the machine to be less than "
        f"{BUSY_WARNING * 100:.0f}%% busy (other work on it makes the numbers noisy; default 0)",
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="run each zone in a network namespace of its own (root): its loopback is then "
        "its alone, and no other zone's mDNS on this machine reaches it",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="the launcher's --timeout: how long nodes get to stop before SIGKILL (default 10)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where JSON and PNG go")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if args.idle_seconds is None:
        args.idle_seconds = QUICK_IDLE_S if args.quick else 10.0
    if args.steady_after is None:
        args.steady_after = 0.0 if args.quick else STEADY_AFTER_S
    if args.netns and (os.geteuid() != 0 or shutil.which("ip") is None):
        parser.error("--netns needs root and the `ip` command")
    if args.runs < 1 or args.idle_seconds <= 0 or args.steady_after < 0:
        parser.error("--runs must be 1 or more and --idle-seconds positive")
    return args


async def run(args: argparse.Namespace, log: list[str]) -> dict[str, Any]:
    started = time.time()
    # SIGTERM stops us as Ctrl-C does: the current run's zone is stopped and cleaned up.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    for nodes in args.sizes:
        for index in range(1, args.runs + 1):
            progress(f"zone of {nodes} nodes, run {index}/{args.runs}: launching")
            try:
                spec = RunSpec(
                    nodes,
                    index,
                    args.idle_seconds,
                    args.steady_after,
                    args.stop_timeout,
                    args.wait_quiet,
                    args.netns,
                )
                runs.append(await run_zone(spec, log))
            except ZoneBenchError as exc:
                where = f"N={nodes} run {index}"
                lines = [f"{where}: not measured: {exc}"]
                lines += [f"{where}: {d['node']} {d['exit']} ({d['when']})" for d in exc.deaths]
                for line in lines:
                    progress(f"PROBLEM: {line}")
                failures += lines
                runs.append({"nodes": nodes, "run": index, "error": str(exc), "deaths": exc.deaths})
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__} (the nodes' Node.start)"
    except ImportError:
        loop = "asyncio (the nodes' Node.start)"
    return {
        "machine": machine_info(loop),
        "params": {
            "sizes": list(args.sizes),
            "runs": args.runs,
            "idle_seconds": args.idle_seconds,
            "stop_timeout_s": args.stop_timeout,
            "launcher": f"autonomy zone deploy DIR --exit-with {MAIN_NODE} --timeout "
            f"{args.stop_timeout:g}",
            "zone": "1 main + N-1 runners (Node.start()), one process each, CURVE (default), "
            "bound to 127.0.0.1, mDNS on 127.0.0.1"
            + (", each zone in a network namespace of its own" if args.netns else ""),
            "zone_nodes_wait_s": ZONE_NODES_WAIT_S,
            "settle": f"stats rounds every {SETTLE_POLL_S:g} s until every node counts N-1 "
            f"members and the zone sent < {QUIET_MESSAGES_PER_NODE_S:g} message per node and "
            f"second since the round before (at most {SETTLE_MAX_S:g} s)",
            "quiet_messages_per_node_s": QUIET_MESSAGES_PER_NODE_S,
            "steady_after_s": args.steady_after,
            "wait_quiet_s": args.wait_quiet,
            "netns": args.netns,
            "cpu_clock_tick_s": 1 / _HZ,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "metrics": list(METRICS) + (list(STEADY_METRICS) if args.steady_after else []),
        "sizes": summarize_sizes(runs),
        "runs": runs,
        "problems": failures + [p for r in runs for p in r.get("problems", [])],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress(
        f"zone benchmark: sizes {','.join(map(str, args.sizes))}, {args.runs} run(s) each, "
        f"idle window {args.idle_seconds:g} s"
    )
    log: list[str] = []
    try:
        with asyncio.Runner() as runner:
            result = runner.run(run(args, log))
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("interrupted: the zone of the current run was stopped; nothing written")
        return 130
    args.out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("zone-%Y%m%d-%H%M%S")
    json_path = args.out / f"{stem}.json"
    png_path = args.out / f"{stem}.png"
    log_path = args.out / f"{stem}.log"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    log_path.write_text("\n".join(log) + "\n")
    with contextlib.suppress(ImportError):
        plot(png_path, result)
    if not png_path.exists():
        progress("matplotlib is not installed: no plot (pip install matplotlib)")
    print(human_table(result), file=sys.stderr)
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    written = f"{json_path}, {log_path}" + (f" and {png_path}" if png_path.exists() else "")
    progress(f"wrote {written}")
    measured = all("metrics" in each for each in result["runs"])
    return 0 if measured else 1
