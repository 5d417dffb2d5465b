"""The decision-health flow: the report against a stub gateway and the real Redis, written
as HTML and JSON and published as a markdown artifact under Prefect's harness."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.decisions import ARTIFACT_KEY, decision_health
from monitoring.decision_model import DECISIONS
from tests.monitoring.samples import exposition, histogram, model_entry, sample, stub_gateway


async def _artifact(key: str) -> str:
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert artifacts, f"no artifact {key}"
    return str(artifacts[0].data)


async def test_the_flow_writes_the_report_and_publishes_the_table(
    redis_url: str, tmp_path: Path
) -> None:
    def at(requests: int) -> str:
        return exposition(
            [
                sample("servekit_model_requests_total", requests, model="fraud", version="1"),
                *histogram(
                    "servekit_request_latency_seconds",
                    [0.002] * requests,
                    model="fraud",
                    version="1",
                    route="predict",
                ),
            ]
        )

    with stub_gateway([at(0), at(100)], [model_entry("fraud")]) as url:
        report = await decision_health(
            url=url, window_s=0.5, out_dir=str(tmp_path), redis_url=redis_url
        )
    assert list(dict.fromkeys(r.decision for r in report.rows)) == list(DECISIONS)
    arrivals = next(r for r in report.rows if r.signal == "arrival rate vs batching window")
    assert arrivals.measured is not None and arrivals.measured > 0
    data = json.loads((tmp_path / "decisions.json").read_text())
    assert len(data["rows"]) == len(report.rows)
    markdown = await _artifact(ARTIFACT_KEY)
    assert "| Adaptive batching | arrival rate vs batching window | fraud |" in markdown
    assert str((tmp_path / "decisions.html").resolve()) in markdown
