"""A canary step's saved progress in a real Redis: written only while that canary runs."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.rollout.state import RolloutStore
from services.rollout.transitions import CanaryProgress
from services.state import keys


def _progress(experiment_id: str, **changes: object) -> CanaryProgress:
    values: dict[str, object] = {
        "model": "fraud",
        "candidate": "2",
        "experiment_id": experiment_id,
        "step": 1,
        "percent": 5.0,
        "observed_s": 120.0,
        "intervals": 2,
    }
    return CanaryProgress.model_validate({**values, **changes})


def test_the_progress_key_is_the_models_own() -> None:
    assert keys.canary_progress_key("fraud") == b"servekit:{rollouts}:fraud:canary"
    assert keys.canary_progress_key("a") != keys.rollout_state_key("a:canary")


async def test_progress_is_saved_and_read_back_while_the_canary_runs(
    aredis: aioredis.Redis,
) -> None:
    store = RolloutStore(aredis)
    await store.set_primary("fraud", "1")
    state = await store.start_canary("fraud", "2", 5.0)
    assert state.experiment_id is not None
    progress = _progress(state.experiment_id)
    assert await store.save_canary_progress(progress, ttl_s=600)
    assert await store.canary_progress("fraud") == progress
    assert 0 < await aredis.ttl(keys.canary_progress_key("fraud")) <= 600
    assert progress.continues(await store.find("fraud"))
    await store.clear_canary_progress("fraud")
    assert await store.canary_progress("fraud") is None


async def test_progress_of_another_rollout_is_refused(aredis: aioredis.Redis) -> None:
    store = RolloutStore(aredis)
    await store.set_primary("fraud", "1")
    assert not await store.save_canary_progress(_progress("exp-x"), ttl_s=600)  # mode off
    state = await store.start_canary("fraud", "2", 5.0)
    assert not await store.save_canary_progress(_progress("another-experiment"), ttl_s=600)
    assert state.experiment_id is not None
    saved = _progress(state.experiment_id)
    assert await store.save_canary_progress(saved, ttl_s=600)
    rolled_back = await store.rollback("fraud", reason="operator")
    assert not saved.continues(rolled_back)
    later = _progress(state.experiment_id, observed_s=180.0, intervals=3)
    assert not await store.save_canary_progress(later, ttl_s=600)
    assert await store.canary_progress("fraud") == saved  # the refused write changed nothing
    assert await store.canary_progress("other") is None
