"""Faults in the middle of a canary step: the flow's process killed, Redis unreachable.

The canary watches each step in observation intervals and saves the step's progress in
Redis after each one: a run killed with SIGKILL is run again and takes the step up where
the last interval left it; a Redis outage during an interval is retried from the last
saved interval. The rollout state is never left half-written: every change is one Lua
script (state, history entry and notice together).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
from prefect.settings import PREFECT_API_URL

from flows.canary import canary_promotion
from flows.rollout import rollout
from services.rollout.feedback import FeedbackStore
from services.rollout.state import RolloutStore
from services.rollout.transitions import CanaryProgress
from tests.flows.conftest import MODEL
from tests.flows.faults import kill, private_redis, record_fault, spawn, wait_for

GOOD_SLACK_MS = 40.0


def _history_matches(state: Any, last: Any) -> bool:
    """The newest history entry is the change that wrote ``state`` (nothing half-written)."""
    return last.revision == state.revision and last.state == state


async def _kill_mid_canary(
    rig: Any, kind: str, kwargs: dict[str, Any], tmp_path: Path
) -> CanaryProgress:
    """Run flow ``kind`` in a child, SIGKILL it once a canary step saved two intervals,
    check the rollout state is whole; returns the step's saved progress."""
    log = tmp_path / f"{kind}-child.log"
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = spawn(["tests.flows.flow_child", kind, json.dumps(kwargs)], log, env)
    try:

        async def two_intervals() -> CanaryProgress | None:
            progress = await rig.store.canary_progress(MODEL)
            return progress if progress is not None and progress.intervals >= 2 else None

        await wait_for(
            two_intervals, timeout_s=180, what="two saved intervals", proc=child, log=log
        )
    finally:
        kill(child)
    # Consistent after the kill: still the candidate's canary, state and history agree.
    state = await rig.store.get(MODEL)
    assert (state.mode, state.candidate) == ("canary", "2")
    (last,) = await rig.store.history(MODEL, 1)
    assert _history_matches(state, last)
    saved = await rig.store.canary_progress(MODEL)
    assert saved is not None and saved.experiment_id == state.experiment_id
    assert state.percent == saved.percent
    return saved


async def test_a_killed_canary_run_resumes_its_step_when_run_again(
    rig_factory: Any, redis_url: str, tmp_path: Path
) -> None:
    rig = await rig_factory()
    options: dict[str, Any] = {
        "steps": [50.0, 100.0],
        "step_duration_s": 6.0,
        "interval_s": 1.0,
        "poll_s": 0.1,
        "min_predictions": 50,
        "min_outcomes": 100,
        "latency_slack_ms": GOOD_SLACK_MS,
        "redis_url": redis_url,
    }
    stop = asyncio.Event()
    driver = asyncio.create_task(rig.drive(stop))
    try:
        args = {"model": MODEL, "candidate": "2", **options}
        saved = await _kill_mid_canary(rig, "canary", args, tmp_path)
        killed = time.monotonic()
        requests_at_kill = rig.stats.requests

        async def resumed() -> float | None:
            progress = await rig.store.canary_progress(MODEL)
            resumed = progress is not None and progress.resumed >= 1
            return time.monotonic() - killed if resumed else None

        watcher = asyncio.create_task(wait_for(resumed, timeout_s=120, what="the resume"))
        report = await canary_promotion(MODEL, "2", **options)
        finished_s = time.monotonic() - killed
        resumed_s = await watcher
    finally:
        stop.set()
        await driver
    assert report.promoted and report.resumed_at is not None
    step, observed = report.resumed_at
    assert (step, observed) == (saved.step, saved.observed_s) and observed >= 2 * 0.9
    assert [s.percent for s in report.steps] == options["steps"][step - 1 :]
    assert report.experiment_id == saved.experiment_id  # the same experiment's counters
    final = await rig.store.get(MODEL)
    assert (final.mode, final.primary, final.candidate) == ("off", "2", None)
    actions = [e.action for e in await rig.store.history(MODEL, 10)]
    assert actions.count("canary") == 1 and actions[0] == "promote"  # never started over
    assert await rig.store.canary_progress(MODEL) is None
    assert rig.stats.errors == 0
    record_fault(
        "canary_worker_sigkill",
        fault="the canary flow's process SIGKILLed mid-step, then the flow run again",
        lost=rig.stats.errors,
        lost_unit="failed requests",
        recover_s=round(resumed_s, 3),
        requests_lost=rig.stats.errors,
        requests_served=rig.stats.requests,
        requests_during_recovery=rig.stats.requests - requests_at_kill,
        step_resumed=step,
        watched_s_kept=round(observed, 3),
        interval_s=options["interval_s"],
        seconds_to_resume_after_kill=round(resumed_s, 3),
        seconds_to_finish_after_kill=round(finished_s, 3),
        outcome="promoted",
    )


async def test_a_rollout_killed_mid_canary_resumes_the_canary_without_a_second_shadow(
    rig_factory: Any, redis_url: str, tmp_path: Path
) -> None:
    rig = await rig_factory()
    options: dict[str, Any] = {
        "skip_canary_if_identical": False,
        "shadow_window_s": 20.0,
        "canary_steps": [50.0, 100.0],
        "step_duration_s": 5.0,
        "shadow_options": {"stop_at_pairs": 120, "poll_s": 0.05, "latency_slack_ms": GOOD_SLACK_MS},
        "canary_options": {
            "interval_s": 1.0,
            "poll_s": 0.1,
            "min_predictions": 50,
            "latency_slack_ms": GOOD_SLACK_MS,
        },
        "redis_url": redis_url,
    }
    stop = asyncio.Event()
    driver = asyncio.create_task(rig.drive(stop))
    try:
        args = {"model": MODEL, "candidate": "2", **options}
        saved = await _kill_mid_canary(rig, "rollout", args, tmp_path)
        report = await rollout(MODEL, "2", **options)
    finally:
        stop.set()
        await driver
    assert report.resumed and report.shadow is None and report.promoted
    assert report.canary is not None and report.canary.resumed_at is not None
    assert report.canary.resumed_at[0] == saved.step
    actions = [e.action for e in await rig.store.history(MODEL, 20)]
    assert actions.count("shadow") == 1 and actions.count("canary") == 1
    assert actions[0] == "promote"


async def test_a_canary_run_terminated_mid_step_rolls_back_cleanly(
    aredis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """SIGTERM (a worker shutting down) is a crash Prefect sees: the hook rolls back."""
    store = RolloutStore(aredis)
    await store.set_primary(MODEL, "1", reason="test")
    args = {
        "model": MODEL,
        "candidate": "2",
        "steps": [50.0, 100.0],
        "step_duration_s": 60.0,
        "interval_s": 0.5,
        "poll_s": 0.1,
        "redis_url": redis_url,
    }
    log = tmp_path / "canary-term.log"
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = spawn(["tests.flows.flow_child", "canary", json.dumps(args)], log, env)
    try:

        async def two_intervals() -> CanaryProgress | None:
            progress = await store.canary_progress(MODEL)
            return progress if progress is not None and progress.intervals >= 2 else None

        await wait_for(
            two_intervals, timeout_s=180, what="two saved intervals", proc=child, log=log
        )
        child.send_signal(signal.SIGTERM)
        await asyncio.to_thread(child.wait, 180)  # a loaded machine stops slowly
    finally:
        kill(child)
    state = await store.get(MODEL)
    assert (state.mode, state.primary, state.candidate) == ("off", "1", None), log.read_text()
    (last,) = await store.history(MODEL, 1)
    assert _history_matches(state, last) and last.actor == "flow:hook"
    assert await store.canary_progress(MODEL) is None


async def _retried_intervals() -> int:
    """Interval tasks that ran more than once (retried after an error)."""
    async with get_client() as client:
        runs = await client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="observe_canary_interval")),
            limit=200,
        )
    return sum(1 for r in runs if r.run_count > 1)


async def test_a_redis_outage_in_one_interval_keeps_the_steps_progress(tmp_path: Path) -> None:
    with private_redis(tmp_path) as (plain_url, server):
        # Short timeouts: a paused server fails the interval's reads instead of hanging.
        url = plain_url + "?socket_timeout=0.3&socket_connect_timeout=0.3"
        async with aioredis.Redis.from_url(plain_url) as client:
            store = RolloutStore(client)
            await store.set_primary(MODEL, "1", reason="test")
            seen: list[tuple[int, float]] = []
            retried_before = await _retried_intervals()
            run = asyncio.create_task(
                canary_promotion(
                    MODEL,
                    "2",
                    steps=[100.0],
                    step_duration_s=6.0,
                    interval_s=0.5,
                    poll_s=0.1,
                    min_predictions=0,
                    redis_url=url,
                )
            )

            async def progress_after(n: int) -> CanaryProgress | None:
                progress = await store.canary_progress(MODEL)
                if progress is not None:
                    seen.append((progress.intervals, progress.observed_s))
                return progress if progress is not None and progress.intervals >= n else None

            first = await wait_for(lambda: progress_after(1), timeout_s=90, what="an interval")
            await _serve(client, first.experiment_id, 20)
            before = await wait_for(lambda: progress_after(3), timeout_s=90, what="3 intervals")
            os.kill(server.pid, signal.SIGSTOP)
            paused = time.monotonic()
            try:
                await wait_for(
                    lambda: _more(_retried_intervals, retried_before),
                    timeout_s=120,
                    what="a retried interval",
                )
            finally:
                os.kill(server.pid, signal.SIGCONT)
            outage_s = time.monotonic() - paused
            after = await wait_for(
                lambda: progress_after(before.intervals + 1), timeout_s=60, what="a later interval"
            )
            resumed_s = time.monotonic() - paused - outage_s
            await _serve(client, first.experiment_id, 20)
            report = await run
            state = await store.get(MODEL)
            (last,) = await store.history(MODEL, 1)
    assert report.promoted and report.steps[-1].final
    assert (state.mode, state.primary) == ("off", "2") and _history_matches(state, last)
    # Nothing reset: the intervals and the watched time only ever grew.
    assert after.observed_s >= before.observed_s and after.experiment_id == before.experiment_id
    assert seen == sorted(seen)
    record_fault(
        "canary_redis_outage",
        fault="the canary's Redis paused (SIGSTOP) during an observation interval",
        lost=round(max(before.observed_s - after.observed_s, 0.0), 3),
        lost_unit="saved watched seconds",
        recover_s=round(resumed_s, 3),
        intervals_kept=before.intervals,
        watched_s_kept=round(before.observed_s, 3),
        outage_s=round(outage_s, 3),
        seconds_to_next_saved_interval_after_outage=round(resumed_s, 3),
        outcome="promoted",
    )


async def _serve(client: aioredis.Redis, experiment_id: str, n: int) -> None:
    """Count ``n`` answered predictions of each variant (no traffic runs in this test)."""
    feedback = FeedbackStore(client)
    for variant, version in (("primary", "1"), ("candidate", "2")):
        for _ in range(n):
            await feedback.record_prediction(MODEL, variant, version, experiment_id, 1.0)


async def _more(count: Any, than: int) -> bool:
    return bool(await count() > than)
