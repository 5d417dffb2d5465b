"""The cache's CPU-cost policy, fed costs directly (no timing): CpuCosts, the cost rule in
AutoDisable with its hysteresis and probes, and the CPU meter on a real event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.settings import CacheSettings
from services.state.cache_policy import AutoDisable, CacheState, CpuCosts
from services.state.cpu_meter import CpuMeter, PerRow

US = 1e-6


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Runner:
    """A settable runner CPU per row, by model."""

    def __init__(self, **per_row: float | None) -> None:
        self.per_row = dict(per_row)

    def __call__(self, model: str) -> float | None:
        return self.per_row.get(model)


def _settings(**kw: object) -> CacheSettings:
    base: dict[str, object] = dict(
        window=100, probe_window=20, min_off_s=10, cost_min_rows=50, probe_rate=0.02
    )
    return CacheSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_per_row_is_a_decayed_mean_per_row() -> None:
    acc = PerRow(decay=0.5)
    assert acc.value is None
    acc.add(10 * US, 10)
    assert acc.value == pytest.approx(1 * US)
    acc.add(0.0, 0)  # no rows: ignored
    acc.add(30 * US, 10)  # the old call weighs half: (5 + 30) / (5 + 10)
    assert acc.value == pytest.approx(35 / 15 * US)
    assert acc.rows_seen == 20


def test_costs_combine_own_work_client_share_runner_and_gateway() -> None:
    runner = Runner(m=40 * US)
    costs = CpuCosts(runner)
    costs.client_read.add(4 * US, 2)  # 2 us per key read
    costs.client_write.add(9 * US, 3)  # 3 us per key written
    assert costs.spent_per_row("m") is None and costs.benefit("m", 0.5, 1) is None
    # 10 rows looked up, 4 written: 30 us own + 10 x 2 + 4 x 3 = 62 us over 10 rows
    costs.add_lookup("m", 30 * US, looked=10, written=4)
    assert costs.spent_per_row("m") == pytest.approx(6.2 * US)
    assert costs.saved_per_hit("m") == pytest.approx(40 * US)
    costs.add_compute("m", 50 * US, rows=5)  # tokenizing: 10 us a row in the gateway
    assert costs.saved_per_hit("m") == pytest.approx(50 * US)
    assert costs.benefit("m", 0.5, min_rows=10) == pytest.approx(0.5 * 50 / 6.2)
    assert costs.benefit("m", 0.5, min_rows=11) is None  # not enough rows measured yet
    runner.per_row["m"] = None  # a remote runner: its CPU is not ours to weigh
    assert costs.saved_per_hit("m") is None and costs.benefit("m", 0.5, 1) is None


def _fed(policy: AutoDisable, model: str, *, runner: float, lookup: float) -> None:
    """Measured costs: ``lookup`` CPU seconds per looked-up row, ``runner`` per row."""
    policy.costs.runner_cost = Runner(**{model: runner})
    policy.costs.add_lookup(model, lookup * 100, looked=100, written=0)


def test_cheap_model_with_costly_lookup_turns_off_at_a_high_hit_rate() -> None:
    seen: list[tuple[str, CacheState]] = []
    policy = AutoDisable(_settings(), FakeClock(), lambda m, s: seen.append((m, s)))
    _fed(policy, "fraud", runner=20 * US, lookup=60 * US)
    policy.record("fraud", [True] * 40 + [False] * 9)  # 49 lookups: not enough to judge
    assert policy.state("fraud") is CacheState.ON
    policy.record("fraud", [True])  # 50 lookups, 82 % hits: 0.82 x 20 < 60
    assert policy.state("fraud") is CacheState.OFF and policy.reason("fraud") == "cost"
    assert seen[-1] == ("fraud", CacheState.OFF)


def test_costly_model_stays_on_with_duplicates() -> None:
    policy = AutoDisable(_settings(), FakeClock())
    _fed(policy, "text", runner=3000 * US, lookup=60 * US)
    for _ in range(10):
        policy.record("text", [True] * 30 + [False] * 70)  # 30 % hits: benefit 15
    assert policy.state("text") is CacheState.ON
    assert policy.benefit("text") == pytest.approx(0.3 * 3000 / 60)


def test_unknown_costs_leave_the_hit_rate_rule_alone() -> None:
    policy = AutoDisable(_settings(), FakeClock())  # no runner cost (a remote runner)
    policy.costs.add_lookup("m", 1.0, looked=100, written=0)  # a huge lookup cost
    policy.record("m", [True] * 100)
    assert policy.state("m") is CacheState.ON and policy.benefit("m") is None
    policy.record("m", [False] * 100)  # hit rate 0 < 5 %: the hit-rate rule still works
    assert policy.state("m") is CacheState.OFF and policy.reason("m") == "hit_rate"


def test_cost_policy_off_means_hit_rate_only() -> None:
    policy = AutoDisable(_settings(cost_policy=False), FakeClock())
    _fed(policy, "fraud", runner=1 * US, lookup=100 * US)
    policy.record("fraud", [True] * 100)
    assert policy.state("fraud") is CacheState.ON and policy.benefit("fraud") is None


def test_hysteresis_and_probes_flip_the_decision_back() -> None:
    clock = FakeClock()
    policy = AutoDisable(_settings(cost_off_ratio=1.0, cost_on_ratio=1.5), clock)
    runner = Runner(m=11 * US)
    policy.costs.runner_cost = runner
    policy.costs.add_lookup("m", 100 * 10 * US, looked=100, written=0)  # 10 us a row
    policy.record("m", [True] * 50)  # benefit 1.0 x 11 / 10 = 1.1: not under 1.0
    assert policy.state("m") is CacheState.ON
    policy.record("m", [False] * 10)  # 50 / 60 hits: benefit 0.92 < 1.0
    assert policy.state("m") is CacheState.OFF and policy.reason("m") == "cost"
    runner.per_row["m"] = 12 * US  # the runner got dearer: probes at 100 % -> 1.2
    clock.now += 10
    policy.record("m", [True] * 20)
    assert policy.state("m") is CacheState.OFF  # 1.2 is in the hysteresis band (< 1.5)
    runner.per_row["m"] = 16 * US  # 1.6 >= 1.5
    policy.record("m", [True])
    assert policy.state("m") is CacheState.ON and policy.reason("m") == "probes"


def test_probes_must_wait_the_minimum_off_time() -> None:
    clock = FakeClock()
    policy = AutoDisable(_settings(min_off_s=30), clock)
    _fed(policy, "m", runner=1 * US, lookup=10 * US)
    policy.record("m", [True] * 50)
    assert policy.state("m") is CacheState.OFF
    policy.costs.runner_cost = Runner(m=1000 * US)
    policy.record("m", [True] * 20)
    assert policy.state("m") is CacheState.OFF  # worth it now, but not 30 s off yet
    clock.now += 30
    policy.record("m", [True])
    assert policy.state("m") is CacheState.ON


def test_cpu_meter_counts_only_the_coroutines_own_steps() -> None:
    def spin(seconds: float) -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < seconds:
            pass

    async def metered_work() -> str:
        spin(0.01)
        await asyncio.sleep(0.05)  # meanwhile, the other task burns 40 ms
        spin(0.01)
        return "done"

    async def other() -> None:
        await asyncio.sleep(0.001)
        spin(0.04)

    async def main() -> tuple[str, float]:
        meter = CpuMeter()
        task = asyncio.create_task(other())
        out = await meter.run(metered_work())
        await task
        return out, meter.cpu

    out, cpu = asyncio.run(main())
    assert out == "done"
    assert 0.02 <= cpu < 0.035  # its own 20 ms, not the other task's 40 ms


def test_cpu_meter_passes_cancellation_through() -> None:
    async def main() -> float:
        meter = CpuMeter()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await meter.run(asyncio.sleep(1))
        return meter.cpu

    assert asyncio.run(main()) >= 0.0


def test_off_for_cost_probes_a_smaller_share() -> None:
    import hashlib

    policy = AutoDisable(_settings(probe_rate=0.1, cost_probe_rate=0.01), FakeClock())
    digests = [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(20000)]
    share = sum(policy.is_probe(d, "m") for d in digests) / len(digests)
    assert 0.08 < share < 0.12  # on, or off for the hit rate: probe_rate
    _fed(policy, "m", runner=1 * US, lookup=100 * US)
    policy.record("m", [True] * 50)
    assert policy.reason("m") == "cost"
    share = sum(policy.is_probe(d, "m") for d in digests) / len(digests)
    assert 0.005 < share < 0.015  # off for cost: cost_probe_rate
    # the cheaper probes are a subset of the usual ones: a probed input stays probed
    assert all(policy.is_probe(d) for d in digests if policy.is_probe(d, "m"))


def test_cpu_meter_passes_other_awaitables_through_unmetered() -> None:
    async def main() -> tuple[int, float]:
        meter = CpuMeter()
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(5)
        return await meter.run(fut), meter.cpu  # type: ignore[arg-type]

    assert asyncio.run(main()) == (5, 0.0)
