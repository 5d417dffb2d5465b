"""The serving benchmark's report: the console table, the README's markdown table and the
plot (``benchmarks/serving.py`` measures)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.common import LoadResult


def _hits(r: LoadResult) -> str:
    """Cache hits of the side's runs ("-": the side has no servekit cache counters)."""
    if "cache_hits" not in r.extra:
        return "-"
    return str(r.extra["cache_hits"])


def print_table(console: Console, results: list[LoadResult], model: str) -> None:
    """The results as a console table."""
    table = Table(title=f"{model} via /predict (1 input per request)")
    for col in ("side", "conc.", "req/s", "p50 ms", "p99 ms", "errors", "server CPU ms/req",
                "mean batch", "cache hits", "req/s vs lean"):  # fmt: skip
        table.add_column(col)
    for r in results:
        unit = r.extra.get("unit")
        table.add_row(
            r.label,
            str(r.concurrency) if not unit else "-",
            f"{r.throughput:,.0f}" + (" rows/s" if unit else ""),
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(sum(r.errors.values())) if r.errors else "0",
            f"{r.server_cpu_ms_per_req:.3f}" if r.server_cpu_ms_per_req is not None else "-",
            f"{r.mean_batch_rows:.1f}" if r.mean_batch_rows is not None else "-",
            _hits(r),
            f"{r.extra['vs_baseline']:.3f}" if "vs_baseline" in r.extra else "-",
        )
    console.print(table)


def print_markdown(results: list[LoadResult], baseline: str) -> None:
    """The README table."""
    print(
        "\n| side | concurrency | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        f"| mean batch | cache hits | req/s vs {baseline} |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        unit = r.extra.get("unit")
        print(
            f"| {r.label} | {'-' if unit else r.concurrency} "
            f"| {r.throughput:,.0f}{' rows/s' if unit else ''} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {sum(r.errors.values())} "
            f"| {r.server_cpu_ms_per_req if r.server_cpu_ms_per_req is not None else '-'} "
            f"| {r.mean_batch_rows if r.mean_batch_rows is not None else '-'} "
            f"| {'-' if unit else _hits(r)} | {r.extra.get('vs_baseline', '-')} |"
        )


def plot(results: list[LoadResult], path: Path) -> None:
    """Throughput and p99 against concurrency, one line per side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in dict.fromkeys(r.label for r in results if not r.extra.get("unit")):
        rs = [r for r in results if r.label == label]
        xs = [r.concurrency for r in rs]
        ax1.plot(xs, [r.throughput for r in rs], marker="o", label=label)
        ax2.plot(xs, [r.p99_ms for r in rs], marker="o", label=label)
    ax1.set(xscale="log", xlabel="concurrency", ylabel="requests/s", title="throughput")
    ax2.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="p99 ms", title="p99 latency")
    for ax in (ax1, ax2):
        ticks = sorted({r.concurrency for r in results if not r.extra.get("unit")})
        ax.set_xticks(ticks, labels=[str(t) for t in ticks])
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
