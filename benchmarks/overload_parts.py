"""Parts of the overload benchmark (``benchmarks/overload.py``): what it samples around a
load (peak RSS, health afterwards) and what it makes of the results (verdicts, plot, table).
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

LOADS = (0.8, 3.0)


class PeakRss:
    """The highest RSS of a server's process tree, sampled every 0.2 s while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
            except psutil.Error:
                continue
            self.peak = max(self.peak, rss)


def health(url: str, body: bytes) -> dict[str, Any]:
    """Readiness and one probe's latency once the load has ended."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10) as r:
            ready = r.status
    except urllib.error.HTTPError as exc:
        ready = exc.code
    probes = []
    for _ in range(3):
        req = urllib.request.Request(f"{url}/predict", body, {"content-type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status = r.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        probes.append((status, time.perf_counter() - t0))
    return {
        "ready_status": ready,
        "probe_statuses": [s for s, _ in probes],
        "probe_ms": round(statistics.median(t for _, t in probes) * 1000, 2),
    }


def goodput_bound(served_ms: float, refusal_ms: float, load: float = 3.0) -> float:
    """The most goodput (share of capacity) at ``load`` x capacity when the server's CPU
    is what limits it: answering g and refusing the rest must fit the CPU that answering
    at capacity took, g s + (load - g) r <= s, so g <= (1 - load f) / (1 - f), f = r / s."""
    f = refusal_ms / served_ms
    return max(0.0, (1 - load * f) / (1 - f)) if f < 1 else 0.0


def targets(sides: dict[str, Any]) -> dict[str, Any]:
    """The goals, judged per side."""
    out = {}
    for side, runs in sides.items():
        lo, hi = runs["0.8x"], runs["3x"]
        out[side] = {
            "p99_3x_over_p99_80pct": round(hi["accepted_p99_ms"] / lo["accepted_p99_ms"], 2),
            "p99_within_2x": hi["accepted_p99_ms"] <= 2 * lo["accepted_p99_ms"],
            "goodput_3x_share": hi["goodput_share"],
            "goodput_ge_90pct": hi["goodput_share"] >= 0.9,
            "refusal_p99_ms": hi["refusal_p99_ms"],
            "refusals_le_50ms": hi["refusal_p99_ms"] is not None and hi["refusal_p99_ms"] <= 50,
        }
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(doc["models"])
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for col, model in enumerate(models):
        sides = doc["models"][model]["sides"]
        for row, (key, title) in enumerate(
            (("accepted_p99_ms", "accepted p99 (ms, log)"), ("goodput_share", "goodput / capacity"))
        ):
            ax = axes[row][col]
            width = 0.38
            for i, (side, runs) in enumerate(sides.items()):
                xs = [k + (i - 0.5) * width for k in range(len(LOADS))]
                ax.bar(xs, [runs[f"{load:g}x"][key] for load in LOADS], width, label=side)
            ax.set_xticks(range(len(LOADS)), [f"{load:g}x capacity" for load in LOADS])
            ax.set_title(f"{model}: {title}")
            if row == 0:
                ax.set_yscale("log")
            else:
                ax.axhline(0.9, ls="--", color="grey", label="90 % goal")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(console: Console, doc: dict[str, Any]) -> None:
    console.print(
        "\n| model | side | load | sent/s | accepted p50 ms | accepted p99 ms | goodput / "
        "capacity | refused | refusal p99 ms | peak RSS MiB | ready after |"
    )
    console.print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, m in doc["models"].items():
        for side, runs in m["sides"].items():
            for load, r in runs.items():
                console.print(
                    f"| {model} ({m['capacity_per_s']:.0f}/s) | {side} | {load} | "
                    f"{r['sent_per_s']:.0f} | {r['accepted_p50_ms']:.1f} | "
                    f"{r['accepted_p99_ms']:.1f} | {r['goodput_share']:.0%} | {r['refused']} | "
                    f"{r['refusal_p99_ms'] if r['refusal_p99_ms'] is not None else '–'} | "
                    f"{r['peak_rss_mib']:.0f} | {r['health_after']['ready_status']} |"
                )
