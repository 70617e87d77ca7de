"""Agents on real nodes, against the scripted OpenAI-compatible server of llm_server.py: the
answer, plain-text senders, the tool loop (plain and streamed), limits, model failures over
real HTTP (500, 429 with Retry-After, a dropped connection, nonsense, a slow server), memory,
and an agent started on a runner in another process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from autonomy import (
    Agent,
    AgentError,
    MessageTypeError,
    Model,
    ModelError,
    ModelTimeoutError,
    Node,
    ProtocolError,
    ReplyTimeoutError,
    WorkerError,
    WorkerExistsError,
    WorkerNotFoundError,
    _model,
)
from autonomy._agent import AgentReference, ConversationMessage, TextContent, trim
from autonomy._model import ToolCall

from . import workers
from .conftest import Runner, bounded
from .llm_server import (
    ScriptedServer,
    answer,
    drop,
    held,
    raw,
    slow,
    status,
    stream,
    tool_call,
)

INSTRUCTIONS = "You answer in one sentence."


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    """A scripted server on 127.0.0.1 (closed, its threads joined, at teardown)."""
    monkeypatch.setattr(_model, "INITIAL_BACKOFF_S", 0.01)
    monkeypatch.delenv("AUTONOMY_MODEL_ALIASES", raising=False)
    server = ScriptedServer()
    try:
        yield server
    finally:
        server.close()


def model_of(llm: ScriptedServer, **options: Any) -> Model:
    return Model("scripted", base_url=llm.url, **options)


async def start(node: Node, llm: ScriptedServer, **options: Any) -> AgentReference:
    options.setdefault("model", model_of(llm))
    return await bounded(Agent.start(node, INSTRUCTIONS, **options))


def roles(messages: list[ConversationMessage]) -> list[str]:
    return [message.role for message in messages]


def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


async def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def broken(reason: str) -> str:
    """Always fails."""
    raise ValueError(reason)


# -- answers --------------------------------------------------------------------------------


async def test_an_agent_answers_with_the_models_text_as_its_first_message(node, llm) -> None:
    llm.script(answer("Flask is a web framework."))
    agent = await start(node, llm)
    messages = await bounded(agent.send("Analyze pallets/flask"))
    assert messages == [ConversationMessage("assistant", TextContent("Flask is a web framework."))]
    assert str(messages[0].content) == "Flask is a web framework."
    (request,) = llm.requests
    assert request["model"] == "scripted"
    assert request["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "Analyze pallets/flask"},
    ]
    assert "tools" not in request  # no tool behind the user's back


async def test_any_worker_sending_plain_text_gets_the_answers_text(node, llm) -> None:
    llm.script(answer("plain answer"))
    agent = await start(node, llm)
    reply = await node.send_and_receive(agent.name, "hello", timeout=10_000)
    assert reply == "plain answer"
    assert llm.requests[0]["messages"][-1] == {"role": "user", "content": "hello"}


async def test_send_message_returns_a_reference_whose_receive_gives_the_messages(node, llm) -> None:
    llm.script(answer("later"))
    agent = await start(node, llm)
    receiver = await agent.send_message("Analyze psf/requests")
    messages = await receiver.receive_message(timeout=10_000)
    assert str(messages[0].content) == "later"
    assert "done" in repr(receiver)


async def test_what_a_send_message_met_is_raised_by_receive_message(node) -> None:
    receiver = await AgentReference(node, "nobody").send_message("hello?")
    with pytest.raises(WorkerNotFoundError):
        await receiver.receive_message(timeout=10_000)


async def test_a_receive_that_times_out_leaves_the_request_running(node, llm) -> None:
    llm.script(held(answer("slow answer")))
    agent = await start(node, llm)
    receiver = await agent.send_message("take your time")
    with pytest.raises(ReplyTimeoutError):
        await receiver.receive_message(timeout=50)
    assert "pending" in repr(receiver)
    llm.release()
    assert str((await receiver.receive_message(timeout=10_000))[0].content) == "slow answer"


# -- tools ----------------------------------------------------------------------------------


async def test_the_tool_loop_runs_what_the_model_asks_and_feeds_the_results_back(node, llm) -> None:
    llm.script(
        answer(
            tool_calls=[
                tool_call("weather", {"city": "Oslo"}, "c1"),
                tool_call("add", {"a": 2, "b": 3}, "c2"),
            ]
        ),
        answer("Sunny, and 5."),
    )
    agent = await start(node, llm, tools=[weather, add])
    messages = await bounded(agent.send("weather in Oslo, and 2 + 3?"))
    assert roles(messages) == ["assistant", "tool", "tool", "assistant"]
    assert messages[0].tool_calls == (
        ToolCall("c1", "weather", '{"city": "Oslo"}'),
        ToolCall("c2", "add", '{"a": 2, "b": 3}'),
    )
    assert [(m.tool_call_id, m.name, str(m.content)) for m in messages[1:3]] == [
        ("c1", "weather", "sunny in Oslo"),
        ("c2", "add", "5"),
    ]
    assert str(messages[-1].content) == "Sunny, and 5."
    first, second = llm.requests
    assert [tool["function"]["name"] for tool in first["tools"]] == ["weather", "add"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert second["messages"][2]["tool_calls"][0] == {
        "id": "c1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
    }
    assert second["messages"][3:] == [
        {"role": "tool", "content": "sunny in Oslo", "tool_call_id": "c1"},
        {"role": "tool", "content": "5", "tool_call_id": "c2"},
    ]


async def test_streamed_tool_calls_are_assembled_and_run(node, llm) -> None:
    llm.script(
        stream(tool_calls=[tool_call("add", {"a": 40, "b": 2}, "s1")]),
        stream("The answer is 42."),
    )
    agent = await start(node, llm, model=model_of(llm, stream=True), tools=[add])
    messages = await bounded(agent.send("40 + 2?"))
    assert [str(m.content) for m in messages] == ["", "42", "The answer is 42."]
    assert all(request["stream"] is True for request in llm.requests)


async def test_a_tool_that_raises_or_does_not_exist_is_reported_to_the_model_as_text(
    node, llm
) -> None:
    llm.script(
        answer(
            tool_calls=[
                tool_call("broken", {"reason": "disk full"}, "c1"),
                tool_call("missing", {}, "c2"),
                tool_call("add", "{not json", "c3"),
            ]
        ),
        answer("Sorry, the tools failed."),
    )
    agent = await start(node, llm, tools=[broken, add])
    messages = await bounded(agent.send("try"))
    assert [str(m.content) for m in messages[1:4]] == [
        "error: ValueError: disk full",
        "error: LookupError: there is no tool named 'missing'",
        "error: ValueError: the arguments are not JSON: '{not json'",
    ]
    assert str(messages[-1].content) == "Sorry, the tools failed."


async def test_a_model_that_keeps_calling_tools_stops_at_max_iterations(node, llm) -> None:
    loop_call = answer(tool_calls=[tool_call("add", {"a": 1, "b": 1})])
    llm.script(loop_call, loop_call)
    agent = await start(node, llm, tools=[add], max_iterations=2)
    with pytest.raises(AgentError, match="max_iterations=2"):
        await bounded(agent.send("loop"))
    assert len(llm.requests) == 2
    llm.script(answer("back to normal"))
    assert str((await bounded(agent.send("hi")))[0].content) == "back to normal"


async def test_a_turn_stops_at_max_execution_time_and_the_agent_goes_on(node, llm) -> None:
    llm.script(slow(10, answer("too late")), answer("in time"))
    agent = await start(node, llm, max_execution_time=300)
    with pytest.raises(AgentError, match="max_execution_time=300 ms"):
        await bounded(agent.send("slow"))
    assert str((await bounded(agent.send("again")))[0].content) == "in time"


# -- the model failing, over real HTTP ------------------------------------------------------


async def test_a_server_error_reaches_the_sender_as_a_model_error_and_the_agent_goes_on(
    node, llm
) -> None:
    llm.script(status(500, "the GPU caught fire"), status(500, "still on fire"), answer("ok"))
    agent = await start(node, llm, model=model_of(llm, max_retries=0))
    with pytest.raises(ModelError, match="answered 500: the GPU caught fire") as caught:
        await bounded(agent.send("hi"))
    assert isinstance(caught.value.__cause__, WorkerError)
    with pytest.raises(WorkerError) as plain:
        await node.send_and_receive(agent.name, "hi", timeout=10_000)
    assert plain.value.remote_type == "ModelError"
    assert "still on fire" in plain.value.remote_message
    assert str((await bounded(agent.send("hi")))[0].content) == "ok"


async def test_a_429_with_retry_after_is_waited_out(node, llm) -> None:
    llm.script(status(429, "rate limited", {"Retry-After": "0.1"}), answer("after the wait"))
    agent = await start(node, llm)
    assert str((await bounded(agent.send("hi")))[0].content) == "after the wait"
    assert len(llm.requests) == 2


async def test_a_dropped_connection_is_retried(node, llm) -> None:
    llm.script(drop(), answer("second try"))
    agent = await start(node, llm)
    assert str((await bounded(agent.send("hi")))[0].content) == "second try"
    assert len(llm.requests) == 2


async def test_nonsense_from_the_server_is_a_model_error(node, llm) -> None:
    llm.script(raw(b"<html>it works!</html>", "text/html"))
    agent = await start(node, llm)
    with pytest.raises(ModelError, match="not a chat completion"):
        await bounded(agent.send("hi"))


async def test_a_slow_model_is_a_model_timeout_error(node, llm) -> None:
    llm.script(slow(10, answer("too late")))
    agent = await start(node, llm, model=model_of(llm, request_timeout=200))
    with pytest.raises(asyncio.TimeoutError) as caught:
        await bounded(agent.send("hi"))
    assert type(caught.value) is ModelTimeoutError
    assert "within 200 ms" in str(caught.value)


# -- memory ---------------------------------------------------------------------------------


async def test_memory_is_kept_per_scope_and_conversation(node, llm) -> None:
    llm.script(answer("one"), answer("two"), answer("three"), answer("four"))
    agent = await start(node, llm)
    await bounded(agent.send("first", scope="alice", conversation="c1"))
    await bounded(agent.send("second", scope="alice", conversation="c1"))
    await bounded(agent.send("other", scope="alice", conversation="c2"))
    await bounded(agent.send("bob's", scope="bob", conversation="c1"))
    contents = [[m["content"] for m in request["messages"][1:]] for request in llm.requests]
    assert contents == [
        ["first"],
        ["first", "one", "second"],
        ["other"],
        ["bob's"],
    ]


async def test_a_failed_turn_leaves_memory_as_it_was(node, llm) -> None:
    llm.script(answer("one"), status(400, "bad"), answer("two"))
    agent = await start(node, llm)
    await bounded(agent.send("first"))
    with pytest.raises(ModelError):
        await bounded(agent.send("failing"))
    await bounded(agent.send("second"))
    assert [m["content"] for m in llm.requests[-1]["messages"][1:]] == ["first", "one", "second"]


async def test_memory_is_bounded_and_never_starts_with_a_tool_result(node, llm) -> None:
    llm.script(
        answer(tool_calls=[tool_call("add", {"a": 1, "b": 2}, "c1")]),
        answer("3"),
        answer("fine"),
    )
    agent = await start(node, llm, tools=[add], max_messages_in_short_term_memory=2)
    await bounded(agent.send("1 + 2?"))  # user, assistant(call), tool, assistant: 4 messages
    await bounded(agent.send("ok?"))
    # The last 2 would start with the tool's result: it goes with its call.
    assert [m["role"] for m in llm.requests[-1]["messages"]] == ["system", "assistant", "user"]


def message(role: Any, text: str = "") -> ConversationMessage:
    calls = (ToolCall("c", "f", "{}"),) if role == "call" else ()
    return ConversationMessage("assistant" if role == "call" else role, TextContent(text), calls)


@pytest.mark.parametrize(
    ("limit", "kept"),
    [
        (10, ["user", "call", "tool", "tool", "assistant", "user", "assistant"]),
        (6, ["call", "tool", "tool", "assistant", "user", "assistant"]),
        (5, ["assistant", "user", "assistant"]),  # two results cut from their call: dropped
        (4, ["assistant", "user", "assistant"]),  # one result cut from its call: dropped
        (1, ["assistant"]),
    ],
)
def test_trimming_keeps_a_tool_call_with_its_results(limit: int, kept: list[str]) -> None:
    history = [
        message(r) for r in ("user", "call", "tool", "tool", "assistant", "user", "assistant")
    ]
    trimmed = trim(history, limit)
    assert ["call" if m.tool_calls else m.role for m in trimmed] == kept
    assert len(trimmed) <= limit


async def test_one_turn_runs_at_a_time(node, llm) -> None:
    llm.script(slow(0.3, answer("first answer")), answer("second answer"))
    agent = await start(node, llm)
    first, second = await bounded(asyncio.gather(agent.send("one"), agent.send("two")))
    assert [str(first[0].content), str(second[0].content)] == ["first answer", "second answer"]
    # The second turn began after the first ended: it saw the first answer.
    assert [m["content"] for m in llm.requests[1]["messages"][1:]] == ["one", "first answer", "two"]


# -- starting, stopping, references ---------------------------------------------------------


async def test_agents_get_unique_valid_names_unless_named(node, llm) -> None:
    first, second = await start(node, llm), await start(node, llm)
    assert first.name != second.name
    assert first.name.startswith("agent-")
    names = {worker["name"] for worker in await node.list_workers()}
    assert {first.name, second.name} <= names
    named = await start(node, llm, name="analyst", timeout=5000)
    assert named.name == "analyst"
    assert repr(named) == f"<AgentReference 'analyst' on {node.name!r}>"
    with pytest.raises(WorkerExistsError):
        await start(node, llm, name="analyst")


async def test_a_stopped_agent_is_gone(node, llm) -> None:
    agent = await start(node, llm)
    await bounded(Agent.stop(node, agent.name))
    with pytest.raises(WorkerNotFoundError):
        await bounded(agent.send("hi"))
    with pytest.raises(WorkerNotFoundError):
        await bounded(Agent.stop(node, agent.name))


async def test_a_reference_to_a_worker_that_is_not_an_agent_says_so(node) -> None:
    await node.start_worker("echoer", workers.Echoer())
    with pytest.raises(ProtocolError, match="'echoer' is not an agent"):
        await bounded(AgentReference(node, "echoer").send("hi"))


async def test_bad_arguments_are_refused_before_anything_is_sent(node, llm) -> None:
    agent = await start(node, llm)
    with pytest.raises(MessageTypeError, match="message must be str, got int"):
        await agent.send(42)  # type: ignore[arg-type]
    with pytest.raises(MessageTypeError, match="scope must be str"):
        await agent.send_message("hi", scope=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        await agent.send("hi", timeout=0)
    with pytest.raises(TypeError, match="instructions"):
        await Agent.start(node, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a Model"):
        await Agent.start(node, "x", model="gpt-4o")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_iterations"):
        await Agent.start(node, "x", max_iterations=0)
    with pytest.raises(ValueError, match="max_execution_time"):
        await Agent.start(node, "x", max_execution_time=-1)
    with pytest.raises(ValueError, match="timeout"):
        await Agent.start(node, "x", timeout=0)
    with pytest.raises(TypeError, match="same name"):
        await Agent.start(node, "x", tools=[add, add])
    assert llm.requests == []
    assert len(await node.list_workers()) == 1


async def test_an_agent_is_a_worker_any_node_can_start(node, llm) -> None:
    llm.script(answer("hi there"))
    agent = Agent(INSTRUCTIONS, model=model_of(llm))
    assert repr(agent) == "<Agent model='scripted' tools=0 conversations=0>"
    await node.start_worker("direct", agent)
    assert await node.send_and_receive("direct", "hello", timeout=10_000) == "hi there"
    assert agent.memory() == [
        ConversationMessage("user", TextContent("hello")),
        ConversationMessage("assistant", TextContent("hi there")),
    ]


async def test_an_agent_started_on_a_runner_uses_the_runners_endpoint_aliases_and_tools(
    node, llm, runner_factory: Callable[..., Awaitable[Runner]]
) -> None:
    runner = await runner_factory(
        env={"OPENAI_BASE_URL": llm.url, "AUTONOMY_MODEL_ALIASES": "guide-model=served-model"}
    )
    remote = await node.connect(runner.endpoint, timeout=10_000)

    def where() -> int:
        """The process the tool runs in."""
        import os

        return os.getpid()

    llm.script(answer(tool_calls=[tool_call("where", {})]), answer("done remotely"))
    agent = await bounded(
        Agent.start(remote, INSTRUCTIONS, model=Model("guide-model"), tools=[where])
    )
    messages = await bounded(agent.send("where are you?"))
    assert str(messages[-1].content) == "done remotely"
    assert json.loads(str(messages[1].content)) == runner.pid
    assert [request["model"] for request in llm.requests] == ["served-model"] * 2
    llm.script(status(401, "no key"))
    with pytest.raises(ModelError, match="answered 401: no key"):
        await bounded(agent.send("again"))
    await bounded(Agent.stop(remote, agent.name))
    assert await bounded(remote.list_workers()) == []
