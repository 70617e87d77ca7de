"""Several "machines" on one host for tests: Linux network namespaces on a private bridge.

`NetnsLab(count)` builds, as root, one bridge and `count` namespaces, each joined to the
bridge by a veth pair and given an address in a private 10.213.<random>.0/24 subnet. The
subnet lives only inside the namespaces: the bridge itself has no address and no route, so
nothing sent in a lab can leave the machine. Multicast passes between the namespaces (the
bridge's multicast snooping is off, each namespace routes 224.0.0.0/4 to its interface), so
mDNS works between them as on a LAN.

Every name carries a random tag (``at-<6 hex>``), so concurrent runs never collide, and
everything is deleted on exit, also when the body raises or setup fails half-way::

    with NetnsLab(3) as hosts:
        async with Child("python", "-c", "...", prefix=hosts[0].command()) as child:
            ...

    async with NetnsLab(3) as hosts:   # the same, with setup and teardown off the loop
        ...

A namespace can have a hosts file of its own (`Host.write_hosts`): ``ip netns exec`` mounts
``/etc/netns/<name>/hosts`` over ``/etc/hosts`` for what it runs, so a name resolves there to
the addresses the test chose (a headless Service's DNS name, say). The lab removes these
files with the namespaces.

Use `netns_available()` in a skip marker: it is False unless this process is root and can
really create a namespace and a bridge.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar, cast

from .processes import Child

__all__ = ["Host", "NetnsLab", "multicast_passes", "netns_available"]

log = logging.getLogger("tests.netns")

SUBNET_PREFIX = "10.213"
"""First two octets of every lab subnet; the third is random per lab."""

_COMMAND_TIMEOUT_S = 10.0

NETNS_ETC = Path("/etc/netns")
"""Where ``ip netns exec`` finds the files it mounts over ``/etc`` for a namespace."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace of a lab: a "machine" with one interface on the lab's bridge."""

    name: str
    """The network namespace's name (as in ``ip netns list``)."""
    address: str
    """The IPv4 address of the namespace's interface, e.g. ``10.213.7.11``."""
    interface: str = "eth0"
    """The namespace's interface on the bridge."""

    def command(self, *argv: str) -> list[str]:
        """The command line that runs `argv` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def write_hosts(self, names: Mapping[str, Sequence[str]]) -> None:
        """Give this namespace a hosts file: ``names`` maps each name to its addresses (a name
        with several is answered with all of them, as DNS answers for a headless Service).

        Write it before starting the processes that read it: ``ip netns exec`` mounts it when
        it starts a command. Rewriting it later keeps the file (written in place), so those
        processes see the new addresses at their next lookup."""
        lines = ["127.0.0.1 localhost"]
        lines += [f"{address} {name}" for name, addresses in names.items() for address in addresses]
        folder = NETNS_ETC / self.name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "hosts", "w", encoding="utf-8") as hosts:  # in place: same inode
            hosts.write("\n".join(lines) + "\n")

    async def set_link(self, state: str) -> None:
        """Take this host's interface ``"down"`` (a silent partition: its packets vanish,
        nobody is told) or ``"up"`` again."""
        command = self.command("ip", "link", "set", self.interface, state)
        await _off_loop(
            functools.partial(
                subprocess.run, command, check=True, capture_output=True, timeout=_COMMAND_TIMEOUT_S
            ),
            f"{self.name}-link-{state}",
        )


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *argv],
        check=check,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT_S,
    )


class NetnsLab:
    """A bridge and `count` network namespaces attached to it; deleted on exit.

    Must run as root. Enter it with ``with`` or ``async with``; both yield the hosts.
    """

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.count = count
        self.tag = f"at-{secrets.token_hex(3)}"
        self.bridge = self.tag
        self.subnet = f"{SUBNET_PREFIX}.{secrets.randbelow(256)}"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._links: list[str] = []

    def __repr__(self) -> str:
        return f"<NetnsLab {self.tag} {self.subnet}.0/24 hosts={len(self.hosts)}>"

    def __enter__(self) -> list[Host]:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return list(self.hosts)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> list[Host]:
        try:
            return await _off_loop(self.__enter__, f"{self.tag}-setup")
        except BaseException:
            # Cancelled while the thread was building the lab: it has finished, undo it.
            self.close()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await _off_loop(self.close, f"{self.tag}-teardown")

    def _create(self) -> None:
        # The bridge gets no address: the lab's subnet must not be reachable from the host.
        _ip("link", "add", "name", self.bridge, "type", "bridge", "mcast_snooping", "0")
        self._links.append(self.bridge)
        # Without IPv6 the host has no link-local address on the bridge and stays silent on it.
        _disable_ipv6(f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6")
        _ip("link", "set", self.bridge, "type", "bridge", "mcast_snooping", "0")
        _ip("link", "set", self.bridge, "up")
        for index in range(self.count):
            namespace = f"{self.tag}-{index}"
            outside = f"{self.tag}-v{index}"
            inside = f"{self.tag}-p{index}"
            address = f"{self.subnet}.{10 + index}"
            _ip("netns", "add", namespace)
            self._namespaces.append(namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self._links.append(outside)
            _disable_ipv6(f"/proc/sys/net/ipv6/conf/{outside}/disable_ipv6")
            _ip("link", "set", inside, "netns", namespace)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            host = Host(name=namespace, address=address)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "link", "set", inside, "name", host.interface)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", host.interface)
            _ip("-n", namespace, "link", "set", host.interface, "up")
            _ip("-n", namespace, "route", "add", "224.0.0.0/4", "dev", host.interface)
            self.hosts.append(host)
        log.debug("created %r", self)

    def block_multicast(self) -> None:
        """Make the bridge stop forwarding multicast between the namespaces (mDNS then no
        longer passes), as on a network without multicast; unicast and broadcast (ARP) still
        pass. Uses the bridge ports' ``mcast_flood`` flag: with snooping off, the bridge
        floods every multicast frame, and a port with the flag off receives none."""
        for index in range(len(self.hosts)):
            subprocess.run(
                ["bridge", "link", "set", "dev", f"{self.tag}-v{index}", "mcast_flood", "off"],
                check=True,
                capture_output=True,
                text=True,
                timeout=_COMMAND_TIMEOUT_S,
            )

    def close(self) -> None:
        """Kill what still runs in the namespaces and delete namespaces, veths and bridge.

        Idempotent and best effort: every step runs even if an earlier one failed.
        """
        for namespace in self._namespaces:
            _kill_processes_in(namespace)
            result = _ip("netns", "del", namespace, check=False)
            if result.returncode != 0:
                log.warning("could not delete namespace %s: %s", namespace, result.stderr)
            shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)
        self._namespaces.clear()
        # Deleting a namespace deletes the veth ends inside it, and with them their peers;
        # the explicit deletes cover a half-built lab and complain only about real leftovers.
        for link in reversed(self._links):
            if _ip("link", "show", link, check=False).returncode == 0:
                result = _ip("link", "del", link, check=False)
                if result.returncode != 0:
                    log.warning("could not delete link %s: %s", link, result.stderr)
        self._links.clear()
        self.hosts.clear()


async def _off_loop(function: Callable[[], T], name: str) -> T:
    """Run `function` in a thread of its own and await it, keeping the event loop free.

    Unlike `asyncio.to_thread`, which leaves the loop's executor thread alive until the loop
    closes, the thread is joined before this returns: leak checks see no extra thread.
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if outcome.done():
            return
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(cast(T, result))

    def run() -> None:
        try:
            result = function()
        except BaseException as error:
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        return await asyncio.shield(outcome)
    finally:
        # Returns at once when the thread has settled; after a cancellation it waits for
        # the `ip` commands in flight, each bounded by _COMMAND_TIMEOUT_S.
        thread.join()


def _disable_ipv6(path: str) -> None:
    try:
        with open(path, "w") as knob:
            knob.write("1")
    except OSError:
        pass


def _kill_processes_in(namespace: str) -> None:
    result = _ip("netns", "pids", namespace, check=False)
    for pid_text in result.stdout.split():
        try:
            os.kill(int(pid_text), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


_PROBE_RECEIVER = """
import socket, sys
address, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton("224.0.0.251") + socket.inet_aton(address))
print("ready", flush=True)
seen = False
while True:
    data = s.recv(100)
    if data == b"probe":
        seen = True
    elif data == b"fence":
        print("passes" if seen else "blocked", flush=True)
        break
"""

_PROBE_SENDER = """
import socket, sys
address, receiver, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
for _ in range(3):
    s.sendto(b"probe", ("224.0.0.251", port))
s.sendto(b"fence", (receiver, port))
"""


async def multicast_passes(sender: Host, receiver: Host, timeout_s: float = 10.0) -> bool:
    """Whether a multicast datagram (to mDNS's group, 224.0.0.251) from `sender` reaches
    `receiver`. The sender sends three multicast probes, then one unicast "fence" along the
    same path; the receiver answers when the fence arrives: the probes, sent first, would
    have arrived before it. No waiting for an absence."""
    port = str(20000 + secrets.randbelow(20000))
    receive = [sys.executable, "-c", _PROBE_RECEIVER, receiver.address, port]
    send = [sys.executable, "-c", _PROBE_SENDER, sender.address, receiver.address, port]
    async with (
        Child(*receive, name="multicast probe receiver", prefix=receiver.command()) as listener,
        asyncio.timeout(timeout_s),
    ):
        if (await listener.read_line(timeout_s)).strip() != "ready":
            raise RuntimeError("multicast probe receiver did not start")
        sending = Child(*send, name="multicast probe sender", prefix=sender.command(), stdin=False)
        async with sending as talker:
            if await talker.wait(timeout_s) != 0:
                raise RuntimeError("multicast probe sender failed")
        verdict = (await listener.read_line(timeout_s)).strip()
    if verdict not in ("passes", "blocked"):
        raise RuntimeError(f"multicast probe receiver said {verdict!r}")
    return verdict == "passes"


@functools.cache
def netns_available() -> bool:
    """True if this process is root and can create a namespace and a bridge."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    try:
        with NetnsLab(1):
            pass
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("network namespaces unavailable: %r", exc)
        return False
    return True
