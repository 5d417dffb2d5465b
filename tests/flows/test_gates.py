"""The rollout gates: thresholds from the settings, the shadow gate, the canary check."""

from __future__ import annotations

import dataclasses

from flows.gates import Thresholds, canary_check, latency_failure, shadow_gate
from flows.shadow_comparison import compare_shadow
from services.rollout.statistics import VariantStats, summarize_latencies
from services.settings import RolloutSettings
from tests.flows.test_shadow_comparison import pair


def thresholds(**overrides: float | None) -> Thresholds:
    return Thresholds.from_settings(RolloutSettings(), **overrides)


def test_thresholds_come_from_the_settings() -> None:
    settings = RolloutSettings(max_error_rate=0.02, min_pairs=7, msprt_tau2=2e-4)
    t = Thresholds.from_settings(settings)
    assert t.overridden == ()
    for f in dataclasses.fields(Thresholds):
        if f.name == "overridden":  # which thresholds the run set, not a setting
            continue
        name = "msprt_tau2" if f.name == "tau2" else f.name
        assert getattr(t, f.name) == getattr(settings, name)
    assert (t.max_error_rate, t.min_pairs, t.tau2) == (0.02, 7, 2e-4)
    # an override replaces its setting; None leaves the setting
    t = Thresholds.from_settings(settings, max_error_rate=0.5, min_agreement=None)
    assert (t.max_error_rate, t.min_agreement) == (0.5, settings.min_agreement)
    assert t.overridden == ("max_error_rate",)
    assert t.shown("max_error_rate", "<= 50%") == "<= 50% (overridden)"
    assert t.shown("min_agreement", ">= 99%") == ">= 99%"


def test_latency_gate_allows_the_ratio_plus_the_slack() -> None:
    t = thresholds(max_p99_latency_ratio=1.2, latency_slack_ms=1.0)
    assert latency_failure(10.0, 13.0, t) is None  # limit 13.0
    assert "13.00 ms" in (latency_failure(10.0, 13.5, t) or "")
    assert latency_failure(float("nan"), 99.0, t) is None  # nothing to compare with


def test_shadow_gate_names_each_failure() -> None:
    slow = [pair({"label": [1]}, {"label": [0]}, ms=50.0) for _ in range(10)]
    t = thresholds(min_pairs=20)
    result = shadow_gate("m", "2", compare_shadow(slow, regression_rtol=t.regression_rtol), t)
    text = " | ".join(result.failures)
    assert not result.passed
    assert "only 10 shadow pairs; need 20" in text and "agreement 0.00%" in text
    assert "p99" in text


def _stats(variant: str, predictions: int, errors: int) -> VariantStats:
    latency = summarize_latencies([1.0] * predictions)
    return VariantStats(variant, "1", predictions, errors, 0, 0, 0.0, latency)


def test_canary_check_waits_for_enough_data() -> None:
    t = thresholds(min_predictions=100, max_error_rate=0.01)
    variants = {"primary": _stats("primary", 50, 0), "candidate": _stats("candidate", 50, 25)}
    early = canary_check(variants, t, percent=5, step_predictions=50)
    assert early.passed and early.sequential is None  # 50 % errors, but only 50 predictions
    final = canary_check(variants, t, percent=5, step_predictions=50, final=True)
    assert final.failures == ["only 50 candidate predictions; need 100 to judge"]
    more = {"primary": _stats("primary", 200, 0), "candidate": _stats("candidate", 200, 4)}
    breach = canary_check(more, t, percent=5, step_predictions=200)
    assert breach.failures == ["candidate error rate 2.00% > 1.00% (4/200)"]


def test_drift_gate_waits_for_enough_rows() -> None:
    from flows.gates import canary_check
    from flows.prediction_drift import prediction_drift

    t = thresholds(min_predictions=10)
    few = prediction_drift([0] * 20, [1] * 20)  # a huge PSI over a handful of rows
    many = prediction_drift([0] * 200, [1] * 200)
    assert canary_check({}, t, percent=5.0, step_predictions=0, drift=few).passed
    check = canary_check({}, t, percent=5.0, step_predictions=0, drift=many)
    assert any("prediction drift PSI" in f for f in check.failures)
