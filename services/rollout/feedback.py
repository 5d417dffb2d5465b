"""Outcome attribution and per-variant counters in Redis (``FeedbackStore``), read by the
A/B analysis in ``services.rollout.statistics``.

An outcome is attributed from its signed request id alone (``services.rollout.signing``:
model, variant, version, experiment and issue time travel in the id), so nothing is
written per prediction for it. Redis layout of ``FeedbackStore`` (keys built by
``services.state.keys``: bytes, ``:`` escaped)::

    servekit:experiment:{model}:{experiment}:{variant}  hash: predictions, errors,
                                                        outcomes, conversions, outcome_sum,
                                                        latency_sum_ms, version
    ...:{variant}:latency                               hash: latency bucket -> count
    servekit:experiments:{model}                        zset: experiment -> first seen
    servekit:outcome:{<counters key>}:{request_id}      string, TTL: the outcome, counted

The outcome key is claimed with SET NX and the variant's counters incremented in one
script; its hash tag is the whole counters key, so both share a slot on a Redis Cluster.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import redis.asyncio as aioredis

from services.errors import ConflictError, InvalidInputError, NotFoundError
from services.rollout.signing import AnsweredPrediction
from services.rollout.statistics import (
    BASELINE,
    VARIANTS,
    ExperimentReport,
    VariantStats,
    analyze,
    latency_bucket,
    summarize_histogram,
)
from services.rollout.transitions import check_model_name
from services.state.keys import (
    experiment_counters_key,
    experiment_latency_key,
    experiments_key,
    outcome_key,
)

logger = logging.getLogger(__name__)

# (model, variant, version, experiment_id, latency_ms, error)
PredictionRecordIn = tuple[str, str, str, "str | None", float, bool]

# Replicas' clocks may disagree: an outcome's claim outlives its id's TTL by this much.
_CLOCK_SKEW_S = 300


class AttributionExpiredError(NotFoundError):
    """The prediction was answered longer ago than the attribution TTL: too late."""

    error_code = HTTPStatus.GONE


# Counts an outcome once: already counted -> 0, else 1. KEYS: the prediction's outcome key,
# its variant's counters (one slot: the outcome key's hash tag is the counters key).
# ARGV: the outcome, the claim's TTL, the counters' TTL.
_OUTCOME_SCRIPT = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[2], 'outcomes', 1)
if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', KEYS[2], 'conversions', 1) end
redis.call('HINCRBYFLOAT', KEYS[2], 'outcome_sum', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class Attribution:
    """Which model, experiment, variant and version an outcome was counted for."""

    request_id: str
    model: str
    experiment_id: str
    variant: str
    version: str


class FeedbackStore:
    """Per-variant experiment counters in Redis, fed by predictions and their outcomes.

    Args:
        redis: an asyncio Redis client.
        ttl_seconds: how long a prediction waits for its outcome.
        counter_ttl_seconds: how long an experiment's counters outlive their last write.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        ttl_seconds: int = 7 * 86_400,
        counter_ttl_seconds: int = 90 * 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._counter_ttl = counter_ttl_seconds
        self._clock = clock
        self._outcome = redis.register_script(_OUTCOME_SCRIPT)

    async def record_predictions(self, items: Sequence[PredictionRecordIn]) -> int:
        """Record many predictions in one round trip, counters summed per variant.

        Returns how many were recorded (invalid items are skipped and logged).
        """
        valid = []
        for item in items:
            try:
                _check_record(item)
            except InvalidInputError as exc:
                logger.warning("skipping a prediction record: %s", exc.message)
                continue
            valid.append(item)
        if valid:
            await self._write(valid)
        return len(valid)

    async def record_prediction(
        self,
        model: str,
        variant: str,
        version: str,
        experiment_id: str | None,
        latency_ms: float,
        error: bool = False,
    ) -> None:
        """Count one prediction for its variant (one round trip).

        Raises:
            InvalidInputError: a bad model name or variant.
        """
        item = (model, variant, version, experiment_id, latency_ms, error)
        _check_record(item)
        await self._write([item])

    async def _write(self, items: Sequence[PredictionRecordIn]) -> None:
        """Write validated records: one set of increments per variant."""
        tallies: dict[bytes, _Tally] = {}
        for model, variant, version, experiment_id, latency_ms, error in items:
            experiment = experiment_id or BASELINE
            counters = experiment_counters_key(model, experiment, variant)
            tally = tallies.get(counters)
            if tally is None:
                tally = tallies[counters] = _Tally(model, experiment, variant)
            tally.add(version, latency_ms, error)
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            for counters, tally in tallies.items():
                latency = experiment_latency_key(tally.model, tally.experiment, tally.variant)
                experiments = experiments_key(tally.model)
                pipe.hincrby(counters, "predictions", tally.predictions)
                if tally.errors:
                    pipe.hincrby(counters, "errors", tally.errors)
                pipe.hincrbyfloat(counters, "latency_sum_ms", tally.latency_sum_ms)
                pipe.hset(counters, "version", tally.version)
                for bucket, count in tally.buckets.items():
                    pipe.hincrby(latency, str(bucket), count)
                pipe.zadd(experiments, {tally.experiment: now}, nx=True)
                for key in (counters, latency, experiments):
                    pipe.expire(key, self._counter_ttl)
            await pipe.execute()

    async def record_outcome(
        self, prediction: AnsweredPrediction, outcome: float | bool
    ) -> Attribution:
        """Attribute ``outcome`` (> 0 is a conversion) to the prediction's variant, once.

        ``prediction`` is what its signed request id carries (``RequestSigner.verify``):
        one script claims the prediction's outcome key (SET NX, kept until the id expires)
        and counts the outcome on its variant's counters.

        Raises:
            InvalidInputError: a bad request id, model name, variant or outcome.
            AttributionExpiredError: answered longer ago than the TTL (410).
            ConflictError: this prediction's outcome was recorded already (409).
        """
        request_id, model, variant = prediction.request_id, prediction.model, prediction.variant
        _check_request_id(request_id)
        check_model_name(model)
        _check_variant(variant)
        value = float(outcome)
        if not math.isfinite(value):
            raise InvalidInputError("outcome must be a finite number", field="outcome")
        left_s = prediction.issued_at + self._ttl - self._clock()
        if left_s < 0:
            raise AttributionExpiredError(
                f"attribution of request_id {request_id!r} expired: predictions wait "
                f"{self._ttl} s for their outcome (SERVEKIT_ROLLOUT_FEEDBACK_TTL_S)",
                request_id=request_id,
            )
        experiment = prediction.experiment_id or BASELINE
        keys = [
            outcome_key(model, experiment, variant, request_id),
            experiment_counters_key(model, experiment, variant),
        ]
        claim_ttl = math.ceil(min(left_s, self._ttl)) + _CLOCK_SKEW_S
        args: list[str | int] = [repr(value), claim_ttl, self._counter_ttl]
        if not await self._outcome(keys=keys, args=args):
            raise ConflictError(
                f"an outcome for request_id {request_id!r} was recorded already",
                request_id=request_id,
            )
        return Attribution(request_id, model, experiment, variant, prediction.version)

    async def experiments(self, model: str) -> list[str]:
        """Experiment ids of ``model``, newest first."""
        check_model_name(model)
        members: Any = await self._redis.zrevrange(experiments_key(model), 0, -1)
        return [_text(e) for e in members]

    async def variant_stats(self, model: str, experiment_id: str) -> dict[str, VariantStats]:
        """Per-variant counters of one experiment, in one pipelined round trip."""
        check_model_name(model)
        async with self._redis.pipeline(transaction=False) as pipe:
            for variant in VARIANTS:
                pipe.hgetall(experiment_counters_key(model, experiment_id, variant))
                pipe.hgetall(experiment_latency_key(model, experiment_id, variant))
            raw = await pipe.execute()
        table = {}
        for i, variant in enumerate(VARIANTS):
            counters = {_text(k): _text(v) for k, v in raw[2 * i].items()}
            if not counters:
                continue
            histogram = {int(k): int(v) for k, v in raw[2 * i + 1].items()}
            table[variant] = VariantStats(
                variant=variant,
                version=counters.get("version"),
                predictions=int(counters.get("predictions", 0)),
                errors=int(counters.get("errors", 0)),
                outcomes=int(counters.get("outcomes", 0)),
                conversions=int(counters.get("conversions", 0)),
                outcome_sum=float(counters.get("outcome_sum", 0.0)),
                latency=summarize_histogram(histogram, float(counters.get("latency_sum_ms", 0.0))),
            )
        return table

    async def report(
        self,
        model: str,
        experiment_id: str | None = None,
        *,
        candidate_percent: float | None = None,
        alpha: float = 0.05,
        tau2: float = 1e-4,
    ) -> ExperimentReport:
        """The report of ``experiment_id`` (default: the model's newest experiment).

        Pass ``candidate_percent`` (the split the experiment ran at) for the SRM check.
        """
        if experiment_id is None:
            known = await self.experiments(model)
            if not known:
                raise NotFoundError(f"no experiment recorded for model {model!r}", model=model)
            experiment_id = known[0]
        variants = await self.variant_stats(model, experiment_id)
        if not variants:
            raise NotFoundError(
                f"no data for experiment {experiment_id!r} of model {model!r}",
                model=model,
                experiment_id=experiment_id,
            )
        return analyze(
            model,
            experiment_id,
            variants,
            candidate_percent=candidate_percent,
            alpha=alpha,
            tau2=tau2,
        )


@dataclass(slots=True)
class _Tally:
    """One variant's counts within one write, sent as one set of increments."""

    model: str
    experiment: str
    variant: str
    version: str = ""
    predictions: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    buckets: collections.Counter[int] = field(default_factory=collections.Counter)

    def add(self, version: str, latency_ms: float, error: bool) -> None:
        """Count one prediction; the last version seen is the one recorded."""
        self.version = version
        self.predictions += 1
        self.errors += int(error)
        self.latency_sum_ms += float(latency_ms)
        self.buckets[latency_bucket(latency_ms)] += 1


def _check_record(item: PredictionRecordIn) -> None:
    """Raise InvalidInputError naming the bad field of one prediction record."""
    check_model_name(item[0])
    _check_variant(item[1])


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise InvalidInputError(f"variant must be one of {VARIANTS}", field="variant")


def _check_request_id(request_id: str) -> None:
    if not request_id or len(request_id) > 200:
        raise InvalidInputError("request_id must be 1..200 characters", field="request_id")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
