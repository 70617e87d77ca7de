"""`autonomy zone manifests`: the Kubernetes objects of a zone folder.

Every example's manifests pass ``kubernetes-validate --strict`` against the schemas of a
current Kubernetes release (bundled with the package: it runs offline). The rest checks
what the objects say: names as the local launcher gives them, the secret in the Secret only,
seeds from the headless Service, sizes, public, images, and containers that are not nodes.
No cluster runs here; tests/test_cluster_netns.py runs these manifests' nodes in network
namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from autonomy import Zone
from autonomy.cli import main
from autonomy.cli._manifests import MESH_PORT, METRICS_PORT, SIZES

from .conftest import REPO, unique
from .netns import NetnsLab, netns_available
from .processes import Child

EXAMPLES = sorted(path for path in (REPO / "examples").iterdir() if path.is_dir())
KUBERNETES_VERSION = "1.37.0"
"""The Kubernetes release whose schemas the manifests are checked against."""
VALIDATE_TIMEOUT_S = 60


def generate(capsys: pytest.CaptureFixture[str], *args: str, warnings: str = "") -> str:
    """The output of ``autonomy zone manifests ARGS``; its stderr must be ``warnings``."""
    code = main(["zone", "manifests", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == warnings
    return captured.out


def objects_of(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in yaml.safe_load_all(text)}


def validate(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "kubernetes_validate", "--strict",
            "--kubernetes-version", KUBERNETES_VERSION, *map(str, files),
        ],
        capture_output=True, text=True, timeout=VALIDATE_TIMEOUT_S, check=False,
    )  # fmt: skip


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj["spec"]["template"]["spec"]["containers"])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def zone_folder(root: Path, text: str, images: tuple[str, ...] = ("main", "runner")) -> Path:
    root.mkdir(parents=True)
    (root / "autonomy.yaml").write_text(text)
    for image in images:
        (root / "images" / image).mkdir(parents=True)
        (root / "images" / image / "Dockerfile").write_text(
            'FROM ghcr.io/build-trust/autonomy-python\nCOPY . .\nENTRYPOINT ["python", "main.py"]\n'
        )
    return root


MIXED = """\
name: shop
pods:
  - name: main-pod
    public: true
    size: medium
    containers:
      - name: main
        image: main
        env:
          GREETING: "costs $(five) $$"
          AUTONOMY_NODE_NAME: spoofed
      - name: db
        image: postgres:16
        args: ["-c", "fsync=off"]
        env: {POSTGRES_PASSWORD: pw}
      - name: helper
        image: runner
        args: [--verbose]
  - name: runner-pod
    clones: 2
    containers:
      - name: runner
        image: runner
  - name: cache-pod
    containers:
      - name: redis
        image: redis:7
"""


SPOOFED = (
    "autonomy: warning: main-pod-main: env AUTONOMY_NODE_NAME is set by the manifests; the "
    "container's value is ignored\n"
)


# -- schema validation --------------------------------------------------------------------------


def test_every_examples_manifests_pass_strict_schema_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for example in EXAMPLES:
        for namespace in ([], ["--namespace", "autonomy-demo"]):
            text = generate(
                capsys, str(example), "--image-prefix", "registry.example.com/team/", *namespace
            )
            file = tmp_path / f"{example.name}{'-ns' if namespace else ''}.yaml"
            file.write_text(text)
            files.append(file)
    mixed = zone_folder(tmp_path / "mixed", MIXED)
    files.append(tmp_path / "mixed.yaml")
    files[-1].write_text(generate(capsys, str(mixed), warnings=SPOOFED))
    done = validate(*files)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = [line for line in done.stdout.splitlines() if " passed for resource " in line]
    # Per file: a Secret, a Service, and a StatefulSet per pod (the mixed zone has 3 pods).
    assert len(passed) == sum(2 * (2 + count_pods(example)) for example in EXAMPLES) + 2 + 3
    assert all(f"against version {KUBERNETES_VERSION.rsplit('.', 1)[0]}" in line for line in passed)


def count_pods(example: Path) -> int:
    return len(yaml.safe_load((example / "autonomy.yaml").read_text())["pods"])


def test_strict_validation_refuses_a_field_kubernetes_does_not_know(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check above is not vacuous: one misspelt field fails it."""
    text = generate(capsys, str(REPO / "examples" / "distribute"))
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        text.replace("      - name: runner\n", "      - name: runner\n        imag: x\n")
    )
    done = validate(broken)
    assert done.returncode != 0
    assert "'imag' was unexpected" in done.stdout + done.stderr


# -- what the objects say ---------------------------------------------------------------------


def test_distribute_becomes_a_secret_a_headless_service_and_a_statefulset_per_pod(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = generate(capsys, str(REPO / "examples" / "distribute"), "--namespace", "demo")
    objects = objects_of(text)
    assert list(objects) == [
        ("Secret", "distribute-zone-secret"),
        ("Service", "distribute"),
        ("StatefulSet", "main-pod"),
        ("StatefulSet", "runner-pod"),
    ]
    assert {obj["metadata"]["namespace"] for obj in objects.values()} == {"demo"}
    secret = Zone.secret("distribute")
    assert objects["Secret", "distribute-zone-secret"]["stringData"] == {"secret": secret}
    assert text.count(secret) == 1, "the secret stands in the Secret only"

    service = objects["Service", "distribute"]["spec"]
    assert service == {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": {"autonomy/zone": "distribute", "autonomy/node": "true"},
        "ports": [{"name": "mesh", "port": MESH_PORT, "targetPort": MESH_PORT}],
    }
    runner = objects["StatefulSet", "runner-pod"]
    assert runner["spec"]["replicas"] == 5
    assert runner["spec"]["serviceName"] == "distribute"
    assert runner["spec"]["podManagementPolicy"] == "Parallel"
    labels = runner["spec"]["template"]["metadata"]["labels"]
    assert labels == {
        "autonomy/zone": "distribute",
        "autonomy/pod": "runner-pod",
        "autonomy/node": "true",
    }
    assert runner["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = containers(runner)
    assert container["image"] == "distribute-runner"
    assert container["ports"] == [
        {"name": "mesh", "containerPort": MESH_PORT},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ]
    annotations = runner["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    expected = "main-pod-main," + ",".join(f"runner-pod-{i}-runner" for i in range(5))
    assert env_of(container) == {
        "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "POD_IP": {"fieldRef": {"fieldPath": "status.podIP"}},
        "PYTHONUNBUFFERED": "1",
        "AUTONOMY_WAIT_UNTIL_INTERRUPTED": "1",
        "AUTONOMY_ZONE": "distribute",
        # StatefulSet pod runner-pod-3 + container runner: the local launcher's name.
        "AUTONOMY_NODE_NAME": "$(POD_NAME)-runner",
        "AUTONOMY_BIND": f"$(POD_IP):{MESH_PORT}",
        "AUTONOMY_PEERS": f"distribute.demo.svc:{MESH_PORT}",
        "AUTONOMY_DISCOVERY": "0",
        "AUTONOMY_EXPECTED_NODES": expected,
        "AUTONOMY_METRICS": f"$(POD_IP):{METRICS_PORT}",
        "AUTONOMY_ZONE_SECRET": {
            "secretKeyRef": {"name": "distribute-zone-secret", "key": "secret"}
        },
    }
    assert container["resources"] == SIZES["big"].as_spec()
    main_pod = objects["StatefulSet", "main-pod"]
    assert main_pod["spec"]["replicas"] == 1
    assert main_pod["spec"]["template"]["metadata"]["labels"]["autonomy/public"] == "true"
    (main_container,) = containers(main_pod)
    # One clone: a fixed name, as the local launcher gives it (not main-pod-0-main).
    assert env_of(main_container)["AUTONOMY_NODE_NAME"] == "main-pod-main"
    pod_spec = main_pod["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False


def test_without_a_namespace_the_objects_name_none_and_nodes_seed_from_the_short_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    objects = objects_of(generate(capsys, str(REPO / "examples" / "hello")))
    assert all("namespace" not in obj["metadata"] for obj in objects.values())
    (container,) = containers(objects["StatefulSet", "main-pod"])
    assert env_of(container)["AUTONOMY_PEERS"] == f"hello:{MESH_PORT}"
    assert container["image"] == "hello-main"
    assert container["resources"] == SIZES["small"].as_spec()  # no size: small


def test_containers_that_are_not_nodes_go_in_as_they_are_and_are_never_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = zone_folder(tmp_path / "shop", MIXED)
    text = generate(capsys, str(folder), "--image-prefix", "ghcr.io/me/", warnings=SPOOFED)
    objects = objects_of(text)
    main_pod, runner_pod, cache_pod = (
        objects["StatefulSet", name] for name in ("main-pod", "runner-pod", "cache-pod")
    )
    main, db, helper = containers(main_pod)
    assert db == {
        "name": "db",
        "image": "postgres:16",
        "args": ["-c", "fsync=off"],
        "env": [{"name": "POSTGRES_PASSWORD", "value": "pw"}],
        "resources": SIZES["medium"].as_spec(),
    }
    expected = "main-pod-main,main-pod-helper,runner-pod-0-runner,runner-pod-1-runner"
    main_env, helper_env = env_of(main), env_of(helper)
    assert main_env["AUTONOMY_EXPECTED_NODES"] == helper_env["AUTONOMY_EXPECTED_NODES"] == expected
    # A pod's second node container binds the next port; seeds stay on the first.
    assert (main["ports"], helper["ports"]) == (
        [
            {"name": "mesh", "containerPort": MESH_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        [
            {"name": "mesh-1", "containerPort": MESH_PORT + 1},
            {"name": "metrics-1", "containerPort": METRICS_PORT + 1},
        ],
    )
    assert helper_env["AUTONOMY_BIND"] == f"$(POD_IP):{MESH_PORT + 1}"
    assert helper_env["AUTONOMY_PEERS"] == f"shop:{MESH_PORT}"
    assert (main["image"], helper["image"]) == ("ghcr.io/me/shop-main", "ghcr.io/me/shop-runner")
    assert helper["args"] == ["--verbose"]
    # The user's values are taken literally ($ escaped from Kubernetes' expansion); the
    # launcher's own names win.
    assert main_env["GREETING"] == "costs $$(five) $$$$"
    assert main_env["AUTONOMY_NODE_NAME"] == "main-pod-main"
    # A pod with no node is not among the Service's addresses.
    assert "autonomy/node" not in cache_pod["spec"]["template"]["metadata"]["labels"]
    assert "autonomy/node" in runner_pod["spec"]["template"]["metadata"]["labels"]
    (redis,) = containers(cache_pod)
    assert redis == {"name": "redis", "image": "redis:7", "resources": SIZES["small"].as_spec()}
    # The header says which images to build, and from where.
    assert f"#   docker build -t ghcr.io/me/shop-main {folder / 'images' / 'main'}" in text


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        (
            ("size: medium", "size: huge"),
            [],
            "pods[0].size: unknown size 'huge': expected one of small, medium, big (default small)",
        ),
        (
            ("name: shop", "name: 9shop"),
            [],
            "name: zone name '9shop' names the zone's Service, and a Service's name must start "
            "with a letter",
        ),
        (
            ("name: runner-pod", "name: " + "r" * 53),
            [],
            f"pods[1].name: pod name '{'r' * 53}' has 53 characters: a StatefulSet's name has "
            "at most 52",
        ),
        (
            ("", ""),
            ["--image-prefix", "Registry.example.com:team"],
            "pods[0].containers[0].image: the image name 'Registry.example.com:teamshop-main' "
            "(--image-prefix, zone and image folder) is not a valid image reference",
        ),
    ],
)
def test_what_kubernetes_would_refuse_is_a_config_error_exiting_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    args: list[str],
    message: str,
) -> None:
    folder = zone_folder(tmp_path / unique("shop"), MIXED.replace(*change))
    code = main(["zone", "manifests", str(folder), *args])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert captured.err.startswith(f"autonomy: error: {folder / 'autonomy.yaml'}: {message}"), (
        captured.err
    )


def test_a_namespace_must_be_a_dns_label(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zone", "manifests", "--namespace", "Bad_NS"]) == 2
    assert "is not a Kubernetes namespace name" in capsys.readouterr().err


@pytest.mark.netns
@pytest.mark.skipif(not netns_available(), reason="needs root and ip netns")
async def test_the_validator_runs_offline_from_its_bundled_schemas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kubernetes-validate ships the schemas of each release it knows: it validates in a
    network namespace that has no route anywhere."""
    file = tmp_path / "distribute.yaml"
    file.write_text(generate(capsys, str(REPO / "examples" / "distribute")))
    argv = [
        sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
        "--kubernetes-version", KUBERNETES_VERSION, str(file),
    ]  # fmt: skip
    async with (
        NetnsLab(1) as (host,),
        Child(*argv, name="kubernetes-validate", prefix=host.command()) as check,
    ):
        code = await check.wait(VALIDATE_TIMEOUT_S)
    assert code == 0, check.stdout + check.stderr
