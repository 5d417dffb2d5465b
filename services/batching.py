"""An adaptive micro-batcher for the model runner.

It follows the seed's policy (wait at most ``max_wait_ms``, batch at most
``max_batch_size`` rows) without the faults measured in BentoML's dispatcher
(shared/MEASURED.md):

- A lone request on an idle runner goes at once: it lingers only when the recent arrival
  rate says more rows are due before its wait runs out, so no learned wait survives a
  burst.
- While a batch runs, arrivals queue; the next batch takes them all (up to the maximum):
  under load batches form by themselves, with no timer.
- A batch may mix models and versions: it is grouped by (model, version), each group runs
  as one backend call, and results are scattered back; one group's failure fails only
  its own requests.
- The queue is bounded in rows; a full queue answers ``OverloadedError`` (503 with
  Retry-After) at once instead of a late timeout.

Backend calls run in a one-thread executor, or inline on the event loop when a group's
measured run time is below ``inline_below_s`` (a thread hop costs more than a tiny model).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.errors import OverloadedError
from services.settings import BatchPolicy

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
# Runs one group: the feeds of several requests of one (model, version) -> their outputs.
RunGroup = Callable[[Hashable, list[Feeds]], list[Feeds]]


@dataclass(slots=True)
class _Job:
    group: Hashable
    feeds: Feeds
    rows: int
    future: asyncio.Future[Feeds]
    enqueued: float


@dataclass
class BatcherStats:
    """Counters a metrics collector reads at scrape time."""

    batches: int = 0
    rows: int = 0
    shed: int = 0
    inline_batches: int = 0
    batch_rows: collections.Counter[int] = field(default_factory=collections.Counter)


class AdaptiveBatcher:
    """Queues requests and runs them in batches, one batch at a time.

    Args:
        run_group: runs one (model, version) group of requests; called from the batcher's
            thread (or inline) with the requests' feeds, returns their outputs in order.
        policy_for: the batching policy of a group's model.
        queue_limit: most rows waiting; past it ``submit`` raises ``OverloadedError``.
        enabled: off: every request runs alone, as its own backend call.
        on_batch: called with (rows, seconds) after each backend call (for metrics).
        inline_below_s: run groups inline when their mean run time is below this.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        run_group: RunGroup,
        *,
        policy_for: Callable[[Hashable], BatchPolicy],
        queue_limit: int = 4096,
        enabled: bool = True,
        on_batch: Callable[[Hashable, int, float], None] | None = None,
        inline_below_s: float = 0.0003,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._run_group = run_group
        self._policy_for = policy_for
        self.queue_limit = queue_limit
        self.enabled = enabled
        self._on_batch = on_batch
        self._inline_below = inline_below_s
        self._clock = clock
        self._queue: collections.deque[_Job] = collections.deque()
        self.queued_rows = 0
        self.stats = BatcherStats()
        self._wakeup: asyncio.Future[None] | None = None
        self._fill: asyncio.Future[None] | None = None
        self._fill_target = 0
        self._gap_ewma = math.inf  # seconds between arrivals, smoothed
        self._last_arrival = -math.inf
        self._run_ewma: dict[Hashable, float] = {}
        self._rows_per_s = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="servekit-batch")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- public ----------------------------------------------------------------------
    async def submit(self, group: Hashable, feeds: Feeds, rows: int) -> Feeds:
        """Queue one request's feeds (``rows`` rows) and wait for its outputs."""
        if self._closed:
            raise OverloadedError("the runner is shutting down", retry_after=1)
        if self.queued_rows + rows > self.queue_limit and self._queue:
            self.stats.shed += 1
            raise OverloadedError(
                f"the runner's queue is full ({self.queued_rows} rows waiting, limit "
                f"{self.queue_limit}); retry later",
                retry_after=self.retry_after(),
                limit=self.queue_limit,
            )
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._dispatch(), name="servekit-batcher")
        now = self._clock()
        gap = now - self._last_arrival
        self._last_arrival = now
        self._gap_ewma = gap if math.isinf(self._gap_ewma) else 0.8 * self._gap_ewma + 0.2 * gap
        job = _Job(group, feeds, rows, loop.create_future(), now)
        self._queue.append(job)
        self.queued_rows += rows
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if (
            self._fill is not None
            and not self._fill.done()
            and self.queued_rows >= self._fill_target
        ):
            self._fill.set_result(None)
        return await job.future

    def retry_after(self) -> int:
        """Seconds a shed client should wait: the queue's drain time, at least 1."""
        if self._rows_per_s <= 0:
            return 1
        return max(1, math.ceil(self.queued_rows / self._rows_per_s))

    async def close(self) -> None:
        """Stop dispatching; queued requests fail with ``OverloadedError``."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(OverloadedError("the runner shut down", retry_after=1))
        self._executor.shutdown(wait=False)

    # -- dispatch loop ---------------------------------------------------------------
    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            head = self._queue[0]
            policy = self._policy_for(head.group)
            limit = policy.max_batch_size if self.enabled else head.rows
            if self.enabled and self.queued_rows < limit:
                await self._linger(loop, head, policy)
            jobs = self._take(limit)
            try:
                await self._run(loop, jobs)
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(
                            OverloadedError("the runner shut down", retry_after=1)
                        )
                raise

    async def _linger(
        self, loop: asyncio.AbstractEventLoop, head: _Job, policy: BatchPolicy
    ) -> None:
        """Wait for more rows only when arrivals are frequent enough to bring some in time."""
        remaining = policy.max_wait_ms / 1000.0 - (self._clock() - head.enqueued)
        gap = self._gap_ewma
        if remaining <= 0 or gap * 2 > remaining:
            return
        self._fill_target = policy.max_batch_size
        self._fill = loop.create_future()
        handle = loop.call_later(min(remaining, gap * 4), _resolve, self._fill)
        try:
            await self._fill
        finally:
            handle.cancel()
            self._fill = None

    def _take(self, limit: int) -> list[_Job]:
        jobs = [self._queue.popleft()]
        rows = jobs[0].rows
        while self._queue and rows + self._queue[0].rows <= limit:
            job = self._queue.popleft()
            jobs.append(job)
            rows += job.rows
        self.queued_rows -= rows
        return jobs

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        inline = all(self._run_ewma.get(j.group, math.inf) < self._inline_below for j in jobs)
        if inline:
            self.stats.inline_batches += 1
            results = self._run_jobs(jobs)
        else:
            results = await loop.run_in_executor(self._executor, self._run_jobs, jobs)
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():  # the caller went away
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _run_jobs(self, jobs: list[_Job]) -> list[Feeds | BaseException]:
        groups: dict[Hashable, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.group, []).append(i)
        results: list[Any] = [None] * len(jobs)
        for group, idx in groups.items():
            rows = sum(jobs[i].rows for i in idx)
            t0 = self._clock()
            try:
                outs = self._run_group(group, [jobs[i].feeds for i in idx])
            except Exception as exc:  # one group's failure fails only its own requests
                logger.warning("batch of %d rows for %s failed: %s", rows, group, exc)
                for i in idx:
                    results[i] = exc
                continue
            elapsed = self._clock() - t0
            prev = self._run_ewma.get(group)
            self._run_ewma[group] = elapsed if prev is None else 0.9 * prev + 0.1 * elapsed
            self._rows_per_s = 0.9 * self._rows_per_s + 0.1 * (rows / max(elapsed, 1e-6))
            self.stats.batches += 1
            self.stats.rows += rows
            self.stats.batch_rows[rows] += 1
            if self._on_batch is not None:
                self._on_batch(group, rows, elapsed)
            for i, out in zip(idx, outs, strict=True):
                results[i] = out
        return results


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def concat_feeds(feeds: list[Feeds]) -> tuple[Feeds, list[int]]:
    """Stack several requests' feeds along the batch axis; returns (batch, row counts)."""
    if len(feeds) == 1:
        only = feeds[0]
        return only, [len(next(iter(only.values())))]
    names = feeds[0].keys()
    sizes = [len(f[next(iter(names))]) for f in feeds]
    return {n: np.concatenate([f[n] for f in feeds], axis=0) for n in names}, sizes


def split_outputs(outputs: Feeds, sizes: list[int]) -> list[Feeds]:
    """Scatter a batch's outputs back to its requests by their row counts."""
    if len(sizes) == 1:
        return [outputs]
    bounds = np.cumsum(sizes)[:-1]
    parts = {n: np.split(a, bounds, axis=0) for n, a in outputs.items()}
    return [{n: parts[n][i] for n in outputs} for i in range(len(sizes))]
