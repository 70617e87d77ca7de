"""Zone folders: autonomy.yaml → validated frozen dataclasses, with every node's name.

A zone folder holds ``autonomy.yaml`` (the zone's name and its pods, clones and containers)
and one ``images/<image>/`` folder per image, with a ``Dockerfile`` and the image's code.
This module reads and checks them and derives the node name of every container of every
clone. A container whose ``image`` is an image reference (``postgres:16``) rather than a
folder name is not a node: it runs as it is, and no node waits for it. This module starts
nothing, and leaves the Dockerfiles to ``_dockerfile``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from autonomy import ConfigError

__all__ = [
    "Container",
    "NodeSpec",
    "Pod",
    "ZoneFile",
    "MAX_NODES",
    "ZONE_FILE_NAME",
    "is_image_reference",
    "load_zone",
    "node_name",
    "parse_zone",
]

logger = logging.getLogger("autonomy.cli")

ZONE_FILE_NAME: Final = "autonomy.yaml"
IMAGES_DIR_NAME: Final = "images"
MAX_NODES: Final = 500
"""The most nodes (processes) a zone file may have: they all run on this machine.

Far above what one machine runs well (each node is a Python process of ~37 MB when idle;
a 2-core machine struggles past about 60 nodes of a full mesh), so it refuses only a typo
such as ``clones: 100000``. It also keeps every node's name within reach of every node:
``AUTONOMY_EXPECTED_NODES`` holds all of them, and Linux refuses to start a process with
one environment variable of 128 KiB or more; 500 of the longest node names take 66 KB
(1,000 would not fit)."""

_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_IMAGE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_REGISTRY: Final = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
)
_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE_RE: Final = re.compile(
    rf"{_REGISTRY}{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
"""An image reference as Docker reads one: ``[registry[:port]/]path[:tag][@digest]``."""
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_ZONE_KEYS: Final = frozenset({"name", "pods"})
_POD_KEYS: Final = frozenset({"name", "public", "size", "clones", "containers"})
_CONTAINER_KEYS: Final = frozenset({"name", "image", "env", "args"})
_ENV_ITEM_KEYS: Final = frozenset({"name", "value"})


def is_image_reference(image: str) -> bool:
    """Whether a container's ``image`` names an image (``postgres:16``, ``bitnami/redis``,
    ``ghcr.io/org/mcp@sha256:...``) rather than a folder under ``images/``: it has a tag, a
    digest or a path. A bare name (``main``) is a folder."""
    return any(mark in image for mark in ":/@")


def is_valid_reference(reference: str) -> bool:
    """Whether ``reference`` is an image reference Docker accepts (lowercase path)."""
    return len(reference) <= 255 and _REFERENCE_RE.fullmatch(reference) is not None


@dataclass(frozen=True)
class Container:
    """One container of a pod: a node running ``images/<image>/``'s command, or (when
    ``image`` is an image reference such as ``postgres:16``) a container that is not a node."""

    name: str
    image: str
    """A folder under ``images/`` (a node), or an image reference (not a node)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables (``env:`` as a list of {name, value} or a mapping)."""
    args: list[str] = field(default_factory=list)
    """Arguments that replace the image's CMD (as ``docker run IMAGE ARGS...`` does)."""

    @property
    def is_node(self) -> bool:
        """Whether this container is an autonomy node (its image is a folder of the zone)."""
        return not is_image_reference(self.image)


@dataclass(frozen=True)
class Pod:
    """A pod: containers started together, ``clones`` times."""

    name: str
    public: bool
    size: str | None
    clones: int
    containers: tuple[Container, ...]


@dataclass(frozen=True)
class NodeSpec:
    """One process of the zone: a container of one clone of a pod, with its node name (a
    container that is not a node has a name of the same form)."""

    name: str
    pod: Pod
    clone: int | None
    """The 0-based clone index, or None for a pod of a single clone."""
    container: Container

    @property
    def is_node(self) -> bool:
        """Whether this process is an autonomy node (not, say, a database)."""
        return self.container.is_node


@dataclass(frozen=True)
class ZoneFile:
    """A parsed, validated autonomy.yaml."""

    name: str
    pods: tuple[Pod, ...]
    path: Path
    """The autonomy.yaml file (absolute)."""

    @property
    def dir(self) -> Path:
        """The zone folder: where autonomy.yaml and ``images/`` are."""
        return self.path.parent

    def image_dir(self, image: str) -> Path:
        """The folder of one image: ``images/<image>/``."""
        return self.dir / IMAGES_DIR_NAME / image

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        """Every process of the zone, pod by pod, clone by clone, container by container."""
        return tuple(_iter_nodes(self.pods))

    def node_names(self) -> list[str]:
        """The names of every process of the zone, in start order (containers that are not
        nodes included)."""
        return [node.name for node in self.nodes]

    def expected_nodes(self) -> list[str]:
        """The names of the zone's nodes (``AUTONOMY_EXPECTED_NODES``): every process but the
        containers that are not nodes."""
        return [node.name for node in self.nodes if node.is_node]

    def key_of(self, spec: NodeSpec) -> str:
        """The key path of a process's container in autonomy.yaml: ``pods[1].containers[0]``."""
        pod = next(i for i, pod in enumerate(self.pods) if pod.name == spec.pod.name)
        container = spec.pod.containers.index(spec.container)
        return f"pods[{pod}].containers[{container}]"


def node_name(pod: str, clone: int | None, container: str) -> str:
    """The node name of a container: ``{pod}-{container}``, or ``{pod}-{clone}-{container}``."""
    return f"{pod}-{container}" if clone is None else f"{pod}-{clone}-{container}"


def _iter_nodes(pods: Sequence[Pod]) -> Iterator[NodeSpec]:
    for pod in pods:
        # A pod of one clone is just a pod: its nodes carry no index.
        clones: list[int | None] = [None] if pod.clones == 1 else list(range(pod.clones))
        for clone in clones:
            for container in pod.containers:
                yield NodeSpec(node_name(pod.name, clone, container.name), pod, clone, container)


# --------------------------------------------------------------------------------------------
# YAML loading with line numbers and duplicate-key detection


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys and remembers each mapping key's line."""

    def __init__(self, stream: str, display_path: str) -> None:
        super().__init__(stream)
        self.display_path = display_path
        self.key_lines: dict[int, dict[str, int]] = {}
        self.duplicates: dict[int, tuple[str, int, int]] = {}
        """id(mapping) → (key, line, first line) of its first repeated key."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
    data: dict[Any, Any] = {}
    yield data
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=False)
        if isinstance(key, str):
            line = key_node.start_mark.line + 1
            if key in lines:
                loader.duplicates.setdefault(id(data), (key, line, lines[key]))
            else:
                lines[key] = line
    data.update(loader.construct_mapping(node, deep=False))
    loader.key_lines[id(data)] = lines


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


class _Checker:
    """Validation helpers that build ConfigErrors naming the file, the key path and the line."""

    def __init__(
        self,
        display_path: str,
        key_lines: dict[int, dict[str, int]],
        duplicates: dict[int, tuple[str, int, int]],
    ) -> None:
        self.display_path = display_path
        self.key_lines = key_lines
        self.duplicates = duplicates

    def no_duplicates(self, value: Mapping[Any, Any], key: str) -> None:
        """Refuse a mapping that repeats a key (YAML would silently keep the last value)."""
        duplicate = self.duplicates.pop(id(value), None)
        if duplicate is not None:
            name, line, first = duplicate
            raise ConfigError(
                f"duplicate key {name!r} at line {line} (first at line {first})",
                path=self.display_path,
                key=_join(key, name),
            )

    def error(
        self,
        key: str,
        message: str,
        where: Mapping[Any, Any] | None = None,
        field_name: str | None = None,
    ) -> ConfigError:
        line = self.line(where, field_name)
        suffix = f" (line {line})" if line is not None else ""
        return ConfigError(message + suffix, path=self.display_path, key=key)

    def line(self, where: Mapping[Any, Any] | None, field_name: str | None) -> int | None:
        if where is None or field_name is None:
            return None
        return self.key_lines.get(id(where), {}).get(field_name)

    def mapping(self, value: object, key: str, what: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise ConfigError(
                f"expected {what} (a mapping), got {_describe(value)}",
                path=self.display_path,
                key=key or None,
            )
        self.no_duplicates(value, key)
        return value

    def warn_unknown(self, value: Mapping[Any, Any], known: frozenset[str], key: str) -> None:
        for name in value:
            if name not in known:
                line = self.line(value, name) if isinstance(name, str) else None
                where = f" (line {line})" if line is not None else ""
                logger.warning(
                    "%s: %s: unknown key %r ignored%s; known keys: %s",
                    self.display_path,
                    _join(key, str(name)),
                    name,
                    where,
                    ", ".join(sorted(known)),
                )

    def label(self, parent: Mapping[Any, Any], field_name: str, key: str, what: str) -> str:
        full = _join(key, field_name)
        if field_name not in parent:
            raise ConfigError(
                f"missing: expected `{field_name}: <{what}>`", path=self.display_path, key=full
            )
        value = parent[field_name]
        if not isinstance(value, str):
            raise self.error(
                full, f"expected a {what} (a string), got {_describe(value)}", parent, field_name
            )
        if not _LABEL_RE.fullmatch(value):
            raise self.error(
                full,
                f"{value!r} is not a valid {what}: expected a DNS label (lowercase letters, "
                "digits and '-', starting and ending with a letter or digit, at most 63 "
                "characters)",
                parent,
                field_name,
            )
        return value


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def load_zone(path: str | os.PathLike[str], *, check_images: bool = True) -> ZoneFile:
    """Read and validate a zone: ``path`` is a zone folder or its autonomy.yaml.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or does not describe a zone.
    """
    given = Path(path)
    expected = f"expected a zone folder holding {ZONE_FILE_NAME} and {IMAGES_DIR_NAME}/<image>/"
    if given.is_dir():
        file = given / ZONE_FILE_NAME
    elif given.suffix in (".yaml", ".yml") or given.exists():
        file = given
    else:
        raise ConfigError(f"no such folder: {expected}", path=str(given))
    display = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no such file: {expected}", path=display) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file: {exc}", path=display) from exc
    return parse_zone(text, path=file, display_path=display, check_images=check_images)


def parse_zone(
    text: str,
    *,
    path: str | os.PathLike[str],
    display_path: str | None = None,
    check_images: bool = True,
) -> ZoneFile:
    """Validate autonomy.yaml text; ``path`` is where it lives (``images/`` is beside it).

    Raises:
        ConfigError: the text is not valid YAML or does not describe a zone.
    """
    file = Path(path).absolute()
    display = display_path if display_path is not None else str(path)
    loader = _Loader(text, display)
    try:
        document = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, display) from exc
    finally:
        loader.dispose()
    check = _Checker(display, loader.key_lines, loader.duplicates)
    if document is None:
        raise ConfigError(
            "the file is empty: expected a mapping with `name` and `pods`", path=display
        )
    top = check.mapping(document, "", "the zone: `name` and `pods`")
    check.warn_unknown(top, _ZONE_KEYS, "")
    name = check.label(top, "name", "", "zone name")
    if "pods" not in top:
        raise ConfigError("missing: expected `pods:` with a list of pods", path=display, key="pods")
    raw_pods = top["pods"]
    if not isinstance(raw_pods, list) or not raw_pods:
        raise check.error(
            "pods", f"expected a non-empty list of pods, got {_describe(raw_pods)}", top, "pods"
        )
    pods: list[Pod] = []
    seen_pods: dict[str, int] = {}
    for index, raw_pod in enumerate(raw_pods):
        key = f"pods[{index}]"
        pod = _parse_pod(check, raw_pod, key, file.parent if check_images else None)
        if pod.name in seen_pods:
            raise check.error(
                f"{key}.name",
                f"duplicate pod name {pod.name!r} (also pods[{seen_pods[pod.name]}])",
                raw_pod,
                "name",
            )
        seen_pods[pod.name] = index
        pods.append(pod)
        _check_node_count(check, pods, key, raw_pod)
    if loader.duplicates:  # in a mapping no check above looked into
        name, line, first = next(iter(loader.duplicates.values()))
        raise ConfigError(
            f"duplicate key {name!r} at line {line} (first at line {first})", path=display, key=name
        )
    zone = ZoneFile(name=name, pods=tuple(pods), path=file)
    _check_node_names(check, zone)
    return zone


def _yaml_error(exc: yaml.YAMLError, display: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
    detail = f"{problem} ({context})" if context else problem
    return ConfigError(f"invalid YAML at {where}: {detail}", path=display)


def _parse_pod(check: _Checker, raw: object, key: str, zone_dir: Path | None) -> Pod:
    pod = check.mapping(raw, key, "a pod: `name` and `containers`")
    check.warn_unknown(pod, _POD_KEYS, key)
    name = check.label(pod, "name", key, "pod name")
    public = pod.get("public", False)
    if not isinstance(public, bool):
        raise check.error(
            f"{key}.public", f"expected true or false, got {_describe(public)}", pod, "public"
        )
    size = pod.get("size")
    if size is not None and not isinstance(size, str):
        raise check.error(
            f"{key}.size", f"expected a size name such as big, got {_describe(size)}", pod, "size"
        )
    clones = pod.get("clones", 1)
    if isinstance(clones, bool) or not isinstance(clones, int) or clones < 1:
        raise check.error(
            f"{key}.clones",
            f"expected a positive integer (1 or more), got {_describe(clones)}",
            pod,
            "clones",
        )
    if "containers" not in pod:
        raise check.error(
            f"{key}.containers",
            "missing: expected `containers:` with a list of containers",
            pod,
            "name",
        )
    raw_containers = pod["containers"]
    if not isinstance(raw_containers, list) or not raw_containers:
        raise check.error(
            f"{key}.containers",
            f"expected a non-empty list of containers, got {_describe(raw_containers)}",
            pod,
            "containers",
        )
    containers: list[Container] = []
    seen: dict[str, int] = {}
    for index, raw_container in enumerate(raw_containers):
        ckey = f"{key}.containers[{index}]"
        container = _parse_container(check, raw_container, ckey, zone_dir)
        if container.name in seen:
            raise check.error(
                f"{ckey}.name",
                f"duplicate container name {container.name!r} in pod {name!r} "
                f"(also {key}.containers[{seen[container.name]}])",
                raw_container,
                "name",
            )
        seen[container.name] = index
        containers.append(container)
    return Pod(name=name, public=public, size=size, clones=clones, containers=tuple(containers))


def _parse_container(check: _Checker, raw: object, key: str, zone_dir: Path | None) -> Container:
    container = check.mapping(raw, key, "a container: `name` and `image`")
    check.warn_unknown(container, _CONTAINER_KEYS, key)
    name = check.label(container, "name", key, "container name")
    if "image" not in container:
        raise check.error(
            f"{key}.image",
            f"missing: expected `image: <folder name under {IMAGES_DIR_NAME}/>` (a node), or "
            "an image reference such as postgres:16 (a container that is not a node)",
            container,
            "name",
        )
    image = container["image"]
    if isinstance(image, str) and is_image_reference(image):
        if not is_valid_reference(image):
            raise check.error(
                f"{key}.image",
                f"{image!r} is not a valid image reference: expected "
                "[REGISTRY[:PORT]/]PATH[:TAG][@DIGEST], the path in lowercase, such as "
                "postgres:16 or ghcr.io/org/server:1.2",
                container,
                "image",
            )
    elif not isinstance(image, str) or not _IMAGE_RE.fullmatch(image):
        raise check.error(
            f"{key}.image",
            f"expected the name of a folder under {IMAGES_DIR_NAME}/ (letters, digits, '.', "
            f"'_', '-'), or an image reference such as postgres:16, got {_describe(image)}",
            container,
            "image",
        )
    elif zone_dir is not None and not (zone_dir / IMAGES_DIR_NAME / image).is_dir():
        raise check.error(
            f"{key}.image",
            f"image folder {IMAGES_DIR_NAME}/{image}/ not found in {zone_dir}: expected "
            f"{IMAGES_DIR_NAME}/{image}/Dockerfile and the image's code beside it (an image "
            f"from a registry needs a tag or a path: {image}:latest, docker.io/library/{image})",
            container,
            "image",
        )
    env = _parse_env(check, container.get("env"), f"{key}.env", container)
    args = _parse_args(check, container.get("args"), f"{key}.args", container)
    return Container(name=name, image=image, env=env, args=args)


def _env_value(
    check: _Checker, value: object, key: str, where: Mapping[Any, Any], field_name: str
) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise check.error(key, f"expected a string value, got {_describe(value)}", where, field_name)


def _parse_env(
    check: _Checker, raw: object, key: str, container: Mapping[Any, Any]
) -> dict[str, str]:
    env: dict[str, str] = {}
    if raw is None:
        return env
    if isinstance(raw, dict):
        check.no_duplicates(raw, key)
        for name, value in raw.items():
            if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
                raise check.error(
                    f"{key}.{name}",
                    "expected an environment variable name "
                    "(letters, digits and '_', not starting with a digit)",
                    raw,
                    name if isinstance(name, str) else None,
                )
            env[name] = _env_value(check, value, f"{key}.{name}", raw, name)
        return env
    if not isinstance(raw, list):
        raise check.error(
            key,
            f"expected a list of {{name, value}} or a mapping of NAME: value, got {_describe(raw)}",
            container,
            "env",
        )
    for index, item in enumerate(raw):
        ikey = f"{key}[{index}]"
        entry = check.mapping(item, ikey, "an environment variable: `name` and `value`")
        check.warn_unknown(entry, _ENV_ITEM_KEYS, ikey)
        name = entry.get("name")
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            raise check.error(
                f"{ikey}.name",
                "expected an environment variable name (letters, "
                f"digits and '_', not starting with a digit), got "
                f"{_describe(name)}",
                entry,
                "name",
            )
        if "value" not in entry:
            raise check.error(
                f"{ikey}.value", f"missing: expected `value:` for {name}", entry, "name"
            )
        if name in env:
            raise check.error(
                f"{ikey}.name", f"duplicate environment variable {name!r}", entry, "name"
            )
        env[name] = _env_value(check, entry["value"], f"{ikey}.value", entry, "value")
    return env


def _parse_args(check: _Checker, raw: object, key: str, container: Mapping[Any, Any]) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise check.error(
            key, f"expected a list of strings, got {_describe(raw)}", container, "args"
        )
    args: list[str] = []
    for index, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise check.error(
                f"{key}[{index}]", f"expected a string, got {_describe(item)}", container, "args"
            )
        args.append(str(item))
    return args


def _check_node_count(check: _Checker, pods: Sequence[Pod], key: str, raw_pod: object) -> None:
    """Refuse the last of ``pods`` if it takes the zone past `MAX_NODES` (counted, not built:
    ``clones: 1000000000`` is refused at once)."""
    *before, pod = pods
    count = pod.clones * len(pod.containers)
    total = count + sum(p.clones * len(p.containers) for p in before)
    if total <= MAX_NODES:
        return
    containers = _count(len(pod.containers), "container")
    if pod.clones > 1:
        field_name, what = "clones", f"{pod.clones:,} clones of {containers} make"
    else:
        field_name, what = "containers", f"{containers} make{'s' if count == 1 else ''}"
    zone = f", {total:,} in the zone" if total != count else ""
    raise check.error(
        f"{key}.{field_name}",
        f"{what} {_count(count, 'node')}{zone}; a zone file runs at most {MAX_NODES:,} nodes "
        "on one machine",
        raw_pod if isinstance(raw_pod, dict) else None,
        field_name,
    )


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _check_node_names(check: _Checker, zone: ZoneFile) -> None:
    seen: dict[str, NodeSpec] = {}
    for index, pod in enumerate(zone.pods):
        for node in _iter_nodes([pod]):
            if node.name in seen:
                other = seen[node.name]
                raise ConfigError(
                    f"node name {node.name!r} of container {node.container.name!r} is also the "
                    f"name of container {other.container.name!r} of pod {other.pod.name!r}: "
                    "rename a pod or a container",
                    path=check.display_path,
                    key=f"pods[{index}].name",
                )
            seen[node.name] = node
