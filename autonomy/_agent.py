"""Agents: workers whose behaviour comes from a language model, with memory and tools.

`Agent` is the worker: one turn at a time (the actor contract), memory per
``(scope, conversation)``, and the tool loop (call the model, run the tools it asks for, feed
their results back, until it answers or a limit is hit). `Agent.start` starts one on any node,
local or remote (it ships like any worker, its `Model` without an HTTP client), and returns an
`AgentReference` to talk to it. Only the public node API is used: ``start_worker``,
``stop_worker``, ``send_and_receive``.

What travels, over the plain-text messaging of the nodes:

- `AgentReference` sends a JSON envelope
  ``{"autonomy.agent": 1, "message": str, "scope": str, "conversation": str}``; the agent
  answers ``{"autonomy.agent": 1, "messages": [message, ...]}``, the messages its turn added
  after the user's (tool calls and results, then the answer), each
  ``{"role", "content", "tool_calls"?: [{"id", "name", "arguments"}], "tool_call_id"?,
  "name"?}``.
- Anything else is plain text, answered with the answer's text, in the default conversation
  (scope and conversation ``""``): any worker can ``send_and_receive`` an agent.
- A turn that fails raises in the agent's handler: the sender gets a `WorkerError` whose
  ``remote_type`` is ``AgentError``, ``ModelError`` or ``ModelTimeoutError``, and
  `AgentReference` raises that typed error again. The agent goes on with the next message, its
  memory as before the failed turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, final

from ._base import NodeInterface, timeout_seconds
from ._errors import (
    AgentError,
    AutonomyError,
    MessageTypeError,
    ModelError,
    ModelTimeoutError,
    ProtocolError,
    ReplyTimeoutError,
    WorkerError,
)
from ._model import Model, ToolCall, check_count
from ._tools import Tool
from ._worker import Context

__all__ = ["Agent", "AgentReference", "ConversationMessage", "ReceiveReference", "TextContent"]

log = logging.getLogger("autonomy.agent")

DEFAULT_MODEL: Final = "gpt-4o-mini"
"""The model of an agent started without one (``AUTONOMY_MODEL_ALIASES`` can map it)."""
DEFAULT_MAX_ITERATIONS: Final = 10
"""Model calls in one turn; a model that still calls tools after that fails the turn."""
DEFAULT_MAX_EXECUTION_TIME_MS: Final = 600_000
"""One turn's time limit, tools included."""
DEFAULT_MAX_MESSAGES: Final = 1000
"""Messages kept per conversation (``max_messages_in_short_term_memory``)."""
DEFAULT_REPLY_TIMEOUT_MS: Final = DEFAULT_MAX_EXECUTION_TIME_MS + 30_000
"""A sender's default wait: longer than a turn may run, so that an agent that hits its own
limit is heard (`AgentError`) rather than timed out."""
MAX_CONVERSATIONS: Final = 1000
"""Conversations an agent remembers; the least recently used is forgotten first."""
ENVELOPE: Final = "autonomy.agent"
"""The key (and version) that marks a JSON message as an `AgentReference` envelope."""

Role = Literal["system", "user", "assistant", "tool"]
_TYPED_ERRORS: Final[dict[str, type[AutonomyError]]] = {
    "AgentError": AgentError,
    "ModelError": ModelError,
    "ModelTimeoutError": ModelTimeoutError,
}


@dataclass(frozen=True, slots=True)
class TextContent:
    """The text of a message: ``str(content)`` is the text itself."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class ConversationMessage:
    """One message of a conversation: the user's, the model's, or a tool's result."""

    role: Role
    content: TextContent
    tool_calls: tuple[ToolCall, ...] = ()
    """The tools the model asked for (an assistant message)."""
    tool_call_id: str | None = None
    """The call this is the result of (a tool message)."""
    name: str | None = None
    """The tool's name (a tool message)."""

    def to_dict(self) -> dict[str, Any]:
        """The message as JSON-ready data: the agent's reply format."""
        data: dict[str, Any] = {"role": self.role, "content": self.content.text}
        if self.tool_calls:
            data["tool_calls"] = [
                {"id": call.id, "name": call.name, "arguments": call.arguments}
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ConversationMessage:
        """The inverse of `to_dict`.

        Raises:
            ProtocolError: ``data`` is not a message.
        """
        try:
            role = data["role"]
            if role not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"unknown role {role!r}")
            calls = tuple(
                ToolCall(str(call["id"]), str(call["name"]), str(call["arguments"]))
                for call in data.get("tool_calls", ())
            )
            return cls(
                role,
                TextContent(str(data["content"])),
                calls,
                data.get("tool_call_id"),
                data.get("name"),
            )
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"not a conversation message: {str(data)[:200]!r}") from exc

    def to_openai(self) -> dict[str, Any]:
        """The message as the ``/chat/completions`` API spells it."""
        data: dict[str, Any] = {"role": self.role, "content": self.content.text}
        if self.tool_calls:
            data["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        if self.role == "tool":
            data["tool_call_id"] = self.tool_call_id
        return data


def trim(messages: list[ConversationMessage], limit: int) -> list[ConversationMessage]:
    """The last ``limit`` messages at most, never starting with a tool's result (its call was
    cut off): a model's tool call and its results are kept or dropped together."""
    start = max(0, len(messages) - limit)
    while start < len(messages) and messages[start].role == "tool":
        start += 1
    return messages[start:]


@final
class Agent:
    """A worker whose behaviour comes from a language model.

    Start one with `Agent.start` (or ``node.start_worker(name, Agent(...))``) and talk to it
    with the `AgentReference` it returns, or with plain text from any worker.

    Args:
        instructions: the system prompt of every turn.
        model: the model (default ``Model("gpt-4o-mini")``).
        tools: functions the model may call, sync or async, described to it by their type
            hints and docstrings.
        max_iterations: model calls per turn.
        max_execution_time: milliseconds a turn may take, tools included.
        max_messages_in_short_term_memory: messages kept per ``(scope, conversation)``.

    Raises:
        TypeError: ``instructions`` is not a ``str``, ``model`` not a `Model`, or a tool
            cannot be described.
        ValueError: a limit is not positive.
    """

    __slots__ = (
        "_max_execution_s",
        "_memory",
        "instructions",
        "max_iterations",
        "max_messages",
        "model",
        "tools",
    )

    def __init__(
        self,
        instructions: str,
        *,
        model: Model | None = None,
        tools: Sequence[Callable[..., Any]] = (),
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        max_execution_time: float = DEFAULT_MAX_EXECUTION_TIME_MS,
        max_messages_in_short_term_memory: int = DEFAULT_MAX_MESSAGES,
    ) -> None:
        if not isinstance(instructions, str):
            raise TypeError(f"instructions must be str, got {type(instructions).__name__}")
        if model is not None and not isinstance(model, Model):
            raise TypeError(f"model must be a Model, got {type(model).__name__}")
        self.instructions = instructions
        self.model = model if model is not None else Model(DEFAULT_MODEL)
        self.tools = {tool.name: tool for tool in map(Tool, tools or ())}
        if len(self.tools) != len(tools or ()):
            raise TypeError("two tools have the same name")
        self.max_iterations = check_count(max_iterations, "max_iterations", 1)
        self.max_messages = check_count(
            max_messages_in_short_term_memory, "max_messages_in_short_term_memory", 1
        )
        self._max_execution_s = timeout_seconds(max_execution_time, "max_execution_time")
        self._memory: OrderedDict[tuple[str, str], list[ConversationMessage]] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"<Agent model={self.model.name!r} tools={len(self.tools)} "
            f"conversations={len(self._memory)}>"
        )

    def memory(self, scope: str = "", conversation: str = "") -> list[ConversationMessage]:
        """What the agent remembers of a conversation (a copy; empty if none)."""
        return list(self._memory.get((scope, conversation), ()))

    async def handle_message(self, context: Context, message: str) -> None:
        """Run one turn: an envelope from `AgentReference` is answered with the turn's
        messages as JSON, anything else with the answer's text."""
        request = _decode_request(message)
        if request is None:
            turn = await self._turn(context.worker, message, "", "")
            await context.reply(turn[-1].content.text)
        else:
            turn = await self._turn(context.worker, *request)
            messages = [each.to_dict() for each in turn]
            await context.reply(json.dumps({ENVELOPE: 1, "messages": messages}))

    async def _turn(
        self, worker: str, text: str, scope: str, conversation: str
    ) -> list[ConversationMessage]:
        """Answer ``text`` in a conversation; the messages the turn added after the user's.

        Raises:
            AgentError: the turn hit ``max_iterations`` or ``max_execution_time``.
            ModelError, ModelTimeoutError: the model failed.
        """
        key = (scope, conversation)
        history = self._memory.get(key, [])
        turn = [ConversationMessage("user", TextContent(text))]
        system = {"role": "system", "content": self.instructions}
        specs = [tool.spec() for tool in self.tools.values()]
        started = time.monotonic()
        limit = asyncio.timeout(self._max_execution_s)
        try:
            async with limit, self.model.connected():
                for iteration in range(1, self.max_iterations + 1):
                    prompt = [system, *(each.to_openai() for each in (*history, *turn))]
                    completion = await self.model.complete_chat(prompt, specs)
                    turn.append(
                        ConversationMessage(
                            "assistant", TextContent(completion.content), completion.tool_calls
                        )
                    )
                    if not completion.tool_calls:
                        break
                    if iteration == self.max_iterations:
                        raise AgentError(
                            f"agent {worker!r} reached max_iterations={self.max_iterations} "
                            f"with the model still calling tools"
                        )
                    # One after another, in the model's order: tools may depend on each other.
                    turn.extend([await self._call(worker, call) for call in completion.tool_calls])
        except TimeoutError as exc:
            if not limit.expired():
                raise  # the model's own timeout (ModelTimeoutError)
            raise AgentError(
                f"agent {worker!r} reached max_execution_time={self._max_execution_s * 1000:g} ms"
            ) from exc
        self._memory[key] = trim([*history, *turn], self.max_messages)
        self._memory.move_to_end(key)
        while len(self._memory) > MAX_CONVERSATIONS:
            self._memory.popitem(last=False)
        log.debug(
            "agent %r: turn of %d messages in %.3f s", worker, len(turn), time.monotonic() - started
        )
        return turn[1:]

    async def _call(self, worker: str, call: ToolCall) -> ConversationMessage:
        """Run one tool call; its failure becomes text for the model, never an exception."""
        tool = self.tools.get(call.name)
        try:
            if tool is None:
                raise LookupError(f"there is no tool named {call.name!r}")
            result = await tool.invoke(call.arguments)
        except Exception as exc:
            log.warning(
                "agent %r: tool %r raised %s: %s", worker, call.name, type(exc).__name__, exc
            )
            result = f"error: {type(exc).__name__}: {exc}"
        return ConversationMessage("tool", TextContent(result), (), call.id, call.name)

    @staticmethod
    async def start(
        node: NodeInterface,
        instructions: str,
        name: str | None = None,
        model: Model | None = None,
        tools: Sequence[Callable[..., Any]] | None = None,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        max_execution_time: float = DEFAULT_MAX_EXECUTION_TIME_MS,
        max_messages_in_short_term_memory: int = DEFAULT_MAX_MESSAGES,
        timeout: float | None = None,
    ) -> AgentReference:
        """Start an agent as a worker on ``node`` (a `Node` or a `RemoteNode`).

        Args:
            node: where the agent runs (and where its model's endpoint is resolved).
            instructions: the system prompt of every turn.
            name: the worker's name; a random one if None.
            model, tools, max_iterations, max_execution_time,
            max_messages_in_short_term_memory: as for `Agent`.
            timeout: milliseconds to wait for the start; the node's own default if None.

        Returns:
            An `AgentReference` to the agent.

        Raises:
            WorkerExistsError: a worker of that name runs on the node.
            ReplyTimeoutError: the start took longer than ``timeout``.
            TypeError, ValueError: an argument is wrong (before anything is sent).
        """
        agent = Agent(
            instructions,
            model=model,
            tools=tools or (),
            max_iterations=max_iterations,
            max_execution_time=max_execution_time,
            max_messages_in_short_term_memory=max_messages_in_short_term_memory,
        )
        name = name if name is not None else f"agent-{secrets.token_hex(6)}"
        if timeout is None:
            await node.start_worker(name, agent)
        else:
            timeout_s = timeout_seconds(timeout)
            try:
                async with asyncio.timeout(timeout_s):
                    await node.start_worker(name, agent)
            except TimeoutError as exc:
                raise ReplyTimeoutError(name, timeout) from exc
        log.debug("agent %r started on node %r", name, node.name)
        return AgentReference(node, name)

    @staticmethod
    async def stop(node: NodeInterface, name: str) -> None:
        """Stop the agent ``name`` on ``node``: its turn in hand finishes (within the node's
        grace period), queued messages fail with `WorkerStoppedError`.

        Raises:
            WorkerNotFoundError: no worker of that name runs on the node.
        """
        await node.stop_worker(name)


def _decode_request(message: str) -> tuple[str, str, str] | None:
    """``(message, scope, conversation)`` from an envelope; None for plain text."""
    if not message.startswith("{"):
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get(ENVELOPE) != 1:
        return None
    fields = (data.get("message"), data.get("scope", ""), data.get("conversation", ""))
    if not all(isinstance(field, str) for field in fields):
        raise ProtocolError(f"an agent envelope with a field that is not a str: {message[:200]!r}")
    return fields  # type: ignore[return-value]


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MessageTypeError(f"{what} must be str, got {type(value).__name__}")
    return value


@final
class AgentReference:
    """A handle on an agent running on some node: send it messages, get its answers.

    Returned by `Agent.start`; it pickles (it holds a node and a name), so it may travel
    inside a shipped worker.
    """

    __slots__ = ("name", "node")

    def __init__(self, node: NodeInterface, name: str) -> None:
        self.node = node
        """The node the agent runs on."""
        self.name = name
        """The agent's worker name."""

    def __repr__(self) -> str:
        return f"<AgentReference {self.name!r} on {self.node.name!r}>"

    async def send(
        self,
        message: str,
        scope: str = "",
        conversation: str = "",
        timeout: float = DEFAULT_REPLY_TIMEOUT_MS,
    ) -> list[ConversationMessage]:
        """Send ``message`` and wait for the turn to end.

        Args:
            message: the user's text.
            scope: whose memory (a user, a tenant...).
            conversation: which conversation of that scope.
            timeout: milliseconds to wait for the answer.

        Returns:
            The messages the turn added after yours: any tool calls and their results, then
            the answer. With no tool called that is ``[answer]``; ``str(answer.content)`` is
            its text.

        Raises:
            AgentError: the turn hit the agent's iteration or time limit.
            ModelError: the model endpoint refused, failed or answered nonsense.
            ModelTimeoutError: the model did not answer in time.
            ReplyTimeoutError: no answer within ``timeout``.
            MessageTypeError: an argument is not a ``str`` (nothing is sent).
            WorkerNotFoundError, PeerUnavailableError, ...: as ``send_and_receive``.
        """
        return await self._request(self._envelope(message, scope, conversation), timeout)

    async def send_message(
        self,
        message: str,
        scope: str = "",
        conversation: str = "",
        timeout: float = DEFAULT_REPLY_TIMEOUT_MS,
    ) -> ReceiveReference:
        """Send ``message`` and return at once; the answer is awaited with
        `ReceiveReference.receive_message`, which also raises whatever the send met
        (`WorkerNotFoundError`, `AgentError`... as `send`).

        Args:
            message, scope, conversation: as for `send`.
            timeout: milliseconds the agent has to answer, in all.

        Raises:
            MessageTypeError: an argument is not a ``str`` (nothing is sent).
        """
        timeout_seconds(timeout)
        request = self._request(self._envelope(message, scope, conversation), timeout)
        return ReceiveReference(self.name, asyncio.ensure_future(request))

    @staticmethod
    def _envelope(message: str, scope: str, conversation: str) -> str:
        return json.dumps(
            {
                ENVELOPE: 1,
                "message": _check_text(message, "message"),
                "scope": _check_text(scope, "scope"),
                "conversation": _check_text(conversation, "conversation"),
            }
        )

    async def _request(self, envelope: str, timeout: float) -> list[ConversationMessage]:
        try:
            reply = await self.node.send_and_receive(self.name, envelope, timeout=timeout)
        except WorkerError as exc:
            typed = _TYPED_ERRORS.get(exc.remote_type)
            if typed is None:
                raise
            raise typed(exc.remote_message) from exc
        try:
            data = json.loads(reply)
            messages = data["messages"] if data.get(ENVELOPE) == 1 else None
        except (ValueError, TypeError, KeyError, AttributeError):
            messages = None
        if not isinstance(messages, list):
            raise ProtocolError(
                f"worker {self.name!r} is not an agent: it answered {reply[:200]!r}"
            )
        return [ConversationMessage.from_dict(each) for each in messages]


def _retrieve(task: asyncio.Future[Any]) -> None:
    # An answer nobody received is dropped without "exception was never retrieved".
    if not task.cancelled():
        task.exception()


@final
class ReceiveReference:
    """The answer to come of an `AgentReference.send_message`."""

    __slots__ = ("_name", "_task")

    def __init__(self, name: str, task: asyncio.Future[list[ConversationMessage]]) -> None:
        self._name = name
        self._task = task
        task.add_done_callback(_retrieve)

    def __repr__(self) -> str:
        return f"<ReceiveReference {self._name!r} {'done' if self._task.done() else 'pending'}>"

    async def receive_message(
        self, timeout: float = DEFAULT_REPLY_TIMEOUT_MS
    ) -> list[ConversationMessage]:
        """Wait for the answer: the messages of the turn, as `AgentReference.send` returns.

        A receive that times out leaves the request running: receive again to keep waiting.

        Raises:
            ReplyTimeoutError: no answer within ``timeout`` ms.
            AgentError, ModelError, ModelTimeoutError, ...: as `AgentReference.send`.
        """
        timeout_s = timeout_seconds(timeout)
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            raise ReplyTimeoutError(self._name, timeout)
        return self._task.result()
