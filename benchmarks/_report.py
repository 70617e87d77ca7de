"""Turning samples into the result: medians, ratios, targets, the JSON file, the PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._cases import FANOUT, PAYLOADS, Case, payload_label
from ._common import median

# The targets (100 B messages, medians of the same run).
RATIO_TARGETS = {
    "remote_pipelined_100B": (">=", 0.8),
    "remote_oneway_100B": (">=", 0.8),
    "remote_rtt_100B_p50": ("<=", 1.3),
}
ABSOLUTE_TARGETS = {"local_1_100B": 75_000, "local_100_100B": 300_000}
MEMORY_TARGETS = {"idle_node_mb": 60, "per_idle_worker_kb": 5, "flood_growth_mb": 100}


def summarize_case(case: Case, samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per side and the ratio ours/raw of a case's samples."""
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
        entry["ratio"] = {
            q: round(latency["ours"][f"{q}_us"] / latency["raw"][f"{q}_us"], 3)
            for q in ("p50", "p99")
        }
    else:
        medians = {
            side: round(median([s["rate"] for s in runs]), 1) for side, runs in samples.items()
        }
        entry["median"] = medians
        entry["ratio"] = round(medians["ours"] / medians["raw"], 3)
        lost = {side: sum(s.get("lost", 0) for s in runs) for side, runs in samples.items()}
        if any("lost" in s for runs in samples.values() for s in runs):
            entry["lost_total"] = lost
    return entry


def summary_line(cases: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"case": ratio}``: latency cases give two keys, ``_p50`` and ``_p99``."""
    summary: dict[str, float] = {}
    for key, entry in cases.items():
        if isinstance(entry["ratio"], dict):
            for q, value in entry["ratio"].items():
                summary[f"{key}_{q}"] = value
        else:
            summary[key] = entry["ratio"]
    return summary


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
    cases: dict[str, dict[str, Any]], memory: dict[str, Any] | None
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    ratios = summary_line(cases)
    for key, (op, bound) in RATIO_TARGETS.items():
        if key in ratios:
            value = ratios[key]
            ok = value >= bound if op == ">=" else value <= bound
            checks.append({"target": f"{key} ours/raw {op} {bound}", "measured": value, "met": ok})
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


def human_table(result: dict[str, Any]) -> str:
    """A plain-text table of medians and ratios (printed on stderr at the end)."""
    lines = [f"{'case':<26} {'ours':>16} {'raw':>16} {'ours/raw':>14}"]
    for key, entry in result["cases"].items():
        if entry["metric"] == "latency":
            ours, raw = entry["median"]["ours"], entry["median"]["raw"]
            lines.append(
                f"{key:<26} {ours['p50_us']:>7.0f}/{ours['p99_us']:<6.0f}us "
                f"{raw['p50_us']:>7.0f}/{raw['p99_us']:<6.0f}us "
                f"{entry['ratio']['p50']:>6.2f}/{entry['ratio']['p99']:<6.2f}"
            )
        else:
            ours, raw = entry["median"]["ours"], entry["median"]["raw"]
            lines.append(f"{key:<26} {ours:>12,.0f}/s   {raw:>12,.0f}/s   {entry['ratio']:>10.2f}")
    for check in result.get("targets", []):
        mark = "met" if check["met"] else "NOT MET"
        lines.append(f"target {check['target']}: {check['measured']} ({mark})")
    return "\n".join(lines)


def plot(path: Path, result: dict[str, Any]) -> None:
    """One PNG: throughput per payload, latency, fan-out, ratios, memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    colors = {"ours": "#1f77b4", "raw": "#aaaaaa"}

    def bars(ax: Any, labels: list[str], ours: list[float], raw: list[float], ylabel: str) -> None:
        xs = range(len(labels))
        width = 0.38
        ax.bar([x - width / 2 for x in xs], ours, width, label="autonomy", color=colors["ours"])
        ax.bar(
            [x + width / 2 for x in xs],
            raw,
            width,
            label="raw pyzmq / asyncio",
            color=colors["raw"],
        )
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        for x, (a, b) in enumerate(zip(ours, raw, strict=True)):
            if a and b:
                ax.annotate(f"{a / b:.2f}x", (x, max(a, b)), ha="center", va="bottom", fontsize=7)

    for ax, size in zip(axes[0][:2], PAYLOADS, strict=True):
        label = payload_label(size)
        keys = [
            k for k, e in cases.items() if e["metric"] == "throughput" and k.endswith(f"_{label}")
        ]
        bars(
            ax,
            [k.removesuffix(f"_{label}") for k in keys],
            [cases[k]["median"]["ours"] for k in keys],
            [cases[k]["median"]["raw"] for k in keys],
            "per second (log)",
        )
        ax.set_title(f"throughput, {label} messages (medians; ratio ours/raw on top)")

    ax = axes[0][2]
    lat = [k for k, e in cases.items() if e["metric"] == "latency"]
    labels, ours, raw = [], [], []
    for key in lat:
        for q in ("p50", "p99"):
            labels.append(f"{key.removeprefix('remote_rtt_')} {q}")
            ours.append(cases[key]["median"]["ours"][f"{q}_us"])
            raw.append(cases[key]["median"]["raw"][f"{q}_us"])
    bars(ax, labels, ours, raw, "µs (log)")
    ax.set_title("remote round trip, one at a time")

    ax = axes[1][0]
    for label, rows in result.get("fanout", {}).items():
        xs = [int(r) for r in rows]
        ax.plot(xs, [rows[r]["ours"] for r in rows], "o-", label=f"autonomy {label}")
        ax.plot(xs, [rows[r]["raw"] for r in rows], "s--", label=f"raw {label}")
    ax.set_xticks(list(FANOUT))
    ax.set_xlabel("runner processes")
    ax.set_ylabel("requests/s")
    ax.set_title("fan-out: 1,000 in flight round-robin")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1][1]
    ratios = summary_line(cases)
    names = list(ratios)
    values = [ratios[n] for n in names]
    ax.barh(range(len(names)), values, color=colors["ours"])
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(0.8, color="red", lw=0.8, ls="--", label="0.8 (throughput target)")
    ax.axvline(1.3, color="orange", lw=0.8, ls="--", label="1.3 (latency p50 target)")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_title("ours/raw, log scale (throughput: higher is better; latency: lower)")
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[1][2]
    memory = result.get("memory")
    if memory:
        flood = memory["flood"]
        names = [
            "idle node\n(MB)",
            "idle worker\n(KB)",
            "flood growth\nreceiver (MB)",
            "flood growth\nsender (MB)",
        ]
        measured = [
            memory["idle_node"]["rss_mb"],
            memory["idle_workers"]["per_worker_kb_rss"],
            flood["receiver_growth_mb"],
            flood["sender_growth_mb"],
        ]
        targets = [60, 5, 100, 100]
        xs = list(range(len(names)))
        ax.bar([x - 0.2 for x in xs], measured, 0.4, label="measured", color=colors["ours"])
        ax.bar([x + 0.2 for x in xs], targets, 0.4, label="target (below)", color="#f4a582")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(
            f"memory (flood: {flood['accepted']:,} accepted, {flood['handled']:,} handled)"
        )
        ax.legend(fontsize=8)
    else:
        ax.axis("off")

    machine = result["machine"]
    fig.suptitle(
        f"autonomy vs raw pyzmq — {machine['cpu']}, {machine['cores']} cores, Python "
        f"{machine['python']}, pyzmq {machine['pyzmq']} / libzmq {machine['libzmq']}, "
        f"{machine['loop']}, {result['params']['rounds']} rounds"
        + (" (quick)" if result["params"]["quick"] else ""),
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
