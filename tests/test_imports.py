"""The package's layering, checked on its sources: every module imports on its own, and the
third-party network libraries each stay inside the one module that owns them."""

from __future__ import annotations

import ast
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


OWNERS = {"zmq": "autonomy/_transport.py", "zeroconf": "autonomy/_discovery.py"}


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_a_network_library_is_imported_only_by_the_module_that_owns_it(library: str) -> None:
    importers = {relative(path) for path in SOURCES if library in top_level(imported_modules(path))}
    assert importers <= {OWNERS[library]}, f"{library} imported outside its owner: {importers}"


def test_the_owners_of_the_network_libraries_exist_and_import_them() -> None:
    for library, owner in OWNERS.items():
        path = PACKAGE.parent / owner
        if not path.exists():
            pytest.skip(f"{owner} is not written yet")
        assert library in top_level(imported_modules(path))


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
