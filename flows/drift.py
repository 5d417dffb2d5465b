"""Drift reports of the served model versions, hourly.

For each model (or the one asked for), the flow reads the window of logged traffic from
the prediction stream, and for each version that served in it (or the one asked for)
builds the Evidently drift report against the version's reference sample
(``monitoring.drift``), saves its HTML and JSON to the reports location
(``SERVEKIT_MONITORING_REPORTS``), publishes a markdown table (column, method, score,
threshold, drifted) and a link to the report, and exports the verdict to Redis, where
every gateway's ``/metrics`` picks it up (``servekit_drift_share``,
``servekit_drift_detected``, ``servekit_drift_column_score``,
``servekit_drift_report_age_seconds``).

A version without a reference sample, or with too little traffic, gets a report that
says so; the run still succeeds. Deployed hourly from ``prefect.yaml``; run once:
``python -m flows.drift [MODEL] [WINDOW]``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_link_artifact, acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key
from flows.rollout_tasks import REDIS_RETRIES
from monitoring.drift import DriftReport, DriftResult, build_report, load_reference
from monitoring.drift_metrics import DriftSummary, export_summary
from monitoring.drift_store import HTML_FILE, JSON_FILE, reports_store, save_report
from monitoring.reference import ReferenceSample
from monitoring.traffic import VersionTraffic, WindowTraffic, read_window, window_bounds
from services.errors import StoreError
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry, ModelVersion
from services.rollout.prediction_log import PredictionLog
from services.settings import get_settings, parse_duration
from services.state.redis_clients import connect
from services.state.redis_embedded import resolve_redis_url


def retry_on_store(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry store and network failures, not an unknown
    model or version."""
    return isinstance(getattr(state, "data", None), (StoreError, OSError))


STORE_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [1, 5, 15],
    "retry_condition_fn": retry_on_store,
    "cache_policy": NO_CACHE,
}
"""Task options of the tasks that read the registry or write the reports location."""


def registry() -> ModelRegistry:
    """The configured model registry."""
    return ModelRegistry(open_store(get_settings().serving))


@task(**STORE_RETRIES)
def list_models() -> list[str]:
    """Every registered model."""
    return registry().list_models()


@task(**REDIS_RETRIES)
async def read_traffic(model: str, start: float, end: float, redis_url: str) -> WindowTraffic:
    """``model``'s logged traffic in ``[start, end]``, by version."""
    async with connect(redis_url) as client:
        settings = get_settings()
        traffic = await read_window(
            PredictionLog(client),
            model,
            start,
            end,
            max_rows=settings.monitoring.max_rows,
            stream_maxlen=settings.redis.stream_maxlen,
        )
    served = ", ".join(f"v{v} ({traffic.versions[v].rows} rows)" for v in traffic.served())
    get_run_logger().info("%s served %s in the window", model, served or "nothing")
    return traffic


@task(**STORE_RETRIES)
def load_version(model: str, version: str) -> tuple[ModelVersion, ReferenceSample | None]:
    """A version's metadata and its reference sample (None when it has none)."""
    reg = registry()
    mv = reg.get(model, version)
    return mv, load_reference(reg, mv)


@task(cache_policy=NO_CACHE)
def build_drift_report(
    mv: ModelVersion,
    reference: ReferenceSample | None,
    traffic: VersionTraffic | None,
    start: float,
    end: float,
) -> DriftReport:
    """The Evidently report of one version's window against its reference."""
    report = build_report(
        mv, reference, traffic, start=start, end=end, settings=get_settings().monitoring
    )
    get_run_logger().info(report.result.message)
    return report


@task(**STORE_RETRIES)
def save(report: DriftReport) -> str:
    """Write the report's HTML and JSON to the reports location; returns where."""
    settings = get_settings()
    location = save_report(report, reports_store(settings.monitoring, settings.serving))
    get_run_logger().info("report of %s v%s saved to %s", report.result.model,
                          report.result.version, location)  # fmt: skip
    return location


@task(**REDIS_RETRIES)
async def export(result: DriftResult, redis_url: str) -> None:
    """Publish the verdict for the gateways' ``/metrics`` (only a report that compared)."""
    async with connect(redis_url) as client:
        dropped = await export_summary(
            client, DriftSummary.of(result), ttl_s=get_settings().monitoring.result_ttl_s
        )
    if dropped:
        get_run_logger().info("dropped %d stale drift results", dropped)


def drift_markdown(result: DriftResult) -> str:
    """One report's verdict as a markdown table: column, method, score, threshold, drifted."""
    share = "-" if result.drifted_share is None else f"{result.drifted_share:.0%}"
    lines = [
        f"# Drift of {result.model} version {result.version}: {result.status}",
        "",
        result.message,
        "",
        f"Window: {result.window_end - result.window_start:.0f} s; current rows "
        f"{result.current_rows}, reference rows {result.reference_rows}; drifted share "
        f"{share} (drift at {result.drift_share:.0%}).",
    ]
    if result.columns:
        lines += ["", "| column | role | method | score | threshold | drifted |"]
        lines.append("|---|---|---|---:|---:|---|")
        lines += [
            f"| {name} | {c.role} | {c.method} | {c.score:.4g} | {c.threshold:g} "
            f"| {'**yes**' if c.drifted else 'no'} |"
            for name, c in result.columns.items()
        ]
    lines += [f"- {note}" for note in result.notes]
    if result.location:
        lines += ["", f"Report: `{result.location}`"]
    return "\n".join(lines)


def _link(location: str, html: bool) -> str:
    target = f"{location.rstrip('/')}/{HTML_FILE if html else JSON_FILE}"
    return target if "://" in target else Path(target).resolve().as_uri()


@task(cache_policy=NO_CACHE)
async def publish(report: DriftReport) -> None:
    """The report's markdown table and a link to it, as Prefect artifacts."""
    result = report.result
    key = artifact_key("drift", f"{result.model}-v{result.version}")
    await acreate_markdown_artifact(
        drift_markdown(result), key=key, description=f"Drift of {result.model} v{result.version}"
    )
    if result.location:
        await acreate_link_artifact(
            _link(result.location, report.html is not None),
            link_text=f"drift report of {result.model} v{result.version}",
            key=f"{key}-report",
            description="The saved drift report (HTML when built, else its JSON)",
        )


async def _report_model(
    model: str, version: str | None, start: float, end: float, url: str
) -> list[DriftResult]:
    traffic = await read_traffic(model, start, end, url)
    versions = [version] if version is not None else traffic.served()
    results = []
    for v in versions:
        mv, reference = load_version(model, v)
        report = build_drift_report(mv, reference, traffic.versions.get(v), start, end)
        report.result.location = save(report)
        if report.result.status == "ok":
            await export(report.result, url)
        await publish(report)
        results.append(report.result)
    return results


@flow(name="drift-report")
async def drift_report(
    model: str | int | None = None,
    version: str | int | None = None,
    window: str | float | None = None,
    redis_url: str | None = None,
) -> list[dict[str, Any]]:
    """Drift reports of the versions that served in the window.

    Args:
        model: the model to report on (default: every registered model).
        version: the version to report on (default: every version that served in the
            window); with no traffic, its report says so.
        window: how much recent traffic to read: 1h, 30m, 2d, or seconds (default:
            SERVEKIT_MONITORING_WINDOW, 1h).
        redis_url: the Redis holding the prediction stream (default: settings).

    Numbers are accepted where names are expected (``-p version=2`` arrives as an int).
    """
    if version is not None and model is None:
        raise ValueError("a version needs its model")
    window_s = parse_duration(window if window is not None else get_settings().monitoring.window)
    start, end = window_bounds(window_s)
    url = resolve_redis_url(redis_url)
    models = [str(model)] if model is not None else list_models()
    results: list[DriftResult] = []
    for name in models:
        results += await _report_model(name, None if version is None else str(version),
                                       start, end, url)  # fmt: skip
    logger = get_run_logger()
    for r in results:
        logger.info("%s v%s: %s", r.model, r.version, r.message)
    if not results:
        logger.info("no traffic in the last %.0f s of %s", window_s, ", ".join(models) or "-")
    return [r.to_dict() for r in results]


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        drift_report(model=args[0] if args else None, window=args[1] if len(args) > 1 else None)
    )
