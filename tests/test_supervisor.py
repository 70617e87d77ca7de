"""The local zone launcher: real processes from zone folders, and none left behind.

The zones here run tiny main.py scripts that print and sleep or exit (not the autonomy
library). Every process a test starts carries a per-test mark in its environment; an autouse
fixture SIGKILLs any marked process still alive at teardown and fails the test if there was
one, so nothing outlives a test even when it fails.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

import autonomy
from autonomy.cli import _supervisor, _zonefile, main
from autonomy.cli._detached import delete_deployment, load_state
from autonomy.cli._plan import LaunchSpec, plan
from autonomy.cli._processes import describe_exit, is_alive, process_start_time
from autonomy.cli._supervisor import Supervisor
from autonomy.cli._zonefile import load_zone

from .processes import Child

REPO = Path(__file__).resolve().parents[1]
MARK = "AUTONOMY_TEST_MARK"
EXE = sys.executable

SERVE = """\
import os, sys, time
name = os.environ["AUTONOMY_NODE_NAME"]
print(f"ready {name} pid={os.getpid()}", flush=True)
print(f"stderr of {name}", file=sys.stderr, flush=True)
while True:
    time.sleep(3600)
"""

IGNORE_TERM = """\
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"ready {os.environ['AUTONOMY_NODE_NAME']} pid={os.getpid()}", flush=True)
while True:
    time.sleep(3600)
"""

CRASH = """\
print("about to fail", flush=True)
raise SystemExit(3)
"""

SAY_BYE = """\
import os
print(f"bye from {os.environ['AUTONOMY_NODE_NAME']}")
"""

FLAKY = """\
import os
from pathlib import Path
runs = Path(f"runs-{os.environ['AUTONOMY_NODE_NAME']}")
count = int(runs.read_text()) if runs.exists() else 0
runs.write_text(str(count + 1))
if count == 0:
    print("first run, crashing", flush=True)
    raise SystemExit(5)
print("second run ok", flush=True)
"""

DUMP_ENV = """\
import json, os, sys
keys = ["AUTONOMY_ZONE", "AUTONOMY_NODE_NAME", "AUTONOMY_EXPECTED_NODES",
        "AUTONOMY_WAIT_UNTIL_INTERRUPTED", "PYTHONUNBUFFERED", "FROM_PARENT", "FROM_LIST",
        "FROM_MAPPING"]
print(json.dumps({"env": {k: os.environ.get(k) for k in keys}, "cwd": os.getcwd(),
                  "exe": sys.executable, "argv": sys.argv[1:]}))
"""

LEAVE_GRANDCHILD = """\
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"grandchild pid={child.pid}", flush=True)
"""


# -- helpers ------------------------------------------------------------------------------------


def proc_state(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def is_gone(pid: int) -> bool:
    """Dead: no /proc entry, or a zombie waiting for a parent (here PID 1 does not reap)."""
    return proc_state(pid) in (None, "Z", "X")


def marked_pids(mark: str) -> list[int]:
    needle = f"\0{MARK}={mark}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = b"\0" + Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ and not is_gone(int(entry)):
            found.append(int(entry))
    return found


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private state dir, a mark on every process the test starts, and the leak check."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv("AUTONOMY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv(MARK, mark)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    yield mark
    leaked = marked_pids(mark)
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not marked_pids(mark), 10, "leaked processes to die")
    assert not leaked, f"processes outlived the test: {leaked}"


def make_zone(
    root: Path,
    name: str,
    pods: list[tuple[str, int | None, list[tuple[str, str]]]],
    scripts: dict[str, str],
    dockerfiles: dict[str, str] | None = None,
    extra: str = "",
) -> Path:
    """A zone folder: ``pods`` is [(pod, clones, [(container, image)])], ``scripts`` the
    main.py of each image."""
    lines = [f"name: {name}", "pods:"]
    for pod, clones, containers in pods:
        lines.append(f"  - name: {pod}")
        if clones is not None:
            lines.append(f"    clones: {clones}")
        lines.append("    containers:")
        for container, image in containers:
            lines += [f"      - name: {container}", f"        image: {image}"]
            if extra:
                lines += ["        " + line for line in extra.splitlines()]
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "autonomy.yaml").write_text("\n".join(lines) + "\n")
    for image, script in scripts.items():
        (folder / "images" / image).mkdir(parents=True)
        (folder / "images" / image / "main.py").write_text(script)
        dockerfile = (dockerfiles or {}).get(
            image,
            "FROM ghcr.io/build-trust/autonomy-python\nCOPY . .\n"
            'ENTRYPOINT ["python", "main.py"]\n',
        )
        (folder / "images" / image / "Dockerfile").write_text(dockerfile)
    return folder


StartCli = Callable[..., Awaitable[Child]]


@pytest.fixture
async def cli() -> AsyncIterator[StartCli]:
    """Start ``autonomy`` commands as Children (stdin /dev/null, stderr among the lines)."""
    async with AsyncExitStack() as stack:

        async def start(*args: str, cwd: Path | None = None) -> Child:
            command = Child(
                EXE, "-m", "autonomy.cli", *args, name=shlex.join(["autonomy", *args]),
                cwd=cwd, stdin=False, merge_stderr=True,
            )
            return await stack.enter_async_context(command)

        yield start


async def finish(run: Child, timeout_s: float) -> tuple[int, list[str]]:
    """Wait for the command to end: its exit status and all its lines."""
    return await run.wait(timeout_s), run.lines


def started_pids(lines: list[str]) -> dict[str, int]:
    """Node name → pid, from the launcher's ``started NODE (pid N)`` lines."""
    found = {}
    for line in lines:
        match = re.search(r"started (\S+) \(pid (\d+)\)", line)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


def prefixed(lines: list[str], node: str, text: str) -> bool:
    return any(re.fullmatch(rf"{re.escape(node)} *\| {re.escape(text)}.*", line) for line in lines)


# -- foreground ---------------------------------------------------------------------------------


async def test_foreground_deploy_streams_prefixed_lines_and_stops_all_on_sigint(
    tmp_path: Path, cli: StartCli
) -> None:
    folder = make_zone(
        tmp_path,
        "fg",
        [("main-pod", None, [("main", "main")]), ("runner-pod", 2, [("runner", "runner")])],
        {"main": SERVE, "runner": SERVE},
    )
    nodes = ["main-pod-main", "runner-pod-0-runner", "runner-pod-1-runner"]
    run = await cli("zone", "deploy", str(folder))
    await run.wait_until(
        lambda lines: (
            all(prefixed(lines, n, f"stderr of {n}") for n in nodes)
            and all(prefixed(lines, n, f"ready {n}") for n in nodes)
        ),
        20,
    )
    pids = started_pids(run.lines)
    assert sorted(pids) == sorted(nodes)
    assert all(not is_gone(pid) for pid in pids.values())
    # Padded like `docker compose up`: every prefix is as wide as the longest node name.
    assert any(line.startswith("main-pod-main       | ready") for line in run.lines)

    run.send_signal(signal.SIGINT, group=False)
    code, lines = await finish(run, 20)

    assert code == 0, "\n".join(lines)
    assert "autonomy: SIGINT: stopping zone fg (again to kill at once)" in lines
    for node in nodes:
        assert f"autonomy: {node} was killed by signal 15 (SIGTERM)" in lines
    wait_for(lambda: all(is_gone(pid) for pid in pids.values()), 5, "the nodes to be gone")


async def test_nodes_get_their_environment_folder_interpreter_and_args(
    tmp_path: Path, cli: StartCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_zone(
        tmp_path,
        "envs",
        [("solo", None, [("main", "main")]), ("many", 2, [("job", "main")])],
        {"main": DUMP_ENV},
        extra="env:\n  - name: FROM_LIST\n    value: listed\nargs: [--flag, 7]",
    )
    monkeypatch.setenv("FROM_PARENT", "inherited")
    run = await cli("zone", "deploy", str(folder))
    code, lines = await finish(run, 20)
    assert code == 0, "\n".join(lines)

    dumps = {}
    for line in lines:
        node, sep, rest = line.partition(" | ")
        if sep and rest.startswith("{"):
            dumps[node.strip()] = json.loads(rest)
    expected = "solo-main,many-0-job,many-1-job"
    assert sorted(dumps) == ["many-0-job", "many-1-job", "solo-main"]
    for node, dump in dumps.items():
        assert dump["env"] == {
            "AUTONOMY_ZONE": "envs",
            "AUTONOMY_NODE_NAME": node,
            "AUTONOMY_EXPECTED_NODES": expected,
            "AUTONOMY_WAIT_UNTIL_INTERRUPTED": "1",
            "PYTHONUNBUFFERED": "1",
            "FROM_PARENT": "inherited",
            "FROM_LIST": "listed",
            "FROM_MAPPING": None,
        }
        assert dump["cwd"] == str(folder / "images" / "main")
        assert Path(dump["exe"]).samefile(EXE)  # noqa: ASYNC240
        assert dump["argv"] == ["--flag", "7"]
    assert "autonomy: zone envs ended" in lines


def test_plan_layers_the_environment_and_accepts_extra_env(tmp_path: Path) -> None:
    folder = make_zone(
        tmp_path,
        "layers",
        [("p", None, [("c", "main")])],
        {"main": SAY_BYE},
        extra="env:\n  AUTONOMY_WAIT_UNTIL_INTERRUPTED: '0'\n"
        "  AUTONOMY_NODE_NAME: spoofed\n  FROM_MAPPING: yes",
    )
    (spec,) = plan(
        load_zone(folder),
        extra_env={"AUTONOMY_ZONE_SECRET": "s3cret"},
        launch_id="abc",
        base_env={"HOME": "/home/x", "AUTONOMY_ZONE": "other"},
    )
    assert spec.name == "p-c"
    assert spec.argv == (EXE, "main.py")
    assert spec.env == {
        "HOME": "/home/x",
        "PYTHONUNBUFFERED": "1",
        "AUTONOMY_WAIT_UNTIL_INTERRUPTED": "0",  # the container may turn waiting off
        "FROM_MAPPING": "true",
        "AUTONOMY_ZONE": "layers",
        "AUTONOMY_NODE_NAME": "p-c",
        "AUTONOMY_EXPECTED_NODES": "p-c",
        "AUTONOMY_LAUNCH_ID": "abc",
        "AUTONOMY_ZONE_SECRET": "s3cret",
    }
    assert "s3cret" not in repr(spec)


def test_the_longest_names_of_the_largest_zone_reach_every_node(tmp_path: Path) -> None:
    """Every node gets every node's name in one variable, and Linux caps one variable at
    128 KiB: the node bound keeps the longest names of the largest zone under it."""
    limit = _zonefile.MAX_NODES
    pod, container = "p" * 63, "c" * 63  # the longest labels
    folder = make_zone(tmp_path, "long", [(pod, limit, [(container, "main")])], {"main": SAY_BYE})
    specs = plan(load_zone(folder))
    assert len(specs) == limit
    expected = specs[-1].env["AUTONOMY_EXPECTED_NODES"]
    assert expected.split(",") == [spec.name for spec in specs]
    done = subprocess.run(
        [EXE, "-c", "import os; print(os.environ['AUTONOMY_EXPECTED_NODES'])"],
        env=specs[-1].env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, expected + "\n"), done.stderr


async def test_crashed_node_is_reported_with_its_status_and_fails_the_deploy(
    tmp_path: Path, cli: StartCli
) -> None:
    folder = make_zone(
        tmp_path,
        "crash",
        [("main-pod", None, [("main", "main")]), ("other-pod", None, [("other", "other")])],
        {"main": CRASH, "other": SAY_BYE},
    )
    run = await cli("zone", "deploy", str(folder))
    code, lines = await finish(run, 20)
    assert code == 1, "\n".join(lines)
    assert prefixed(lines, "main-pod-main", "about to fail")
    assert prefixed(lines, "other-pod-other", "bye from other-pod-other")
    assert "autonomy: warning: main-pod-main exited with status 3" in lines
    assert "autonomy: other-pod-other exited with status 0" in lines
    assert lines[-1] == "autonomy: error: zone crash failed: main-pod-main exited with status 3"


async def test_restart_restarts_a_crashed_node(tmp_path: Path, cli: StartCli) -> None:
    folder = make_zone(tmp_path, "flaky", [("main-pod", None, [("main", "main")])], {"main": FLAKY})
    run = await cli("zone", "deploy", "--restart", str(folder))
    code, lines = await finish(run, 20)
    assert code == 0, "\n".join(lines)
    assert prefixed(lines, "main-pod-main", "first run, crashing")
    assert "autonomy: warning: main-pod-main exited with status 5" in lines
    assert any(
        line.startswith("autonomy: warning: restarting main-pod-main in 0.5 s") for line in lines
    )
    assert prefixed(lines, "main-pod-main", "second run ok")
    assert len(started_pids(lines)) == 1
    assert sum("started main-pod-main" in line for line in lines) == 2


async def test_restart_gives_up_on_a_node_that_keeps_crashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_supervisor, "MAX_RESTARTS", 2)
    monkeypatch.setattr(_supervisor, "RESTART_BACKOFF_S", 0.01)
    folder = make_zone(tmp_path, "hopeless", [("p", None, [("c", "main")])], {"main": CRASH})
    output = io.StringIO()
    supervisor = Supervisor(plan(load_zone(folder)), restart=True, output=output, zone="hopeless")
    result = await asyncio.wait_for(supervisor.run(), 20)
    assert result.failures == [("p-c", "exited with status 3; gave up after 2 restarts in a row")]
    assert result.exit_code == 1
    assert output.getvalue().count("p-c | about to fail\n") == 3
    (record,) = supervisor.records
    assert (record.state, record.returncode, record.restarts) == ("failed", 3, 2)
    assert repr(supervisor) == "<Supervisor 'hopeless' stopped nodes=1 running=0 failed=1>"


async def test_supervisor_stops_every_process_when_asked(tmp_path: Path) -> None:
    folder = make_zone(tmp_path, "inproc", [("p", 3, [("c", "main")])], {"main": SERVE})
    output = io.StringIO()
    supervisor = Supervisor(plan(load_zone(folder)), output=output, zone="inproc", stop_timeout_s=5)
    run = asyncio.ensure_future(supervisor.run())
    try:
        await eventually(lambda: output.getvalue().count("| ready") == 3, 20, "3 ready nodes")
        assert repr(supervisor) == "<Supervisor 'inproc' running nodes=3 running=3 failed=0>"
        pids = [record.pid for record in supervisor.records]
        supervisor.request_stop()
        result = await asyncio.wait_for(run, 20)
    finally:
        if not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert result.interrupted
    assert result.exit_code == 0
    assert [r.state for r in supervisor.records] == ["stopped"] * 3
    assert all(pid is not None and is_gone(pid) for pid in pids)


async def test_cancelled_supervisor_kills_every_process(tmp_path: Path) -> None:
    folder = make_zone(tmp_path, "cancel", [("p", 2, [("c", "main")])], {"main": SERVE})
    output = io.StringIO()
    supervisor = Supervisor(plan(load_zone(folder)), output=output, zone="cancel")
    run = asyncio.ensure_future(supervisor.run())
    try:
        await eventually(lambda: output.getvalue().count("| ready") == 2, 20, "2 ready nodes")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    assert run.cancelled()
    pids = [record.pid for record in supervisor.records]
    assert all(pid is not None and is_gone(pid) for pid in pids)


async def test_node_ignoring_sigterm_is_killed_at_the_deadline(
    tmp_path: Path, cli: StartCli
) -> None:
    folder = make_zone(tmp_path, "stubborn", [("p", None, [("c", "main")])], {"main": IGNORE_TERM})
    run = await cli("zone", "deploy", "--timeout", "0.5", str(folder))
    await run.wait_until(lambda lines: prefixed(lines, "p-c", "ready p-c"), 20)
    pid = started_pids(run.lines)["p-c"]
    run.terminate()  # the launcher's whole process group
    code, lines = await finish(run, 20)
    assert code == 0, "\n".join(lines)
    assert "autonomy: SIGTERM: stopping zone stubborn (again to kill at once)" in lines
    assert "autonomy: warning: p-c did not stop within 0.5 s: killing it" in lines
    assert "autonomy: p-c was killed by signal 9 (SIGKILL)" in lines
    assert is_gone(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_launcher_killed_with_sigkill_leaves_no_orphans(
    tmp_path: Path, cli: StartCli
) -> None:
    folder = make_zone(tmp_path, "orphans", [("p", 2, [("c", "main")])], {"main": SERVE})
    run = await cli("zone", "deploy", str(folder))
    await run.wait_until(
        lambda lines: (
            len(started_pids(lines)) == 2 and sum("| ready" in line for line in lines) == 2
        ),
        20,
    )
    pids = started_pids(run.lines).values()
    run.send_signal(signal.SIGKILL, group=False)  # the launcher alone
    code, _ = await finish(run, 10)
    assert code == -signal.SIGKILL
    wait_for(lambda: all(is_gone(pid) for pid in pids), 5, "the orphans to die")


async def test_node_exit_takes_the_rest_of_its_process_group_along(
    tmp_path: Path, cli: StartCli
) -> None:
    """A grandchild that keeps the output pipe open neither hangs the launcher nor survives."""
    folder = make_zone(
        tmp_path, "family", [("p", None, [("c", "main")])], {"main": LEAVE_GRANDCHILD}
    )
    run = await cli("zone", "deploy", str(folder))
    code, lines = await finish(run, 20)
    assert code == 0, "\n".join(lines)
    (grandchild,) = (
        int(m.group(1)) for line in lines if (m := re.search(r"grandchild pid=(\d+)", line))
    )
    wait_for(lambda: is_gone(grandchild), 5, "the grandchild to die")


async def test_shell_form_entrypoint_runs_under_sh_with_this_python(
    tmp_path: Path, cli: StartCli
) -> None:
    folder = make_zone(
        tmp_path,
        "shell",
        [("p", None, [("c", "main")])],
        {"main": DUMP_ENV},
        dockerfiles={"main": "FROM x\nENTRYPOINT python main.py shell-form\n"},
    )
    run = await cli("zone", "deploy", str(folder))
    code, lines = await finish(run, 20)
    assert code == 0, "\n".join(lines)
    assert any('"argv": ["shell-form"]' in line for line in lines), lines
    command = shlex.join(["/bin/sh", "-c", f"{shlex.quote(EXE)} main.py shell-form"])
    assert any(line.endswith(f"): {command}") for line in lines), lines


async def test_command_that_cannot_start_is_a_failure(tmp_path: Path, cli: StartCli) -> None:
    folder = make_zone(
        tmp_path,
        "nocmd",
        [("p", None, [("c", "main")])],
        {"main": SAY_BYE},
        dockerfiles={"main": 'FROM x\nENTRYPOINT ["no-such-command-here"]\n'},
    )
    run = await cli("zone", "deploy", str(folder))
    code, lines = await finish(run, 20)
    assert code == 1, "\n".join(lines)
    assert any("p-c could not start no-such-command-here" in line for line in lines), lines


# -- detached -----------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def list_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 3 and re.fullmatch(r"[a-z0-9-]+", cells[0]) and cells[0] != "NODE":
            rows[cells[0]] = cells[1:]
    return rows


def test_detached_deploy_list_logs_delete_leaves_no_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_zone(
        tmp_path,
        "bg",
        [("main-pod", None, [("main", "main")]), ("runner-pod", 2, [("runner", "runner")])],
        {"main": SERVE, "runner": SERVE},
    )
    nodes = ["main-pod-main", "runner-pod-0-runner", "runner-pod-1-runner"]
    code, out, err = run_cli(capsys, "zone", "deploy", "--detach", str(folder))
    try:
        assert code == 0, err
        assert "zone bg: supervisor running" in out
        assert "autonomy zone delete --zone bg" in out

        state = load_state("bg")
        assert state is not None
        assert state.dir == tmp_path / "state" / "zones" / "bg"
        assert state.zone_dir == str(folder.absolute())
        assert [n.name for n in state.nodes] == nodes
        pids = {n.name: n.pid for n in state.nodes}
        supervisor_pid = state.supervisor_pid
        assert supervisor_pid is not None
        assert state.supervisor_alive()
        assert all(is_alive(n.pid, n.start_time) for n in state.nodes)
        assert all(n.pgid == n.pid for n in state.nodes)
        assert sorted(p.name for p in (state.dir / "logs").iterdir()) == [f"{n}.log" for n in nodes]

        code, out, _ = run_cli(capsys, "zone", "list", str(folder))
        assert code == 0
        rows = list_rows(out)
        assert {name: row[:3] for name, row in rows.items()} == {
            name: [str(pids[name]), "running", "0"] for name in nodes
        }

        def all_ready() -> bool:
            return all(f"ready {n}" in (state.dir / "logs" / f"{n}.log").read_text() for n in nodes)

        wait_for(all_ready, 20, "every node's ready line in its log")
        code, out, _ = run_cli(capsys, "zone", "logs", "--zone", "bg")
        assert code == 0
        lines = out.splitlines()
        for n in nodes:
            assert prefixed(lines, n, f"ready {n} pid={pids[n]}")
            assert prefixed(lines, n, f"stderr of {n}")
        code, out, _ = run_cli(capsys, "zone", "logs", "--dir", str(folder), "runner")
        assert code == 0
        assert {line.split(" | ")[0].strip() for line in out.splitlines()} == set(nodes[1:])

        code, out, err = run_cli(capsys, "zone", "delete", str(folder))
        assert code == 0, err
        assert out == "zone bg deleted\n"
        assert all(is_gone(pid) for pid in [supervisor_pid, *pids.values()] if pid)
        assert not state.dir.exists()
        code, out, _ = run_cli(capsys, "zone", "delete", "--zone", "bg")
        assert (code, out) == (0, "zone bg is not deployed in the background: nothing to delete\n")
    finally:
        delete_deployment("bg", stop_timeout_s=5)  # when an assertion failed midway


def test_detached_zone_that_already_runs_is_not_deployed_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_zone(tmp_path, "twice", [("p", None, [("c", "main")])], {"main": SERVE})
    try:
        assert run_cli(capsys, "zone", "deploy", "-d", str(folder))[0] == 0
        code, _, err = run_cli(capsys, "zone", "deploy", "-d", str(folder))
        assert code == 1
        assert "autonomy: error: zone twice is already deployed (supervisor pid" in err
        code, _, err = run_cli(capsys, "zone", "deploy", str(folder))
        assert code == 1
        assert "zone twice is already running detached" in err
    finally:
        assert run_cli(capsys, "zone", "delete", "--zone", "twice")[0] == 0


def test_detached_crash_is_recorded_with_its_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_zone(
        tmp_path,
        "bgcrash",
        [("bad", None, [("c", "crash")]), ("good", None, [("c", "serve")])],
        {"crash": CRASH, "serve": SERVE},
    )
    try:
        assert run_cli(capsys, "zone", "deploy", "-d", str(folder))[0] == 0

        def crashed() -> bool:
            state = load_state("bgcrash")
            return state is not None and state.nodes[0].state == "failed"

        wait_for(crashed, 20, "the crash to be recorded")
        _, out, _ = run_cli(capsys, "zone", "list", "--zone", "bgcrash")
        rows = list_rows(out)
        assert rows["bad-c"][:2] == ["-", "failed (exited with status 3)"]
        assert rows["good-c"][1] == "running"
    finally:
        assert run_cli(capsys, "zone", "delete", "--zone", "bgcrash")[0] == 0


def test_killed_supervisor_takes_its_nodes_along_and_its_state_is_seen_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_zone(tmp_path, "stale", [("p", 2, [("c", "main")])], {"main": SERVE})
    try:
        assert run_cli(capsys, "zone", "deploy", "-d", str(folder))[0] == 0
        state = load_state("stale")
        assert state is not None
        assert state.supervisor_pid is not None
        os.kill(state.supervisor_pid, signal.SIGKILL)
        wait_for(
            lambda: all(n.pid and is_gone(n.pid) for n in state.nodes),
            10,
            "the nodes to die with their supervisor",
        )
        code, out, _ = run_cli(capsys, "zone", "list", "--zone", "stale")
        assert "zone stale: supervisor gone," in out
        assert [row[1] for row in list_rows(out).values()] == ["lost (its process is gone)"] * 2
        # A stale deployment does not block a new one: it is replaced.
        code, _, err = run_cli(capsys, "zone", "deploy", "-d", str(folder))
        assert code == 0, err
        assert "replacing the stale state of zone stale" in err
    finally:
        assert run_cli(capsys, "zone", "delete", "--zone", "stale")[0] == 0


def test_reused_pids_are_seen_stale_and_spared_by_delete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state whose pids now belong to other processes must not kill those processes."""
    stranger = subprocess.Popen(
        [EXE, "-c", "import time; time.sleep(60)"],
        start_new_session=True,
        env={"PATH": os.environ["PATH"]},
    )
    try:
        start = process_start_time(stranger.pid)
        assert start is not None
        directory = tmp_path / "state" / "zones" / "ghost"
        directory.mkdir(parents=True)
        record = {
            "name": "p-c",
            "pod": "p",
            "clone": None,
            "container": "c",
            "image": "main",
            "argv": ["python", "main.py"],
            "cwd": "/",
            "pid": stranger.pid,
            "pgid": stranger.pid,
            "start_time": start - 1,
            "state": "running",
        }
        gone = {**record, "name": "p-d", "pid": 2**22 + 1, "pgid": 2**22 + 1}
        (directory / "state.json").write_text(
            json.dumps(
                {
                    "zone": "ghost",
                    "zone_dir": "/nowhere",
                    "zone_file": "/nowhere/autonomy.yaml",
                    "launch_id": "0123456789abcdef",
                    "restart": False,
                    "created": time.time(),
                    "supervisor_pid": stranger.pid,
                    "supervisor_start_time": start - 1,
                    "supervisor_state": "running",
                    "nodes": [record, gone],
                }
            )
        )
        code, out, _ = run_cli(capsys, "zone", "list", "ghost")
        assert code == 0
        assert "zone ghost: supervisor gone," in out
        assert list_rows(out) == {
            "p-c": ["-", f"lost (pid {stranger.pid} is now another process)", "0", "-"],
            "p-d": ["-", "lost (its process is gone)", "0", "-"],
        }
        assert run_cli(capsys, "zone", "delete", "--zone", "ghost")[0] == 0
        assert not directory.exists()
        assert stranger.poll() is None, "delete killed a process that was not the zone's"
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait(10)


async def test_logs_follow_ends_when_the_zone_is_deleted(tmp_path: Path, cli: StartCli) -> None:
    folder = make_zone(tmp_path, "follow", [("p", 2, [("c", "main")])], {"main": SERVE})
    deploy = await cli("zone", "deploy", "-d", str(folder))
    code, lines = await finish(deploy, 30)
    assert code == 0, "\n".join(lines)
    try:
        follow = await cli("zone", "logs", "-f", cwd=folder)
        await follow.wait_until(
            lambda lines: (
                prefixed(lines, "p-0-c", "ready p-0-c") and prefixed(lines, "p-1-c", "ready p-1-c")
            ),
            20,
        )
    finally:
        delete = await cli("zone", "delete", cwd=folder)
        code, lines = await finish(delete, 30)
        assert (code, lines) == (0, ["zone follow deleted"])
    code, lines = await finish(follow, 10)
    assert code == 0


# -- the command line ---------------------------------------------------------------------------


def test_config_error_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_zone(tmp_path, "bad", [("p", 0, [("c", "main")])], {"main": SAY_BYE})
    code, out, err = run_cli(capsys, "zone", "deploy", str(folder))
    assert code == 2
    assert out == ""
    assert err == (
        f"autonomy: error: {folder}/autonomy.yaml: pods[0].clones: expected a "
        "positive integer (1 or more), got an integer 0 (line 4)\n"
    )


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err
    assert main(["zone", "deploy", "--timeout", "-1"]) == 2
    assert "expected a positive number of seconds" in capsys.readouterr().err
    assert main(["zone", "list", "--zone", "../etc"]) == 2
    assert "is not a zone name" in capsys.readouterr().err


def test_exit_with_naming_no_node_or_several_is_a_usage_error_exiting_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_zone(
        tmp_path,
        "exits",
        [("main-pod", None, [("main", "main")]), ("runner-pod", 2, [("runner", "main")])],
        {"main": SAY_BYE},
    )
    code, out, err = run_cli(capsys, "zone", "deploy", str(folder), "--exit-with", "nope")
    assert (code, out) == (2, ""), err
    assert err == (
        "autonomy: error: --exit-with: 'nope' names no node of zone exits; its nodes: "
        "main-pod-main, runner-pod-0-runner, runner-pod-1-runner\n"
    )
    code, out, err = run_cli(capsys, "zone", "deploy", str(folder), "--exit-with", "runner")
    assert (code, out) == (2, ""), err
    assert err == (
        "autonomy: error: --exit-with: 'runner' names 2 nodes of zone exits: "
        "runner-pod-0-runner, runner-pod-1-runner; give one node's full name\n"
    )


def test_exit_with_error_in_a_zone_of_many_nodes_names_only_a_few(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_zone(tmp_path, "many", [("p", 400, [("c", "main")])], {"main": SAY_BYE})
    code, out, err = run_cli(capsys, "zone", "deploy", str(folder), "--exit-with", "nope")
    assert (code, out) == (2, ""), err[:1000]
    assert err.startswith("autonomy: error: --exit-with: 'nope' names no node of zone many; its ")
    assert err.endswith(
        ": p-0-c, p-1-c, p-2-c, p-3-c, p-4-c, p-5-c, p-6-c, p-7-c, p-8-c, p-9-c, ... and 390 more\n"
    ), err[:1000]


def test_logs_of_a_zone_not_deployed_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "zone", "logs", "--zone", "absent")
    assert code == 1
    assert "autonomy: error: zone absent is not deployed here in the background" in err


def test_list_without_zone_lists_every_detached_zone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "zone", "list") == (
        0,
        "no zone is deployed here in the background\n",
        "",
    )


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "zone" in capsys.readouterr().out
    assert main(["zone", "deploy", "--help"]) == 0
    assert "AUTONOMY_EXPECTED_NODES" in capsys.readouterr().out
    assert main(["--version"]) == 0
    # The version, then which build runs (issue 16): the one CI tests both ways.
    out = capsys.readouterr().out
    assert re.fullmatch(r"autonomy \S+ \((pure Python|compiled with mypyc)\)\n", out), out
    assert f"({autonomy.__build__})" in out


@pytest.mark.parametrize("module", ["autonomy", "autonomy.cli"])
def test_python_dash_m_runs_the_command(module: str) -> None:
    done = subprocess.run(
        [EXE, "-m", module, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("autonomy ")


# -- the parts --------------------------------------------------------------------------------


def test_describe_exit() -> None:
    assert describe_exit(0) == "exited with status 0"
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-9) == "was killed by signal 9 (SIGKILL)"


def test_launch_spec_round_trips_through_json(tmp_path: Path) -> None:
    folder = make_zone(tmp_path, "json", [("p", 2, [("c", "main")])], {"main": SAY_BYE})
    specs = plan(load_zone(folder))
    assert [LaunchSpec.from_json(json.loads(json.dumps(s.to_json()))) for s in specs] == specs
