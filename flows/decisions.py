"""The decision-health report as a Prefect flow: the same report as
``servekit report decisions`` (docs/design.md's "when to reconsider" signals judged on a
running gateway, its Redis and its registry), written as HTML and JSON and published as a
markdown artifact ``decision-health`` that names where the HTML page is.

Run once: ``python -m flows.decisions [GATEWAY_URL]``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from monitoring.decision_model import DecisionReport
from monitoring.decision_report import render_markdown
from monitoring.decisions import collect_report, write_report
from services.settings import get_settings

ARTIFACT_KEY = "decision-health"


@task(cache_policy=NO_CACHE)
async def collect_decisions(
    url: str | None, window_s: float | None, redis_url: str | None
) -> DecisionReport:
    """Watch the gateway over the window and judge every signal."""
    return await collect_report(get_settings(), url=url, window_s=window_s, redis_url=redis_url)


@task(cache_policy=NO_CACHE)
def write_decisions(report: DecisionReport, out_dir: str) -> dict[str, Path]:
    """decisions.html and decisions.json in ``out_dir``."""
    return write_report(report, Path(out_dir))


@task(cache_policy=NO_CACHE)
async def publish_decisions(report: DecisionReport, html: Path) -> None:
    """The table as a markdown artifact, with the HTML page's location."""
    markdown = render_markdown(report) + f"\n\nHTML page: `{html.resolve()}`"
    await acreate_markdown_artifact(
        markdown, key=ARTIFACT_KEY, description=f"Decision health of {report.gateway}"
    )


@flow(name="decisions")
async def decision_health(
    url: str | None = None,
    window_s: float | None = None,
    out_dir: str = ".servekit/reports",
    redis_url: str | None = None,
) -> DecisionReport:
    """Judge every serving decision's signals on the gateway at ``url``.

    Args:
        url: the gateway (default: SERVEKIT_DECISIONS_URL).
        window_s: seconds to watch /metrics for rates (default: SERVEKIT_DECISIONS_WINDOW_S;
            0: one scrape).
        out_dir: where decisions.html and decisions.json are written.
        redis_url: the gateway's Redis (default: SERVEKIT_REDIS_URL).
    """
    report = await collect_decisions(url, window_s, redis_url)
    paths = write_decisions(report, out_dir)
    await publish_decisions(report, paths["html"])
    get_run_logger().info("decision health: %s; %s", report.counts(), paths["html"])
    return report


if __name__ == "__main__":
    asyncio.run(decision_health(sys.argv[1] if len(sys.argv) > 1 else None))
