"""How a `RemoteNode` finds its link on each call: by the name of a member of the zone
(`MemberLink`: ``Zone.nodes`` and ``peers()``), or by an endpoint (`EndpointLink`:
``connect``). Either opens a new link when the one it had was closed for idleness."""

from __future__ import annotations

from ._membership import ZoneAgent
from ._peer import Link, Links, LinkState

__all__ = ["EndpointLink", "MemberLink"]


class MemberLink:
    """A node of the zone by name, resolved to a link on each call: while no node of that
    name is a member, calls fail at once; when one is again (a restart, at a new address),
    the same handle reaches it. The lookup is cached until the membership changes (or the
    link is closed for idleness)."""

    __slots__ = ("_agent", "_link", "_version", "name")

    def __init__(self, agent: ZoneAgent, name: str) -> None:
        self._agent = agent
        self.name = name
        self._link: Link | None = None
        self._version = -1

    def __call__(self) -> Link:
        version = self._agent.members.version
        link = self._link
        if link is None or version != self._version or link.state is LinkState.CLOSED:
            link = self._link = self._agent.link_to(self.name)
            self._version = version
        return link


class EndpointLink:
    """A node reached by its endpoint: the same link on each call, or a new one when the
    link was closed for idleness (a link closed because the peer went stays closed: its
    calls fail at once)."""

    __slots__ = ("_link", "_links")

    def __init__(self, links: Links, link: Link) -> None:
        self._links = links
        self._link = link

    def __call__(self) -> Link:
        link = self._link
        if link.retired:
            link = self._link = self._links.get(link.endpoint, link.name)
        return link
