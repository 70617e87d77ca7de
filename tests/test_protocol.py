"""The wire format, below any socket: frames are fed to `_protocol` as bytes (sans-IO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autonomy import _errors, _protocol
from autonomy._errors import (
    AgentError,
    AutonomyError,
    ConfigError,
    DiscoveryError,
    InternalError,
    MailboxFullError,
    MessageTooLargeError,
    MessageTypeError,
    ModelError,
    ModelTimeoutError,
    NodeClosedError,
    NoReplyError,
    PeerUnavailableError,
    ProtocolError,
    ReplyError,
    ReplyTimeoutError,
    SecurityError,
    WorkerError,
    WorkerExistsError,
    WorkerNotFoundError,
    WorkerStartError,
    WorkerStoppedError,
)
from autonomy._protocol import (
    BYE,
    CREDIT,
    ENVELOPE_OVERHEAD,
    ERROR,
    GOSSIP,
    HELLO,
    KIND_NAMES,
    LIST,
    MAX_FRAME_BYTES,
    MEMBERS,
    PING,
    REPLY,
    REQUEST,
    RESULT,
    SEND,
    START,
    STATS,
    STOP,
    VERSION,
    check_message,
    check_name,
    decode,
    encode,
    encode_error,
    encode_reply,
    encode_request,
    encode_result,
    encode_send,
    error_from_wire,
    error_to_wire,
    request_id_of,
)

# Property tests: no example database in the repository, and no per-example deadline (a
# loaded 2-core CI machine is slow, not wrong).
quick = settings(database=None, deadline=None, max_examples=200)

U64 = 2**64 - 1
LIMIT = 64 * 1024
ROOM = LIMIT - ENVELOPE_OVERHEAD


def pack(*items: Any) -> bytes:
    return msgpack.packb(list(items))  # type: ignore[no-any-return]


# -- round trips ------------------------------------------------------------------------------

SAMPLE_FRAMES: dict[str, tuple[Any, ...]] = {
    "HELLO": (HELLO, 1, "node-a", "zone", "tcp://127.0.0.1:5555", "0123abcd"),
    "SEND unconfirmed": (SEND, "worker", "message", 0),
    "SEND confirmed": (SEND, "worker", "message", 7),
    "REQUEST": (REQUEST, 2, "worker", "hello", 30_000),
    "REQUEST without deadline": (REQUEST, 2, "worker", "", 0),
    "REPLY": (REPLY, 3, "reply"),
    "ERROR": (ERROR, 4, _protocol.E_WORKER_NOT_FOUND, "no worker", {"worker": "w", "node": "n"}),
    "START": (START, 5, "worker", b"\x80\x05payload"),
    "STOP": (STOP, 6, "worker"),
    "LIST": (LIST, 7),
    "RESULT None": (RESULT, 8, None),
    "RESULT list": (RESULT, 9, [{"name": "w", "queued": 0, "handled": 3, "failed": 1}]),
    "CREDIT": (CREDIT, "worker", 100),
    "BYE": (BYE, "node stopped"),
    "PING": (PING, 10),
    "MEMBERS": (MEMBERS, 11),
    "GOSSIP": (GOSSIP, [["node-b", "tcp://127.0.0.1:5556", "0123abcd", 3, 1]]),
    "STATS": (STATS, 12),
    "largest ids": (REQUEST, U64, "w", "m", U64),
    "non-ASCII text": (REQUEST, 1, "wörker-😀", "héllo ✓ 😀", 5),
}


@pytest.mark.parametrize("frame", SAMPLE_FRAMES.values(), ids=SAMPLE_FRAMES.keys())
def test_every_frame_kind_survives_an_encode_decode_round_trip(frame: tuple[Any, ...]) -> None:
    assert decode(encode(*frame)) == [VERSION, *frame]


def test_every_frame_kind_has_a_sample_round_trip() -> None:
    assert {frame[0] for frame in SAMPLE_FRAMES.values()} == set(KIND_NAMES)


def test_the_dedicated_encoders_produce_the_same_bytes_as_the_generic_one() -> None:
    assert encode_send("w", "m", 3) == encode(SEND, "w", "m", 3)
    assert encode_send("w", "m") == encode(SEND, "w", "m", 0)
    assert encode_request(1, "w", "m", 500) == encode(REQUEST, 1, "w", "m", 500)
    assert encode_reply(2, "r") == encode(REPLY, 2, "r")
    assert encode_result(3, [1, "x"]) == encode(RESULT, 3, [1, "x"])
    error = WorkerNotFoundError("w", "n")
    assert encode_error(4, error) == encode(ERROR, 4, *error_to_wire(error))


@quick
@given(
    rid=st.integers(0, U64),
    worker=st.text(min_size=1),
    message=st.text(),
    timeout_ms=st.integers(0, U64),
)
def test_any_request_round_trips(rid: int, worker: str, message: str, timeout_ms: int) -> None:
    # Lone surrogates cannot travel: see test_a_str_that_check_message_accepts_can_be_encoded.
    worker = worker.encode("utf-8", "replace").decode("utf-8")
    message = message.encode("utf-8", "replace").decode("utf-8")
    frame = decode(encode_request(rid, worker, message, timeout_ms))
    assert frame == [VERSION, REQUEST, rid, worker, message, timeout_ms]


RESULT_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64)
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(codec="utf-8"))
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(codec="utf-8")), children, max_size=4)
    ),
    max_leaves=20,
)


@quick
@given(value=RESULT_VALUES)
def test_a_result_carries_any_msgpack_value(value: Any) -> None:
    assert decode(encode_result(1, value)) == [VERSION, RESULT, 1, value]


# -- decode refuses bad frames -------------------------------------------------------------

BAD_FRAMES: dict[str, bytes] = {
    # not msgpack at all
    "empty": b"",
    "reserved byte": b"\xc1",
    "plain text": b"hello, node",
    "truncated array": pack(VERSION, REQUEST, 1, "worker", "message", 100)[:-3],
    "truncated string": pack(VERSION, REPLY, 1, "x" * 100)[:50],
    "trailing bytes": pack(VERSION, PING, 1) + b"\x00",
    "invalid UTF-8 in a str": b"\x94\x01\x04\x01\xa1\xff",
    "deeply nested arrays": b"\x91" * 100_000,
    # msgpack, but not an array of [version, kind, ...]
    "a map": msgpack.packb({"version": 1, "kind": PING}),
    "an int": msgpack.packb(1),
    "a str": msgpack.packb("PING"),
    "nil": msgpack.packb(None),
    "empty array": pack(),
    "array of one": pack(VERSION),
    # wrong version
    "version 0": pack(0, PING, 1),
    "version 2": pack(2, PING, 1),
    "version as float": pack(1.0, PING, 1),
    "version as bool": pack(True, PING, 1),
    "version as str": pack("1", PING, 1),
    "version nil": pack(None, PING, 1),
    # unknown kind
    "kind 0": pack(VERSION, 0, 1),
    "kind after the last": pack(VERSION, max(KIND_NAMES) + 1, 1),
    "kind 255": pack(VERSION, 255, 1),
    "kind negative": pack(VERSION, -1, 1),
    "kind as str": pack(VERSION, "PING", 1),
    "kind as bool": pack(VERSION, True, 1, "n", "z", "e", "i"),
    "kind as float": pack(VERSION, 12.0, 1),
    "kind nil": pack(VERSION, None, 1),
    # wrong number of fields
    "PING without rid": pack(VERSION, PING),
    "PING with two fields": pack(VERSION, PING, 1, 2),
    "REPLY without message": pack(VERSION, REPLY, 1),
    "REQUEST without timeout": pack(VERSION, REQUEST, 1, "w", "m"),
    "HELLO with an extra field": pack(VERSION, HELLO, 1, "n", "z", "e", "i", "x"),
    "ERROR without fields": pack(VERSION, ERROR, 1, 3, "boom"),
    # wrong field types
    "rid as str": pack(VERSION, REPLY, "1", "m"),
    "rid as float": pack(VERSION, PING, 1.0),
    "rid nil": pack(VERSION, LIST, None),
    "message as bytes": pack(VERSION, REPLY, 1, b"bytes"),
    "message as int": pack(VERSION, REQUEST, 1, "w", 42, 100),
    "worker as bytes": pack(VERSION, REQUEST, 1, b"w", "m", 100),
    "timeout as float": pack(VERSION, REQUEST, 1, "w", "m", 1.5),
    "START payload as str": pack(VERSION, START, 1, "w", "not bytes"),
    "ERROR fields as array": pack(VERSION, ERROR, 1, 3, "boom", []),
    "ERROR fields with int keys": pack(VERSION, ERROR, 1, 3, "boom", {1: "x"}),
    "ERROR code as str": pack(VERSION, ERROR, 1, "3", "boom", {}),
    "CREDIT count as str": pack(VERSION, CREDIT, "w", "100"),
    "BYE reason nil": pack(VERSION, BYE, None),
    # a bool where an int belongs (msgpack keeps them apart, so must we)
    "rid True": pack(VERSION, PING, True),
    "SEND rid False": pack(VERSION, SEND, "w", "m", False),
    "CREDIT count True": pack(VERSION, CREDIT, "w", True),
    "ERROR code True": pack(VERSION, ERROR, 1, True, "boom", {}),
    # negative ints
    "rid -1": pack(VERSION, PING, -1),
    "REQUEST rid negative": pack(VERSION, REQUEST, -(2**63), "w", "m", 100),
    "timeout negative": pack(VERSION, REQUEST, 1, "w", "m", -1),
    "CREDIT negative": pack(VERSION, CREDIT, "w", -100),
    "SEND rid negative": pack(VERSION, SEND, "w", "m", -1),
}


@pytest.mark.parametrize("data", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_decode_refuses_a_bad_frame_with_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


def test_decode_refuses_a_frame_one_byte_over_the_limit() -> None:
    data = encode_reply(1, "x" * 1000)
    assert decode(data, limit=len(data)) == [VERSION, REPLY, 1, "x" * 1000]
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(data, limit=len(data) - 1)


def test_decode_refuses_a_frame_over_the_default_limit_before_parsing_it() -> None:
    # Not msgpack at all: the size is checked first, so the message says size, not syntax.
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(b"\xc1" * (MAX_FRAME_BYTES + 1))


@quick
@given(data=st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_returns_a_valid_frame_or_raises_protocol_error(
    data: bytes,
) -> None:
    try:
        frame = decode(data)
    except ProtocolError:
        return
    assert frame[0] == VERSION
    assert frame[1] in KIND_NAMES


@quick
@given(items=st.lists(RESULT_VALUES, max_size=7), kind=st.sampled_from(sorted(KIND_NAMES)))
def test_decode_of_arbitrary_arrays_of_a_known_kind_never_raises_anything_else(
    items: list[Any], kind: int
) -> None:
    try:
        frame = decode(pack(VERSION, kind, *items))
    except ProtocolError:
        return
    assert frame[:2] == [VERSION, kind]


def test_a_protocol_error_is_an_autonomy_error() -> None:
    with pytest.raises(AutonomyError):
        decode(b"garbage")


# -- request_id_of ------------------------------------------------------------------------------

RIDS: dict[str, tuple[bytes, int | None]] = {
    "HELLO": (encode(HELLO, 11, "n", "z", "e", "i"), 11),
    "REQUEST": (encode_request(12, "w", "m", 100), 12),
    "SEND confirmed": (encode_send("w", "m", 13), 13),
    "START": (encode(START, 14, "w", b""), 14),
    "STOP": (encode(STOP, 15, "w"), 15),
    "LIST": (encode(LIST, 16), 16),
    "PING": (encode(PING, 17), 17),
    "MEMBERS": (encode(MEMBERS, 31), 31),
    "largest rid": (encode(PING, U64), U64),
    # frames that fail to decode but still say who to answer (best effort)
    "REQUEST with a wrong field type": (pack(VERSION, REQUEST, 18, 5, "m", 100), 18),
    "REQUEST of another version": (pack(2, REQUEST, 19, "w", "m", 100), 19),
    "PING with an extra field": (pack(VERSION, PING, 20, "extra"), 20),
    # no request id to answer
    "SEND unconfirmed": (encode_send("w", "m"), None),
    "SEND missing its rid": (pack(VERSION, SEND, "w", "m"), None),
    "REPLY": (encode_reply(21, "r"), None),
    "RESULT": (encode_result(22, None), None),
    "ERROR": (encode_error(23, WorkerNotFoundError("w", "n")), None),
    "CREDIT": (encode(CREDIT, "w", 24), None),
    "BYE": (encode(BYE, "bye"), None),
    "unknown kind": (pack(VERSION, max(KIND_NAMES) + 1, 25), None),
    "rid zero": (encode(PING, 0), None),
    "rid negative": (pack(VERSION, PING, -26), None),
    "rid True": (pack(VERSION, PING, True), None),
    "rid as str": (pack(VERSION, PING, "27"), None),
    "too short": (pack(VERSION, PING), None),
    "not an array": (msgpack.packb({"rid": 28}), None),
    "not msgpack": (b"\xc1\xc1", None),
    "truncated": (encode_request(29, "w", "m" * 50, 100)[:20], None),
    "kind unhashable": (pack(VERSION, [PING], 30), None),
}


@pytest.mark.parametrize(("data", "rid"), RIDS.values(), ids=RIDS.keys())
def test_request_id_of_finds_the_id_to_answer_or_none(data: bytes, rid: int | None) -> None:
    assert request_id_of(data) == rid


@quick
@given(data=st.binary(max_size=200))
def test_request_id_of_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    rid = request_id_of(data)
    assert rid is None or (type(rid) is int and rid > 0)


# -- check_message ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [b"bytes", bytearray(b"x"), None, 42, 4.2, True, ["a"], {"a": 1}, object()],
    ids=lambda value: type(value).__name__,
)
def test_check_message_refuses_anything_but_str_with_a_type_error(message: object) -> None:
    with pytest.raises(MessageTypeError, match="message must be str") as caught:
        check_message(message, LIMIT)
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, AutonomyError)


def test_check_message_names_what_it_checked() -> None:
    with pytest.raises(MessageTypeError, match="reply must be str, got int"):
        check_message(1, LIMIT, "reply")


def test_check_message_accepts_a_str_subclass() -> None:
    class Text(str):
        pass

    check_message(Text("hello"), LIMIT)


@pytest.mark.parametrize(
    ("unit", "width"),
    [("x", 1), ("é", 2), ("✓", 3), ("😀", 4)],
    ids=["1-byte", "2-byte", "3-byte", "4-byte"],
)
def test_check_message_allows_exactly_the_room_in_utf8_bytes(unit: str, width: int) -> None:
    fitting = unit * (ROOM // width) + "x" * (ROOM % width)
    assert len(fitting.encode()) == ROOM
    check_message(fitting, LIMIT)
    with pytest.raises(MessageTooLargeError) as caught:
        check_message(fitting + "x", LIMIT)
    assert (caught.value.size, caught.value.limit) == (ROOM + 1, ROOM)
    assert isinstance(caught.value, ValueError)


def test_check_message_counts_bytes_not_characters() -> None:
    # Fewer characters than the room, but each takes four bytes: too large.
    message = "😀" * (ROOM // 4 + 1)
    assert len(message) < ROOM
    with pytest.raises(MessageTooLargeError) as caught:
        check_message(message, LIMIT)
    assert caught.value.size == len(message.encode())


def test_check_message_accepts_the_empty_string() -> None:
    check_message("", LIMIT)


def frames_carrying(worker: str, message: str) -> dict[str, bytes]:
    rid, timeout_ms = 2**32, 30_000
    return {
        "REQUEST": encode_request(rid, worker, message, timeout_ms),
        "SEND": encode_send(worker, message, rid),
        "REPLY": encode_reply(rid, message),
    }


@pytest.mark.parametrize("worker", ["w", "w" * 255, "é" * 127], ids=["short", "255", "127 é"])
def test_a_message_at_the_size_limit_fits_in_every_frame_that_carries_it(worker: str) -> None:
    message = "x" * ROOM
    check_message(message, LIMIT)
    for data in frames_carrying(check_name(worker), message).values():
        decode(data, LIMIT)


def test_a_message_at_the_size_limit_fits_in_a_frame_even_with_the_longest_worker_name() -> None:
    worker = check_name("😀" * 63 + "xxx")  # 255 bytes: names are limited in bytes
    message = "x" * ROOM
    check_message(message, LIMIT)
    for data in frames_carrying(worker, message).values():
        decode(data, LIMIT)


def test_a_str_that_cannot_travel_as_utf8_is_refused_up_front() -> None:
    with pytest.raises(MessageTypeError, match="lone surrogate"):
        check_message("half a pair: \ud800", LIMIT)


# -- check_name ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["w", "echoer", "a b", "wörker", "😀", "x" * 255, "pod-1/clone-2.container"],
)
def test_check_name_returns_a_valid_name(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "must not be empty"),
        ("x" * 256, "longer than 255 bytes"),
        ("😀" * 64, "longer than 255 bytes"),
        ("lone \ud800", "control characters"),
        ("line\nbreak", "control characters"),
        ("nul\x00", "control characters"),
        ("tab\t", "control characters"),
        ("del\x7f", "control characters"),
        ("escape\x1b[31m", "control characters"),
        ("separator\u2028", "control characters"),
    ],
    ids=[
        "empty",
        "too long",
        "too many bytes",
        "lone surrogate",
        "newline",
        "NUL",
        "tab",
        "DEL",
        "ANSI escape",
        "line separator",
    ],
)
def test_check_name_refuses_an_invalid_name_with_a_value_error(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_name(name)


@pytest.mark.parametrize("name", [None, b"w", 1, ["w"]], ids=lambda value: type(value).__name__)
def test_check_name_refuses_a_non_str_with_a_message_type_error(name: object) -> None:
    with pytest.raises(MessageTypeError, match="node name must be str"):
        check_name(name, "node name")


# -- errors on the wire ---------------------------------------------------------------------

WIRE_ERRORS: dict[str, AutonomyError] = {
    "WorkerNotFoundError": WorkerNotFoundError("w", "n"),
    "WorkerExistsError": WorkerExistsError("w", "n"),
    "WorkerError": WorkerError("w", "n", "ValueError", "bad input", "Traceback...\n  line 1\n"),
    "MessageTooLargeError": MessageTooLargeError(70_000, 64_512),
    "WorkerStoppedError": WorkerStoppedError("w", "n"),
    "ProtocolError": ProtocolError("frame is not valid msgpack"),
    "NoReplyError": NoReplyError("w", "n"),
    "WorkerStartError": WorkerStartError("w", "n", "ModuleNotFoundError: No module named 'x'"),
    "NodeClosedError": NodeClosedError("node 'n' is stopping"),
    "MessageTypeError": MessageTypeError("message must be str, got int"),
    "SecurityError": SecurityError("node 'x' of zone 'a' refused by zone 'b'"),
    "MailboxFullError": MailboxFullError("w", "n", 2000),
}


def fields_of(error: BaseException) -> dict[str, Any]:
    return {key: value for key, value in vars(error).items() if not key.startswith("_")}


def over_the_wire(error: BaseException) -> AutonomyError:
    """Encode as an ERROR frame, decode the bytes, rebuild the exception."""
    frame = decode(encode_error(5, error))
    assert frame[:3] == [VERSION, ERROR, 5]
    return error_from_wire(frame[3], frame[4], frame[5])


@pytest.mark.parametrize("error", WIRE_ERRORS.values(), ids=WIRE_ERRORS.keys())
def test_an_error_crosses_the_wire_with_its_type_message_and_fields(
    error: AutonomyError,
) -> None:
    rebuilt = over_the_wire(error)
    assert type(rebuilt) is type(error)
    assert str(rebuilt) == str(error)
    assert fields_of(rebuilt) == fields_of(error)


def test_every_error_class_with_a_wire_code_is_covered_by_the_round_trip() -> None:
    codes = {error_to_wire(error)[0] for error in WIRE_ERRORS.values()}
    defined = {
        value
        for name, value in vars(_protocol).items()
        if name.startswith("E_") and name != "E_INTERNAL"
    }
    assert codes == defined


def test_an_internal_error_crosses_the_wire_as_an_internal_error() -> None:
    rebuilt = over_the_wire(InternalError("invariant broke"))
    assert type(rebuilt) is InternalError
    assert "invariant broke" in str(rebuilt)


UNCODED: list[BaseException] = [
    AutonomyError("root"),
    ReplyError("replied twice"),
    ConfigError("bad", path="autonomy.yaml", key="pods.0"),
    PeerUnavailableError("tcp://127.0.0.1:1", "connection lost"),
    ReplyTimeoutError("w", 100),
    DiscoveryError("zeroconf failed"),
    ModelError("the endpoint answered 500"),
    ModelTimeoutError("no answer in 30 s"),
    AgentError("max_iterations reached"),
    KeyError("not ours"),
    RuntimeError("not ours either"),
]


@pytest.mark.parametrize("error", UNCODED, ids=lambda error: type(error).__name__)
def test_an_error_without_a_wire_code_arrives_as_an_internal_error_naming_its_type(
    error: BaseException,
) -> None:
    rebuilt = over_the_wire(error)
    assert type(rebuilt) is InternalError
    assert type(error).__name__ in str(rebuilt)
    assert str(error) in str(rebuilt)


def test_every_error_class_of_autonomy_is_either_coded_or_known_to_be_uncoded() -> None:
    classes = {
        obj
        for name, obj in vars(_errors).items()
        if isinstance(obj, type) and issubclass(obj, AutonomyError) and not name.startswith("_")
    }
    covered = {type(error) for error in WIRE_ERRORS.values()} | {InternalError}
    covered |= {type(error) for error in UNCODED if isinstance(error, AutonomyError)}
    assert classes == covered


WIRE_CODES = {value for name, value in vars(_protocol).items() if name.startswith("E_")}
UNKNOWN_CODES = [0, max(WIRE_CODES - {_protocol.E_INTERNAL}) + 1, 98, 100, 2**32, U64]


def test_the_unknown_codes_below_are_really_unknown() -> None:
    assert not WIRE_CODES & set(UNKNOWN_CODES)


@pytest.mark.parametrize("code", UNKNOWN_CODES)
def test_an_unknown_error_code_gives_a_generic_autonomy_error(code: int) -> None:
    error = error_from_wire(code, "something new", {"anything": [1, 2]})
    assert type(error) is AutonomyError
    assert f"code {code}" in str(error)
    assert "something new" in str(error)


def test_error_fields_of_the_wrong_type_do_not_break_the_rebuild() -> None:
    error = error_from_wire(
        _protocol.E_WORKER_ERROR,
        "m",
        {"worker": 5, "node": None, "remote_type": ["x"], "remote_message": b"raw"},
    )
    assert isinstance(error, WorkerError)
    assert (error.worker, error.node, error.remote_type) == ("5", "None", "['x']")
    assert error.remote_traceback == ""
    too_large = error_from_wire(_protocol.E_MESSAGE_TOO_LARGE, "m", {"size": "big", "limit": True})
    assert isinstance(too_large, MessageTooLargeError)
    assert (too_large.size, too_large.limit) == (0, 0)


@quick
@given(
    code=st.integers(0, U64),
    message=st.text(),
    fields=st.dictionaries(st.text(max_size=10), RESULT_VALUES, max_size=6),
)
def test_error_from_wire_always_builds_an_autonomy_error(
    code: int, message: str, fields: dict[str, Any]
) -> None:
    assert isinstance(error_from_wire(code, message, fields), AutonomyError)


def test_a_batch_of_small_frames_may_exceed_a_small_frame_limit_but_one_big_frame_may_not() -> None:
    from autonomy._protocol import BATCH_BYTES, split

    limit = 8 * 1024
    frames = [encode_request(i, "w", "x" * 1000, 100) for i in range(1, 21)]
    batch = b"".join(frames)
    assert limit < len(batch) <= BATCH_BYTES
    parsed, error = split(batch, limit)
    assert error is None
    assert [frame[2] for frame in parsed] == list(range(1, 21))
    _, error = split(encode_request(1, "w", "x" * (limit + 1), 100), limit)
    assert error is not None
    assert "exceeds the limit" in str(error)


def test_the_readme_states_the_message_limit_the_code_enforces() -> None:
    from autonomy._protocol import MAX_FRAME_BYTES, check_message

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    limit = MAX_FRAME_BYTES - ENVELOPE_OVERHEAD
    assert limit == 16 * 1024 * 1024 - 1024
    assert f"{limit:,} bytes" in readme
    assert "16 MiB - 1 KiB" in readme
    check_message("x" * limit, MAX_FRAME_BYTES)
    with pytest.raises(MessageTooLargeError) as caught:
        check_message("x" * (limit + 1), MAX_FRAME_BYTES)
    assert caught.value.limit == limit
