"""Dockerfile → command line: ENTRYPOINT and CMD read as Docker reads them, run with this
interpreter (pure functions of a Dockerfile's text, and of an image folder)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from autonomy.cli._dockerfile import command_for, dockerfile_command

EXE = sys.executable


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        ('FROM x\nCOPY . .\nENTRYPOINT ["python", "main.py"]\n', ["python", "main.py"]),
        ("FROM x\n", None),
        ('FROM x\nCMD ["python3", "app.py", "--x"]\n', ["python3", "app.py", "--x"]),
        (
            'FROM x\nENTRYPOINT ["python", "main.py"]\nCMD ["--port", "8000"]\n',
            ["python", "main.py", "--port", "8000"],
        ),
        (
            'FROM x\nCMD ["--port", "8000"]\nENTRYPOINT ["python", "main.py"]\n',
            ["python", "main.py", "--port", "8000"],
        ),
        ("FROM x\nENTRYPOINT python main.py\n", ["/bin/sh", "-c", "python main.py"]),
        (
            'FROM x\nENTRYPOINT ["uv", "run"]\nCMD python main.py\n',
            ["uv", "run", "/bin/sh", "-c", "python main.py"],
        ),
        ('FROM x\nCMD ["a"]\nCMD ["b"]\n', ["b"]),
        ('from x\nentrypoint ["python", "main.py"]\n', ["python", "main.py"]),
        ('FROM x\nENTRYPOINT ["python", \\\n  "main.py"]\n', ["python", "main.py"]),
        (
            'FROM x\n# ENTRYPOINT ["wrong"]\nENTRYPOINT ["python", "main.py"]\n',
            ["python", "main.py"],
        ),
        ("FROM x\nENTRYPOINT [python, main.py]\n", ["/bin/sh", "-c", "[python, main.py]"]),
        (
            'FROM x AS build\nCMD ["build"]\nFROM y\nENTRYPOINT ["python", "main.py"]\n',
            ["python", "main.py"],
        ),
        (
            'FROM x AS base\nENTRYPOINT ["python", "main.py"]\nFROM base\nRUN true\n',
            ["python", "main.py"],
        ),
        (
            'FROM x AS base\nCMD ["--old"]\nFROM base\nENTRYPOINT ["python", "main.py"]\n',
            ["python", "main.py"],
        ),
        (
            'FROM x\nSHELL ["/bin/bash", "-c"]\nCMD python main.py\n',
            ["/bin/bash", "-c", "python main.py"],
        ),
        ('# escape=`\nFROM x\nENTRYPOINT ["python", `\n "main.py"]\n', ["python", "main.py"]),
        (
            'FROM x\nRUN <<EOF\nCMD ["not", "an", "instruction"]\nEOF\nCMD ["python", "m.py"]\n',
            ["python", "m.py"],
        ),
    ],
    ids=[
        "exec-entrypoint",
        "none",
        "cmd-only",
        "entrypoint-then-cmd",
        "cmd-then-entrypoint",
        "shell-entrypoint",
        "shell-cmd-after-exec-entrypoint",
        "last-cmd-wins",
        "lowercase",
        "continuation",
        "comment",
        "bad-json-is-shell-form",
        "final-stage-only",
        "stage-inherits",
        "entrypoint-resets-inherited-cmd",
        "shell-instruction",
        "escape-directive",
        "heredoc-skipped",
    ],
)
def test_dockerfile_command(dockerfile: str, expected: list[str] | None) -> None:
    assert dockerfile_command(dockerfile) == expected


def write_image(tmp_path: Path, dockerfile: str | None) -> Path:
    image = tmp_path / "images" / "main"
    image.mkdir(parents=True)
    if dockerfile is not None:
        (image / "Dockerfile").write_text(dockerfile)
    return image


@pytest.mark.parametrize(
    ("dockerfile", "args", "expected"),
    [
        ('FROM x\nENTRYPOINT ["python", "main.py"]\n', [], [EXE, "main.py"]),
        (None, [], [EXE, "main.py"]),
        ("FROM x\n", ["--a"], [EXE, "main.py", "--a"]),
        ('FROM x\nENTRYPOINT ["python", "main.py"]\n', ["--a", "1"], [EXE, "main.py", "--a", "1"]),
        (
            'FROM x\nENTRYPOINT ["python3", "main.py"]\nCMD ["--port", "8000"]\n',
            [],
            [EXE, "main.py", "--port", "8000"],
        ),
        (
            'FROM x\nENTRYPOINT ["python3", "main.py"]\nCMD ["--port", "8000"]\n',
            ["--b"],
            [EXE, "main.py", "--b"],
        ),
        ('FROM x\nCMD ["/usr/local/bin/python3.11", "-u", "app.py"]\n', [], [EXE, "-u", "app.py"]),
        ('FROM x\nCMD ["uvicorn", "app:app"]\n', [], ["uvicorn", "app:app"]),
        ('FROM x\nCMD ["pythonista"]\n', [], ["pythonista"]),
        (
            "FROM x\nCMD exec python main.py\n",
            [],
            ["/bin/sh", "-c", f"exec {shlex.quote(EXE)} main.py"],
        ),
    ],
    ids=[
        "guide",
        "no-dockerfile",
        "default-plus-args",
        "args-appended-to-entrypoint",
        "cmd-as-entrypoint-args",
        "args-replace-cmd",
        "absolute-python",
        "not-python",
        "python-prefix-only",
        "shell-form-python",
    ],
)
def test_command_for(
    tmp_path: Path, dockerfile: str | None, args: list[str], expected: list[str]
) -> None:
    assert command_for(write_image(tmp_path, dockerfile), args) == expected
