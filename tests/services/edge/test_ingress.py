"""The ingress gate's decisions on plain lanes: the in-flight limit (none by default, set,
derived from the lanes, or 0 to drain), the loop-lag rule (off by default; two late
readings in a row, past a set lag or the least any lane tolerates) and a named model's
lane over its budget."""

from __future__ import annotations

import asyncio

import pytest

from services.edge.ingress import IngressGate
from services.errors import OverloadedError
from services.runner.admission import Admission
from services.runner.lanes import BatcherStats, Lane, LaneLimits
from services.settings import BatchPolicy

BUDGET_S = 0.05


def lane(
    model: str = "m", *, row_s: float = float("inf"), call_s: float = float("inf"), queued: int = 0
) -> Lane:
    out = Lane(
        (model, "1"),
        BatchPolicy(max_batch_size=32, max_wait_ms=10, queue_budget_ms=BUDGET_S * 1000),
        LaneLimits(max_concurrency=1, queue_limit=1024),
    )
    out.row_s, out.call_s, out.queued_rows = row_s, call_s, queued
    return out


def gate(lanes: list[Lane], **kwargs: object) -> tuple[IngressGate, Admission]:
    admission = Admission(BatcherStats())
    return IngressGate(lambda: lanes, admission, budget_s=BUDGET_S, **kwargs), admission  # type: ignore[arg-type]


def refusal(g: IngressGate, model: str | None = None) -> str:
    with pytest.raises(OverloadedError) as info:
        g.check(model)
    assert info.value.retry_after >= 1  # type: ignore[attr-defined]
    return str(info.value.context["reason"])


def test_the_derived_limit_is_what_the_lanes_hold_within_their_budgets() -> None:
    unknown = lane()  # no call yet: a batch queued and a batch running
    assert gate([unknown], max_in_flight="lanes")[0].limit() == 64 + 32 + 32
    fast = lane("fast", row_s=1e-4, call_s=1e-3)  # 50 ms of rows: 500 queued
    assert gate([unknown, fast], max_in_flight="lanes")[0].limit() == 64 + 64 + 500 + 32
    capped = lane(row_s=1e-6)  # capped by the queue limit
    assert gate([capped], max_in_flight="lanes")[0].limit() == 64 + 1024 + 32
    g, _ = gate([unknown])  # the default: no limit
    assert g.limit() is None
    for _ in range(1000):
        g.check()


def test_requests_past_the_limit_are_refused_until_one_leaves() -> None:
    g, admission = gate([], max_in_flight=2)
    g.check()
    g.check("m")
    assert refusal(g) == "in_flight"
    g.leave()
    g.check()
    assert g.in_flight == 2
    assert admission.stats.refused[("", "", "in_flight")] == 1


def test_a_limit_of_zero_drains_the_worker() -> None:
    g, _ = gate([lane()], max_in_flight=0)
    assert refusal(g) == "in_flight"
    assert refusal(g, "m") == "in_flight"
    assert g.in_flight == 0


def test_a_named_model_over_its_budget_is_refused_and_others_pass() -> None:
    busy = lane("busy", row_s=0.1, call_s=3.2, queued=32)  # 3.2 s + half a call ahead
    g, admission = gate([busy, lane("idle", row_s=0.1, call_s=3.2)])
    assert refusal(g, "busy") == "budget"
    assert admission.stats.refused[("busy", "1", "budget")] == 1
    g.check("idle")
    g.check(None)  # /predict: the model is in the body, not known here
    assert g.in_flight == 2


def test_the_loop_must_lag_twice_in_a_row_past_the_least_tolerance() -> None:
    text = lane("text", row_s=0.05, call_s=1.5)  # a call outlasts the budget: 1.5 s
    g, _ = gate([text])  # the default: off
    g.prev_lag_s = g.lag_s = 9.0
    g.check()
    g, _ = gate([text], lag_s="lanes")
    assert g.lag_limit() == 1.5
    g.prev_lag_s, g.lag_s = 0.0, 2.0  # one stall
    g.check()
    g.prev_lag_s = 2.0  # two late readings
    assert refusal(g) == "loop"
    fast = lane("fast", row_s=1e-4, call_s=1e-3)
    g, _ = gate([text, fast], lag_s="lanes")
    assert g.lag_limit() == BUDGET_S
    g.prev_lag_s = g.lag_s = 0.06
    assert refusal(g) == "loop"
    g, _ = gate([text, fast], lag_s=0.5)  # set: the lanes do not matter
    g.prev_lag_s = g.lag_s = 0.4
    g.check()
    g.prev_lag_s = g.lag_s = 0.6
    assert refusal(g) == "loop"


def test_the_sampler_measures_the_loop() -> None:
    async def run() -> float:
        g, _ = gate([], interval_s=0.005, lag_s=1.0)
        g.start()
        await asyncio.sleep(0.03)
        busy_until = asyncio.get_running_loop().time() + 0.1
        while asyncio.get_running_loop().time() < busy_until:
            pass  # the loop is held: the sampler's wake-up is late
        await asyncio.sleep(0.001)  # the overdue sampler runs first
        late = g.lag_s
        assert g._task is not None
        g._task.cancel()
        return late

    assert asyncio.run(run()) >= 0.09
