"""A lane's bookkeeping (queue, batches taken, learned timings), its linger policy, and
the inline-run policy with its backoff after a stop."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from services.errors import OverloadedError
from services.runner.inline import InlinePolicy
from services.runner.lanes import (
    Job,
    Lane,
    LaneLimits,
    group_name,
    length_buckets,
    split_group,
)
from services.settings import BatchPolicy


def lane(max_wait_ms: float = 10.0) -> Lane:
    return Lane(("m", "1"), BatchPolicy(max_batch_size=8, max_wait_ms=max_wait_ms), LaneLimits())


def job(loop: asyncio.AbstractEventLoop, rows: int, at: float = 0.0, width: int = 1) -> Job:
    feeds = {"x": np.zeros((rows, width), np.int64 if width > 1 else np.float32)}
    return Job(("m", "1"), feeds, rows, loop.create_future(), at)


async def test_take_fills_up_to_the_limit_and_skips_callers_that_left() -> None:
    loop = asyncio.get_running_loop()
    ln = lane()
    jobs = [job(loop, rows) for rows in (2, 3, 4, 5)]
    for j in jobs:
        ln.arrive(j)
    jobs[1].future.cancel()  # its caller went away
    taken, rows, removed = ln.take(6)
    assert taken == [jobs[0], jobs[2]] and rows == 6 and removed == 9
    assert ln.queued_rows == 5
    # At least one job, even past the limit.
    taken, rows, removed = ln.take(1)
    assert taken == [jobs[3]] and rows == removed == 5 and ln.queued_rows == 0


async def test_clear_fails_the_queue_and_returns_its_rows() -> None:
    loop = asyncio.get_running_loop()
    ln = lane()
    jobs = [job(loop, 2), job(loop, 3)]
    for j in jobs:
        ln.arrive(j)
    assert ln.clear(OverloadedError("gone", retry_after=1)) == 5
    assert not ln.queue and ln.queued_rows == 0
    for j in jobs:
        with pytest.raises(OverloadedError):
            j.future.result()


async def test_arrival_gaps_are_smoothed() -> None:
    loop = asyncio.get_running_loop()
    ln = lane()
    ln.arrive(job(loop, 1, at=1.0))
    assert math.isinf(ln.gap_ewma)
    ln.arrive(job(loop, 1, at=1.010))
    assert ln.gap_ewma == pytest.approx(0.010)
    ln.arrive(job(loop, 1, at=1.030))
    assert ln.gap_ewma == pytest.approx(0.8 * 0.010 + 0.2 * 0.020)


async def test_a_lane_lingers_only_while_the_runner_is_the_bottleneck() -> None:
    loop = asyncio.get_running_loop()
    ln = lane(max_wait_ms=10.0)
    head = job(loop, 1, at=0.0)
    ln.gap_ewma = 0.001
    assert ln.linger_wait(head, lambda: 0.0) == 0.0  # idle runner: never wait
    ln.util = 0.9
    assert ln.linger_wait(head, lambda: 0.0) == pytest.approx(0.004)  # 4 gaps
    assert ln.linger_wait(head, lambda: 0.009) == 0.0  # too little of the wait left
    ln.gap_ewma = 0.006
    assert ln.linger_wait(head, lambda: 0.0) == 0.0  # arrivals too rare to fill a batch


async def test_fruitless_lingers_stop_lingering_but_for_probes() -> None:
    loop = asyncio.get_running_loop()
    ln = lane()
    ln.util, ln.gap_ewma = 0.9, 0.001
    head = job(loop, 1)
    for _ in range(8):
        ln.linger_from = ln.queued_rows
        ln.linger_ended()
    assert ln.fruitless == 8 and ln.lingered
    ln.dispatches = 1
    assert ln.linger_wait(head, lambda: 0.0) == 0.0
    ln.dispatches = 64  # a probe
    assert ln.linger_wait(head, lambda: 0.0) > 0
    ln.arrive(head)  # a linger that gained rows resets the count
    ln.linger_from = 0
    ln.linger_ended()
    assert ln.fruitless == 0


def test_finished_calls_teach_duty_cycle_and_run_time() -> None:
    ln = lane()
    ln.started(1.0)
    ln.started(1.010)
    ln.finished(0.005, 0.002)
    assert ln.run_ewma == pytest.approx(0.002)
    assert ln.util == pytest.approx(0.2 * 0.5)
    ln.finished(0.005, 0.004)
    assert ln.run_ewma == pytest.approx(0.9 * 0.002 + 0.1 * 0.004)


async def test_length_buckets_keep_first_appearance_order() -> None:
    loop = asyncio.get_running_loop()
    jobs = [job(loop, 1, width=10), job(loop, 1, width=200), job(loop, 1, width=12)]
    assert length_buckets(jobs) == [[0, 2], [1]]


def test_group_names() -> None:
    assert split_group(("m", "2")) == ("m", "2") and split_group("m") == ("m", None)
    assert group_name(("m", "2")) == "model m version 2" and group_name("m") == "model m"


# -- the inline policy ------------------------------------------------------------------


def tiny(stoppable: bool = False) -> Lane:
    ln = lane()
    ln.run_ewma, ln.stoppable = 0.0001, stoppable
    return ln


def test_inline_mode_by_size_trust_and_stop_switch() -> None:
    trusted = InlinePolicy(0.0003, 0.02, lambda g: True)
    untrusted = InlinePolicy(0.0003, 0.02, lambda g: False)
    assert trusted.mode(tiny(), 0.0) is False  # inline, unwatched
    assert untrusted.mode(tiny(), 0.0) is None  # a thread: nothing can stop it
    assert untrusted.mode(tiny(stoppable=True), 0.0) is True  # inline under the watchdog
    assert InlinePolicy(0.0003, 0.0, lambda g: False).mode(tiny(stoppable=True), 0.0) is None
    slow = tiny()
    slow.run_ewma = 0.001
    assert trusted.mode(slow, 0.0) is None
    busy = tiny()
    busy.running = 1
    assert trusted.mode(busy, 0.0) is None


def test_a_stop_backs_off_doubling_and_is_forgotten_after_a_clean_spell() -> None:
    policy = InlinePolicy(0.0003, 0.02, lambda g: False)
    ln = tiny(stoppable=True)
    policy.stopped(ln, 100.0)
    assert policy.mode(ln, 100.9) is None and policy.mode(ln, 101.0) is True
    policy.stopped(ln, 101.0)
    assert ln.inline_after == 103.0  # 2 s
    policy.stopped(ln, 103.0)
    assert ln.inline_after == 107.0  # 4 s
    policy.stopped(ln, 800.0)  # 600 s clean: back to 1 s
    assert ln.strikes == 1 and ln.inline_after == 801.0
