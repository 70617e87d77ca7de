"""The exception hierarchy of autonomy: every error the library raises is defined here.

Errors are grouped by whose fault they are: the caller's (usage errors, raised before any
I/O), the caller's own closing of something (lifecycle), the outside world's (peers), and the
worker's (its handler raised). Each also inherits the matching builtin where one exists, so
that `except TypeError` or `except asyncio.TimeoutError` in user code keeps working.

Errors never travel as pickles: `_protocol` turns them into (code, message, fields) and back.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AutonomyError",
    "ConfigError",
    "DiscoveryError",
    "InternalError",
    "MailboxFullError",
    "MessageTooLargeError",
    "MessageTypeError",
    "NoReplyError",
    "NodeClosedError",
    "PeerUnavailableError",
    "ProtocolError",
    "ReplyError",
    "ReplyTimeoutError",
    "SecurityError",
    "WorkerError",
    "WorkerExistsError",
    "WorkerNotFoundError",
    "WorkerStartError",
    "WorkerStoppedError",
]


class AutonomyError(Exception):
    """Root of every autonomy error: `except autonomy.AutonomyError` catches them all."""


# -- usage errors: the caller's fault, raised before anything is sent ---------------------


class MessageTypeError(AutonomyError, TypeError):
    """A message or reply was not a `str` (or a name was not a `str`)."""


class MessageTooLargeError(AutonomyError, ValueError):
    """A message is larger than the frame size limit of the node that would carry it."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.size, self.limit))


class WorkerExistsError(AutonomyError, ValueError):
    """`start_worker` named a worker that already runs on that node."""

    def __init__(self, worker: str, node: str) -> None:
        self.worker = worker
        self.node = node
        super().__init__(f"a worker named {worker!r} already runs on node {node!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.worker, self.node))


class WorkerNotFoundError(AutonomyError, LookupError):
    """A message was addressed to a worker that does not run on that node."""

    def __init__(self, worker: str, node: str) -> None:
        self.worker = worker
        self.node = node
        super().__init__(f"no worker named {worker!r} on node {node!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.worker, self.node))


class MailboxFullError(AutonomyError):
    """A worker's queue is over its hard limit: a remote sender ignored backpressure."""

    def __init__(self, worker: str, node: str, limit: int) -> None:
        self.worker = worker
        self.node = node
        self.limit = limit
        super().__init__(f"worker {worker!r} on node {node!r} has {limit} messages queued")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.worker, self.node, self.limit))


class ReplyError(AutonomyError, RuntimeError):
    """`context.reply` was called a second time, or after `handle_message` returned."""


class ConfigError(AutonomyError, ValueError):
    """A setting or an `autonomy.yaml` file is invalid: `.path` names the file, `.key` the key."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.reason = message
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config_error, (self.reason, self.path, self.key))


def _rebuild_config_error(message: str, path: str | None, key: str | None) -> ConfigError:
    return ConfigError(message, path=path, key=key)


# -- lifecycle: something the caller (or its node) closed ---------------------------------


class NodeClosedError(AutonomyError):
    """The node is stopping or stopped, so it neither sends nor accepts messages."""


class WorkerStoppedError(AutonomyError):
    """The worker was stopped while this request was queued for it (or in flight)."""

    def __init__(self, worker: str, node: str) -> None:
        self.worker = worker
        self.node = node
        super().__init__(f"worker {worker!r} on node {node!r} was stopped")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.worker, self.node))


# -- the outside broke ----------------------------------------------------------------------


class PeerUnavailableError(AutonomyError, ConnectionError):
    """The peer node died, left, refused us, or could not be reached in time."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"peer {peer} is unavailable: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.peer, self.reason))


class ReplyTimeoutError(AutonomyError, TimeoutError):
    """No reply came within the timeout. It is an `asyncio.TimeoutError` too."""

    def __init__(self, worker: str, timeout_ms: float) -> None:
        self.worker = worker
        self.timeout_ms = timeout_ms
        super().__init__(f"no reply from worker {worker!r} within {timeout_ms:g} ms")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.worker, self.timeout_ms))


class SecurityError(AutonomyError):
    """A peer was refused (wrong zone secret) or a shipped worker was not allowed."""


# -- the worker's fault -------------------------------------------------------------------


class WorkerError(AutonomyError):
    """The worker's `handle_message` raised. The worker itself keeps running.

    `.remote_type` and `.remote_message` describe the original exception and
    `.remote_traceback` holds its traceback as text (it is never re-raised as an object).
    """

    def __init__(
        self,
        worker: str,
        node: str,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
    ) -> None:
        self.worker = worker
        self.node = node
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        super().__init__(
            f"worker {worker!r} on node {node!r} raised {remote_type}: {remote_message}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.worker, self.node, self.remote_type, self.remote_message, self.remote_traceback),
        )


class NoReplyError(AutonomyError):
    """The worker's `handle_message` returned without replying to a `send_and_receive`."""

    def __init__(self, worker: str, node: str) -> None:
        self.worker = worker
        self.node = node
        super().__init__(f"worker {worker!r} on node {node!r} handled the message without replying")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.worker, self.node))


class WorkerStartError(AutonomyError):
    """A shipped worker could not be unpickled or is not a worker on the receiving node."""

    def __init__(self, worker: str, node: str, reason: str) -> None:
        self.worker = worker
        self.node = node
        self.reason = reason
        super().__init__(f"worker {worker!r} could not start on node {node!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.worker, self.node, self.reason))


# -- the wire, discovery, and our own bugs --------------------------------------------------


class ProtocolError(AutonomyError):
    """A frame was malformed, of another protocol version, or over the size limit."""


class DiscoveryError(AutonomyError):
    """Zeroconf failed to start, advertise or browse."""


class InternalError(AutonomyError):
    """An invariant of autonomy broke: this is a bug in autonomy, please report it."""
