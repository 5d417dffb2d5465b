"""The whole report: every decision evaluated in order, rendered as HTML, JSON and
markdown, and the ``servekit report decisions`` command against a stub gateway."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flows.cli.report_decisions import decisions, parse_duration
from monitoring.decision_model import DECISIONS, Evidence, RolloutFacts, Verdict, ViewFacts
from monitoring.decision_report import render_html, render_markdown
from monitoring.decisions import evaluate, write_report
from services.settings import DecisionSettings, RedisSettings, Settings
from tests.monitoring.samples import (
    exposition,
    histogram,
    model_entry,
    sample,
    scrape,
    stub_gateway,
)

LAT = "servekit_request_latency_seconds"


def _evidence() -> Evidence:
    def at(requests: int, hits: int) -> list:
        return [
            sample("servekit_model_requests_total", requests, model="fraud", version="1"),
            *histogram(LAT, [0.002] * requests, model="fraud", version="1", route="predict"),
            sample("servekit_cache_hits_total", hits, model="fraud"),
            sample("servekit_cache_misses_total", requests - hits, model="fraud"),
            sample("servekit_assignments_total", requests, model="fraud", unit="request"),
        ]

    return Evidence(
        scrapes=[scrape(1000.0, at(0, 0)), scrape(1060.0, at(600, 3))],
        models=[model_entry("fraud")],
        rollouts=[RolloutFacts("fraud", "off", "1", None, 0.0)],
        views=[ViewFacts("user_stats", "batch", 3600.0, 100.0)],
        now=1060.0,
    )


def test_every_decision_has_rows_in_the_designs_order() -> None:
    report = evaluate(_evidence(), Settings(), "http://gw")
    order = list(dict.fromkeys(r.decision for r in report.rows))
    assert order == list(DECISIONS)
    verdicts = {(r.decision, r.signal): r.verdict for r in report.rows}
    assert verdicts[("cache", "hit rate")] is Verdict.RECONSIDER  # 0.5 %
    assert verdicts[("hashing", "anonymous share (no user_id)")] is Verdict.RECONSIDER
    assert verdicts[("batching", "request p99 vs target")] is Verdict.FINE
    assert sum(report.counts().values()) == len(report.rows)
    assert "60 s" in report.window


def test_outputs_html_json_and_markdown(tmp_path: Path) -> None:
    report = evaluate(_evidence(), Settings(), "http://gw")
    report.problems.append("Redis <down>")
    paths = write_report(report, tmp_path / "out")
    html = paths["html"].read_text()
    assert html.count("<tr") == len(report.rows) + 1
    assert 'class="verdict reconsider"' in html and "Redis &lt;down&gt;" in html
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == len(report.rows) and data["gateway"] == "http://gw"
    assert all(r["measured"] is None or math.isfinite(r["measured"]) for r in data["rows"])
    assert {r["verdict"] for r in data["rows"]} <= {v.value for v in Verdict}
    markdown = render_markdown(report)
    assert markdown.count("\n| ") == len(report.rows) + 1 and "**reconsider**" in markdown
    assert render_html(report).startswith("<!doctype html>")


@pytest.mark.parametrize(
    ("text", "seconds"), [("60s", 60.0), ("2m", 120.0), ("500ms", 0.5), ("1h", 3600.0), ("0", 0.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_refuses_nonsense() -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration("soon")


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(decisions)
    return app


def test_the_command_writes_the_report_and_prints_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    settings = Settings(decisions=DecisionSettings(probes=5), redis=RedisSettings(url=redis_url))
    monkeypatch.setattr("flows.cli.report_decisions.get_settings", lambda: settings)
    traffic = [sample("servekit_model_requests_total", 40, model="fraud", version="1")]
    with stub_gateway([exposition(traffic)], [model_entry("fraud")]) as url:
        result = CliRunner().invoke(_app(), ["--url", url, "--window", "0", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "decisions.html").exists() and (tmp_path / "decisions.json").exists()
    assert "decision health" in result.output and "Adaptive" in result.output
    assert "not enough data" in result.output


def test_the_command_fails_cleanly_without_a_gateway(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["--url", "http://127.0.0.1:9", "--window", "0", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1 and "does not answer" in result.output
