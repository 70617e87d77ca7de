"""Kubernetes manifests: a zone folder as the objects ``kubectl apply -f -`` takes.

`manifests` turns a parsed zone into plain dicts, `render` into YAML:

- one **Secret** holding the zone's secret; each node reads it through ``secretKeyRef``
  (``AUTONOMY_ZONE_SECRET``), so its value never stands in the manifest's plain env;
- one **headless Service** named after the zone (``clusterIP: None``, not-ready addresses
  published) that selects the pods running nodes: its DNS name resolves to every such pod's
  address, and every node seeds from it (``AUTONOMY_PEERS=<zone>[.<ns>.svc]:MESH_PORT``),
  with mDNS off (multicast does not cross machines in most clusters);
- one **StatefulSet per pod** of autonomy.yaml, named after the pod, ``clones`` replicas,
  started in parallel: pod ``runner-pod-3`` with container ``runner`` is the node
  ``runner-pod-3-runner`` (``AUTONOMY_NODE_NAME=$(POD_NAME)-runner``), as the local launcher
  names it; a pod of one clone has a fixed name (``main-pod-main``), as locally.

Each node binds its pod's IP (downward API) on a fixed port, `MESH_PORT` for a pod's first
node container, the next port for its second...; every pod that runs nodes has one on
`MESH_PORT`, which is all a seed needs (the rest are learnt by gossip). A container that is
not a node goes in as it is (image, args, env): no autonomy setting, never expected.
``size`` sets every container's resources (`SIZES`); ``public`` only labels the pods
(`PUBLIC_LABEL`), since a node serves nothing outside the mesh. No I/O here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from autonomy import ConfigError
from autonomy._config import Env

from ._supervisor import STOP_TIMEOUT_S
from ._zonefile import Container, Pod, ZoneFile, is_valid_reference

__all__ = [
    "MESH_PORT",
    "METRICS_PORT",
    "PUBLIC_LABEL",
    "SIZES",
    "Resources",
    "image_name",
    "manifests",
    "render",
    "secret_name",
]

logger = logging.getLogger("autonomy.cli")

METRICS_PORT: Final = 9464
"""Each node serves Prometheus metrics on its pod's IP at this port (the next node of a pod
at the next port); the pod's annotations point a scraper at its first node's."""

MESH_PORT: Final = 7100
"""The port of a pod's first node container (the seed port); its next node containers take
the next ports."""

POD_NAME_VAR: Final = "POD_NAME"
"""The variable holding the pod's name (downward API), from which ``AUTONOMY_NODE_NAME`` is
made."""
POD_IP_VAR: Final = "POD_IP"
"""The variable holding the pod's IP (downward API), from which ``AUTONOMY_BIND`` is made."""

SECRET_KEY: Final = "secret"
"""The key of the zone's secret in its Secret object."""

ZONE_LABEL: Final = "autonomy/zone"
POD_LABEL: Final = "autonomy/pod"
NODE_LABEL: Final = "autonomy/node"
"""``"true"`` on the pods that run at least one node: the headless Service selects them."""
PUBLIC_LABEL: Final = "autonomy/public"
"""``"true"`` on the pods of a ``public: true`` pod: for a Service or Ingress of your own."""

MAX_STATEFULSET_NAME: Final = 52
"""A StatefulSet's name is at most 52 characters: its pods carry a label of its name plus an
11-character revision hash, and a label value is at most 63."""


@dataclass(frozen=True)
class Resources:
    """What a ``size`` asks of the cluster for each container of the pod."""

    cpu: str
    """CPU requested: the scheduler reserves it. No CPU limit: a throttled node stalls its
    event loop, and its peers then take it for dead."""
    memory: str
    """Memory requested."""
    memory_limit: str
    """Memory limit: a container past it is killed (and restarted)."""

    def as_spec(self) -> dict[str, Any]:
        return {
            "requests": {"cpu": self.cpu, "memory": self.memory},
            "limits": {"memory": self.memory_limit},
        }


SIZES: Final[Mapping[str, Resources]] = {
    "small": Resources(cpu="250m", memory="256Mi", memory_limit="512Mi"),
    "medium": Resources(cpu="500m", memory="1Gi", memory_limit="2Gi"),
    "big": Resources(cpu="1", memory="2Gi", memory_limit="4Gi"),
}
"""``size`` → each container's resources. An idle node takes ~37 MB and one core serves
~200,000 local requests a second, so ``small`` is enough for a plain node; the guide's
``big`` is for agents and real work."""

DEFAULT_SIZE: Final = "small"
"""The size of a pod that names none."""

_DNS_1035_RE: Final = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def secret_name(zone: str) -> str:
    """The name of the Secret that holds the zone's secret."""
    return f"{zone}-zone-secret"


def image_name(prefix: str, zone: str, image: str) -> str:
    """The image built from ``images/<image>/``: ``<prefix><zone>-<image>``."""
    return f"{prefix}{zone}-{image}"


def manifests(
    zone: ZoneFile, *, secret: str, image_prefix: str = "", namespace: str | None = None
) -> list[dict[str, Any]]:
    """The zone's Kubernetes objects: its Secret, its headless Service, a StatefulSet per pod.

    Args:
        zone: the parsed zone folder.
        secret: the zone's secret (it goes into the Secret object only).
        image_prefix: put before ``<zone>-<image>`` in each image name: a registry and
            path, such as ``registry.example.com/team/``.
        namespace: every object's namespace; None leaves it out (kubectl's current one,
            and nodes seed from the Service's short name).

    Raises:
        ConfigError: a name Kubernetes refuses (a zone not starting with a letter, a pod
            name over 52 characters), an unknown ``size``, or an image name that is no
            valid image reference.
    """
    _check_names(zone, image_prefix)
    service = zone.name
    peers_host = service if namespace is None else f"{service}.{namespace}.svc"
    expected = ",".join(zone.expected_nodes())
    objects = [
        _object(
            "v1",
            "Secret",
            secret_name(zone.name),
            zone,
            namespace,
            type="Opaque",
            stringData={SECRET_KEY: secret},
        ),
        _object(
            "v1",
            "Service",
            service,
            zone,
            namespace,
            spec={
                "clusterIP": "None",
                # Nodes seed from this name before any of them is "ready".
                "publishNotReadyAddresses": True,
                "selector": {ZONE_LABEL: zone.name, NODE_LABEL: "true"},
                "ports": [{"name": "mesh", "port": MESH_PORT, "targetPort": MESH_PORT}],
            },
        ),
    ]
    for index, pod in enumerate(zone.pods):
        resources = _resources(zone, pod, index)
        containers = []
        node_index = 0
        for container in pod.containers:
            if container.is_node:
                port = MESH_PORT + node_index
                node_index += 1
                containers.append(
                    _node_container(
                        zone, pod, container, resources, image_prefix, port, peers_host, expected
                    )
                )
            else:
                containers.append(_other_container(container, resources))
        labels = {ZONE_LABEL: zone.name, POD_LABEL: pod.name}
        template_labels = dict(labels)
        if node_index:
            template_labels[NODE_LABEL] = "true"
        if pod.public:
            template_labels[PUBLIC_LABEL] = "true"
        metadata: dict[str, Any] = {"labels": template_labels}
        if node_index:
            # The common convention of Prometheus' Kubernetes discovery (one port per pod).
            metadata["annotations"] = {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics",
            }
        objects.append(
            _object(
                "apps/v1",
                "StatefulSet",
                pod.name,
                zone,
                namespace,
                spec={
                    "serviceName": service,
                    "replicas": pod.clones,
                    "podManagementPolicy": "Parallel",
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": metadata,
                        "spec": {
                            # Nodes call no Kubernetes API, and need no service variables.
                            "automountServiceAccountToken": False,
                            "enableServiceLinks": False,
                            "terminationGracePeriodSeconds": int(STOP_TIMEOUT_S),
                            "containers": containers,
                        },
                    },
                },
            )
        )
    return objects


def render(objects: Iterable[Mapping[str, Any]], header: Iterable[str] = ()) -> str:
    """The objects as one YAML stream, after ``header`` lines as comments."""
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header)
    body = yaml.safe_dump_all(
        [dict(obj) for obj in objects], sort_keys=False, default_flow_style=False, width=100
    )
    return comments + "---\n" + body


def _object(
    api_version: str,
    kind: str,
    name: str,
    zone: ZoneFile,
    namespace: str | None,
    **fields: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = {
        "app.kubernetes.io/part-of": zone.name,
        "app.kubernetes.io/managed-by": "autonomy",
        ZONE_LABEL: zone.name,
    }
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **fields}


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _node_container(
    zone: ZoneFile,
    pod: Pod,
    container: Container,
    resources: Resources,
    image_prefix: str,
    port: int,
    peers_host: str,
    expected: str,
) -> dict[str, Any]:
    """A node: the zone's image, its identity and seeds from the pod, its secret by
    reference. The same layering as the local launcher: the container's ``env`` over the
    defaults, the launcher's settings over the container's ``env``."""
    node_name = (
        f"{pod.name}-{container.name}"  # one clone: a fixed name, as the local launcher's
        if pod.clones == 1
        else f"$({POD_NAME_VAR})-{container.name}"
    )
    identity = {
        Env.ZONE.value: zone.name,
        Env.NODE_NAME.value: node_name,
        Env.BIND.value: f"$({POD_IP_VAR}):{port}",
        Env.PEERS.value: f"{peers_host}:{MESH_PORT}",
        Env.DISCOVERY.value: "0",
        Env.EXPECTED_NODES.value: expected,
        Env.METRICS.value: f"$({POD_IP_VAR}):{METRICS_PORT + port - MESH_PORT}",
    }
    ours = {*identity, POD_NAME_VAR, POD_IP_VAR, Env.ZONE_SECRET.value}
    for name in sorted(ours & container.env.keys()):
        logger.warning(
            "%s: env %s is set by the manifests; the container's value is ignored",
            f"{pod.name}-{container.name}",
            name,
        )
    defaults = {"PYTHONUNBUFFERED": "1", Env.WAIT_UNTIL_INTERRUPTED.value: "1"}
    settings = {**defaults, **{k: v for k, v in container.env.items() if k not in ours}}
    env = [
        _field(POD_NAME_VAR, "metadata.name"),
        _field(POD_IP_VAR, "status.podIP"),
        *(_env(name, _escape(value)) for name, value in settings.items()),
        *(_env(name, value) for name, value in identity.items()),
        {
            "name": Env.ZONE_SECRET.value,
            "valueFrom": {"secretKeyRef": {"name": secret_name(zone.name), "key": SECRET_KEY}},
        },
    ]
    spec: dict[str, Any] = {
        "name": container.name,
        "image": image_name(image_prefix, zone.name, container.image),
    }
    if container.args:
        spec["args"] = [_escape(arg) for arg in container.args]
    port_name = "mesh" if port == MESH_PORT else f"mesh-{port - MESH_PORT}"
    spec["env"] = env
    spec["ports"] = [
        {"name": port_name, "containerPort": port},
        {
            "name": port_name.replace("mesh", "metrics"),
            "containerPort": METRICS_PORT + port - MESH_PORT,
        },
    ]
    spec["resources"] = resources.as_spec()
    return spec


def _other_container(container: Container, resources: Resources) -> dict[str, Any]:
    """A container that is not a node, as it is: its image, args and env."""
    spec: dict[str, Any] = {"name": container.name, "image": container.image}
    if container.args:
        spec["args"] = [_escape(arg) for arg in container.args]
    if container.env:
        spec["env"] = [_env(name, _escape(value)) for name, value in container.env.items()]
    spec["resources"] = resources.as_spec()
    return spec


def _escape(value: str) -> str:
    """A value as the user wrote it: Kubernetes expands ``$(VAR)`` in env values and args,
    and ``$$`` stands for ``$``."""
    return value.replace("$", "$$")


def _resources(zone: ZoneFile, pod: Pod, index: int) -> Resources:
    size = pod.size or DEFAULT_SIZE
    try:
        return SIZES[size]
    except KeyError:
        raise ConfigError(
            f"unknown size {size!r}: expected one of {', '.join(SIZES)} (default {DEFAULT_SIZE})",
            path=str(zone.path),
            key=f"pods[{index}].size",
        ) from None


def _check_names(zone: ZoneFile, image_prefix: str) -> None:
    if not _DNS_1035_RE.fullmatch(zone.name):
        raise ConfigError(
            f"zone name {zone.name!r} names the zone's Service, and a Service's name must "
            "start with a letter",
            path=str(zone.path),
            key="name",
        )
    for index, pod in enumerate(zone.pods):
        if len(pod.name) > MAX_STATEFULSET_NAME:
            raise ConfigError(
                f"pod name {pod.name!r} has {len(pod.name)} characters: a StatefulSet's name "
                f"has at most {MAX_STATEFULSET_NAME}",
                path=str(zone.path),
                key=f"pods[{index}].name",
            )
        for number, container in enumerate(pod.containers):
            if not container.is_node:
                continue
            reference = image_name(image_prefix, zone.name, container.image)
            if not is_valid_reference(reference):
                raise ConfigError(
                    f"the image name {reference!r} (--image-prefix, zone and image folder) is "
                    "not a valid image reference: it must be lowercase, with '/' between a "
                    "registry and the path (registry.example.com/team/)",
                    path=str(zone.path),
                    key=f"pods[{index}].containers[{number}].image",
                )
