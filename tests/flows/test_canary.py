"""The canary promotion flow on the real fraud model, real Redis and Prefect's harness.

Traffic runs through ``TrafficRouter`` while the flow ramps the candidate; each request's
outcome (was the fraud call right?) is the business metric the mSPRT watches.
"""

from __future__ import annotations

from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.canary import canary_plan, canary_promotion
from flows.gates import CanaryGateError
from flows.rollout import rollout
from services.errors import InvalidInputError
from services.settings import RolloutSettings
from tests.flows.conftest import MODEL

FAST: dict[str, Any] = {
    "steps": [50.0, 100.0],
    "step_duration_s": 15.0,
    "min_predictions": 100,
    "min_outcomes": 100,
    "stop_at_predictions": 150,
    "poll_s": 0.05,
    # In-process test latencies are a few ms with scheduler noise; the slow candidate
    # below adds 100 ms, far past this allowance.
    "latency_slack_ms": 15.0,
}


# Good and identical candidates: the test process's event loop (Prefect's server runs in a
# thread of it) stalls for tens to hundreds of milliseconds on a loaded machine, on either side; the p99 of
# 120 pairs is their 2nd-largest. The latency gate itself is tested by the slow candidate
# (+100 ms).
GOOD_SLACK_MS = 250.0


async def _artifacts(key: str, n: int) -> list[str]:
    """The newest ``n`` artifacts under ``key``, newest first."""
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=n,
        )
    return [str(a.data) for a in found]


async def test_good_candidate_is_promoted(rig_factory: Any, redis_url: str) -> None:
    rig = await rig_factory()
    good = {**FAST, "latency_slack_ms": GOOD_SLACK_MS}
    report = await rig.run_with_traffic(canary_promotion(MODEL, "2", redis_url=redis_url, **good))
    assert report.promoted and [s.percent for s in report.steps] == [50.0, 100.0]
    assert all(s.passed for s in report.steps)
    state = await rig.store.get(MODEL)
    assert (state.mode, state.primary, state.candidate) == ("off", "2", None)
    actions = [e.action for e in await rig.store.history(MODEL, 4)]
    assert actions[:3] == ["promote", "set_percent", "canary"]
    step2, step1 = await _artifacts("canary-fraud", 2)
    assert "step 1: 50 %: PASSED" in step1 and "next step: 100 %" in step1
    assert "step 2: 100 %: PASSED" in step2 and "Action: promoting" in step2
    # The report accumulates: the last version holds a row per step.
    assert "| 1 | 50 % |" in step2 and "| 2 | 100 % |" in step2
    assert "drift PSI" in step2 and "(overridden)" in step2


# The drift gate is set out of reach where another gate is under test (a flipped
# candidate's predictions drift as soon as both variants have enough of them), and the
# mSPRT where the drift gate is.
NO_DRIFT_GATE = {"max_drift_psi": 1e9}
NO_OUTCOME_GATE = {"min_outcomes": 10**9}


@pytest.mark.parametrize(
    ("faults", "options", "expected"),
    [
        ({"flip": True}, NO_DRIFT_GATE, "business metric: candidate significantly worse"),
        ({"flip": True}, NO_OUTCOME_GATE, "prediction drift PSI"),
        ({"error_rate": 0.2}, {}, "candidate error rate"),
        # +100 ms, the drift gate off: on a loaded machine the primary's own p99 grows and a
        # 50/50 split's probability PSI can pass 0.25 by chance; neither is under test here.
        ({"extra_latency_s": 0.1}, NO_DRIFT_GATE, "candidate p99 latency"),
    ],
    ids=["flipped-labels", "flipped-labels-drift", "20pct-errors", "slow"],
)
async def test_bad_candidate_is_rolled_back(
    rig_factory: Any,
    redis_url: str,
    faults: dict[str, Any],
    options: dict[str, Any],
    expected: str,
) -> None:
    rig = await rig_factory(bad_version="2", **faults)
    with pytest.raises(CanaryGateError) as info:
        await rig.run_with_traffic(
            canary_promotion(MODEL, "2", redis_url=redis_url, **{**FAST, **options})
        )
    assert any(expected in f for f in info.value.failures), info.value.failures
    assert "step 1 (50 %)" in info.value.message  # stopped at the first step
    state = await rig.store.get(MODEL)
    assert (state.mode, state.primary, state.candidate) == ("off", "1", None)
    (last,) = await rig.store.history(MODEL, 1)
    assert last.action == "rollback" and expected in last.reason and last.actor == "flow:canary"
    (text,) = await _artifacts("canary-fraud", 1)
    assert "step 1: 50 %: FAILED" in text and "Action: rolled back" in text


async def test_identical_candidate_skips_the_canary(rig_factory: Any, redis_url: str) -> None:
    rig = await rig_factory()
    report = await rig.run_with_traffic(
        rollout(
            MODEL,
            "2",
            shadow_window_s=20.0,
            shadow_options={
                "stop_at_pairs": 120,
                "poll_s": 0.05,
                "latency_slack_ms": GOOD_SLACK_MS,
            },
            redis_url=redis_url,
        )
    )
    assert report.path == "blue-green" and report.canary is None and report.promoted
    state = await rig.store.get(MODEL)
    assert (state.mode, state.primary) == ("off", "2")
    (text,) = await _artifacts("rollout-fraud", 1)
    assert "blue-green" in text and "skip_canary_if_identical = True" in text


async def test_rollout_runs_the_canary_when_asked(rig_factory: Any, redis_url: str) -> None:
    rig = await rig_factory()
    options = {k: v for k, v in FAST.items() if k not in ("steps", "step_duration_s")}
    options["latency_slack_ms"] = GOOD_SLACK_MS
    report = await rig.run_with_traffic(
        rollout(
            MODEL,
            "2",
            skip_canary_if_identical=False,
            shadow_window_s=20.0,
            canary_steps=[50.0, 100.0],
            step_duration_s=15.0,
            shadow_options={
                "stop_at_pairs": 120,
                "poll_s": 0.05,
                "latency_slack_ms": GOOD_SLACK_MS,
            },
            canary_options=options,
            redis_url=redis_url,
        )
    )
    assert report.path == "canary" and report.canary is not None and report.promoted
    assert (await rig.store.get(MODEL)).primary == "2"


def test_canary_plan_defaults_to_the_settings_and_checks_steps() -> None:
    settings = RolloutSettings(canary_steps=[10.0, 100.0])
    assert canary_plan(None, settings) == [10.0, 100.0]
    assert canary_plan([1.0, 2.0], settings) == [1.0, 2.0]
    with pytest.raises(InvalidInputError, match="must increase") as err:
        canary_plan([50.0, 25.0], settings)
    assert err.value.field == "steps"
    with pytest.raises(InvalidInputError, match=r"\(0, 100\]"):
        canary_plan([5.0, 150.0], settings)
