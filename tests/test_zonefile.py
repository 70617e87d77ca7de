"""autonomy.yaml → ZoneFile: the guide's zones parse; each bad file names its file and key."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

from autonomy import ConfigError
from autonomy.cli import _zonefile
from autonomy.cli._zonefile import Container, Pod, ZoneFile, load_zone, node_name

HELLO = """\
name: hello
pods:
  - name: main-pod
    public: true
    containers:
      - name: main
        image: main
"""

DISTRIBUTE = """\
name: distribute
pods:
  - name: main-pod
    size: big
    public: true
    containers:
      - name: main
        image: main

  - name: runner-pod
    size: big
    clones: 5  # Creates 5 identical pods
    containers:
      - name: runner
        image: runner
"""

ANALYZER = """\
name: analyzer
pods:
  - name: main-pod
    size: big
    public: true
    containers:
      - name: main
        image: main
  - name: runner-pod
    size: big
    clones: 3
    containers:
      - name: runner
        image: runner
"""

DOCKERFILE = """\
FROM ghcr.io/build-trust/autonomy-python
COPY . .
ENTRYPOINT ["python", "main.py"]
"""


def write_zone(root: Path, text: str, images: tuple[str, ...] = ("main", "runner")) -> Path:
    """A zone folder: autonomy.yaml with ``text`` and an images/<image>/ per name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "autonomy.yaml").write_text(text)
    for image in images:
        (root / "images" / image).mkdir(parents=True, exist_ok=True)
        (root / "images" / image / "Dockerfile").write_text(DOCKERFILE)
        (root / "images" / image / "main.py").write_text("print('hi')\n")
    return root


def config_error(
    tmp_path: Path, text: str, images: tuple[str, ...] = ("main", "runner")
) -> ConfigError:
    zone = write_zone(tmp_path / "zone", text, images)
    with pytest.raises(ConfigError) as caught:
        load_zone(zone)
    return caught.value


def assert_names(error: ConfigError, tmp_path: Path, key: str | None, *words: str) -> None:
    """The error names the file and the key, in its attributes and in its message."""
    file = str(tmp_path / "zone" / "autonomy.yaml")
    assert error.path == file
    assert error.key == key
    prefix = f"{file}: {key}: " if key else f"{file}: "
    assert str(error).startswith(prefix), str(error)
    for word in words:
        assert word in str(error), f"{word!r} not in {str(error)!r}"


# -- the guide's zones --------------------------------------------------------------------------


def test_hello_zone_of_the_guide_parses(tmp_path: Path) -> None:
    zone = load_zone(write_zone(tmp_path / "hello", HELLO, ("main",)))
    assert zone == ZoneFile(
        name="hello",
        pods=(
            Pod(
                name="main-pod",
                public=True,
                size=None,
                clones=1,
                containers=(Container(name="main", image="main"),),
            ),
        ),
        path=(tmp_path / "hello" / "autonomy.yaml").absolute(),
    )
    assert zone.dir == tmp_path / "hello"
    assert zone.image_dir("main") == tmp_path / "hello" / "images" / "main"
    assert zone.node_names() == ["main-pod-main"]


def test_distribute_zone_with_five_clones_has_a_node_per_clone(tmp_path: Path) -> None:
    zone = load_zone(write_zone(tmp_path / "distribute", DISTRIBUTE))
    assert zone.name == "distribute"
    main, runner = zone.pods
    assert (main.size, main.public, main.clones) == ("big", True, 1)
    assert (runner.size, runner.public, runner.clones) == ("big", False, 5)
    assert zone.node_names() == ["main-pod-main"] + [f"runner-pod-{i}-runner" for i in range(5)]
    assert [node.clone for node in zone.nodes] == [None, 0, 1, 2, 3, 4]


def test_analyzer_zone_parses_from_the_yaml_path_too(tmp_path: Path) -> None:
    folder = write_zone(tmp_path / "analyzer", ANALYZER)
    zone = load_zone(folder / "autonomy.yaml")
    assert zone.name == "analyzer"
    assert zone.node_names() == [
        "main-pod-main",
        "runner-pod-0-runner",
        "runner-pod-1-runner",
        "runner-pod-2-runner",
    ]


def test_node_names_carry_pod_clone_and_container() -> None:
    assert node_name("main-pod", None, "main") == "main-pod-main"
    assert node_name("runner-pod", 3, "runner") == "runner-pod-3-runner"


def test_several_containers_per_pod_each_become_a_node(tmp_path: Path) -> None:
    zone = load_zone(
        write_zone(
            tmp_path / "z",
            """\
name: multi
pods:
  - name: worker-pod
    clones: 2
    containers:
      - name: main
        image: main
      - name: mcp
        image: runner
""",
        )
    )
    assert zone.node_names() == [
        "worker-pod-0-main",
        "worker-pod-0-mcp",
        "worker-pod-1-main",
        "worker-pod-1-mcp",
    ]


def test_env_as_a_list_of_name_value_and_as_a_mapping_both_parse(tmp_path: Path) -> None:
    zone = load_zone(
        write_zone(
            tmp_path / "z",
            """\
name: envs
pods:
  - name: a
    containers:
      - name: listed
        image: main
        env:
          - name: API_URL
            value: http://localhost:8000
          - name: RETRIES
            value: 3
          - name: DEBUG
            value: true
        args: ["--port", 8080]
      - name: mapped
        image: main
        env:
          MODE: fast
          RATIO: 0.5
""",
        )
    )
    listed, mapped = zone.pods[0].containers
    assert listed.env == {"API_URL": "http://localhost:8000", "RETRIES": "3", "DEBUG": "true"}
    assert listed.args == ["--port", "8080"]
    assert mapped.env == {"MODE": "fast", "RATIO": "0.5"}
    assert mapped.args == []


def test_unknown_keys_are_logged_as_warnings_and_do_not_stop_the_zone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="autonomy.cli")
    zone = load_zone(
        write_zone(
            tmp_path / "zone",
            """\
name: hello
colour: blue
pods:
  - name: main-pod
    replicas: 2
    containers:
      - name: main
        image: main
        ports: [8000]
""",
        )
    )
    assert zone.node_names() == ["main-pod-main"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    file = str(tmp_path / "zone" / "autonomy.yaml")
    assert any(f"{file}: colour: unknown key 'colour'" in w and "line 2" in w for w in warnings)
    assert any(f"{file}: pods[0].replicas: unknown key" in w for w in warnings)
    assert any(f"{file}: pods[0].containers[0].ports: unknown key" in w for w in warnings)


def test_config_error_pickles_with_its_fields() -> None:
    error = ConfigError("expected a positive integer", path="z/autonomy.yaml", key="pods[1].clones")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.key, str(copy)) == (error.path, error.key, str(error))
    assert str(error) == "z/autonomy.yaml: pods[1].clones: expected a positive integer"


# -- bad files: each names its file and key -----------------------------------------------------


def test_yaml_syntax_error_gives_its_line(tmp_path: Path) -> None:
    error = config_error(tmp_path, "name: hello\npods: [\n  - name: x\n")
    assert_names(error, tmp_path, None, "invalid YAML", "line 3")


def test_tab_indentation_is_a_yaml_error_with_its_line(tmp_path: Path) -> None:
    error = config_error(tmp_path, "name: hello\npods:\n\t- name: x\n")
    assert_names(error, tmp_path, None, "invalid YAML", "line 3")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, "# nothing yet\n")
    assert_names(error, tmp_path, None, "empty", "name", "pods")


def test_top_level_list_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, "- name: hello\n")
    assert_names(error, tmp_path, None, "expected the zone", "got a list")


def test_missing_zone_name_is_refused(tmp_path: Path) -> None:
    error = config_error(
        tmp_path, "pods:\n  - name: p\n    containers:\n      - {name: main, image: main}\n"
    )
    assert_names(error, tmp_path, "name", "missing", "zone name")


def test_zone_name_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, HELLO.replace("name: hello", "name: 42"))
    assert_names(error, tmp_path, "name", "expected a zone name (a string)", "integer 42", "line 1")


@pytest.mark.parametrize("bad", ["Hello", "hello_world", "-hello", "hello-", "héllo", "a" * 64])
def test_zone_name_that_is_not_a_dns_label_is_refused(tmp_path: Path, bad: str) -> None:
    error = config_error(tmp_path, HELLO.replace("name: hello", f"name: '{bad}'"))
    assert_names(error, tmp_path, "name", "not a valid zone name", "DNS label")


def test_missing_pods_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, "name: hello\n")
    assert_names(error, tmp_path, "pods", "missing", "list of pods")


@pytest.mark.parametrize("pods", ["[]", "main-pod", "{name: main-pod}"])
def test_pods_that_are_not_a_non_empty_list_are_refused(tmp_path: Path, pods: str) -> None:
    error = config_error(tmp_path, f"name: hello\npods: {pods}\n")
    assert_names(error, tmp_path, "pods", "expected a non-empty list of pods", "line 2")


def test_pod_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, "name: hello\npods:\n  - main-pod\n")
    assert_names(error, tmp_path, "pods[0]", "expected a pod", "got a string 'main-pod'")


def test_missing_pod_name_is_refused(tmp_path: Path) -> None:
    error = config_error(
        tmp_path, "name: hello\npods:\n  - containers:\n      - {name: main, image: main}\n"
    )
    assert_names(error, tmp_path, "pods[0].name", "missing", "pod name")


def test_pod_name_that_is_not_a_dns_label_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, HELLO.replace("main-pod", "Main_Pod"))
    assert_names(error, tmp_path, "pods[0].name", "'Main_Pod' is not a valid pod name", "line 3")


@pytest.mark.parametrize("clones", ["0", "-1", "three", "true", "2.5", "null"])
def test_clones_that_is_not_a_positive_integer_is_refused(tmp_path: Path, clones: str) -> None:
    error = config_error(tmp_path, DISTRIBUTE.replace("clones: 5", f"clones: {clones}"))
    assert_names(error, tmp_path, "pods[1].clones", "expected a positive integer", "line 12")


def test_a_zone_of_more_nodes_than_one_machine_runs_is_refused(tmp_path: Path) -> None:
    """`clones: 100000` would start 100,000 processes: refused, naming the key, at once."""
    error = config_error(tmp_path, DISTRIBUTE.replace("clones: 5", "clones: 100000"))
    assert_names(
        error,
        tmp_path,
        "pods[1].clones",
        "100,000 clones of 1 container make 100,000 nodes, 100,001 in the zone",
        "at most",
        "line 12",
    )
    assert len(str(error)) < 300


def test_the_node_bound_counts_every_pod_and_container(tmp_path: Path) -> None:
    limit = _zonefile.MAX_NODES
    # main-pod is one node, so runner-pod may have limit - 1 clones and not one more.
    at_limit = DISTRIBUTE.replace("clones: 5", f"clones: {limit - 1}")
    assert len(load_zone(write_zone(tmp_path / "fits", at_limit)).nodes) == limit
    error = config_error(tmp_path, DISTRIBUTE.replace("clones: 5", f"clones: {limit}"))
    assert_names(error, tmp_path, "pods[1].clones", f"{limit + 1:,} in the zone")
    # Each clone is as many nodes as its pod has containers.
    runner = "      - name: runner\n        image: runner\n"
    sidecar = "      - name: sidecar\n        image: main\n"
    two_containers = DISTRIBUTE.replace(runner, runner + sidecar)
    error = config_error(tmp_path, two_containers.replace("clones: 5", f"clones: {limit // 2}"))
    assert_names(
        error,
        tmp_path,
        "pods[1].clones",
        f"{limit // 2:,} clones of 2 containers make {limit // 2 * 2:,} nodes",
        f"at most {limit:,} nodes",
    )


def test_public_that_is_not_a_boolean_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, HELLO.replace("public: true", "public: yes please"))
    assert_names(error, tmp_path, "pods[0].public", "expected true or false")


def test_size_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, DISTRIBUTE.replace("size: big", "size: [big]", 1))
    assert_names(error, tmp_path, "pods[0].size", "expected a size name")


def test_missing_containers_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, "name: hello\npods:\n  - name: main-pod\n")
    assert_names(error, tmp_path, "pods[0].containers", "missing", "list of containers")


def test_empty_containers_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, "name: hello\npods:\n  - name: main-pod\n    containers: []\n")
    assert_names(error, tmp_path, "pods[0].containers", "expected a non-empty list")


def test_missing_container_name_is_refused(tmp_path: Path) -> None:
    error = config_error(
        tmp_path, HELLO.replace("      - name: main\n        image: main", "      - image: main")
    )
    assert_names(error, tmp_path, "pods[0].containers[0].name", "missing", "container name")


def test_container_name_that_is_not_a_dns_label_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, HELLO.replace("- name: main\n", "- name: main.app\n"))
    assert_names(
        error, tmp_path, "pods[0].containers[0].name", "'main.app' is not a valid container name"
    )


def test_missing_image_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, HELLO.replace("        image: main\n", ""))
    assert_names(error, tmp_path, "pods[0].containers[0].image", "missing", "images/")


def test_image_without_its_folder_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, ANALYZER, images=("main",))
    assert_names(
        error, tmp_path, "pods[1].containers[0].image", "images/runner/ not found", "line 14"
    )


@pytest.mark.parametrize("image", ["''", ".hidden", "main dir", "7", "true"])
def test_image_that_is_not_a_folder_name_is_refused(tmp_path: Path, image: str) -> None:
    error = config_error(tmp_path, HELLO.replace("image: main", f"image: {image}"))
    assert_names(
        error, tmp_path, "pods[0].containers[0].image", "expected the name of a folder", "postgres"
    )


@pytest.mark.parametrize("image", ["../main", "/etc", "Postgres:16", "postgres:", "a//b"])
def test_image_reference_that_docker_would_refuse_is_refused(tmp_path: Path, image: str) -> None:
    error = config_error(tmp_path, HELLO.replace("image: main", f"image: '{image}'"))
    assert_names(
        error, tmp_path, "pods[0].containers[0].image", "not a valid image reference", "lowercase"
    )


def test_a_bare_name_without_its_folder_says_how_to_name_a_registry_image(tmp_path: Path) -> None:
    error = config_error(tmp_path, HELLO.replace("image: main", "image: postgres"))
    assert_names(
        error, tmp_path, "pods[0].containers[0].image", "images/postgres/ not found", "postgres:"
    )


def test_a_container_whose_image_is_a_reference_is_no_node_and_never_expected(
    tmp_path: Path,
) -> None:
    text = DISTRIBUTE.replace(
        "      - name: main\n        image: main\n",
        "      - name: main\n        image: main\n"
        "      - name: db\n        image: postgres:16\n        args: [-c, fsync=off]\n"
        "        env: {POSTGRES_PASSWORD: pw}\n"
        "      - name: mcp\n        image: ghcr.io/org/mcp-server@sha256:" + "a" * 64 + "\n",
    )
    zone = load_zone(write_zone(tmp_path / "mixed", text))
    runners = [f"runner-pod-{i}-runner" for i in range(5)]
    assert zone.node_names() == ["main-pod-main", "main-pod-db", "main-pod-mcp", *runners]
    assert zone.expected_nodes() == ["main-pod-main", *runners]
    main, db, mcp = zone.pods[0].containers
    assert (main.is_node, db.is_node, mcp.is_node) == (True, False, False)
    assert (db.image, db.args, db.env) == (
        "postgres:16",
        ["-c", "fsync=off"],
        {"POSTGRES_PASSWORD": "pw"},
    )
    assert [node.is_node for node in zone.nodes][:3] == [True, False, False]
    assert zone.key_of(zone.nodes[1]) == "pods[0].containers[1]"
    assert not (tmp_path / "mixed" / "images" / "postgres:16").exists()


def test_duplicate_pod_names_are_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, ANALYZER.replace("name: runner-pod", "name: main-pod"))
    assert_names(error, tmp_path, "pods[1].name", "duplicate pod name 'main-pod'", "pods[0]")


def test_duplicate_container_names_in_a_pod_are_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, HELLO + "      - name: main\n        image: runner\n")
    assert_names(
        error,
        tmp_path,
        "pods[0].containers[1].name",
        "duplicate container name 'main'",
        "pods[0].containers[0]",
    )


def test_pods_and_containers_whose_node_names_collide_are_refused(tmp_path: Path) -> None:
    error = config_error(
        tmp_path,
        """\
name: clash
pods:
  - name: a-b
    containers:
      - {name: c, image: main}
  - name: a
    containers:
      - {name: b-c, image: main}
""",
    )
    assert_names(error, tmp_path, "pods[1].name", "node name 'a-b-c'")


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, DISTRIBUTE.replace("clones: 5", "clones: 5\n    clones: 2"))
    assert_names(
        error, tmp_path, "pods[1].clones", "duplicate key 'clones' at line 13", "first at line 12"
    )


def test_duplicate_env_keys_are_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, HELLO + "        env:\n          A: x\n          A: y\n")
    assert_names(error, tmp_path, "pods[0].containers[0].env.A", "duplicate key 'A' at line 10")


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ("env: FOO", "pods[0].containers[0].env", ("expected a list of {name, value}",)),
        ("env:\n          - name: FOO", "pods[0].containers[0].env[0].value", ("missing",)),
        (
            "env:\n          - name: 1FOO\n            value: x",
            "pods[0].containers[0].env[0].name",
            ("environment variable name",),
        ),
        (
            "env:\n          - {name: A, value: x}\n          - {name: A, value: y}",
            "pods[0].containers[0].env[1].name",
            ("duplicate environment variable 'A'",),
        ),
        ("env:\n          A: [1, 2]", "pods[0].containers[0].env.A", ("expected a string",)),
        (
            "env:\n          - NAME=value",
            "pods[0].containers[0].env[0]",
            ("expected an environment variable",),
        ),
    ],
    ids=["a-string", "no-value", "bad-name", "duplicate", "list-value", "not-a-mapping"],
)
def test_bad_env_is_refused(tmp_path: Path, env: str, key: str, words: tuple[str, ...]) -> None:
    error = config_error(tmp_path, HELLO + f"        {env}\n")
    assert_names(error, tmp_path, key, *words)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ("args: --port 8000", "pods[0].containers[0].args"),
        ("args: [--port, {a: 1}]", "pods[0].containers[0].args[1]"),
    ],
)
def test_bad_args_are_refused(tmp_path: Path, args: str, key: str) -> None:
    error = config_error(tmp_path, HELLO + f"        {args}\n")
    assert_names(error, tmp_path, key, "expected a")


def test_folder_without_autonomy_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_zone(tmp_path)
    assert caught.value.path == str(tmp_path / "autonomy.yaml")
    assert "no such file: expected a zone folder holding autonomy.yaml" in str(caught.value)


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder") as caught:
        load_zone(tmp_path / "nowhere")
    assert caught.value.path == str(tmp_path / "nowhere")


def test_missing_yaml_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as caught:
        load_zone(tmp_path / "nowhere" / "zone.yaml")
    assert caught.value.path == str(tmp_path / "nowhere" / "zone.yaml")
