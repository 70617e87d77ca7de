"""`zone deploy` beyond one whole zone of nodes: a share of a zone (``--nodes``, ``--bind``),
several shares of one zone on one machine, and containers that are not nodes (docker/podman).

The zones run tiny scripts, as in test_supervisor (whose fixtures mark every process and
check that none outlives its test). No Docker engine runs here: a stand-in ``docker`` on PATH
(a shell script that records its calls and runs a "container" until stopped) shows what the
launcher asks of the engine, and a stand-in whose daemon does not answer shows the refusal.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from autonomy.cli._detached import delete_deployment, load_state

from .test_supervisor import (  # noqa: F401 - fixtures: the per-test mark and leak check, cli
    SERVE,
    StartCli,
    cli,
    finish,
    isolated,
    list_rows,
    make_zone,
    prefixed,
    run_cli,
    started_pids,
)

SHOW_ENV = """\
import json, os
keys = ["AUTONOMY_NODE_NAME", "AUTONOMY_EXPECTED_NODES", "AUTONOMY_BIND"]
print(json.dumps({k: os.environ.get(k) for k in keys}), flush=True)
"""

STAND_IN_DOCKER = """\
#!/bin/sh
# A stand-in for the docker client: records each call, answers `version`, and runs a
# "container" (until SIGTERM) for `run`.
printf '%s\\n' "$*" >> "$STAND_IN_LOG"
case "$1" in
  version) [ -z "$STAND_IN_DOWN" ] && exit 0
           echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2
           exit 1 ;;
  run) echo "POSTGRES_PASSWORD=$POSTGRES_PASSWORD" >> "$STAND_IN_LOG"
       trap 'echo "container stopped"; exit 0' TERM
       echo "container up"
       sleep 600 &
       wait $! ;;
esac
"""

MIXED = """\
name: mixed
pods:
  - name: main-pod
    containers:
      - name: main
        image: main
      - name: db
        image: postgres:16
        args: [-c, fsync=off]
        env:
          POSTGRES_PASSWORD: s3cret value
"""


def mixed_zone(root: Path) -> Path:
    folder = make_zone(root, "mixed", [("main-pod", None, [("main", "main")])], {"main": SERVE})
    (folder / "autonomy.yaml").write_text(MIXED)
    return folder


def stand_in_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, down: bool) -> Path:
    """Put the stand-in ``docker`` first on PATH; return the file it records its calls in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(STAND_IN_DOCKER)
    docker.chmod(0o755)
    log = tmp_path / "docker-calls.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STAND_IN_LOG", str(log))
    if down:
        monkeypatch.setenv("STAND_IN_DOWN", "1")
    else:
        monkeypatch.delenv("STAND_IN_DOWN", raising=False)
    return log


def env_dumps(lines: list[str]) -> dict[str, dict[str, str | None]]:
    dumps = {}
    for line in lines:
        node, sep, rest = line.partition(" | ")
        if sep and rest.startswith("{"):
            dumps[node.strip()] = json.loads(rest)
    return dumps


# -- containers that are not nodes ---------------------------------------------------------------


async def test_a_container_that_is_not_a_node_runs_under_docker_and_is_removed_after(
    tmp_path: Path,
    cli: StartCli,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = stand_in_docker(tmp_path, monkeypatch, down=False)
    folder = mixed_zone(tmp_path)
    run = await cli("zone", "deploy", str(folder))
    await run.wait_until(
        lambda lines: (
            prefixed(lines, "main-pod-db", "container up")
            and prefixed(lines, "main-pod-main", "ready main-pod-main")
        ),
        20,
    )
    run.send_signal(2, group=False)  # SIGINT: the launcher stops the zone
    code, lines = await finish(run, 30)
    assert code == 0, "\n".join(lines)
    assert prefixed(lines, "main-pod-db", "container stopped")
    recorded = calls.read_text().splitlines()
    (started,) = [line for line in lines if "started main-pod-db" in line]
    name = re.search(r"--name (autonomy-mixed-main-pod-db-[0-9a-f]{8})", started)
    assert name, started
    # Its env reaches the container by name: no value on the command line or in the log.
    assert recorded == [
        "version",
        f"run --rm --name {name.group(1)} --network host -e POSTGRES_PASSWORD postgres:16 "
        "-c fsync=off",
        "POSTGRES_PASSWORD=s3cret value",
        f"rm --force {name.group(1)}",
    ]
    assert not any("s3cret" in line for line in lines)


def test_the_nodes_of_a_zone_with_a_database_never_expect_it(tmp_path: Path) -> None:
    from autonomy.cli._plan import plan
    from autonomy.cli._zonefile import load_zone

    folder = mixed_zone(tmp_path)
    main, db = plan(
        load_zone(folder), engine="/usr/bin/podman", launch_id="0123456789abcdef", base_env={}
    )
    assert main.env["AUTONOMY_EXPECTED_NODES"] == "main-pod-main"
    assert (main.is_node, db.is_node) == (True, False)
    name = "autonomy-mixed-main-pod-db-01234567"
    assert db.argv == (
        "/usr/bin/podman", "run", "--rm", "--name", name, "--network", "host",
        "-e", "POSTGRES_PASSWORD", "postgres:16", "-c", "fsync=off",
    )  # fmt: skip
    assert db.stop_argv == ("/usr/bin/podman", "rm", "--force", name)
    # No autonomy setting: only its own env (passed on by name) and the launch's mark.
    assert db.env == {"POSTGRES_PASSWORD": "s3cret value", "AUTONOMY_LAUNCH_ID": "0123456789abcdef"}


@pytest.mark.parametrize("engine", ["none", "daemon down"])
def test_without_an_engine_that_answers_deploy_names_the_container_and_starts_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    engine: str,
) -> None:
    folder = mixed_zone(tmp_path)
    if engine == "none":
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
        why = "neither docker nor podman is installed here"
    else:
        stand_in_docker(tmp_path, monkeypatch, down=True)
        monkeypatch.setenv("PATH", str(tmp_path / "bin"))
        why = "docker does not answer (Cannot connect to the Docker daemon at"
    for detach in ([], ["--detach"]):
        code, out, err = run_cli(capsys, "zone", "deploy", str(folder), *detach)
        assert (code, out) == (2, ""), err
        assert err.startswith(
            f"autonomy: error: {folder}/autonomy.yaml: pods[0].containers[1].image: container "
            "'db' of pod 'main-pod' runs the image postgres:16, which is not a node: `zone "
            f"deploy` runs such containers with docker or podman, and {why}"
        ), err
        assert "leave main-pod-db out with --nodes" in err
        assert "started" not in err
    assert load_state("mixed") is None
    # Without the database, the node runs.
    code, out, err = run_cli(capsys, "zone", "deploy", str(folder), "--nodes", "*-main", "--detach")
    try:
        assert code == 0, err
        state = load_state("mixed")
        assert state is not None
        assert [node.name for node in state.nodes] == ["main-pod-main"]
    finally:
        delete_deployment("mixed", stop_timeout_s=5)


# -- a share of a zone ------------------------------------------------------------------------


async def test_nodes_globs_run_only_their_nodes_bound_as_asked_each_expecting_the_whole_zone(
    tmp_path: Path,
    cli: StartCli,  # noqa: F811 - the fixture
) -> None:
    folder = make_zone(
        tmp_path,
        "share",
        [("main-pod", None, [("main", "main")]), ("runner-pod", 4, [("runner", "main")])],
        {"main": SHOW_ENV},
    )
    run = await cli(
        "zone",
        "deploy",
        str(folder),
        "--nodes",
        "runner-pod-[0-1]-*",
        "--nodes",
        "*-3-*",
        "--bind",
        "127.0.0.1",
    )
    code, lines = await finish(run, 20)
    assert code == 0, "\n".join(lines)
    everyone = "main-pod-main," + ",".join(f"runner-pod-{i}-runner" for i in range(4))
    ran = ["runner-pod-0-runner", "runner-pod-1-runner", "runner-pod-3-runner"]
    assert sorted(started_pids(lines)) == ran
    assert env_dumps(lines) == {
        name: {
            "AUTONOMY_NODE_NAME": name,
            "AUTONOMY_EXPECTED_NODES": everyone,
            "AUTONOMY_BIND": "127.0.0.1",
        }
        for name in ran
    }
    assert any(
        "deploying zone share" in line
        and "3 node(s) (runner-pod-0-runner" in line
        and "bound to 127.0.0.1" in line
        for line in lines
    ), lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--nodes", "runner-pod-[5-9]-*"],
            "--nodes: 'runner-pod-[5-9]-*' matches no node of zone odd; its nodes: "
            "main-pod-main, runner-pod-0-runner, runner-pod-1-runner",
        ),
        (
            ["--nodes", "runner-*", "--exit-with", "main"],
            "--exit-with: main-pod-main is not among the nodes this deploy runs (--nodes runner-*)",
        ),
        (
            ["--bind", "192.0.2.1"],
            "--bind: 192.0.2.1 is not an address of this machine (Cannot assign requested "
            "address): give this machine's LAN address",
        ),
    ],
)
def test_a_share_that_cannot_be_is_a_usage_error_exiting_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    folder = make_zone(
        tmp_path,
        "odd",
        [("main-pod", None, [("main", "main")]), ("runner-pod", 2, [("runner", "main")])],
        {"main": SERVE},
    )
    code, out, err = run_cli(capsys, "zone", "deploy", str(folder), *args)
    assert (code, out, err) == (2, "", f"autonomy: error: {message}\n")


@pytest.mark.parametrize(
    ("address", "message"),
    [("0.0.0.0", "is a wildcard"), ("my-laptop", "expected an IP address of this machine")],
)
def test_bind_takes_an_address_not_a_name_nor_a_wildcard(
    capsys: pytest.CaptureFixture[str], address: str, message: str
) -> None:
    code, out, err = run_cli(capsys, "zone", "deploy", "--bind", address)
    assert (code, out) == (2, "")
    assert message in err


def test_two_shares_of_one_zone_on_one_machine_keep_apart_and_are_listed_logged_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two shares bound to two addresses of one machine (127.0.0.1 and 127.0.0.2, both on
    loopback): each has its own state (``<zone>@<address>``); list shows both, logs asks
    which, delete stops both."""
    folder = make_zone(
        tmp_path,
        "split",
        [("main-pod", None, [("main", "main")]), ("runner-pod", 2, [("runner", "main")])],
        {"main": SERVE},
    )
    shares = {"127.0.0.1": "main-pod-*", "127.0.0.2": "runner-pod-*"}
    try:
        for address, glob in shares.items():
            code, out, err = run_cli(
                capsys, "zone", "deploy", "-d", str(folder), "--nodes", glob, "--bind", address
            )
            assert code == 0, err
            assert f"zone split on {address}: supervisor running" in out
            assert f"autonomy zone delete --zone split --bind {address}" in out
        one, two = (load_state(f"split@{address}") for address in shares)
        assert one is not None
        assert two is not None
        assert [node.name for node in one.nodes] == ["main-pod-main"]
        assert [node.name for node in two.nodes] == ["runner-pod-0-runner", "runner-pod-1-runner"]
        assert (two.bind, two.node_globs) == ("127.0.0.2", ["runner-pod-*"])
        assert two.dir == tmp_path / "state" / "zones" / "split@127.0.0.2"

        # The same share again is refused; the whole zone on loopback is another deployment.
        code, _, err = run_cli(
            capsys,
            "zone",
            "deploy",
            "-d",
            str(folder),
            "--nodes",
            "runner-*",
            "--bind",
            "127.0.0.2",
        )
        assert code == 1
        assert "zone split on 127.0.0.2 is already deployed" in err
        assert "autonomy zone delete --zone split --bind 127.0.0.2" in err

        code, out, _ = run_cli(capsys, "zone", "list", "--zone", "split", "--bind", "127.0.0.2")
        assert code == 0
        assert re.search(r"zone split on 127\.0\.0\.2: supervisor running \(pid \d+\), 2 node", out)
        assert "  share  --nodes runner-pod-*" in out
        assert sorted(list_rows(out)) == ["runner-pod-0-runner", "runner-pod-1-runner"]

        code, out, err = run_cli(capsys, "zone", "logs", "--zone", "split")
        assert (code, out) == (2, "")
        assert "zone split has 2 deployments here, one per address: say which with --bind " in err
        assert "(127.0.0.1, 127.0.0.2)" in err
        code, out, err = run_cli(capsys, "zone", "logs", "--zone", "split", "--bind", "127.0.0.1")
        assert code == 0, err

        code, out, err = run_cli(capsys, "zone", "delete", "--zone", "split")
        assert code == 0, err
        assert out == "zone split on 127.0.0.1 deleted\nzone split on 127.0.0.2 deleted\n"
        assert not (tmp_path / "state" / "zones").exists() or not list(
            (tmp_path / "state" / "zones").iterdir()
        )
    finally:
        for address in shares:
            delete_deployment(f"split@{address}", stop_timeout_s=5)
