"""``servekit autoscale``: replay a day of traffic through the autoscaling policies.

    servekit autoscale simulate --trace spike --out /tmp/sim

compares GPU-only, request-rate-only and combined scaling on SLO minutes breached and
replica-hours, and writes ``autoscale.json`` and ``autoscale.png`` into ``--out``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from flows.cli.common import console, err_console
from monitoring.autoscale import PolicySpec
from monitoring.simulate import POLICIES, SimOptions, Trace, simulate

autoscale_app = typer.Typer(help="Autoscaling: replay traffic through the scaling policies.")

_D = SimOptions()
_P = PolicySpec()
TraceOpt = Annotated[
    Trace,
    typer.Option(
        "--trace",
        help="diurnal: smooth day, 10x peak to trough. spike: the same plus a sudden 5x "
        "spike for 30 minutes at 11:00.",
    ),
]
Out = Annotated[Path, typer.Option("--out", help="Folder for autoscale.json and autoscale.png.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the trace's noise.")]
Hours = Annotated[float, typer.Option("--hours", min=0.25, help="Length of the trace.")]
PeakRps = Annotated[float, typer.Option("--peak-rps", min=1, help="Requests/s at the peak.")]
Capacity = Annotated[
    float,
    typer.Option(
        "--capacity",
        min=1,
        help="Rows/s one replica infers at saturation (measure it on the serving GPU).",
    ),
]
HitRate = Annotated[
    float, typer.Option("--cache-hit-rate", min=0, max=0.99, help="Share of cache hits.")
]
CostSwing = Annotated[
    float,
    typer.Option(
        "--cost-swing",
        min=0,
        max=0.9,
        help="How much the work per request swings over the day (0: constant).",
    ),
]
ColdStart = Annotated[
    float, typer.Option("--cold-start-s", min=0, help="Seconds a new replica serves nothing.")
]
Slo = Annotated[float, typer.Option("--slo-ms", min=1, help="p99 target of the SLO.")]
Target = Annotated[
    float, typer.Option("--target-percent", min=1, max=100, help="GPU utilization target.")
]
Concurrency = Annotated[
    float, typer.Option("--concurrency-target", min=0.1, help="In-flight requests per replica.")
]
MaxReplicas = Annotated[int, typer.Option("--max-replicas", min=1, help="Most replicas.")]


@autoscale_app.command("simulate")
def simulate_cmd(
    out: Out,
    trace: TraceOpt = _D.trace,
    seed: Seed = _D.seed,
    hours: Hours = _D.hours,
    peak_rps: PeakRps = _D.peak_rps,
    capacity: Capacity = _D.replica_capacity,
    cache_hit_rate: HitRate = _D.cache_hit_rate,
    cost_swing: CostSwing = _D.cost_swing,
    cold_start_s: ColdStart = _D.cold_start_s,
    slo_ms: Slo = _D.slo_p99_ms,
    target_percent: Target = _P.target_percent,
    concurrency_target: Concurrency = _P.concurrency_target,
    max_replicas: MaxReplicas = _P.max_replicas,
) -> None:
    """Replay a day through GPU-only, request-rate-only and combined scaling."""
    opts = SimOptions(
        trace=trace,
        seed=seed,
        hours=hours,
        peak_rps=peak_rps,
        replica_capacity=capacity,
        cache_hit_rate=cache_hit_rate,
        cost_swing=cost_swing,
        cold_start_s=cold_start_s,
        slo_p99_ms=slo_ms,
    )
    spec = PolicySpec(
        target_percent=target_percent,
        concurrency_target=concurrency_target,
        replica_capacity=capacity,
        max_replicas=max_replicas,
    )
    result = _run(opts, spec)
    out.mkdir(parents=True, exist_ok=True)
    (out / "autoscale.json").write_text(json.dumps(result, indent=1) + "\n")
    _print_table(result)
    _plot(result, out / "autoscale.png")
    console.print(f"wrote {out / 'autoscale.json'}")


def _run(opts: SimOptions, spec: PolicySpec) -> dict[str, Any]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(f"{opts.trace}: simulating", total=opts.steps * len(POLICIES))
        return simulate(opts, spec, on_step=lambda: progress.advance(task))


def _plot(result: dict[str, Any], path: Path) -> None:
    from monitoring.simulate_plot import write_plot

    try:
        write_plot(result, path)
    except ImportError as exc:  # matplotlib is a dev extra, not a serving dependency
        err_console.print(f"[yellow]no plot:[/] {exc} (pip install matplotlib)")
        return
    console.print(f"wrote {path}")


def _print_table(result: dict[str, Any]) -> None:
    o = result["options"]
    title = (
        f"{result['trace']} trace, {o['hours']:g} h: SLO p99 {o['slo_p99_ms']:g} ms, capacity "
        f"{o['replica_capacity']:g} rows/s/replica, cache hits {o['cache_hit_rate']:.0%}, "
        f"cold start {o['cold_start_s']:g} s"
    )
    table = Table(title=title)
    columns = ["policy", "SLO min breached", "replica-hours", "peak replicas", "worst p99 ms"]
    columns += ["shed requests", "mean GPU %", "scale events", "decisions by signal"]
    for column in columns:
        table.add_column(column, justify="left" if column in (columns[0], columns[-1]) else "right")
    for name, run in result["policies"].items():
        s = run["summary"]
        signals = ", ".join(f"{k} {v}" for k, v in s["decisions_by_signal"].items())
        table.add_row(
            name,
            str(s["slo_minutes_breached"]),
            f"{s['replica_hours']:.1f}",
            str(s["peak_replicas"]),
            "-" if s["worst_p99_ms"] is None else f"{s['worst_p99_ms']:,.0f}",
            f"{s['shed_requests']:,}",
            f"{s['mean_gpu_utilization_percent']:.1f}",
            str(s["scale_events"]),
            signals,
        )
    console.print(table)
