"""Every single-node sample of the guide runs unchanged and prints what the guide says.

(The multi-node samples run as zones under `autonomy zone deploy`: see test_cli_zones.py.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from .conftest import REPO, bounded

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
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(main), cwd=str(main.parent),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "AUTONOMY_WAIT_UNTIL_INTERRUPTED": "0",
             "AUTONOMY_ZONE": f"example-{example}-{os.getpid()}"},
    )
    try:
        out, err = await bounded(process.communicate(), 30)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert out.decode() == EXPECTED[example]
