"""Shared fixtures: a real Redis (``--redis-url``), cleaned per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default="redis://127.0.0.1:6379/9",
        help="A Redis the tests may flush (default: db 9 of the local server).",
    )


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    url: str = request.config.getoption("--redis-url")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.ConnectionError as exc:  # pragma: no cover - environment problem
        pytest.exit(f"no Redis answers at {url} ({exc}); start one or pass --redis-url")
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client on a flushed database."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on a flushed database."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()
