"""Rollout gates shared by the shadow, canary and rollout flows.

The gates are pure (no Redis, no Prefect): a gate takes what was observed and the
``Thresholds`` (from ``RolloutSettings``, the one place they are declared) and returns a
result object whose ``failures`` say, in words, every threshold that was crossed. The
flows raise the named errors below when a gate fails, so Prefect marks the run Failed.

Errors::

    ServekitError
    └── RolloutGateError (500)     a rollout gate failed (``model``, ``candidate``, ``failures``)
        ├── ShadowGateError        the shadow comparison failed
        └── CanaryGateError        a canary step failed; the rollout was rolled back
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flows.prediction_drift import PredictionDrift
from flows.shadow_comparison import ShadowComparison
from services.errors import ServekitError
from services.rollout.statistics import SequentialResult, VariantStats, msprt_two_proportions
from services.settings import RolloutSettings


class RolloutGateError(ServekitError):
    """A rollout gate failed; ``failures`` lists why."""

    def __init__(self, message: str, *, model: str, candidate: str, failures: list[str]) -> None:
        super().__init__(message, model=model, candidate=candidate, failures=failures)
        self.model = model
        self.candidate = candidate
        self.failures = failures


class ShadowGateError(RolloutGateError):
    """The candidate's shadow answers differ from the primary's, fail, or are too slow.

    ``result`` holds the failed comparison when the gate judged one.
    """

    result: ShadowGateResult | None = None


class CanaryGateError(RolloutGateError):
    """A canary step crossed a threshold; the candidate was rolled back."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The numbers a gate compares against; see ``RolloutSettings`` for each one's meaning.

    Attributes:
        max_error_rate: most candidate errors per prediction.
        max_p99_latency_ratio: most candidate p99 over the primary's p99...
        latency_slack_ms: ...plus this many milliseconds.
        min_agreement: least share of shadow rows where the candidate agrees.
        regression_rtol: a regression output agrees when within this relative error.
        alpha: level of the mSPRT on the business metric.
        tau2: mSPRT mixing variance.
        min_pairs: fewest shadow pairs to judge.
        min_predictions: fewest candidate predictions to judge a canary step.
        min_outcomes: outcomes per variant before the mSPRT is run.
        max_drift_psi: largest PSI of the candidate's predictions against the primary's.
        overridden: names of the thresholds set by the run rather than the settings.
    """

    max_error_rate: float
    max_p99_latency_ratio: float
    latency_slack_ms: float
    min_agreement: float
    regression_rtol: float
    alpha: float
    tau2: float
    min_pairs: int
    min_predictions: int
    min_outcomes: int
    max_drift_psi: float = 0.25
    overridden: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: RolloutSettings, **overrides: Any) -> Thresholds:
        """Thresholds of ``settings``, with ``overrides`` (None values: the setting)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("tau2", "overridden")]
        values: dict[str, Any] = {name: getattr(settings, name) for name in names}
        values["tau2"] = settings.msprt_tau2
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        values["overridden"] = tuple(sorted(k for k in given if values.get(k) is not None))
        return cls(**values)

    def shown(self, name: str, text: str) -> str:
        """``text`` for a report's gate column, marked when the run overrode ``name``."""
        return f"{text} (overridden)" if name in self.overridden else text


def drift_failure(drift: PredictionDrift, thresholds: Thresholds) -> str | None:
    """Why the candidate's predictions drifted too far from the primary's, or None."""
    value = drift.psi
    if math.isnan(value) or value <= thresholds.max_drift_psi:
        return None
    return (
        f"prediction drift PSI {value:.3f} > {thresholds.max_drift_psi:g} "
        f"(labels {drift.label_psi:.3f}, probabilities {drift.probability_psi:.3f})"
    )


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


# --------------------------------------------------------------------------- shadow


@dataclass(frozen=True, slots=True)
class ShadowGateResult:
    """The shadow gate's verdict: ``passed`` when ``failures`` is empty."""

    model: str
    candidate: str
    comparison: ShadowComparison
    thresholds: Thresholds
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No threshold crossed."""
        return not self.failures


def shadow_gate(
    model: str, candidate: str, comparison: ShadowComparison, thresholds: Thresholds
) -> ShadowGateResult:
    """Check a shadow comparison against the thresholds (too few pairs fails too)."""
    failures = []
    c, t = comparison, thresholds
    if c.pairs < t.min_pairs:
        failures.append(f"only {c.pairs} shadow pairs; need {t.min_pairs} to judge")
    if c.pairs and c.error_rate > t.max_error_rate:
        failures.append(f"candidate error rate {c.error_rate:.2%} > {t.max_error_rate:.2%}")
    if not math.isnan(c.agreement) and c.agreement < t.min_agreement:
        failures.append(
            f"agreement {c.agreement:.2%} ({c.kind} on {c.output}) < {t.min_agreement:.2%}"
        )
    slow = latency_failure(c.primary_latency.p99_ms, c.candidate_latency.p99_ms, t)
    if slow is not None:
        failures.append(slow)
    drifted = drift_failure(c.drift, t) if c.drift.judged else None
    if drifted is not None:
        failures.append(drifted)
    return ShadowGateResult(model, candidate, comparison, thresholds, failures)


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
        drift: the candidate's predictions against the primary's in the step (None: not
            measured).
    """

    percent: float
    primary: VariantStats | None
    candidate: VariantStats | None
    step_predictions: int
    sequential: SequentialResult | None
    failures: list[str]
    final: bool
    drift: PredictionDrift | None = None

    @property
    def passed(self) -> bool:
        """No threshold crossed."""
        return not self.failures

    @property
    def p_value(self) -> float:
        """The mSPRT's running p-value (1.0 before outcomes arrived)."""
        return self.sequential.p_value if self.sequential is not None else 1.0


def _business_metric(
    primary: VariantStats | None,
    candidate: VariantStats | None,
    thresholds: Thresholds,
    *,
    previous_p_value: float,
    higher_is_better: bool,
) -> SequentialResult | None:
    """The mSPRT on the share of positive outcomes (None until both variants have enough)."""
    need = thresholds.min_outcomes
    if primary is None or candidate is None:
        return None
    if min(primary.outcomes, candidate.outcomes) < max(need, 1):
        return None
    return msprt_two_proportions(
        primary.conversions,
        primary.outcomes,
        candidate.conversions,
        candidate.outcomes,
        tau2=thresholds.tau2,
        alpha=thresholds.alpha,
        higher_is_better=higher_is_better,
        previous_p_value=previous_p_value,
        min_samples=need,
    )


def _step_drift_failure(drift: PredictionDrift | None, thresholds: Thresholds) -> str | None:
    """The drift gate of a canary look, judged once both variants have enough rows (a
    PSI over a handful of predictions is noise)."""
    if drift is None or not drift.judged:
        return None
    if min(drift.primary_rows, drift.candidate_rows) < thresholds.min_predictions:
        return None
    return drift_failure(drift, thresholds)


def canary_check(
    variants: Mapping[str, VariantStats],
    thresholds: Thresholds,
    *,
    percent: float,
    step_predictions: int,
    previous_p_value: float = 1.0,
    higher_is_better: bool = True,
    final: bool = False,
    drift: PredictionDrift | None = None,
) -> CanaryCheck:
    """Judge a canary step from the experiment's per-variant counters.

    Error rate and the mSPRT are judged at every look once there are ``min_predictions``
    candidate predictions (the mSPRT stays valid however often it is peeked at); the p99
    latency ratio only at the step's final look, where too little candidate traffic
    fails the step too. The business metric is the share of positive outcomes among the
    predictions whose outcome arrived.
    """
    t = thresholds
    primary, candidate = variants.get("primary"), variants.get("candidate")
    failures: list[str] = []
    enough = candidate is not None and candidate.predictions >= t.min_predictions
    if candidate is not None and enough and candidate.error_rate > t.max_error_rate:
        failures.append(
            f"candidate error rate {candidate.error_rate:.2%} > {t.max_error_rate:.2%} "
            f"({candidate.errors}/{candidate.predictions})"
        )
    sequential = _business_metric(
        primary,
        candidate,
        t,
        previous_p_value=previous_p_value,
        higher_is_better=higher_is_better,
    )
    if sequential is not None and sequential.decision == "candidate_worse":
        failures.append(
            f"business metric: candidate significantly worse (mSPRT p={sequential.p_value:.3g}"
            f" <= {t.alpha:g}; diff {sequential.diff:+.4f})"
        )
    drifted = _step_drift_failure(drift, t)
    if drifted is not None:
        failures.append(drifted)
    if final:
        if not enough:
            got = candidate.predictions if candidate is not None else 0
            failures.append(f"only {got} candidate predictions; need {t.min_predictions} to judge")
        elif primary is not None and candidate is not None:
            slow = latency_failure(primary.latency.p99_ms, candidate.latency.p99_ms, t)
            if slow is not None:
                failures.append(slow)
    return CanaryCheck(
        percent, primary, candidate, step_predictions, sequential, failures, final, drift
    )
