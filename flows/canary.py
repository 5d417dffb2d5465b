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

Run once: ``python -m flows.canary MODEL CANDIDATE``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from flows.artifacts import artifact_key, format_percent
from flows.canary_drift import StepDrift
from flows.canary_report import canary_markdown, drift_cell
from flows.gates import CanaryCheck, CanaryGateError, Thresholds, canary_check
from flows.hooks import ROLLBACK_HOOKS
from flows.parameters import Version, version_text
from flows.rollout_progress import Progress, report_progress
from flows.rollout_tasks import REDIS_RETRIES, promote_rollout, rollback_rollout
from services.errors import InvalidInputError
from services.rollout.feedback import FeedbackStore
from services.rollout.prediction_log import PredictionLog
from services.rollout.state import RolloutStore
from services.settings import RolloutSettings, get_settings
from services.state.redis_embedded import resolve_redis_url


@dataclass(frozen=True, slots=True)
class CanaryReport:
    """What the canary did: every step's final look, and whether it promoted."""

    model: str
    candidate: str
    experiment_id: str
    steps: list[CanaryCheck]
    promoted: bool


@dataclass(frozen=True, slots=True)
class StepWatch:
    """How each canary step is watched.

    Attributes:
        duration_s: time at the step.
        poll_s: how often the counters are read.
        stop_at_predictions: end the step once it saw this many candidate predictions.
        higher_is_better: whether a positive outcome is good (conversions) or bad.
    """

    duration_s: float
    poll_s: float
    stop_at_predictions: int | None
    higher_is_better: bool


@task(**REDIS_RETRIES)
async def set_canary_step(model: str, candidate: str, percent: float, redis_url: str) -> str:
    """Send ``percent`` of traffic to the candidate; returns the experiment id."""
    async with aioredis.Redis.from_url(redis_url) as client:
        store = RolloutStore(client)
        current = await store.get(model)
        reason = f"canary step: {percent:g} %"
        if current.mode == "canary" and current.candidate == candidate:
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


@dataclass(frozen=True, slots=True)
class StepPlace:
    """Which step is watched: its number, how many there are, its traffic share."""

    number: int
    total: int
    percent: float


@task(**REDIS_RETRIES)
async def observe_canary_step(
    model: str,
    candidate: str,
    experiment_id: str,
    place: StepPlace,
    thresholds: Thresholds,
    watch: StepWatch,
    previous_p_value: float,
    redis_url: str,
) -> CanaryCheck:
    """Watch one step; returns at the first breach or with the step's final look.

    Every look logs and publishes the progress (predictions, gates so far, time left).
    """
    logger = get_run_logger()
    deadline = time.monotonic() + watch.duration_s
    p_value = previous_p_value
    async with aioredis.Redis.from_url(redis_url) as client:
        feedback = FeedbackStore(client)
        log = PredictionLog(client)
        step_drift = StepDrift(log, model, await log.last_id(model))
        start = await feedback.variant_stats(model, experiment_id)
        start_count = start["candidate"].predictions if "candidate" in start else 0
        while True:
            variants = await feedback.variant_stats(model, experiment_id)
            got = variants["candidate"].predictions if "candidate" in variants else 0
            step_predictions = got - start_count
            final = time.monotonic() >= deadline or (
                watch.stop_at_predictions is not None
                and step_predictions >= watch.stop_at_predictions
            )
            check = canary_check(
                variants,
                thresholds,
                percent=place.percent,
                step_predictions=step_predictions,
                previous_p_value=p_value,
                higher_is_better=watch.higher_is_better,
                final=final,
                drift=await step_drift.update(),
            )
            p_value = check.p_value
            if final or not check.passed:
                logger.info(
                    "%s canary %g %%: %s after %d candidate predictions%s",
                    model,
                    place.percent,
                    "passed" if check.passed else "FAILED",
                    step_predictions,
                    "" if check.passed else ": " + "; ".join(check.failures),
                )
                return check
            left = max(deadline - time.monotonic(), 0.0)
            await report_progress(_progress(model, candidate, place, check, thresholds, left))
            await asyncio.sleep(min(watch.poll_s, left))


def _progress(
    model: str,
    candidate: str,
    place: StepPlace,
    check: CanaryCheck,
    thresholds: Thresholds,
    left: float,
) -> Progress:
    gates = [
        f"error rate {format_percent(check.candidate.error_rate) if check.candidate else '-'}",
        f"drift PSI {drift_cell(check)}",
        "mSPRT waiting for outcomes"
        if check.sequential is None
        else f"mSPRT p={check.sequential.p_value:.3g}",
    ]
    return Progress(
        model,
        candidate,
        f"canary step {place.number}/{place.total}",
        place.percent,
        check.step_predictions,
        thresholds.min_predictions,
        left,
        gates,
    )


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


async def _ramp(
    model: str,
    candidate: str,
    plan: list[float],
    thresholds: Thresholds,
    watch: StepWatch,
    redis_url: str,
    *,
    promote: bool,
) -> tuple[str, list[CanaryCheck]]:
    """Run the steps in order; returns the experiment id and each step's final look.

    Raises:
        CanaryGateError: a step failed; the candidate was rolled back.
    """
    steps: list[tuple[CanaryCheck, str]] = []
    experiment_id = ""
    for number, percent in enumerate(plan, start=1):
        experiment_id = await set_canary_step(model, candidate, percent, redis_url)
        p_value = steps[-1][0].p_value if steps else 1.0
        place = StepPlace(number, len(plan), percent)
        check = await observe_canary_step(
            model, candidate, experiment_id, place, thresholds, watch, p_value, redis_url
        )
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
    return experiment_id, [c for c, _ in steps]


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
    duration = settings.step_duration_s if step_duration_s is None else step_duration_s
    watch = StepWatch(duration, poll_s, stop_at_predictions, higher_is_better)
    experiment_id, checks = await _ramp(
        model, candidate, plan, thresholds, watch, url, promote=promote
    )
    if promote:
        reason = f"canary passed {len(plan)} step(s) up to {plan[-1]:g} %"
        await promote_rollout(model, reason, url, "flow:canary")
    return CanaryReport(model, candidate, experiment_id, checks, promote)


if __name__ == "__main__":
    asyncio.run(canary_promotion(sys.argv[1], sys.argv[2]))
