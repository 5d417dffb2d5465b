"""Batch view loads against a real Redis: versions, the pointer swap, retirement."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.errors import InvalidInputError
from services.settings import FeatureSettings
from services.state import keys
from services.state.features import FeatureRegistry, FeatureSpec, FeatureStore, FeatureView
from tests.services.state.conftest import NOW


async def test_load_rejects_unknown_feature(store: FeatureStore) -> None:
    with pytest.raises(InvalidInputError) as info:
        await store.load_batch_view("user_stats", {"u1": {"bogus": 1.0}}, NOW)
    assert info.value.field == "user_stats.bogus"


async def test_swap_retires_previous_version_after_grace(
    store: FeatureStore, aredis: aioredis.Redis
) -> None:
    first = await store.load_batch_view("user_stats", {"u1": {"avg_amount_30d": 1.0}}, NOW)
    second = await store.load_batch_view("user_stats", {"u1": {"avg_amount_30d": 2.0}}, NOW + 1)
    assert second.previous_version == first.version
    assert await store.current_version("user_stats") == second.version
    old_key = keys.feature_key("user_stats", first.version, "u1")
    assert 0 < await aredis.pttl(old_key) <= 300_000  # kept for in-flight readers, then gone
    assert await aredis.pttl(keys.feature_key("user_stats", second.version, "u1")) == -1
    assert await aredis.smembers(keys.view_versions_key("user_stats")) == {second.version.encode()}


async def test_values_are_cast_to_their_dtype_and_gaps_skipped(
    aredis: aioredis.Redis, fsettings: FeatureSettings
) -> None:
    views = FeatureRegistry(
        [
            FeatureView(
                name="shop",
                entity="shop",
                kind="batch",
                max_staleness_s=60,
                features=(FeatureSpec(name="orders", dtype="int64"), FeatureSpec(name="rating")),
            )
        ]
    )
    store = FeatureStore(aredis, views, fsettings, registry=CollectorRegistry())
    rows = {"s1": {"orders": 7.9, "rating": float("nan")}, "s2": {"rating": None}}
    result = await store.load_batch_view("shop", rows, NOW)
    assert result.rows == 2
    stored = await aredis.hgetall(keys.feature_key("shop", result.version, "s1"))
    assert stored == {b"orders": b"7"}
    assert not await aredis.exists(keys.feature_key("shop", result.version, "s2"))
    index = await aredis.smembers(keys.view_index_key("shop", result.version))
    assert index == {b"s1"}
