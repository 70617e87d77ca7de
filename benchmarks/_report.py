"""Turning samples into the result: medians, ratios, targets, the JSON file and the table.

A build's child (``benchmarks.__main__``) summarizes its cases and checks its targets; the
parent writes the merged result of every build (``benchmarks._builds``): the JSON, the table
on stderr with the builds side by side, the plot (``benchmarks._plot``) and the summary line.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from ._cases import FANOUT, PAYLOADS, Case, payload_label
from ._common import median, progress

# Issue 16's targets: 100 B, medians of the same run; plain and CURVE each against raw of the
# same mode, and the plain round trip against Pyro5 of the same run (Pyro5 has no CURVE).
# A key is a summary key (see summary_line); a target whose case did not run is left out.
RATIO_TARGETS = {
    "remote_oneway_100B": (">=", 0.8),
    "curve_oneway_100B": (">=", 0.8),
    "remote_pipelined_100B": (">=", 0.9),
    "curve_pipelined_100B": (">=", 0.9),
    "local_100_100B": (">=", 0.7),
    "remote_rtt_100B_p50": ("<=", 1.15),
    "curve_rtt_100B_p50": ("<=", 1.15),
    "remote_rtt_100B_p50_vs_pyro": ("<=", 1.0),
}
COUNTERS_TARGET = 0.97
"""Issue 15: keeping handler times costs at most 3% (``benchmarks._counters``)."""
ABSOLUTE_TARGETS = {"local_1_100B": 75_000, "local_100_100B": 300_000}
MEMORY_TARGETS = {"idle_node_mb": 60, "per_idle_worker_kb": 5, "flood_growth_mb": 100}


def summarize_case(case: Case, samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per side, the ratio ours/raw and, with a Pyro5 side, ours/pyro."""
    entry: dict[str, Any] = {
        "title": case.title,
        "metric": case.metric,
        "unit": case.unit,
        "payload_bytes": case.payload,
        "notes": case.notes,
        "params": case.params,
        "samples": samples,
    }
    if case.metric == "latency":
        latency = {
            side: {
                "p50_us": round(median([s["p50_us"] for s in runs]), 1),
                "p99_us": round(median([s["p99_us"] for s in runs]), 1),
            }
            for side, runs in samples.items()
        }
        entry["median"] = latency
        for field, other in (("ratio", "raw"), ("ratio_pyro", "pyro")):
            if other in latency:
                entry[field] = {
                    q: round(latency["ours"][f"{q}_us"] / latency[other][f"{q}_us"], 3)
                    for q in ("p50", "p99")
                }
    else:
        medians = {
            side: round(median([s["rate"] for s in runs]), 1) for side, runs in samples.items()
        }
        entry["median"] = medians
        entry["ratio"] = round(medians["ours"] / medians["raw"], 3)
        if "pyro" in medians:
            entry["ratio_pyro"] = round(medians["ours"] / medians["pyro"], 3)
        lost = {side: sum(s.get("lost", 0) for s in runs) for side, runs in samples.items()}
        if any("lost" in s for runs in samples.values() for s in runs):
            entry["lost_total"] = lost
    return entry


def summary_line(
    cases: dict[str, dict[str, Any]], counters: dict[str, Any] | None = None
) -> dict[str, float]:
    """``{"case": ours/raw}``: latency cases give two keys, ``_p50`` and ``_p99``; a case
    with a Pyro5 side also gives ours/pyro under the same keys plus ``_vs_pyro``; the
    counters section gives ``counters_<case>``: timed/untimed."""
    summary: dict[str, float] = {}
    for key, entry in cases.items():
        for field, suffix in (("ratio", ""), ("ratio_pyro", "_vs_pyro")):
            ratio = entry.get(field)
            if isinstance(ratio, dict):
                for q, value in ratio.items():
                    summary[f"{key}_{q}{suffix}"] = value
            elif ratio is not None:
                summary[f"{key}{suffix}"] = ratio
    for key, entry in (counters or {}).get("cases", {}).items():
        summary[f"counters_{key}"] = entry["ratio"]
    return summary


def ratio_text(ratio: float | dict[str, float]) -> str:
    """``0.68``, or ``p50 1.13, p99 1.32`` for a latency case."""
    if isinstance(ratio, dict):
        return ", ".join(f"{q} {value:.2f}" for q, value in ratio.items())
    return f"{ratio:.2f}"


def _target_text(key: str, op: str, bound: float) -> str:
    """``remote_rtt_100B p50 ours/raw <= 1.15`` for the summary key ``remote_rtt_100B_p50``."""
    other = "Pyro5" if key.endswith("_vs_pyro") else "raw"
    case = key.removesuffix("_vs_pyro")
    quantile = ""
    for q in ("_p50", "_p99"):
        if case.endswith(q):
            case, quantile = case.removesuffix(q), f" {q[1:]}"
    return f"{case}{quantile} ours/{other} {op} {bound}"


def curve_cost(cases: dict[str, dict[str, Any]]) -> dict[str, float]:
    """What CURVE costs us: each ``curve_*`` case of ours over its plain ``remote_*`` twin
    of the same run (throughput: below 1 is slower; latency: above 1 is slower)."""
    cost: dict[str, float] = {}
    for key, entry in cases.items():
        if not key.startswith("curve_"):
            continue
        plain = cases.get("remote_" + key.removeprefix("curve_"))
        if plain is None:
            continue
        if entry["metric"] == "latency":
            for q in ("p50", "p99"):
                ours = entry["median"]["ours"][f"{q}_us"]
                cost[f"{key}_{q}"] = round(ours / plain["median"]["ours"][f"{q}_us"], 3)
        else:
            cost[key] = round(entry["median"]["ours"] / plain["median"]["ours"], 3)
    return cost


def check_targets(
    cases: dict[str, dict[str, Any]],
    memory: dict[str, Any] | None,
    counters: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for key, entry in (counters or {}).get("cases", {}).items():
        bound = COUNTERS_TARGET
        checks.append(
            {
                "target": f"counters {key} timed/untimed >= {bound}",
                "measured": entry["ratio"],
                "met": entry["ratio"] >= bound,
            }
        )
    ratios = summary_line(cases)
    for key, (op, bound) in RATIO_TARGETS.items():
        if key in ratios:
            value = ratios[key]
            ok = value >= bound if op == ">=" else value <= bound
            checks.append({"target": _target_text(key, op, bound), "measured": value, "met": ok})
    for key, bound in ABSOLUTE_TARGETS.items():
        if key in cases:
            value = cases[key]["median"]["ours"]
            checks.append(
                {
                    "target": f"{key} ours >= {bound:,} req/s",
                    "measured": value,
                    "met": value >= bound,
                }
            )
    if memory:
        idle = memory["idle_node"]["rss_mb"]
        per = memory["idle_workers"]["per_worker_kb_rss"]
        flood = memory["flood"]
        growth = max(flood["receiver_growth_mb"], flood["sender_growth_mb"])
        checks += [
            {"target": "idle node RSS < 60 MB", "measured": idle, "met": idle < 60},
            {"target": "idle worker < 5 KB (RSS)", "measured": per, "met": per < 5},
            {
                "target": "flood growth < 100 MB (max of receiver, sender)",
                "measured": growth,
                "met": growth < 100,
            },
            {
                "target": "flood: no accepted message lost",
                "measured": flood["lost"],
                "met": flood["lost"] == 0,
            },
        ]
    return checks


def fanout_table(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for size in PAYLOADS:
        label = payload_label(size)
        rows = {}
        for runners in FANOUT:
            key = f"remote_pipelined_{label}" if runners == 1 else f"fanout_{runners}_{label}"
            if key in cases:
                rows[str(runners)] = {**cases[key]["median"], "ratio": cases[key]["ratio"]}
        table[label] = rows
    return table


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=1) + "\n")


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


def _latency(value: dict[str, float]) -> str:
    return f"{value['p50_us']:.0f}/{value['p99_us']:.0f} us"


def _cells(entry: dict[str, Any], other: str, field: str) -> tuple[str, str, str]:
    """ours, the other side (raw or pyro) and their ratio, as table cells."""
    show = _latency if entry["metric"] == "latency" else _rate
    ratio = entry[field]
    shown = f"{ratio['p50']:.2f}/{ratio['p99']:.2f}" if isinstance(ratio, dict) else f"{ratio:.2f}"
    return show(entry["median"]["ours"]), show(entry["median"][other]), shown


def _measured(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def human_table(result: dict[str, Any]) -> str:
    """Medians and ratios with the builds side by side, then the targets per build.

    Each build's ratios are against raw of its own run; a ``vs Pyro5`` row under a case shows
    Pyro5's median (same run) in the raw column and ours/Pyro5 as the ratio."""
    builds: dict[str, dict[str, Any]] = result["builds"]
    keys = list(dict.fromkeys(key for build in builds.values() for key in build["cases"]))
    cell = "{:>16} {:>16} {:>11}"
    lines = [
        f"{'':<26}" + "".join(f" | {name:^45}" for name in builds),
        f"{'case (p50/p99 for latency)':<26}"
        + "".join(f" | {cell.format('ours', 'raw', 'ours/raw')}" for _ in builds),
    ]
    blank = cell.format("", "", "")
    pyro_rows = False
    for key in keys:
        entries = [build["cases"].get(key) for build in builds.values()]
        row = [cell.format(*_cells(e, "raw", "ratio")) if e else blank for e in entries]
        lines.append(f"{key:<26}" + "".join(f" | {text}" for text in row))
        if any(e and "ratio_pyro" in e for e in entries):
            row = [
                cell.format(*_cells(e, "pyro", "ratio_pyro")) if e and "ratio_pyro" in e else blank
                for e in entries
            ]
            lines.append(f"{'  vs Pyro5 (ours/Pyro5)':<26}" + "".join(f" | {t}" for t in row))
            pyro_rows = True
    if pyro_rows:
        lines.append("(a vs Pyro5 row: Pyro5's median of the same run in the raw column)")
    targets: dict[str, dict[str, str]] = {}
    for name, build in builds.items():
        for check in build.get("targets") or []:
            mark = "met" if check["met"] else "NOT MET"
            targets.setdefault(check["target"], {})[name] = f"{_measured(check['measured'])} {mark}"
    if targets:
        lines += ["", f"{'target':<50}" + "".join(f" {name:>18}" for name in builds)]
        lines += [
            f"{target:<50}" + "".join(f" {by_build.get(name, '-'):>18}" for name in builds)
            for target, by_build in targets.items()
        ]
    return "\n".join(lines)


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    """The merged result: JSON and PNG in ``out``, the table on stderr, the summary on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("bench-%Y%m%d-%H%M%S")
    json_path = out / f"{stem}.json"
    png_path = out / f"{stem}.png"
    write_json(json_path, result)
    with contextlib.suppress(ImportError):
        from ._plot import plot

        plot(png_path, result)
    if not png_path.exists():
        progress("matplotlib is not installed: no plot (pip install matplotlib)")
    print(human_table(result), file=sys.stderr)
    for name, build in result["builds"].items():
        if build["curve_cost"]:
            progress(f"CURVE cost ({name}), ours with CURVE / ours plain: {build['curve_cost']}")
    progress(f"wrote {json_path}" + (f" and {png_path}" if png_path.exists() else ""))
    print(json.dumps(result["summary"]), flush=True)
