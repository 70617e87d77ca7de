"""`Model`: request shapes, parsing, retries and error mapping, on an ``httpx.MockTransport``
(no socket: what is sent and what comes back is the subject here; the scripted and the real
servers of test_agent.py and test_real_inference.py test it over HTTP)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import httpx
import pytest

from autonomy import Model, ModelError, ModelTimeoutError, _model
from autonomy._model import Completion, ToolCall, parse_completion, retry_after

Handler = Callable[[httpx.Request], httpx.Response]
MESSAGES = [{"role": "user", "content": "hi"}]


def completion(
    content: str | None = "hello", tool_calls: list[Any] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


class Endpoint:
    """A MockTransport that answers from a list (the last answer repeats) and records."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Endpoint]]:
    """``endpoint(*answers)``: every Model's client goes to a MockTransport answering these."""
    made: list[Endpoint] = []

    def install(*answers: httpx.Response | Exception) -> Endpoint:
        mock = Endpoint(*answers)
        made.append(mock)

        def new_client(request_s: float, connect_s: float) -> httpx.AsyncClient:
            timeout = httpx.Timeout(request_s, connect=connect_s)
            return httpx.AsyncClient(transport=httpx.MockTransport(mock), timeout=timeout)

        monkeypatch.setattr(_model, "new_client", new_client)
        return mock

    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "AUTONOMY_MODEL_ALIASES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_model, "INITIAL_BACKOFF_S", 0.001)
    return install


def ok(body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.Response(200, json=body if body is not None else completion(), **kwargs)


def error(
    code: int, message: str = "nope", headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(code, json={"error": {"message": message}}, headers=headers)


async def complete(model: Model, **kwargs: Any) -> Completion:
    async with asyncio.timeout(10):
        return await model.complete_chat(MESSAGES, **kwargs)


# -- what is sent ---------------------------------------------------------------------------


async def test_a_request_posts_the_model_the_messages_and_the_parameters(endpoint) -> None:
    mock = endpoint(ok())
    model = Model("gpt-x", base_url="http://llm.test/v1/", temperature=0.2, max_tokens=50)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert (await complete(model, tools=tools)).content == "hello"
    (request,) = mock.requests
    assert request.method == "POST"
    assert str(request.url) == "http://llm.test/v1/chat/completions"
    assert mock.bodies() == [
        {
            "model": "gpt-x",
            "messages": MESSAGES,
            "temperature": 0.2,
            "max_tokens": 50,
            "tools": tools,
        }
    ]
    assert "authorization" not in request.headers


async def test_no_tools_sends_no_tools_field(endpoint) -> None:
    mock = endpoint(ok())
    await complete(Model("m", base_url="http://llm.test"))
    assert "tools" not in mock.bodies()[0]


async def test_the_key_is_a_bearer_token_from_the_argument_or_the_environment(
    endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    mock = endpoint(ok())
    await complete(Model("m", base_url="http://llm.test", api_key="sk-arg"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    await complete(Model("m", base_url="http://llm.test"))
    assert [r.headers["authorization"] for r in mock.requests] == ["Bearer sk-arg", "Bearer sk-env"]


async def test_the_endpoint_is_the_argument_else_openai_base_url_else_openai(
    endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    mock = endpoint(ok())
    await complete(Model("m"))  # the mock answers: nothing leaves the machine
    monkeypatch.setenv("OPENAI_BASE_URL", "http://local.test:11434/v1")
    await complete(Model("m"))
    await complete(Model("m", base_url="http://arg.test/v1"))
    assert [str(r.url) for r in mock.requests] == [
        "https://api.openai.com/v1/chat/completions",
        "http://local.test:11434/v1/chat/completions",
        "http://arg.test/v1/chat/completions",
    ]


async def test_an_alias_maps_the_guides_model_name_to_the_served_one(
    endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    mock = endpoint(ok())
    monkeypatch.setenv("AUTONOMY_MODEL_ALIASES", "nova-micro-v1=llama3.2, other=x")
    model = Model("nova-micro-v1", base_url="http://llm.test")
    await complete(model)
    assert mock.bodies()[0]["model"] == "llama3.2"
    assert model.served_name == "llama3.2"
    assert model.name == "nova-micro-v1"


# -- what comes back ------------------------------------------------------------------------


def test_a_completion_with_tool_calls_is_parsed() -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "now", "arguments": {"tz": "UTC"}}},
    ]
    parsed = parse_completion(json.dumps(completion(None, calls)))
    assert parsed == Completion(
        "", (ToolCall("c1", "add", '{"a": 1}'), ToolCall("c2", "now", '{"tz": "UTC"}')), "stop"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b"[]",
        b'{"choices": []}',
        b'{"choices": [{"text": "legacy completion"}]}',
        b'{"choices": [{"message": {"content": 42}}]}',
        b'{"choices": [{"message": {"tool_calls": [{"function": {}}]}}]}',
        b'{"choices": [{"message": {"tool_calls": 7}}]}',
    ],
)
async def test_an_answer_that_is_not_a_chat_completion_is_a_model_error(endpoint, body) -> None:
    mock = endpoint(httpx.Response(200, content=body))
    with pytest.raises(ModelError, match="not a chat completion"):
        await complete(Model("m", base_url="http://llm.test"))
    assert len(mock.requests) == 1  # nonsense is not retried


async def test_a_streamed_answer_is_assembled_text_and_tool_calls(endpoint) -> None:
    chunks = [
        {"choices": [{"delta": {"role": "assistant", "content": "Let me "}}]},
        {"choices": [{"delta": {"content": "check."}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c1",
                                "function": {"name": "look", "arguments": '{"q": '},
                            }
                        ]
                    }
                }
            ]
        },
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 1, "id": "c2", "function": {"name": "now", "arguments": ""}}
                        ]
                    }
                }
            ]
        },
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ]
    text = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    mock = endpoint(
        httpx.Response(200, content=text, headers={"content-type": "text/event-stream"})
    )
    answer = await complete(Model("m", base_url="http://llm.test", stream=True))
    assert mock.bodies()[0]["stream"] is True
    assert answer == Completion(
        "Let me check.",
        (ToolCall("c1", "look", '{"q": "x"}'), ToolCall("c2", "now", "{}")),
        "tool_calls",
    )


@pytest.mark.parametrize(
    "event",
    [
        "{oops",
        '{"choices": [{"delta": "text"}]}',
        '{"choices": [{"delta": {"tool_calls": ["x"]}}]}',
        '{"choices": [{"delta": {"tool_calls": [{"function": {"name": 3}}]}}]}',
    ],
)
async def test_a_stream_of_nonsense_is_a_model_error(endpoint, event: str) -> None:
    headers = {"content-type": "text/event-stream"}
    endpoint(httpx.Response(200, content=f"data: {event}\n\n", headers=headers))
    with pytest.raises(ModelError, match="not a chunk"):
        await complete(Model("m", base_url="http://llm.test", stream=True))


# -- failures, retries ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
async def test_a_refusal_is_a_model_error_at_once_with_the_servers_message(endpoint, code) -> None:
    mock = endpoint(error(code, "model 'm' does not exist"))
    with pytest.raises(ModelError, match=f"answered {code}: model 'm' does not exist") as caught:
        await complete(Model("m", base_url="http://llm.test"))
    assert not isinstance(caught.value, ModelTimeoutError)
    assert len(mock.requests) == 1


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503])
async def test_a_transient_failure_is_retried_then_answered(endpoint, code) -> None:
    mock = endpoint(error(code), ok())
    assert (await complete(Model("m", base_url="http://llm.test"))).content == "hello"
    assert len(mock.requests) == 2


async def test_retries_are_bounded_by_max_retries(endpoint) -> None:
    mock = endpoint(error(503, "overloaded"))
    with pytest.raises(ModelError, match=r"answered 503: overloaded \(after 4 attempts\)"):
        await complete(Model("m", base_url="http://llm.test", max_retries=3))
    assert len(mock.requests) == 4
    mock.requests.clear()
    with pytest.raises(ModelError, match=r"after 1 attempts"):
        await complete(Model("m", base_url="http://llm.test", max_retries=0))
    assert len(mock.requests) == 1


async def test_backoff_grows_with_jitter_and_is_logged(
    endpoint, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_model, "INITIAL_BACKOFF_S", 0.01)
    endpoint(error(500))
    with caplog.at_level(logging.WARNING, "autonomy.model"), pytest.raises(ModelError):
        await complete(Model("m", base_url="http://llm.test", max_retries=3))
    delays = [record.args[3] for record in caplog.records]  # type: ignore[index]
    assert len(delays) == 3
    for attempt, delay in enumerate(delays):
        assert 0.01 * 2**attempt * 0.5 <= delay <= 0.01 * 2**attempt


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "0.05"}, 0.05),
        ({"retry-after-ms": "30"}, 0.03),
        ({"retry-after-ms": "30", "retry-after": "5"}, 0.03),
    ],
)
async def test_a_429_waits_as_long_as_retry_after_says(
    endpoint, caplog: pytest.LogCaptureFixture, headers: dict[str, str], expected: float
) -> None:
    endpoint(error(429, "slow down", headers), ok())
    with caplog.at_level(logging.WARNING, "autonomy.model"):
        started = time.monotonic()
        assert (await complete(Model("m", base_url="http://llm.test"))).content == "hello"
    assert time.monotonic() - started >= expected
    (record,) = caplog.records
    assert record.args[3] == pytest.approx(expected)  # type: ignore[index]


async def test_a_retry_after_past_the_bound_fails_at_once_instead_of_waiting(endpoint) -> None:
    mock = endpoint(error(429, "quota", {"retry-after": "3600"}), ok())
    with pytest.raises(ModelError, match="retry after 3600 s"):
        await complete(Model("m", base_url="http://llm.test"))
    assert len(mock.requests) == 1


def test_retry_after_reads_seconds_milliseconds_and_http_dates() -> None:
    assert retry_after({}) is None
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "-3"}) == 0.0
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "soon"}) is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= (retry_after({"retry-after": in_ten}) or 0) <= 10


async def test_a_connection_error_is_retried_then_a_model_error(endpoint) -> None:
    mock = endpoint(httpx.ConnectError("connection refused"))
    with pytest.raises(ModelError, match=r"cannot reach .*connection refused \(after 3 attempts\)"):
        await complete(Model("m", base_url="http://llm.test"))
    assert len(mock.requests) == 3
    mock = endpoint(httpx.RemoteProtocolError("peer closed connection"), ok())
    assert (await complete(Model("m", base_url="http://llm.test"))).content == "hello"
    assert len(mock.requests) == 2


async def test_a_read_timeout_is_a_model_timeout_error_not_retried(endpoint) -> None:
    mock = endpoint(httpx.ReadTimeout("timed out"), ok())
    with pytest.raises(asyncio.TimeoutError) as caught:
        await complete(Model("m", base_url="http://llm.test", request_timeout=1500))
    assert isinstance(caught.value, ModelTimeoutError)
    assert "within 1500 ms" in str(caught.value)
    assert len(mock.requests) == 1


# -- the object -----------------------------------------------------------------------------


async def test_connected_shares_one_client_and_closes_it_after(endpoint) -> None:
    endpoint(ok())
    model = Model("m", base_url="http://llm.test")
    async with model.connected():
        await complete(model)
        client = model._client
        await complete(model)
        assert model._client is client
        assert "connected" in repr(model)
    assert model._client is None
    assert client is not None
    assert client.is_closed
    await complete(model)  # a call on its own makes and closes its own
    assert model._client is None


async def test_a_used_model_pickles_without_its_client_and_resolves_again_where_it_lands(
    endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint(ok())
    monkeypatch.setenv("OPENAI_BASE_URL", "http://here.test/v1")
    model = Model("m", max_retries=1, temperature=0)
    async with model.connected():
        await complete(model)
        copies = [pickle.loads(pickle.dumps(model)), cloudpickle.loads(cloudpickle.dumps(model))]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://there.test/v1")
    for copy in copies:
        assert copy._client is None
        assert (copy.name, copy.max_retries, copy.params) == ("m", 1, {"temperature": 0})
        assert repr(copy) == "<Model 'm' (resolved on use) idle>"
        copy._resolve()
        assert repr(copy) == "<Model 'm' http://there.test/v1 idle>"


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((), {}, TypeError),
        (("",), {}, TypeError),
        ((42,), {}, TypeError),
        (("m",), {"max_retries": -1}, ValueError),
        (("m",), {"max_retries": True}, ValueError),
        (("m",), {"request_timeout": 0}, ValueError),
        (("m",), {"connect_timeout": "10"}, TypeError),
        (("m",), {"messages": []}, TypeError),
        (("m",), {"model": "other"}, TypeError),
    ],
)
def test_bad_arguments_are_refused_when_the_model_is_made(args, kwargs, error) -> None:
    with pytest.raises(error):
        Model(*args, **kwargs)


# -- layering -------------------------------------------------------------------------------


def test_httpx_is_imported_only_by_the_model_module() -> None:
    from .test_imports import SOURCES, imported_modules, relative, top_level

    importers = {relative(path) for path in SOURCES if "httpx" in top_level(imported_modules(path))}
    assert importers == {"autonomy/_model.py"}


def test_importing_autonomy_does_not_import_httpx() -> None:
    """httpx is imported on a model's first request: every node of a zone imports autonomy."""
    code = "import sys, autonomy; print('httpx' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
