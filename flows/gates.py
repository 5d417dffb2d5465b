"""Rollout gates shared by the shadow, canary and rollout flows, and their shared tasks.

The gates are pure (no Redis, no Prefect): a gate takes what was observed and the
thresholds of ``RolloutSettings`` and returns a
result object whose ``failures`` say, in words, every threshold that was crossed. The
flows raise the named errors below when a gate fails, so Prefect marks the run Failed.

Errors::

    ServekitError
    └── RolloutGateError (500)     a rollout gate failed (``model``, ``candidate``, ``failures``)
        ├── ShadowGateError        the shadow comparison failed
        └── CanaryGateError        a canary step failed; the rollout was rolled back

The tasks at the end (``rollback_rollout``, ``promote_rollout``) change rollout state for
every flow, with retries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import redis.asyncio as aioredis
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from redis.exceptions import RedisError

from services.errors import ServekitError
from services.rollout.prediction_log import ShadowPair
from services.rollout.state import RolloutStore
from services.rollout.statistics import (
    LatencySummary,
    SequentialResult,
    VariantStats,
    msprt_two_proportions,
    summarize_latencies,
)
from services.settings import RolloutSettings


class RolloutGateError(ServekitError):
    """A rollout gate failed; ``failures`` lists why."""

    def __init__(self, message: str, *, model: str, candidate: str, failures: list[str]) -> None:
        super().__init__(message, model=model, candidate=candidate, failures=failures)
        self.model = model
        self.candidate = candidate
        self.failures = failures


class ShadowGateError(RolloutGateError):
    """The candidate's shadow answers differ from the primary's, fail, or are too slow."""


class CanaryGateError(RolloutGateError):
    """A canary step crossed a threshold; the candidate was rolled back."""


def artifact_key(prefix: str, model: str) -> str:
    """A Prefect artifact key (lower-case letters, digits, dashes) for ``model``."""
    safe = "".join(c if c.isalnum() else "-" for c in model.lower())
    return f"{prefix}-{safe}"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The numbers a gate compares against (defaults: ``RolloutSettings``).

    Attributes:
        max_error_rate: most candidate errors per prediction.
        max_p99_latency_ratio: most candidate p99 over the primary's p99...
        latency_slack_ms: ...plus this many milliseconds, so that sub-millisecond noise
            on fast models does not fail a gate.
        min_agreement: least share of shadow rows where the candidate agrees.
        regression_rtol: a regression output agrees when within this relative error.
        alpha: level of the mSPRT on the business metric.
        tau2: mSPRT mixing variance.
    """

    max_error_rate: float = 0.01
    max_p99_latency_ratio: float = 1.2
    latency_slack_ms: float = 1.0
    min_agreement: float = 0.99
    regression_rtol: float = 1e-3
    alpha: float = 0.05
    tau2: float = 1e-4

    @classmethod
    def from_settings(cls, settings: RolloutSettings, **overrides: Any) -> Thresholds:
        """Thresholds of ``settings``, with ``overrides`` (None values ignored)."""
        base: dict[str, Any] = {
            "max_error_rate": settings.max_error_rate,
            "max_p99_latency_ratio": settings.max_p99_latency_ratio,
            "min_agreement": settings.min_agreement,
            "alpha": settings.alpha,
            "tau2": settings.msprt_tau2,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def latency_failure(
    primary_p99_ms: float, candidate_p99_ms: float, thresholds: Thresholds
) -> str | None:
    """Why the candidate's p99 is too slow, or None when it is within the gate."""
    if math.isnan(primary_p99_ms) or math.isnan(candidate_p99_ms):
        return None
    limit = primary_p99_ms * thresholds.max_p99_latency_ratio + thresholds.latency_slack_ms
    if candidate_p99_ms > limit:
        return (
            f"candidate p99 latency {candidate_p99_ms:.2f} ms > {limit:.2f} ms "
            f"(primary {primary_p99_ms:.2f} ms x {thresholds.max_p99_latency_ratio:g} "
            f"+ {thresholds.latency_slack_ms:g} ms)"
        )
    return None


def format_ms(value: float) -> str:
    """Milliseconds for a report table ("-" for NaN)."""
    return "-" if math.isnan(value) else f"{value:.2f}"


def format_percent(value: float) -> str:
    """A share as a percent for a report table ("-" for NaN)."""
    return "-" if math.isnan(value) else f"{value:.2%}"


# --------------------------------------------------------------------------- shadow

CompareKind = Literal["label", "regression"]


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """The candidate's shadow answers against the primary's.

    Attributes:
        pairs: mirrored requests compared.
        rows: rows in them.
        candidate_errors: pairs the candidate failed (errors and timeouts).
        error_rate: ``candidate_errors / pairs`` (NaN without pairs).
        kind: ``"label"`` (classifier: label agreement) or ``"regression"``.
        output: the output tensor compared.
        agreement: share of answered rows where the candidate agrees (NaN: none).
        mean_relative_error: mean relative error of answered rows (regression), or the
            share of flipped labels (classifier).
        identical: every pair answered, with every output equal to the primary's.
        primary_latency, candidate_latency: inference latency summaries.
    """

    pairs: int
    rows: int
    candidate_errors: int
    error_rate: float
    kind: CompareKind
    output: str | None
    agreement: float
    mean_relative_error: float
    identical: bool
    primary_latency: LatencySummary
    candidate_latency: LatencySummary

    @property
    def p50_delta_ms(self) -> float:
        """Candidate p50 minus primary p50."""
        return self.candidate_latency.p50_ms - self.primary_latency.p50_ms

    @property
    def p99_delta_ms(self) -> float:
        """Candidate p99 minus primary p99."""
        return self.candidate_latency.p99_ms - self.primary_latency.p99_ms


def _choose_output(sample: Any, label_output: str | None) -> tuple[CompareKind, str | None]:
    if label_output is not None:
        return "label", label_output
    if not isinstance(sample, Mapping) or not sample:
        return "regression", None
    if "label" in sample:
        return "label", "label"
    for name, values in sample.items():
        flat = np.asarray(values).ravel()
        if flat.size and np.issubdtype(flat.dtype, np.integer):
            return "label", str(name)
    return "regression", str(next(iter(sample)))


def _select(output: Any, name: str | None) -> np.ndarray:
    value = output[name] if name is not None and isinstance(output, Mapping) else output
    array = np.asarray(value)
    return array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)


def _all_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_all_equal(a[k], b[k]) for k in a)
    try:
        x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    except (TypeError, ValueError):
        return bool(a == b)
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-6, atol=1e-7, equal_nan=True))


def _row_scores(
    pair: ShadowPair, kind: CompareKind, name: str | None, regression_rtol: float
) -> list[float]:
    """Per row: 1.0/0.0 for a flipped/kept label, else the largest relative error.

    Outputs that cannot be compared (missing, other shape, not numbers) score 1.0 a row.
    """
    try:
        p, c = _select(pair.primary_output, name), _select(pair.candidate_output, name)
        if p.shape != c.shape:
            return [1.0] * len(p)
        if kind == "label":
            return (~np.all(p == c, axis=1)).astype(float).tolist()
        pf, cf = p.astype(float), c.astype(float)
        return np.max(np.abs(cf - pf) / np.maximum(np.abs(pf), 1e-12), axis=1).tolist()
    except (KeyError, TypeError, ValueError, IndexError):
        return [1.0] * pair.rows


def compare_shadow(
    pairs: Sequence[ShadowPair],
    *,
    label_output: str | None = None,
    regression_rtol: float = 1e-3,
) -> ShadowComparison:
    """Compare the candidate's answers with the primary's over ``pairs``.

    Outputs are the JSON of the runner's output tensors (``{name: rows}``). A classifier
    is compared on its label output (``label_output``; by default ``"label"`` or the first
    integer output), anything else on its first output with a relative tolerance.
    A pair whose shapes differ counts every row as a disagreement.
    """
    answered = [p for p in pairs if not p.candidate_error and p.candidate_output is not None]
    errors = len(pairs) - len(answered)
    sample = answered[0].primary_output if answered else None
    kind, name = _choose_output(sample, label_output)
    rows = agree = 0
    rel_errors: list[float] = []
    identical = errors == 0 and bool(pairs)
    for pair in answered:
        identical = identical and _all_equal(pair.primary_output, pair.candidate_output)
        scores = _row_scores(pair, kind, name, regression_rtol)
        rows += len(scores)
        agree += sum(
            score == 0.0 if kind == "label" else score <= regression_rtol for score in scores
        )
        rel_errors.extend(scores)
    return ShadowComparison(
        pairs=len(pairs),
        rows=rows,
        candidate_errors=errors,
        error_rate=errors / len(pairs) if pairs else math.nan,
        kind=kind,
        output=name,
        agreement=agree / rows if rows else math.nan,
        mean_relative_error=float(np.mean(rel_errors)) if rel_errors else math.nan,
        identical=identical,
        primary_latency=summarize_latencies([x.primary_latency_ms for x in pairs]),
        candidate_latency=summarize_latencies(
            [x.candidate_latency_ms for x in answered if x.candidate_latency_ms is not None]
        ),
    )


@dataclass(frozen=True, slots=True)
class ShadowGateResult:
    """The shadow gate's verdict: ``passed`` when ``failures`` is empty."""

    model: str
    candidate: str
    comparison: ShadowComparison
    thresholds: Thresholds
    min_pairs: int
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No threshold crossed."""
        return not self.failures


def shadow_gate(
    model: str,
    candidate: str,
    comparison: ShadowComparison,
    thresholds: Thresholds,
    *,
    min_pairs: int = 100,
) -> ShadowGateResult:
    """Check a shadow comparison against the thresholds (too few pairs fails too)."""
    failures = []
    c = comparison
    if c.pairs < min_pairs:
        failures.append(f"only {c.pairs} shadow pairs; need {min_pairs} to judge")
    if c.pairs and c.error_rate > thresholds.max_error_rate:
        failures.append(
            f"candidate error rate {c.error_rate:.2%} > {thresholds.max_error_rate:.2%}"
        )
    if not math.isnan(c.agreement) and c.agreement < thresholds.min_agreement:
        failures.append(
            f"agreement {c.agreement:.2%} ({c.kind} on {c.output}) < {thresholds.min_agreement:.2%}"
        )
    slow = latency_failure(c.primary_latency.p99_ms, c.candidate_latency.p99_ms, thresholds)
    if slow is not None:
        failures.append(slow)
    return ShadowGateResult(model, candidate, comparison, thresholds, min_pairs, failures)


# --------------------------------------------------------------------------- canary


@dataclass(frozen=True, slots=True)
class CanaryCheck:
    """One look at a canary step: counters of both variants and the gates' verdict.

    Attributes:
        percent: the step's candidate traffic share.
        primary, candidate: the experiment's per-variant counters (None: no traffic yet).
        step_predictions: candidate predictions since the step began.
        sequential: the mSPRT on the business metric (None until outcomes arrived).
        failures: thresholds crossed (empty: passing so far).
        final: whether this was the step's closing look (latency is judged only there).
    """

    percent: float
    primary: VariantStats | None
    candidate: VariantStats | None
    step_predictions: int
    sequential: SequentialResult | None
    failures: list[str]
    final: bool

    @property
    def passed(self) -> bool:
        """No threshold crossed."""
        return not self.failures

    @property
    def p_value(self) -> float:
        """The mSPRT's running p-value (1.0 before outcomes arrived)."""
        return self.sequential.p_value if self.sequential is not None else 1.0


def canary_check(
    variants: Mapping[str, VariantStats],
    thresholds: Thresholds,
    *,
    percent: float,
    step_predictions: int,
    min_predictions: int = 100,
    min_outcomes: int = 100,
    previous_p_value: float = 1.0,
    higher_is_better: bool = True,
    final: bool = False,
) -> CanaryCheck:
    """Judge a canary step from the experiment's per-variant counters.

    Error rate and the mSPRT are judged at every look once there are ``min_predictions``
    candidate predictions (the mSPRT stays valid however often it is peeked at); the p99
    latency ratio only at the step's final look, where too little candidate traffic
    fails the step too. The business metric is the share of positive outcomes among the
    predictions whose outcome arrived.
    """
    primary, candidate = variants.get("primary"), variants.get("candidate")
    failures: list[str] = []
    sequential = None
    enough = candidate is not None and candidate.predictions >= min_predictions
    if candidate is not None and enough and candidate.error_rate > thresholds.max_error_rate:
        failures.append(
            f"candidate error rate {candidate.error_rate:.2%} > {thresholds.max_error_rate:.2%} "
            f"({candidate.errors}/{candidate.predictions})"
        )
    if (
        primary is not None
        and candidate is not None
        and min(primary.outcomes, candidate.outcomes) >= max(min_outcomes, 1)
    ):
        sequential = msprt_two_proportions(
            primary.conversions,
            primary.outcomes,
            candidate.conversions,
            candidate.outcomes,
            tau2=thresholds.tau2,
            alpha=thresholds.alpha,
            higher_is_better=higher_is_better,
            previous_p_value=previous_p_value,
            min_samples=min_outcomes,
        )
        if sequential.decision == "candidate_worse":
            failures.append(
                f"business metric: candidate significantly worse (mSPRT p={sequential.p_value:.3g}"
                f" <= {thresholds.alpha:g}; diff {sequential.diff:+.4f})"
            )
    if final:
        if not enough:
            got = candidate.predictions if candidate is not None else 0
            failures.append(f"only {got} candidate predictions; need {min_predictions} to judge")
        elif primary is not None and candidate is not None:
            slow = latency_failure(primary.latency.p99_ms, candidate.latency.p99_ms, thresholds)
            if slow is not None:
                failures.append(slow)
    return CanaryCheck(percent, primary, candidate, step_predictions, sequential, failures, final)


# --------------------------------------------------------------------------- tasks


def retry_on_redis(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry Redis and network failures, not refusals."""
    return isinstance(getattr(state, "data", None), (RedisError, OSError))


REDIS_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [1, 5, 15],
    "retry_condition_fn": retry_on_redis,
    "cache_policy": NO_CACHE,
}
"""Task options of every task that reads or writes Redis."""


@task(**REDIS_RETRIES)
async def rollback_rollout(model: str, reason: str, redis_url: str, actor: str) -> None:
    """Drop the candidate, recording why; the primary keeps serving."""
    async with aioredis.Redis.from_url(redis_url) as client:
        await RolloutStore(client).rollback(model, reason=reason[:1000], actor=actor)
    get_run_logger().warning("rolled back %s: %s", model, reason)


@task(**REDIS_RETRIES)
async def promote_rollout(model: str, reason: str, redis_url: str, actor: str) -> str:
    """Make the candidate the primary; returns the new primary."""
    async with aioredis.Redis.from_url(redis_url) as client:
        state = await RolloutStore(client).promote(model, reason=reason[:1000], actor=actor)
    get_run_logger().info("promoted %s: version %s is primary (%s)", model, state.primary, reason)
    return state.primary
