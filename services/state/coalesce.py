"""Coalescing concurrent Redis calls issued in the same event-loop iteration.

Every /predict makes a feature read, a cache lookup and a cache write. Issued one by one,
each costs a round trip and ~0.1 ms of redis-py CPU, several times the model's own cost
for a small tabular model. ``TickCoalescer`` merges the calls that concurrent requests
issue while the loop runs one iteration into one call (one EVAL, one MGET, one pipeline),
then hands each caller its slice. A lone request pays one extra loop iteration (~µs).
A caller that needs no result (a cache write) posts its items and goes on at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

logger = logging.getLogger(__name__)


class TickCoalescer(Generic[Item, Result]):
    """Runs ``run(items)`` once per loop iteration for all items submitted in it.

    Args:
        run: takes the concatenated items, returns one result per item, in order.
    """

    def __init__(self, run: Callable[[list[Item]], Awaitable[Sequence[Result]]]) -> None:
        self._run = run
        self._pending: list[tuple[Sequence[Item], asyncio.Future[list[Result]] | None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._starter: asyncio.Task[None] | None = None
        """The task that will take the pending items (None once it has taken them)."""
        self.calls = 0
        self.items = 0

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """``run``'s results for ``items``, computed together with concurrent submissions."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Result]] = loop.create_future()
        self._add(items, fut)
        return await fut

    def post(self, items: Sequence[Item]) -> None:
        """Add ``items`` to this iteration's call without waiting for it (its results and
        failure are not seen; ``run`` reports its own)."""
        self._add(items, None)

    async def drain(self) -> None:
        """Wait for every call under way, the one of items added now included."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _add(self, items: Sequence[Item], fut: asyncio.Future[list[Result]] | None) -> None:
        if self._starter is None:
            # The call's task starts now and takes what was added when its first step
            # runs, in the next iteration: the items of this one, with no extra hop.
            self._starter = task = asyncio.get_running_loop().create_task(self._run_pending())
            self._tasks.add(task)
            task.add_done_callback(self._done)
        self._pending.append((items, fut))

    async def _run_pending(self) -> None:
        self._starter = None
        batch, self._pending = self._pending, []
        await self._run_batch(batch)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._starter is task:  # cancelled before it took its items: so are they
            self._starter = None
            batch, self._pending = self._pending, []
            for _, fut in batch:
                if fut is not None:
                    fut.cancel()

    async def _run_batch(
        self, batch: list[tuple[Sequence[Item], asyncio.Future[list[Result]] | None]]
    ) -> None:
        merged: list[Item] = []
        for items, _ in batch:
            merged.extend(items)
        self.calls += 1
        self.items += len(merged)
        try:
            results = list(await self._run(merged))
        except BaseException as exc:  # every waiter sees the same failure
            waited = False
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                    waited = True
            if not isinstance(exc, Exception):
                raise
            if not waited:
                logger.warning("a coalesced call nobody waits for failed: %r", exc)
            return
        pos = 0
        for items, fut in batch:
            n = len(items)
            if fut is not None and not fut.done():
                fut.set_result(results[pos : pos + n])
            pos += n
