"""Deadline-aware admission on a real batcher over a slow backend: refusals by expected
wait, drops of requests that aged past their budget or deadline, disconnected clients."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Hashable
from typing import Any

import numpy as np
import pytest

from services.errors import BadRequestError, OverloadedError
from services.runner.admission import (
    REQUEST,
    bind_request,
    parse_timeout,
    request_answered,
    shorten_deadline,
)
from services.runner.batching import AdaptiveBatcher
from services.runner.feeds import Feeds, concat_feeds, split_outputs
from services.settings import BatchPolicy, BatchSettings

GROUP = ("m", "1")


class SlowBackend:
    """Doubles its input after ``call_s`` seconds; a closed ``gate`` holds calls."""

    def __init__(self, call_s: float) -> None:
        self.call_s = call_s
        self.gate = threading.Event()
        self.gate.set()
        self.seen: list[float] = []  # every value it computed

    def __call__(self, group: Hashable, feeds: list[Feeds]) -> list[Feeds]:
        self.gate.wait(5)
        time.sleep(self.call_s)
        batch, sizes = concat_feeds(feeds)
        self.seen += batch["x"].ravel().tolist()
        return split_outputs({"y": batch["x"] * 2}, sizes)


def feeds(value: float) -> Feeds:
    return {"x": np.array([[value]], dtype=np.float32)}


def make(backend: SlowBackend, budget_ms: float | None, max_batch: int = 4) -> AdaptiveBatcher:
    policy = BatchPolicy(max_batch_size=max_batch, max_wait_ms=0, queue_budget_ms=budget_ms)
    return AdaptiveBatcher(backend, policy_for=lambda g: policy, inline_below_s=0.0)


async def submit(
    batcher: AdaptiveBatcher, value: float, timeout_s: float | None = None, receive: Any = None
) -> Feeds:
    """One request in its own context, as the edge binds it."""
    bind_request(timeout_s, receive)
    return await batcher.submit(GROUP, feeds(value), 1)


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


async def hold_lane(batcher: AdaptiveBatcher, backend: SlowBackend) -> asyncio.Future[Feeds]:
    """Warm the lane (so it knows its timings), then start a call held at the gate."""
    await submit(batcher, -1)
    backend.gate.clear()
    held = asyncio.ensure_future(submit(batcher, -2))
    await until(lambda: batcher.busy(GROUP) and not batcher._lanes[GROUP].queue)
    return held


async def test_over_budget_is_refused_at_once_once_the_next_batch_is_full() -> None:
    backend = SlowBackend(0.05)
    batcher = make(backend, budget_ms=20)  # one call outlasts the budget
    held = await hold_lane(batcher, backend)
    # The rows that fill the next batch are admitted whatever the budget says ...
    queued = [asyncio.ensure_future(submit(batcher, i)) for i in range(4)]
    await until(lambda: batcher._lanes[GROUP].queued_rows == 4)
    t0 = time.perf_counter()
    with pytest.raises(OverloadedError, match="over the 0.02 s budget") as refused:
        await submit(batcher, 99)  # ... the next one would wait for two calls: refused
    assert time.perf_counter() - t0 < 0.005  # at once, not after a wait
    assert refused.value.context["reason"] == "budget"
    assert refused.value.retry_after >= 1
    assert batcher.admission.stats.refused == {("m", "1", "budget"): 1}
    assert batcher.stats.shed == 1
    backend.gate.set()
    results = await asyncio.gather(held, *queued)
    assert [r["y"][0, 0] for r in results] == [-4.0, 0.0, 2.0, 4.0, 6.0]
    assert 99.0 not in backend.seen
    await batcher.close()


async def test_a_fast_model_queues_as_many_batches_as_fit_in_the_budget() -> None:
    backend = SlowBackend(0.001)
    batcher = make(backend, budget_ms=1000, max_batch=2)
    held = await hold_lane(batcher, backend)
    # ~1 ms per call of one row: 20 rows (10 batches) ahead expect ~20 ms, well in budget.
    queued = [asyncio.ensure_future(submit(batcher, i)) for i in range(20)]
    await until(lambda: batcher._lanes[GROUP].queued_rows == 20)
    backend.gate.set()
    assert len(await asyncio.gather(held, *queued)) == 21
    assert batcher.admission.stats.refused == {}
    await batcher.close()


@pytest.mark.parametrize("budget_ms", [None, 0])
async def test_without_a_budget_only_the_row_limit_sheds(budget_ms: float | None) -> None:
    backend = SlowBackend(0.02)
    batcher = make(backend, budget_ms=budget_ms)
    held = await hold_lane(batcher, backend)
    queued = [asyncio.ensure_future(submit(batcher, i)) for i in range(12)]
    await until(lambda: batcher._lanes[GROUP].queued_rows == 12)
    backend.gate.set()
    results = await asyncio.gather(held, *queued)
    assert len(results) == 13 and batcher.admission.stats.refused == {}
    assert batcher.admission.stats.dropped == {}
    await batcher.close()


async def test_a_request_that_aged_past_its_budget_is_dropped_unrun() -> None:
    backend = SlowBackend(0.0)  # the lane learns calls are instant ...
    batcher = make(backend, budget_ms=20)
    held = await hold_lane(batcher, backend)
    late = asyncio.ensure_future(submit(batcher, 7))
    await until(lambda: batcher._lanes[GROUP].queued_rows == 1)
    await asyncio.sleep(0.1)  # ... then one call takes 100 ms: past twice the 20 ms budget
    backend.gate.set()
    await held
    with pytest.raises(OverloadedError, match="past its budget") as dropped:
        await late
    assert dropped.value.context["reason"] == "budget"
    assert 7.0 not in backend.seen
    assert batcher.admission.stats.dropped == {("m", "1", "budget"): 1}
    await batcher.close()


async def test_client_deadline_drops_a_queued_request_and_refuses_a_hopeless_one() -> None:
    backend = SlowBackend(0.05)
    batcher = make(backend, budget_ms=0)  # no budget: only the client's deadline counts
    held = await hold_lane(batcher, backend)
    short = asyncio.ensure_future(submit(batcher, 5, timeout_s=0.1))
    await until(lambda: batcher._lanes[GROUP].queued_rows == 1)
    # Its expected wait (half the running call, one row ahead) is over 5 ms: refused now.
    with pytest.raises(OverloadedError, match="deadline passes") as refused:
        await submit(batcher, 6, timeout_s=0.005)
    assert refused.value.context["reason"] == "deadline"
    await asyncio.sleep(0.15)  # the first one's 100 ms pass while it waits
    backend.gate.set()
    await held
    with pytest.raises(OverloadedError, match="deadline passed") as dropped:
        await short
    assert dropped.value.context["reason"] == "deadline"
    assert 5.0 not in backend.seen and 6.0 not in backend.seen
    stats = batcher.admission.stats
    assert stats.refused == {("m", "1", "deadline"): 1}
    assert stats.dropped == {("m", "1", "deadline"): 1}
    assert batcher.stats.shed == 0  # the client's own deadline is not overload
    await batcher.close()


async def test_a_disconnected_client_is_not_run() -> None:
    backend = SlowBackend(0.0)
    batcher = make(backend, budget_ms=0)
    held = await hold_lane(batcher, backend)
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    orphan = asyncio.ensure_future(submit(batcher, 8, receive=receive))
    await until(lambda: batcher._lanes[GROUP].queued_rows == 1)
    job = batcher._lanes[GROUP].queue[0]
    assert job.ctx is not None and job.ctx.watcher is not None  # it waits: watched
    gone.set()
    await until(lambda: job.ctx is not None and job.ctx.gone)
    backend.gate.set()
    await held
    with pytest.raises(OverloadedError, match="disconnected"):
        await orphan
    assert 8.0 not in backend.seen
    assert batcher.admission.stats.dropped == {("m", "1", "disconnected"): 1}
    await batcher.close()


async def test_work_left_behind_by_an_answered_request_is_not_bound_by_its_client() -> None:
    """A shadow call inherits its request's context; once the request is answered its
    client's deadline and the end of its connection no longer apply."""
    backend = SlowBackend(0.0)
    batcher = make(backend, budget_ms=0)
    held = await hold_lane(batcher, backend)

    async def answered() -> dict[str, Any]:
        return {"type": "http.disconnect"}  # what receive says once the response is sent

    async def shadow() -> Feeds:
        bind_request(0.05, answered)
        request_answered()
        return await batcher.submit(GROUP, feeds(9), 1)

    late = asyncio.ensure_future(shadow())
    await until(lambda: batcher._lanes[GROUP].queued_rows == 1)
    await asyncio.sleep(0.1)  # past the client's 50 ms
    backend.gate.set()
    await held
    assert (await late)["y"][0, 0] == 18.0
    assert batcher.admission.stats.dropped == {}
    await batcher.close()


async def test_a_request_on_an_idle_lane_gets_no_watcher_and_runs() -> None:
    backend = SlowBackend(0.0)
    batcher = make(backend, budget_ms=50)

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    async def one() -> Any:
        ctx = bind_request(10.0, never)
        out = await batcher.submit(GROUP, feeds(3), 1)
        return ctx, out

    ctx, out = await one()
    assert out["y"][0, 0] == 6.0 and ctx.watcher is None
    await batcher.close()


def test_parse_timeout() -> None:
    assert parse_timeout("1.5", "Request-Timeout") == 1.5
    assert parse_timeout(250_000, "parameters.timeout", scale=1e-6) == 0.25
    assert parse_timeout("1e12", "Request-Timeout") == 86_400.0
    for bad in ("soon", "0", "-1", "nan", "inf", "", True, None):
        with pytest.raises(BadRequestError, match="Request-Timeout") as exc:
            parse_timeout(bad, "Request-Timeout")  # type: ignore[arg-type]
        assert exc.value.context["field"] == "Request-Timeout"


async def test_shorten_deadline_keeps_the_sooner_one() -> None:
    async def body() -> tuple[float, float]:
        assert REQUEST.get() is None
        shorten_deadline(5.0)  # no context yet: one is made
        ctx = REQUEST.get()
        assert ctx is not None and ctx.receive is None
        first = ctx.deadline
        shorten_deadline(50.0)  # later: ignored
        return first, ctx.deadline

    first, after = await asyncio.ensure_future(body())
    assert first == after and math.isfinite(after)


def test_budget_defaults_to_half_the_latency_target() -> None:
    settings = BatchSettings(per_model={"big": BatchPolicy(max_batch_size=8)})
    assert settings.policy_for("fraud").queue_budget_ms == 50.0
    assert settings.policy_for("big").queue_budget_ms == 50.0
    assert settings.policy_for("big").max_batch_size == 8
    settings = BatchSettings(
        latency_target_ms=400,
        per_model={"off": BatchPolicy(queue_budget_ms=0)},
    )
    assert settings.policy_for("fraud").queue_budget_ms == 200.0
    assert settings.policy_for("off").queue_budget_ms == 0
    assert BatchSettings(queue_budget_ms=0).policy_for("fraud").queue_budget_ms == 0
