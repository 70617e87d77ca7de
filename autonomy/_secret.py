"""Zone secrets: where a zone's secret comes from, and the key material derived from it.

The secret is what makes a node a member of its zone: every connection of the mesh is
encrypted and authenticated with CURVE keys derived from it (``_transport`` turns the bytes
derived here into keys). On one machine a secret is created on first use, in a file only the
user can read, and every node of that user and zone picks it up with no setting; across
machines the user copies it (``autonomy zone secret`` prints it) into
``AUTONOMY_ZONE_SECRET``. No sockets here, no zmq.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path
from typing import Final

from ._config import Env, Settings
from ._errors import ConfigError, SecurityError

__all__ = ["MIN_SECRET_CHARS", "derive_seeds", "secret_path", "zone_secret"]

MIN_SECRET_CHARS: Final = 16
"""A secret given by the user must be at least this long (generated ones have 43)."""

_SALT: Final = b"autonomy zone keys v1"


def secret_path(zone: str) -> Path:
    """The file that holds ``zone``'s secret for this user:
    ``$XDG_CONFIG_HOME/autonomy/zones/<zone>.secret`` (default ``~/.config/...``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in zone)
    return Path(base) / "autonomy" / "zones" / f"{safe}.secret"


def _check(secret: str, where: str) -> str:
    secret = secret.strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"the zone secret must be at least {MIN_SECRET_CHARS} characters", key=where
        )
    return secret


def _read_or_create(path: Path) -> str:
    """Read the secret file, creating it (mode 0600) if it does not exist.

    The file appears whole or not at all: it is written under a temporary name and linked
    into place, so that of several nodes starting at once exactly one creates it and none
    ever reads it half written.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
            try:
                with os.fdopen(fd, "w") as file:  # mkstemp creates it with mode 0600
                    file.write(secrets.token_urlsafe(32) + "\n")
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    pass  # another process created it first: use theirs
            finally:
                os.unlink(temporary)
    except OSError as exc:
        raise ConfigError(f"cannot create the zone secret: {exc}", path=str(path)) from exc
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the zone secret: {exc}", path=str(path)) from exc
    if mode & 0o077:
        raise SecurityError(
            f"{path} is readable by other users (mode {mode & 0o777:o}): chmod 600 it"
        )
    return _check(text, str(path))


def zone_secret(zone: str, secret: str | None = None, settings: Settings | None = None) -> str:
    """The zone's secret: ``secret``, else ``AUTONOMY_ZONE_SECRET``, else the file named by
    ``AUTONOMY_ZONE_SECRET_FILE``, else this user's file for the zone (created if needed).

    Raises:
        ConfigError: the secret is too short, set but empty, or its file cannot be read or
            created.
        SecurityError: the secret file is readable by other users.
    """
    if secret is not None:
        return _check(secret, "secret")
    if settings is None:
        settings = Settings.from_env()
    if settings.zone_secret is not None:
        return _check(settings.zone_secret, Env.ZONE_SECRET.value)
    if settings.zone_secret_file is not None:
        from_file = settings.zone_secret_file
        try:
            return _check(Path(from_file).read_text(), from_file)
        except OSError as exc:
            raise ConfigError(f"cannot read the zone secret: {exc}", path=from_file) from exc
    return _read_or_create(secret_path(zone))


def _hkdf(key: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) with our fixed salt."""
    prk = hmac.new(_SALT, key, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def derive_seeds(secret: str, zone: str) -> tuple[bytes, bytes]:
    """32 bytes each for the zone's server and client CURVE secret keys.

    The zone's name is mixed in: the same secret used for two zones gives two unrelated key
    sets, so a node of one zone cannot talk to a node of the other."""
    key = secret.encode()
    return _hkdf(key, f"{zone}/server".encode()), _hkdf(key, f"{zone}/client".encode())
