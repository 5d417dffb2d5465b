"""The decision-health report: every "when to reconsider" signal of docs/design.md,
evaluated on live data from a running gateway, its Redis and its model registry.

    report = await collect_report(get_settings(), url="http://127.0.0.1:3000", window_s=60)
    paths = write_report(report, Path("reports"))   # decisions.html, decisions.json

``evaluate`` is pure (evidence in, rows out); ``monitoring.decision_evidence`` collects
the evidence and ``monitoring.decision_report`` renders it. Rates come from two or more
scrapes of ``/metrics`` over a window (counter increase / seconds); a report over one
scrape judges totals since the gateway started and says "not enough data" for every rate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monitoring.decision_evidence import gather
from monitoring.decision_format import format_rows
from monitoring.decision_model import DECISIONS, DecisionReport, Evidence, Row
from monitoring.decision_report import render_html
from monitoring.decision_rollout import hashing_rows, rollout_rows
from monitoring.decision_serving import autoscaling_rows, batching_rows, pool_rows
from monitoring.decision_state import cache_rows, feature_rows
from services.settings import Settings

logger = logging.getLogger(__name__)


def evaluate(ev: Evidence, settings: Settings, gateway: str = "") -> DecisionReport:
    """Every decision's rows, in the order of docs/design.md."""
    s = settings.decisions
    groups = {
        "batching": batching_rows(ev, s),
        "pools": pool_rows(ev, s),
        "cache": cache_rows(ev, s),
        "hashing": hashing_rows(ev, s),
        "features": feature_rows(ev, s),
        "format": format_rows(ev),
        "autoscaling": autoscaling_rows(ev, s),
        "rollouts": rollout_rows(ev, s, settings.rollout),
    }
    rows: list[Row] = [row for key in DECISIONS for row in groups[key]]
    return DecisionReport(
        gateway=gateway,
        generated_at=ev.now,
        window=ev.window.describe(),
        rows=rows,
        problems=list(ev.problems),
    )


async def collect_report(
    settings: Settings,
    *,
    url: str | None = None,
    window_s: float | None = None,
    redis_url: str | None = None,
) -> DecisionReport:
    """Collect the evidence (over ``window_s`` seconds) and evaluate it.

    Raises:
        UnavailableError: the gateway does not answer.
    """
    gateway = url or settings.decisions.url
    ev = await gather(settings, url=gateway, window_s=window_s, redis_url=redis_url)
    report = evaluate(ev, settings, gateway)
    logger.info("decision report of %s: %s", gateway, report.counts())
    return report


def write_report(report: DecisionReport, out_dir: Path) -> dict[str, Path]:
    """``decisions.html`` and ``decisions.json`` in ``out_dir`` (created); their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html, data = out_dir / "decisions.html", out_dir / "decisions.json"
    html.write_text(render_html(report), encoding="utf-8")
    data.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return {"html": html, "json": data}
