"""The benchmark command keeps working: `python -m benchmarks --quick` runs to the end.

A smoke test only: no performance threshold (CI machines are noisy), just that the command
exits 0, writes its JSON and PNG, and prints a JSON summary of ratios as its last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .processes import Child

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 120


@pytest.mark.timeout(DEADLINE_S + 30)
async def test_quick_benchmark_writes_json_and_png_and_prints_a_summary(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)]
    async with Child(*argv, cwd=REPO) as bench:
        assert await bench.wait(DEADLINE_S) == 0, bench.stderr[-4000:]
    check_outputs(tmp_path, bench.stdout)


def check_outputs(out: Path, stdout: str) -> None:
    """One JSON and one PNG in ``out``; the last stdout line is the JSON's summary."""
    json_files = list(out.glob("bench-*.json"))
    png_files = list(out.glob("bench-*.png"))
    assert len(json_files) == 1
    assert len(png_files) == 1
    assert png_files[0].stat().st_size > 0

    result = json.loads(json_files[0].read_text())
    assert {"machine", "params", "cases", "memory", "summary"} <= result.keys()
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == result["summary"]
    assert summary, "the summary names at least one case"
    assert all(isinstance(ratio, float | int) for ratio in summary.values())
