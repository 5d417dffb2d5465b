"""Cancelled and crashed rollout runs put the model back on its primary."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.hooks import ROLLBACK_HOOKS, rollback_on_stop
from flows.rollout import rollout
from services.rollout.state import RolloutStore
from tests.flows.conftest import MODEL


async def _artifact(key: str) -> str:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no artifact {key}"
    return str(found[0].data)


def _run(candidate: Any, redis_url: str) -> Any:
    params = {"model": MODEL, "candidate": candidate, "redis_url": redis_url}
    return SimpleNamespace(parameters=params, name="brave-otter")


@pytest.mark.parametrize("state_name", ["Cancelling", "Crashed"])
async def test_the_hook_rolls_a_running_rollout_back(
    aredis: Any, redis_url: str, state_name: str
) -> None:
    store = RolloutStore(aredis)
    await store.set_primary(MODEL, "1", reason="test")
    await store.start_canary(MODEL, "2", 25.0, reason="test")
    await rollback_on_stop(None, _run(2, redis_url), SimpleNamespace(name=state_name))
    state = await store.get(MODEL)
    assert (state.mode, state.primary, state.candidate) == ("off", "1", None)
    (last,) = await store.history(MODEL, 1)
    assert last.action == "rollback" and state_name.lower() in last.reason
    assert last.actor == "flow:hook"
    text = await _artifact("rollout-fraud")
    assert state_name.upper() in text and "rolled back from canary mode" in text


async def test_the_hook_leaves_another_rollout_alone(aredis: Any, redis_url: str) -> None:
    store = RolloutStore(aredis)
    await store.set_primary(MODEL, "1", reason="test")
    await store.start_shadow(MODEL, "3", reason="another run")
    await rollback_on_stop(None, _run("2", redis_url), SimpleNamespace(name="Cancelling"))
    state = await store.get(MODEL)
    assert (state.mode, state.candidate) == ("shadow", "3")


def test_the_rollout_flows_carry_the_hooks() -> None:
    from flows.canary import canary_promotion
    from flows.shadow import shadow_validation

    for flow in (rollout, shadow_validation, canary_promotion):
        assert flow.on_cancellation_hooks == ROLLBACK_HOOKS["on_cancellation"]
        assert flow.on_crashed_hooks == ROLLBACK_HOOKS["on_crashed"]


async def test_a_run_stopped_mid_shadow_rolls_back(rig_factory: Any, redis_url: str) -> None:
    """The run's task is cancelled while it waits in the shadow window: Prefect marks it
    crashed and the hook rolls the candidate back."""
    rig = await rig_factory()
    run = asyncio.create_task(
        rollout(
            MODEL, 2, shadow_window_s=60.0, shadow_options={"poll_s": 0.05}, redis_url=redis_url
        )
    )
    for _ in range(200):
        await asyncio.sleep(0.05)
        if (await rig.store.get(MODEL)).mode == "shadow":
            break
    assert (await rig.store.get(MODEL)).mode == "shadow"
    # A cancel that lands in Prefect's own bookkeeping can be absorbed there: repeat it
    # until the run is over (the next one lands in the window's wait).
    while not run.done():
        run.cancel()
        await asyncio.sleep(0.2)
    with pytest.raises(asyncio.CancelledError):
        await run
    state = await rig.store.get(MODEL)
    assert (state.mode, state.primary, state.candidate) == ("off", "1", None)
    (last,) = await rig.store.history(MODEL, 1)
    assert last.actor == "flow:hook" and "crashed" in last.reason
