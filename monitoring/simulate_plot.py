"""The simulator's figure: traffic, then per policy replicas, GPU utilization and p99."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"gpu-only": "tab:red", "request-rate-only": "tab:blue", "combined": "tab:green"}


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Draw ``simulate``'s result into a PNG at ``path`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = result["minutes"]
    hours = [m / 60 for m in range(len(minutes["request_rate"]))]
    fig, axes = plt.subplots(4, 1, figsize=(13, 13), sharex=True)
    axes[0].plot(hours, minutes["request_rate"], color="black", lw=1, label="requests/s")
    axes[0].plot(hours, minutes["inference_rate"], color="gray", lw=1, label="inferences/s")
    axes[0].set_ylabel("load")
    axes[0].legend(loc="upper left")
    options = result["options"]
    slo = options["slo_p99_ms"]
    for i, (name, run) in enumerate(result["policies"].items()):
        series, color = run["minutes"], COLORS.get(name)
        s = run["summary"]
        label = f"{name}: {s['slo_minutes_breached']} min over SLO, {s['replica_hours']} replica-h"
        axes[1].plot(hours, series["replicas"], color=color, lw=1.2, label=label)
        axes[2].plot(hours, series["gpu_utilization_percent"], color=color, lw=0.8, label=name)
        p99 = [v if v is not None else float("nan") for v in series["p99_ms"]]
        axes[3].plot(hours, p99, color=color, lw=0.8, label=name)
        breached = [h for h, b in zip(hours, series["breached"], strict=True) if b]
        tick_y = slo * (0.12 + 0.06 * i)  # one row of ticks per policy, under the curves
        axes[3].scatter(breached, [tick_y] * len(breached), color=color, marker="|", s=60)
    axes[1].set_ylabel("replicas")
    axes[1].legend(loc="upper left")
    target = result["policy"]["target_percent"]
    axes[2].axhline(target, color="black", ls="--", lw=0.8, label=f"target {target:g} %")
    axes[2].set_ylabel("GPU utilization %")
    axes[2].set_ylim(0, 105)
    axes[2].legend(loc="lower right")
    axes[3].axhline(slo, color="black", ls="--", lw=0.8, label=f"SLO p99 {slo:g} ms")
    axes[3].set_yscale("log")
    axes[3].set_ylabel("estimated p99 ms (ticks: breached minutes)")
    axes[3].set_xlabel("hour of day")
    axes[3].legend(loc="upper left")
    fig.suptitle(
        f"servekit autoscaling, {result['trace']} trace: capacity "
        f"{options['replica_capacity']:g} rows/s per replica, cache hits "
        f"{options['cache_hit_rate']:.0%}, cold start {options['cold_start_s']:g} s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
