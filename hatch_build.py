"""The wheel's build hook: the hot modules compiled with mypyc where that can be done.

Where mypy (installed for this hook) and a C compiler are at hand, ``pip install .`` gets a
wheel whose hot modules are compiled (see ``autonomy/_build.py``); anywhere else, or with
``AUTONOMY_PURE_PYTHON=1``, the same package in pure Python, as msgpack and aiohttp do. An
editable install (``pip install -e``) is always pure Python: ``scripts/compile`` compiles
its source tree in place.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CompiledBuild(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        if os.environ.get("AUTONOMY_PURE_PYTHON", "").strip() in ("1", "true", "yes"):
            self.app.display_info("autonomy: AUTONOMY_PURE_PYTHON is set: a pure Python wheel")
            return
        source = Path(self.root) / "autonomy"
        spec = importlib.util.spec_from_file_location("autonomy_build", source / "_build.py")
        assert spec is not None
        assert spec.loader is not None
        build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build)
        work = Path(tempfile.mkdtemp(prefix="autonomy-build-"))
        try:
            package = work / "autonomy"
            shutil.copytree(source, package, ignore=shutil.ignore_patterns("__pycache__"))
            made = build.compile_in_place(package)
        except Exception as exc:  # no compiler, no mypy...: the pure Python package
            self.app.display_warning(f"autonomy: not compiled ({exc!r}): a pure Python wheel")
            return
        for path in made:
            inside = f"autonomy/{path.name}" if path.parent == package else path.name
            build_data["force_include"][str(path)] = inside
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self.app.display_info(f"autonomy: {len(made)} modules compiled with mypyc")
