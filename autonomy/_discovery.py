"""Finding nodes: zeroconf advertising and browsing, and the zone's membership table.

`Membership` is the table of who is in this node's zone; `Discovery` advertises this node
over mDNS and feeds what it browses into a `Membership`. This is the only module that imports
zeroconf. It knows nothing of workers or ZeroMQ: a member's endpoint is an opaque string here.

mDNS finds nodes; it never says whether they are alive. A node killed without a goodbye stays
in other nodes' zeroconf caches for many minutes, so the membership's failure detector decides
when a peer is gone and call `Membership.remove(name, reason, instance=...)`.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from zeroconf import Error as ZeroconfError
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ._errors import DiscoveryError, InternalError
from ._protocol import VERSION as PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "Discovery",
    "Member",
    "Membership",
]

log = logging.getLogger("autonomy.discovery")

SERVICE_TYPE: Final = "_autonomy._tcp.local."
"""The DNS-SD service type every autonomy node advertises, whatever its zone."""

PROBE_NAMES = True
"""Probe the LAN for a clash before announcing (RFC 6762 §8.1); costs about 1.2 s at start.

Our service and host names carry the node's random instance id, so a clash is practically
impossible; the `quick_timing` test fixture turns probing off (zeroconf's public
`cooperating_responders` switch)."""

START_TIMEOUT_S = 10.0
"""Upper bound of `Discovery.start()` (opening sockets, probing, first announcement)."""

STOP_TIMEOUT_S = 3.0
"""Upper bound of the graceful part of `Discovery.stop()` (goodbye packets, closing)."""

RESOLVE_TIMEOUT_MS = 3000
"""How long to ask for a browsed service's records before giving up on it."""

_INSTANCE_RE: Final = re.compile(r"[0-9a-f]{8,32}")
_UNSAFE_LABEL_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]+")
_TXT_ENTRY_MAX_BYTES: Final = 255
_LABEL_NAME_MAX: Final = 40
_LABEL_INSTANCE_CHARS: Final = 16


@dataclass(frozen=True, slots=True)
class Member:
    """One node of a zone, as discovery or a seed peer described it."""

    name: str
    """The node's name, unique in its zone."""
    zone: str
    """The zone the node belongs to."""
    endpoint: str
    """Where the node's transport listens, e.g. ``tcp://127.0.0.1:53211``."""
    version: int
    """The wire protocol version the node speaks."""
    instance: str
    """Random hex id of the node's process; a restarted node has a new one."""


class Membership:
    """The zone's membership table: who is in, with join/leave callbacks and waiters.

    Holds at most one member per node name; the node itself is never a member of its own
    table. Runs on one event loop and is not thread-safe.
    """

    def __init__(
        self,
        zone: str,
        self_name: str,
        admit: Callable[[Member], bool] | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        """``admit(member)``, if given, may refuse a new or changed record (it stays out);
        a ``quiet`` table logs its changes at DEBUG (a table of candidates, not members)."""
        self._level = logging.DEBUG if quiet else logging.INFO
        self._zone = zone
        self._self_name = self_name
        self._admit = admit
        self._members: dict[str, Member] = {}
        self._subscribers: list[tuple[Callable[[Member], None], Callable[[Member, str], None]]] = []
        self._waiters: set[asyncio.Future[None]] = set()
        self._last_change = time.monotonic()
        self.version = 0
        """Bumped by every join and leave: whoever caches a lookup knows when to redo it."""

    @property
    def zone(self) -> str:
        """The zone this table is for."""
        return self._zone

    def __repr__(self) -> str:
        return (
            f"<Membership zone={self._zone!r} self={self._self_name!r} "
            f"members={len(self._members)}>"
        )

    def add(self, member: Member, source: str) -> bool:
        """Record `member` as in the zone, replacing an older record of the same name.

        A member of another zone, or one named like this node, is ignored. A record of the
        same name with another instance or endpoint replaces the old one: subscribers see
        the old one leave, then the new one join.

        Args:
            member: the node to record.
            source: where it was learnt (``"mdns"``, ``"seed"``, ...), for the log.

        Returns:
            True if the member is new or changed, False if ignored or already known.
        """
        if member.zone != self._zone:
            log.debug("ignoring node %s of zone %s (via %s)", member.name, member.zone, source)
            return False
        if member.name == self._self_name:
            return False
        old = self._members.get(member.name)
        if old == member:
            return False
        if self._admit is not None and not self._admit(member):
            return False
        if old is not None:
            reason = (
                f"restarted as instance {member.instance}"
                if old.instance != member.instance
                else f"moved to {member.endpoint}"
            )
            self._drop(old, reason)
        self._members[member.name] = member
        log.log(
            self._level,
            "node %s joined zone %s at %s (via %s)",
            member.name,
            member.zone,
            member.endpoint,
            source,
        )
        self._changed()
        for on_join, _ in list(self._subscribers):
            try:
                on_join(member)
            except Exception:
                log.exception("membership join callback %r failed", on_join)
        return True

    def remove(self, name: str, reason: str, instance: str | None = None) -> Member | None:
        """Drop the node called `name` from the table.

        Args:
            name: the node's name.
            reason: why it left, for the log and the leave callbacks.
            instance: if given, drop the node only while the table holds this instance, so
                that news about a dead process cannot remove its restarted successor.

        Returns:
            The member removed, or None if there was none (or another instance).
        """
        member = self._members.get(name)
        if member is None or (instance is not None and member.instance != instance):
            return None
        self._drop(member, reason)
        return member

    def get(self, name: str) -> Member | None:
        """The member called `name`, or None."""
        return self._members.get(name)

    def members(self) -> list[Member]:
        """All members, sorted by name."""
        return sorted(self._members.values(), key=lambda member: member.name)

    def subscribe(
        self,
        on_join: Callable[[Member], None],
        on_leave: Callable[[Member, str], None],
    ) -> None:
        """Call `on_join(member)` and `on_leave(member, reason)` on every later change.

        Callbacks run synchronously inside `add`/`remove`; an exception in one is logged
        and does not stop the others.
        """
        self._subscribers.append((on_join, on_leave))

    async def wait_for(
        self,
        predicate: Callable[[list[Member]], bool],
        timeout_s: float,
        *,
        while_joining_s: float = 0.0,
    ) -> bool:
        """Wait until `predicate(members())` holds, re-checking it after every change.

        Args:
            predicate: what to wait for.
            timeout_s: how long to wait; with ``while_joining_s``, how long to wait after
                the last join (nodes still arriving: a big zone on a slow machine)...
            while_joining_s: ...but never longer than this in all.

        Returns:
            The predicate's value when it first held, or at the deadline.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + timeout_s
        count = len(self._members)
        while not predicate(self.members()):
            if while_joining_s and len(self._members) > count:
                count = len(self._members)
                deadline = min(loop.time() + timeout_s, began + while_joining_s)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return predicate(self.members())
            await self._next_change(remaining)
        return True

    async def wait_settled(self, quiet_s: float, max_s: float) -> None:
        """Return once no member joined or left for `quiet_s`, or after `max_s` at most.

        The quiet period counts from the last change, or from when the table was created.
        """
        deadline = time.monotonic() + max_s
        while True:
            now = time.monotonic()
            wake_at = min(self._last_change + quiet_s, deadline)
            if wake_at <= now:
                return
            await self._next_change(wake_at - now)

    async def _next_change(self, timeout_s: float) -> None:
        """Wait for the next join or leave, for at most `timeout_s`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait((waiter,), timeout=timeout_s)
        finally:
            self._waiters.discard(waiter)
            waiter.cancel()

    def _drop(self, member: Member, reason: str) -> None:
        del self._members[member.name]
        log.log(self._level, "node %s left zone %s: %s", member.name, member.zone, reason)
        self._changed()
        for _, on_leave in list(self._subscribers):
            try:
                on_leave(member, reason)
            except Exception:
                log.exception("membership leave callback %r failed", on_leave)

    def _changed(self) -> None:
        self.version += 1
        self._last_change = time.monotonic()
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class _State(enum.Enum):
    NEW = "NEW"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


class Discovery:
    """Advertises this node over mDNS and feeds a Membership from what it browses.

    Browsing starts before this node's own service is registered: announcements sent before
    the others listen are lost, and a node that registered first missed its peers for 15 s
    (DESIGN.md, facts).
    """

    def __init__(
        self,
        membership: Membership,
        *,
        name: str,
        zone: str,
        endpoint: str,
        instance: str,
        interfaces: list[str],
        on_same_name: Callable[[Member], None] | None = None,
        advertise: bool = True,
    ) -> None:
        """Check the arguments; nothing touches the network before `start()`.

        Args:
            membership: the table to feed; its zone must be `zone`.
            name: this node's name, unique in its zone.
            zone: the zone to advertise and browse.
            endpoint: the address other nodes dial, e.g. ``tcp://10.0.0.5:5555``.
            instance: random lowercase hex id (8 to 32 digits) of this node's process.
            interfaces: IP addresses of the interfaces mDNS may use, e.g. ``["127.0.0.1"]``.
            on_same_name: told of another node that advertises this node's name.
            advertise: register this node's service (else only browse: an observer).

        Raises:
            ValueError: an argument is malformed or would not fit in a TXT record.
        """
        if membership.zone != zone:
            raise ValueError(f"membership is for zone {membership.zone!r}, not {zone!r}")
        if not _INSTANCE_RE.fullmatch(instance):
            raise ValueError(f"instance must be 8 to 32 lowercase hex digits, got {instance!r}")
        if not interfaces:
            raise ValueError("interfaces must name at least one interface address")
        for interface in interfaces:
            try:
                ipaddress.ip_address(interface)
            except ValueError:
                raise ValueError(f"interfaces must be IP addresses, got {interface!r}") from None
        self._properties = {
            "name": name,
            "zone": zone,
            "endpoint": endpoint,
            "version": str(PROTOCOL_VERSION),
            "instance": instance,
        }
        for key, value in self._properties.items():
            if not value:
                raise ValueError(f"{key} must be a non-empty string")
            if len(f"{key}={value}".encode()) > _TXT_ENTRY_MAX_BYTES:
                raise ValueError(f"{key} is too long for a TXT record: {value!r}")
        self._membership = membership
        self._on_same_name = on_same_name
        self._advertise = advertise
        self._name = name
        self._zone = zone
        self._endpoint = endpoint
        self._instance = instance
        self._interfaces = list(interfaces)
        self._addresses, self._port = _advertised_address(endpoint, self._interfaces)
        label = _UNSAFE_LABEL_CHARS.sub("-", name)[:_LABEL_NAME_MAX]
        # The instance's random tail: a DNS label has room for 63 bytes.
        self._service_name = f"{label}-{instance[-_LABEL_INSTANCE_CHARS:]}.{SERVICE_TYPE}"
        self._state = _State.NEW
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._announcing: Awaitable[object] | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._from_service: dict[str, Member] = {}
        self._stopped = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<Discovery {self._name!r} zone={self._zone!r} {self._state.value} "
            f"{self._endpoint} members={len(self._membership.members())}>"
        )

    async def start(self) -> None:
        """Browse for the zone's nodes, then advertise this one.

        Returns once this node's service is registered (its announcements continue in the
        background).

        Raises:
            DiscoveryError: zeroconf could not open its sockets, probe or register in time.
        """
        if self._state is not _State.NEW:
            raise InternalError(f"Discovery.start() called on {self!r}")
        self._state = _State.RUNNING
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await self._start()
        except (OSError, TimeoutError, ZeroconfError) as exc:
            stopped_meanwhile = self._state is not _State.RUNNING
            await self.stop()
            if stopped_meanwhile:
                raise self._stopped_while_starting() from exc
            raise DiscoveryError(
                f"mDNS discovery failed to start on {self._interfaces}: {exc!r}"
            ) from exc
        except BaseException:
            await self.stop()
            raise
        if self._state is not _State.RUNNING:
            # stop() closed zeroconf while it was probing; zeroconf may finish the
            # registration anyway and start announcing into closed sockets.
            await _cancel_and_wait(self._announcing)
            self._announcing = None
            await self.stop()
            raise self._stopped_while_starting()
        log.debug("advertising %s as %s", self._name, self._service_name)

    def _stopped_while_starting(self) -> DiscoveryError:
        return DiscoveryError(f"discovery for node {self._name} was stopped while starting")

    async def _start(self) -> None:
        _check_interfaces(self._interfaces)
        self._aiozc = AsyncZeroconf(interfaces=self._interfaces)
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_service_state_change]
        )
        if not self._advertise:
            return
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            self._service_name,
            port=self._port,
            properties=self._properties,
            server=f"autonomy-{self._instance}.local.",
            addresses=self._addresses,
        )
        self._announcing = await self._aiozc.async_register_service(
            info, cooperating_responders=not PROBE_NAMES
        )

    async def stop(self) -> None:
        """Say goodbye on mDNS and close zeroconf. Idempotent; bounded by `STOP_TIMEOUT_S`.

        The membership table keeps its members; it is no longer updated.
        """
        if self._state is _State.STOPPED:
            return
        if self._state is _State.STOPPING:
            await self._stopped.wait()
            return
        self._state = _State.STOPPING
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            await _cancel_and_wait(self._announcing, *self._resolving.values())
            if self._aiozc is not None:
                await self._close_zeroconf(self._aiozc)
        finally:
            self._resolving.clear()
            self._from_service.clear()
            self._browser = None
            self._aiozc = None
            self._announcing = None
            self._state = _State.STOPPED
            self._stopped.set()

    async def _close_zeroconf(self, aiozc: AsyncZeroconf) -> None:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                # Unregisters every service (goodbye packets), then closes the sockets.
                await aiozc.async_close()
        except (OSError, TimeoutError, ZeroconfError) as exc:
            log.warning("discovery for node %s did not stop cleanly: %r", self._name, exc)
            aiozc.zeroconf.close()

    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Browser callback, on the event loop: start a resolve or drop a member; never block."""
        if self._state is not _State.RUNNING or name == self._service_name:
            return
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            member = self._from_service.pop(name, None)
            if member is not None:
                self._membership.remove(member.name, "unregistered from mDNS", member.instance)
            return
        if name in self._resolving:
            # The pending resolve reads the records as they arrive, this update included.
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name))
        self._resolving[name] = task
        task.add_done_callback(lambda done: self._forget_resolve(name, done))

    def _forget_resolve(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]

    async def _resolve(self, zeroconf: Zeroconf, service_name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, service_name)
        try:
            resolved = await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS)
            properties = info.decoded_properties if resolved else {}
        except (OSError, ZeroconfError, ValueError) as exc:
            # A peer's bad record, or zeroconf closing under us: never fatal to browsing.
            log.debug("could not resolve %s: %r", service_name, exc)
            return
        if not resolved:
            log.debug("could not resolve %s in %d ms", service_name, RESOLVE_TIMEOUT_MS)
            return
        member = _member_from_properties(properties)
        if member is None:
            log.debug("ignoring %s: malformed TXT record %r", service_name, info.properties)
            return
        if member.zone != self._zone:
            log.debug("ignoring node %s of zone %s", member.name, member.zone)
            return
        if member.version != PROTOCOL_VERSION:
            log.warning(
                "ignoring node %s of zone %s: it speaks protocol version %d, we speak %d",
                member.name,
                member.zone,
                member.version,
                PROTOCOL_VERSION,
            )
            return
        if member.name == self._name:
            if member.instance != self._instance and self._on_same_name is not None:
                self._on_same_name(member)
            return
        self._from_service[service_name] = member
        self._membership.add(member, "mdns")


async def _cancel_and_wait(*awaitables: Awaitable[object] | None) -> None:
    """Cancel the pending futures and tasks among `awaitables` and wait until they end."""
    pending = [a for a in awaitables if isinstance(a, asyncio.Future) and not a.done()]
    for future in pending:
        future.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


def _check_interfaces(interfaces: list[str]) -> None:
    """Raise OSError unless this machine has every address in `interfaces`.

    Binding a throwaway socket sends nothing. It runs before zeroconf sees the list, because
    zeroconf 0.154 leaks its already-bound listening socket when it fails on an interface.
    """
    for interface in interfaces:
        family = socket.AF_INET6 if ipaddress.ip_address(interface).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((interface, 0))


def _member_from_properties(properties: dict[str, str | None]) -> Member | None:
    """The member a TXT record describes, or None if a field is missing or malformed."""
    name = properties.get("name")
    zone = properties.get("zone")
    endpoint = properties.get("endpoint")
    version = properties.get("version")
    instance = properties.get("instance")
    if not (name and zone and endpoint and version and instance):
        return None
    if not (version.isascii() and version.isdigit()):
        return None
    return Member(name=name, zone=zone, endpoint=endpoint, version=int(version), instance=instance)


def _advertised_address(endpoint: str, interfaces: list[str]) -> tuple[list[str], int]:
    """The addresses and port (0 if none) for the SRV and A/AAAA records of `endpoint`.

    A ``tcp://<ip>:<port>`` endpoint gives its own IP and port. Any other endpoint (a host
    name, a wildcard address, ``ipc://``) is advertised at the interface addresses: peers
    dial the endpoint string from the TXT record, never the SRV and address records.
    """
    scheme, _, rest = endpoint.partition("://")
    port = 0
    address = None
    if scheme == "tcp":
        host, _, port_text = rest.rpartition(":")
        if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ValueError(f"endpoint has no valid port: {endpoint!r}")
        port = int(port_text)
        try:
            address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            address = None
    if address is not None and not address.is_unspecified:
        return [str(address)], port
    return [str(ipaddress.ip_address(interface)) for interface in interfaces], port
