"""The zone benchmark's report: medians per size, the table on stderr, the PNG plot.

``benchmarks._zone`` measures; this module only turns its runs into the result's ``sizes``
and draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from ._common import median

METRICS: Final = (
    "launch_to_found_s",
    "last_start_to_found_s",
    "missing",
    "idle_cpu_ms_per_s_median",
    "idle_cpu_ms_per_s_max",
    "idle_cpu_ms_per_s_zone",
    "rss_mb_median",
    "rss_mb_max",
    "tcp_sockets_median",
    "tcp_sockets_max",
    "messages_per_s_median",
    "messages_per_s_max",
    "messages_per_s_zone",
    "mdns_cold_start_packets",
    "mdns_cold_start_bytes",
    "mdns_idle_packets",
    "mdns_idle_bytes",
    "died_by_signal",
)
"""Every run reports each of these (the smoke test checks them all, for every size)."""

STEADY_METRICS: Final = (
    "steady_cpu_ms_per_s_median",
    "steady_cpu_ms_per_s_max",
    "steady_cpu_ms_per_s_zone",
    "steady_tcp_sockets_median",
    "steady_tcp_sockets_max",
    "steady_messages_per_s_median",
    "steady_messages_per_s_max",
    "steady_messages_per_s_zone",
)
"""...and these too, unless ``--steady-after 0`` (``--quick``) skips the second window."""


def summarize_sizes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: every metric's median over its runs, and each run's value."""
    sizes: dict[str, Any] = {}
    for nodes in sorted({run["nodes"] for run in runs}):
        mine = [run for run in runs if run["nodes"] == nodes and "metrics" in run]
        names = [*METRICS, *(m for m in STEADY_METRICS if any(m in r["metrics"] for r in mine))]
        per_run = {m: [run["metrics"].get(m) for run in mine] for m in names}
        medians = {}
        for metric, values in per_run.items():
            present = [v for v in values if v is not None]
            medians[metric] = round(median(present), 3) if present else None
        sizes[str(nodes)] = {"runs": len(mine), "median": medians, "per_run": per_run}
    return sizes


def human_table(result: dict[str, Any]) -> str:
    """One row per size (medians over runs), for stderr."""
    header = (
        f"{'N':>4} {'runs':>4} {'found s':>13} {'miss':>4} {'idle CPU ms/s':>20} "
        f"{'RSS MB':>11} {'TCP':>7} {'msgs/s':>18} {'mDNS pkts':>13} {'sig':>3}"
    )
    lines = [
        header,
        f"{'':>4} {'':>4} {'launch/last':>13} {'':>4} {'median/max/zone':>20} "
        f"{'median/max':>11} {'med/max':>7} {'median/max/zone':>18} {'cold/idle':>13}",
    ]

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for nodes, entry in result["sizes"].items():
        m = entry["median"]

        def pair(a: str, b: str, spec: str, m: dict[str, Any] = m) -> str:
            return f"{fmt(m[a], spec)}/{fmt(m[b], spec)}"

        found = pair("launch_to_found_s", "last_start_to_found_s", ".1f")
        cpu = pair("idle_cpu_ms_per_s_median", "idle_cpu_ms_per_s_max", ".1f")
        cpu += "/" + fmt(m["idle_cpu_ms_per_s_zone"], ".0f")
        messages = pair("messages_per_s_median", "messages_per_s_max", ".2f")
        messages += "/" + fmt(m["messages_per_s_zone"], ".1f")
        lines.append(
            f"{nodes:>4} {entry['runs']:>4} {found:>13} {fmt(m['missing'], '.0f'):>4} "
            f"{cpu:>20} {pair('rss_mb_median', 'rss_mb_max', '.1f'):>11} "
            f"{pair('tcp_sockets_median', 'tcp_sockets_max', '.0f'):>7} {messages:>18} "
            f"{pair('mdns_cold_start_packets', 'mdns_idle_packets', '.0f'):>13} "
            f"{fmt(m['died_by_signal'], '.0f'):>3}"
        )
    steady = [
        (nodes, entry["median"])
        for nodes, entry in result["sizes"].items()
        if "steady_cpu_ms_per_s_zone" in entry["median"]
    ]
    if steady:
        after = result["params"]["steady_after_s"]
        lines.append(f"steady state ({after:g} s after the idle window, idle links closed):")
        lines.append(
            f"{'N':>4} {'CPU ms/s median/max/zone':>26} {'TCP med/max':>12} "
            f"{'msgs/s median/max/zone':>24}"
        )
        for nodes, m in steady:
            cpu = "/".join(
                fmt(m[f"steady_cpu_ms_per_s_{k}"], spec)
                for k, spec in (("median", ".1f"), ("max", ".1f"), ("zone", ".0f"))
            )
            tcp = f"{fmt(m['steady_tcp_sockets_median'], '.0f')}/"
            tcp += fmt(m["steady_tcp_sockets_max"], ".0f")
            messages = "/".join(
                fmt(m[f"steady_messages_per_s_{k}"], spec)
                for k, spec in (("median", ".2f"), ("max", ".2f"), ("zone", ".1f"))
            )
            lines.append(f"{nodes:>4} {cpu:>26} {tcp:>12} {messages:>24}")
    return "\n".join(lines)


_PANELS: Final = (
    (
        "cold start: until Zone.nodes answered (s)",
        [("launch_to_found_s", "from launch"), ("last_start_to_found_s", "from last start")],
    ),
    ("runners missing from Zone.nodes (30 s wait)", [("missing", "missing")]),
    (
        "idle CPU per node (ms of CPU per s)",
        [
            ("idle_cpu_ms_per_s_median", "median"),
            ("idle_cpu_ms_per_s_max", "max"),
            ("steady_cpu_ms_per_s_median", "median, steady"),
            ("steady_cpu_ms_per_s_max", "max, steady"),
        ],
    ),
    (
        "idle CPU of the whole zone (ms/s)",
        [("idle_cpu_ms_per_s_zone", "sum of nodes"), ("steady_cpu_ms_per_s_zone", "steady")],
    ),
    ("RSS per node (MB)", [("rss_mb_median", "median"), ("rss_mb_max", "max")]),
    (
        "TCP sockets per node (listener included)",
        [
            ("tcp_sockets_median", "median"),
            ("tcp_sockets_max", "max"),
            ("steady_tcp_sockets_median", "median, steady"),
            ("steady_tcp_sockets_max", "max, steady"),
        ],
    ),
    (
        "ZeroMQ messages per node, idle (sent+received /s)",
        [
            ("messages_per_s_median", "median"),
            ("messages_per_s_max", "max"),
            ("steady_messages_per_s_median", "median, steady"),
            ("steady_messages_per_s_max", "max, steady"),
        ],
    ),
    (
        "mDNS packets on loopback",
        [("mdns_cold_start_packets", "cold start"), ("mdns_idle_packets", "idle window")],
    ),
    ("node processes that died by a signal", [("died_by_signal", "died by a signal")]),
)


def _label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def plot(path: Path, result: dict[str, Any]) -> None:
    """One panel per metric against N: each run a dot, the median over runs a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    sizes = sorted(int(n) for n in result["sizes"])
    fig, axes = plt.subplots(3, 3, figsize=(16, 12))
    # Per series of a panel: colour, line style, where its labels go (above, below).
    looks = (
        ("#1f77b4", "-", 6),
        ("#d62728", "-", -13),
        ("#17becf", "--", 6),
        ("#ff7f0e", "--", -13),
    )
    for ax, (title, series) in zip(axes.flat, _PANELS, strict=True):
        top = 0.0
        for (color, style, offset), (metric, label) in zip(looks, series, strict=False):
            if metric not in result["sizes"][str(sizes[0])]["median"]:
                continue
            xs, ys = [], []
            for n in sizes:
                entry = result["sizes"][str(n)]
                for value in entry["per_run"][metric]:
                    if value is not None:
                        ax.plot(n, value, "o", color=color, alpha=0.35, ms=5)
                        top = max(top, value)
                if entry["median"][metric] is not None:
                    xs.append(n)
                    ys.append(entry["median"][metric])
            ax.plot(xs, ys, style, color=color, label=label, lw=1.8)
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(
                    _label(y),
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, offset if y > top * 0.1 else abs(offset)),  # not under the axis
                    ha="center",
                    fontsize=8,
                    color=color,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("nodes in the zone (N)")
        ax.set_xticks(sizes)
        ax.set_ylim(0, max(top * 1.25, 1.0))  # room for the labels; an all-zero panel reads 0
        ax.yaxis.set_major_locator(MaxNLocator(integer=top >= 4))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    wait = result["params"]["zone_nodes_wait_s"]
    axes.flat[0].axhline(wait, color="gray", ls="--", lw=0.8, label=f"Zone.nodes' {wait:g} s wait")
    axes.flat[0].legend(fontsize=8, loc="best")
    machine = result["machine"]
    params = result["params"]
    steady = (
        f"; dashed: steady state, {params['steady_after_s']:g} s later"
        if params["steady_after_s"]
        else ""
    )
    where = "each zone in its own network namespace" if params["netns"] else "shared loopback"
    fig.suptitle(
        f"autonomy zone scale: 1 main + N-1 runners by `autonomy zone deploy`, one process each, "
        f"{where}; {machine['cores']} cores ({machine['cpu']}), Python {machine['python']}\n"
        f"{params['runs']} run(s) per N (dots: runs, lines: medians); idle window of "
        f"{params['idle_seconds']:g} s once the zone settled{steady}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)
