"""Settings: every ``AUTONOMY_*`` environment variable, its type and its default, in one place.

`Env` names each variable (the command line sets them by these names); `Settings.from_env`
parses them all at once, typed, and raises `ConfigError` for a value that cannot mean
anything, rather than falling back to a default the user did not ask for. A `Node` reads its
settings once, when it is built; its explicit arguments win over the environment.

No sockets and no event loop here.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ._errors import ConfigError

__all__ = ["Env", "Settings", "bind_address", "flag", "seed_endpoints"]


class Env(enum.StrEnum):
    """The environment variables autonomy reads, by name."""

    NODE_NAME = "AUTONOMY_NODE_NAME"
    """The node's name, unique in its zone (the launcher sets it)."""
    ZONE = "AUTONOMY_ZONE"
    """The node's zone (default ``default``)."""
    BIND = "AUTONOMY_BIND"
    """Where the node's ROUTER binds: ``HOST``, ``HOST:PORT`` or a ZeroMQ address."""
    PEERS = "AUTONOMY_PEERS"
    """Seed peers, ``HOST:PORT`` comma-separated."""
    DISCOVERY = "AUTONOMY_DISCOVERY"
    """mDNS discovery on (default) or off."""
    SECURE = "AUTONOMY_SECURE"
    """CURVE on every connection (default) or plain mode."""
    ALLOW_SHIPPING = "AUTONOMY_ALLOW_SHIPPING"
    """Accept workers shipped as code by members of the zone."""
    ALLOWED_WORKERS = "AUTONOMY_ALLOWED_WORKERS"
    """Accept only shipped workers of these classes, ``module.qualname`` comma-separated."""
    ZONE_SECRET = "AUTONOMY_ZONE_SECRET"
    """The zone's secret."""
    ZONE_SECRET_FILE = "AUTONOMY_ZONE_SECRET_FILE"
    """A file holding the zone's secret."""
    EXPECTED_NODES = "AUTONOMY_EXPECTED_NODES"
    """Every node name of the zone, comma-separated (the launcher sets it)."""
    WAIT_UNTIL_INTERRUPTED = "AUTONOMY_WAIT_UNTIL_INTERRUPTED"
    """`Node.start` keeps serving after ``main`` returns (default) or returns."""
    LOG_LEVEL = "AUTONOMY_LOG_LEVEL"
    """The log level `Node.start` configures when the program configured none."""
    METRICS = "AUTONOMY_METRICS"
    """Serve Prometheus metrics at ``http://HOST:PORT/metrics`` (``HOST:PORT`` or ``PORT``)."""
    HANDLER_TIMES = "AUTONOMY_HANDLER_TIMES"
    """Keep each worker's handler times: on from the start, off never; unset: from the first
    look at the node's counters (or from the start when it serves metrics)."""
    MODEL_ALIASES = "AUTONOMY_MODEL_ALIASES"
    """Model names mapped to what the endpoint serves: ``guide-name=served-name,...``."""
    STATE_DIR = "AUTONOMY_STATE_DIR"
    """Where ``autonomy zone deploy --detach`` keeps its state (the command line's)."""
    LAUNCH_ID = "AUTONOMY_LAUNCH_ID"
    """Marks every process of one launch, so that strays are found (the command line's)."""


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS: Final = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})


def flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean variable: unset or empty gives ``default``.

    Raises:
        ConfigError: the value is not one of 1/0, true/false, yes/no, on/off.
    """
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"expected 1/0, true/false, yes/no or on/off, got {value!r}", key=name)


def _names(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def bind_address(bind: str) -> str:
    """The ZeroMQ address to bind, from ``HOST``, ``HOST:PORT`` or a full ``tcp://`` or
    ``ipc://`` address; empty means loopback on any free port."""
    value = bind.strip() or "127.0.0.1"
    if "://" in value:
        return value
    if value.startswith("["):  # [v6]:port or [v6]
        host, _, port = value.partition("]")
        return f"tcp://{host}]:{port.lstrip(':') or '*'}"
    host, sep, port = value.rpartition(":")
    if sep and host and ":" not in host:
        return f"tcp://{host}:{port or '*'}"
    return f"tcp://{value}:*"


def _seed_endpoint(seed: str) -> str:
    seed = seed.strip()
    if "://" in seed:
        return seed
    host, sep, port = seed.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"a seed peer must be HOST:PORT, got {seed!r}", key=Env.PEERS.value)
    return f"tcp://{seed}"


def seed_endpoints(peers: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    """Seed peers from a list or a comma-separated string, as ZeroMQ endpoints.

    Raises:
        ConfigError: a seed is not ``HOST:PORT`` (or a ZeroMQ address).
    """
    if isinstance(peers, str):
        peers = _names(peers)
    return tuple(_seed_endpoint(seed) for seed in peers)


def _aliases(value: str) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for part in _names(value):
        name, sep, served = part.partition("=")
        if not sep or not name.strip() or not served.strip():
            raise ConfigError(
                f"expected NAME=SERVED_NAME pairs, comma-separated, got {part!r}",
                key=Env.MODEL_ALIASES.value,
            )
        aliases[name.strip()] = served.strip()
    return aliases


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting the environment can give, parsed (``None``: not set)."""

    node_name: str | None = None
    zone: str | None = None
    bind: str = "tcp://127.0.0.1:*"
    peers: tuple[str, ...] = ()
    discovery: bool = True
    secure: bool = True
    allow_shipping: bool | None = None
    """None: the default, which depends on ``secure``."""
    allowed_workers: tuple[str, ...] | None = None
    zone_secret: str | None = None
    zone_secret_file: str | None = None
    expected_nodes: tuple[str, ...] = ()
    wait_until_interrupted: bool = True
    log_level: str = "WARNING"
    metrics: str | None = None
    handler_times: bool | None = None
    """None: from the first look at the counters."""
    model_aliases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the ``AUTONOMY_*`` variables of ``environ`` (default ``os.environ``).

        Raises:
            ConfigError: a variable is set to a value that cannot mean anything; an empty
                ``AUTONOMY_ZONE_SECRET`` (a ``$VAR`` that was not set) is one.
        """
        env = os.environ if environ is None else environ

        def text(name: Env) -> str | None:
            value = env.get(name.value, "").strip()
            return value or None

        secret = env.get(Env.ZONE_SECRET.value)
        if secret is not None and not secret.strip():
            raise ConfigError(
                "is set but empty (a $VARIABLE that was not set?): unset it to use this "
                "machine's secret file, or give the zone's secret",
                key=Env.ZONE_SECRET.value,
            )
        secret_file = env.get(Env.ZONE_SECRET_FILE.value)
        if secret_file is not None and not secret_file.strip():
            raise ConfigError("is set but empty", key=Env.ZONE_SECRET_FILE.value)
        allowed = text(Env.ALLOWED_WORKERS)
        allow_shipping = (
            flag(env, Env.ALLOW_SHIPPING.value, True) if text(Env.ALLOW_SHIPPING) else None
        )
        log_level = (text(Env.LOG_LEVEL) or "WARNING").upper()
        if log_level not in _LOG_LEVELS:
            raise ConfigError(
                f"expected one of {', '.join(sorted(_LOG_LEVELS))}, got {log_level!r}",
                key=Env.LOG_LEVEL.value,
            )
        return cls(
            node_name=text(Env.NODE_NAME),
            zone=text(Env.ZONE),
            bind=bind_address(text(Env.BIND) or ""),
            peers=seed_endpoints(text(Env.PEERS) or ""),
            discovery=flag(env, Env.DISCOVERY.value, True),
            secure=flag(env, Env.SECURE.value, True),
            allow_shipping=allow_shipping,
            allowed_workers=_names(allowed) if allowed else None,
            zone_secret=secret.strip() if secret is not None else None,
            zone_secret_file=secret_file.strip() if secret_file is not None else None,
            expected_nodes=_names(text(Env.EXPECTED_NODES) or ""),
            wait_until_interrupted=flag(env, Env.WAIT_UNTIL_INTERRUPTED.value, True),
            log_level=log_level,
            metrics=text(Env.METRICS),
            handler_times=(
                flag(env, Env.HANDLER_TIMES.value, True) if text(Env.HANDLER_TIMES) else None
            ),
            model_aliases=_aliases(text(Env.MODEL_ALIASES) or ""),
        )
