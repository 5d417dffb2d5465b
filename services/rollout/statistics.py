"""A/B and canary analysis: pure functions over per-variant counts (``services.rollout.feedback``
keeps those counts in Redis).

Analysis, variant B (the candidate) against variant A (the primary):

- ``srm_check``: sample-ratio mismatch, a chi-square test of the observed split against
  the configured one. A mismatch means the assignment or the logging is broken and no
  other number of the experiment can be trusted.
- ``two_proportion_ztest``: the fixed-horizon test, valid when looked at once.
- ``msprt_two_proportions``: the mixture sequential probability ratio test (Johari et al.,
  "Always Valid Inference", normal approximation, mixing distribution N(0, tau2) on the
  difference). Its p-value stays valid however often it is peeked at, so a canary or A/B
  test may stop the first time it crosses ``alpha``.

scipy is imported by the two tests that need it, not by this module: the gateway imports
this module (through ``services.rollout.feedback``) and the serving bundle has no scipy.

The analysis counts predictions as trials and positive outcomes as conversions. With
user-level assignment the requests of one user are correlated, so the tests are somewhat
optimistic for heavy users; the SRM check is on predictions too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.errors import InvalidInputError

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
    from scipy import stats  # the analysis (CLI, flows) needs scipy; serving does not

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
    from scipy import stats  # the analysis (CLI, flows) needs scipy; serving does not

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
