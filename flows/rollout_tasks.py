"""Prefect tasks that change a model's rollout state, and the retry policy of Redis tasks.

Every task of the rollout flows that reads or writes Redis takes ``REDIS_RETRIES``:
Redis and network failures are retried, refusals (a stale revision, an unknown version)
are not.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from redis.exceptions import RedisError

from services.registry.stores import open_store
from services.registry.versions import ModelRegistry
from services.rollout.state import RolloutStore
from services.settings import get_settings
from services.state.redis_clients import connect


def retry_on_redis(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry Redis and network failures, not refusals."""
    return isinstance(getattr(state, "data", None), (RedisError, OSError))


REDIS_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [1, 5, 15],
    "retry_condition_fn": retry_on_redis,
    "cache_policy": NO_CACHE,
}
"""Task options of every task that reads or writes Redis."""


@task(**REDIS_RETRIES)
async def rollback_rollout(model: str, reason: str, redis_url: str, actor: str) -> None:
    """Drop the candidate, recording why; the primary keeps serving."""
    async with connect(redis_url) as client:
        store = RolloutStore(client)
        await store.rollback(model, reason=reason[:1000], actor=actor)
        await store.clear_canary_progress(model)
    get_run_logger().warning("rolled back %s: %s", model, reason)


@task(**REDIS_RETRIES)
async def promote_rollout(model: str, reason: str, redis_url: str, actor: str) -> str:
    """Make the candidate the primary; returns the new primary."""
    async with connect(redis_url) as client:
        store = RolloutStore(client)
        state = await store.promote(model, reason=reason[:1000], actor=actor)
        await store.clear_canary_progress(model)
    get_run_logger().info("promoted %s: version %s is primary (%s)", model, state.primary, reason)
    return state.primary


@task(cache_policy=NO_CACHE)
def same_artifact(model: str, primary: str, candidate: str, model_store: str | None) -> bool:
    """Whether ``candidate``'s artifact is byte-identical (same sha256) to ``primary``'s.

    A registry that cannot be read says no: the shadow comparison then decides from the
    answers alone.
    """
    settings = get_settings().serving
    if model_store is not None:
        settings = settings.model_copy(update={"model_store": model_store})
    try:
        registry = ModelRegistry(open_store(settings))
        same = registry.get(model, primary).sha256 == registry.get(model, candidate).sha256
    except Exception as exc:  # any registry failure only loses the shortcut
        get_run_logger().warning("could not compare the artifacts of %s: %s", model, exc)
        return False
    if same:
        get_run_logger().info(
            "%s version %s has the same artifact (sha256) as version %s", model, candidate, primary
        )
    return same
