"""Every example zone runs unchanged under `autonomy zone deploy --detach` and prints what the
guide promises; `autonomy zone delete` then leaves no process behind.

Each test copies its example folder to ``tmp_path`` and renames the zone there (a unique
``name:``), with ``AUTONOMY_STATE_DIR`` in ``tmp_path`` too: tests never see each other's
zones, nor the user's. The CLI runs as a subprocess (``python -m autonomy``), every wait has
a deadline, and the zones run one at a time (a zone is up to six Python processes).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autonomy import Node, Zone

from . import workers
from .conftest import REPO, bounded
from .processes import Child, environ

EXAMPLES = REPO / "examples"
MAIN_NODE = "main-pod-main"
OUTPUT_DEADLINE_S = 30.0
"""How long a zone gets to print what the guide promises (a few seconds when all is well)."""
CLI_TIMEOUT_S = 40.0


def _runners(count: int) -> list[str]:
    return [f"runner-pod-{i}-runner" for i in range(count)]


EXPECTED: dict[str, list[str]] = {
    # The main node's output, line by line, as the guide shows it.
    "hello": ["`echoer` received: hello", "", "`main` received: hello", ""],
    "calculator": ["Result: 42"],
    "patterns": ["LOG: Application started", "Count: 2"],
    # One {"task": "process"} per runner, each reply {"processed": 1}: 3 runners.
    "error-handling": ["Processed 3 items"],
    "discover": ["Found 3 runner nodes", *(f"  - {name}" for name in _runners(3))],
    "remote-workers": [f"Got reply: Processed: hello from {name}" for name in _runners(3)],
    "distribute": [
        "Processed 4 chunks across 5 runners",
        "  - {'processed': 3, 'items': ['item1', 'item2', 'item3']}",
        "  - {'processed': 3, 'items': ['item4', 'item5', 'item6']}",
        "  - {'processed': 3, 'items': ['item7', 'item8', 'item9']}",
        "  - {'processed': 3, 'items': ['item10', 'item11', 'item12']}",
    ],
    "list-workers": ["Local workers: []", *(f"{name}: []" for name in _runners(3))],
}

NODES: dict[str, list[str]] = {
    "distribute": [MAIN_NODE, *_runners(5)],
    **{
        name: [MAIN_NODE, *_runners(3)]
        for name in ("error-handling", "discover", "remote-workers", "list-workers")
    },
    **{name: [MAIN_NODE] for name in ("hello", "calculator", "patterns")},
}


@dataclass
class DeployedZone:
    name: str
    folder: Path
    env: dict[str, str | None]
    """Changes to this process's environment for the CLI (None removes a variable)."""
    state_file: Path

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "autonomy", *args],
            env=environ(self.env),
            cwd=self.folder.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    async def cli_async(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> tuple[int, str, str]:
        """`cli` for async tests (the loop keeps running; no thread is left behind)."""
        argv = [sys.executable, "-m", "autonomy", *args]
        async with Child(*argv, env=self.env, cwd=self.folder.parent) as cli:
            code = await cli.wait(timeout)
        return code, cli.stdout, cli.stderr

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.state_file.read_text(encoding="utf-8"))
        return data

    def log_lines(self, node: str) -> list[str]:
        path = self.state_file.parent / "logs" / f"{node}.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.split("\n")

    def wait_for_output(self, node: str, expected: list[str]) -> list[str]:
        """Wait until ``node``'s log holds ``expected`` as consecutive lines; return the log."""
        deadline = time.monotonic() + OUTPUT_DEADLINE_S
        while True:
            lines = self.log_lines(node)
            if _contains_block(lines, expected):
                return lines
            if time.monotonic() > deadline:
                self._fail_output(node, expected)
            time.sleep(0.2)

    async def wait_for_output_async(self, node: str, expected: list[str]) -> list[str]:
        """`wait_for_output` for async tests."""
        deadline = time.monotonic() + OUTPUT_DEADLINE_S
        while True:
            lines = self.log_lines(node)
            if _contains_block(lines, expected):
                return lines
            if time.monotonic() > deadline:
                self._fail_output(node, expected)
            await asyncio.sleep(0.2)

    def _fail_output(self, node: str, expected: list[str]) -> None:
        logs = {n: "\n".join(self.log_lines(n)) for n in NODES_OF[self.name]}
        listing = self.cli("zone", "list", "--zone", self.name, timeout=20)
        pytest.fail(
            f"zone {self.name}: {node} did not print {expected!r} within "
            f"{OUTPUT_DEADLINE_S} s.\nzone list:\n{listing.stdout}{listing.stderr}\n"
            f"logs: {json.dumps(logs, indent=1)}"
        )


NODES_OF: dict[str, list[str]] = {}
"""Node names by (unique) zone name, for failure messages."""


def _contains_block(lines: list[str], block: list[str]) -> bool:
    return any(lines[i : i + len(block)] == block for i in range(len(lines) - len(block) + 1))


def _launch_marked(launch_id: str) -> list[int]:
    """Live processes (zombies aside) that carry this launch's AUTONOMY_LAUNCH_ID."""
    needle = f"\0AUTONOMY_LAUNCH_ID={launch_id}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = b"\0" + Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if needle in environ and stat.rpartition(")")[2].split()[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def _alive(pid: int | None, start_time: int | None) -> bool:
    """Whether the process recorded as (pid, start time) still runs (a reused pid does not)."""
    if not pid:
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and int(fields[19]) == start_time


def _leftovers(state: dict[str, Any]) -> list[str]:
    left = [f"pid {pid} (launch mark)" for pid in _launch_marked(state["launch_id"])]
    if _alive(state.get("supervisor_pid"), state.get("supervisor_start_time")):
        left.append(f"supervisor pid {state['supervisor_pid']}")
    left.extend(
        f"{node['name']} pid {node['pid']}"
        for node in state["nodes"]
        if _alive(node.get("pid"), node.get("start_time"))
    )
    return left


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[[str], DeployedZone]]:
    """``deploy(example)``: the example deployed detached under a unique zone name; deleted
    at teardown, asserting that no process of it is left."""
    deployed: list[tuple[DeployedZone, dict[str, Any] | None]] = []

    def _deploy(example: str) -> DeployedZone:
        name = f"{example}-{uuid.uuid4().hex[:8]}"
        folder = tmp_path / name
        shutil.copytree(EXAMPLES / example, folder, ignore=shutil.ignore_patterns("__pycache__"))
        zone_file = folder / "autonomy.yaml"
        text, count = re.subn(
            r"^name: .*$", f"name: {name}", zone_file.read_text(encoding="utf-8"), flags=re.M
        )
        assert count == 1, f"{zone_file}: expected one top-level name:"
        zone_file.write_text(text, encoding="utf-8")
        env: dict[str, str | None] = {"AUTONOMY_STATE_DIR": str(tmp_path / "state")}
        for leaked in ("AUTONOMY_ZONE", "AUTONOMY_NODE_NAME", "AUTONOMY_EXPECTED_NODES"):
            env[leaked] = None
        zone = DeployedZone(name, folder, env, tmp_path / "state" / "zones" / name / "state.json")
        NODES_OF[name] = NODES[example]
        deployed.append((zone, None))
        result = zone.cli("zone", "deploy", str(folder), "--detach")
        assert result.returncode == 0, result.stderr
        state = zone.state()
        deployed[-1] = (zone, state)
        assert [node["name"] for node in state["nodes"]] == NODES[example]
        for node in state["nodes"]:
            assert node["name"] in result.stdout
        return zone

    yield _deploy

    for zone, state in deployed:
        if zone.state_file.exists():
            state = zone.state()  # the latest pids
        if state is None:
            continue  # deploy failed before the zone had a state: nothing of it runs
        result = zone.cli("zone", "delete", "--zone", zone.name, "--timeout", "5")
        assert result.returncode == 0, result.stderr
        assert f"zone {zone.name} deleted" in result.stdout
        deadline = time.monotonic() + 3
        while (left := _leftovers(state)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"zone {zone.name} left processes behind: {left}"
        assert not zone.state_file.parent.exists()


@pytest.mark.parametrize("example", list(EXPECTED))
def test_example_zone_prints_what_the_guide_promises(
    example: str, deploy: Callable[[str], DeployedZone]
) -> None:
    zone = deploy(example)
    lines = zone.wait_for_output(MAIN_NODE, EXPECTED[example])
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    # The CLI shows the same lines, prefixed by the node's name.
    shown = zone.cli("zone", "logs", MAIN_NODE, "--zone", zone.name)
    assert shown.returncode == 0, shown.stderr
    prefixed = [f"{MAIN_NODE} | {line}".rstrip() for line in EXPECTED[example]]
    assert _contains_block([line.rstrip() for line in shown.stdout.splitlines()], prefixed)
    # The main node keeps serving after main() (AUTONOMY_WAIT_UNTIL_INTERRUPTED=1): running.
    main = next(node for node in zone.state()["nodes"] if node["name"] == MAIN_NODE)
    assert main["state"] == "running", main


async def test_zone_list_shows_the_workers_of_each_node(
    deploy: Callable[[str], DeployedZone],
) -> None:
    zone = deploy("distribute")
    # The sample stops its workers when done: after its output, every node has none.
    await zone.wait_for_output_async(MAIN_NODE, EXPECTED["distribute"][:1])
    async with Node(
        f"probe-{uuid.uuid4().hex[:6]}", zone=zone.name, bind="127.0.0.1", discovery=True
    ) as probe:
        runners = await Zone.nodes(probe, filter="runner", count=5, timeout=15_000)
        target = next(runner for runner in runners if runner.name == "runner-pod-2-runner")
        await bounded(target.start_worker("probe-echoer", workers.Echoer()), 15)
        code, out, err = await zone.cli_async("zone", "list", "--zone", zone.name)
    assert code == 0, err
    assert err == "", err  # the temporary node does not chatter
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("NODE"))
    assert header.split() == ["NODE", "PID", "STATUS", "RESTARTS", "UPTIME", "WORKERS"]
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.split() and line.split()[0] in NODES["distribute"]
    }
    assert sorted(rows) == sorted(NODES["distribute"]), out
    for name, row in rows.items():
        assert row[2] == "running", out
        assert row[-1] == ("probe-echoer" if name == "runner-pod-2-runner" else "-"), out


async def test_the_readme_demo_runs_the_distribute_zone_in_the_foreground_and_exits(
    tmp_path: Path,
) -> None:
    """The README's main demo: `autonomy zone deploy examples/distribute --exit-with main`."""
    name = f"distribute-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    shutil.copytree(EXAMPLES / "distribute", folder, ignore=shutil.ignore_patterns("__pycache__"))
    zone_file = folder / "autonomy.yaml"
    zone_file.write_text(re.sub(r"^name: .*$", f"name: {name}", zone_file.read_text(), flags=re.M))
    env = {"AUTONOMY_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "autonomy", "zone", "deploy", str(folder), "--exit-with", "main"]
    async with Child(*argv, env=env) as deploy:
        assert await deploy.wait(60) == 0, deploy.stderr
    assert "main-pod-main       | Processed 4 chunks across 5 runners" in deploy.stdout
    assert f"zone {name} stopped" in deploy.stderr
    assert not _launch_marked_by_zone(name)


def _launch_marked_by_zone(zone: str) -> list[int]:
    """Processes still running with AUTONOMY_ZONE=zone in their environment."""
    marker = f"AUTONOMY_ZONE={zone}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found
