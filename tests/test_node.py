"""The local node: lifecycle, names, Node.start, signals, and local backpressure."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from autonomy import Node, NodeClosedError, ReplyTimeoutError, WorkerStoppedError

from .conftest import bounded, unique
from .processes import Child
from .workers import Echoer, Recorder, Sleeper


async def run_script(
    tmp_path: Path, source: str, env: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    script = tmp_path / f"{unique('script')}.py"
    script.write_text(textwrap.dedent(source))
    async with Child(sys.executable, script, cwd=tmp_path, env=env) as child:
        code = await child.wait(timeout)
    return code, child.stdout, child.stderr


async def test_repr_shows_name_state_endpoint_and_counts(node: Node) -> None:
    await node.start_worker("a", Echoer())
    text = repr(node)
    assert text.startswith(f"<Node {node.name!r} RUNNING tcp://127.0.0.1:")
    assert text.endswith("workers=1 peers=0>")
    assert repr(node._workers.get("a")) == "<Mailbox 'a' queued=0 handled=0>"


async def test_a_node_binds_loopback_on_a_free_port_by_default(zone: str) -> None:
    async with Node(zone=zone) as node:
        assert node.endpoint.startswith("tcp://127.0.0.1:")
        assert int(node.endpoint.rsplit(":", 1)[1]) > 0


async def test_names_come_from_arguments_then_environment_then_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTONOMY_NODE_NAME", "from-env")
    monkeypatch.setenv("AUTONOMY_ZONE", "env-zone")
    assert Node().name == "from-env"
    assert Node().zone == "env-zone"
    assert Node("explicit", zone="z").name == "explicit"
    monkeypatch.delenv("AUTONOMY_NODE_NAME")
    monkeypatch.delenv("AUTONOMY_ZONE")
    default = Node()
    assert default.zone == "default"
    host, suffix = default.name.rsplit("-", 1)
    assert host
    assert len(suffix) == 6
    assert Node().name != default.name


@pytest.mark.parametrize(
    ("bind", "address"),
    [
        (None, "tcp://127.0.0.1:*"),
        ("10.1.2.3", "tcp://10.1.2.3:*"),
        ("10.1.2.3:7000", "tcp://10.1.2.3:7000"),
        ("tcp://0.0.0.0:9", "tcp://0.0.0.0:9"),
        ("[::1]:7000", "tcp://[::1]:7000"),
    ],
)
def test_bind_accepts_host_host_port_or_an_address(bind: str | None, address: str) -> None:
    from autonomy._node import bind_address

    assert bind_address(bind or "") == address


async def test_the_bind_address_can_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    monkeypatch.setenv("AUTONOMY_BIND", "127.0.0.1")
    async with Node(zone=zone) as node:
        assert node.endpoint.startswith("tcp://127.0.0.1:")


async def test_stop_is_idempotent_and_calls_after_it_raise_node_closed(zone: str) -> None:
    node = Node(zone=zone, bind="127.0.0.1")
    async with node:
        await node.start_worker("echo", Echoer())
    await node.stop()
    assert "STOPPED" in repr(node)
    with pytest.raises(NodeClosedError):
        await node.send_and_receive("echo", "x", timeout=100)
    with pytest.raises(NodeClosedError):
        await node.start_worker("other", Echoer())
    with pytest.raises(NodeClosedError):
        await node.__aenter__()


async def test_stopping_the_node_fails_queued_requests_by_type(node_factory) -> None:
    node = await node_factory()
    await node.start_worker("sleeper", Sleeper())
    in_hand = asyncio.ensure_future(node.send_and_receive("sleeper", "0.2", timeout=5000))
    queued = asyncio.ensure_future(node.send_and_receive("sleeper", "0", timeout=5000))
    await asyncio.sleep(0)  # both requests are queued (ordering, not waiting)
    await bounded(node.stop())
    assert await bounded(in_hand) == "slept 0.2"
    with pytest.raises(WorkerStoppedError):
        await bounded(queued)


async def test_a_full_mailbox_makes_local_senders_wait_then_time_out(node_factory) -> None:
    node = await node_factory(mailbox_size=5)
    await node.start_worker("sleeper", Sleeper())
    await node.send_message("sleeper", "0.3")  # in hand
    for _ in range(5):
        await node.send_message("sleeper", "0")  # fills the mailbox
    assert node._workers.get("sleeper").queued == 5
    with pytest.raises(ReplyTimeoutError):
        await node.send_message("sleeper", "0", timeout=50)
    # Backpressure, not loss: once there is room, the wait succeeds.
    await node.send_message("sleeper", "0", timeout=5000)
    assert node._workers.get("sleeper").queued <= 5


async def test_a_flood_towards_a_slow_worker_stays_bounded_and_loses_nothing(
    node_factory,
) -> None:
    node = await node_factory(mailbox_size=50)
    await node.start_worker("recorder", Recorder())
    senders = [
        asyncio.ensure_future(
            asyncio.gather(*(node.send_message("recorder", f"{s}-{i}") for i in range(200)))
        )
        for s in range(5)
    ]
    peak = 0
    while not all(s.done() for s in senders):
        peak = max(peak, node._workers.get("recorder").queued)
        await asyncio.sleep(0)
    await bounded(asyncio.gather(*senders))
    assert peak <= 50
    seen = await node.send_and_receive("recorder", "get", timeout=5000)
    assert sorted(json.loads(seen)) == sorted(f"{s}-{i}" for s in range(5) for i in range(200))


async def test_node_start_runs_main_and_returns_when_told_not_to_wait(tmp_path: Path) -> None:
    code, out, err = await run_script(
        tmp_path,
        """
        from autonomy import Node

        class Echoer:
            async def handle_message(self, context, message):
                await context.reply(message)

        async def main(node):
            await node.start_worker("echoer", Echoer())
            print(await node.send_and_receive("echoer", "hello"))

        Node.start(main)
        """,
        env={"AUTONOMY_WAIT_UNTIL_INTERRUPTED": "0"},
    )
    assert code == 0, err
    assert out == "hello\n"


async def test_node_start_serves_until_sigterm_then_stops_gracefully(tmp_path: Path) -> None:
    script = tmp_path / "serve.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio
            from autonomy import Node

            class Sleeper:
                async def handle_message(self, context, message):
                    await asyncio.sleep(0.2)
                    print("finished", message, flush=True)

            async def main(node):
                await node.start_worker("sleeper", Sleeper())
                await node.send_message("sleeper", "in-hand")
                print("ready", flush=True)

            Node.start(main)
            print("stopped cleanly", flush=True)
            """
        )
    )
    env = {"AUTONOMY_WAIT_UNTIL_INTERRUPTED": "1"}
    async with Child(sys.executable, script, env=env) as child:
        assert await child.read_line(20) == "ready"
        child.send_signal(signal.SIGTERM, group=False)
        assert await child.wait(20) == 0, child.stderr
    assert child.lines == ["ready", "finished in-hand", "stopped cleanly"]


async def test_node_start_propagates_an_exception_from_main(tmp_path: Path) -> None:
    code, _, err = await run_script(
        tmp_path,
        """
        from autonomy import Node

        async def main(node):
            raise RuntimeError("main failed")

        Node.start(main)
        """,
    )
    assert code == 1
    assert "RuntimeError: main failed" in err


async def test_node_start_inside_a_running_loop_says_what_to_do_instead() -> None:
    async def main(node: Node) -> None:
        pass

    with pytest.raises(RuntimeError, match="async with Node"):
        Node.start(main)


async def test_an_idle_secure_node_does_not_spin(node: Node) -> None:
    """Regression: a ZAP handler that re-armed itself after every drain burned a core."""
    import time

    assert node.secure
    before = time.process_time()
    await asyncio.sleep(1.0)  # idling is the behaviour under test
    # NOTE: CPU time of this process, which other processes' load does not inflate: a
    # spinning loop uses the whole second, an idle node next to nothing.
    assert time.process_time() - before < 0.5
