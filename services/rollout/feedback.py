"""Outcome attribution and per-variant counters in Redis (``FeedbackStore``), read by the
A/B analysis in ``services.rollout.statistics``.

Redis layout of ``FeedbackStore`` (keys built by ``services.state.keys``: bytes, ``:``
escaped)::

    servekit:feedback:{request_id}                      hash, TTL: model, experiment,
                                                        variant, version, counters, outcome
    servekit:experiment:{model}:{experiment}:{variant}  hash: predictions, errors,
                                                        outcomes, conversions, outcome_sum,
                                                        latency_sum_ms, version
    ...:{variant}:latency                               hash: latency bucket -> count
    servekit:experiments:{model}                        zset: experiment -> first seen
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
from services.rollout.attribution import issued_at
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
    feedback_key,
)
from services.state.redis_clients import is_cluster

logger = logging.getLogger(__name__)

# (request_id, model, variant, version, experiment_id, latency_ms, error)
PredictionRecordIn = tuple[str, str, str, str, "str | None", float, bool]
# (request_id, model, variant, version, experiment_id)
AttributionIn = tuple[str, str, str, str, "str | None"]


class AttributionExpiredError(NotFoundError):
    """The prediction was answered longer ago than the attribution TTL: too late."""

    error_code = HTTPStatus.GONE


# Counts an outcome once: unknown request -> 0, already counted -> -1, else 1.
_OUTCOME_SCRIPT = """
local info = redis.call('HMGET', KEYS[1], 'counters', 'outcome', 'model', 'experiment', 'variant', 'version')
if not info[1] then return {0} end
if info[2] then return {-1} end
redis.call('HSET', KEYS[1], 'outcome', ARGV[1])
redis.call('HINCRBY', info[1], 'outcomes', 1)
if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', info[1], 'conversions', 1) end
redis.call('HINCRBYFLOAT', info[1], 'outcome_sum', ARGV[1])
return {1, info[3], info[4], info[5], info[6]}
"""

# On a Redis Cluster the request's hash and the variant's counters live in different slots,
# so one script cannot touch both: the claim marks the outcome (once) and names the
# counters, then a second script counts it there. A crash between the two loses that one
# outcome from the counters (it stays on the request's hash).
_CLAIM_SCRIPT = """
local info = redis.call('HMGET', KEYS[1], 'counters', 'outcome', 'model', 'experiment', 'variant', 'version')
if not info[1] then return {0} end
if info[2] then return {-1} end
redis.call('HSET', KEYS[1], 'outcome', ARGV[1])
return {1, info[3], info[4], info[5], info[6], info[1]}
"""
_COUNT_SCRIPT = """
redis.call('HINCRBY', KEYS[1], 'outcomes', 1)
if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', KEYS[1], 'conversions', 1) end
redis.call('HINCRBYFLOAT', KEYS[1], 'outcome_sum', ARGV[1])
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
        self._claim = redis.register_script(_CLAIM_SCRIPT)
        self._count = redis.register_script(_COUNT_SCRIPT)

    async def record_predictions(self, items: Sequence[PredictionRecordIn]) -> int:
        """Record many predictions in one round trip, counters summed per variant.

        An item with an empty request id is counted but not kept for outcome attribution.
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
        request_id: str,
        model: str,
        variant: str,
        version: str,
        experiment_id: str | None,
        latency_ms: float,
        error: bool = False,
    ) -> None:
        """Count one prediction for its variant and remember it for its outcome (1 trip).

        Raises:
            InvalidInputError: a bad request id (empty included), model name or variant.
        """
        item = (request_id, model, variant, version, experiment_id, latency_ms, error)
        _check_request_id(request_id)
        _check_record(item)
        await self._write([item])

    async def attribute(self, items: Sequence[AttributionIn]) -> None:
        """Keep answered requests for their outcome (one pipelined round trip, no counting)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id, model, variant, version, experiment_id in items:
                self._attribution(pipe, request_id, model, variant, version, experiment_id)
            await pipe.execute()

    def _attribution(
        self,
        pipe: Any,
        request_id: str,
        model: str,
        variant: str,
        version: str,
        experiment_id: str | None,
    ) -> None:
        experiment = experiment_id or BASELINE
        key = feedback_key(request_id)
        pipe.hset(
            key,
            mapping={
                "model": model,
                "experiment": experiment,
                "variant": variant,
                "version": version,
                "counters": experiment_counters_key(model, experiment, variant),
            },
        )
        pipe.expire(key, self._ttl)

    async def _write(self, items: Sequence[PredictionRecordIn]) -> None:
        """Write validated records: attributions, then one set of increments per variant."""
        tallies: dict[bytes, _Tally] = {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id, model, variant, version, experiment_id, latency_ms, error in items:
                experiment = experiment_id or BASELINE
                counters = experiment_counters_key(model, experiment, variant)
                if request_id:
                    self._attribution(pipe, request_id, model, variant, version, experiment_id)
                tally = tallies.get(counters)
                if tally is None:
                    tally = tallies[counters] = _Tally(model, experiment, variant)
                tally.add(version, latency_ms, error)
            now = self._clock()
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

    async def record_outcome(self, request_id: str, outcome: float | bool) -> Attribution:
        """Attribute ``outcome`` (> 0 is a conversion) to the prediction's variant, once.

        Raises:
            AttributionExpiredError: a gateway-issued id older than the TTL (410).
            NotFoundError: no prediction answered with this id within the TTL (404).
            ConflictError: this prediction's outcome was recorded already.
        """
        _check_request_id(request_id)
        value = float(outcome)
        if not math.isfinite(value):
            raise InvalidInputError("outcome must be a finite number", field="outcome")
        args = [repr(value)]
        if is_cluster(self._redis):
            result = await self._claim(keys=[feedback_key(request_id)], args=args)
            if result[0] == 1:
                await self._count(keys=[result[5]], args=args)
        else:
            result = await self._outcome(keys=[feedback_key(request_id)], args=args)
        if result[0] == 0:
            raise self._missing(request_id)
        if result[0] == -1:
            raise ConflictError(
                f"an outcome for request_id {request_id!r} was recorded already",
                request_id=request_id,
            )
        model, experiment, variant, version = (_text(v) for v in result[1:5])
        return Attribution(request_id, model, experiment, variant, version)

    def _missing(self, request_id: str) -> NotFoundError:
        """Expired (a time-ordered id older than the TTL) or unknown: say which."""
        issued = issued_at(request_id)
        if issued is not None and self._clock() - issued > self._ttl:
            return AttributionExpiredError(
                f"attribution of request_id {request_id!r} expired: predictions wait "
                f"{self._ttl} s for their outcome (SERVEKIT_ROLLOUT_FEEDBACK_TTL_S)",
                request_id=request_id,
            )
        return NotFoundError(
            f"unknown request_id {request_id!r}: no prediction was answered with it "
            f"within the attribution TTL ({self._ttl} s)",
            request_id=request_id,
        )

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
    request_id, model, variant = item[0], item[1], item[2]
    if request_id:  # "": counted, but not kept for outcome attribution
        _check_request_id(request_id)
    check_model_name(model)
    if variant not in VARIANTS:
        raise InvalidInputError(f"variant must be one of {VARIANTS}", field="variant")


def _check_request_id(request_id: str) -> None:
    if not request_id or len(request_id) > 200:
        raise InvalidInputError("request_id must be 1..200 characters", field="request_id")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
