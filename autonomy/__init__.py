"""autonomy: a brokerless actor mesh for Python over ZeroMQ.

General layout. Each private module owns one thing (its docstring's first line says what);
a module imports only from the rows above its own, at any depth (inside functions and under
TYPE_CHECKING too), so no import circle can form. ``tests/test_imports.py`` reads this table
and holds the code to it.

    1  _errors  _threads  _build
    2  _config  _protocol  _deadlines  _shipping  _tools  _gossip  _addresses
    3  _secret  _outbox  _discovery  _worker  _sockets
    4  _transport
    5  _mailbox  _peer  _base
    6  _inbound  _neighbours  _remote  _model
    7  _membership  _agent
    8  _metrics  _handles
    9  _node
   10  _zone
   11  __init__

``_transport`` and ``_sockets`` are the only modules that import zmq, ``_discovery`` the only
one that imports zeroconf. ``cli/`` sits on top and uses the public names below, and
``_config`` for the names of the settings it passes to the nodes it starts. ``_agent``
(with ``_model`` and ``_tools``) builds on the public node API only.

Only the names below are public; everything under an underscore may change.
"""

from __future__ import annotations

import logging
from importlib import metadata as _metadata

from ._agent import Agent as Agent
from ._base import DEFAULT_TIMEOUT_MS as DEFAULT_TIMEOUT_MS
from ._build import build_info as _build_info
from ._errors import AgentError as AgentError
from ._errors import AutonomyError as AutonomyError
from ._errors import ConfigError as ConfigError
from ._errors import DiscoveryError as DiscoveryError
from ._errors import InternalError as InternalError
from ._errors import MailboxFullError as MailboxFullError
from ._errors import MessageTooLargeError as MessageTooLargeError
from ._errors import MessageTypeError as MessageTypeError
from ._errors import ModelError as ModelError
from ._errors import ModelTimeoutError as ModelTimeoutError
from ._errors import NodeClosedError as NodeClosedError
from ._errors import NoReplyError as NoReplyError
from ._errors import PeerUnavailableError as PeerUnavailableError
from ._errors import ProtocolError as ProtocolError
from ._errors import ReplyError as ReplyError
from ._errors import ReplyTimeoutError as ReplyTimeoutError
from ._errors import SecurityError as SecurityError
from ._errors import WorkerError as WorkerError
from ._errors import WorkerExistsError as WorkerExistsError
from ._errors import WorkerNotFoundError as WorkerNotFoundError
from ._errors import WorkerStartError as WorkerStartError
from ._errors import WorkerStoppedError as WorkerStoppedError
from ._model import Model as Model
from ._node import Node as Node
from ._remote import RemoteNode as RemoteNode
from ._worker import Context as Context
from ._worker import Worker as Worker
from ._zone import Zone as Zone

__build__: str = _build_info()
"""Which build runs: ``pure Python`` or ``compiled with mypyc`` (``python -m autonomy._build``)."""

try:
    __version__ = _metadata.version("autonomy")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "Agent",
    "AgentError",
    "AutonomyError",
    "ConfigError",
    "Context",
    "DiscoveryError",
    "InternalError",
    "MailboxFullError",
    "MessageTooLargeError",
    "MessageTypeError",
    "Model",
    "ModelError",
    "ModelTimeoutError",
    "NoReplyError",
    "Node",
    "NodeClosedError",
    "PeerUnavailableError",
    "ProtocolError",
    "RemoteNode",
    "ReplyError",
    "ReplyTimeoutError",
    "SecurityError",
    "Worker",
    "WorkerError",
    "WorkerExistsError",
    "WorkerNotFoundError",
    "WorkerStartError",
    "WorkerStoppedError",
    "Zone",
]

logging.getLogger("autonomy").addHandler(logging.NullHandler())

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, int):
        _obj.__module__ = "autonomy"
del _name, _obj
