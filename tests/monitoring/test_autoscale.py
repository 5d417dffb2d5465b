"""The autoscaling policy: HPA arithmetic, stabilization, rate limits, bounds, fallback."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitoring.autoscale import (
    Autoscaler,
    Observation,
    PolicySpec,
    ScalingRule,
    ratio_rule,
    total_rule,
)

SYNC_S = 15.0


def gpu(t: float, replicas: int, util: float | None, **kw: float) -> Observation:
    return Observation(time_s=t, replicas=replicas, gpu_utilization=util, **kw)


def run(scaler: Autoscaler, replicas: int, steps: int, **metrics: float) -> list[int]:
    """Feed the same metrics every sync period, applying each decision; the counts."""
    counts = []
    for k in range(steps):
        d = scaler.decide(Observation(time_s=k * SYNC_S, replicas=replicas, **metrics))
        replicas = d.desired
        counts.append(replicas)
    return counts


# -- the ratio rule and its tolerance band ---------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [(1.0, 10), (1.095, 10), (0.905, 10), (1.11, 12), (0.89, 9), (2.0, 20), (0.25, 3)],
)
def test_ratio_rule_holds_inside_the_tolerance_band(ratio: float, expected: int) -> None:
    # (the band's edges are float64 comparisons, as in the HPA controller: 88 / 80 is
    # 1.1000000000000000888, just outside)
    assert ratio_rule(10, ratio, 0.1) == expected


def test_total_rule_divides_by_the_per_replica_target() -> None:
    assert total_rule(4, 4 * 400.0, 400.0, 0.1) == 4  # exactly on target
    assert total_rule(4, 4 * 430.0, 400.0, 0.1) == 4  # +7.5 %: inside the band
    assert total_rule(4, 4000.0, 400.0, 0.1) == 10
    assert total_rule(4, 100.0, 400.0, 0.1) == 1


def test_gpu_utilization_scales_by_current_times_metric_over_target() -> None:
    scaler = Autoscaler(PolicySpec(mode="gpu"))
    assert scaler.recommend(gpu(0, 4, 87.0)) == {"gpu": 4}  # within 10 % of target
    assert scaler.recommend(gpu(0, 4, 100.0)) == {"gpu": 5}  # ceil(4 * 100 / 80)
    assert scaler.recommend(gpu(0, 10, 40.0)) == {"gpu": 5}


# -- stabilization ---------------------------------------------------------------------


def test_scale_up_is_immediate_by_default() -> None:
    scaler = Autoscaler(PolicySpec(mode="gpu"))
    d = scaler.decide(gpu(0, 4, 100.0))
    assert (d.desired, d.signal) == (5, "gpu")


def test_scale_down_waits_for_the_300_s_window() -> None:
    scaler = Autoscaler(PolicySpec(mode="gpu"))
    counts = run(scaler, 10, 25, gpu_utilization=40.0)
    # the window opens at t=0 with the current count; t=300 is the first moment past it
    assert counts[: int(300 / SYNC_S)] == [10] * 20
    assert counts[20] == 5
    d = Autoscaler(PolicySpec(mode="gpu")).decide(gpu(0, 10, 40.0))
    assert (d.desired, d.signal) == (10, "stabilization")


def test_scale_down_takes_the_highest_recommendation_of_the_window() -> None:
    scaler = Autoscaler(PolicySpec(mode="gpu", scale_down_stabilization_s=60))
    scaler.decide(gpu(0, 10, 80.0))  # recommends 10
    scaler.decide(gpu(15, 10, 64.0))  # recommends 8
    d = scaler.decide(gpu(30, 10, 40.0))  # recommends 5; the window still holds 10
    assert (d.desired, d.signal) == (10, "stabilization")
    d = scaler.decide(gpu(61, 10, 40.0))  # t=0 left the window; 8 (t=15) is the highest
    assert d.desired == 8
    assert d.recommendations == {"gpu": 5}


def test_scale_up_stabilization_takes_the_lowest_recommendation() -> None:
    scaler = Autoscaler(PolicySpec(mode="gpu", scale_up_stabilization_s=60))
    assert scaler.decide(gpu(0, 4, 100.0)).desired == 4  # the start-up record (4) holds it
    d = scaler.decide(gpu(61, 4, 100.0))
    assert (d.desired, d.signal) == (5, "gpu")


# -- rate limits -----------------------------------------------------------------------


def test_scale_up_is_limited_to_100_percent_or_4_pods_per_15_s() -> None:
    scaler = Autoscaler(PolicySpec(mode="gpu"))
    d = scaler.decide(gpu(0, 2, 800.0))  # wants 20
    assert (d.desired, d.signal) == (6, "step_limit")  # max(2 * 2, 2 + 4)
    d = scaler.decide(gpu(5, 6, 800.0))  # same period: the 4 added count against it
    assert (d.desired, d.signal) == (6, "step_limit")
    d = scaler.decide(gpu(15, 6, 800.0))  # a new period: max(12, 10)
    assert (d.desired, d.signal) == (12, "step_limit")
    d = scaler.decide(gpu(30, 12, 800.0 * 6 / 12))  # wants 60: doubling to 24 is allowed
    assert (d.desired, d.signal) == (24, "step_limit")


def test_scale_down_rate_limit_with_a_pods_rule() -> None:
    spec = PolicySpec(
        mode="gpu", scale_down_stabilization_s=0, scale_down=(ScalingRule("Pods", 2, 60),)
    )
    counts = run(Autoscaler(spec), 10, 9, gpu_utilization=8.0)  # wants 1
    assert counts == [8, 8, 8, 8, 6, 6, 6, 6, 4]


def test_default_scale_down_may_go_straight_to_the_recommendation() -> None:
    spec = PolicySpec(mode="gpu", scale_down_stabilization_s=0)
    d = Autoscaler(spec).decide(gpu(0, 10, 8.0))
    assert (d.desired, d.signal) == (1, "gpu")


# -- bounds ----------------------------------------------------------------------------


def test_bounds_cap_the_recommendation() -> None:
    spec = PolicySpec(mode="gpu", max_replicas=5, min_replicas=2, scale_down_stabilization_s=0)
    d = Autoscaler(spec).decide(gpu(0, 4, 400.0))  # wants 20; the rate limit allows 8
    assert (d.desired, d.signal) == (5, "bounds")
    d = Autoscaler(spec).decide(gpu(0, 4, 1.0))
    assert (d.desired, d.signal) == (2, "bounds")


def test_a_count_outside_the_bounds_is_brought_back_first() -> None:
    spec = PolicySpec(mode="gpu", min_replicas=3, max_replicas=6)
    assert Autoscaler(spec).decide(gpu(0, 9, 80.0)).desired == 6
    d = Autoscaler(spec).decide(gpu(0, 1, 80.0))
    assert (d.desired, d.signal) == (3, "bounds")


def test_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        PolicySpec(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError):
        PolicySpec(target_percent=0)
    with pytest.raises(ValueError):
        PolicySpec(mode="cpu")  # type: ignore[arg-type]


# -- signals, fallback and attribution -------------------------------------------------


def test_combined_takes_the_larger_of_gpu_and_concurrency() -> None:
    scaler = Autoscaler(PolicySpec(mode="combined"))
    # GPU pinned near target (looks fine) while requests pile up: 4 replicas, 96 in flight
    d = scaler.decide(gpu(0, 4, 85.0, in_flight=96.0, request_rate=1000.0))
    assert d.recommendations == {"gpu": 4, "concurrency": 12}
    assert (d.desired, d.signal) == (8, "step_limit")
    d = scaler.decide(gpu(15, 8, 85.0, in_flight=96.0, request_rate=1000.0))
    assert (d.desired, d.signal) == (12, "concurrency")


def test_combined_attributes_to_gpu_when_it_asks_for_more() -> None:
    d = Autoscaler(PolicySpec()).decide(gpu(0, 4, 100.0, in_flight=8.0))
    assert d.recommendations == {"gpu": 5, "concurrency": 1}
    assert (d.desired, d.signal) == (5, "gpu")


def test_a_tie_goes_to_the_gpu_signal() -> None:
    d = Autoscaler(PolicySpec()).decide(gpu(0, 4, 100.0, in_flight=40.0))
    assert d.recommendations == {"gpu": 5, "concurrency": 5}
    assert d.signal == "gpu"


def test_without_a_gpu_metric_combined_falls_back_to_the_inference_rate() -> None:
    spec = PolicySpec(replica_capacity=500.0)  # 400 rows/s per replica at 80 %
    obs = gpu(0, 2, None, request_rate=10_000.0, cache_hit_rate=0.9, in_flight=4.0)
    d = Autoscaler(spec).decide(obs)
    # 10,000 requests/s but 90 % are cache hits: 1,000 inferences/s -> 3 replicas, not 25
    assert d.recommendations == {"inference_rate": 3, "concurrency": 1}
    assert (d.desired, d.signal) == (3, "inference_rate")
    assert d.inputs["inference_rate"] == pytest.approx(1000.0)


def test_the_inference_rate_is_ignored_while_the_gpu_metric_exists() -> None:
    obs = gpu(0, 2, 80.0, request_rate=10_000.0, in_flight=4.0)
    assert "inference_rate" not in Autoscaler(PolicySpec()).recommend(obs)


def test_gpu_only_holds_when_the_gpu_metric_is_missing() -> None:
    scaler = Autoscaler(PolicySpec(mode="gpu"))
    d = scaler.decide(gpu(0, 3, None, request_rate=10_000.0, in_flight=500.0))
    assert (d.desired, d.signal, d.recommendations) == (3, "none", {})


def test_request_mode_reads_only_the_inference_rate() -> None:
    obs = gpu(0, 2, 100.0, request_rate=2000.0, cache_hit_rate=0.5, in_flight=500.0)
    assert Autoscaler(PolicySpec(mode="requests")).recommend(obs) == {"inference_rate": 3}


def test_no_metric_at_all_holds() -> None:
    d = Autoscaler(PolicySpec()).decide(Observation(time_s=0, replicas=3))
    assert (d.desired, d.signal) == (3, "none")


def test_a_decision_records_its_inputs_as_json() -> None:
    d = Autoscaler(PolicySpec()).decide(gpu(0, 4, 90.0, in_flight=20.0, request_rate=100.0))
    doc = json.loads(json.dumps(d.as_dict()))
    assert doc["signal"] == d.signal
    assert doc["inputs"]["gpu_utilization"] == 90.0
    assert doc["inputs"]["in_flight"] == 20.0
    assert doc["recommendations"] == {"gpu": 5, "concurrency": 3}


# -- properties over random metric sequences -------------------------------------------

metric = st.one_of(st.none(), st.floats(0, 400, allow_nan=False))


@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from(["gpu", "requests", "combined"]),
    bounds=st.tuples(st.integers(1, 5), st.integers(0, 30)),
    steps=st.lists(st.tuples(metric, metric, metric, st.floats(0, 30)), min_size=1, max_size=40),
)
def test_decisions_stay_in_bounds_and_within_the_rate_limits(
    mode: str, bounds: tuple[int, int], steps: list[tuple[float | None, ...]]
) -> None:
    low, extra = bounds
    spec = PolicySpec(mode=mode, min_replicas=low, max_replicas=low + extra)  # type: ignore[arg-type]
    scaler = Autoscaler(spec)
    replicas, t = low, 0.0
    for util, flight, rate, gap in steps:
        t += gap
        d = scaler.decide(
            Observation(
                time_s=t,
                replicas=replicas,
                gpu_utilization=util,
                in_flight=flight,
                request_rate=None if rate is None else rate * 20,
            )
        )
        assert spec.min_replicas <= d.desired <= spec.max_replicas
        # one decision never more than doubles nor adds more than 4 beyond doubling's floor
        assert d.desired <= max(2 * replicas, replicas + 4)
        assert d.signal in {
            "gpu",
            "concurrency",
            "inference_rate",
            "stabilization",
            "step_limit",
            "bounds",
            "none",
        }
        if d.desired == replicas and not d.recommendations:
            assert d.signal == "none"
        replicas = d.desired
