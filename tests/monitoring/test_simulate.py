"""The autoscaling simulator: traces, the queueing estimate, and a short replay's result."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from monitoring.autoscale import PolicySpec
from monitoring.simulate import (
    POLICIES,
    Fleet,
    SimOptions,
    capacity_trace,
    queueing,
    request_trace,
    simulate,
)

# Three hours of a day, 6 to 9 hours after its trough, with a 30-minute 5x spike at hour 1.
SHORT = SimOptions(trace="spike", hours=3.0, spike_start_hour=1.0, trough_hour=-6.0)
SPEC = PolicySpec(max_replicas=60)


@pytest.fixture(scope="module")
def spike() -> dict[str, Any]:
    return simulate(SHORT, SPEC)


def test_diurnal_trace_is_ten_to_one_and_seeded() -> None:
    opts = SimOptions(noise=0.0)
    rate = request_trace(opts)
    assert len(rate) == 24 * 3600 / 15
    assert rate.max() / rate.min() == pytest.approx(10.0, rel=0.01)
    assert np.argmin(rate) * 15 / 3600 == pytest.approx(opts.trough_hour, abs=0.01)
    noisy = SimOptions(seed=7)
    assert np.array_equal(request_trace(noisy), request_trace(noisy))
    assert not np.array_equal(request_trace(noisy), request_trace(SimOptions(seed=8)))


def test_spike_trace_multiplies_the_load_for_30_minutes() -> None:
    base = request_trace(SimOptions(trace="diurnal", noise=0.0))
    spiked = request_trace(SimOptions(trace="spike", noise=0.0))
    ratio = spiked / base
    assert set(np.round(ratio, 6)) == {1.0, 5.0}
    assert (ratio > 1).sum() * 15 / 60 == pytest.approx(30.0)


def test_capacity_swings_with_the_work_per_request() -> None:
    cap = capacity_trace(SimOptions(cost_swing=0.1))
    assert cap.min() == pytest.approx(500 / 1.1, rel=1e-3)
    assert cap.max() == pytest.approx(500 / 0.9, rel=1e-3)
    assert np.all(capacity_trace(SimOptions(cost_swing=0.0)) == 500.0)


def test_p99_grows_with_utilization_and_saturation_pins_gpu_at_100() -> None:
    opts = SimOptions()
    light = queueing(opts, rate=1000.0, mu=500.0, ready=4, backlog=0.0)  # 35 % busy
    busy = queueing(opts, rate=2700.0, mu=500.0, ready=4, backlog=0.0)  # 94.5 % busy
    assert light.utilization == pytest.approx(0.35)
    assert light.p99_ms < 40 < opts.slo_p99_ms < busy.p99_ms
    over = [
        queueing(opts, rate=k * 2000 / 0.7, mu=500.0, ready=4, backlog=0.0) for k in (1.1, 1.4, 5)
    ]
    # 10 % or 40 % or 5x too much load: the same 100 % busy; only the queue tells them apart
    assert [q.utilization for q in over] == [1.0, 1.0, 1.0]
    assert over[1].in_flight > over[0].in_flight > busy.in_flight
    assert over[2].shed > over[1].shed == 0


def test_a_full_queue_sheds() -> None:
    opts = SimOptions(queue_limit=100)
    q = queueing(opts, rate=10_000.0, mu=500.0, ready=2, backlog=0.0)
    assert q.backlog == 200.0
    assert q.shed == pytest.approx((7000 - 1000) * 15 - 200)


def test_fleet_starts_cold_and_drops_starting_replicas_first() -> None:
    fleet = Fleet([0.0, 0.0])
    fleet.resize(4, now=10.0, cold_start_s=120.0)
    assert (fleet.ready(10.0), fleet.ready(130.0)) == (2, 4)
    fleet.resize(3, now=20.0, cold_start_s=120.0)
    assert fleet.ready_at == [0.0, 0.0, 130.0]


def test_result_structure(spike: dict[str, Any]) -> None:
    minutes = int(SHORT.hours * 60)
    assert spike["trace"] == "spike"
    assert spike["options"]["cold_start_s"] == 120.0
    assert set(spike["policies"]) == set(POLICIES) == {"gpu-only", "request-rate-only", "combined"}
    assert len(spike["minutes"]["request_rate"]) == minutes
    for run in spike["policies"].values():
        assert set(run["summary"]) >= {"slo_minutes_breached", "replica_hours", "peak_replicas"}
        for name in ("replicas", "ready", "gpu_utilization_percent", "p99_ms", "breached"):
            assert len(run["minutes"][name]) == minutes
        for event in run["scale_events"]:
            assert event["signal"] in {"gpu", "concurrency", "inference_rate"} | {
                "stabilization",
                "step_limit",
                "bounds",
            }
            assert "gpu_utilization" in event["inputs"]
    json.dumps(spike, allow_nan=False)  # strict JSON: no NaN or Infinity


def test_invariants(spike: dict[str, Any]) -> None:
    runs = spike["policies"]
    for name, run in runs.items():
        s, m = run["summary"], run["minutes"]
        assert (
            SPEC.min_replicas * SHORT.hours <= s["replica_hours"] <= SPEC.max_replicas * SHORT.hours
        )
        assert SPEC.min_replicas <= min(m["replicas"]) <= max(m["replicas"]) <= SPEC.max_replicas
        assert all(0 <= u <= 100 for u in m["gpu_utilization_percent"]), name
        assert s["slo_minutes_breached"] == sum(m["breached"])
    # the spike overloads everyone while new replicas start...
    assert all(run["summary"]["slo_minutes_breached"] > 0 for run in runs.values())
    # ...but reading the queue as well as the GPU recovers sooner than the GPU alone
    gpu_only = runs["gpu-only"]["summary"]
    combined = runs["combined"]["summary"]
    assert combined["slo_minutes_breached"] <= gpu_only["slo_minutes_breached"]
    assert combined["shed_requests"] <= gpu_only["shed_requests"]


def test_gpu_only_sees_at_most_100_percent_during_the_spike(spike: dict[str, Any]) -> None:
    m = spike["policies"]["gpu-only"]["minutes"]
    load = np.asarray(spike["minutes"]["inference_rate"])
    capacity = np.asarray(m["ready"]) * SHORT.replica_capacity
    overloaded = load > 1.5 * capacity
    assert overloaded.any()
    assert max(np.asarray(m["gpu_utilization_percent"])[overloaded]) <= 100.0


def test_the_same_seed_gives_the_same_result() -> None:
    opts = SimOptions(trace="diurnal", hours=1.0, seed=3)
    assert simulate(opts, SPEC) == simulate(opts, SPEC)


def test_on_step_sees_every_step() -> None:
    opts = SimOptions(hours=0.5)
    calls: list[int] = []
    simulate(opts, SPEC, on_step=lambda: calls.append(1))
    assert len(calls) == opts.steps * len(POLICIES)
