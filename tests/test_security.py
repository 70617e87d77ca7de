"""Secure by default: zone secrets, CURVE on every connection, ZAP, and hostile frames from
an authenticated member. Strangers cannot connect, send, start workers or join the zone."""

from __future__ import annotations

import logging
import os
import random
import stat
import sys
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.asyncio

from autonomy import (
    ConfigError,
    Node,
    PeerUnavailableError,
    SecurityError,
    WorkerStartError,
    Zone,
)
from autonomy._protocol import (
    CREDIT,
    ERROR,
    REPLY,
    RESULT,
    VERSION,
    encode,
    encode_request,
    encode_send,
)
from autonomy._secret import secret_path, zone_secret

from .conftest import bounded, frames_of, raw_dealer, unique
from .processes import Child
from .workers import Echoer, Recorder

SECRET_A = "a-secret-of-zone-members-" + "a" * 20
SECRET_B = "a-secret-of-somebody-else-" + "b" * 20


async def test_a_node_with_a_wrong_secret_can_neither_connect_nor_send_nor_start_workers(
    zone: str, runner_factory
) -> None:
    target = await runner_factory(env={"AUTONOMY_ZONE_SECRET": SECRET_A})
    async with Node(zone=zone, bind="127.0.0.1", secret=SECRET_B) as stranger:
        with pytest.raises(PeerUnavailableError, match="secret"):
            await stranger.connect(target.endpoint, timeout=5000)
        remote = stranger._remote(target.endpoint, target.name)
        with pytest.raises(PeerUnavailableError):
            await remote.send_and_receive("echo", "x", timeout=5000)
        with pytest.raises(PeerUnavailableError):
            await remote.send_message("echo", "x", timeout=5000)
        with pytest.raises(PeerUnavailableError):
            await bounded(remote.start_worker("evil", Echoer()))
    # The target logged the refusal, and still serves its members.
    await target.child.wait_for_line("refused", 10)
    async with Node(zone=zone, bind="127.0.0.1", secret=SECRET_A) as member:
        remote = await member.connect(target.endpoint, timeout=5000)
        await bounded(remote.start_worker("echo", Echoer()))
        assert await remote.send_and_receive("echo", "member", timeout=5000) == "member"


async def test_the_same_secret_in_another_zone_gives_other_keys(runner_factory) -> None:
    target = await runner_factory(env={"AUTONOMY_ZONE_SECRET": SECRET_A})
    async with Node(zone=unique("other"), bind="127.0.0.1", secret=SECRET_A) as outsider:
        with pytest.raises(PeerUnavailableError, match="secret"):
            await outsider.connect(target.endpoint, timeout=5000)


async def test_a_raw_client_without_curve_cannot_reach_a_worker(node: Node) -> None:
    recorder = Recorder()
    await node.start_worker("recorder", recorder)
    context = zmq.asyncio.Context()
    sock = raw_dealer(context, node.zone, node.endpoint, member=False)
    try:
        for i in range(20):
            await sock.send(encode_send("recorder", f"plain {i}", 0))
        await sock.send(encode_request(1, "recorder", "get", 5000))
        # Nothing comes back, and nothing reached the worker.
        assert await sock.poll(1000) == 0
    finally:
        sock.close()
        context.term()
    assert recorder.seen == []
    assert node._transport._failed_handshakes >= 1


async def test_a_client_that_knows_the_server_key_but_lacks_the_client_key_is_refused_by_zap(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="autonomy.transport")
    await node.start_worker("echo", Echoer())
    context = zmq.asyncio.Context()
    server_public = node._transport.keys.server_public
    sockets = []
    try:
        for _ in range(5):
            public, secret = zmq.curve_keypair()
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.connect(node.endpoint)
            sockets.append(sock)
            await sock.send(encode_request(1, "echo", "let me in", 5000))
        assert all([await sock.poll(500) == 0 for sock in sockets])
    finally:
        for sock in sockets:
            sock.close()
        context.term()
    refusals = [r for r in caplog.records if "does not hold this zone's secret" in r.getMessage()]
    assert refusals
    # Logged once at WARNING from one address, the rest at DEBUG: no noise.
    assert sum(r.levelno == logging.WARNING for r in refusals) == 1
    assert await node.send_and_receive("echo", "fine", timeout=5000) == "fine"


async def test_a_node_without_the_secret_never_appears_in_zone_nodes(
    node: Node, runner_factory
) -> None:
    await runner_factory("runner-stranger", env={"AUTONOMY_ZONE_SECRET": SECRET_B})
    await runner_factory("runner-member")
    found = await bounded(Zone.nodes(node, filter="runner"), 15)
    assert [each.name for each in found] == ["runner-member"]
    # mDNS saw the stranger (it carries nothing secret), but it never became a member.
    assert node.membership.candidates.get("runner-stranger") is not None


def test_the_secret_file_is_created_once_readable_only_by_the_user(zone: str) -> None:
    first = zone_secret(zone)
    assert zone_secret(zone) == first
    assert len(first) >= 40
    path = secret_path(zone)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_secret_file_readable_by_others_is_refused(zone: str) -> None:
    zone_secret(zone)
    os.chmod(secret_path(zone), 0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        zone_secret(zone)


def test_a_short_secret_is_a_config_error(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTONOMY_ZONE_SECRET", "short")
    with pytest.raises(ConfigError, match="at least"):
        zone_secret(zone)


async def test_the_secret_can_come_from_the_environment_or_a_file(
    zone: str, runner_factory, tmp_path: Path
) -> None:
    secret_file = tmp_path / "zone.secret"
    secret_file.write_text(SECRET_A + "\n")
    target = await runner_factory(env={"AUTONOMY_ZONE_SECRET_FILE": str(secret_file)})
    os.environ["AUTONOMY_ZONE_SECRET"] = SECRET_A
    try:
        async with Node(zone=zone, bind="127.0.0.1") as member:
            remote = await member.connect(target.endpoint, timeout=5000)
            await bounded(remote.start_worker("echo", Echoer()))
            assert await remote.send_and_receive("echo", "env", timeout=5000) == "env"
    finally:
        del os.environ["AUTONOMY_ZONE_SECRET"]


async def test_plain_mode_is_explicit_loud_and_refuses_shipped_code_by_default(
    zone: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="autonomy.node")
    async with (
        Node("plain-a", zone=zone, bind="127.0.0.1", secure=False, discovery=False) as plain,
        Node("plain-b", zone=zone, bind="127.0.0.1", secure=False, discovery=False) as other,
        Node("secure", zone=zone, bind="127.0.0.1", discovery=False) as secure,
    ):
        assert any("PLAIN mode" in r.getMessage() for r in caplog.records)
        remote = await other.connect(plain.endpoint, timeout=5000)
        with pytest.raises(SecurityError, match="plain mode"):
            await bounded(remote.start_worker("echo", Echoer()))
        await plain.start_worker("echo", Echoer())
        assert await remote.send_and_receive("echo", "plain", timeout=5000) == "plain"
        # A secure node and a plain one cannot talk, either way, and the error says why
        # (not "no answer to hello" after the unreachable bound).
        with pytest.raises(PeerUnavailableError, match="plain mode") as caught:
            await bounded(secure.connect(plain.endpoint, timeout=60_000))
        assert "no answer" not in str(caught.value)
        with pytest.raises(PeerUnavailableError, match="plain mode") as caught:
            await bounded(plain.connect(secure.endpoint, timeout=60_000))
        assert "no answer" not in str(caught.value)


@pytest.mark.parametrize("variable", ["AUTONOMY_ZONE_SECRET", "AUTONOMY_ZONE_SECRET_FILE"])
async def test_a_secret_setting_that_is_set_but_empty_is_a_config_error_at_start(
    zone: str, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    # As from `AUTONOMY_ZONE_SECRET=$SECRET` with $SECRET unset: not silently "unset".
    monkeypatch.setenv(variable, "")
    with pytest.raises(ConfigError, match=variable):
        async with Node(zone=zone, bind="127.0.0.1", discovery=False):
            pass


async def test_plain_mode_ships_workers_only_when_asked_explicitly(zone: str) -> None:
    async with (
        Node(zone=zone, bind="127.0.0.1", secure=False, allow_shipping=True,
             discovery=False) as runner,
        Node(zone=zone, bind="127.0.0.1", secure=False, discovery=False) as caller,
    ):
        remote = await caller.connect(runner.endpoint, timeout=5000)
        await bounded(remote.start_worker("echo", Echoer()))
        assert await remote.send_and_receive("echo", "ok", timeout=5000) == "ok"


async def test_a_hardened_node_accepts_only_allow_listed_worker_classes(
    node: Node, runner_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "allowed_mod.py").write_text(
        "class Greeter:\n"
        "    def __init__(self, greeting):\n"
        "        self.greeting = greeting\n"
        "    async def handle_message(self, context, message):\n"
        "        await context.reply(f'{self.greeting}, {message}')\n"
    )
    monkeypatch.syspath_prepend(str(modules))
    import allowed_mod  # type: ignore[import-not-found]

    runner = await runner_factory(
        env={"PYTHONPATH": str(modules), "AUTONOMY_ALLOWED_WORKERS": "allowed_mod.Greeter"}
    )
    remote = await node.connect(runner.endpoint, timeout=5000)
    await bounded(remote.start_worker("greeter", allowed_mod.Greeter("hello")))
    assert await remote.send_and_receive("greeter", "you", timeout=5000) == "hello, you"
    # Code by value (the test workers travel so) is refused, with the reason.
    with pytest.raises(WorkerStartError, match="allow-list"):
        await bounded(remote.start_worker("echo", Echoer()))
    sys.modules.pop("allowed_mod", None)


async def test_ten_thousand_hostile_frames_from_a_member_leave_the_node_whole(
    node: Node, node_factory
) -> None:
    """Fuzz at an authenticated connection: random, truncated, oversized, wrong version and
    forged frames; meanwhile a member sends 500 one-way messages, none of which is lost."""
    recorder = Recorder()
    await node.start_worker("recorder", recorder)
    await node.start_worker("echo", Echoer())
    member = await node_factory()
    remote = await member.connect(node.endpoint, timeout=5000)
    rng = random.Random(7)
    valid = [
        encode_request(3, "echo", "x", 5000),
        encode_send("recorder", "forged?", 0),
        encode(REPLY, 99, "forged reply"),
        encode(RESULT, 98, None),
        encode(ERROR, 97, 3, "forged", {}),
        encode(CREDIT, "recorder", 10**6),
    ]

    def hostile(i: int) -> bytes:
        kind = i % 6
        if kind == 0:
            return rng.randbytes(rng.randint(0, 64))
        if kind == 1:
            frame = rng.choice(valid)
            return frame[: rng.randint(0, len(frame) - 1)]
        if kind == 2:
            return msgpack.packb([VERSION + rng.randint(1, 5), 3, 1, "echo", "x", 0])
        if kind == 3:
            return msgpack.packb([VERSION, rng.randint(14, 255), rng.randint(0, 9)])
        if kind == 4:
            return msgpack.packb([VERSION, rng.choice([3, 2, 6]), "wrong", b"types", -1])
        return rng.choice(valid[2:])  # replies and credit a dialer may not send

    context = zmq.asyncio.Context()
    sock = raw_dealer(context, node.zone, node.endpoint)
    sent_legit = [f"legit {i}" for i in range(500)]
    try:
        for i in range(10_000):
            await sock.send(hostile(i), copy=False)
            if i % 20 == 0:
                await remote.send_message("recorder", sent_legit[i // 20], timeout=5000)
        await sock.send(b"x" * (node.max_frame_bytes + 10))  # oversized, under libzmq's cut
        # The node answered typed errors to what named a request id.
        errors = 0
        while await sock.poll(500):
            errors += sum(frame[1] == ERROR for frame in frames_of(await sock.recv()))
        assert errors > 0
    finally:
        sock.close()
        context.term()
    seen = await remote.send_and_receive("recorder", "get", timeout=10_000)
    import json

    assert [m for m in json.loads(seen) if m.startswith("legit")] == sent_legit
    assert await remote.send_and_receive("echo", "whole", timeout=5000) == "whole"
    assert "RUNNING" in repr(node)


async def test_autonomy_zone_secret_prints_the_secret_every_node_of_the_zone_uses(
    zone: str,
) -> None:
    async with Child(sys.executable, "-m", "autonomy", "zone", "secret", "--zone", zone) as cli:
        assert await cli.wait(30) == 0, cli.stderr
    assert cli.stdout.strip() == zone_secret(zone)
    from autonomy import Zone

    assert Zone.secret(zone) == zone_secret(zone)
