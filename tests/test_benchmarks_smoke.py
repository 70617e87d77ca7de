"""The benchmark commands keep working: `python -m benchmarks --quick` and
`python -m benchmarks zone --quick` run to the end.

Smoke tests only: no performance threshold (CI machines are noisy), just that each command
exits 0 and writes its JSON and PNG; the first prints a JSON summary of ratios as its last
line, the second reports every metric for every zone size. The first runs the pure build
only (``--builds pure``): the compiled build's copy takes a minute to compile.
"""

from __future__ import annotations

import importlib.util
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
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--builds", "pure"]
    argv += ["--out", str(tmp_path)]
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
    assert {"machine", "params", "builds", "summary"} <= result.keys()
    assert list(result["builds"]) == ["pure"]
    pure = result["builds"]["pure"]
    assert pure["build"] == "pure Python"
    assert {"cases", "counters", "memory", "targets", "summary"} <= pure.keys()
    # The counters' cost: timed and untimed nodes of the same build, each side measured.
    counters = pure["counters"]["cases"]
    assert set(counters) == {"local_1_100B", "local_100_100B"}
    for entry in counters.values():
        for side in ("timed", "untimed"):
            assert entry[side]["rate"] > 0
            assert entry[side]["cpu_us_per_request"] > 0
        assert entry["ratio"] > 0
    assert any(check["target"].startswith("counters local_100") for check in pure["targets"])
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == result["summary"]
    assert summary, "the summary names at least one case"
    assert "counters_local_100_100B" in summary
    assert all(list(by_build) == ["pure"] for by_build in summary.values())
    assert all(
        isinstance(r, float | int) for by_build in summary.values() for r in by_build.values()
    )
    if importlib.util.find_spec("Pyro5") is not None:  # the dev extra installs it
        rtt = pure["cases"]["remote_rtt_100B"]
        assert set(rtt["median"]) == {"ours", "raw", "pyro"}
        assert set(rtt["ratio_pyro"]) == {"p50", "p99"}


ZONE_DEADLINE_S = 60


@pytest.mark.timeout(ZONE_DEADLINE_S + 30)
async def test_quick_zone_benchmark_reports_every_metric_for_every_size(tmp_path: Path) -> None:
    """`python -m benchmarks zone --quick`: zones of 5 and 10 nodes by the zone launcher."""
    pytest.importorskip("matplotlib")
    argv = [sys.executable, "-m", "benchmarks", "zone", "--quick", "--out", str(tmp_path)]
    async with Child(*argv, cwd=REPO) as bench:
        assert await bench.wait(ZONE_DEADLINE_S) == 0, bench.stderr[-4000:]
    check_zone_outputs(tmp_path)


def check_zone_outputs(out: Path) -> None:
    """A JSON, a PNG and a log in ``out``; every metric for every quick size."""
    from benchmarks._zone import QUICK_SIZES
    from benchmarks._zone_report import METRICS

    (json_file,) = out.glob("zone-*.json")
    (png_file,) = out.glob("zone-*.png")
    assert png_file.stat().st_size > 0
    assert list(out.glob("zone-*.log"))

    result = json.loads(json_file.read_text())
    assert all("error" not in run for run in result["runs"]), result["problems"]
    assert sorted(int(n) for n in result["sizes"]) == sorted(QUICK_SIZES)
    for size, entry in result["sizes"].items():
        assert entry["runs"] == 1, size
        for metric in METRICS:
            value = entry["median"][metric]
            assert isinstance(value, int | float), f"N={size}: {metric} is {value!r}"
        # What the library promises at these sizes: every runner found, no node killed.
        assert entry["median"]["missing"] == 0, (size, result["problems"])
        assert entry["median"]["died_by_signal"] == 0, (size, result["problems"])
