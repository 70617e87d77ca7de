"""Shipping workers to other nodes: the one place that decides what crosses the wire as code.

A worker object is serialised by value with cloudpickle, so a class defined in the caller's
``__main__`` (which the runner cannot import) arrives with it; modules it imports travel by
name and must be installed on the runner. Nodes inside a worker's state travel **by
reference** ``(zone, name, endpoint)`` and are rebuilt on arrival: as the receiving node
itself when the name is its own, else as a `RemoteNode` reached from there.

Unpickling runs code: only frames from authenticated members of the zone may get here, and
a node may refuse shipped code altogether (``allow_shipping=False``) and accept only workers
whose class it can import from an allow-list.
"""

from __future__ import annotations

import contextvars
import importlib
import pickle
from typing import TYPE_CHECKING, Any

import cloudpickle

from ._errors import AutonomyError, SecurityError

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["dumps_worker", "loads_worker", "node_reference"]

_receiver: contextvars.ContextVar[Node | None] = contextvars.ContextVar(
    "autonomy_receiving_node", default=None
)


def dumps_worker(worker: object) -> bytes:
    """Serialise a worker object for ``RemoteNode.start_worker``.

    Raises:
        WorkerStartError-compatible ``AutonomyError``: the object cannot be pickled (a lock,
            a socket, an open file in its state...).
    """
    try:
        return cloudpickle.dumps(worker, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]
    except Exception as exc:
        raise AutonomyError(
            f"cannot ship worker {type(worker).__name__}: its state does not pickle ({exc})"
        ) from exc


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickles only classes and functions named in the allow-list (no code by value)."""

    def __init__(self, data: bytes, allowed: frozenset[str]) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified == f"{__name__}.node_reference" or qualified in self._allowed:
            return getattr(importlib.import_module(module), name)
        raise SecurityError(f"{qualified} is not in this node's allow-list of worker classes")


def loads_worker(data: bytes, node: Node, allowed: frozenset[str] | None) -> object:
    """Rebuild a shipped worker on ``node``.

    ``allowed`` is None to accept any code (cloudpickle by value), or the set of
    ``module.qualname`` names that may be loaded (then no code travels by value).
    """
    token = _receiver.set(node)
    try:
        if allowed is None:
            return pickle.loads(data)
        return _AllowListUnpickler(data, allowed).load()
    finally:
        _receiver.reset(token)


def node_reference(zone: str, name: str, endpoint: str) -> Any:
    """Rebuild a node that was pickled by reference (called by pickle only)."""
    node = _receiver.get()
    if node is None:
        raise SecurityError(
            "a pickled autonomy node can only be rebuilt by a node receiving a worker"
        )
    if zone != node.zone:
        raise SecurityError(f"the worker refers to node {name!r} of another zone ({zone!r})")
    if name == node.name:
        return node
    return node._remote_for(endpoint, name)
