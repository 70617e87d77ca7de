"""A "cluster" in network namespaces, run from `autonomy zone manifests` (tests/kubelet.py).

The distribute sample with 3 runners: each pod of its StatefulSets gets a namespace of its
own (a "machine" of the cluster) and runs its containers there, with the command and the
environment the kubelet would give them, parsed from the generated manifest (the pod's IP is
its namespace's address). The headless Service's DNS name resolves, in every namespace, to
the address of every pod it selects, through the hosts file ``ip netns exec`` mounts over
the system's; multicast does not pass (most clusters' networks do not carry it), and the
manifest turns mDNS off anyway: the nodes find each other through the Service's name alone.

The main finds every runner and shares out its work. Then a runner pod dies and comes back
under its name at a new address, in another namespace, as a StatefulSet pod rescheduled on
another machine does; the DNS answers the new address, and the main sees it join again.
What this does not show: a real kubelet, scheduler, kube-proxy or CoreDNS.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, unique
from .kubelet import Cluster, ContainerRun, PodSpec
from .netns import Host, NetnsLab, multicast_passes, netns_available
from .processes import Child

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not netns_available(), reason="needs root and ip netns"),
]

NAMESPACE = "autonomy-test"
RUNNERS = 3
START_S = 40.0
"""How long the zone gets to find its nodes and print its results (seconds when all is well)."""
REJOIN_S = 40.0
"""How long the moved runner gets to leave and join again (a few seconds when all is well)."""


def zone_folder(tmp_path: Path) -> tuple[Path, str]:
    """The distribute sample under a unique zone name, with 3 runner clones."""
    zone = unique("cluster")
    folder = tmp_path / zone
    shutil.copytree(REPO / "examples" / "distribute", folder)
    text = (folder / "autonomy.yaml").read_text()
    text = text.replace("name: distribute", f"name: {zone}", 1)
    text = re.sub(r"clones: 5\b", f"clones: {RUNNERS}", text)
    (folder / "autonomy.yaml").write_text(text)
    return folder, zone


def process_env(run: ContainerRun, pod: PodSpec, home: Path) -> dict[str, str | None]:
    """Changes to this process's environment that leave only what a container would have:
    its manifest env, PATH (the image's), HOSTNAME (the pod's name), and a home of its own
    (no secret file there: the secret must come from the Secret)."""
    changes: dict[str, str | None] = dict.fromkeys(os.environ)
    changes.update(run.env)
    changes.update(PATH=os.environ["PATH"], HOSTNAME=pod.name, HOME=str(home))
    changes["XDG_CONFIG_HOME"] = str(home / ".config")
    return changes


class FakeCluster:
    """The pods of a manifest, each in a namespace of the lab, and the DNS that names them."""

    def __init__(
        self, cluster: Cluster, folder: Path, zone: str, hosts: list[Host], stack: AsyncExitStack
    ) -> None:
        self.cluster = cluster
        self.images = {f"{zone}-{image.name}": image for image in (folder / "images").iterdir()}
        self.hosts = hosts
        self.stack = stack
        self.home = folder.parent / "homes"
        self.placed: dict[str, Host] = {}
        self.children: dict[str, list[Child]] = {}

    def publish_dns(self) -> None:
        """Every namespace's hosts file answers the Service's names with the pods placed now."""
        addresses = {pod: host.address for pod, host in self.placed.items()}
        names = self.cluster.service_names(addresses)
        for host in self.hosts:
            host.write_hosts(names)

    async def start(self, pod: PodSpec, host: Host, extra_env: Mapping[str, str] = {}) -> None:
        """Run the pod's containers in ``host``'s namespace, its IP being the pod's."""
        self.placed[pod.name] = host
        self.publish_dns()
        self.children[pod.name] = []
        for container in pod.containers:
            run = self.cluster.run(pod, container, host.address, self.images)
            home = self.home / f"{pod.name}-{host.name}"
            home.mkdir(parents=True, exist_ok=True)
            child = Child(
                *run.argv, name=f"{pod.name}/{run.container}", prefix=host.command(),
                cwd=run.cwd, env={**process_env(run, pod, home), **extra_env}, stdin=False,
                merge_stderr=True,
            )  # fmt: skip
            self.children[pod.name].append(await self.stack.enter_async_context(child))

    async def kill(self, pod: PodSpec) -> None:
        """The pod dies (SIGKILL, no goodbye) and leaves the DNS."""
        for child in self.children.pop(pod.name):
            child.kill()
            await child.wait(10)
        del self.placed[pod.name]
        self.publish_dns()


async def test_the_manifests_nodes_find_each_other_by_the_services_name_and_a_moved_pod_rejoins(
    tmp_path: Path,
) -> None:
    folder, zone = zone_folder(tmp_path)
    command = [sys.executable, "-m", "autonomy", "zone", "manifests", str(folder)]
    async with Child(*command, "--namespace", NAMESPACE, name="manifests", stdin=False) as cli:
        assert await cli.wait(30) == 0, cli.stderr
    cluster = Cluster(yaml.safe_load_all(cli.stdout), NAMESPACE)
    pods = cluster.pods()
    assert [pod.name for pod in pods] == ["main-pod-0", *(f"runner-pod-{i}" for i in range(3))]
    main_pod, moved = pods[0], pods[2]

    lab = NetnsLab(len(pods) + 1)  # one namespace per pod, and a spare "machine"
    async with lab as hosts, AsyncExitStack() as stack:
        lab.block_multicast()
        assert not await multicast_passes(hosts[1], hosts[0])
        fake = FakeCluster(cluster, folder, zone, hosts, stack)
        spare = hosts[-1]
        for pod, host in zip(pods[1:], hosts[1:], strict=False):
            await fake.start(pod, host)
        # The main logs the zone's joins and leaves (INFO): how the test sees them.
        await fake.start(main_pod, hosts[0], {"AUTONOMY_LOG_LEVEL": "INFO"})
        (main,) = fake.children[main_pod.name]
        env = cluster.run(main_pod, main_pod.containers[0], hosts[0].address, fake.images).env
        assert env["AUTONOMY_NODE_NAME"] == "main-pod-main"
        assert env["AUTONOMY_PEERS"] == f"{zone}.{NAMESPACE}.svc:7100"
        assert env["AUTONOMY_DISCOVERY"] == "0"

        await main.wait_for_line(f"Processed 4 chunks across {RUNNERS} runners", START_S)
        results = [await main.wait_for_line("  - {'processed': 3", 5) for _ in range(4)]
        assert [line.partition("'items': ")[2] for line in results] == [
            f"['item{i}', 'item{i + 1}', 'item{i + 2}']}}" for i in (1, 4, 7, 10)
        ]
        for index, host in enumerate(hosts[1:-1]):
            name = f"runner-pod-{index}-runner"
            assert any(
                f"node {name} joined zone {zone} at tcp://{host.address}:7100" in line
                for line in main.lines
            ), main.lines

        # runner-pod-1 dies; its StatefulSet brings it back on another machine, new address.
        old = fake.placed[moved.name]
        await fake.kill(moved)
        await main.wait_for_line(f"node runner-pod-1-runner left zone {zone}", REJOIN_S)
        await fake.start(moved, spare)
        assert spare.address != old.address
        await main.wait_for_line(
            f"node runner-pod-1-runner joined zone {zone} at tcp://{spare.address}:7100", REJOIN_S
        )
        # Every node still runs (none took the moved one's name for a clash).
        for children in fake.children.values():
            assert all(child.returncode is None for child in children), children
