"""A real terminal for the tests: a program run in tmux, its screen read with capture-pane.

`Tmux` runs one program in a tmux server of its own (a unique socket name, so the user's
tmux and other tests are never touched), on a screen of a given size, and types keys into
it. The screen has no signal to wait on, so `Tmux.wait_for` reads it a few times a second,
until a deadline. Leaving ``async with Tmux()`` kills the server and the program's process
group, and removes the socket, whatever happened. Each tmux command runs as a `Child`.

The program's exit status comes from a file its ``sh`` writes, not from tmux: the tmux
3.3a here now and then misses the SIGCHLD of a pane's process (seen with ``sleep 1``: the
pane closes, the process stays a zombie, ``pane_dead_status`` stays empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from .chromium import require
from .processes import Child

__all__ = ["Tmux"]

COMMAND_TIMEOUT_S = 20.0
SCREEN_POLL_S = 0.25
"""How often `Tmux.wait_for` and `Tmux.wait_exit` look."""

SESSION = "test"


class Tmux:
    """One program on a ``width`` x ``height`` terminal, while entered (``async with``)."""

    def __init__(self, directory: Path, width: int = 200, height: int = 50) -> None:
        self._tmux = require("tmux")
        self._name = f"autonomy-test-{uuid.uuid4().hex[:8]}"
        self._config = directory / "tmux.conf"
        self._status = directory / "tmux.status"
        self._width = width
        self._height = height
        self._server_pid: int | None = None
        self._pane_pid: int | None = None

    async def __aenter__(self) -> Self:
        # A program that ends keeps its pane, so that its last screen stays readable.
        self._config.write_text("set -g remain-on-exit on\nset -g status off\n")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def run(self, *args: str, check: bool = True) -> str:
        """One tmux command on this server; its output."""
        argv = [self._tmux, "-L", self._name, "-f", str(self._config), *args]
        async with Child(*argv, name=f"tmux {args[0]}", stdin=False) as child:
            code = await child.wait(COMMAND_TIMEOUT_S)
        if check and code != 0:
            raise AssertionError(f"tmux {' '.join(args)} exited {code}: {child.stderr}")
        return child.stdout

    async def start(self, *argv: str, cwd: Path | None = None) -> None:
        """Run ``argv`` on the terminal (under ``sh``, which records its exit status), with
        this process's environment."""
        where = ["-c", str(cwd)] if cwd is not None else []
        size = ["-x", str(self._width), "-y", str(self._height)]
        # The shell outlives a Ctrl-C (trapped: the program still gets it) to record.
        record = ["sh", "-c", 'trap : INT; "$@"; echo $? > "$0"', str(self._status), *argv]
        await self.run("new-session", "-d", "-s", SESSION, *size, *where, *record)
        pids = await self.run("display-message", "-p", "-t", SESSION, "#{pid} #{pane_pid}")
        server, pane = pids.split()
        self._server_pid, self._pane_pid = int(server), int(pane)

    async def screen(self) -> str:
        """What the terminal shows now."""
        return await self.run("capture-pane", "-p", "-t", SESSION)

    async def wait_for(
        self, predicate: Callable[[str], bool], timeout_s: float, what: str = "the screen"
    ) -> str:
        """The screen, once ``predicate(screen)`` holds; fails at ``timeout_s`` showing it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            screen = await self.screen()
            if predicate(screen):
                return screen
            exited = self.exit_status()
            if exited is not None:
                raise AssertionError(f"the program exited ({exited}) before {what}:\n{screen}")
            if loop.time() > deadline:
                raise AssertionError(f"no {what} within {timeout_s} s; the screen:\n{screen}")
            await asyncio.sleep(SCREEN_POLL_S)

    async def send_keys(self, *keys: str) -> None:
        await self.run("send-keys", "-t", SESSION, *keys)

    def exit_status(self) -> int | None:
        """The program's exit status once it ended (128 + N: killed by signal N), else None."""
        try:
            text = self._status.read_text()
        except FileNotFoundError:
            return None
        return int(text) if text.endswith("\n") else None

    async def wait_exit(self, timeout_s: float) -> int:
        """Wait until the program ended; its exit status."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (status := self.exit_status()) is None:
            if loop.time() > deadline:
                raise AssertionError(
                    f"the program did not exit within {timeout_s} s:\n{await self.screen()}"
                )
            await asyncio.sleep(SCREEN_POLL_S)
        return status

    async def aclose(self) -> None:
        """Kill the server and the program (its whole process group); remove the socket."""
        with contextlib.suppress(Exception):
            await self.run("kill-server", check=False)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._pane_pid is not None:
                os.killpg(self._pane_pid, signal.SIGKILL)
        if self._server_pid is not None and self._name.encode() in _cmdline(self._server_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._server_pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            (Path(f"/tmp/tmux-{os.getuid()}") / self._name).unlink()


def _cmdline(pid: int) -> bytes:
    """The command line of process ``pid`` (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""
