"""Reporting of the multi-model pool benchmark: the memory plot and the console tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def plot(phases: list[dict[str, Any]], path: Path) -> None:
    """Memory held against the budget over time, one panel per traffic phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(phases), 1, figsize=(10, 3.6 * len(phases)), squeeze=False)
    for ax, ph in zip(axes[:, 0], phases, strict=True):
        t = [s[0] for s in ph["series"]]
        mib = 1 / 2**20
        ax.plot(t, [s[1] * mib for s in ph["series"]], label="booked (resident + reserved)")
        ax.plot(t, [s[2] * mib for s in ph["series"]], label="resident (measured)", alpha=0.8)
        ax.plot(
            t, [s[3] * mib for s in ph["series"]], label="allocator in use, whole process",
            alpha=0.5, linewidth=0.8,
        )  # fmt: skip
        ax.axhline(ph["budget_bytes"] * mib, color="red", linestyle="--", label="budget")
        ax.set_title(f"{ph['label']}: memory held against the budget")
        ax.set_xlabel("seconds")
        ax.set_ylabel("MiB")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def phase_table(models: int, budget: int, phases: list[dict[str, Any]]) -> Table:
    """Hit ratio, loads, evictions and latencies of each traffic phase."""
    table = Table(title=f"multi-model pool: {models} models, budget {budget / 2**20:.1f} MiB")
    for col in ("store", "hit ratio", "loads", "evictions", "load p50/p99 ms",
                "cold req p50/p99 ms", "warm req p50 ms", "peak booked / budget", "errors"):  # fmt: skip
        table.add_column(col, justify="right")
    for ph in phases:
        table.add_row(
            ph["label"],
            f"{ph['hit_ratio']:.3f}",
            str(ph["loads"]),
            str(sum(ph["evictions"].values())),
            f"{ph['load_p50_ms']:.1f} / {ph['load_p99_ms']:.1f}",
            f"{ph['cold_request_p50_ms']:.1f} / {ph['cold_request_p99_ms']:.1f}",
            f"{ph['warm_request_p50_ms']:.3f}",
            f"{ph['peak_booked_bytes'] / budget:.3f}",
            str(ph["errors"]),
        )
    return table


def warm_table(warm: dict[str, Any]) -> Table:
    """Per-request cost of the warm model on each runner."""
    table = Table(
        title=f"warm per-request cost, model {warm['model']} ({warm['artifact_bytes']} B)"
    )
    for col in ("runner", "seq mean µs", "seq p50 µs", "seq p99 µs", "burst rows/s"):
        table.add_column(col, justify="right")
    for name in ("dedicated", "shared", "shared_threads"):
        w = warm[name]
        table.add_row(
            name,
            f"{w['seq_mean_us']:.1f}",
            f"{w['seq_p50_us']:.1f}",
            f"{w['seq_p99_us']:.1f}",
            f"{w['burst_rows_per_s']:.0f}",
        )
    return table


def print_report(
    console: Console,
    models: int,
    budget: int,
    phases: list[dict[str, Any]],
    warm: dict[str, Any],
) -> None:
    """Both tables and the shared pool's overheads over the dedicated runner."""
    console.print(phase_table(models, budget, phases))
    console.print(warm_table(warm))
    console.print(
        f"warm overhead over dedicated (median of rounds), shared: sequential "
        f"{warm['seq_mean_overhead']:+.1%}, burst {warm['burst_throughput_overhead']:+.1%}; "
        f"worker threads only: sequential {warm['seq_mean_overhead_threads']:+.1%}, burst "
        f"{warm['burst_throughput_overhead_threads']:+.1%}"
    )
