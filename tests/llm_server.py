"""A scripted OpenAI-compatible server on the standard library's HTTP server (fixture helper).

A test queues what the server does for each ``POST /v1/chat/completions`` in turn (answer,
stream, fail with a status, send nonsense, drop the connection, stall) and reads back the
bodies it received. It binds 127.0.0.1 on a free port and serves from a thread; `close`
releases any stalled handler and joins every thread, so no test leaves one behind.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Action:
    """What the server does with one request."""

    status: int = 200
    body: bytes | None = None
    """Sent as it is (nonsense, error bodies); None for a completion built from the rest."""
    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    """Close the connection without answering."""
    delay_s: float = 0.0
    """Stall this long first (released at once when the server closes)."""
    hold: bool = False
    """Stall until the test calls `ScriptedServer.release` (or the server closes)."""


def answer(content: str = "", tool_calls: list[dict[str, Any]] | None = None) -> Action:
    return Action(content=content, tool_calls=tool_calls or [])


def stream(content: str = "", tool_calls: list[dict[str, Any]] | None = None) -> Action:
    return Action(content=content, tool_calls=tool_calls or [], stream=True)


def tool_call(
    name: str, arguments: dict[str, Any] | str, call_id: str = "call_1"
) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def status(code: int, message: str = "", headers: dict[str, str] | None = None) -> Action:
    body = json.dumps({"error": {"message": message, "type": "scripted"}}).encode()
    return Action(status=code, body=body, headers=headers or {})


def raw(body: bytes, content_type: str = "application/json") -> Action:
    return Action(body=body, headers={"Content-Type": content_type})


def drop() -> Action:
    return Action(drop=True)


def held(then: Action) -> Action:
    then.hold = True
    return then


def slow(seconds: float, then: Action | None = None) -> Action:
    action = then or answer("late")
    action.delay_s = seconds
    return action


def _completion(action: Action) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": action.content}
    if action.tool_calls:
        message["tool_calls"] = action.tool_calls
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if action.tool_calls else "stop",
            }
        ],
    }


def _chunks(action: Action) -> list[dict[str, Any]]:
    """The answer as a real server streams it: role, text in pieces, each tool call's name
    then its arguments in two pieces, then the finish reason."""
    deltas: list[dict[str, Any]] = [{"role": "assistant"}]
    text = action.content or ""
    deltas.extend({"content": text[i : i + 4]} for i in range(0, len(text), 4))
    for index, call in enumerate(action.tool_calls):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        first = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": arguments[:half]},
        }
        deltas.append({"tool_calls": [first]})
        deltas.append(
            {"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]}
        )
    chunks = [
        {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas
    ]
    reason = "tool_calls" if action.tool_calls else "stop"
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    return chunks


class ScriptedServer:
    """The server: `script` what it does, read `requests` for what it got."""

    def __init__(self) -> None:
        self.actions: deque[Action] = deque()
        self.requests: list[dict[str, Any]] = []
        """Each request's JSON body, in arrival order."""
        self.headers: list[dict[str, str]] = []
        self.closing = threading.Event()
        self.released = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    action = server.actions.popleft() if server.actions else None
                if action is None:
                    action = status(500, "the test scripted no more answers")
                if action.delay_s:
                    server.closing.wait(action.delay_s)
                if action.hold:
                    server.released.wait(30)
                if action.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)  # SHUT_RDWR: the client sees the drop
                    return
                if action.stream:
                    self._stream(action)
                    return
                payload = (
                    action.body
                    if action.body is not None
                    else json.dumps(_completion(action)).encode()
                )
                self.send_response(action.status)
                headers = {"Content-Type": "application/json", **action.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, action: Action) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for chunk in _chunks(action):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False  # so that close() joins the handlers
        # A client that gave up on a stalled answer leaves a broken pipe: not worth a traceback.
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="llm-server")
        self._thread.start()

    def script(self, *actions: Action) -> None:
        """Queue what the next requests get, one action each."""
        with self._lock:
            self.actions.extend(actions)

    def release(self) -> None:
        """Let the held answers go."""
        self.released.set()

    def close(self) -> None:
        self.closing.set()
        self.released.set()
        self._server.shutdown()
        self._server.server_close()  # joins the handler threads
        self._thread.join(10)
