"""Feedback: per-variant counters and outcome attribution in a real Redis."""

from __future__ import annotations

import inspect

import pytest
import redis.asyncio as aioredis

from services.errors import ConflictError, InvalidInputError, NotFoundError
from services.rollout.feedback import FeedbackStore
from services.settings import RolloutSettings
from services.state.keys import (
    experiment_counters_key,
    experiment_latency_key,
    experiments_key,
    feedback_key,
)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_feedback_attributes_outcomes_to_variants(aredis: aioredis.Redis) -> None:
    store = FeedbackStore(aredis, ttl_seconds=3600, clock=FakeClock())
    for i in range(90):
        await store.record_prediction(f"p{i}", "fraud", "primary", "v1", "exp-1", 10.0 + i % 5)
    for i in range(10):
        await store.record_prediction(
            f"c{i}", "fraud", "candidate", "v2", "exp-1", 20.0, error=(i == 0)
        )
    for i in range(9):
        attribution = await store.record_outcome(f"p{i}", 1)
    assert (attribution.variant, attribution.version, attribution.experiment_id) == (
        "primary",
        "v1",
        "exp-1",
    )
    await store.record_outcome("c1", True)
    await store.record_outcome("c2", 0.0)
    await store.record_outcome("c3", 4.5)

    with pytest.raises(NotFoundError):
        await store.record_outcome("nope", 1)
    with pytest.raises(ConflictError):
        await store.record_outcome("c1", 1)
    with pytest.raises(InvalidInputError) as info:
        await store.record_outcome("c4", float("nan"))
    assert info.value.field == "outcome"
    with pytest.raises(InvalidInputError) as info:
        await store.record_prediction("x", "fraud", "other", "v1", "exp-1", 1.0)
    assert info.value.field == "variant"

    ttl = await aredis.ttl(feedback_key("p0"))
    assert 0 < ttl <= 3600

    report = await store.report("fraud", candidate_percent=10)
    assert report.experiment_id == "exp-1"
    primary, candidate = report.variants["primary"], report.variants["candidate"]
    assert (primary.predictions, primary.conversions, primary.outcomes) == (90, 9, 9)
    assert (candidate.predictions, candidate.errors) == (10, 1)
    assert (candidate.outcomes, candidate.conversions, candidate.outcome_sum) == (3, 2, 5.5)
    assert candidate.version == "v2"
    assert primary.latency.mean_ms == pytest.approx(12.0)
    assert 10.0 * 0.9 <= primary.latency.p50_ms <= 14.0 * 1.1
    assert report.srm is not None and not report.srm.mismatch
    assert report.conversion_test is not None
    assert report.sequential is not None and report.sequential.decision == "continue"


async def test_report_picks_the_newest_experiment(aredis: aioredis.Redis) -> None:
    clock = FakeClock()
    store = FeedbackStore(aredis, clock=clock)
    with pytest.raises(NotFoundError):
        await store.report("fraud")
    await store.record_prediction("a", "fraud", "primary", "v1", "exp-old", 1.0)
    clock.now += 100
    await store.record_prediction("b", "fraud", "candidate", "v2", "exp-new", 1.0)
    clock.now += 100
    await store.record_prediction("c", "fraud", "primary", "v1", None, 1.0)  # no experiment
    clock.now += 100
    await store.record_prediction("d", "fraud", "candidate", "v2", "exp-old", 1.0)
    # Ordered by first sight: a later write to an old experiment does not move it.
    assert await store.experiments("fraud") == ["baseline", "exp-new", "exp-old"]
    assert (await store.report("fraud")).experiment_id == "baseline"
    old = await store.report("fraud", "exp-old")
    assert old.variants["primary"].predictions == old.variants["candidate"].predictions == 1
    with pytest.raises(NotFoundError):
        await store.report("fraud", "exp-none")


async def test_batched_records_count_like_single_ones(aredis: aioredis.Redis) -> None:
    one = FeedbackStore(aredis, clock=FakeClock())
    items = [
        (
            f"r{i}",
            "fraud",
            "candidate" if i % 3 == 0 else "primary",
            "2" if i % 3 == 0 else "1",
            "exp",
            5.0 + i,
            i == 4,
        )
        for i in range(12)
    ]
    for rid, model, variant, version, exp, ms, err in items:
        await one.record_prediction(rid, model, variant, version, exp, ms, err)
    single = await one.variant_stats("fraud", "exp")
    await aredis.flushdb()
    assert (
        await one.record_predictions(
            [*items, ("x" * 300, "fraud", "primary", "1", "exp", 1.0, False)]
        )
        == 12
    )
    batched = await one.variant_stats("fraud", "exp")
    assert batched == single
    # An empty request id is counted, but not kept for attribution.
    assert await one.record_predictions([("", "fraud", "primary", "1", "exp", 1.0, False)]) == 1
    after = await one.variant_stats("fraud", "exp")
    assert after["primary"].predictions == single["primary"].predictions + 1
    attribution = await one.record_outcome("r3", 1)
    assert (attribution.variant, attribution.version) == ("candidate", "2")


async def test_ttls_of_attributions_and_counters(aredis: aioredis.Redis) -> None:
    store = FeedbackStore(aredis, ttl_seconds=3600, counter_ttl_seconds=7200)
    await store.record_prediction("r1", "fraud", "primary", "1", "exp", 2.0)
    assert 0 < await aredis.ttl(feedback_key("r1")) <= 3600
    for key in (
        experiment_counters_key("fraud", "exp", "primary"),
        experiment_latency_key("fraud", "exp", "primary"),
        experiments_key("fraud"),
    ):
        assert 3600 < await aredis.ttl(key) <= 7200


def test_ttl_defaults_match_the_settings() -> None:
    fields = RolloutSettings.model_fields
    params = inspect.signature(FeedbackStore).parameters
    assert params["ttl_seconds"].default == fields["feedback_ttl_s"].default == 7 * 86_400
    assert params["counter_ttl_seconds"].default == fields["counter_ttl_s"].default == 90 * 86_400
