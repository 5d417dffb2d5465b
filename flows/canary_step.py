"""One canary step, watched in short observation intervals whose progress is saved.

A step lasts hours to days. Rather than one task polling for the whole step (where one
Redis blip or a dead worker would start the observation over), each interval of
``interval_s`` is its own retried task: it looks at the counters every ``poll_s`` and,
at its end, saves the step's progress (``CanaryProgress``: time watched, the count the
step started from, the prediction stream id it started at, the running mSPRT p-value)
in Redis next to the rollout state. A task retried after a Redis error starts again
from the last saved interval; a flow run that died (worker killed) is re-run and takes
the step up where the last interval left it. At most one interval of watching is lost.

The save is refused when the model is no longer in that canary (rolled back by an
operator or a hook, another candidate started): the step then stops with
``CanaryInterruptedError`` instead of writing over another rollout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from prefect import get_run_logger, task

from flows.artifacts import format_percent
from flows.canary_drift import StepDrift
from flows.canary_report import drift_cell
from flows.gates import CanaryCheck, Thresholds, canary_check
from flows.rollout_progress import Progress, report_progress
from flows.rollout_tasks import REDIS_RETRIES
from services.errors import ConflictError
from services.rollout.feedback import FeedbackStore
from services.rollout.prediction_log import PredictionLog
from services.rollout.state import RolloutStore
from services.rollout.transitions import CanaryProgress
from services.state.redis_clients import connect


class CanaryInterruptedError(ConflictError):
    """The model's rollout is no longer the canary being watched (rolled back, replaced)."""


@dataclass(frozen=True, slots=True)
class StepWatch:
    """How each canary step is watched.

    Attributes:
        duration_s: time at the step (watched time: while no run watches, it stands still).
        poll_s: how often the counters are read.
        stop_at_predictions: end the step once it saw this many candidate predictions.
        higher_is_better: whether a positive outcome is good (conversions) or bad.
        interval_s: an observation interval; the progress is saved after each.
        progress_ttl_s: how long saved progress outlives its last save.
    """

    duration_s: float
    poll_s: float
    stop_at_predictions: int | None
    higher_is_better: bool
    interval_s: float = 60.0
    progress_ttl_s: int = 90 * 86_400


@dataclass(frozen=True, slots=True)
class StepPlace:
    """Which step is watched: its number, how many there are, its traffic share."""

    number: int
    total: int
    percent: float


async def _save(store: RolloutStore, progress: CanaryProgress, watch: StepWatch) -> None:
    if not await store.save_canary_progress(progress, watch.progress_ttl_s):
        state = await store.find(progress.model)
        now = "no state" if state is None else f"mode {state.mode}, candidate {state.candidate}"
        raise CanaryInterruptedError(
            f"{progress.model} is no longer in the canary of version {progress.candidate} "
            f"(experiment {progress.experiment_id}; now {now}): the step stops",
            model=progress.model,
        )


@task(**REDIS_RETRIES)
async def canary_under_way(model: str, candidate: str, redis_url: str) -> bool:
    """Whether ``model`` is in ``candidate``'s canary with saved step progress: a run
    that died after its shadow stage had passed (the rollout flow then resumes the
    canary instead of shadowing again)."""
    async with connect(redis_url) as client:
        store = RolloutStore(client)
        progress = await store.canary_progress(model)
        if progress is None or progress.candidate != candidate:
            return False
        return progress.continues(await store.find(model))


@task(**REDIS_RETRIES)
async def resume_point(
    model: str, candidate: str, plan: list[float], redis_url: str
) -> CanaryProgress | None:
    """The saved progress to resume from, when the model is still in this candidate's
    canary at a step of ``plan``; None to start at the first step."""
    async with connect(redis_url) as client:
        store = RolloutStore(client)
        progress = await store.canary_progress(model)
        if progress is None or progress.candidate != candidate:
            return None
        if not progress.continues(await store.find(model)):
            return None
    if progress.step > len(plan) or plan[progress.step - 1] != progress.percent:
        return None
    get_run_logger().info(
        "%s: resuming canary step %d (%g %%) after %.0f s watched, %d interval(s)",
        model,
        progress.step,
        progress.percent,
        progress.observed_s,
        progress.intervals,
    )
    return progress


@task(**REDIS_RETRIES)
async def begin_canary_step(
    model: str,
    candidate: str,
    experiment_id: str,
    place: StepPlace,
    p_value: float,
    watch: StepWatch,
    redis_url: str,
) -> CanaryProgress:
    """The step's saved progress when it was begun already (counted as a resume), else a
    new one starting at the current counters; saved either way."""
    async with connect(redis_url) as client:
        store = RolloutStore(client)
        saved = await store.canary_progress(model)
        if (
            saved is not None
            and (saved.candidate, saved.experiment_id) == (candidate, experiment_id)
            and (saved.step, saved.percent) == (place.number, place.percent)
        ):
            progress = saved.model_copy(update={"resumed": saved.resumed + 1})
        else:
            stats = await FeedbackStore(client).variant_stats(model, experiment_id)
            now = time.time()
            progress = CanaryProgress(
                model=model,
                candidate=candidate,
                experiment_id=experiment_id,
                step=place.number,
                percent=place.percent,
                since_id=await PredictionLog(client).last_id(model),
                start_count=stats["candidate"].predictions if "candidate" in stats else 0,
                p_value=p_value,
                started_at=now,
                updated_at=now,
            )
        await _save(store, progress, watch)
    return progress


@task(**REDIS_RETRIES)
async def observe_canary_interval(
    place: StepPlace,
    thresholds: Thresholds,
    watch: StepWatch,
    progress: CanaryProgress,
    drift: StepDrift,
    redis_url: str,
) -> tuple[CanaryCheck, CanaryProgress]:
    """Watch one interval of a step from ``progress`` (the last saved); returns the last
    look and the progress saved at the interval's end.

    It ends early at a breach or at the step's end (its duration or
    ``stop_at_predictions``). A retry starts again from ``progress``.
    """
    span = min(watch.interval_s, max(watch.duration_s - progress.observed_s, 0.0))
    t0 = time.monotonic()
    p_value = progress.p_value
    async with connect(redis_url) as client:
        feedback, log = FeedbackStore(client), PredictionLog(client)
        while True:
            variants = await feedback.variant_stats(progress.model, progress.experiment_id)
            got = variants["candidate"].predictions if "candidate" in variants else 0
            step_predictions = got - progress.start_count
            elapsed = time.monotonic() - t0
            observed = progress.observed_s + elapsed
            final = observed >= watch.duration_s or (
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
                drift=await drift.update(log),
            )
            p_value = check.p_value
            if final or not check.passed or elapsed >= span:
                break
            left = max(watch.duration_s - observed, 0.0)
            await report_progress(_progress(progress, place, check, thresholds, left))
            await asyncio.sleep(min(watch.poll_s, span - elapsed))
        saved = progress.model_copy(
            update={
                "observed_s": observed,
                "p_value": p_value,
                "intervals": progress.intervals + 1,
                "updated_at": time.time(),
            }
        )
        await _save(RolloutStore(client), saved, watch)
    return check, saved


async def watch_canary_step(
    place: StepPlace,
    thresholds: Thresholds,
    watch: StepWatch,
    progress: CanaryProgress,
    redis_url: str,
) -> tuple[CanaryCheck, CanaryProgress]:
    """Watch a step interval by interval from ``progress``; the step's last look."""
    drift = StepDrift(None, progress.model, progress.since_id)
    while True:
        check, progress = await observe_canary_interval(
            place, thresholds, watch, progress, drift, redis_url
        )
        if check.final or not check.passed:
            get_run_logger().info(
                "%s canary %g %%: %s after %d candidate predictions, %.0f s watched%s",
                progress.model,
                place.percent,
                "passed" if check.passed else "FAILED",
                check.step_predictions,
                progress.observed_s,
                "" if check.passed else ": " + "; ".join(check.failures),
            )
            return check, progress


def _progress(
    progress: CanaryProgress,
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
        progress.model,
        progress.candidate,
        f"canary step {place.number}/{place.total}",
        place.percent,
        check.step_predictions,
        thresholds.min_predictions,
        left,
        gates,
    )
