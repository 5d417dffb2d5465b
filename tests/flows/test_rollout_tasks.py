"""The rollout-state tasks on the test Redis, and which failures they retry."""

from __future__ import annotations

from types import SimpleNamespace

import redis.asyncio as aioredis
from prefect import flow
from redis.exceptions import ConnectionError as RedisConnectionError

from flows.rollout_tasks import promote_rollout, retry_on_redis, rollback_rollout
from services.errors import ServekitError
from services.rollout.state import RolloutStore


def test_only_redis_and_network_failures_are_retried() -> None:
    def retried(exc: BaseException) -> bool:
        return retry_on_redis(None, None, SimpleNamespace(data=exc))

    assert retried(RedisConnectionError("down")) and retried(OSError("reset"))
    assert not retried(ServekitError("refused")) and not retried(ValueError("bad"))


@flow
async def promote_then_roll_back(redis_url: str) -> str:
    """The tasks run inside a flow run, as the rollout flows run them."""
    primary = await promote_rollout("m", "good", redis_url, "flow:test")
    async with aioredis.Redis.from_url(redis_url) as client:
        await RolloutStore(client).start_canary("m", "3", 10.0, reason="test", actor="test")
    await rollback_rollout("m", "bad", redis_url, "flow:test")
    return primary


async def test_promote_and_rollback_change_the_rollout_state(
    aredis: aioredis.Redis, redis_url: str
) -> None:
    store = RolloutStore(aredis)
    await store.set_primary("m", "1", reason="test")
    await store.start_canary("m", "2", 10.0, reason="test", actor="test")
    assert await promote_then_roll_back(redis_url) == "2"
    state = await store.get("m")
    assert (state.mode, state.primary, state.candidate) == ("off", "2", None)
    actions = [(e.action, e.reason, e.actor) for e in await store.history("m", 3)]
    assert actions == [
        ("rollback", "bad", "flow:test"),
        ("canary", "test", "test"),
        ("promote", "good", "flow:test"),
    ]
