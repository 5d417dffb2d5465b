"""Feedback: per-variant counters and outcome attribution in a real Redis."""

from __future__ import annotations

import inspect

import pytest
import redis.asyncio as aioredis

from services.errors import ConflictError, InvalidInputError, NotFoundError
from services.rollout.feedback import AttributionExpiredError, FeedbackStore
from services.rollout.signing import AnsweredPrediction
from services.settings import RolloutSettings
from services.state.keys import (
    experiment_counters_key,
    experiment_latency_key,
    experiments_key,
    outcome_key,
)

NOW = 1_700_000_000


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def answered(
    request_id: str,
    variant: str = "primary",
    version: str = "v1",
    experiment_id: str | None = "exp-1",
    issued_at: int = NOW,
    model: str = "fraud",
) -> AnsweredPrediction:
    """What the signed request id of one answered prediction carries."""
    return AnsweredPrediction(request_id, model, variant, version, experiment_id, issued_at)


async def test_feedback_attributes_outcomes_to_variants(aredis: aioredis.Redis) -> None:
    store = FeedbackStore(aredis, ttl_seconds=3600, clock=FakeClock())
    for i in range(90):
        await store.record_prediction("fraud", "primary", "v1", "exp-1", 10.0 + i % 5)
    for i in range(10):
        await store.record_prediction("fraud", "candidate", "v2", "exp-1", 20.0, error=(i == 0))
    for i in range(9):
        attribution = await store.record_outcome(answered(f"p{i}"), 1)
    assert (attribution.variant, attribution.version, attribution.experiment_id) == (
        "primary",
        "v1",
        "exp-1",
    )
    for rid, outcome in (("c1", True), ("c2", 0.0), ("c3", 4.5)):
        await store.record_outcome(answered(rid, "candidate", "v2"), outcome)

    with pytest.raises(ConflictError):
        await store.record_outcome(answered("c1", "candidate", "v2"), 1)
    with pytest.raises(InvalidInputError) as info:
        await store.record_outcome(answered("c4", "candidate", "v2"), float("nan"))
    assert info.value.field == "outcome"
    with pytest.raises(InvalidInputError) as info:
        await store.record_outcome(answered("c5", "other"), 1)
    assert info.value.field == "variant"
    with pytest.raises(InvalidInputError) as info:
        await store.record_prediction("fraud", "other", "v1", "exp-1", 1.0)
    assert info.value.field == "variant"

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


async def test_an_outcome_needs_nothing_written_when_the_prediction_was(
    aredis: aioredis.Redis,
) -> None:
    """Its signed id is enough: no key of the prediction's, even its counters lost."""
    store = FeedbackStore(aredis, ttl_seconds=3600, clock=FakeClock())
    attribution = await store.record_outcome(answered("lost", "candidate", "v2", None), 1)
    assert (attribution.experiment_id, attribution.variant, attribution.version) == (
        "baseline",
        "candidate",
        "v2",
    )
    stats = await store.variant_stats("fraud", "baseline")
    assert (stats["candidate"].predictions, stats["candidate"].outcomes) == (0, 1)
    keys = {k async for k in aredis.scan_iter()}
    assert keys == {
        outcome_key("fraud", "baseline", "candidate", "lost"),
        experiment_counters_key("fraud", "baseline", "candidate"),
    }


async def test_an_outcome_counts_once_per_prediction(aredis: aioredis.Redis) -> None:
    store = FeedbackStore(aredis, ttl_seconds=3600, clock=FakeClock())
    await store.record_outcome(answered("r1"), 1)
    for again in (answered("r1"), answered("r1", issued_at=NOW - 5)):
        with pytest.raises(ConflictError, match="recorded already"):
            await store.record_outcome(again, 0)
    # The same (client-chosen) request id answered by another model is another prediction.
    await store.record_outcome(answered("r1", model="churn"), 1)
    stats = await store.variant_stats("fraud", "exp-1")
    assert (stats["primary"].outcomes, stats["primary"].conversions) == (1, 1)


async def test_an_outcome_after_the_ttl_is_expired_from_the_issue_time(
    aredis: aioredis.Redis,
) -> None:
    clock = FakeClock(NOW + 3600)
    store = FeedbackStore(aredis, ttl_seconds=3600, clock=clock)
    attribution = await store.record_outcome(answered("just-in-time"), 1)  # TTL reached
    assert attribution.request_id == "just-in-time"
    clock.now += 1
    with pytest.raises(AttributionExpiredError) as expired:
        await store.record_outcome(answered("too-late"), 1)
    assert expired.value.error_code == 410 and "expired" in expired.value.message
    assert isinstance(expired.value, NotFoundError)
    assert not await aredis.exists(outcome_key("fraud", "exp-1", "primary", "too-late"))
    stats = await store.variant_stats("fraud", "exp-1")
    assert stats["primary"].outcomes == 1


async def test_report_picks_the_newest_experiment(aredis: aioredis.Redis) -> None:
    clock = FakeClock()
    store = FeedbackStore(aredis, clock=clock)
    with pytest.raises(NotFoundError):
        await store.report("fraud")
    await store.record_prediction("fraud", "primary", "v1", "exp-old", 1.0)
    clock.now += 100
    await store.record_prediction("fraud", "candidate", "v2", "exp-new", 1.0)
    clock.now += 100
    await store.record_prediction("fraud", "primary", "v1", None, 1.0)  # no experiment
    clock.now += 100
    await store.record_prediction("fraud", "candidate", "v2", "exp-old", 1.0)
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
            "fraud",
            "candidate" if i % 3 == 0 else "primary",
            "2" if i % 3 == 0 else "1",
            "exp",
            5.0 + i,
            i == 4,
        )
        for i in range(12)
    ]
    for model, variant, version, exp, ms, err in items:
        await one.record_prediction(model, variant, version, exp, ms, err)
    single = await one.variant_stats("fraud", "exp")
    await aredis.flushdb()
    assert await one.record_predictions([*items, ("fraud", "other", "1", "exp", 1.0, False)]) == 12
    batched = await one.variant_stats("fraud", "exp")
    assert batched == single


async def test_ttls_of_outcome_claims_and_counters(aredis: aioredis.Redis) -> None:
    clock = FakeClock(NOW + 600)  # the outcome arrives 10 minutes after its prediction
    store = FeedbackStore(aredis, ttl_seconds=3600, counter_ttl_seconds=7200, clock=clock)
    await store.record_prediction("fraud", "primary", "1", "exp", 2.0)
    for key in (
        experiment_counters_key("fraud", "exp", "primary"),
        experiment_latency_key("fraud", "exp", "primary"),
        experiments_key("fraud"),
    ):
        assert 3600 < await aredis.ttl(key) <= 7200
    counters = experiment_counters_key("fraud", "exp", "primary")
    await aredis.expire(counters, 100)
    await store.record_outcome(answered("r1", version="1", experiment_id="exp"), 1)
    # The claim is kept while the id is valid (plus some clock skew), not a full TTL more.
    claim = await aredis.ttl(outcome_key("fraud", "exp", "primary", "r1"))
    assert 3000 - 5 < claim <= 3000 + 300
    assert 3600 < await aredis.ttl(counters) <= 7200  # an outcome is a write too
    # An id issued "later" by a replica whose clock runs ahead: kept a TTL at most.
    ahead = answered("r2", version="1", experiment_id="exp", issued_at=NOW + 86_400)
    await store.record_outcome(ahead, 1)
    assert await aredis.ttl(outcome_key("fraud", "exp", "primary", "r2")) <= 3600 + 300


def test_ttl_defaults_match_the_settings() -> None:
    fields = RolloutSettings.model_fields
    params = inspect.signature(FeedbackStore).parameters
    assert params["ttl_seconds"].default == fields["feedback_ttl_s"].default == 7 * 86_400
    assert params["counter_ttl_seconds"].default == fields["counter_ttl_s"].default == 90 * 86_400
