"""Zones across several "machines": network namespaces on one bridge (tests/netns.py).

One node per namespace, bound to its namespace's address, each a separate process: the main
too (a script written to tmp_path, since the test process itself is in no namespace). The
main finds the runners with ``Zone.nodes(main, filter="runner", count=2)``, ships a worker to
each and prints what it saw as JSON lines; the test drives it through stdin.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import autonomy._peer as peer_module

from .conftest import Runner, spawn_runner, unique
from .netns import Host, NetnsLab, multicast_passes, netns_available
from .processes import Child

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not netns_available(), reason="needs root and ip netns"),
]

SEED_PORT = 7100
"""The seed runner's fixed port: safe, the namespace and its address are the test's own."""

MAIN = r'''
"""The main node of a netns test: configured by the environment, as the launcher does."""
import asyncio, json, os, sys, time

from autonomy import Node, Zone


class Where:
    """Replies with where it runs (process, network namespace) and whom its node sees."""

    def __init__(self, node):
        self.node = node  # travels by reference: the runner's own Node on arrival

    async def handle_message(self, context, message):
        text, count = message.rsplit(" ", 1)  # "<text> <zone members to wait for>"
        zone = await Zone.nodes(self.node, count=int(count), timeout=15_000)
        await context.reply(json.dumps({
            "echo": text,
            "pid": os.getpid(),
            "netns": os.stat("/proc/self/ns/net").st_ino,
            "node": type(self.node).__name__,
            "zone": [each.name for each in zone],
        }))


def say(**fields):
    print(json.dumps(fields), flush=True)


async def ask_all(remotes, message):
    replies = {}
    for remote in remotes:
        reply = await remote.send_and_receive("where", message, timeout=20_000)
        replies[remote.name] = json.loads(reply)
    return replies


async def main():
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    calls = []
    async with Node() as node:
        began = time.monotonic()
        found = await Zone.nodes(node, filter="runner", count=2, timeout=20_000)
        found_s = time.monotonic() - began
        for remote in found:
            async with asyncio.timeout(20):
                await remote.start_worker("where", Where(remote))
        say(
            event="found",
            main=node.name,
            found_s=found_s,
            nodes=[{"name": each.name, "endpoint": each.endpoint} for each in found],
            replies=await ask_all(found, "hello 3"),
        )
        while command := (await stdin.readline()).decode().split():
            if command[0] == "call":  # a long request to a runner, in the background
                target = next(each for each in found if each.name == command[1])
                async def call(target=target):
                    try:
                        await target.send_and_receive("where", "x 9", timeout=120_000)
                        say(event="answered")
                    except Exception as exc:
                        say(event="failed", error=type(exc).__name__, t=time.monotonic())
                calls.append(asyncio.ensure_future(call()))
                say(event="calling")
            if command[0] == "join":  # report when the named node is a member again
                name = command[1]
                members = node.membership.members
                back = await members.wait_for(lambda ms: any(m.name == name for m in ms), 60.0)
                say(event="joined" if back else "absent", name=name, t=time.monotonic())
            if command[0] == "watch":  # report when the named node leaves the zone
                name = command[1]
                members = node.membership.members
                say(event="watching", name=name)
                gone = await members.wait_for(
                    lambda ms: all(m.name != name for m in ms), 20.0
                )
                left_at = time.monotonic()
                rest = await Zone.nodes(node, filter="runner", count=0)
                say(
                    event="left" if gone else "stayed",
                    name=name,
                    t=left_at,
                    nodes=[each.name for each in rest],
                    replies=await ask_all(rest, "still-there 0"),
                )


asyncio.run(main())
'''


NETNS_SECRET = "copied-by-hand-to-every-machine-0123456789"


class Mesh:
    """The processes of one test: a main in hosts[0], a runner in each other host, each in
    its namespace; all are killed and reaped when the mesh closes."""

    def __init__(self, hosts: list[Host], zone: str, cwd: Path, stack: AsyncExitStack) -> None:
        self.hosts = hosts
        self.zone = zone
        self.cwd = cwd
        self.stack = stack
        self.runners: list[Runner] = []

    def env(self, name: str, env: dict[str, str]) -> dict[str, str]:
        # Each "machine" has its own empty config home: the zone secret (CURVE on, the
        # default) comes from the environment only, as a user copies it across machines.
        return {
            "PYTHONPATH": "",
            "XDG_CONFIG_HOME": str(self.cwd / f"config-{name}"),
            "AUTONOMY_ZONE_SECRET": NETNS_SECRET,
            **env,
        }

    async def runner(self, host: Host, name: str, bind: str, env: dict[str, str]) -> Runner:
        runner = await spawn_runner(
            self.zone, name, self.cwd, bind, self.env(name, env), prefix=host.command()
        )
        self.stack.push_async_callback(runner.child.aclose)
        assert runner.pid == runner.child.pid  # `ip netns exec` execs: one process
        self.runners.append(runner)
        self.runners.sort(key=lambda each: each.name)
        return runner

    async def main(self, env: dict[str, str]) -> Child:
        """The main node: JSON lines on stdout, commands on stdin."""
        script = self.cwd / "main.py"
        script.write_text(MAIN)
        host = self.hosts[0]
        env = {
            "AUTONOMY_NODE_NAME": "main",
            "AUTONOMY_ZONE": self.zone,
            "AUTONOMY_BIND": host.address,
            **env,
        }
        child = Child(
            sys.executable, script, name="main", prefix=host.command(), cwd=self.cwd,
            env=self.env("main", env), merge_stderr=True,
        )
        return await self.stack.enter_async_context(child)


@asynccontextmanager
async def mesh(tmp_path: Path, *, block_multicast: bool = False) -> AsyncIterator[Mesh]:
    lab = NetnsLab(3)
    async with lab as hosts:
        if block_multicast:
            # The lab passes multicast; after this, no mDNS packet crosses the bridge.
            assert await multicast_passes(hosts[1], hosts[0])
            lab.block_multicast()
            assert not await multicast_passes(hosts[1], hosts[0])
            assert not await multicast_passes(hosts[0], hosts[2])
        async with AsyncExitStack() as stack:
            yield Mesh(hosts, unique("zone"), tmp_path, stack)


def netns_inode(host: Host) -> int:
    return os.stat(f"/run/netns/{host.name}").st_ino


def check_found(found: dict[str, Any], state: Mesh) -> None:
    """The main found both runners, at their namespaces' addresses; the worker shipped to
    each ran in that runner's process and namespace, and each runner saw the whole zone."""
    hosts, runners = state.hosts, state.runners
    assert found["main"] == "main"
    assert found["nodes"] == [
        {"name": runner.name, "endpoint": runner.endpoint} for runner in runners
    ]
    for host, runner in zip(hosts[1:], runners, strict=True):
        assert runner.endpoint.startswith(f"tcp://{host.address}:")
        reply = found["replies"][runner.name]
        assert reply == {
            "echo": "hello",
            "pid": runner.pid,
            "netns": netns_inode(host),
            "node": "Node",
            "zone": ["main", "runner-1", "runner-2"],
        }
    assert len({netns_inode(host) for host in hosts}) == 3


async def test_three_namespaces_find_each_other_by_mdns_and_run_workers_across_them(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path) as state:
        hosts = state.hosts
        began = time.monotonic()
        main = await state.main({})
        await asyncio.gather(
            *(state.runner(hosts[i], f"runner-{i}", hosts[i].address, {}) for i in (1, 2))
        )
        found = await main.read_json(40)
        check_found(found, state)
        # CURVE was on with the secret from the environment alone: no node wrote a file.
        assert not list(tmp_path.glob("**/*.secret"))  # noqa: ASYNC240 - a few files
        print(
            f"mDNS across namespaces: Zone.nodes answered {found['found_s']:.2f} s after the "
            f"main started, results {time.monotonic() - began:.2f} s after the first spawn"
        )


async def test_with_multicast_blocked_and_discovery_off_one_seed_peer_finds_all_namespaces(
    tmp_path: Path,
) -> None:
    # NOTE: two locks: AUTONOMY_DISCOVERY=0 on every node, and the bridge forwards no
    # multicast at all (checked by a probe), so only the seed and gossip can find anyone.
    async with mesh(tmp_path, block_multicast=True) as state:
        hosts = state.hosts
        seed = f"{hosts[1].address}:{SEED_PORT}"
        off = {"AUTONOMY_DISCOVERY": "0"}
        began = time.monotonic()
        main = await state.main({**off, "AUTONOMY_PEERS": seed})
        await asyncio.gather(
            state.runner(hosts[1], "runner-1", seed, off),
            state.runner(hosts[2], "runner-2", hosts[2].address, {**off, "AUTONOMY_PEERS": seed}),
        )
        assert state.runners[0].endpoint == f"tcp://{seed}"
        found = await main.read_json(40)
        check_found(found, state)
        print(
            f"seed peer across namespaces: Zone.nodes answered {found['found_s']:.2f} s after "
            f"the main started, results {time.monotonic() - began:.2f} s after the first spawn"
        )


async def test_a_runner_killed_in_its_namespace_leaves_the_mains_zone_within_the_bound(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path) as state:
        hosts = state.hosts
        main = await state.main({})
        await asyncio.gather(
            *(state.runner(hosts[i], f"runner-{i}", hosts[i].address, {}) for i in (1, 2))
        )
        check_found(await main.read_json(40), state)
        await main.send("watch runner-1")
        assert (await main.read_json(10))["event"] == "watching"
        killed_at = time.monotonic()
        state.runners[0].kill()  # runner-1
        left = await main.read_json(peer_module.PEER_UNREACHABLE_S + 15)
        # NOTE: CLOCK_MONOTONIC is one clock for every namespace: the main's stamp compares.
        took = left["t"] - killed_at
        print(f"a SIGKILLed runner left the main's zone {took:.2f} s after the kill")
        assert left["event"] == "left"
        assert left["nodes"] == ["runner-2"]
        assert left["replies"]["runner-2"]["pid"] == state.runners[1].pid


async def test_a_runner_cut_off_silently_leaves_the_zone_within_the_bound_and_rejoins(
    tmp_path: Path,
) -> None:
    from autonomy._membership import SUSPECT_TIMEOUT_S
    from autonomy._sockets import SILENT_LINK_S

    async with mesh(tmp_path) as state:
        hosts = state.hosts
        main = await state.main({})
        await asyncio.gather(
            *(state.runner(hosts[i], f"runner-{i}", hosts[i].address, {}) for i in (1, 2))
        )
        check_found(await main.read_json(40), state)
        # A request in flight to runner-1 (its worker waits for a 9th member that never
        # comes), then runner-1's network goes silent: no FIN, no RST, nothing.
        await main.send("call runner-1")
        assert (await main.read_json(10))["event"] == "calling"
        await main.send("watch runner-1")
        assert (await main.read_json(10))["event"] == "watching"
        cut_at = time.monotonic()
        await hosts[1].set_link("down")
        bound = SILENT_LINK_S + SUSPECT_TIMEOUT_S
        events = [await main.read_json(bound + 15), await main.read_json(bound + 15)]
        by_kind = {event["event"]: event for event in events}
        # The caller learns of it by type, not by its 120 s timeout...
        assert by_kind["failed"]["error"] == "PeerUnavailableError"
        # ...and the zone drops the silent member.
        assert by_kind["left"]["nodes"] == ["runner-2"]
        print(
            f"a silent runner: the call failed {by_kind['failed']['t'] - cut_at:.2f} s and "
            f"it left the zone {by_kind['left']['t'] - cut_at:.2f} s after the cut"
        )
        # The network comes back: the runner answers again, and is a member again.
        await hosts[1].set_link("up")
        await main.send("join runner-1")
        joined = await main.read_json(75)
        assert joined["event"] == "joined", joined
