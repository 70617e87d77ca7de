"""The PNG plot of a merged result: every build's figures beside its own raw (and Pyro5).

Six panels: throughput at each payload, the round trip, the fan-out, every ratio with its
target, memory. Each build has its colour; raw and Pyro5 are measured in each build's own
run, so they appear once per build (the same colour family, lighter or hatched).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ._cases import FANOUT, PAYLOADS, payload_label
from ._report import COUNTERS_TARGET, MEMORY_TARGETS, RATIO_TARGETS

_OURS = {"pure": "#1f77b4", "compiled": "#d62728"}
_RAW = {"pure": "#9ecae1", "compiled": "#fcae91"}
_PYRO = {"pure": "#6a51a3", "compiled": "#9e9ac8"}

Series = tuple[str, list[float], str, str]
"""label, one value per group (nan: no bar), colour, hatch."""


def _series(
    builds: dict[str, dict[str, Any]], keys: list[str], value: Any, pyro: bool = True
) -> list[Series]:
    """Per build: ours, raw and (where any case has it) Pyro5: ``value(entry, side, n)`` for
    the case ``keys[n]`` of each group ``n``."""
    series: list[Series] = []
    for name, build in builds.items():
        cases = build["cases"]

        def values(side: str, cases: dict[str, Any] = cases) -> list[float]:
            return [
                value(cases[key], side, n)
                if key in cases and side in cases[key]["median"]
                else math.nan
                for n, key in enumerate(keys)
            ]

        series.append((f"autonomy, {name}", values("ours"), _OURS.get(name, "C0"), ""))
        series.append((f"raw pyzmq ({name} run)", values("raw"), _RAW.get(name, "C7"), "//"))
        pyros = values("pyro")
        if pyro and not all(math.isnan(v) for v in pyros):
            series.append((f"Pyro5 ({name} run)", pyros, _PYRO.get(name, "C4"), ".."))
    return series


def _bars(ax: Any, labels: list[str], series: list[Series], ylabel: str) -> None:
    """Grouped bars, log scale."""
    width = 0.8 / max(1, len(series))
    for n, (label, values, colour, hatch) in enumerate(series):
        xs = [x - 0.4 + width * (n + 0.5) for x in range(len(labels))]
        ax.bar(xs, values, width, label=label, color=colour, hatch=hatch, edgecolor="white")
    ax.set_xticks(list(range(len(labels))))
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def _nothing(ax: Any, title: str) -> None:
    """A panel whose cases did not run (``--only``)."""
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", color="grey")


def _fanout(ax: Any, builds: dict[str, dict[str, Any]]) -> None:
    """Requests per second against runner processes, ours and raw, per build and payload."""
    if not any(rows for build in builds.values() for rows in build["fanout"].values()):
        _nothing(ax, "fan-out")
        return
    for name, build in builds.items():
        for label, rows in build["fanout"].items():
            xs = [int(r) for r in rows]
            ours = [rows[r]["ours"] for r in rows]
            raw = [rows[r]["raw"] for r in rows]
            ax.plot(xs, ours, "o-", color=_OURS.get(name, "C0"), label=f"{name} {label}")
            ax.plot(xs, raw, "s--", color=_RAW.get(name, "C7"), label=f"raw ({name} run) {label}")
    ax.set_xticks(list(FANOUT))
    ax.set_xlabel("runner processes")
    ax.set_ylabel("requests/s")
    ax.set_title("fan-out: 1,000 in flight round-robin")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    builds: dict[str, dict[str, Any]] = result["builds"]
    keys = list(dict.fromkeys(key for build in builds.values() for key in build["cases"]))
    metric = {key: b["cases"][key]["metric"] for b in builds.values() for key in b["cases"]}
    fig, axes = plt.subplots(2, 3, figsize=(20, 11))

    for ax, size in zip(axes[0][:2], PAYLOADS, strict=True):
        label = payload_label(size)
        chosen = [k for k in keys if metric[k] == "throughput" and k.endswith(f"_{label}")]
        if not chosen:
            _nothing(ax, f"throughput, {label} messages")
            continue
        series = _series(builds, chosen, lambda entry, side, _: entry["median"][side])
        _bars(ax, [k.removesuffix(f"_{label}") for k in chosen], series, "per second (log)")
        ax.set_title(f"throughput, {label} messages (medians)")

    ax = axes[0][2]
    latency = [k for k in keys if metric[k] == "latency"]
    groups = [(key, q) for key in latency for q in ("p50", "p99")]
    labels = [f"{key.replace('_rtt_', ' ')} {q}" for key, q in groups]
    series = _series(
        builds,
        [key for key, _ in groups],
        lambda entry, side, n: entry["median"][side][f"{groups[n][1]}_us"],
    )
    if groups:
        _bars(ax, labels, series, "µs (log)")
        ax.set_title("remote round trip, one at a time (medians)")
    else:
        _nothing(ax, "remote round trip")

    _fanout(axes[1][0], builds)

    ax = axes[1][1]
    names = list(dict.fromkeys(k for b in builds.values() for k in b["summary"]))
    height = 0.8 / max(1, len(builds))
    for n, (name, build) in enumerate(builds.items()):
        ys = [y - 0.4 + height * (n + 0.5) for y in range(len(names))]
        values = [build["summary"].get(key, math.nan) for key in names]
        ax.barh(ys, values, height, color=_OURS.get(name, "C0"), label=name)
        for y, key, value in zip(ys, names, values, strict=True):
            if key.startswith("counters_") and not math.isnan(value):  # a few %: as text
                ax.text(1.05, y, f"{value:.3f} {name}", va="center", fontsize=6)
    for y, key in enumerate(names):
        bound = COUNTERS_TARGET if key.startswith("counters_") else None
        if key in RATIO_TARGETS:
            bound = RATIO_TARGETS[key][1]
        if bound is not None:
            ax.plot(bound, y, marker="|", color="black", markersize=14)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_title(
        "ours/raw, ours/Pyro5, counters_*: timed/untimed\n(log; |: target; throughput higher,"
        " latency lower)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[1][2]
    memories = {name: build["memory"] for name, build in builds.items() if build.get("memory")}
    if memories:
        names = ["idle node\n(MB)", "idle worker\n(KB)", "flood growth\nreceiver (MB)"]
        names.append("flood growth\nsender (MB)")
        targets = [
            MEMORY_TARGETS["idle_node_mb"],
            MEMORY_TARGETS["per_idle_worker_kb"],
            MEMORY_TARGETS["flood_growth_mb"],
            MEMORY_TARGETS["flood_growth_mb"],
        ]
        series = [
            (
                f"measured, {name}",
                [
                    memory["idle_node"]["rss_mb"],
                    memory["idle_workers"]["per_worker_kb_rss"],
                    memory["flood"]["receiver_growth_mb"],
                    memory["flood"]["sender_growth_mb"],
                ],
                _OURS.get(name, "C0"),
                "",
            )
            for name, memory in memories.items()
        ]
        series.append(("target (below)", [float(t) for t in targets], "#f4a582", ""))
        _bars(ax, names, series, "")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xticklabels(names, rotation=0, fontsize=8)
        ax.set_title("memory (fresh processes)")
    else:
        ax.axis("off")

    machine = result["machine"]
    fig.suptitle(
        f"autonomy ({', '.join(builds)}) vs raw pyzmq and Pyro5 — {machine['cpu']}, "
        f"{machine['cores']} cores, Python {machine['python']}, pyzmq {machine['pyzmq']} / "
        f"libzmq {machine['libzmq']}, {machine['loop']}, {result['params']['rounds']} rounds"
        + (" (quick)" if result["params"]["quick"] else ""),
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
