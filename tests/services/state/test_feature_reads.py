"""Online feature reads against a real Redis: snapshots, one round trip, flags."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.settings import FeatureSettings
from services.state.features import FeatureRegistry, FeatureStore
from tests.services.state.conftest import NOW, WANTED, FakeClock, load_sample


async def test_reads_loaded_values_defaults_and_missing_flags(store: FeatureStore) -> None:
    await store.load_batch_view(
        "user_stats", {"u1": {"avg_amount_30d": 42.5, "txn_count_30d": 7}}, NOW - 3600
    )
    await store.load_batch_view("merchant_risk", {"crypto": {"risk_score": 0.4}}, NOW - 3600)
    values, flags = await store.get_features(
        [{"user": "u1", "merchant_category": "crypto"}, {"user": "ghost"}],
        ["merchant_risk.risk_score", "user_stats.avg_amount_30d", "user_stats.txn_count_30d"],
    )
    assert values.dtype == np.float32
    assert values.tolist() == [[pytest.approx(0.4), 42.5, 7.0], [pytest.approx(0.03), 0.0, 0.0]]
    assert flags[0].ok
    assert flags[1].missing == {"user_stats", "merchant_risk"} and not flags[1].stale


async def test_view_never_loaded_serves_defaults(store: FeatureStore) -> None:
    values, flags = await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    assert values.tolist() == [[0.0]]
    assert flags[0].missing == {"user_stats"}


async def test_stale_batch_view_is_flagged_and_counted(
    store: FeatureStore, clock: FakeClock, registry: CollectorRegistry
) -> None:
    await store.load_batch_view("user_stats", {"u1": {"avg_amount_30d": 1.0}}, NOW)
    _, flags = await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    assert flags[0].ok
    clock.now = NOW + 36 * 3600 + 1
    values, flags = await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    assert values.tolist() == [[1.0]]  # stale values are still served, and flagged
    assert flags[0].stale == {"user_stats"}
    assert registry.get_sample_value("servekit_feature_stale_rows_total", {"view": "user_stats"})
    assert registry.get_sample_value(
        "servekit_feature_age_seconds", {"view": "user_stats"}
    ) == pytest.approx(36 * 3600 + 1)


async def test_reader_sees_old_or_new_snapshot_never_a_mix(store: FeatureStore) -> None:
    users = [f"u{i}" for i in range(1000)]
    await store.load_batch_view(
        "user_stats", {u: {"avg_amount_30d": 1.0, "txn_count_30d": 1} for u in users}, NOW
    )
    loading = True
    seen: list[float] = []

    async def read_until_loaded() -> None:
        rng = np.random.default_rng(0)
        while loading:
            picked = rng.choice(users, size=100, replace=False)
            values, _ = await store.get_features(
                [{"user": str(u)} for u in picked],
                ["user_stats.avg_amount_30d", "user_stats.txn_count_30d"],
            )
            assert len(set(values.ravel().tolist())) == 1, "a read mixed two versions"
            seen.append(float(values[0, 0]))

    readers = [asyncio.create_task(read_until_loaded()) for _ in range(4)]
    await store.load_batch_view(  # 20 pipelines of 50 rows: readers run in between
        "user_stats", {u: {"avg_amount_30d": 2.0, "txn_count_30d": 2} for u in users}, NOW + 1
    )
    loading = False
    await asyncio.gather(*readers)
    assert seen.count(1.0) >= 4  # reads overlapped the load
    values, _ = await store.get_features([{"user": "u7"}], ["user_stats.avg_amount_30d"])
    assert values.tolist() == [[2.0]]


class CountingConnection(aioredis.Connection):
    """A real connection that counts writes to the socket: one per round trip."""

    sends = 0

    async def send_packed_command(self, command: object, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)  # type: ignore[arg-type]


@pytest.fixture
async def counting_redis(redis_url: str, aredis: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, connection_class=CountingConnection)
    yield client
    await client.aclose()


async def test_batch_and_realtime_views_in_one_round_trip(
    counting_redis: aioredis.Redis,
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
) -> None:
    await load_sample(aredis, views, fsettings, clock)
    redis_py = fsettings.model_copy(update={"fast_client": False})  # count redis-py's writes
    store = FeatureStore(counting_redis, views, redis_py, clock, registry=CollectorRegistry())
    requests = [{"user": f"u{i}", "merchant_category": "fuel"} for i in range(50)]
    await store.get_features(requests, WANTED)  # connects and loads the script
    CountingConnection.sends = 0
    values, flags = await store.get_features(requests, WANTED)
    assert CountingConnection.sends == 1
    assert values[3].tolist() == pytest.approx([3.0, 0.0, 0.1, 20.0, 480.0, 2.0])
    assert flags[3].ok and flags[4].missing == {"user_activity"}


async def test_script_cache_flush_is_survived(store: FeatureStore, aredis: aioredis.Redis) -> None:
    await store.load_batch_view("user_stats", {"u1": {"avg_amount_30d": 5.0}}, NOW)
    await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    await aredis.script_flush()
    values, _ = await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    assert values.tolist() == [[5.0]]
