"""``servekit experiment``: the analysis of an A/B test or canary from its counters."""

from __future__ import annotations

import math
from typing import Annotated

import redis.asyncio as aioredis
import typer
from rich.table import Table

from flows.cli.common import Model, console, run_redis
from services.rollout.feedback import FeedbackStore
from services.rollout.state import RolloutStore
from services.rollout.statistics import ExperimentReport
from services.settings import get_settings

experiment_app = typer.Typer(help="A/B and canary experiment analysis.")


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _print_report(report: ExperimentReport, percent: float | None) -> None:
    table = Table(title=f"experiment {report.experiment_id} of {report.model}")
    columns = ["variant", "version", "predictions", "errors", "error rate", "outcomes"]
    columns += ["conversions", "conv. rate", "p50 ms", "p95 ms", "p99 ms"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "version") else "right")
    for v in report.variants.values():
        table.add_row(
            v.variant,
            v.version or "-",
            str(v.predictions),
            str(v.errors),
            _fmt(v.error_rate, ".2%"),
            str(v.outcomes),
            str(v.conversions),
            _fmt(v.conversion_rate, ".2%"),
            _fmt(v.latency.p50_ms, ".1f"),
            _fmt(v.latency.p95_ms, ".1f"),
            _fmt(v.latency.p99_ms, ".1f"),
        )
    console.print(table)
    if report.srm is None:
        console.print("SRM check: skipped (split unknown; pass --percent)")
    else:
        verdict = "[red]MISMATCH[/]" if report.srm.mismatch else "ok"
        console.print(
            f"SRM check vs {100 - (percent or 0):g}/{percent:g}: {verdict} "
            f"(chi2 {report.srm.chi2:.2f}, p {report.srm.p_value:.2g})"
        )
    if report.conversion_test is not None:
        z = report.conversion_test
        console.print(
            f"conversion z-test: diff {z.diff:+.4f} [{z.ci_low:+.4f}, {z.ci_high:+.4f}], "
            f"p {z.p_value:.3g} (valid for one look only)"
        )
    if report.sequential is not None:
        s = report.sequential
        console.print(
            f"mSPRT: [bold]{s.decision}[/] (always-valid p {s.p_value:.3g}, "
            f"diff {s.diff:+.4f} [{s.ci_low:+.4f}, {s.ci_high:+.4f}])"
        )


@experiment_app.command("report")
def experiment_report(
    model: Model,
    experiment_id: Annotated[
        str | None, typer.Option("--experiment-id", "-e", help="Default: the newest.")
    ] = None,
    percent: Annotated[
        float | None,
        typer.Option(
            "--percent",
            "-p",
            help="The candidate's configured share, for the SRM check (default: the running "
            "A/B test's).",
        ),
    ] = None,
) -> None:
    """Per-variant counts, rates and latencies, SRM check and tests of an experiment."""
    settings = get_settings().rollout

    async def run(client: aioredis.Redis) -> tuple[ExperimentReport, float | None]:
        feedback = FeedbackStore(client)
        share = percent
        experiment = experiment_id or next(iter(await feedback.experiments(model)), None)
        if share is None and experiment is not None:
            state = await RolloutStore(client).find(model)
            # Only an A/B test keeps its split for its whole life; a canary's moves.
            if state is not None and state.mode == "ab" and state.experiment_id == experiment:
                share = state.percent
        report = await feedback.report(
            model,
            experiment,
            candidate_percent=share,
            alpha=settings.alpha,
            tau2=settings.msprt_tau2,
        )
        return report, share

    report, share = run_redis(run)
    _print_report(report, share)
