"""A/B analysis: pure functions over per-variant counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.errors import InvalidInputError
from services.rollout.statistics import (
    PredictionRecord,
    VariantStats,
    analyze,
    bucket_bounds_ms,
    histogram_quantile,
    latency_bucket,
    msprt_two_proportions,
    srm_check,
    summarize_histogram,
    summarize_latencies,
    summarize_variants,
    two_proportion_ztest,
)

# ---------------------------------------------------------------- sample-ratio mismatch


def test_srm_detects_52_48_on_a_large_sample() -> None:
    result = srm_check([52_000, 48_000], [50, 50])
    assert result.mismatch
    assert result.p_value < 1e-30
    assert result.expected == (50_000.0, 50_000.0)


def test_srm_passes_a_fair_split() -> None:
    rng = np.random.default_rng(2024)
    for share in (0.5, 0.05, 0.25):
        n = 100_000
        candidate = int(rng.binomial(n, share))
        result = srm_check([n - candidate, candidate], [100 * (1 - share), 100 * share])
        assert not result.mismatch, (share, result)


def test_srm_false_alarms_are_rare_on_fair_splits() -> None:
    rng = np.random.default_rng(7)
    candidates = rng.binomial(20_000, 0.1, size=500)
    alarms = sum(srm_check([20_000 - c, c], [90, 10]).mismatch for c in candidates)
    assert alarms <= 3  # alpha 0.001: about 0.5 expected


def test_srm_edges() -> None:
    assert srm_check([0, 0], [50, 50]).p_value == 1.0
    assert srm_check([100, 3], [100, 0]).mismatch  # traffic where none was configured
    assert not srm_check([100, 0], [100, 0]).mismatch
    with pytest.raises(InvalidInputError):
        srm_check([1], [1])


# ---------------------------------------------------------------- fixed-horizon z-test


def test_two_proportion_ztest_matches_the_textbook() -> None:
    result = two_proportion_ztest(200, 1000, 250, 1000)
    pooled_se = math.sqrt(0.225 * 0.775 * 2 / 1000)
    assert result.diff == pytest.approx(0.05)
    assert result.z == pytest.approx(0.05 / pooled_se)
    assert result.p_value == pytest.approx(0.00742, abs=1e-4)
    assert result.ci_low < 0.05 < result.ci_high
    assert result.ci_low > 0  # significant at 5 %: the interval excludes 0

    larger = two_proportion_ztest(200, 1000, 250, 1000, alternative="larger")
    smaller = two_proportion_ztest(200, 1000, 250, 1000, alternative="smaller")
    assert larger.p_value == pytest.approx(result.p_value / 2)
    assert smaller.p_value == pytest.approx(1 - larger.p_value)


def test_two_proportion_ztest_without_a_difference() -> None:
    assert two_proportion_ztest(100, 1000, 100, 1000).p_value == pytest.approx(1.0)
    assert two_proportion_ztest(0, 10, 0, 10).p_value == 1.0
    with pytest.raises(InvalidInputError):
        two_proportion_ztest(5, 0, 1, 10)
    with pytest.raises(InvalidInputError):
        two_proportion_ztest(11, 10, 1, 10)


# ---------------------------------------------------------------- sequential test


def _simulate(rate_a: float, rate_b: float, seed: int, sims: int, n_max: int, every: int):
    """Peek at the mSPRT every ``every`` trials per arm; the decision of each run."""
    rng = np.random.default_rng(seed)
    decisions = []
    looks = np.arange(every, n_max + 1, every)
    for _ in range(sims):
        a = np.cumsum(rng.random(n_max) < rate_a)[looks - 1]
        b = np.cumsum(rng.random(n_max) < rate_b)[looks - 1]
        p, decision = 1.0, "continue"
        for n, sa, sb in zip(looks, a, b, strict=True):
            result = msprt_two_proportions(int(sa), int(n), int(sb), int(n), previous_p_value=p)
            p = result.p_value
            if result.decision != "continue":
                decision = result.decision
                break
        decisions.append(decision)
    return decisions


def test_msprt_stops_early_for_a_big_effect() -> None:
    decisions = _simulate(0.10, 0.15, seed=11, sims=100, n_max=10_000, every=250)
    assert decisions.count("candidate_better") >= 95
    worse = _simulate(0.15, 0.10, seed=12, sims=100, n_max=10_000, every=250)
    assert worse.count("candidate_worse") >= 95


def test_msprt_rarely_stops_under_the_null_despite_peeking() -> None:
    decisions = _simulate(0.10, 0.10, seed=13, sims=300, n_max=20_000, every=250)
    false_stops = sum(d != "continue" for d in decisions)
    # Always valid: at most alpha (5 %) even with 80 looks each; a naive z-test would
    # stop in a large share of these runs.
    assert false_stops / len(decisions) <= 0.05


def test_msprt_result_details() -> None:
    early = msprt_two_proportions(5, 50, 9, 50)
    assert early.decision == "continue" and early.p_value == 1.0  # under min_samples

    strong = msprt_two_proportions(1000, 10_000, 1500, 10_000)
    assert strong.decision == "candidate_better"
    assert strong.p_value < 1e-6
    assert strong.ci_low < 0.05 < strong.ci_high and strong.ci_low > 0

    errors = msprt_two_proportions(100, 10_000, 300, 10_000, higher_is_better=False)
    assert errors.decision == "candidate_worse"

    # The p-value is a running minimum across looks.
    later = msprt_two_proportions(1000, 10_000, 1010, 10_000, previous_p_value=0.01)
    assert later.p_value == 0.01 and later.decision == "candidate_better"
    tie = msprt_two_proportions(1000, 10_000, 1000, 10_000, previous_p_value=0.01)
    assert tie.decision == "continue"
    with pytest.raises(InvalidInputError):
        msprt_two_proportions(1, 10, 1, 10, tau2=0)


# ---------------------------------------------------------------- latencies and tables


def test_latency_buckets_bound_their_values() -> None:
    for ms in (0.01, 0.1, 0.11, 1.0, 7.3, 99.9, 100.0, 2500.0):
        low, high = bucket_bounds_ms(latency_bucket(ms))
        assert low < ms <= high or (ms <= 0.1 and latency_bucket(ms) == 0)


def test_histogram_quantiles_are_within_ten_percent() -> None:
    rng = np.random.default_rng(3)
    samples = rng.lognormal(mean=3.0, sigma=0.6, size=50_000)
    counts: dict[int, int] = {}
    for s in samples:
        counts[latency_bucket(s)] = counts.get(latency_bucket(s), 0) + 1
    exact = summarize_latencies(samples.tolist())
    approx = summarize_histogram(counts, float(samples.sum()))
    assert approx.count == exact.count == 50_000
    assert approx.mean_ms == pytest.approx(exact.mean_ms)
    for q, value in ((0.5, exact.p50_ms), (0.95, exact.p95_ms), (0.99, exact.p99_ms)):
        assert histogram_quantile(counts, q) == pytest.approx(value, rel=0.1)
    assert approx.max_ms >= exact.max_ms
    assert math.isnan(summarize_histogram({}, 0.0).p99_ms)


def test_summarize_variants() -> None:
    records = [PredictionRecord("primary", 10.0, version="v1") for _ in range(8)]
    records += [PredictionRecord("primary", 30.0, error=True, version="v1")]
    records += [PredictionRecord("primary", 20.0, outcome=1.0, version="v1")]
    records += [PredictionRecord("candidate", 5.0, outcome=0.0, version="v2")]
    records += [PredictionRecord("candidate", 5.0, outcome=2.5, version="v2")]
    table = summarize_variants(records)
    primary, candidate = table["primary"], table["candidate"]
    assert (primary.predictions, primary.errors, primary.conversions) == (10, 1, 1)
    assert primary.error_rate == 0.1 and primary.conversion_rate == 0.1
    assert primary.latency.max_ms == 30.0 and primary.latency.p50_ms == 10.0
    assert (candidate.outcomes, candidate.conversions, candidate.outcome_sum) == (2, 1, 2.5)
    assert candidate.version == "v2"


def test_analyze_runs_every_test() -> None:
    lat = summarize_latencies([1.0])
    primary = VariantStats("primary", "v1", 9000, 9, 900, 900, 900.0, lat)
    candidate = VariantStats("candidate", "v2", 1000, 1, 150, 150, 150.0, lat)
    report = analyze(
        "fraud", "exp-1", {"primary": primary, "candidate": candidate}, candidate_percent=10
    )
    assert report.srm is not None and not report.srm.mismatch
    assert report.conversion_test is not None and report.conversion_test.diff == pytest.approx(0.05)
    assert report.sequential is not None and report.sequential.decision == "candidate_better"
    skewed = analyze(
        "fraud", "exp-1", {"primary": primary, "candidate": candidate}, candidate_percent=50
    )
    assert skewed.srm is not None and skewed.srm.mismatch
    alone = analyze("fraud", "exp-1", {"primary": primary})
    assert (alone.srm, alone.conversion_test, alone.sequential) == (None, None, None)
