"""Headless Chromium for the tests, driven over its own DevTools protocol.

`Chromium` starts Debian's ``chromium`` as a `Child` (its own process group, SIGKILLed and
reaped on the way out, whatever happened), with a fresh profile and no network of its own,
and speaks the DevTools protocol to it over a WebSocket (aiohttp's client): no Playwright,
no driver. A `Page` is one tab: `Page.wait_for` runs a JavaScript condition in the page and
answers when the DOM makes it true (a MutationObserver, so no polling), or fails at its
deadline with what the page showed::

    async with Chromium(tmp_path) as browser:
        page = await browser.open("http://127.0.0.1:8765/")
        text = await page.wait_for("document.body.innerText.includes('runner')", 20)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import pytest

from .processes import Child

__all__ = ["Chromium", "Page", "require"]

START_TIMEOUT_S = 60.0
"""How long Chromium gets to open its DevTools port (seconds on a quiet machine)."""

CALL_TIMEOUT_S = 30.0

FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
)


def require(program: str) -> str:
    """The path of ``program``; the test is skipped without it, and fails in CI (which
    installs it: .ci/run)."""
    path = shutil.which(program)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not installed (.ci/run installs it)")
        pytest.skip(f"{program} is not installed (apt-get install {program})")
    return path


class DevToolsError(AssertionError):
    """Chromium refused a call, or a page condition failed."""


class Page:
    """One tab of the browser."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self._browser = browser
        self._session = session

    async def evaluate(self, expression: str, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """The value of ``expression`` in the page (awaited if it is a promise)."""
        result = await self._browser.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self._session,
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise DevToolsError(f"{expression[:80]!r} failed in the page: {text}")
        return result["result"].get("value")

    async def wait_for(self, condition: str, timeout_s: float, show: str = "") -> Any:
        """Wait until the JavaScript ``condition`` is truthy in the page; return its value.

        It is checked at once and after every change of the DOM. At the deadline the test
        fails with ``show`` evaluated (default: the page's text).
        """
        show = show or "document.body ? document.body.innerText : ''"
        script = f"""
            new Promise((resolve, reject) => {{
                const check = () => {{
                    try {{ return ({condition}); }} catch (e) {{ return null; }}
                }};
                const first = check();
                if (first) {{ resolve(first); return; }}
                const observer = new MutationObserver(() => {{
                    const value = check();
                    if (value) {{ observer.disconnect(); clearTimeout(timer); resolve(value); }}
                }});
                observer.observe(document, {{subtree: true, childList: true, characterData: true}});
                const timer = setTimeout(() => {{
                    observer.disconnect();
                    reject(new Error("timed out; the page shows: " + JSON.stringify({show})));
                }}, {int(timeout_s * 1000)});
            }})
        """
        return await self.evaluate(script, timeout_s + 10)

    async def screenshot(self) -> bytes:
        """The page as a PNG."""
        result = await self._browser.call(
            "Page.captureScreenshot", {"format": "png"}, session=self._session
        )
        return base64.b64decode(result["data"])


class Chromium:
    """Headless Chromium with a DevTools connection, while entered (``async with``).

    Args:
        profile: a fresh directory for its user data (a test's ``tmp_path / ...``).
        width, height: the window's size.
    """

    def __init__(self, profile: Path, width: int = 1280, height: int = 800) -> None:
        self._profile = profile
        self._child = Child(
            require("chromium"),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-port=0",
            "about:blank",
            name="chromium",
            merge_stderr=True,
            stdin=False,
        )
        self._http: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def __aenter__(self) -> Self:
        self._profile.mkdir(parents=True, exist_ok=True)
        await self._child.start()
        try:
            line = await self._child.wait_for_line(
                re.compile(r"DevTools listening on ws://"), START_TIMEOUT_S
            )
            url = line[line.index("ws://") :].strip()
            self._http = aiohttp.ClientSession()
            async with asyncio.timeout(CALL_TIMEOUT_S):
                self._socket = await self._http.ws_connect(url, max_msg_size=0)
            self._reader = asyncio.get_running_loop().create_task(self._read())
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection, kill Chromium's process group and any process of its
        profile left outside it."""
        try:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.wait({self._reader})
            if self._socket is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await self._socket.close()
            if self._http is not None:
                await self._http.close()
        finally:
            await self._child.aclose()
            for pid in profile_processes(self._profile):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def open(self, url: str) -> Page:
        """A new tab at ``url``, its document loaded."""
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await self.call("Page.enable", session=attached["sessionId"])
        await self.call("Page.navigate", {"url": url}, session=attached["sessionId"])
        await page.wait_for("document.readyState === 'complete'", CALL_TIMEOUT_S)
        return page

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> dict[str, Any]:
        """One DevTools call; its ``result``."""
        assert self._socket is not None
        call_id = next(self._ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            await self._socket.send_str(json.dumps(message))
            async with asyncio.timeout(timeout_s):
                answer = await future
        finally:
            self._waiting.pop(call_id, None)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._waiting.get(data.get("id", -1))
            if future is not None and not future.done():
                future.set_result(data)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(DevToolsError("Chromium closed the DevTools connection"))


def profile_processes(profile: Path) -> list[int]:
    """Live processes whose command line names ``profile`` (Chromium's helpers included)."""
    needle = f"--user-data-dir={profile}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found
