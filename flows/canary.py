"""Canary promotion: ramp live traffic to a candidate, gate each step, promote.

The second stage of a rollout (the strategy is in docs/design.md): it sends
``candidate`` a growing share of live traffic (default ``SERVEKIT_ROLLOUT_CANARY_STEPS``),
sticky per user. During each step it looks at the experiment's per-variant counters
(``FeedbackStore``) every ``poll_s``:

- candidate error rate over ``max_error_rate``: roll back at once;
- once outcomes arrived, the business metric (share of positive outcomes) with the mSPRT:
  when the candidate is significantly worse, stop early and roll back (the test's
  p-value is valid however often it is peeked at);
- at the step's end, the candidate's p99 latency against the primary's (and too little
  candidate traffic to judge fails the step).

A breach rolls the candidate back (the reason is written to the rollout history) and
fails the run with ``CanaryGateError``; after the last step the candidate is promoted.
At every look the drift gate compares the distribution of the candidate's predictions
with the primary's in the step (``flows.prediction_drift``), so a candidate whose answers shift is
rolled back before any outcome arrives. The ``canary-{model}`` markdown artifact gains a
row per step (failed steps included); every look logs the progress.

Each step is watched in observation intervals (``interval_s``, default
``SERVEKIT_ROLLOUT_CANARY_INTERVAL_S``) whose progress is saved in Redis next to the
rollout state (``flows.canary_step``): a look that hits a Redis error is retried from the
last saved interval, and a run whose worker died is simply run again: it finds the model
still in this candidate's canary, resumes the saved step where it stood, and goes on to
promote or roll back. (A run that is cancelled or crashes in a way Prefect sees rolls the
candidate back through ``flows.hooks``; a killed process leaves the canary standing at its
step for the re-run.)

Run once: ``python -m flows.canary MODEL CANDIDATE``.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from flows.artifacts import artifact_key
from flows.canary_report import canary_markdown
from flows.canary_step import (
    StepPlace,
    StepWatch,
    begin_canary_step,
    resume_point,
    watch_canary_step,
)
from flows.gates import CanaryCheck, CanaryGateError, Thresholds
from flows.hooks import ROLLBACK_HOOKS
from flows.parameters import Version, version_text
from flows.rollout_tasks import REDIS_RETRIES, promote_rollout, rollback_rollout
from services.errors import InvalidInputError
from services.rollout.state import RolloutStore
from services.rollout.transitions import CanaryProgress
from services.settings import RolloutSettings, get_settings
from services.state.redis_clients import connect
from services.state.redis_embedded import resolve_redis_url


@dataclass(frozen=True, slots=True)
class CanaryReport:
    """What the canary did: the final look of every step this run watched, whether it
    promoted, and where it took the canary up when it resumed one (``resumed_at``: the
    step's number and the seconds of it watched before; None when it started afresh)."""

    model: str
    candidate: str
    experiment_id: str
    steps: list[CanaryCheck]
    promoted: bool
    resumed_at: tuple[int, float] | None = None


@task(**REDIS_RETRIES)
async def set_canary_step(model: str, candidate: str, percent: float, redis_url: str) -> str:
    """Send ``percent`` of traffic to the candidate; returns the experiment id."""
    async with connect(redis_url) as client:
        store = RolloutStore(client)
        current = await store.get(model)
        reason = f"canary step: {percent:g} %"
        if current.mode == "canary" and current.candidate == candidate:
            state = current
            if current.percent != percent:  # a resumed run finds it set already
                state = await store.set_percent(model, percent, reason=reason, actor="flow:canary")
        else:
            state = await store.start_canary(
                model, candidate, percent, reason=reason, actor="flow:canary"
            )
    assert state.experiment_id is not None  # a canary always has one
    get_run_logger().info(
        "%s: %g %% of traffic to version %s (experiment %s)",
        model,
        percent,
        candidate,
        state.experiment_id,
    )
    return state.experiment_id


@task(cache_policy=NO_CACHE)
async def publish_canary_artifact(
    model: str, candidate: str, steps: list[tuple[CanaryCheck, str]], thresholds: Thresholds
) -> None:
    """Every step so far as a markdown artifact (a row per step)."""
    check = steps[-1][0]
    await acreate_markdown_artifact(
        canary_markdown(model, candidate, steps, thresholds),
        key=artifact_key("canary", model),
        description=f"Canary of {model} version {candidate}, step {len(steps)} "
        f"({check.percent:g} %)",
    )


def canary_plan(steps: list[float] | None, settings: RolloutSettings) -> list[float]:
    """The canary's steps: ``steps`` checked by the settings' own rule, or the settings'.

    Raises:
        InvalidInputError: ``steps`` are not increasing percents in (0, 100].
    """
    if steps is None:
        return list(settings.canary_steps)
    try:
        checked = settings.model_validate({**settings.model_dump(), "canary_steps": steps})
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        raise InvalidInputError(message, field="steps") from exc
    return list(checked.canary_steps)


async def _start(
    model: str,
    candidate: str,
    place: StepPlace,
    experiment_id: str,
    p_value: float,
    watch: StepWatch,
    redis_url: str,
) -> CanaryProgress:
    """Set the step's traffic share and begin (or take up) its progress.

    Once the canary has an experiment (later steps, a resumed run) the progress is
    saved before the share changes, so a run that dies in between resumes at the new
    step rather than lowering the share back.
    """
    if not experiment_id:
        experiment_id = await set_canary_step(model, candidate, place.percent, redis_url)
        return await begin_canary_step(
            model, candidate, experiment_id, place, p_value, watch, redis_url
        )
    progress = await begin_canary_step(
        model, candidate, experiment_id, place, p_value, watch, redis_url
    )
    await set_canary_step(model, candidate, place.percent, redis_url)
    return progress


async def _ramp(
    model: str,
    candidate: str,
    plan: list[float],
    thresholds: Thresholds,
    watch: StepWatch,
    redis_url: str,
    *,
    promote: bool,
) -> tuple[str, list[CanaryCheck], tuple[int, float] | None]:
    """Run the steps in order (from a saved step when one is resumed), then promote
    (``promote``); returns the experiment id, each watched step's final look and the
    step and watched seconds it resumed at (None: it started afresh).

    Raises:
        CanaryGateError: a step failed; the candidate was rolled back.
    """
    resumed = await resume_point(model, candidate, plan, redis_url)
    first = resumed.step if resumed is not None else 1
    experiment_id = resumed.experiment_id if resumed is not None else ""
    steps: list[tuple[CanaryCheck, str]] = []
    p_value = 1.0
    for number in range(first, len(plan) + 1):
        percent = plan[number - 1]
        place = StepPlace(number, len(plan), percent)
        progress = await _start(model, candidate, place, experiment_id, p_value, watch, redis_url)
        experiment_id = progress.experiment_id
        check, progress = await watch_canary_step(place, thresholds, watch, progress, redis_url)
        p_value = check.p_value
        if not check.passed:
            reason = f"canary step {number} ({percent:g} %) failed: " + "; ".join(check.failures)
            steps.append((check, f"rolled back: {reason}"))
            await publish_canary_artifact(model, candidate, steps, thresholds)
            await rollback_rollout(model, reason, redis_url, "flow:canary")
            raise CanaryGateError(reason, model=model, candidate=candidate, failures=check.failures)
        if number < len(plan):
            action = f"next step: {plan[number]:g} %"
        else:
            action = "promoting" if promote else "held at the last step"
        steps.append((check, action))
        await publish_canary_artifact(model, candidate, steps, thresholds)
    if promote:
        reason = f"canary passed {len(plan)} step(s) up to {plan[-1]:g} %"
        await promote_rollout(model, reason, redis_url, "flow:canary")
    at = None if resumed is None else (resumed.step, resumed.observed_s)
    return experiment_id, [c for c, _ in steps], at


@flow(name="canary-promotion", **ROLLBACK_HOOKS)
async def canary_promotion(
    model: str,
    candidate: Version,
    steps: list[float] | None = None,
    step_duration_s: float | None = None,
    *,
    min_predictions: int | None = None,
    min_outcomes: int | None = None,
    stop_at_predictions: int | None = None,
    poll_s: float = 60.0,
    interval_s: float | None = None,
    higher_is_better: bool = True,
    latency_slack_ms: float | None = None,
    max_error_rate: float | None = None,
    max_p99_latency_ratio: float | None = None,
    max_drift_psi: float | None = None,
    promote: bool = True,
    redis_url: str | None = None,
) -> CanaryReport:
    """Ramp ``candidate`` through the canary steps, gating each; promote at the end.

    Args:
        model: the model whose candidate is ramped up (e.g. fraud).
        candidate: the version to ramp up (e.g. 2).
        steps: candidate traffic percent of each step, increasing (empty: settings).
        step_duration_s: seconds at each step (empty: settings).
        min_predictions: fewest candidate predictions to judge a step (empty: settings).
        min_outcomes: outcomes per variant before the mSPRT runs (empty: settings).
        stop_at_predictions: end a step once it saw this many candidate predictions.
        poll_s: seconds between looks at the counters (each look logs the progress).
        interval_s: seconds watched between saves of a step's progress (empty: settings).
        higher_is_better: whether a positive outcome is good (conversions) or bad.
        latency_slack_ms: milliseconds allowed on top of the p99 ratio (empty: settings).
        max_error_rate: most candidate errors per prediction (empty: settings).
        max_p99_latency_ratio: most candidate p99 over the primary's (empty: settings).
        max_drift_psi: largest prediction-drift PSI against the primary (empty: settings).
        promote: promote after the last step (false: leave it at the last step).
        redis_url: the Redis holding rollout state and counters (empty: settings).

    Returns every step's final look; raises ``CanaryGateError`` on a failed (rolled back) step.
    """
    candidate = version_text(candidate)
    settings = get_settings().rollout
    url = resolve_redis_url(redis_url)
    plan = canary_plan(steps, settings)
    gates = {
        "min_predictions": min_predictions,
        "min_outcomes": min_outcomes,
        "latency_slack_ms": latency_slack_ms,
        "max_error_rate": max_error_rate,
        "max_p99_latency_ratio": max_p99_latency_ratio,
    }
    thresholds = Thresholds.from_settings(settings, max_drift_psi=max_drift_psi, **gates)
    watch = _step_watch(
        settings, step_duration_s, interval_s, poll_s, stop_at_predictions, higher_is_better
    )
    experiment, checks, at = await _ramp(
        model, candidate, plan, thresholds, watch, url, promote=promote
    )
    return CanaryReport(model, candidate, experiment, checks, promote, at)


def _step_watch(
    settings: RolloutSettings,
    step_duration_s: float | None,
    interval_s: float | None,
    poll_s: float,
    stop_at_predictions: int | None,
    higher_is_better: bool,
) -> StepWatch:
    """How steps are watched: the run's values, the settings' where it gave none."""
    return StepWatch(
        settings.step_duration_s if step_duration_s is None else step_duration_s,
        poll_s,
        stop_at_predictions,
        higher_is_better,
        settings.canary_interval_s if interval_s is None else interval_s,
        settings.counter_ttl_s,
    )


if __name__ == "__main__":
    asyncio.run(canary_promotion(sys.argv[1], sys.argv[2]))
