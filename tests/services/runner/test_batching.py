"""The adaptive micro-batcher: lone requests go at once, batches form under load, groups
are isolated, the queue is bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable

import numpy as np
import pytest

from services.errors import OverloadedError
from services.runner.batching import AdaptiveBatcher
from services.runner.feeds import Feeds, concat_feeds, split_outputs
from services.settings import BatchPolicy


class Recorder:
    """A run_group that doubles its input and records each call's groups and rows."""

    def __init__(
        self, fail: set[Hashable] | None = None, gate: threading.Event | None = None
    ) -> None:
        self.calls: list[tuple[Hashable, int]] = []
        self.fail = fail or set()
        self.gate = gate

    def __call__(self, group: Hashable, feeds: list[Feeds]) -> list[Feeds]:
        if self.gate is not None:
            self.gate.wait(5)
        batch, sizes = concat_feeds(feeds)
        self.calls.append((group, len(batch["x"])))
        if group in self.fail:
            raise ValueError(f"broken model {group}")
        return split_outputs({"y": batch["x"] * 2}, sizes)


def feeds(*values: float) -> Feeds:
    return {"x": np.array(values, dtype=np.float32).reshape(-1, 1)}


def make(run: Recorder, **kw: object) -> AdaptiveBatcher:
    policy = BatchPolicy(
        max_batch_size=kw.pop("max_batch", 32), max_wait_ms=kw.pop("max_wait_ms", 10)
    )  # type: ignore[arg-type]
    return AdaptiveBatcher(run, policy_for=lambda g: policy, inline_below_s=0.0, **kw)  # type: ignore[arg-type]


async def test_lone_request_is_not_held() -> None:
    run = Recorder()
    batcher = make(run, max_wait_ms=500)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out = await batcher.submit("m", feeds(1.5), 1)
    assert loop.time() - t0 < 0.25  # far below the 500 ms max wait
    assert out["y"].tolist() == [[3.0]]
    await batcher.close()


async def test_batches_form_while_the_runner_is_busy() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    batcher = make(run)
    first = asyncio.ensure_future(batcher.submit("m", feeds(0), 1))
    await asyncio.sleep(0.01)  # the first batch is now running, held at the gate
    rest = [asyncio.ensure_future(batcher.submit("m", feeds(i), 1)) for i in range(1, 11)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(first, *rest)
    assert [r["y"][0, 0] for r in results] == [2.0 * i for i in range(11)]
    assert run.calls == [("m", 1), ("m", 10)]
    assert batcher.stats.batch_rows == {1: 1, 10: 1}
    await batcher.close()


async def test_max_batch_size_is_respected() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    batcher = make(run, max_batch=4)
    jobs = [asyncio.ensure_future(batcher.submit("m", feeds(i), 1)) for i in range(10)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*jobs)
    assert all(rows <= 4 for _, rows in run.calls)
    assert sum(rows for _, rows in run.calls) == 10
    await batcher.close()


async def test_mixed_groups_run_separately_and_failures_stay_in_their_group() -> None:
    gate = threading.Event()
    run = Recorder(fail={("bad", "1")}, gate=gate)
    batcher = make(run)
    blocker = asyncio.ensure_future(batcher.submit(("good", "1"), feeds(0), 1))
    await asyncio.sleep(0.01)
    good = [asyncio.ensure_future(batcher.submit(("good", "1"), feeds(i), 1)) for i in (1, 2)]
    bad = asyncio.ensure_future(batcher.submit(("bad", "1"), feeds(3), 1))
    other = asyncio.ensure_future(batcher.submit(("good", "2"), feeds(4, 5), 2))
    gate.set()
    await blocker
    assert [g["y"][0, 0] for g in await asyncio.gather(*good)] == [2.0, 4.0]
    assert (await other)["y"].ravel().tolist() == [8.0, 10.0]
    with pytest.raises(ValueError, match="broken model"):
        await bad
    # Each group runs in its own lane (side by side, so in no fixed order): the blocker,
    # then one call holding the two queued rows of ("good", "1"), and one call per other group.
    assert sorted(run.calls, key=str) == sorted(
        [(("good", "1"), 1), (("good", "1"), 2), (("bad", "1"), 1), (("good", "2"), 2)], key=str
    )
    await batcher.close()


async def test_full_queue_sheds_at_once_with_retry_after() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    batcher = make(run, queue_limit=3)
    running = asyncio.ensure_future(batcher.submit("m", feeds(0), 1))
    await asyncio.sleep(0.01)
    queued = [asyncio.ensure_future(batcher.submit("m", feeds(i), 1)) for i in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError) as err:
        await batcher.submit("m", feeds(9), 1)
    assert err.value.retry_after >= 1
    assert batcher.stats.shed == 1
    gate.set()
    await asyncio.gather(running, *queued)
    await batcher.close()


async def test_batching_off_runs_each_request_alone() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    batcher = make(run, enabled=False)
    jobs = [asyncio.ensure_future(batcher.submit("m", feeds(i, i), 2)) for i in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*jobs)
    assert run.calls == [("m", 2)] * 5
    await batcher.close()


class BusyRecorder(Recorder):
    """A runner whose every call takes ``cost`` seconds of the (fake) clock."""

    def __init__(self, now: list[float], cost: float) -> None:
        super().__init__()
        self.now, self.cost = now, cost

    def __call__(self, group: Hashable, feeds: list[Feeds]) -> list[Feeds]:
        self.now[0] += self.cost
        return super().__call__(group, feeds)


async def test_lingers_only_when_arrivals_are_frequent() -> None:
    """Under a steady stream on a busy runner, the dispatcher waits (up to max_wait) to
    fill a batch."""
    now = [0.0]
    run = BusyRecorder(now, cost=0.002)
    batcher = make(run, max_wait_ms=50, clock=lambda: now[0])
    # Teach it a 1 ms arrival gap and a runner busy 2 ms of every 3.
    for i in range(10):
        now[0] += 0.001
        await batcher.submit("m", feeds(i), 1)
    assert run.calls == [("m", 1)] * 10  # each awaited alone: nothing to batch with
    now[0] += 0.001
    first = asyncio.ensure_future(batcher.submit("m", feeds(10), 1))
    await asyncio.sleep(0)  # the dispatcher now lingers for more rows
    more = [asyncio.ensure_future(batcher.submit("m", feeds(11 + i), 1)) for i in range(3)]
    await asyncio.gather(first, *more)
    assert run.calls[10] == ("m", 4)
    await batcher.close()


async def test_never_lingers_when_the_runner_keeps_up() -> None:
    """A tiny model (calls take no time): frequent arrivals alone never cause a wait."""
    run = Recorder()
    now = [0.0]
    batcher = make(run, max_wait_ms=50, clock=lambda: now[0])
    for i in range(5):
        now[0] += 0.001
        await batcher.submit("m", feeds(i), 1)
    now[0] += 0.001
    first = asyncio.ensure_future(batcher.submit("m", feeds(10), 1))
    await asyncio.sleep(0)
    more = [asyncio.ensure_future(batcher.submit("m", feeds(11 + i), 1)) for i in range(3)]
    await asyncio.gather(first, *more)
    assert run.calls[5] == ("m", 1)  # dispatched at once, not held for the others
    await batcher.close()


async def test_no_learned_wait_survives_a_burst() -> None:
    """After a burst, one long gap resets the arrival estimate: the next lone request
    is dispatched without lingering."""
    run = Recorder()
    now = [0.0]
    batcher = make(run, max_wait_ms=50, clock=lambda: now[0])
    for i in range(20):
        now[0] += 0.0001
        await batcher.submit("m", feeds(i), 1)
    now[0] += 10.0  # quiet period
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await batcher.submit("m", feeds(1), 1)
    assert loop.time() - t0 < 0.04
    await batcher.close()


def test_concat_and_split_round_trip() -> None:
    a, b = feeds(1, 2), feeds(3)
    batch, sizes = concat_feeds([a, b])
    assert sizes == [2, 1]
    parts = split_outputs({"y": batch["x"]}, sizes)
    assert parts[0]["y"].ravel().tolist() == [1, 2] and parts[1]["y"].ravel().tolist() == [3]


class Stoppable:
    """A stoppable run_group whose next ``hangs`` calls block until stopped."""

    def __init__(self) -> None:
        self.hangs = 0
        self.calls: list[str] = []

    def __call__(self, group: Hashable, feeds: list[Feeds], switch: object) -> list[Feeds]:
        from services.runner.watchdog import StopSwitch

        assert isinstance(switch, StopSwitch)
        where = "inline" if threading.current_thread() is threading.main_thread() else "thread"
        self.calls.append(where)
        if self.hangs:
            self.hangs -= 1
            stopped = threading.Event()
            switch.bind(stopped.set)
            if stopped.wait(5):
                raise RuntimeError("stopped")
        batch, sizes = concat_feeds(feeds)
        return split_outputs({"y": batch["x"] * 2}, sizes)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_stopped_inline_call_reruns_on_a_thread_and_backs_off() -> None:
    run = Stoppable()
    clock = FakeClock()
    policy = BatchPolicy(max_batch_size=32, max_wait_ms=10)
    batcher = AdaptiveBatcher(
        run,
        policy_for=lambda g: policy,
        inline_below_s=0.01,
        clock=clock,
        inline_for=lambda g: False,  # not trusted: inline only because it can be stopped
        stoppable_for=lambda g: True,
        inline_deadline_s=0.02,
    )
    assert (await batcher.submit("m", feeds(1), 1))["y"].tolist() == [[2.0]]
    await batcher.submit("m", feeds(1), 1)
    assert run.calls == ["thread", "inline"]  # timed on a thread first, then inline

    run.hangs = 1
    out = await batcher.submit("m", feeds(3), 1)  # stopped inline, answered from a thread
    assert out["y"].tolist() == [[6.0]]
    assert run.calls[2:] == ["inline", "thread"] and batcher.stats.inline_stops == 1

    await batcher.submit("m", feeds(1), 1)
    assert run.calls[-1] == "thread"  # off the inline path during the backoff (1 s)
    clock.now += 1.1
    await batcher.submit("m", feeds(1), 1)
    assert run.calls[-1] == "inline"

    run.hangs = 1
    await batcher.submit("m", feeds(1), 1)  # a second stop: the backoff doubles
    assert batcher.stats.inline_stops == 2
    clock.now += 1.1
    await batcher.submit("m", feeds(1), 1)
    assert run.calls[-1] == "thread"
    clock.now += 1.0
    await batcher.submit("m", feeds(1), 1)
    assert run.calls[-1] == "inline"
    await batcher.close()


async def test_an_unstoppable_untrusted_group_never_runs_inline() -> None:
    run = Recorder()
    batcher = make(run, inline_for=lambda g: False)
    batcher.inline.below_s = 1.0  # every call counts as tiny
    for _ in range(5):
        await batcher.submit("m", feeds(1), 1)
    assert batcher.stats.inline_batches == 0
    await batcher.close()
