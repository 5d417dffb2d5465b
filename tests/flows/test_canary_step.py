"""Where a canary run takes up a step (the saved progress, when it still fits), and where
it stops (the rollout changed under it)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from flows.canary import canary_promotion
from flows.canary_step import (
    CanaryInterruptedError,
    StepPlace,
    StepWatch,
    begin_canary_step,
    canary_under_way,
    resume_point,
)
from services.rollout.state import RolloutStore
from services.rollout.transitions import CanaryProgress
from tests.flows.conftest import MODEL
from tests.flows.faults import wait_for

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


async def test_a_canary_rolled_back_by_hand_stops_at_the_next_interval(
    aredis: aioredis.Redis, redis_url: str
) -> None:
    store = RolloutStore(aredis)
    await store.set_primary(MODEL, "1")
    run = asyncio.create_task(
        canary_promotion(
            MODEL, "2", [50.0, 100.0], 60.0, interval_s=0.3, poll_s=0.1, redis_url=redis_url
        )
    )

    async def saved() -> CanaryProgress | None:
        progress = await store.canary_progress(MODEL)
        return progress if progress is not None and progress.intervals >= 1 else None

    await wait_for(saved, timeout_s=60, what="a saved interval")
    await store.rollback(MODEL, reason="operator")
    with pytest.raises(CanaryInterruptedError, match="no longer in the canary"):
        await asyncio.wait_for(run, timeout=60)
    state = await store.get(MODEL)
    assert (state.mode, state.primary) == ("off", "1")  # left as the operator set it
    (last,) = await store.history(MODEL, 1)
    assert last.actor == "servekit" and last.reason == "operator"
