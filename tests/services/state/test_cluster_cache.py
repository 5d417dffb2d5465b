"""The prediction cache's tests on a Redis Cluster: the same tests, with ``aredis`` a
cluster client (a batch's keys spread over the slots, so its MGET is split per slot)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster

from services.state.cache import PredictionCache
from services.state.keys import prediction_key
from services.state.redis_clients import slot_of
from tests.services.state import cluster_fixtures
from tests.services.state.test_cache import *  # noqa: F403
from tests.services.state.test_cache import FakeClock, rows, settings

aredis = cluster_fixtures.aredis  # this module's tests run on the cluster


async def test_cluster_batch_spans_slots_and_hits_whole(
    aredis: RedisCluster, clock: FakeClock
) -> None:
    cache = PredictionCache(aredis, settings(), clock=clock, registry=CollectorRegistry())
    batch = rows(64)
    assert len({slot_of(prediction_key("m", "1", r)) for r in batch}) > 32
    values = [f"v{i}".encode() for i in range(64)]
    assert await cache.get_many("m", "1", batch) == [None] * 64
    await cache.set_many("m", "1", batch, values)
    assert await cache.get_many("m", "1", batch) == values
