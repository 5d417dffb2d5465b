"""``servekit report``: reports on live traffic: drift against a version's reference, and
the decision health of the serving choices (``servekit report decisions``).

    servekit report drift fraud                      # the busiest version of the last hour
    servekit report drift fraud --version 2 --window 30m --out reports/fraud
    servekit report drift fraud --fail-on-drift      # exit 3 on drift (for CI and cron)

Exit codes: 0 the report was built; 1 an error (Redis, the registry, an unknown model);
2 a usage error; 3 drift detected (with ``--fail-on-drift``); 4 nothing to compare: no
logged traffic in the window, too little of it, or no reference sample for the version.
Drift reports need the ``monitoring`` extra (Evidently).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import redis.asyncio as aioredis
import typer
from rich.table import Table

from flows.cli.common import Model, check_version, console, err_console, run_redis
from flows.cli.report_decisions import decisions
from monitoring.drift import DriftReport, DriftResult, build_report, load_reference
from monitoring.drift_store import write_report
from monitoring.traffic import WindowTraffic, read_window, window_bounds
from services.errors import ServekitError
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry, ModelVersion
from services.rollout.prediction_log import PredictionLog
from services.settings import get_settings, parse_duration

EXIT_DRIFT = 3
EXIT_NOTHING_TO_COMPARE = 4

report_app = typer.Typer(
    help="Reports on live traffic: drift against each version's reference; decision health."
)
report_app.command("decisions")(decisions)


def _window_seconds(window: str | None) -> float:
    try:
        return parse_duration(window or get_settings().monitoring.window)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--window") from exc


def _version(registry: ModelRegistry, model: str, version: str | None) -> ModelVersion | None:
    """The asked version; without one, the model must exist (a clear error if not)."""
    try:
        if version is not None:
            return registry.get(model, version)
        registry.get(model)
    except ServekitError as exc:
        err_console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from exc
    return None


def _print_result(result: DriftResult) -> None:
    table = Table(title=f"drift of {result.model} v{result.version}")
    for column in ("column", "role", "method", "score", "threshold", "drifted"):
        table.add_column(column, justify="right" if column in ("score", "threshold") else "left")
    for name, c in result.columns.items():
        table.add_row(
            name,
            c.role,
            c.method,
            f"{c.score:.4g}",
            f"{c.threshold:g}",
            "[red]yes[/]" if c.drifted else "no",
        )
    if result.columns:
        console.print(table)
    share = "-" if result.drifted_share is None else f"{result.drifted_share:.0%}"
    console.print(
        f"{result.current_rows} rows in the window against {result.reference_rows} reference "
        f"rows; drifted share {share} (drift at {result.drift_share:.0%})"
    )
    for note in result.notes:
        console.print(f"note: {note}")


@report_app.command("drift")
def drift(
    model: Model,
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            "-v",
            help="Default: the version that served most rows in the window.",
            callback=check_version,
        ),
    ] = None,
    window: Annotated[
        str | None,
        typer.Option("--window", "-w", help="Recent traffic to read: 1h, 30m, 2d or seconds."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for drift.html and drift.json.")
    ] = Path("."),
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help=f"Exit {EXIT_DRIFT} when drift is detected.")
    ] = False,
) -> None:
    """Drift of a version's live traffic against its reference sample (Evidently)."""
    settings = get_settings()
    window_s = _window_seconds(window)
    registry = ModelRegistry(open_store(settings.serving))
    mv = _version(registry, model, version)
    start, end = window_bounds(window_s)
    traffic = _read(model, start, end)
    if mv is None:
        served = traffic.served()
        if not served:
            err_console.print(f"[red]no traffic:[/] nothing of {model} was logged in the window")
            raise typer.Exit(EXIT_NOTHING_TO_COMPARE)
        mv = registry.get(model, served[0])
    report = build_report(
        mv,
        load_reference(registry, mv),
        traffic.versions.get(mv.version),
        start=start,
        end=end,
        settings=settings.monitoring,
    )
    _finish(report, out, fail_on_drift)


def _read(model: str, start: float, end: float) -> WindowTraffic:
    """The model's logged traffic in the window, from the configured Redis."""
    settings = get_settings()

    async def read(client: aioredis.Redis) -> WindowTraffic:
        return await read_window(
            PredictionLog(client),
            model,
            start,
            end,
            max_rows=settings.monitoring.max_rows,
            stream_maxlen=settings.redis.stream_maxlen,
        )

    return run_redis(read)


def _finish(report: DriftReport, out: Path, fail_on_drift: bool) -> None:
    """Write the files, print the table and the verdict, and exit with its code."""
    written = write_report(report, out)
    result = report.result
    _print_result(result)
    console.print("wrote " + ", ".join(str(p) for p in written))
    if result.status != "ok":
        err_console.print(f"[red]{result.status.replace('_', ' ')}:[/] {result.message}")
        raise typer.Exit(EXIT_NOTHING_TO_COMPARE)
    console.print(("[red]" if result.drift_detected else "[green]") + result.message)
    if result.drift_detected and fail_on_drift:
        raise typer.Exit(EXIT_DRIFT)
