"""The command line's layout, checked on its sources: each module says what it owns, none reads
another object's private fields, and the launcher's variable names come from `_config.Env`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parent.parent / "autonomy" / "cli"
MODULES = sorted(path for path in CLI.glob("*.py") if path.name != "__main__.py")
ALLOWED_PRIVATE = {"os._exit"}
"""Private names of the standard library that the command line means to use."""


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (of the module, classes, functions, or
    under an attribute)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for statement in body:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                found.add(id(statement.value))
    return found


def test_the_command_line_modules_are_found() -> None:
    assert {"__init__.py", "_supervisor.py", "_zonefile.py"} <= {path.name for path in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_each_module_says_in_its_first_line_what_it_owns(path: Path) -> None:
    docstring = ast.get_docstring(parse(path))
    assert docstring, f"{path.name} has no module docstring"
    first = docstring.splitlines()[0]
    assert first.endswith("."), f"{path.name}: the first line is not a sentence: {first!r}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_no_module_reads_the_private_fields_of_another_object(path: Path) -> None:
    offenders = [
        f"{path.name}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(parse(path))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        and ast.unparse(node) not in ALLOWED_PRIVATE
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_variable_names_are_spelled_by_config_env_not_by_string_literals(path: Path) -> None:
    tree = parse(path)
    skip = docstrings(tree)
    offenders = [
        f"{path.name}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        # a name or a NAME= piece, not prose (help text may name the variables)
        and re.search(r"AUTONOMY_[A-Z_]+", node.value)
        and not re.search(r"\s", node.value.strip("\0"))
    ]
    assert not offenders, offenders
