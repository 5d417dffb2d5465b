"""TickCoalescer: concurrent submissions in one loop iteration become one call."""

from __future__ import annotations

import asyncio

import pytest

from services.state.coalesce import TickCoalescer


async def test_concurrent_submissions_share_one_call() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        return [i * 10 for i in items]

    c: TickCoalescer[int, int] = TickCoalescer(run)
    results = await asyncio.gather(c.submit([1, 2]), c.submit([3]), c.submit([4, 5, 6]))
    assert results == [[10, 20], [30], [40, 50, 60]]
    assert calls == [[1, 2, 3, 4, 5, 6]]
    assert await c.submit([7]) == [70]  # a lone caller still gets its answer
    assert (c.calls, c.items) == (2, 7)


async def test_failure_reaches_every_waiter() -> None:
    async def run(items: list[int]) -> list[int]:
        raise ConnectionError("redis down")

    c: TickCoalescer[int, int] = TickCoalescer(run)
    results = await asyncio.gather(c.submit([1]), c.submit([2]), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_cancelled_waiter_does_not_break_the_others() -> None:
    gate = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        await gate.wait()
        return items

    c: TickCoalescer[int, int] = TickCoalescer(run)
    slow = asyncio.ensure_future(c.submit([1]))
    other = asyncio.ensure_future(c.submit([2]))
    await asyncio.sleep(0)
    slow.cancel()
    gate.set()
    assert await other == [2]
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_posted_items_join_the_call_and_drain_waits_for_it() -> None:
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        await gate.wait()
        return items

    c: TickCoalescer[int, int] = TickCoalescer(run)
    waiter = asyncio.ensure_future(c.submit([1]))
    await asyncio.sleep(0)  # the submission is in, its call not started yet
    c.post([2])  # returns at once
    c.post([3])
    drained = asyncio.ensure_future(c.drain())
    await asyncio.sleep(0.01)
    assert calls == [[1, 2, 3]] and not drained.done()
    gate.set()
    await drained
    assert await waiter == [1]


async def test_a_failed_posted_call_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def run(items: list[int]) -> list[int]:
        raise ConnectionError("redis down")

    c: TickCoalescer[int, int] = TickCoalescer(run)
    c.post([1])
    await c.drain()
    assert "redis down" in caplog.text
    with pytest.raises(ConnectionError):  # a waiter still sees its own call's failure
        await c.submit([2])


async def test_a_call_cancelled_before_it_starts_cancels_its_waiters() -> None:
    async def run(items: list[int]) -> list[int]:
        return items

    c: TickCoalescer[int, int] = TickCoalescer(run)
    waiter = asyncio.ensure_future(c.submit([1]))
    await asyncio.sleep(0)  # the submission is in; its call has not started
    for task in list(c._tasks):
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await c.submit([2]) == [2]  # the next call starts afresh
