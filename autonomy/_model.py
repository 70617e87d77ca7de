"""`Model`: a client for any OpenAI-compatible ``/chat/completions`` endpoint, on httpx.

It owns the request (model name resolved through ``AUTONOMY_MODEL_ALIASES``, the endpoint and
key resolved on the node that runs it), the parsing of a completion (plain JSON or a
server-sent event stream, tool calls included), the retries (connection errors and
408/409/429/5xx, with backoff and jitter, ``Retry-After`` honoured, bounded), and the
translation of every failure into `ModelError` or `ModelTimeoutError`, at this boundary.

It knows nothing of nodes, workers or memory. The HTTP client is made on first use and closed
when its last user is done (`Model.connected`), so a `Model` never holds a socket between
uses: it pickles (and ships inside a worker) without one. httpx is imported on first use, so
``import autonomy`` does not pay for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast, final

from ._base import timeout_seconds
from ._config import Settings
from ._errors import ModelError, ModelTimeoutError

if TYPE_CHECKING:
    import httpx

__all__ = ["Completion", "Model", "ToolCall", "check_count"]

log = logging.getLogger("autonomy.model")

OPENAI_BASE_URL: Final = "https://api.openai.com/v1"
"""The endpoint when neither ``base_url=`` nor ``OPENAI_BASE_URL`` names one."""
DEFAULT_REQUEST_TIMEOUT_MS: Final = 120_000
"""One attempt's limit: reasoning models can take a minute or two to answer."""
DEFAULT_CONNECT_TIMEOUT_MS: Final = 10_000
RETRY_STATUSES: Final = frozenset({408, 409, 429})
"""Retried besides every 5xx: timeout, conflict, rate limit."""
INITIAL_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 8.0
MAX_RETRY_AFTER_S: Final = 60.0
"""A server that asks us to wait longer than this gets a `ModelError` instead of a wait."""
ERROR_BODY_CHARS: Final = 300
"""How much of an error body a `ModelError` quotes."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to run one tool: ``arguments`` is the JSON text it wrote."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Completion:
    """What the model answered: text, tool calls, or both."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


def check_count(value: object, what: str, minimum: int) -> int:
    """Validate a count argument (``max_retries``, ``max_iterations``...).

    Raises:
        ValueError: it is not an ``int`` (a ``bool`` is not one here) of at least ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


@final
class Model:
    """A chat model behind an OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, llama.cpp's
    server, a LiteLLM proxy...).

    Args:
        name: the model's name; ``AUTONOMY_MODEL_ALIASES`` (``name=served,...``) may map it to
            the name the endpoint serves.
        base_url: the endpoint, e.g. ``http://localhost:11434/v1``; else ``OPENAI_BASE_URL``,
            else OpenAI's. Resolved where the model runs, on first use.
        api_key: sent as a bearer token; else ``OPENAI_API_KEY``; else no ``Authorization``
            header (local servers need none).
        request_timeout: milliseconds one attempt may take.
        connect_timeout: milliseconds to connect.
        max_retries: further attempts after a connection error or a 408/409/429/5xx.
        **params: sent with every request (``temperature``, ``max_tokens``...);
            ``stream=True`` asks for server-sent events, assembled into one answer.
    """

    __slots__ = (
        "_client",
        "_connect_s",
        "_endpoint",
        "_request_s",
        "_users",
        "api_key",
        "base_url",
        "max_retries",
        "name",
        "params",
    )

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_MS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_MS,
        max_retries: int = 2,
        **params: Any,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        check_count(max_retries, "max_retries", 0)
        for reserved in ("model", "messages", "tools"):
            if reserved in params:
                raise TypeError(f"{reserved!r} is set per request, not as a model parameter")
        self.name = name
        """The name given; `served_name` is what the endpoint is asked for."""
        self.base_url = base_url
        self.api_key = api_key
        self.max_retries = max_retries
        self.params = params
        """Sent with every request."""
        self._request_s = timeout_seconds(request_timeout, "request_timeout")
        self._connect_s = timeout_seconds(connect_timeout, "connect_timeout")
        self._client: httpx.AsyncClient | None = None
        self._endpoint: tuple[str, str, dict[str, str]] | None = None
        self._users = 0

    def __repr__(self) -> str:
        where = self._endpoint[0] if self._endpoint else self.base_url or "(resolved on use)"
        state = "connected" if self._client is not None else "idle"
        return f"<Model {self.name!r} {where} {state}>"

    def __getstate__(self) -> dict[str, Any]:
        # Ship the settings only: the client (sockets, a loop) and the endpoint resolved here
        # stay behind; the receiving node resolves its own on first use.
        state = {key: getattr(self, key) for key in self.__slots__}
        state.update(_client=None, _endpoint=None, _users=0)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    @property
    def served_name(self) -> str:
        """The name sent to the endpoint: `name` mapped by ``AUTONOMY_MODEL_ALIASES``."""
        return self._resolve()[1]

    def _resolve(self) -> tuple[str, str, dict[str, str]]:
        if self._endpoint is None:
            aliases = Settings.from_env().model_aliases
            base_url = self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
            key = self.api_key or os.environ.get("OPENAI_API_KEY")
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._endpoint = (base_url.rstrip("/"), aliases.get(self.name, self.name), headers)
        return self._endpoint

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        """Share one HTTP client (and its connections) between the calls made inside.

        The client is made on first use and closed when the last ``connected()`` block
        ends: an agent's turn holds it across its model calls, and nothing stays open after.
        """
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self._client is not None:
                client, self._client = self._client, None
                await client.aclose()

    async def complete_chat(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] = ()
    ) -> Completion:
        """Ask the model for the next message of a conversation.

        Args:
            messages: OpenAI chat messages (``{"role": ..., "content": ...}``).
            tools: OpenAI tool specifications (``{"type": "function", "function": ...}``).

        Raises:
            ModelError: the endpoint refused or failed (after the retries), or answered
                something that is not a chat completion.
            ModelTimeoutError: an attempt took longer than ``request_timeout``.
        """
        async with self.connected():
            base_url, served, headers = self._resolve()
            body: dict[str, Any] = {"model": served, "messages": list(messages), **self.params}
            if tools:
                body["tools"] = list(tools)
            url = f"{base_url}/chat/completions"
            attempt = 0
            while True:
                outcome = await self._attempt(url, body, headers)
                if isinstance(outcome, Completion):
                    return outcome
                if attempt >= self.max_retries:
                    raise ModelError(f"{outcome.reason} (after {attempt + 1} attempts)")
                delay = outcome.retry_after
                if delay is None:
                    delay = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2**attempt)
                    delay *= random.uniform(0.5, 1.0)  # jitter: clients do not retry in step
                elif delay > MAX_RETRY_AFTER_S:
                    raise ModelError(
                        f"{outcome.reason}; the server asks to retry after {delay:g} s, more "
                        f"than {MAX_RETRY_AFTER_S:g} s"
                    )
                attempt += 1
                log.warning(
                    "model %r: %s; retry %d in %.2f s", served, outcome.reason, attempt, delay
                )
                await asyncio.sleep(delay)

    async def _attempt(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> Completion | _Retry:
        """One request: the completion, or why it is worth another attempt.

        Raises:
            ModelError, ModelTimeoutError: a failure that another attempt would not mend.
        """
        import httpx

        if self._client is None:
            self._client = new_client(self._request_s, self._connect_s)
        client = self._client
        started = time.monotonic()
        too_slow = f"no answer from {url} within {self._request_s * 1000:g} ms"
        try:
            async with asyncio.timeout(self._request_s + self._connect_s):
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    status = response.status_code
                    if status >= 400:
                        text = (await response.aread()).decode("utf-8", "replace")
                        return _status_failure(status, text, response.headers)
                    if response.headers.get("content-type", "").startswith("text/event-stream"):
                        # aclosing: leaving at "[DONE]" must not leave the generator to the
                        # loop's finaliser (a task that outlives the request).
                        lines = cast("AsyncGenerator[str, None]", response.aiter_lines())
                        async with contextlib.aclosing(lines):
                            completion = await _read_stream(lines)
                    else:
                        completion = parse_completion(await response.aread())
        except TimeoutError as exc:  # the attempt's own deadline
            raise ModelTimeoutError(too_slow) from exc
        except httpx.ConnectTimeout:
            return _Retry(f"cannot connect to {url}: timed out")
        except httpx.TimeoutException as exc:  # read, write or pool
            raise ModelTimeoutError(too_slow) from exc
        except (httpx.ConnectError, httpx.ReadError, httpx.WriteError) as exc:
            return _Retry(f"cannot reach {url}: {exc or type(exc).__name__}")
        except httpx.RemoteProtocolError as exc:  # the server closed the connection mid-answer
            return _Retry(f"{url} dropped the connection: {exc}")
        except httpx.HTTPError as exc:
            raise ModelError(f"request to {url} failed: {exc}") from exc
        log.debug("model %r answered in %.3f s", body["model"], time.monotonic() - started)
        return completion


def new_client(request_s: float, connect_s: float) -> httpx.AsyncClient:
    """The HTTP client of a `Model` (the tests swap in one on an ``httpx.MockTransport``)."""
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(request_s, connect=connect_s))


@dataclass(frozen=True, slots=True)
class _Retry:
    """An attempt that failed in a way worth another one."""

    reason: str
    retry_after: float | None = None


def _status_failure(status: int, text: str, headers: Mapping[str, str]) -> _Retry:
    """An HTTP error answer: a `_Retry` for 408/409/429/5xx.

    Raises:
        ModelError: any other status (the request itself is wrong: 400, 401, 404...).
    """
    detail = text.strip()
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            detail = message
    except (ValueError, AttributeError):
        pass
    if len(detail) > ERROR_BODY_CHARS:
        detail = detail[:ERROR_BODY_CHARS] + "..."
    reason = f"the model endpoint answered {status}" + (f": {detail}" if detail else "")
    if status in RETRY_STATUSES or status >= 500:
        return _Retry(reason, retry_after(headers))
    raise ModelError(reason)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date),
    or None when neither says anything usable."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _nonsense(what: str) -> ModelError:
    return ModelError(f"the model endpoint answered something not a chat completion: {what}")


def parse_completion(data: bytes | str) -> Completion:
    """Parse a ``/chat/completions`` JSON answer.

    Raises:
        ModelError: it is not JSON, or not shaped as a chat completion.
    """
    try:
        value = json.loads(data)
    except ValueError:
        raw = data if isinstance(data, str) else data.decode("utf-8", "replace")
        raise _nonsense(f"not JSON: {raw[:80]!r}") from None
    choices = value.get("choices") if isinstance(value, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _nonsense(f"no choices in {str(value)[:80]!r}")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _nonsense("the first choice has no message")
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise _nonsense(f"content is a {type(content).__name__}")
    calls: list[ToolCall] = []
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise _nonsense(f"tool_calls is a {type(tool_calls).__name__}")
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _nonsense(f"a tool call without a function name: {call!r}")
        arguments = function.get("arguments") or "{}"
        if not isinstance(arguments, str):  # some servers send the object itself
            arguments = json.dumps(arguments)
        calls.append(
            ToolCall(str(call.get("id") or f"call_{len(calls)}"), function["name"], arguments)
        )
    return Completion(content, tuple(calls), choices[0].get("finish_reason"))


async def _read_stream(lines: AsyncIterator[str]) -> Completion:
    """Assemble a streamed answer: its text deltas, and its tool calls' deltas by index."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish_reason = None
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
            choice = chunk["choices"][0] if chunk.get("choices") else {}
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            for part in delta.get("tool_calls") or ():
                call = calls.setdefault(
                    part.get("index", len(calls)), {"id": "", "name": "", "arguments": ""}
                )
                call["id"] = part.get("id") or call["id"]
                function = part.get("function") or {}
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""
            finish_reason = choice.get("finish_reason") or finish_reason
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _nonsense(f"a stream event that is not a chunk: {data[:80]!r}") from None
    tool_calls = tuple(
        ToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}")
        for index, call in sorted(calls.items())
    )
    if any(not call.name for call in tool_calls):
        raise _nonsense("a streamed tool call without a function name")
    return Completion("".join(content), tool_calls, finish_reason)
