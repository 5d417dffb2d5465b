"""The gateway's Redis runtime: its clients take their timeouts from the settings."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.settings import RedisSettings, Settings
from services.state.runtime import RedisRuntime


async def test_client_timeouts_come_from_the_settings(redis_url: str) -> None:
    settings = Settings(
        redis=RedisSettings(
            url=redis_url,
            socket_timeout_ms=40.0,
            worker_socket_timeout_ms=7000.0,
            background_socket_timeout_ms=300.0,
        )
    )
    runtime = RedisRuntime(settings, CollectorRegistry())
    try:

        def timeout(client: object) -> float | None:
            return client.connection_pool.connection_kwargs.get("socket_timeout")  # type: ignore[attr-defined]

        assert timeout(runtime.client) == pytest.approx(0.04)
        assert timeout(runtime.control_client) == pytest.approx(7.0)
        assert timeout(runtime.background_client) == pytest.approx(0.3)
        assert timeout(runtime.pubsub_client) is None  # pub/sub waits for notices
        assert await runtime.health() == {"redis": "ok"}
    finally:
        await runtime.close()


def test_timeout_defaults() -> None:
    fields = RedisSettings.model_fields
    assert fields["worker_socket_timeout_ms"].default == 10_000
    assert fields["background_socket_timeout_ms"].default == 500
