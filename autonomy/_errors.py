"""The exception hierarchy of autonomy: every error the library raises is defined here.

Errors are grouped by whose fault they are: the caller's (usage errors, raised before any
I/O), the caller's own closing of something (lifecycle), the outside world's (peers), and the
worker's (its handler raised). Each also inherits the matching builtin where one exists, so
that `except TypeError` or `except asyncio.TimeoutError` in user code keeps working.

Errors never travel as pickles: `_protocol` turns them into (code, message, fields) and back.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AgentError",
    "AutonomyError",
    "ConfigError",
    "DiscoveryError",
    "InternalError",
    "MailboxFullError",
    "MessageTooLargeError",
    "MessageTypeError",
    "ModelError",
    "ModelTimeoutError",
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


class _StructuredError(AutonomyError):
    """An error with named fields: built from them (positionally or by keyword), its message
    formatted from them by ``_template``, and pickled as them (an exception whose
    ``__init__`` takes fields does not survive pickle's default ``(cls, args)``)."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _template: ClassVar[str] = ""

    def __init__(self, *values: Any, **named: Any) -> None:
        if len(values) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes {len(self._fields)} fields")
        fields = dict(zip(self._fields, values, strict=False))
        for key, value in named.items():
            if key not in self._fields or key in fields:
                raise TypeError(f"{type(self).__name__} got an unexpected field {key!r}")
            fields[key] = value
        for key in self._fields:
            if key not in fields:
                fields[key] = self._default(key)
            setattr(self, key, fields[key])
        super().__init__(self._message(fields))

    def _default(self, key: str) -> Any:
        raise TypeError(f"{type(self).__name__} is missing its field {key!r}")

    def _message(self, fields: dict[str, Any]) -> str:
        return self._template.format_map(fields)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), {key: getattr(self, key) for key in self._fields}))


def _rebuild(cls: type[_StructuredError], fields: dict[str, Any]) -> _StructuredError:
    return cls(**fields)


# -- usage errors: the caller's fault, raised before anything is sent ---------------------


class MessageTypeError(AutonomyError, TypeError):
    """A message or reply was not a `str` (or a name was not a `str`)."""


class MessageTooLargeError(_StructuredError, ValueError):
    """A message is larger than the frame size limit of the node that would carry it."""

    size: int
    limit: int
    _fields = ("size", "limit")
    _template = "message of {size} bytes exceeds the limit of {limit} bytes"


class WorkerExistsError(_StructuredError, ValueError):
    """`start_worker` named a worker that already runs on that node."""

    worker: str
    node: str
    _fields = ("worker", "node")
    _template = "a worker named {worker!r} already runs on node {node!r}"


class WorkerNotFoundError(_StructuredError, LookupError):
    """A message was addressed to a worker that does not run on that node."""

    worker: str
    node: str
    _fields = ("worker", "node")
    _template = "no worker named {worker!r} on node {node!r}"


class MailboxFullError(_StructuredError):
    """A worker's queue is over its hard limit: a remote sender ignored backpressure."""

    worker: str
    node: str
    limit: int
    _fields = ("worker", "node", "limit")
    _template = "worker {worker!r} on node {node!r} has {limit} messages queued"


class ReplyError(AutonomyError, RuntimeError):
    """`context.reply` was called a second time, or after `handle_message` returned."""


class ConfigError(_StructuredError, ValueError):
    """A setting or an `autonomy.yaml` file is invalid: `.path` names the file, `.key` the key."""

    reason: str
    path: str | None
    key: str | None
    _fields = ("reason", "path", "key")

    def _default(self, key: str) -> Any:
        return None if key != "reason" else super()._default(key)

    def _message(self, fields: dict[str, Any]) -> str:
        where = ": ".join(part for part in (fields["path"], fields["key"]) if part)
        return f"{where}: {fields['reason']}" if where else str(fields["reason"])


# -- lifecycle: something the caller (or its node) closed ---------------------------------


class NodeClosedError(AutonomyError):
    """The node is stopping or stopped, so it neither sends nor accepts messages."""


class WorkerStoppedError(_StructuredError):
    """The worker was stopped while this request was queued for it (or in flight)."""

    worker: str
    node: str
    _fields = ("worker", "node")
    _template = "worker {worker!r} on node {node!r} was stopped"


# -- the outside broke ----------------------------------------------------------------------


class PeerUnavailableError(_StructuredError, ConnectionError):
    """The peer node died, left, refused us, or could not be reached in time."""

    peer: str
    reason: str
    _fields = ("peer", "reason")
    _template = "peer {peer} is unavailable: {reason}"


class ReplyTimeoutError(_StructuredError, TimeoutError):
    """No reply came within the timeout. It is an `asyncio.TimeoutError` too."""

    worker: str
    timeout_ms: float
    _fields = ("worker", "timeout_ms")
    _template = "no reply from worker {worker!r} within {timeout_ms:g} ms"


class SecurityError(AutonomyError):
    """A peer was refused (wrong zone secret) or a shipped worker was not allowed."""


# -- the worker's fault -------------------------------------------------------------------


class WorkerError(_StructuredError):
    """The worker's `handle_message` raised. The worker itself keeps running.

    `.remote_type` and `.remote_message` describe the original exception and
    `.remote_traceback` holds its traceback as text (it is never re-raised as an object).
    """

    worker: str
    node: str
    remote_type: str
    remote_message: str
    remote_traceback: str
    _fields = ("worker", "node", "remote_type", "remote_message", "remote_traceback")
    _template = "worker {worker!r} on node {node!r} raised {remote_type}: {remote_message}"

    def _default(self, key: str) -> Any:
        return "" if key == "remote_traceback" else super()._default(key)


class NoReplyError(_StructuredError):
    """The worker's `handle_message` returned without replying to a `send_and_receive`."""

    worker: str
    node: str
    _fields = ("worker", "node")
    _template = "worker {worker!r} on node {node!r} handled the message without replying"


class WorkerStartError(_StructuredError):
    """A worker could not be shipped: its state does not pickle (raised before sending), or
    the receiving node could not unpickle it, refused it, or found it is not a worker."""

    worker: str
    node: str
    reason: str
    _fields = ("worker", "node", "reason")
    _template = "worker {worker!r} could not start on node {node!r}: {reason}"


# -- language models and agents -------------------------------------------------------------


class ModelError(AutonomyError):
    """A model endpoint refused a request, failed, or answered something that is not a
    chat completion."""


class ModelTimeoutError(ModelError, TimeoutError):
    """A model endpoint did not answer in time. It is an `asyncio.TimeoutError` too."""


class AgentError(AutonomyError):
    """An agent's turn hit its iteration or time limit before the model answered."""


# -- the wire, discovery, and our own bugs --------------------------------------------------


class ProtocolError(AutonomyError):
    """A frame was malformed, of another protocol version, or over the size limit."""


class DiscoveryError(AutonomyError):
    """Zeroconf failed to start, advertise or browse."""


class InternalError(AutonomyError):
    """An invariant of autonomy broke: this is a bug in autonomy, please report it."""
