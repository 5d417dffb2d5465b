"""Batching, dedicated vs shared pool, and autoscaling, judged on hand-built samples."""

from __future__ import annotations

from monitoring.decision_model import Evidence, Row, Verdict
from monitoring.decision_serving import autoscaling_rows, batching_rows, pool_rows
from monitoring.scrape import Sample
from services.settings import BatchSettings, DecisionSettings
from tests.monitoring.samples import histogram, model_entry, sample, scrape

S = DecisionSettings()
LAT = "servekit_request_latency_seconds"


def _two(first: list[Sample], last: list[Sample], seconds: float = 10.0, **kw: object) -> Evidence:
    return Evidence(scrapes=[scrape(0.0, first), scrape(seconds, last)], **kw)  # type: ignore[arg-type]


def _traffic(requests: int, latency_s: float = 0.002, model: str = "fraud") -> list[Sample]:
    return [
        sample("servekit_model_requests_total", requests, model=model, version="1"),
        *histogram(LAT, [latency_s] * requests, model=model, version="1", route="predict"),
    ]


def _row(rows: list[Row], signal: str, subject: str = "fraud") -> Row:
    (row,) = [r for r in rows if r.signal.startswith(signal) and r.subject == subject]
    return row


def test_few_arrivals_per_window_say_batching_buys_little() -> None:
    ev = _two(_traffic(0), _traffic(100), models=[model_entry("fraud")])  # 10 req/s
    row = _row(batching_rows(ev, S), "arrival rate")
    assert row.verdict is Verdict.RECONSIDER and row.measured is not None
    assert abs(row.measured - 0.1) < 1e-9 and "max_wait_ms 0" in row.action


def test_many_arrivals_per_window_are_fine_and_batching_off_is_flagged() -> None:
    ev = _two(_traffic(0), _traffic(5000), models=[model_entry("fraud")])  # 5 per 10 ms
    assert _row(batching_rows(ev, S), "arrival rate").verdict is Verdict.FINE
    ev.batch = BatchSettings(enabled=False)
    row = _row(batching_rows(ev, S), "arrival rate")
    assert row.verdict is Verdict.RECONSIDER and "SERVEKIT_BATCH_ENABLED=true" in row.action


def test_arrivals_need_two_scrapes_and_enough_requests() -> None:
    one = Evidence(scrapes=[scrape(0.0, _traffic(500))], models=[model_entry("fraud")])
    row = _row(batching_rows(one, S), "arrival rate")
    assert row.verdict is Verdict.NO_DATA and "two scrapes" in row.action
    few = _two(_traffic(0), _traffic(5), models=[model_entry("fraud")])
    assert _row(batching_rows(few, S), "arrival rate").verdict is Verdict.NO_DATA


def test_p99_against_the_target_per_model() -> None:
    ev = _two(_traffic(0, 0.2), _traffic(100, 0.2), models=[model_entry("fraud")])
    row = _row(batching_rows(ev, S), "request p99")
    assert row.verdict is Verdict.RECONSIDER and row.measured and row.measured > 100
    assert "max_wait_ms (now 10)" in row.action
    fast = _two(_traffic(0), _traffic(100, 0.003), models=[model_entry("fraud")])
    assert _row(batching_rows(fast, S), "request p99").verdict is Verdict.FINE
    strict = DecisionSettings(per_model_p99_target_ms={"fraud": 1.0})
    assert _row(batching_rows(fast, strict), "request p99").verdict is Verdict.RECONSIDER


def test_a_window_that_eats_the_budget_is_flagged() -> None:
    ev = _two(_traffic(0), _traffic(100), models=[model_entry("fraud", max_wait_ms=10)])
    tiny = DecisionSettings(per_model_p99_target_ms={"fraud": 5.0})
    row = _row(batching_rows(ev, tiny), "batching window")
    assert row.verdict is Verdict.RECONSIDER and "max_wait_ms ≤ 2.5" in row.action
    ev.models = [model_entry("fraud", max_wait_ms=0)]  # the gateway's policy wins
    assert _row(batching_rows(ev, tiny), "batching window").verdict is Verdict.FINE


def test_no_traffic_at_all_says_so() -> None:
    (row,) = batching_rows(Evidence(scrapes=[scrape(0.0)]), S)
    assert row.verdict is Verdict.NO_DATA


def test_traffic_against_the_server_kind() -> None:
    idle = _two(_traffic(0), _traffic(5), seconds=60.0, models=[model_entry("fraud")])
    row = _row(pool_rows(idle, S), "traffic")
    assert row.verdict is Verdict.RECONSIDER and "shared pool" in row.action
    busy = _two(_traffic(0), _traffic(6000), seconds=60.0, models=[model_entry("fraud", pinned=False)])  # fmt: skip
    row = _row(pool_rows(busy, S), "traffic")
    assert row.verdict is Verdict.RECONSIDER and "SERVEKIT_MODELS" in row.action
    ok = _two(_traffic(0), _traffic(600), seconds=60.0, models=[model_entry("fraud")])
    assert _row(pool_rows(ok, S), "traffic").verdict is Verdict.FINE
    unknown = _two(_traffic(0), _traffic(600), seconds=60.0)
    assert _row(pool_rows(unknown, S), "traffic").verdict is Verdict.NO_DATA


def _pool(loads: int, budget: int, idle: int = 0) -> list[Sample]:
    return [
        sample("servekit_model_loads_total", loads, outcome="ok"),
        sample("servekit_model_evictions_total", budget, reason="budget"),
        sample("servekit_model_evictions_total", idle, reason="idle"),
    ]


def test_eviction_churn_per_hour() -> None:
    churn = _two(_pool(2, 0), _pool(52, 48), seconds=60.0)
    row = _row(pool_rows(churn, S), "shared-pool churn", "")
    assert row.verdict is Verdict.RECONSIDER and row.measured == 98 * 60
    assert "MEMORY_BUDGET_BYTES" in row.action and "48 budget" in row.value
    calm = _two(_pool(2, 0), _pool(2, 0, 1), seconds=60.0)
    assert _row(pool_rows(calm, S), "shared-pool churn", "").verdict is Verdict.FINE
    split = _two([], [], seconds=60.0)
    assert _row(pool_rows(split, S), "shared-pool churn", "").verdict is Verdict.NO_DATA


def _gpu_scrapes(utils: list[float], latencies: list[float]) -> list:
    scrapes, obs = [], []
    for i, (util, lat) in enumerate(zip([0.0, *utils], [0.0, *latencies], strict=True)):
        if i:
            obs += [lat] * 20
        scrapes.append(
            scrape(
                i * 10.0,
                sample("servekit_gpu_utilization_percent", util, gpu="0"),
                histogram(LAT, obs, model="m", version="1", route="predict"),
            )
        )
    return scrapes


def test_gpu_utilisation_tracking_latency() -> None:
    rising = Evidence(scrapes=_gpu_scrapes([20, 40, 60, 80, 95], [0.002, 0.004, 0.02, 0.05, 0.2]))
    row = autoscaling_rows(rising, S)[0]
    assert row.verdict is Verdict.FINE and row.measured and row.measured > 0.5
    flat = Evidence(scrapes=_gpu_scrapes([90, 20, 85, 25, 80], [0.002, 0.2, 0.002, 0.2, 0.002]))
    assert autoscaling_rows(flat, S)[0].verdict is Verdict.RECONSIDER
    short = Evidence(scrapes=_gpu_scrapes([20, 40], [0.002, 0.004]))
    assert autoscaling_rows(short, S)[0].verdict is Verdict.NO_DATA


def test_no_gpu_metrics_is_not_enough_data_and_says_why() -> None:
    row = autoscaling_rows(_two(_traffic(0), _traffic(100)), S)[0]
    assert row.verdict is Verdict.NO_DATA and "CPU-only" in row.action


def test_shed_requests_call_for_capacity() -> None:
    def shed(n: int, queue: int) -> list[Sample]:
        return [sample("servekit_shed_requests_total", n), sample("servekit_queue_rows", queue)]

    row = autoscaling_rows(_two(shed(0, 0), shed(7, 900)), S)[1]
    assert row.verdict is Verdict.RECONSIDER and "900 rows" in row.value
    assert autoscaling_rows(_two(shed(3, 0), shed(3, 0)), S)[1].verdict is Verdict.FINE
    assert autoscaling_rows(_two([], []), S)[1].verdict is Verdict.NO_DATA
