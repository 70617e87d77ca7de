"""One zone folder across three "LAN machines" (network namespaces on one bridge, multicast
passing as on a LAN), each running its share with ``autonomy zone deploy --nodes --bind``.

The README's recipe, step by step: machine A prints the zone's secret (``autonomy zone
secret``), B and C get it in ``AUTONOMY_ZONE_SECRET`` (each machine has a config home of its
own: nobody finds the secret on disk); B and C deploy their runners in the background, A
deploys the main in the foreground. The distribute sample sees all 5 runners. The two
background shares live on one real machine with one state root: their states are kept
apart by address, ``zone list``, ``logs`` and ``delete`` reach each, and nothing is left.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import REPO, unique
from .netns import Host, NetnsLab, netns_available
from .processes import Child

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not netns_available(), reason="needs root and ip netns"),
]

CLI_TIMEOUT_S = 40.0
RUN_S = 45.0
"""How long the main's share gets to find the 5 runners, print, and exit (seconds when all
is well)."""

SHARES = {1: "runner-pod-[0-2]-*", 2: "runner-pod-[3-4]-*"}
"""The runners' machines (lab hosts) and their --nodes globs."""


class Lan:
    """The lab's machines, each with its own config home, and one state root (one host)."""

    def __init__(self, hosts: list[Host], root: Path) -> None:
        self.hosts = hosts
        self.root = root
        self.secret: str | None = None

    def env(self, index: int, *, secret: bool = True) -> dict[str, str | None]:
        changes: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTONOMY_")}
        changes["XDG_CONFIG_HOME"] = str(self.root / f"machine-{index}")
        changes["AUTONOMY_STATE_DIR"] = str(self.root / "state")
        if secret and index and self.secret is not None:
            changes["AUTONOMY_ZONE_SECRET"] = self.secret  # copied by hand, once
        return changes

    def cli(self, index: int | None, *args: str) -> Child:
        """``autonomy ARGS`` on machine ``index`` (None: the real machine, outside the lab)."""
        prefix = self.hosts[index].command() if index is not None else []
        return Child(
            sys.executable, "-m", "autonomy", *args, name=f"[{index}] autonomy {' '.join(args)}",
            prefix=prefix, env=self.env(index or 0), stdin=False,
        )  # fmt: skip


async def run(command: Child, timeout_s: float = CLI_TIMEOUT_S) -> tuple[int, str, str]:
    async with command:
        code = await command.wait(timeout_s)
    return code, command.stdout, command.stderr


async def test_one_zone_folder_in_shares_on_three_machines_sees_all_five_runners(
    tmp_path: Path,
) -> None:
    zone = unique("lan")
    folder = tmp_path / zone
    shutil.copytree(REPO / "examples" / "distribute", folder)
    yaml_file = folder / "autonomy.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("name: distribute", f"name: {zone}", 1))

    async with NetnsLab(3) as hosts:
        lan = Lan(hosts, tmp_path)
        try:
            code, out, err = await run(lan.cli(0, "zone", "secret", "--zone", zone))
            assert code == 0, err
            lan.secret = out.strip()
            for index, glob in SHARES.items():
                address = hosts[index].address
                deploy = ["zone", "deploy", str(folder), "--nodes", glob, "--bind", address, "-d"]
                code, out, err = await run(lan.cli(index, *deploy))
                assert code == 0, err
                assert f"zone {zone} on {hosts[index].address}: supervisor running" in out

            main = lan.cli(
                0, "zone", "deploy", str(folder), "--nodes", "main-pod-*",
                "--bind", hosts[0].address, "--exit-with", "main",
            )  # fmt: skip
            code, out, err = await run(main, RUN_S)
            assert code == 0, out + err
            assert "main-pod-main | Processed 4 chunks across 5 runners" in out.splitlines(), out
            assert f"bound to {hosts[0].address}" in err

            # The two background shares, on one machine: apart, and each reachable.
            states = sorted(p.name for p in (tmp_path / "state" / "zones").iterdir())
            assert states == [f"{zone}@{hosts[i].address}" for i in SHARES]
            code, out, err = await run(
                lan.cli(1, "zone", "list", "--zone", zone, "--bind", hosts[1].address)
            )
            assert code == 0, err
            rows = {
                cells[0]: cells[1:]
                for line in out.splitlines()
                if (cells := re.split(r"\s{2,}", line.strip()))[0].startswith("runner-pod-")
            }
            # Asked over the mesh from machine B: every runner of its share answered (its
            # workers came and went with the main's work: "-", none now).
            assert {name: row[1::3] for name, row in rows.items()} == {
                f"runner-pod-{i}-runner": ["running", "-"] for i in range(3)
            }, out
            code, out, err = await run(lan.cli(None, "zone", "logs", "--zone", zone))
            assert code == 2
            assert f"--bind ({hosts[1].address}, {hosts[2].address})" in err
            code, out, err = await run(
                lan.cli(None, "zone", "logs", "--zone", zone, "--bind", hosts[2].address)
            )
            assert code == 0, err
        finally:
            code, out, err = await run(lan.cli(None, "zone", "delete", "--zone", zone))
        assert code == 0, err
        assert out.splitlines() == [f"zone {zone} on {hosts[i].address} deleted" for i in SHARES]
        assert not list((tmp_path / "state" / "zones").iterdir())
