"""Child processes of the tests: started, read, signalled, and always killed and reaped.

`Child` runs one command in a session (and so a process group) of its own, optionally behind
a prefix command such as ``ip netns exec NAME``. Its output is collected as it arrives, so a
chatty child never blocks on a full pipe, and read line by line with a deadline on every
wait. Leaving ``async with Child(...)`` (or `Child.aclose`) SIGKILLs the whole process
group and reaps the child, also when the test failed or was cancelled::

    async with Child(sys.executable, "-c", SCRIPT, name="peer") as peer:
        endpoint = await peer.read_line(20)
        ...
    # here the peer and everything in its process group are dead

Tests that own several children enter them into a `contextlib.AsyncExitStack`. Nothing here
knows what the children are; test modules keep what is theirs (the script, the ready line).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["REAP_TIMEOUT_S", "Child", "ChildExitedError", "environ", "still_open"]

REAP_TIMEOUT_S = 10.0
"""How long a SIGKILLed child gets to be reaped before teardown fails."""

TAIL_LINES = 50
"""How many of the last output lines a failure message shows."""

_open: set[Child] = set()


def environ(changes: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with ``changes`` applied (``None`` removes a variable)."""
    env = dict(os.environ)
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def still_open() -> list[Child]:
    """Children started and not yet closed (the leak check's view)."""
    return sorted(_open, key=lambda child: child.pid)


class ChildExitedError(AssertionError):
    """A child's output ended before it printed what the test waited for."""


class _Output:
    """One output pipe: everything received, and the complete lines among it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lines: list[str] = []
        self.partial = b""
        self.ended = False

    def feed(self, data: bytes) -> None:
        self.data += data
        *complete, self.partial = (self.partial + data).split(b"\n")
        self.lines += [line.decode(errors="replace") for line in complete]

    def end(self) -> None:
        if self.partial:
            self.lines.append(self.partial.decode(errors="replace"))
            self.partial = b""
        self.ended = True

    def text(self) -> str:
        return self.data.decode(errors="replace")


class _Protocol(asyncio.SubprocessProtocol):
    """Hands the event loop's callbacks to the `Child` (which keeps them off its public face)."""

    def __init__(self, child: Child) -> None:
        self.child = child

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.child._outputs[fd].feed(data)
        self.child._changed()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in self.child._outputs:
            self.child._outputs[fd].end()
        else:  # stdin: a writer waiting for room must not wait for a dead reader
            self.child._writable.set()
        self.child._changed()

    def process_exited(self) -> None:
        self.child._exited.set()
        self.child._changed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.child._finished.set()

    def pause_writing(self) -> None:
        self.child._writable.clear()

    def resume_writing(self) -> None:
        self.child._writable.set()


class Child:
    """One child process of a test, in a session of its own.

    Args:
        argv: The command and its arguments.
        name: What failure messages call it (default: the command line).
        prefix: A command that runs ``argv``, such as ``host.command()`` for a network
            namespace; it must exec ``argv`` (``ip netns exec`` does) or stay in the group.
        env: Changes to this process's environment (``None`` removes a variable).
        cwd: The working directory (default: this process's).
        stdin: Give the child a pipe for `send` (else ``/dev/null``). The pipe stays open
            until the child is closed: a child that stops when its stdin closes serves
            until then.
        merge_stderr: Read stderr and stdout as one stream (``lines``, `read_line`);
            otherwise stderr is collected apart, in ``stderr``.
    """

    def __init__(
        self,
        *argv: str | os.PathLike[str],
        name: str | None = None,
        prefix: Sequence[str] = (),
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: bool = True,
        merge_stderr: bool = False,
    ) -> None:
        self.argv = [*prefix, *(os.fspath(arg) for arg in argv)]
        self.name = name or shlex.join(self.argv)[:80]
        self._env = environ(env)
        self._cwd = None if cwd is None else Path(cwd)
        self._stdin = stdin
        self._merge = merge_stderr
        self._transport: asyncio.SubprocessTransport | None = None
        self._closed = False
        self._cursor = 0
        self._outputs = {1: _Output()} if merge_stderr else {1: _Output(), 2: _Output()}
        self._change = asyncio.Event()
        self._exited = asyncio.Event()
        self._finished = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __repr__(self) -> str:
        if self._transport is None:
            state = "not started"
        elif self.returncode is not None:
            state = f"exited {self.returncode}"
        else:
            state = "running"
        closed = " closed" if self._closed else ""
        pid = f" pid={self.pid}" if self._transport is not None else ""
        return f"<Child {self.name!r}{pid} {state}{closed}>"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Start the command; the caller must `aclose` it (``async with`` does)."""
        if self._transport is not None:
            raise RuntimeError(f"{self!r} was already started")
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.subprocess_exec(
            lambda: _Protocol(self),
            *self.argv,
            stdin=subprocess.PIPE if self._stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if self._merge else subprocess.PIPE,
            cwd=self._cwd,
            env=self._env,
            start_new_session=True,
        )
        _open.add(self)
        return self

    async def aclose(self) -> None:
        """SIGKILL the child's process group and reap the child. Idempotent.

        Raises:
            TimeoutError: The child was not reaped within `REAP_TIMEOUT_S`.
        """
        transport = self._transport
        if transport is None or self._closed:
            return
        self._closed = True
        _open.discard(self)
        try:
            self.kill()
            async with asyncio.timeout(REAP_TIMEOUT_S):
                await self._exited.wait()
        finally:
            # Closes our ends of the pipes, even where a process outside the group (one that
            # started a session of its own) still holds the other ends.
            transport.close()
        async with asyncio.timeout(REAP_TIMEOUT_S):
            await self._finished.wait()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- state ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group's id."""
        return self._started().get_pid()

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        return None if self._transport is None else self._transport.get_returncode()

    @property
    def lines(self) -> list[str]:
        """Every complete line of stdout so far (stderr's too when merged), without ``\\n``."""
        return self._outputs[1].lines

    @property
    def stdout(self) -> str:
        """All of stdout so far (with stderr when merged)."""
        return self._outputs[1].text()

    @property
    def stderr(self) -> str:
        """All of stderr so far ("" when merged into stdout)."""
        return "" if self._merge else self._outputs[2].text()

    # -- reading -------------------------------------------------------------------------------

    async def read_line(self, timeout_s: float) -> str:
        """The next line of stdout not read yet.

        Raises:
            ChildExitedError: The output ended first.
            TimeoutError: No line came within ``timeout_s``.
        """
        return await self._next_line(lambda _: True, timeout_s, "a line")

    async def read_json(self, timeout_s: float) -> dict[str, Any]:
        """The next line that starts with ``{``, parsed; the lines before it are skipped."""
        line = await self._next_line(lambda line: line.startswith("{"), timeout_s, "a JSON line")
        return dict(json.loads(line))

    async def wait_for_line(self, pattern: str | re.Pattern[str], timeout_s: float) -> str:
        """The next line that contains ``pattern`` (a string) or matches it (a regular
        expression, with ``search``); the lines before it are skipped."""
        if isinstance(pattern, str):
            what = f"a line containing {pattern!r}"
            return await self._next_line(lambda line: pattern in line, timeout_s, what)
        what = f"a line matching /{pattern.pattern}/"
        return await self._next_line(lambda line: pattern.search(line) is not None, timeout_s, what)

    async def wait_until(
        self,
        predicate: Callable[[list[str]], bool],
        timeout_s: float,
        what: str = "the awaited output",
    ) -> None:
        """Wait until ``predicate(lines)`` holds for all the lines so far (no line is
        consumed: `read_line` reads on where it was).

        Raises:
            ChildExitedError: The output ended before the predicate held.
            TimeoutError: The predicate did not hold within ``timeout_s``.
        """
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate(self.lines):
                    if self._ended():
                        raise ChildExitedError(self._describe(f"ended before printing {what}"))
                    await self._change.wait()
        except TimeoutError:
            raise TimeoutError(
                self._describe(f"did not print {what} within {timeout_s} s")
            ) from None

    async def wait(self, timeout_s: float) -> int:
        """Wait until the child has exited and its output is read to the end.

        Returns:
            The exit status (negative: killed by that signal).

        Raises:
            TimeoutError: Not within ``timeout_s``; the child keeps running until closed.
        """
        try:
            async with asyncio.timeout(timeout_s):
                while not (self._exited.is_set() and self._outputs_ended()):
                    await self._change.wait()
        except TimeoutError:
            raise TimeoutError(self._describe(f"did not exit within {timeout_s} s")) from None
        returncode = self.returncode
        assert returncode is not None
        return returncode

    # -- writing and signals -------------------------------------------------------------------

    async def send(self, line: str, timeout_s: float = 5.0) -> None:
        """Write ``line`` and a newline to the child's stdin, waiting for room in the pipe."""
        pipe = self._started().get_pipe_transport(0)
        if pipe is None:
            raise RuntimeError(f"{self!r} was started without a stdin pipe")
        if pipe.is_closing():
            raise ChildExitedError(self._describe(f"closed its stdin before {line!r}"))
        assert isinstance(pipe, asyncio.WriteTransport)
        pipe.write(line.encode() + b"\n")
        async with asyncio.timeout(timeout_s):
            await self._writable.wait()

    def send_signal(self, sig: int, *, group: bool = True) -> None:
        """Send ``sig`` to the child's whole process group, or with ``group=False`` to the
        child alone. A group that is gone already is no error."""
        pid = self.pid
        try:
            if group:
                os.killpg(pid, sig)
            elif self.returncode is None:  # a reaped pid may be another process's by now
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM the child's process group."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child's process group (no goodbye)."""
        self.send_signal(signal.SIGKILL)

    # -- internals -----------------------------------------------------------------------------

    def _started(self) -> asyncio.SubprocessTransport:
        if self._transport is None:
            raise RuntimeError(f"{self!r} is not started")
        return self._transport

    def _changed(self) -> None:
        # Wakes every waiter: each waits on the event that was current when it looked.
        self._change.set()
        self._change = asyncio.Event()

    def _outputs_ended(self) -> bool:
        return all(output.ended for output in self._outputs.values())

    def _ended(self) -> bool:
        """Stdout is read to its end and the child has exited: nothing more will come."""
        return self._outputs[1].ended and self._exited.is_set()

    async def _next_line(self, accept: Callable[[str], bool], timeout_s: float, what: str) -> str:
        lines = self._outputs[1].lines
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    while self._cursor < len(lines):
                        line = lines[self._cursor]
                        self._cursor += 1
                        if accept(line):
                            return line
                    if self._ended():
                        raise ChildExitedError(self._describe(f"ended before printing {what}"))
                    await self._change.wait()
        except TimeoutError:
            raise TimeoutError(
                self._describe(f"did not print {what} within {timeout_s} s")
            ) from None

    def _describe(self, what: str) -> str:
        status = "" if self.returncode is None else f" (exit status {self.returncode})"
        text = f"{self.name}{status} {what}"
        labels = {1: "output" if self._merge else "stdout", 2: "stderr"}
        for fd, output in self._outputs.items():
            tail = output.lines[-TAIL_LINES:]
            if output.partial:
                tail.append(output.partial.decode(errors="replace"))
            if tail:
                text += f"\n-- {labels[fd]}, last lines --\n" + "\n".join(tail)
        return text
