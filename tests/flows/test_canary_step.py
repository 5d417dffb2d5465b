"""Where a canary run takes up a step: the saved progress, when it still fits."""

from __future__ import annotations

import redis.asyncio as aioredis

from flows.canary_step import (
    StepPlace,
    StepWatch,
    begin_canary_step,
    canary_under_way,
    resume_point,
)
from services.rollout.state import RolloutStore
from tests.flows.conftest import MODEL

PLAN = [5.0, 25.0, 50.0, 100.0]
WATCH = StepWatch(60.0, 1.0, None, True, 10.0, 600)


async def test_a_step_is_resumed_only_in_the_same_canary_and_plan(
    aredis: aioredis.Redis, redis_url: str
) -> None:
    store = RolloutStore(aredis)
    await store.set_primary(MODEL, "1")
    assert not await canary_under_way(MODEL, "2", redis_url)
    state = await store.start_canary(MODEL, "2", 25.0)
    assert state.experiment_id is not None
    place = StepPlace(2, len(PLAN), 25.0)
    begun = await begin_canary_step(MODEL, "2", state.experiment_id, place, 0.5, WATCH, redis_url)
    assert (begun.step, begun.observed_s, begun.p_value, begun.resumed) == (2, 0.0, 0.5, 0)
    assert await canary_under_way(MODEL, "2", redis_url)
    assert await resume_point(MODEL, "2", PLAN, redis_url) == begun
    # Begun again (a re-run): the same progress, counted as a resume.
    again = await begin_canary_step(MODEL, "2", state.experiment_id, place, 1.0, WATCH, redis_url)
    assert again.started_at == begun.started_at and again.resumed == 1 and again.p_value == 0.5
    assert await resume_point(MODEL, "2", [10.0, 100.0], redis_url) is None  # another plan
    assert await resume_point(MODEL, "3", PLAN, redis_url) is None  # another candidate
    assert not await canary_under_way(MODEL, "3", redis_url)
    await store.rollback(MODEL, reason="operator")
    assert await resume_point(MODEL, "2", PLAN, redis_url) is None  # the canary ended
    assert not await canary_under_way(MODEL, "2", redis_url)
