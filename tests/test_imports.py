"""The package's layering, checked on its sources: every module imports on its own, and the
third-party network libraries each stay inside the one module that owns them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autonomy"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = [path for path in SOURCES if path.name != "__main__.py"]
"""Everything but the ``python -m`` entry points, which run the program when imported."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def relative(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth (functions and
    TYPE_CHECKING blocks included); relative imports are resolved against the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    found.add(".".join([*base, node.module]))
                else:  # `from . import _x` imports modules
                    found.update(".".join([*base, alias.name]) for alias in node.names)
            else:
                assert node.module is not None
                found.add(node.module)
    return found


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_the_package_sources_are_found() -> None:
    names = {relative(path) for path in SOURCES}
    assert {"autonomy/__init__.py", "autonomy/_transport.py", "autonomy/_protocol.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_each_module_imports_on_its_own_in_a_fresh_interpreter(path: Path) -> None:
    name = module_name(path)
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", f"import {name}"],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"import {name} failed:\n{result.stderr}"
    assert result.stdout == "", f"import {name} printed: {result.stdout!r}"


OWNERS = {
    "zmq": {"autonomy/_transport.py", "autonomy/_sockets.py"},
    "zeroconf": {"autonomy/_discovery.py"},
    "httpx": {"autonomy/_model.py"},
}


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_a_network_library_is_imported_only_by_the_module_that_owns_it(library: str) -> None:
    importers = {relative(path) for path in SOURCES if library in top_level(imported_modules(path))}
    assert importers <= OWNERS[library], f"{library} imported outside its owners: {importers}"


def test_the_owners_of_the_network_libraries_exist_and_import_them() -> None:
    for library, owners in OWNERS.items():
        for owner in owners:
            assert library in top_level(imported_modules(PACKAGE.parent / owner))


def calls_to_print(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
    ]


def test_the_library_never_prints_outside_its_command_line() -> None:
    offenders = {
        f"{relative(path)}:{line}"
        for path in SOURCES
        if "cli" not in path.relative_to(PACKAGE).parts
        for line in calls_to_print(path)
    }
    assert not offenders, f"print() in library code (use logging): {sorted(offenders)}"


def test_the_error_module_depends_on_nothing_of_the_package() -> None:
    imports = imported_modules(PACKAGE / "_errors.py")
    assert not {name for name in imports if name.startswith("autonomy")}


def test_the_protocol_module_is_sans_io() -> None:
    imports = imported_modules(PACKAGE / "_protocol.py")
    assert {name for name in imports if name.startswith("autonomy")} <= {"autonomy._errors"}
    assert not top_level(imports) & {"asyncio", "zmq", "zeroconf", "socket", "selectors"}


# _config.Env names the variables the launcher sets for its nodes: one spelling for both sides.
CLI_PRIVATE_IMPORTS = {"autonomy._config"}


def test_the_command_line_uses_only_the_public_api_of_the_package() -> None:
    cli = [path for path in SOURCES if "cli" in path.relative_to(PACKAGE).parts]
    offenders = {
        f"{relative(path)}: {name}"
        for path in cli
        for name in imported_modules(path)
        if name.startswith("autonomy.")
        and not name.startswith("autonomy.cli")
        and name not in CLI_PRIVATE_IMPORTS
    }
    assert not offenders, f"cli/ reaches into private modules: {sorted(offenders)}"


def documented_layers() -> dict[str, int]:
    """The layer table of ``autonomy/__init__.py``'s docstring: module name -> row."""
    import autonomy

    rows: dict[str, int] = {}
    for line in (autonomy.__doc__ or "").splitlines():
        match = re.fullmatch(r"\s+(\d+)\s+((?:_\w+\s*)+)", line)
        if match:
            for module in match.group(2).split():
                rows[module] = int(match.group(1))
    return rows


def test_the_layer_table_names_every_module_of_the_package_once() -> None:
    layers = documented_layers()
    top = {path.stem for path in PACKAGE.glob("*.py") if path.name != "__main__.py"}
    assert set(layers) == top


def package_imports(path: Path) -> set[str]:
    """The top-level modules of the package that ``path`` imports (``autonomy.cli`` apart)."""
    found = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[0] != "autonomy" or parts[1:2] == ["cli"]:
            continue
        found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


@pytest.mark.parametrize(
    "path", [p for p in PACKAGE.glob("*.py") if p.name != "__main__.py"], ids=relative
)
def test_a_module_imports_only_from_the_rows_above_its_own(path: Path) -> None:
    layers = documented_layers()
    row = layers[path.stem]
    offenders = {
        f"{name} (row {layers.get(name)})"
        for name in package_imports(path)
        if name != path.stem and layers.get(name, 99) >= row
    }
    assert not offenders, f"{relative(path)} (row {row}) imports {sorted(offenders)}"


def test_no_module_of_the_package_imports_itself_in_a_circle() -> None:
    graph = {
        module_name(path): {f"autonomy.{name}" for name in package_imports(path)}
        for path in PACKAGE.glob("*.py")
    }
    graph = {
        name: {dep if dep != "autonomy.__init__" else "autonomy" for dep in deps}
        for name, deps in graph.items()
    }
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import circle: {' -> '.join((*trail, name))}"
        if name in done:
            return
        for dep in graph.get(name, ()):
            visit(dep, (*trail, name))
        done.add(name)

    for name in graph:
        if name != "autonomy":  # the package re-exports everything: it is the top
            visit(name, ())


MAX_MODULE_LINES = 650
"""'No module is over about 600 lines': a module that outgrows this owns two things."""


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_no_module_is_much_over_six_hundred_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{relative(path)} has {lines} lines"


def test_the_readmes_module_map_is_the_layer_table() -> None:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    rows: dict[str, int] = {}
    for match in re.finditer(r"(?m)^\| (\d+) \| ((?:`_\w+`(?:, )?)+) \|", readme):
        for module in re.findall(r"`(_\w+)`", match.group(2)):
            rows[module] = int(match.group(1))
    layers = {name: row for name, row in documented_layers().items() if name != "__init__"}
    assert rows == layers
    cli = {path.stem for path in (PACKAGE / "cli").glob("_*.py") if not path.stem.startswith("__")}
    assert all(f"`{name}`" in readme for name in cli), cli
