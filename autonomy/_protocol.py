"""Wire format: frames <-> bytes, the protocol version, size limits and error codes.

No sockets and no event loop here: every function is a pure function of bytes, tested with
bytes. A frame is a msgpack array ``[version, kind, *fields]``; a ZeroMQ message holds one
frame, or several back to back (a sender coalesces what it sends to one peer in one loop turn).
Arrays rather than maps keep the envelope small and cheap to build (DESIGN.md, performance).

Frames (``rid`` is the sender's request id, an unsigned int):

=========  =====================================================  ===================
kind       fields after ``[version, kind]``                       answered by
=========  =====================================================  ===================
HELLO      rid, name, zone, endpoint, instance                     RESULT (same shape)
SEND       worker, message, rid (0: unconfirmed)                   CREDIT in batches;
                                                                  RESULT if rid > 0
REQUEST    rid, worker, message, timeout_ms                        REPLY or ERROR
REPLY      rid, message                                            -
ERROR      rid, code, message, fields                              -
START      rid, worker, payload (bytes)                            RESULT None / ERROR
STOP       rid, worker                                             RESULT None / ERROR
LIST       rid                                                     RESULT [{...}, ...]
RESULT     rid, value                                              -
CREDIT     worker, count                                           -
BYE        reason                                                  -
PING       rid                                                     RESULT None
MEMBERS    rid                                                     RESULT [update...]
GOSSIP     updates: [[name, endpoint, instance, incarnation,       -
           status], ...] (``_gossip``)
STATS      rid                                                     RESULT {...}
=========  =====================================================  ===================

Failures travel as ERROR frames ``(code, message, fields)``; :func:`error_from_wire` maps a
code back to one of our exception classes, so a peer can never make us build arbitrary types.
"""

from __future__ import annotations

import typing
from typing import Any, Final

import msgpack

from ._errors import (
    AutonomyError,
    InternalError,
    MailboxFullError,
    MessageTooLargeError,
    MessageTypeError,
    NodeClosedError,
    NoReplyError,
    ProtocolError,
    SecurityError,
    WorkerError,
    WorkerExistsError,
    WorkerNotFoundError,
    WorkerStartError,
    WorkerStoppedError,
    _StructuredError,
)

VERSION: Final = 1
"""Protocol version: the first element of every frame. A frame of another version is refused."""

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""Default limit of one frame on the wire; a node may be configured with another."""

BATCH_BYTES: Final = 64 * 1024
"""A sender coalesces the small frames it sends to one peer in one loop turn into messages
of at most this size; a frame of this size or more travels alone. A receiver accepts a
batch up to this size even when its own frame limit is smaller (each frame in it is)."""

ENVELOPE_OVERHEAD: Final = 1024
"""Room kept for the envelope around a message of at most ``limit - ENVELOPE_OVERHEAD`` bytes."""

# Frame kinds.
HELLO: Final = 1
SEND: Final = 2
REQUEST: Final = 3
REPLY: Final = 4
ERROR: Final = 5
START: Final = 6
STOP: Final = 7
LIST: Final = 8
RESULT: Final = 9
CREDIT: Final = 10
BYE: Final = 11
PING: Final = 12
MEMBERS: Final = 13
GOSSIP: Final = 14
STATS: Final = 15

KIND_NAMES: Final = {
    HELLO: "HELLO",
    SEND: "SEND",
    REQUEST: "REQUEST",
    REPLY: "REPLY",
    ERROR: "ERROR",
    START: "START",
    STOP: "STOP",
    LIST: "LIST",
    RESULT: "RESULT",
    CREDIT: "CREDIT",
    BYE: "BYE",
    PING: "PING",
    MEMBERS: "MEMBERS",
    GOSSIP: "GOSSIP",
    STATS: "STATS",
}

_ANY = object  # a field of any msgpack type (checked by the layer that uses it)

# The type of each field after [version, kind]. `int` fields reject bool (see _check).
_SCHEMAS: Final[dict[int, tuple[type, ...]]] = {
    HELLO: (int, str, str, str, str),
    SEND: (str, str, int),
    REQUEST: (int, str, str, int),
    REPLY: (int, str),
    ERROR: (int, int, str, dict),
    START: (int, str, bytes),
    STOP: (int, str),
    LIST: (int,),
    RESULT: (int, _ANY),
    CREDIT: (str, int),
    BYE: (str,),
    PING: (int,),
    MEMBERS: (int,),
    GOSSIP: (list,),
    STATS: (int,),
}


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


# One reused Packer: packb() builds a new one per call, which doubled the cost of encoding
# (1.47 -> 0.76 us measured here). pack() runs in C under the GIL from start to end (no
# `default` hook calls back into Python), so threads cannot interleave in its buffer.
_packb = msgpack.Packer(autoreset=True).pack


def encode(*frame: Any) -> bytes:
    """Encode ``kind, *fields`` as one frame of the current version."""
    return _packb((VERSION, *frame))  # type: ignore[no-any-return]


def encode_send(worker: str, message: str, rid: int = 0) -> bytes:
    return _packb((VERSION, SEND, worker, message, rid))  # type: ignore[no-any-return]


def encode_request(rid: int, worker: str, message: str, timeout_ms: int) -> bytes:
    return _packb((VERSION, REQUEST, rid, worker, message, timeout_ms))  # type: ignore[no-any-return]


def encode_reply(rid: int, message: str) -> bytes:
    return _packb((VERSION, REPLY, rid, message))  # type: ignore[no-any-return]


def encode_result(rid: int, value: Any) -> bytes:
    return _packb((VERSION, RESULT, rid, value))  # type: ignore[no-any-return]


def encode_error(rid: int, exc: BaseException) -> bytes:
    code, message, fields = error_to_wire(exc)
    return _packb((VERSION, ERROR, rid, code, message, fields))  # type: ignore[no-any-return]


def decode(data: bytes, limit: int = MAX_FRAME_BYTES) -> list[Any]:
    """Decode and validate one frame; returns ``[version, kind, *fields]``.

    Raises:
        ProtocolError: the bytes are over ``limit``, not msgpack, not exactly one frame of
            this version, of an unknown kind, or with fields of the wrong number or type.
    """
    frames, error = split(data, limit)
    if error is not None:
        raise error
    if len(frames) != 1:
        raise ProtocolError(f"expected one frame, got {len(frames)}")
    return check_frame(frames[0])


def split(data: bytes, limit: int = MAX_FRAME_BYTES) -> tuple[list[Any], ProtocolError | None]:
    """The msgpack objects of one ZeroMQ message, not validated yet.

    A message holds one frame, or several back to back: a sender coalesces the frames it
    sends to one peer in one loop turn (one ZeroMQ send instead of many). Returns the
    objects that parsed, and the error that stopped parsing, if any.
    """
    over = len(data) > limit
    if over and len(data) > BATCH_BYTES:
        return [], ProtocolError(f"message of {len(data)} bytes exceeds the limit of {limit}")
    try:
        frame = _unpackb(data)  # one frame: the common case, one C call
    except msgpack.ExtraData as extra:
        frames = [extra.unpacked]
        rest = extra.extra
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        return [], ProtocolError(f"frame is not valid msgpack: {exc}")
    else:
        if over:  # a single frame over the limit (only batches may be)
            return [], ProtocolError(f"frame of {len(data)} bytes exceeds the limit of {limit}")
        return [frame], None
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(rest))
    unpacker.feed(rest)
    try:
        frames.extend(unpacker)
    except Exception as exc:
        return frames, ProtocolError(f"frame is not valid msgpack: {exc}")
    if unpacker.tell() != len(rest):
        return frames, ProtocolError("message ends in a truncated frame")
    return frames, None


def check_frame(frame: Any) -> list[Any]:
    """Validate one decoded frame against its kind's schema; returns it.

    Raises:
        ProtocolError: not a frame of this version, of an unknown kind, or with fields of
            the wrong number or type.
    """
    # Fast paths for the frames of every message (the checks of the schema, inlined).
    if (
        type(frame) is list
        and len(frame) >= 4
        and type(frame[0]) is int
        and type(frame[1]) is int
        and frame[0] == VERSION
    ):
        size = len(frame)
        kind = frame[1]
        if kind == REPLY:
            if size == 4 and type(frame[2]) is int and frame[2] >= 0 and type(frame[3]) is str:
                return frame
        elif kind == REQUEST:
            if (
                size == 6
                and type(frame[2]) is int
                and type(frame[3]) is str
                and type(frame[4]) is str
                and type(frame[5]) is int
                and frame[2] >= 0
                and frame[5] >= 0
            ):
                return frame
        elif kind == SEND and (
            size == 5
            and type(frame[2]) is str
            and type(frame[3]) is str
            and type(frame[4]) is int
            and frame[4] >= 0
        ):
            return frame
    return _check(frame)


def _check(frame: Any) -> list[Any]:
    """The full validation of a decoded frame, against its kind's schema."""
    if type(frame) is not list or len(frame) < 2:
        raise ProtocolError("frame is not an array of [version, kind, ...]")
    version = frame[0]
    if version != VERSION or type(version) is not int:
        raise ProtocolError(f"frame has protocol version {version!r}, this node speaks {VERSION}")
    schema = _SCHEMAS.get(frame[1]) if type(frame[1]) is int else None
    if schema is None:
        raise ProtocolError(f"frame has unknown kind {frame[1]!r}")
    if len(frame) != len(schema) + 2:
        raise ProtocolError(
            f"{KIND_NAMES[frame[1]]} frame has {len(frame) - 2} fields, expected {len(schema)}"
        )
    for position, expected in enumerate(schema, 2):
        value: Any = frame[position]
        if expected is _ANY:
            continue
        if type(value) is not expected:
            raise ProtocolError(
                f"{KIND_NAMES[frame[1]]} frame field {position - 2} is "
                f"{type(value).__name__}, expected {expected.__name__}"
            )
        if expected is int and frame[position] < 0:
            raise ProtocolError(f"{KIND_NAMES[frame[1]]} frame field {position - 2} is negative")
    return frame


def request_id_of(data: bytes) -> int | None:
    """Best effort: the request id of a frame that failed to decode, so it can be answered."""
    try:
        frame = msgpack.unpackb(data, raw=False)
    except Exception:
        return None
    return request_id_in(frame)


def request_id_in(frame: Any) -> int | None:
    """Best effort: the request id in a decoded object that is not a valid frame."""
    if type(frame) is not list or len(frame) < 3:
        return None
    position = 4 if frame[1] == SEND else 2
    answerable = (HELLO, SEND, REQUEST, START, STOP, LIST, PING, MEMBERS, STATS)
    if frame[1] in answerable and len(frame) > position:
        rid = frame[position]
        if type(rid) is int and rid > 0:
            return rid
    return None


# -- messages -------------------------------------------------------------------------------


def check_message(message: object, limit: int, what: str = "message") -> None:
    """Validate a user message or reply before anything is queued or sent.

    Raises:
        MessageTypeError: it is not a ``str``.
        MessageTooLargeError: its UTF-8 encoding would not fit in a frame of ``limit`` bytes.
    """
    if type(message) is not str and not isinstance(message, str):
        raise MessageTypeError(f"{what} must be str, got {type(message).__name__}")
    room = limit - ENVELOPE_OVERHEAD
    if message.isascii():  # C speed; one byte per character
        if len(message) > room:
            raise MessageTooLargeError(len(message), room)
        return
    try:
        size = len(message.encode("utf-8"))
    except UnicodeEncodeError:
        # A lone surrogate cannot travel as UTF-8: refused here, locally and remotely alike.
        raise MessageTypeError(
            f"{what} must be valid UTF-8 text (it has a lone surrogate)"
        ) from None
    if size > room:
        raise MessageTooLargeError(size, room)


def check_name(name: object, what: str = "worker name") -> str:
    """Validate a worker or node name: a non-empty str of printable characters, at most 255
    bytes in UTF-8 (so that a frame's envelope stays within ENVELOPE_OVERHEAD).

    A bad name is the caller's bug, found before any I/O, so a bad value raises the builtin
    ``ValueError`` as any Python API does for a bad argument (the typed errors are for what
    can also come back from a peer); a name that is not a ``str`` is a `MessageTypeError`,
    which is a ``TypeError``. A peer sent a bad name: its START is a `WorkerStartError`.

    Raises:
        MessageTypeError: it is not a ``str``.
        ValueError: it is empty, too long, or holds control characters.
    """
    if not isinstance(name, str):
        raise MessageTypeError(f"{what} must be str, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    if len(name) > 63 and len(name.encode("utf-8", "surrogatepass")) > 255:
        raise ValueError(f"{what} is longer than 255 bytes")
    if not name.isprintable():
        raise ValueError(f"{what} {name!r} contains control characters")
    return name


# -- errors on the wire ---------------------------------------------------------------------

E_WORKER_NOT_FOUND: Final = 1
E_WORKER_EXISTS: Final = 2
E_WORKER_ERROR: Final = 3
E_MESSAGE_TOO_LARGE: Final = 4
E_WORKER_STOPPED: Final = 5
E_PROTOCOL: Final = 6
E_NO_REPLY: Final = 7
E_WORKER_START: Final = 8
E_NODE_CLOSED: Final = 9
E_MESSAGE_TYPE: Final = 10
E_SECURITY: Final = 11
E_MAILBOX_FULL: Final = 12
E_INTERNAL: Final = 99


_CODES: Final[dict[type[AutonomyError], int]] = {
    WorkerNotFoundError: E_WORKER_NOT_FOUND,
    WorkerExistsError: E_WORKER_EXISTS,
    WorkerError: E_WORKER_ERROR,
    MessageTooLargeError: E_MESSAGE_TOO_LARGE,
    WorkerStoppedError: E_WORKER_STOPPED,
    ProtocolError: E_PROTOCOL,
    NoReplyError: E_NO_REPLY,
    WorkerStartError: E_WORKER_START,
    NodeClosedError: E_NODE_CLOSED,
    MessageTypeError: E_MESSAGE_TYPE,
    SecurityError: E_SECURITY,
    MailboxFullError: E_MAILBOX_FULL,
    InternalError: E_INTERNAL,
}
"""The one table of error codes, read in both directions: an error travels as its code, its
message and (for errors with named fields) its fields; nothing else is ever rebuilt."""

_CLASSES: Final = {code: cls for cls, code in _CODES.items()}


def _field_kinds(cls: type[AutonomyError]) -> tuple[tuple[str, type], ...]:
    if not issubclass(cls, _StructuredError):
        return ()
    hints = typing.get_type_hints(cls)
    return tuple((name, int if hints[name] in (int, float) else str) for name in cls._fields)


_FIELDS: Final = {cls: _field_kinds(cls) for cls in _CODES}


def error_to_wire(exc: BaseException) -> tuple[int, str, dict[str, Any]]:
    """Describe an exception as ``(code, message, fields)`` for an ERROR frame. An error
    outside the table travels as an internal error naming its type."""
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            fields = {name: getattr(exc, name) for name, _ in _FIELDS[cls]}
            return code, str(exc), fields
    return E_INTERNAL, f"{type(exc).__name__}: {exc}", {}


def _coerce(value: Any, kind: type) -> Any:
    if kind is int:
        return value if type(value) is int else 0
    return value if isinstance(value, str) else repr(value)


def error_from_wire(code: int, message: str, fields: dict[str, Any]) -> AutonomyError:
    """Rebuild the exception an ERROR frame describes; unknown codes give a generic error.
    Fields of the wrong type are coerced, never trusted."""
    cls = _CLASSES.get(code)
    if cls is None:
        return AutonomyError(f"peer reported error code {code}: {message}")
    kinds = _FIELDS[cls]
    if not kinds:
        return cls(message)
    return cls(**{name: _coerce(fields.get(name, kind()), kind) for name, kind in kinds})
