"""A/B and canary analysis (pure) and the Redis counters it reads (``FeedbackStore``).

Analysis, variant B (the candidate) against variant A (the primary):

- ``srm_check``: sample-ratio mismatch, a chi-square test of the observed split against
  the configured one. A mismatch means the assignment or the logging is broken and no
  other number of the experiment can be trusted.
- ``two_proportion_ztest``: the fixed-horizon test, valid when looked at once.
- ``msprt_two_proportions``: the mixture sequential probability ratio test (Johari et al.,
  "Always Valid Inference", normal approximation, mixing distribution N(0, tau2) on the
  difference). Its p-value stays valid however often it is peeked at, so a canary or A/B
  test may stop the first time it crosses ``alpha``.

The analysis counts predictions as trials and positive outcomes as conversions. With
user-level assignment the requests of one user are correlated, so the tests are somewhat
optimistic for heavy users; the SRM check is on predictions too.

Redis layout of ``FeedbackStore`` (keys as in ``services.keys``: bytes, ``:`` escaped)::

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import redis.asyncio as aioredis
from scipy import stats

from services.errors import ConflictError, InvalidInputError, NotFoundError
from services.keys import NAMESPACE, escape
from services.rollout import check_model_name

logger = logging.getLogger(__name__)

# (request_id, model, variant, version, experiment_id, latency_ms, error)
PredictionRecordIn = tuple[str, str, str, str, "str | None", float, bool]

Decision = Literal["continue", "candidate_better", "candidate_worse"]
Alternative = Literal["two-sided", "larger", "smaller"]

BASELINE = "baseline"
"""Experiment id that traffic outside any experiment is counted under."""
VARIANTS = ("primary", "candidate")

# Latency histogram: bucket 0 is [0, 0.1 ms], bucket i is (0.1 * 1.1**(i-1), 0.1 * 1.1**i]:
# quantiles within 10 %, about 140 buckets up to a minute, only the non-empty ones stored.
LATENCY_BASE_MS = 0.1
LATENCY_GROWTH = 1.1
LATENCY_MAX_BUCKET = 200


# --------------------------------------------------------------------------- latencies


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency of one variant, in milliseconds (NaN where there are no samples)."""

    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


_EMPTY_LATENCY = LatencySummary(0, math.nan, math.nan, math.nan, math.nan, math.nan)


def summarize_latencies(samples_ms: Sequence[float]) -> LatencySummary:
    """Exact summary of raw latency samples."""
    if len(samples_ms) == 0:
        return _EMPTY_LATENCY
    a = np.asarray(samples_ms, dtype=float)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return LatencySummary(
        len(a), float(a.mean()), float(p50), float(p95), float(p99), float(a.max())
    )


def latency_bucket(latency_ms: float) -> int:
    """The histogram bucket of one latency."""
    if latency_ms <= LATENCY_BASE_MS:
        return 0
    index = math.ceil(math.log(latency_ms / LATENCY_BASE_MS) / math.log(LATENCY_GROWTH) - 1e-9)
    return min(index, LATENCY_MAX_BUCKET)


def bucket_bounds_ms(index: int) -> tuple[float, float]:
    """Lower and upper bound of histogram bucket ``index``."""
    upper = LATENCY_BASE_MS * LATENCY_GROWTH**index
    return (0.0 if index == 0 else upper / LATENCY_GROWTH), upper


def histogram_quantile(counts: Mapping[int, int], q: float) -> float:
    """Quantile ``q`` (0..1) of a latency histogram, interpolated within its bucket."""
    total = sum(counts.values())
    if total == 0:
        return math.nan
    rank = q * total
    seen = 0
    for index in sorted(counts):
        n = counts[index]
        if n and seen + n >= rank:
            low, high = bucket_bounds_ms(index)
            return low + (high - low) * max(rank - seen, 0.0) / n
        seen += n
    return bucket_bounds_ms(max(counts))[1]


def summarize_histogram(counts: Mapping[int, int], total_ms: float) -> LatencySummary:
    """Summary of a latency histogram (quantiles within a bucket's 10 %)."""
    count = sum(counts.values())
    if count == 0:
        return _EMPTY_LATENCY
    top = max(i for i, n in counts.items() if n)
    return LatencySummary(
        count,
        total_ms / count,
        histogram_quantile(counts, 0.50),
        histogram_quantile(counts, 0.95),
        histogram_quantile(counts, 0.99),
        bucket_bounds_ms(top)[1],
    )


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True, slots=True)
class VariantStats:
    """Counts of one variant of an experiment."""

    variant: str
    version: str | None
    predictions: int
    errors: int
    outcomes: int
    conversions: int
    outcome_sum: float
    latency: LatencySummary

    @property
    def error_rate(self) -> float:
        """Errors per prediction (NaN without predictions)."""
        return self.errors / self.predictions if self.predictions else math.nan

    @property
    def conversion_rate(self) -> float:
        """Positive outcomes per prediction: unreported outcomes count as negative."""
        return self.conversions / self.predictions if self.predictions else math.nan


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One served prediction, for summarizing from a list (the prediction stream)."""

    variant: str
    latency_ms: float
    error: bool = False
    outcome: float | None = None
    version: str | None = None


def summarize_variants(records: Sequence[PredictionRecord]) -> dict[str, VariantStats]:
    """Per-variant counts, rates and exact latency summaries of ``records``."""
    by_variant: dict[str, list[PredictionRecord]] = {}
    for record in records:
        by_variant.setdefault(record.variant, []).append(record)
    table = {}
    for variant, rows in by_variant.items():
        outcomes = [r.outcome for r in rows if r.outcome is not None]
        table[variant] = VariantStats(
            variant=variant,
            version=rows[-1].version,
            predictions=len(rows),
            errors=sum(r.error for r in rows),
            outcomes=len(outcomes),
            conversions=sum(o > 0 for o in outcomes),
            outcome_sum=float(sum(outcomes)),
            latency=summarize_latencies([r.latency_ms for r in rows]),
        )
    return table


# --------------------------------------------------------------------------- tests


@dataclass(frozen=True, slots=True)
class SRMResult:
    """Sample-ratio mismatch check: ``mismatch`` when ``p_value < alpha``."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    mismatch: bool


def srm_check(
    observed: Sequence[int], expected_shares: Sequence[float], alpha: float = 0.001
) -> SRMResult:
    """Chi-square test of ``observed`` counts against ``expected_shares`` (any scale).

    The usual threshold is strict (0.001): the check runs on every look at every
    experiment, and a true mismatch on large samples has a tiny p-value anyway.
    """
    if len(observed) != len(expected_shares) or len(observed) < 2:
        raise InvalidInputError(
            "observed and expected_shares need >= 2 equal-length entries", field="observed"
        )
    if any(s < 0 for s in expected_shares) or sum(expected_shares) <= 0:
        raise InvalidInputError(
            "expected shares must be >= 0 and not all 0", field="expected_shares"
        )
    total = sum(observed)
    scale = sum(expected_shares)
    expected = tuple(total * s / scale for s in expected_shares)
    if total == 0:
        return SRMResult(tuple(observed), expected, 0.0, 1.0, False)
    if any(o > 0 and e == 0 for o, e in zip(observed, expected, strict=True)):
        # Traffic where none was configured: a certain mismatch.
        return SRMResult(tuple(observed), expected, math.inf, 0.0, True)
    pairs = [(o, e) for o, e in zip(observed, expected, strict=True) if e > 0]
    if len(pairs) < 2:
        return SRMResult(tuple(observed), expected, 0.0, 1.0, False)
    chi2, p_value = stats.chisquare([o for o, _ in pairs], [e for _, e in pairs])
    return SRMResult(tuple(observed), expected, float(chi2), float(p_value), bool(p_value < alpha))


@dataclass(frozen=True, slots=True)
class ZTestResult:
    """Two-proportion z-test of B against A; ``diff = rate_b - rate_a``."""

    rate_a: float
    rate_b: float
    diff: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def _check_counts(successes: int, n: int, name: str) -> None:
    if n < 1 or not 0 <= successes <= n:
        raise InvalidInputError(
            f"need n >= 1 and 0 <= successes <= n (got {successes}/{n})", field=name
        )


def two_proportion_ztest(
    successes_a: int,
    n_a: int,
    successes_b: int,
    n_b: int,
    alternative: Alternative = "two-sided",
    confidence: float = 0.95,
) -> ZTestResult:
    """Pooled two-proportion z-test; the confidence interval uses unpooled errors.

    ``alternative="larger"`` tests whether B's rate is above A's.
    """
    _check_counts(successes_a, n_a, "n_a")
    _check_counts(successes_b, n_b, "n_b")
    rate_a, rate_b = successes_a / n_a, successes_b / n_b
    diff = rate_b - rate_a
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = diff / se if se > 0 else 0.0
    if alternative == "two-sided":
        p_value = 2 * stats.norm.sf(abs(z))
    elif alternative == "larger":
        p_value = stats.norm.sf(z)
    else:
        p_value = stats.norm.cdf(z)
    se_ci = math.sqrt(rate_a * (1 - rate_a) / n_a + rate_b * (1 - rate_b) / n_b)
    half = stats.norm.ppf(0.5 + confidence / 2) * se_ci
    return ZTestResult(rate_a, rate_b, diff, z, float(min(p_value, 1.0)), diff - half, diff + half)


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """One look of the mSPRT. ``p_value`` is always valid; the interval too."""

    decision: Decision
    p_value: float
    log_likelihood_ratio: float
    diff: float
    ci_low: float
    ci_high: float
    n_a: int
    n_b: int


def msprt_two_proportions(
    successes_a: int,
    n_a: int,
    successes_b: int,
    n_b: int,
    *,
    tau2: float = 1e-4,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    previous_p_value: float = 1.0,
    min_samples: int = 100,
) -> SequentialResult:
    """Mixture SPRT of ``rate_b - rate_a = 0``, normal approximation (Johari et al.).

    With the difference ``d`` estimated with variance ``V`` (pooled Bernoulli variance),
    the mixture likelihood ratio under ``theta ~ N(0, tau2)`` is
    ``sqrt(V / (V + tau2)) * exp(tau2 * d**2 / (2 * V * (V + tau2)))`` and the always-valid
    p-value is the running minimum of its inverse. Stopping the first time it drops to
    ``alpha`` keeps the false-positive rate under ``alpha`` (Ville's inequality).

    Args:
        successes_a, n_a: conversions and trials of the primary.
        successes_b, n_b: conversions and trials of the candidate.
        tau2: mixing variance: about the square of the effect sizes worth detecting
            (1e-4: differences of about one percentage point).
        alpha: the test's level.
        higher_is_better: False when the rate is a bad thing (errors).
        previous_p_value: the p-value of the previous look (running minimum).
        min_samples: below this many trials in either arm, only continue.

    Returns:
        The decision, the always-valid p-value and confidence interval of the difference.
    """
    _check_counts(successes_a, n_a, "n_a")
    _check_counts(successes_b, n_b, "n_b")
    if tau2 <= 0:
        raise InvalidInputError("tau2 must be > 0", field="tau2")
    diff = successes_b / n_b - successes_a / n_a
    pooled = (successes_a + successes_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0 or min(n_a, n_b) < min_samples:
        return SequentialResult(
            "continue", previous_p_value, 0.0, diff, -math.inf, math.inf, n_a, n_b
        )
    shrink = variance + tau2
    log_lr = 0.5 * math.log(variance / shrink) + tau2 * diff**2 / (2 * variance * shrink)
    p_value = min(previous_p_value, math.exp(-log_lr) if log_lr > 0 else 1.0)
    half = math.sqrt(variance * shrink / tau2 * (math.log(shrink / variance) - 2 * math.log(alpha)))
    decision: Decision = "continue"
    if p_value <= alpha and diff != 0:  # an exact tie names no winner
        better = (diff > 0) == higher_is_better
        decision = "candidate_better" if better else "candidate_worse"
    return SequentialResult(decision, p_value, log_lr, diff, diff - half, diff + half, n_a, n_b)


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    """Per-variant table and the tests of one experiment."""

    model: str
    experiment_id: str
    variants: dict[str, VariantStats]
    srm: SRMResult | None
    conversion_test: ZTestResult | None
    sequential: SequentialResult | None


def analyze(
    model: str,
    experiment_id: str,
    variants: Mapping[str, VariantStats],
    *,
    candidate_percent: float | None = None,
    alpha: float = 0.05,
    tau2: float = 1e-4,
    srm_alpha: float = 0.001,
) -> ExperimentReport:
    """Run the SRM check (when the split is known) and the conversion tests."""
    primary, candidate = variants.get("primary"), variants.get("candidate")
    srm = conversion = sequential = None
    if candidate_percent is not None:
        srm = srm_check(
            [v.predictions if v else 0 for v in (primary, candidate)],
            [100.0 - candidate_percent, candidate_percent],
            alpha=srm_alpha,
        )
    if primary and candidate and primary.predictions and candidate.predictions:
        counts = (
            primary.conversions,
            primary.predictions,
            candidate.conversions,
            candidate.predictions,
        )
        conversion = two_proportion_ztest(*counts, confidence=1 - alpha)
        sequential = msprt_two_proportions(*counts, tau2=tau2, alpha=alpha)
    return ExperimentReport(model, experiment_id, dict(variants), srm, conversion, sequential)


# --------------------------------------------------------------------------- Redis


def feedback_key(request_id: str) -> bytes:
    """Redis key of one prediction's attribution."""
    return b":".join((NAMESPACE, b"feedback", escape(request_id)))


def counters_key(model: str, experiment_id: str, variant: str) -> bytes:
    """Redis key of one variant's counters in one experiment."""
    return b":".join(
        (NAMESPACE, b"experiment", escape(model), escape(experiment_id), escape(variant))
    )


def latency_key(model: str, experiment_id: str, variant: str) -> bytes:
    """Redis key of one variant's latency histogram in one experiment."""
    return counters_key(model, experiment_id, variant) + b":latency"


def experiments_key(model: str) -> bytes:
    """Redis key of the experiments of ``model``, scored by when first seen."""
    return b":".join((NAMESPACE, b"experiments", escape(model)))


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
        sums: dict[bytes, dict[str, Any]] = {}
        valid = 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id, model, variant, version, experiment_id, latency_ms, error in items:
                try:
                    if request_id:  # "": counted, but not kept for outcome attribution
                        _check_request_id(request_id)
                    check_model_name(model)
                    if variant not in VARIANTS:
                        raise InvalidInputError(
                            f"variant must be one of {VARIANTS}", field="variant"
                        )
                except InvalidInputError as exc:
                    logger.warning("skipping a prediction record: %s", exc.message)
                    continue
                valid += 1
                experiment = experiment_id or BASELINE
                counters = counters_key(model, experiment, variant)
                if request_id:
                    key = feedback_key(request_id)
                    pipe.hset(
                        key,
                        mapping={
                            "model": model,
                            "experiment": experiment,
                            "variant": variant,
                            "version": version,
                            "counters": counters,
                        },
                    )
                    pipe.expire(key, self._ttl)
                s = sums.setdefault(
                    counters,
                    {
                        "model": model,
                        "experiment": experiment,
                        "latency": latency_key(model, experiment, variant),
                        "n": 0,
                        "errors": 0,
                        "ms": 0.0,
                        "buckets": collections.Counter(),
                    },
                )
                s["n"] += 1
                s["errors"] += int(error)
                s["ms"] += float(latency_ms)
                s["version"] = version
                s["buckets"][str(latency_bucket(latency_ms))] += 1
            now = self._clock()
            for counters, s in sums.items():
                pipe.hincrby(counters, "predictions", s["n"])
                if s["errors"]:
                    pipe.hincrby(counters, "errors", s["errors"])
                pipe.hincrbyfloat(counters, "latency_sum_ms", s["ms"])
                pipe.hset(counters, "version", s["version"])
                for bucket_name, count in s["buckets"].items():
                    pipe.hincrby(s["latency"], bucket_name, count)
                experiments = experiments_key(s["model"])
                pipe.zadd(experiments, {s["experiment"]: now}, nx=True)
                for key in (counters, s["latency"], experiments):
                    pipe.expire(key, self._counter_ttl)
            if valid:
                await pipe.execute()
        return valid

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
        """Count one prediction for its variant and remember it for its outcome (1 trip)."""
        _check_request_id(request_id)
        check_model_name(model)
        if variant not in VARIANTS:
            raise InvalidInputError(f"variant must be one of {VARIANTS}", field="variant")
        experiment = experiment_id or BASELINE
        counters = counters_key(model, experiment, variant)
        latency = latency_key(model, experiment, variant)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                feedback_key(request_id),
                mapping={
                    "model": model,
                    "experiment": experiment,
                    "variant": variant,
                    "version": version,
                    "counters": counters,
                },
            )
            pipe.expire(feedback_key(request_id), self._ttl)
            pipe.hincrby(counters, "predictions", 1)
            if error:
                pipe.hincrby(counters, "errors", 1)
            pipe.hincrbyfloat(counters, "latency_sum_ms", float(latency_ms))
            pipe.hset(counters, "version", version)
            pipe.hincrby(latency, str(latency_bucket(latency_ms)), 1)
            pipe.zadd(experiments_key(model), {experiment: self._clock()}, nx=True)
            for key in (counters, latency, experiments_key(model)):
                pipe.expire(key, self._counter_ttl)
            await pipe.execute()

    async def record_outcome(self, request_id: str, outcome: float | bool) -> Attribution:
        """Attribute ``outcome`` (> 0 is a conversion) to the prediction's variant, once.

        Raises:
            NotFoundError: no prediction with this id (or it is older than the TTL).
            ConflictError: this prediction's outcome was recorded already.
        """
        _check_request_id(request_id)
        value = float(outcome)
        if not math.isfinite(value):
            raise InvalidInputError("outcome must be a finite number", field="outcome")
        result = await self._outcome(keys=[feedback_key(request_id)], args=[repr(value)])
        if result[0] == 0:
            raise NotFoundError(
                f"no prediction with request_id {request_id!r}", request_id=request_id
            )
        if result[0] == -1:
            raise ConflictError(
                f"an outcome for request_id {request_id!r} was recorded already",
                request_id=request_id,
            )
        model, experiment, variant, version = (_text(v) for v in result[1:5])
        return Attribution(request_id, model, experiment, variant, version)

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
                pipe.hgetall(counters_key(model, experiment_id, variant))
                pipe.hgetall(latency_key(model, experiment_id, variant))
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


def _check_request_id(request_id: str) -> None:
    if not request_id or len(request_id) > 200:
        raise InvalidInputError("request_id must be 1..200 characters", field="request_id")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
