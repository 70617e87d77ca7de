"""The tests' own child-process helper (tests/processes.py): output read with deadlines, and
no process left behind, whatever way the test ends."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from .conftest import eventually
from .processes import Child, ChildExitedError, environ, still_open

PY = sys.executable

FAMILY = """\
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"grandchild {grandchild.pid}", flush=True)
time.sleep(600)
"""

ESCAPEE = """\
import subprocess, sys, time
# Holds our stdout until 30 s after its parent dies (its stdin then ends): it cannot outlive
# a failed test for long, and it outlives REAP_TIMEOUT_S.
escapee = subprocess.Popen(
    [sys.executable, "-c", "import sys, time; sys.stdin.read(); time.sleep(30)"],
    stdin=subprocess.PIPE,
    start_new_session=True,
)
print(f"escapee {escapee.pid}", flush=True)
time.sleep(600)
"""


def is_gone(pid: int) -> bool:
    """Dead: no /proc entry, or a zombie waiting for a parent (PID 1 here may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


async def test_a_child_and_its_grandchild_are_killed_and_reaped_when_the_body_raises() -> None:
    child = Child(PY, "-c", FAMILY, name="family")
    lines: list[str] = []

    async def body() -> None:
        async with child:
            lines.append(await child.wait_for_line(re.compile(r"grandchild \d+"), 20))
            raise RuntimeError("body failed")

    with pytest.raises(RuntimeError, match="body failed"):
        await body()
    grandchild = int(lines[0].split()[1])
    assert child.returncode == -signal.SIGKILL
    assert is_gone(child.pid)
    # NOTE: SIGKILL reached the whole group at once, but only the child was waited for.
    await eventually(lambda: is_gone(grandchild), what=f"the grandchild {grandchild} to die")
    assert repr(child) == f"<Child 'family' pid={child.pid} exited -9 closed>"
    assert child not in still_open()


async def test_a_child_is_killed_and_reaped_when_its_test_is_cancelled() -> None:
    started = asyncio.Event()
    children: list[Child] = []

    async def body() -> None:
        async with Child(PY, "-c", FAMILY) as child:
            children.append(child)
            await child.read_line(20)
            started.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.ensure_future(body())
    async with asyncio.timeout(20):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (child,) = children
    assert child.returncode == -signal.SIGKILL
    assert not still_open()


async def test_closing_does_not_hang_on_a_process_that_left_the_group_holding_the_output() -> None:
    """The escapee started a session of its own: the group kill misses it, and it keeps the
    child's stdout open; closing still returns, having closed our end of the pipe."""
    async with Child(PY, "-c", ESCAPEE) as child:
        escapee = int((await child.wait_for_line("escapee", 20)).split()[1])
    try:
        assert child.returncode == -signal.SIGKILL
        assert not is_gone(escapee)
    finally:
        os.kill(escapee, signal.SIGKILL)


async def test_a_read_that_times_out_names_the_child_and_shows_its_output() -> None:
    async with Child(PY, "-c", "print('one', flush=True); input()", name="quiet") as child:
        assert await child.read_line(20) == "one"
        with pytest.raises(TimeoutError, match=r"quiet did not print a line within 0.1 s\n.*\none"):
            await child.read_line(0.1)
        assert child.returncode is None  # still running: the test decides what next


async def test_a_read_past_the_end_of_the_output_raises_with_the_exit_status() -> None:
    script = "import sys; print('partial', end=''); sys.exit(3)"
    async with Child(PY, "-c", script, name="short") as child:
        assert await child.read_line(20) == "partial"  # a last line without a newline
        with pytest.raises(ChildExitedError, match=r"short \(exit status 3\) ended before"):
            await child.read_json(20)
        with pytest.raises(ChildExitedError, match="ended before printing the ready lines"):
            await child.wait_until(lambda lines: "ready" in lines, 20, "the ready lines")


async def test_wait_returns_the_status_once_all_output_is_read() -> None:
    script = "import sys; print('out'); print('err', file=sys.stderr); print('more'); sys.exit(4)"
    async with Child(PY, "-c", script) as child:
        assert await child.wait(20) == 4
        assert (child.stdout, child.stderr) == ("out\nmore\n", "err\n")
        assert child.lines == ["out", "more"]


async def test_merged_stderr_reads_as_one_stream_in_order() -> None:
    script = "import sys; print('a', flush=True); print('b', file=sys.stderr, flush=True)"
    async with Child(PY, "-c", script, merge_stderr=True) as child:
        assert await child.wait(20) == 0
        assert (child.lines, child.stderr) == (["a", "b"], "")


async def test_lines_sent_to_stdin_reach_the_child_and_json_lines_come_back() -> None:
    script = "import json\nfor line in iter(input, 'stop'):\n    print(json.dumps({'got': line}))"
    async with Child(PY, "-c", script) as child:
        await child.send("hello")
        await child.send("stop")
        assert await child.read_json(20) == {"got": "hello"}
        assert await child.wait(20) == 0


async def test_a_prefix_command_runs_the_child_with_env_changes_in_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_PROCESSES_GONE", "here")
    script = "import os; print(os.environ.get('VIA_PREFIX'), os.environ.get('TEST_PROCESSES_GONE'),"
    script += " os.environ['ADDED'], os.getcwd())"
    async with Child(
        PY,
        "-c",
        script,
        prefix=["env", "VIA_PREFIX=yes"],
        env={"ADDED": "1", "TEST_PROCESSES_GONE": None},
        cwd=tmp_path,
        stdin=False,
    ) as child:
        assert await child.read_line(20) == f"yes None 1 {tmp_path}"
        assert child.argv[:2] == ["env", "VIA_PREFIX=yes"]


async def test_signals_go_to_the_group_or_to_the_child_alone() -> None:
    script = "import signal; signal.signal(signal.SIGTERM, lambda *_: print('term', flush=True))"
    script += "\nprint('ready', flush=True); input()"
    async with Child(PY, "-c", script) as child:
        assert await child.read_line(20) == "ready"
        child.send_signal(signal.SIGTERM, group=False)
        assert await child.read_line(20) == "term"
        child.terminate()
        assert await child.read_line(20) == "term"
        child.kill()
        assert await child.wait(20) == -signal.SIGKILL
        child.kill()  # a group that is gone is no error


async def test_close_is_idempotent_and_a_child_starts_once() -> None:
    child = Child(PY, "-c", "pass", name="once")
    assert repr(child) == "<Child 'once' not started>"
    await child.start()
    with pytest.raises(RuntimeError, match="already started"):
        await child.start()
    await child.aclose()
    await child.aclose()
    assert repr(child).endswith(" closed>")


def test_environ_applies_changes_and_removals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PROCESSES_KEEP", "1")
    monkeypatch.setenv("TEST_PROCESSES_DROP", "1")
    env = environ({"TEST_PROCESSES_DROP": None, "TEST_PROCESSES_NEW": "2"})
    assert env["TEST_PROCESSES_KEEP"] == "1"
    assert env["TEST_PROCESSES_NEW"] == "2"
    assert "TEST_PROCESSES_DROP" not in env
