"""What a kubelet and the cluster's DNS make of `autonomy zone manifests`, for the tests.

`Cluster` reads the objects of a manifest (as parsed from its YAML, never written by hand):
the pods each StatefulSet makes (``<name>-<ordinal>``), each container's command (its image's
ENTRYPOINT and CMD, its ``args`` replacing CMD) and environment as the kubelet builds it
(``value`` with ``$(VAR)`` expanded from the variables before it and ``$$`` for ``$``; the
downward API's ``metadata.name``, ``metadata.namespace`` and ``status.podIP``; a Secret's key
through ``secretKeyRef``), and the names a headless Service's DNS answers with the addresses
of the pods it selects. Anything else in the manifest is refused rather than ignored: a
test must not pass on a manifest this reading does not understand.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autonomy.cli._dockerfile import command_for

__all__ = ["Cluster", "ContainerRun", "PodSpec"]

_REFERENCE_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(frozen=True)
class PodSpec:
    """One pod of a StatefulSet."""

    name: str
    statefulset: str
    labels: Mapping[str, str]
    containers: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class ContainerRun:
    """How a container of a pod runs: its command, folder and whole environment."""

    pod: str
    container: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]


class Cluster:
    """The objects of one manifest, read as a cluster would."""

    def __init__(self, objects: Iterable[Mapping[str, Any]], namespace: str) -> None:
        self.objects = list(objects)
        self.namespace = namespace
        known = {"Secret", "Service", "StatefulSet"}
        kinds = {obj["kind"] for obj in self.objects}
        if not kinds <= known:
            raise ValueError(f"objects of kinds this reading does not know: {kinds - known}")

    def of_kind(self, kind: str) -> list[Mapping[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def pods(self) -> list[PodSpec]:
        """Every pod the StatefulSets make, in their order, ordinal by ordinal."""
        pods = []
        for statefulset in self.of_kind("StatefulSet"):
            name = statefulset["metadata"]["name"]
            template = statefulset["spec"]["template"]
            pods.extend(
                PodSpec(
                    name=f"{name}-{ordinal}",
                    statefulset=name,
                    labels=dict(template["metadata"]["labels"]),
                    containers=tuple(template["spec"]["containers"]),
                )
                for ordinal in range(statefulset["spec"]["replicas"])
            )
        return pods

    def service_names(self, addresses: Mapping[str, str]) -> dict[str, list[str]]:
        """What the cluster DNS answers for each Service's names: the addresses of the pods
        it selects. ``addresses`` maps pod names to their IPs (pods not in it are not up)."""
        names: dict[str, list[str]] = {}
        for service in self.of_kind("Service"):
            spec = service["spec"]
            if spec.get("clusterIP") != "None":
                raise ValueError(f"service {service['metadata']['name']} is not headless")
            selector = spec["selector"].items()
            selected = [
                addresses[pod.name]
                for pod in self.pods()
                if selector <= pod.labels.items() and pod.name in addresses
            ]
            short = service["metadata"]["name"]
            namespace = service["metadata"].get("namespace", self.namespace)
            for name in (
                short,
                f"{short}.{namespace}",
                f"{short}.{namespace}.svc",
                f"{short}.{namespace}.svc.cluster.local",
            ):
                names[name] = selected
        return names

    def run(
        self, pod: PodSpec, container: Mapping[str, Any], pod_ip: str, images: Mapping[str, Path]
    ) -> ContainerRun:
        """How the kubelet would start ``container`` of ``pod`` at ``pod_ip``; ``images`` maps
        each image name to the folder it is built from (its Dockerfile gives the command)."""
        image_dir = images[container["image"]]
        env: dict[str, str] = {}
        for item in container.get("env", []):
            env[item["name"]] = self._value(item, env, pod, pod_ip)
        args = [self._expand(arg, env) for arg in container.get("args", [])]
        return ContainerRun(
            pod.name, container["name"], command_for(image_dir, args), image_dir, env
        )

    def _value(
        self, item: Mapping[str, Any], env: Mapping[str, str], pod: PodSpec, pod_ip: str
    ) -> str:
        if "value" in item:
            return self._expand(str(item["value"]), env)
        source = item["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fields = {
                "metadata.name": pod.name,
                "metadata.namespace": self.namespace,
                "status.podIP": pod_ip,
            }
            if path not in fields:
                raise ValueError(f"downward API field {path!r} is not understood here")
            return fields[path]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            (secret,) = [s for s in self.of_kind("Secret") if s["metadata"]["name"] == ref["name"]]
            if ref["key"] in secret.get("stringData", {}):
                return str(secret["stringData"][ref["key"]])
            return base64.b64decode(secret["data"][ref["key"]]).decode()
        raise ValueError(f"env source {sorted(source)} is not understood here")

    @staticmethod
    def _expand(value: str, env: Mapping[str, str]) -> str:
        """Kubernetes' expansion: ``$(VAR)`` of a variable defined before, ``$$`` → ``$``; a
        reference to anything else stays as written."""

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "$"
            return env.get(name, match.group(0))

        return _REFERENCE_RE.sub(replace, value)
