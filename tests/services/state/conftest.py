"""Feature store fixtures: the demo views, a settable clock, a store and workers."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.settings import FeatureSettings
from services.state.features import FeatureRegistry, FeatureStore, demo_views
from services.state.realtime import Event, EventLog, RealtimeWorker

NOW = 1_800_000_000.0
WANTED = [
    "user_stats.avg_amount_30d",
    "user_stats.txn_count_30d",
    "merchant_risk.risk_score",
    "user_activity.last5_amount_mean",
    "user_activity.seconds_since_last_txn",
    "user_activity.txn_count_10m",
]


class FakeClock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def views() -> FeatureRegistry:
    return FeatureRegistry(demo_views())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fsettings() -> FeatureSettings:
    return FeatureSettings(load_chunk=50, version_grace_s=300, claim_min_idle_ms=0)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def store(
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
    registry: CollectorRegistry,
) -> FeatureStore:
    return FeatureStore(aredis, views, fsettings, clock, registry=registry)


def worker(
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
    name: str,
) -> RealtimeWorker:
    return RealtimeWorker(aredis, views, fsettings, name, clock, registry=CollectorRegistry())


def event(i: int, user: str = "u1", amount: float | None = None, ts: float | None = None) -> Event:
    return Event(
        event_id=f"e{i}",
        timestamp=NOW - 60 * (10 - i) if ts is None else ts,
        entities={"user": user, "merchant_category": "grocery"},
        values={"amount": float(10 * (i + 1)) if amount is None else amount},
    )


async def load_sample(
    aredis: Any, views: FeatureRegistry, fsettings: FeatureSettings, clock: FakeClock
) -> None:
    """Two batch views (50 users, one merchant) and three events of u3, consumed."""
    loader = FeatureStore(aredis, views, fsettings, clock, registry=CollectorRegistry())
    await loader.load_batch_view(
        "user_stats", {f"u{i}": {"avg_amount_30d": float(i)} for i in range(50)}, NOW
    )
    await loader.load_batch_view("merchant_risk", {"fuel": {"risk_score": 0.1}}, NOW)
    log = EventLog(aredis, fsettings)
    for i in range(3):
        await log.append(event(i, user="u3"))
    await worker(aredis, views, fsettings, clock, "w1").run_once()
