"""Flow state hooks: a cancelled or crashed rollout run puts the model back on its primary.

A rollout stage leaves the model in shadow or canary mode while it waits; a run that is
cancelled (from the UI or ``prefect flow-run cancel``) or crashes (the worker died, the
process was killed) must not leave live traffic on an unvalidated candidate. The hooks
read the run's ``model``, ``candidate`` and ``redis_url`` parameters, roll back when that
candidate is still the model's candidate, and say what they did in the
``rollout-{model}`` report artifact.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.artifacts import acreate_markdown_artifact

from flows.artifacts import artifact_key
from flows.parameters import version_text
from flows.rollout_progress import finish_progress
from services.rollout.state import RolloutStore
from services.state.redis_clients import connect
from services.state.redis_embedded import resolve_redis_url

logger = logging.getLogger(__name__)


async def roll_back_after(
    model: str, candidate: str, redis_url: str | None, *, run_name: str, state_name: str
) -> str:
    """Roll ``candidate`` back when it is still ``model``'s candidate; returns what was done.

    A rollback is reported in the artifact; when there was nothing to roll back (a
    sub-flow's hook got there first) only the log says so, so the report keeps the
    rollback.
    """
    reason = f"rollout run {run_name} {state_name.lower()}"
    async with connect(resolve_redis_url(redis_url)) as client:
        store = RolloutStore(client)
        current = await store.find(model)
        if current is None or current.mode == "off" or current.candidate != candidate:
            action = f"nothing to roll back: {model} is not rolling out version {candidate}"
            logger.info("%s: %s", reason, action)
            return action
        else:
            state = await store.rollback(model, reason=reason, actor="flow:hook")
            await store.clear_canary_progress(model)
            action = (
                f"rolled back from {current.mode} mode: version {state.primary} "
                f"(the primary) serves all traffic"
            )
    logger.warning("%s: %s", reason, action)
    await acreate_markdown_artifact(
        "\n".join(
            [
                f"# Rollout of {model} version {candidate}: {state_name.upper()}",
                "",
                f"The run {run_name} was {state_name.lower()} before it finished.",
                "",
                f"Action: {action}.",
            ]
        ),
        key=artifact_key("rollout", model),
        description=f"Rollout of {model} version {candidate}: {state_name.lower()}",
    )
    await finish_progress(model, candidate, f"{state_name.upper()}, rolled back")
    return action


async def rollback_on_stop(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect ``on_cancellation`` / ``on_crashed`` hook of the rollout flows."""
    params = dict(flow_run.parameters or {})
    if "model" not in params or "candidate" not in params:
        return
    try:
        await roll_back_after(
            str(params["model"]),
            version_text(params["candidate"]),
            params.get("redis_url"),
            run_name=str(flow_run.name),
            state_name=str(state.name),
        )
    except Exception:  # a hook that raises is only logged by Prefect; say why here
        logger.exception("rollback after %s of run %s failed", state.name, flow_run.name)


ROLLBACK_HOOKS: dict[str, Any] = {
    "on_cancellation": [rollback_on_stop],
    "on_crashed": [rollback_on_stop],
}
"""``@flow`` options of every rollout flow."""
