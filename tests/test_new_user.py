"""What a new user hit (issue 11), each as it would happen to them: a runner whose loop is
blocked at start, two nodes of one name, a synchronous ``main``, a negative count."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from autonomy import Node, Zone

from .conftest import bounded, unique
from .processes import Child

SLOW_RUNNER = """
import time
import autonomy._discovery as discovery
from autonomy import Node

# A short mDNS deadline (10 s in the library) so that the blocked start below misses it,
# as a runner that loads a model for 12 s before its first await misses the real one.
discovery.START_TIMEOUT_S = 3.0


async def main(node):
    time.sleep(4.0)  # loading something synchronously before the first await
    print("loaded", flush=True)


Node.start(main)
"""


def script(tmp_path: Path, source: str) -> Path:
    path = tmp_path / f"{unique('script')}.py"
    path.write_text(textwrap.dedent(source))
    return path


async def test_a_runner_whose_loop_is_blocked_at_start_is_found_once_it_is_responsive(
    node: Node, tmp_path: Path
) -> None:
    env = {"AUTONOMY_ZONE": node.zone, "AUTONOMY_NODE_NAME": "runner-slow"}
    slow = script(tmp_path, SLOW_RUNNER)
    async with Child(sys.executable, slow, env=env, merge_stderr=True) as runner:
        await runner.wait_for_line("loaded", 20)
        (found,) = await bounded(
            Zone.nodes(node, filter="runner-slow", count=1, timeout=30_000), 35
        )
        assert found.name == "runner-slow"
        # Its first mDNS start missed its deadline; the retry said so, and worked.
        await runner.wait_for_line("retrying in", 5)


async def test_the_node_that_arrives_second_with_a_taken_name_fails_and_the_first_keeps_it(
    node: Node, runner_factory, tmp_path: Path
) -> None:
    first = await runner_factory("runner-twin")
    (twin,) = await bounded(Zone.nodes(node, filter="runner-twin", count=1, timeout=20_000), 25)
    source = """
        from autonomy import Node

        async def main(node):
            print("started", flush=True)

        Node.start(main)
    """
    env = {"AUTONOMY_ZONE": node.zone, "AUTONOMY_NODE_NAME": "runner-twin"}
    async with Child(sys.executable, script(tmp_path, source), env=env) as second:
        code = await second.wait(30)
    assert code == 1, second.stderr
    assert "ConfigError" in second.stderr
    assert "'runner-twin' is taken in zone" in second.stderr
    # The first keeps its name: the same handle reaches it, at its own address.
    assert twin.endpoint == first.endpoint
    assert node.membership.members.get("runner-twin").endpoint == first.endpoint
    await bounded(twin.ping())


async def test_a_synchronous_main_is_refused_before_anything_starts(tmp_path: Path) -> None:
    source = """
        from autonomy import Node

        def main(node):
            print("main ran", flush=True)

        Node.start(main)
    """
    async with Child(sys.executable, script(tmp_path, source), cwd=tmp_path) as child:
        code = await child.wait(30)
    assert code == 1
    assert "TypeError: Node.start(main) needs `async def main(node)`" in child.stderr
    assert "main ran" not in child.stdout  # nothing started


async def test_a_lambda_main_that_returns_no_awaitable_is_refused_with_the_same_advice(
    tmp_path: Path,
) -> None:
    source = """
        from autonomy import Node

        Node.start(lambda node: None, wait_until_interrupted=False, discovery=False)
    """
    async with Child(sys.executable, script(tmp_path, source), cwd=tmp_path) as child:
        code = await child.wait(30)
    assert code == 1
    assert "write `async def main(node)`" in child.stderr


@pytest.mark.parametrize(
    ("count", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
async def test_zone_nodes_refuses_a_count_that_is_not_a_whole_number(
    node: Node, count: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="count"):
        await Zone.nodes(node, count=count)  # type: ignore[arg-type]
