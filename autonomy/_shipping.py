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
import io
import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle

from ._errors import SecurityError, WorkerStartError

__all__ = ["Resolver", "dumps_worker", "loads_worker", "node_reference"]

Resolver = Callable[[str, str, str], Any]
"""``resolve(zone, name, endpoint)``: the receiving node's object for a node pickled by
reference (itself, or a remote node reached from it)."""

_receiver: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar(
    "autonomy_receiving_node", default=None
)


def dumps_worker(worker: object, name: str, node: str) -> bytes:
    """Serialise a worker object for ``RemoteNode.start_worker`` (as ``name`` on ``node``).

    Raises:
        WorkerStartError: the object cannot be pickled (a lock, a socket, an open file in
            its state...); nothing was sent.
    """
    try:
        return cloudpickle.dumps(worker, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]
    except Exception as exc:
        raise WorkerStartError(
            name,
            node,
            f"cannot ship worker {type(worker).__name__}: its state does not pickle ({exc})",
        ) from exc


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickles only classes and functions named in the allow-list (no code by value)."""

    def __init__(self, data: bytes, allowed: frozenset[str]) -> None:
        super().__init__(io.BytesIO(data))
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified == f"{__name__}.node_reference" or qualified in self._allowed:
            return getattr(importlib.import_module(module), name)
        raise SecurityError(f"{qualified} is not in this node's allow-list of worker classes")


def loads_worker(data: bytes, resolve: Resolver, allowed: frozenset[str] | None) -> object:
    """Rebuild a shipped worker on the node whose ``resolve`` rebuilds nodes by reference.

    ``allowed`` is None to accept any code (cloudpickle by value), or the set of
    ``module.qualname`` names that may be loaded (then no code travels by value).
    """
    token = _receiver.set(resolve)
    try:
        if allowed is None:
            return pickle.loads(data)
        return _AllowListUnpickler(data, allowed).load()
    finally:
        _receiver.reset(token)


def node_reference(zone: str, name: str, endpoint: str) -> Any:
    """Rebuild a node that was pickled by reference (called by pickle only)."""
    resolve = _receiver.get()
    if resolve is None:
        raise SecurityError(
            "a pickled autonomy node can only be rebuilt by a node receiving a worker"
        )
    return resolve(zone, name, endpoint)
