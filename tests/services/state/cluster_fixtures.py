"""The Redis Cluster stand-ins for the ``aredis`` fixture: a module that imports these
runs its tests against the three-master cluster of ``redis_cluster_url`` instead of the
single Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from services.state.redis_clients import connect


@pytest.fixture
async def aredis(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    """An asyncio cluster client on a flushed cluster (every primary)."""
    client = connect(redis_cluster_url)
    await client.flushdb(target_nodes=RedisCluster.PRIMARIES)
    yield client
    await client.flushdb(target_nodes=RedisCluster.PRIMARIES)
    await client.aclose()
