"""The gateway's Redis runtime on a ``redis+cluster://`` URL: cluster clients throughout."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from services.settings import RedisSettings, Settings
from services.state.redis_clients import cluster_node_url, is_cluster
from services.state.runtime import RedisRuntime


def test_cluster_urls_are_told_apart_and_keep_database_zero() -> None:
    assert cluster_node_url("redis+cluster://h:7000") == "redis://h:7000"
    assert cluster_node_url("rediss+cluster://h:7000/0") == "rediss://h:7000/0"
    assert cluster_node_url("redis://h:6379/2") is None
    assert cluster_node_url("unix:///tmp/r.sock") is None
    with pytest.raises(ValidationError, match="only database 0"):
        RedisSettings(url="redis+cluster://h:7000/3")


async def test_runtime_on_a_cluster(redis_cluster_url: str) -> None:
    runtime = RedisRuntime(
        Settings(redis=RedisSettings(url=redis_cluster_url)), CollectorRegistry()
    )
    try:
        clients = (
            runtime.client,
            runtime.control_client,
            runtime.background_client,
            runtime.pubsub_client,
        )
        assert all(is_cluster(c) for c in clients)
        assert await runtime.health() == {"redis": "ok"}
        event = {"timestamp": 1_800_000_000, "entities": {"user": "u1"}, "amount": 3.0}
        assert "-" in await runtime.append_event(event)
    finally:
        await runtime.close()
