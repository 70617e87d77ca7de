"""Addresses: the interface mDNS runs on for a node's endpoint, and the endpoints a seed
peer's name resolves to. Lookups only: nothing is sent.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Final

from ._errors import ConfigError
from ._threads import in_thread

__all__ = ["interfaces_for", "resolve_seed"]

log = logging.getLogger("autonomy.discovery")

RESOLVE_TIMEOUT_S: Final = 5.0
"""How long a seed's name may take to resolve."""


def interfaces_for(endpoint: str) -> list[str]:
    """mDNS runs on the interface the node is bound to, so that it reaches exactly the
    machines that can dial the node: loopback by default, a LAN address when bound to one.

    Raises:
        ConfigError: the node is bound to a host name or a wildcard address.
    """
    host = endpoint.partition("://")[2].rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"discovery needs the node bound to an IP address, not {host!r}", key="bind"
        ) from None
    if address.is_unspecified:
        raise ConfigError(
            "discovery cannot advertise a wildcard address: bind the LAN address other "
            "machines reach (AUTONOMY_BIND=192.168.1.20), or turn discovery off and use "
            "AUTONOMY_PEERS",
            key="bind",
        )
    return [str(address)]


async def resolve_seed(seed: str) -> list[str]:
    """The endpoints of a seed: itself when its host is an address, else one per address
    its name resolves to now (a Kubernetes headless Service resolves to every ready pod;
    asked again each time, so that pods that come later, or back at a new address, are
    found)."""
    scheme, _, rest = seed.partition("://")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if scheme != "tcp" or not port.isdigit():
        return [seed]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [seed]
    try:
        infos = await in_thread(
            lambda: socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM),
            RESOLVE_TIMEOUT_S,
        )
    except (OSError, TimeoutError) as exc:
        log.debug("seed %s does not resolve: %s", seed, exc)
        return []
    addresses = dict.fromkeys(str(info[4][0]) for info in infos)
    return [
        f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"
        for address in addresses
    ]
