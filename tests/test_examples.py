"""Every single-node sample of the guide runs unchanged and prints what the guide says.

(The multi-node samples run as zones under `autonomy zone deploy`: see test_cli_zones.py.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .processes import Child

EXAMPLES = REPO / "examples"

EXPECTED = {
    "hello": "`echoer` received: hello\n\n`main` received: hello\n\n",
    "calculator": "Result: 42\n",
    "patterns": "LOG: Application started\nCount: 2\n",
}


@pytest.mark.parametrize("example", sorted(EXPECTED))
async def test_the_single_node_sample_prints_what_the_guide_says(
    example: str, tmp_path: Path
) -> None:
    main = EXAMPLES / example / "images" / "main" / "main.py"
    zone = f"example-{example}-{os.getpid()}"
    env = {"AUTONOMY_WAIT_UNTIL_INTERRUPTED": "0", "AUTONOMY_ZONE": zone}
    async with Child(sys.executable, main, cwd=main.parent, env=env) as child:
        assert await child.wait(30) == 0, child.stderr
    assert child.stdout == EXPECTED[example]
