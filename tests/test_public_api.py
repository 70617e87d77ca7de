"""The public surface of `autonomy`: exactly these names, where they claim to live, and an
error hierarchy that user code written against the builtins can catch."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import pickle
from typing import Any

import pytest

import autonomy
from autonomy import (
    AgentError,
    AutonomyError,
    ConfigError,
    Context,
    DiscoveryError,
    InternalError,
    MailboxFullError,
    MessageTooLargeError,
    MessageTypeError,
    ModelError,
    ModelTimeoutError,
    Node,
    NodeClosedError,
    NoReplyError,
    PeerUnavailableError,
    ProtocolError,
    RemoteNode,
    ReplyError,
    ReplyTimeoutError,
    SecurityError,
    Worker,
    WorkerError,
    WorkerExistsError,
    WorkerNotFoundError,
    WorkerStartError,
    WorkerStoppedError,
)

EXPECTED_ALL = {
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
}
"""Adding a public name is a decision: make it here too."""


def test_all_is_exactly_the_curated_public_surface() -> None:
    assert set(autonomy.__all__) == EXPECTED_ALL
    assert len(autonomy.__all__) == len(set(autonomy.__all__)), "a name is listed twice"


@pytest.mark.parametrize("name", sorted(EXPECTED_ALL))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(autonomy, name) is not None


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from autonomy import *", namespace)
    assert set(namespace) - {"__builtins__"} == EXPECTED_ALL


@pytest.mark.parametrize(
    "name", sorted(name for name in EXPECTED_ALL if isinstance(getattr(autonomy, name), type))
)
def test_every_public_class_says_it_lives_in_autonomy(name: str) -> None:
    cls = getattr(autonomy, name)
    assert cls.__module__ == "autonomy"
    assert cls.__qualname__ == name
    assert cls.__doc__, f"{name} has no docstring"


def test_the_version_is_a_string() -> None:
    assert isinstance(autonomy.__version__, str)
    assert autonomy.__version__


def test_the_default_timeout_is_finite_positive_milliseconds() -> None:
    timeout = autonomy.DEFAULT_TIMEOUT_MS
    assert isinstance(timeout, int)
    assert not isinstance(timeout, bool)
    assert timeout > 0
    assert math.isfinite(timeout)


def test_the_library_logger_is_silent_unless_the_program_configures_logging() -> None:
    handlers = logging.getLogger("autonomy").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


def test_a_worker_is_any_object_with_an_async_handle_message() -> None:
    class Echoer:
        async def handle_message(self, context: Context, message: str) -> None:
            await context.reply(message)

    class NotAWorker:
        async def handle(self, context: Context, message: str) -> None:
            pass

    assert isinstance(Echoer(), Worker)
    assert not isinstance(NotAWorker(), Worker)


@pytest.mark.parametrize("cls", [Context, RemoteNode])
def test_framework_objects_are_final(cls: type) -> None:
    assert getattr(cls, "__final__", False) is True


PUBLIC_NODE_METHODS = [
    "start_worker",
    "stop_worker",
    "list_workers",
    "send_message",
    "send_and_receive",
]


@pytest.mark.parametrize("method", PUBLIC_NODE_METHODS)
def test_a_remote_node_has_the_same_method_as_a_local_node(method: str) -> None:
    local, remote = getattr(Node, method), getattr(RemoteNode, method)
    assert inspect.iscoroutinefunction(local)
    assert inspect.iscoroutinefunction(remote)
    assert inspect.signature(local) == inspect.signature(remote)


def test_both_node_kinds_have_a_name_and_a_frame_limit() -> None:
    for cls in (Node, RemoteNode):
        assert isinstance(inspect.getattr_static(cls, "name"), property)
        assert isinstance(inspect.getattr_static(cls, "max_frame_bytes"), property)


def test_send_and_receive_defaults_to_the_public_default_timeout() -> None:
    for cls in (Node, RemoteNode):
        for method in ("send_and_receive", "send_message"):
            timeout = inspect.signature(getattr(cls, method)).parameters["timeout"]
            assert timeout.default == autonomy.DEFAULT_TIMEOUT_MS


# -- errors ---------------------------------------------------------------------------------

ERROR_CLASSES = sorted(
    (
        obj
        for obj in (getattr(autonomy, name) for name in autonomy.__all__)
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ),
    key=lambda cls: cls.__name__,
)


def test_every_error_of_the_library_is_public() -> None:
    from autonomy import _errors

    defined = {
        obj
        for name, obj in vars(_errors).items()
        if isinstance(obj, type) and issubclass(obj, BaseException) and not name.startswith("_")
    }
    assert defined == set(ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_is_an_autonomy_error_named_error(cls: type[Exception]) -> None:
    assert issubclass(cls, AutonomyError)
    assert issubclass(cls, Exception)
    assert cls.__name__.endswith("Error")


BUILTIN_PARENTS: dict[type[Exception], tuple[type[BaseException], ...]] = {
    MessageTypeError: (TypeError,),
    MessageTooLargeError: (ValueError,),
    WorkerExistsError: (ValueError,),
    WorkerNotFoundError: (LookupError,),
    ReplyError: (RuntimeError,),
    ConfigError: (ValueError,),
    PeerUnavailableError: (ConnectionError, OSError),
    ReplyTimeoutError: (TimeoutError, asyncio.TimeoutError),
    ModelTimeoutError: (TimeoutError, asyncio.TimeoutError),
}


@pytest.mark.parametrize(
    ("cls", "parents"), BUILTIN_PARENTS.items(), ids=lambda v: getattr(v, "__name__", "")
)
def test_an_error_is_also_the_builtin_that_user_code_catches(
    cls: type[Exception], parents: tuple[type[BaseException], ...]
) -> None:
    for parent in parents:
        assert issubclass(cls, parent)


def test_the_timeout_error_is_caught_by_the_guides_except_clause() -> None:
    # The guide's samples spell it asyncio.TimeoutError (an alias of TimeoutError since 3.11).
    with pytest.raises(asyncio.TimeoutError) as caught:
        raise ReplyTimeoutError("echoer", 100)
    assert isinstance(caught.value, ReplyTimeoutError)
    assert caught.value.worker == "echoer"


@pytest.mark.parametrize(
    "cls",
    [
        NodeClosedError,
        WorkerStoppedError,
        SecurityError,
        WorkerError,
        NoReplyError,
        WorkerStartError,
        ProtocolError,
        DiscoveryError,
        InternalError,
        MailboxFullError,
    ],
)
def test_an_error_without_a_builtin_counterpart_is_not_mistaken_for_one(
    cls: type[Exception],
) -> None:
    for builtin in (TypeError, ValueError, LookupError, RuntimeError, OSError, TimeoutError):
        assert not issubclass(cls, builtin)


ERROR_SAMPLES: list[AutonomyError] = [
    AgentError("agent 'a' reached max_iterations=10"),
    AutonomyError("root"),
    ConfigError("must be a list", path="autonomy.yaml", key="pods.0.clones"),
    ConfigError("no file"),
    DiscoveryError("zeroconf failed"),
    InternalError("invariant broke"),
    MailboxFullError("echoer", "node-a", 2000),
    MessageTooLargeError(70_000, 64_512),
    MessageTypeError("message must be str, got int"),
    ModelError("the model endpoint answered 401"),
    ModelTimeoutError("no answer from the model in 30 s"),
    NoReplyError("echoer", "node-a"),
    NodeClosedError("node 'a' is stopped"),
    PeerUnavailableError("'b' at tcp://127.0.0.1:5555", "connection lost"),
    ProtocolError("frame is not valid msgpack"),
    ReplyError("context.reply() called twice for one message"),
    ReplyTimeoutError("echoer", 250.5),
    SecurityError("refused"),
    WorkerError("echoer", "node-a", "ValueError", "bad", "Traceback (most recent call last):\n"),
    WorkerExistsError("echoer", "node-a"),
    WorkerNotFoundError("echoer", "node-a"),
    WorkerStartError("echoer", "node-a", "ModuleNotFoundError: No module named 'x'"),
    WorkerStoppedError("echoer", "node-a"),
]


def test_every_error_class_has_a_pickle_sample() -> None:
    assert {type(error) for error in ERROR_SAMPLES} == set(ERROR_CLASSES)


def public_state(error: BaseException) -> dict[str, Any]:
    return {key: value for key, value in vars(error).items() if not key.startswith("_")}


@pytest.mark.parametrize("error", ERROR_SAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_survives_a_pickle_round_trip_with_its_fields(error: AutonomyError) -> None:
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.args == error.args
        assert public_state(copy) == public_state(error)


def test_structured_errors_carry_their_fields() -> None:
    error = WorkerError("echoer", "node-a", "KeyError", "'x'", "tb")
    assert (error.worker, error.node) == ("echoer", "node-a")
    assert (error.remote_type, error.remote_message, error.remote_traceback) == (
        "KeyError",
        "'x'",
        "tb",
    )
    assert "KeyError" in str(error)
    assert "echoer" in str(error)
    timeout = ReplyTimeoutError("echoer", 250)
    assert (timeout.worker, timeout.timeout_ms) == ("echoer", 250)
    assert "250 ms" in str(timeout)
    config = ConfigError("must be a list", path="autonomy.yaml", key="pods.0")
    assert (config.path, config.key, config.reason) == ("autonomy.yaml", "pods.0", "must be a list")
    assert str(config) == "autonomy.yaml: pods.0: must be a list"
