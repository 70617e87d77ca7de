"""Dockerfiles: the command an image runs (ENTRYPOINT + CMD), read as Docker reads it.

``command_for`` turns an image folder's Dockerfile into the command line the launcher runs
locally in that folder, with this interpreter for ``python``. Only ENTRYPOINT, CMD, SHELL and
FROM matter here: nothing is built, and variables are not expanded (Docker does not either).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["DEFAULT_COMMAND", "command_for", "dockerfile_command"]

logger = logging.getLogger("autonomy.cli")

DEFAULT_COMMAND: Final = ("python", "main.py")
"""The command of an image whose Dockerfile has neither ENTRYPOINT nor CMD (or no Dockerfile)."""

_PYTHON_RE: Final = re.compile(r"(?:.*/)?python(?:3(?:\.\d+)?)?")
_SHELL_PYTHON_RE: Final = re.compile(r"^(\s*(?:exec\s+)?)(?:\S*/)?python(?:3(?:\.\d+)?)?(?=\s|$)")
_HEREDOC_RE: Final = re.compile(r"<<-?\s*([\"']?)([A-Za-z_][A-Za-z0-9_]*)\1")


@dataclass
class _Stage:
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    cmd_set: bool = False
    shell: list[str] = field(default_factory=lambda: ["/bin/sh", "-c"])


def _logical_lines(text: str) -> Iterator[str]:
    """Dockerfile lines with comments dropped, continuations joined and heredocs skipped."""
    escape = "\\"
    lines = text.splitlines()
    index = 0
    # Parser directives (`# escape=` ...) may only open the file.
    while index < len(lines):
        match = re.fullmatch(r"\s*#\s*([A-Za-z]+)\s*=\s*(\S+)\s*", lines[index])
        if not match:
            break
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
        index += 1
    current: list[str] = []
    while index < len(lines):
        line = lines[index]
        index += 1
        stripped = line.strip()
        if stripped.startswith("#") or (current and not stripped):
            continue
        if stripped.endswith(escape):
            current.append(stripped[: -len(escape)])
            continue
        current.append(stripped)
        logical = " ".join(part for part in current if part)
        current = []
        if not logical:
            continue
        heredoc = _HEREDOC_RE.search(logical)
        if heredoc and logical.split(None, 1)[0].upper() in ("RUN", "COPY", "ADD"):
            end = heredoc.group(2)
            while index < len(lines) and lines[index].strip() != end:
                index += 1
            index += 1
        yield logical
    if current:
        yield " ".join(part for part in current if part)


def _json_array(rest: str) -> list[str] | None:
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _exec_or_shell(rest: str, shell: list[str]) -> list[str]:
    """Docker's rule: a JSON array of strings is the exec form, anything else the shell form."""
    array = _json_array(rest)
    return array if array is not None else [*shell, rest]


def _final_stage(text: str) -> _Stage:
    stages: dict[str, _Stage] = {}
    stage = _Stage()
    for line in _logical_lines(text):
        parts = line.split(None, 1)
        instruction = parts[0].upper()
        rest = parts[1].strip() if len(parts) > 1 else ""
        if instruction == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = stages.get(words[0].lower()) if words else None
            stage = _Stage(
                entrypoint=base.entrypoint if base else None,
                cmd=base.cmd if base else None,
                shell=list(base.shell) if base else ["/bin/sh", "-c"],
            )
            if len(words) >= 3 and words[1].lower() == "as":
                stages[words[2].lower()] = stage
        elif instruction == "SHELL":
            shell = _json_array(rest)
            if shell:
                stage.shell = shell
        elif instruction == "ENTRYPOINT":
            stage.entrypoint = _exec_or_shell(rest, stage.shell) if rest else None
            if not stage.cmd_set:
                stage.cmd = None
        elif instruction == "CMD":
            stage.cmd = _exec_or_shell(rest, stage.shell) if rest else None
            stage.cmd_set = True
    return stage


def dockerfile_command(text: str) -> list[str] | None:
    """The command a Dockerfile's final stage runs (ENTRYPOINT + CMD), or None if it sets none.

    Follows Docker: exec (JSON) and shell forms (``SHELL`` honoured), the last ENTRYPOINT/CMD
    of the final stage wins, a stage built ``FROM`` an earlier stage inherits its settings,
    and an ENTRYPOINT set in a stage drops an inherited CMD. Variables are not expanded
    (Docker does not either).
    """
    stage = _final_stage(text)
    if stage.entrypoint is None and stage.cmd is None:
        return None
    return [*(stage.entrypoint or []), *(stage.cmd or [])]


def command_for(image_dir: str | os.PathLike[str], args: Sequence[str] = ()) -> list[str]:
    """The command line of an image, to run locally in ``image_dir``.

    ENTRYPOINT and CMD come from ``image_dir/Dockerfile`` (``python main.py`` without them).
    ``args`` (a container's ``args:``) replace CMD, as ``docker run IMAGE ARGS...`` and
    Kubernetes do; with the usual ``ENTRYPOINT ["python", "main.py"]`` they are appended.
    A leading ``python``/``python3`` becomes this interpreter (:data:`sys.executable`), so the
    zone runs in the environment the launcher runs in.
    """
    dockerfile = Path(image_dir) / "Dockerfile"
    try:
        text = dockerfile.read_text(encoding="utf-8")
    except FileNotFoundError:
        logger.debug("%s: no Dockerfile; running %s", image_dir, " ".join(DEFAULT_COMMAND))
        text = ""
    stage = _final_stage(text)
    if stage.entrypoint is None and stage.cmd is None:
        entrypoint, cmd = list(DEFAULT_COMMAND), []
    else:
        entrypoint, cmd = stage.entrypoint or [], stage.cmd or []
    return _use_this_python([*entrypoint, *(list(args) if args else cmd)])


def _use_this_python(argv: list[str]) -> list[str]:
    if not argv:
        return argv
    if _PYTHON_RE.fullmatch(argv[0]):
        return [sys.executable, *argv[1:]]
    # Shell form: `/bin/sh -c "python main.py"`.
    if len(argv) >= 3 and argv[1] == "-c" and os.path.basename(argv[0]) in ("sh", "bash"):
        script = _SHELL_PYTHON_RE.sub(
            lambda m: m.group(1) + shlex.quote(sys.executable), argv[2], count=1
        )
        return [argv[0], "-c", script, *argv[3:]]
    return argv
