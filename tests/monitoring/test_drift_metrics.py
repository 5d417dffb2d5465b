"""Drift results through Redis onto /metrics: export, lifetime, the background collector."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.drift import ColumnDrift, DriftResult
from monitoring.drift_metrics import DriftCollector, DriftSummary, export_summary, read_summaries
from services.settings import MonitoringSettings
from services.state.keys import drift_field, drift_results_key
from tests.conftest import free_port


def _result(model: str = "fraud", version: str = "1", created: float = 1000.0) -> DriftResult:
    return DriftResult(
        model=model,
        version=version,
        kind="tabular",
        status="ok",
        message="drift",
        window_start=0.0,
        window_end=3600.0,
        reference_rows=5000,
        current_rows=2000,
        drift_share=0.1,
        drifted_share=2 / 7,
        drift_detected=True,
        columns={
            "amount": ColumnDrift(
                "Wasserstein distance (normed)", 3.2, 0.1, True, "feature", "num"
            ),
            "channel": ColumnDrift("Jensen-Shannon distance", 0.01, 0.1, False, "feature", "cat"),
        },
        created=created,
        location="/reports/fraud/1/x",
    )


def test_summary_round_trip_and_refusal() -> None:
    summary = DriftSummary.of(_result())
    assert DriftSummary.from_json(summary.to_json()) == summary
    assert summary.columns == {"amount": 3.2, "channel": 0.01}
    with pytest.raises(ValueError):
        DriftSummary.from_json(b'{"model": "fraud"}')


async def test_export_keeps_the_latest_per_version_and_drops_stale(
    aredis: aioredis.Redis,
) -> None:
    await export_summary(aredis, DriftSummary.of(_result(created=100.0)), ttl_s=3600, now=100.0)
    await aredis.hset(drift_results_key(), b"junk:1", b"not json")
    dropped = await export_summary(
        aredis, DriftSummary.of(_result(version="2", created=5000.0)), ttl_s=3600, now=5000.0
    )
    assert dropped == 2  # version 1 is over an hour old; the junk is unreadable
    await export_summary(
        aredis, DriftSummary.of(_result(version="2", created=5100.0)), ttl_s=3600, now=5100.0
    )
    found = await read_summaries(aredis, ttl_s=3600, now=5100.0)
    assert [(s.version, s.created) for s in found] == [("2", 5100.0)]
    assert await aredis.hkeys(drift_results_key()) == [drift_field("fraud", "2")]
    assert await read_summaries(aredis, ttl_s=10, now=6000.0) == []


async def test_collector_serves_what_it_read_last(aredis: aioredis.Redis) -> None:
    await export_summary(aredis, DriftSummary.of(_result(created=1000.0)), ttl_s=3600, now=1000.0)
    settings = MonitoringSettings(metrics_refresh_s=0.05, result_ttl_s=3600)
    collector = DriftCollector(aredis, settings, clock=lambda: 1060.0)
    registry = CollectorRegistry()
    registry.register(collector)
    assert b"servekit_drift_share{" not in generate_latest(registry)  # nothing read yet
    collector.start()
    try:
        for _ in range(100):
            if collector.summaries:
                break
            await asyncio.sleep(0.02)
    finally:
        await collector.stop()
    text = generate_latest(registry).decode()
    assert 'servekit_drift_share{model="fraud",version="1"} 0.2857' in text
    assert 'servekit_drift_detected{model="fraud",version="1"} 1.0' in text
    assert 'servekit_drift_column_score{column="amount",model="fraud",version="1"} 3.2' in text
    assert 'servekit_drift_report_age_seconds{model="fraud",version="1"} 60.0' in text


async def test_collector_fails_open_when_redis_is_down() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    collector = DriftCollector(dead, MonitoringSettings())
    collector.summaries = [DriftSummary.of(_result())]
    await collector.refresh()  # logs, keeps the last results, never raises
    assert len(collector.summaries) == 1
    await dead.aclose()
