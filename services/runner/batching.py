"""An adaptive micro-batcher for the model runner, with one lane per (model, version).

Each model's policy caps a batch at ``max_batch_size`` rows and a request's wait at
``max_wait_ms`` (32 rows and 10 ms by default); the batcher keeps it without the faults
of BentoML's dispatcher (see docs/design.md):

- A lone request on an idle lane goes at once: it lingers only when the recent arrival
  rate says more rows are due before its wait runs out, so no learned wait survives a
  burst (the linger policy is in ``services.runner.lanes``).
- While a lane's batch runs, its arrivals queue; the next batch takes them all (up to the
  maximum): under load batches form by themselves, with no timer.
- Each (model, version) group has its own lane: its own queue, at most
  ``max_concurrency`` backend calls at once, its own queue limit and a timeout per call.
  Lanes run side by side on a shared set of worker threads, so a slow or hanging model
  holds only its own slots: a call past its timeout fails its requests with
  ``ModelTimeoutError`` (503) and the model fails fast until the call returns; its
  thread, which Python cannot kill, is replaced so the other lanes keep their threads.
- The queue is bounded in rows (overall and per lane); a full queue answers
  ``OverloadedError`` (503 with Retry-After) at once instead of a late timeout.

Backend calls run on the worker threads, or inline on the event loop when the
``InlinePolicy`` (``services.runner.inline``) allows: a tiny group that is trusted, or
stoppable and then run under the ``Watchdog``, which stops a call holding the loop past
the inline deadline; its requests re-run on a worker thread under the lane's timeout.
Calls on worker threads of stoppable groups are stopped at their timeout too, which frees
the thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from services.errors import ModelTimeoutError, OverloadedError
from services.runner.admission import REQUEST, Admission
from services.runner.feeds import Feeds
from services.runner.inline import InlinePolicy
from services.runner.lanes import (
    BatcherStats,
    Call,
    Job,
    Lane,
    LaneLimits,
    fail_jobs,
    group_name,
    length_buckets,
    split_group,
)
from services.runner.watchdog import StopSwitch, Watchdog
from services.runner.workers import WorkerThreads
from services.settings import BatchPolicy

logger = logging.getLogger(__name__)

# Runs one group: the feeds of several requests of one (model, version) -> their outputs.
# Stoppable groups are called with a third argument, the call's ``StopSwitch``.
RunGroup = Callable[..., list[Feeds]]


class AdaptiveBatcher:
    """Queues requests per (model, version) lane and runs each lane's batches.

    Args:
        run_group: runs one (model, version) group of requests; called from a worker
            thread (or inline) with the requests' feeds, returns their outputs in order.
        policy_for: the batching policy of a group's model.
        queue_limit: most rows waiting overall; past it ``submit`` raises ``OverloadedError``.
        enabled: off: every request runs alone, as its own backend call.
        on_batch: called with (group, rows, seconds) after each backend call (for metrics).
        inline_below_s: run a trusted or stoppable group inline when its mean run time
            (thread CPU time) is below this.
        clock: monotonic seconds (injectable for tests).
        limits_for: the isolation limits of a group (default: ``LaneLimits()``).
        inline_for: whether a group is trusted to run inline unwatched (default: all).
        on_timeout: called with the group when one of its calls passes its timeout.
        threads: worker threads shared by the lanes.
        stoppable_for: whether a group's calls take a ``StopSwitch`` (default: none).
        inline_deadline_s: longest a stoppable group's inline call may hold the event
            loop before the watchdog stops it (0: stoppable groups never run inline).
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
        limits_for: Callable[[Hashable], LaneLimits] | None = None,
        inline_for: Callable[[Hashable], bool] | None = None,
        on_timeout: Callable[[Hashable], None] | None = None,
        threads: int = 4,
        stoppable_for: Callable[[Hashable], bool] | None = None,
        inline_deadline_s: float = 0.02,
        nice: int = 0,
    ) -> None:
        self._run_group = run_group
        self._policy_for = policy_for
        self._limits_for = limits_for or (lambda group: LaneLimits())
        self._stoppable_for = stoppable_for or (lambda group: False)
        self.inline = InlinePolicy(
            inline_below_s, inline_deadline_s, inline_for or (lambda group: True)
        )
        self.watchdog = Watchdog()
        self._on_timeout = on_timeout
        self.queue_limit = queue_limit
        self.enabled = enabled
        self._on_batch = on_batch
        self._clock = clock
        self._lanes: dict[Hashable, Lane] = {}
        self.queued_rows = 0
        self.stats = BatcherStats()
        self.admission = Admission(self.stats)
        self._rows_per_s = 0.0
        self._workers = WorkerThreads(threads, "servekit-batch", nice)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- public ----------------------------------------------------------------------
    async def submit(self, group: Hashable, feeds: Feeds, rows: int) -> Feeds:
        """Queue one request's feeds (``rows`` rows) and wait for its outputs."""
        if self._closed:
            raise OverloadedError("the runner is shutting down", retry_after=1)
        lane = self._lanes.get(group)
        if lane is None:
            lane = Lane(group, self._policy_for(group), self._limits_for(group))
            lane.stoppable = self._stoppable_for(group)
            self._lanes[group] = lane
        self._admit(lane, rows)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now, ctx = self._clock(), REQUEST.get()
        expires = self.admission.admit(lane, now, ctx)
        job = Job(group, feeds, rows, loop.create_future(), now, expires, ctx)
        if ctx is not None and lane.running >= lane.limits.max_concurrency:
            ctx.watch(loop)  # it waits for a call to end: learn if its client goes
        lane.arrive(job)
        self.queued_rows += rows
        if lane.linger is not None and lane.queued_rows >= lane.policy.max_batch_size:
            self._end_linger(lane)
        elif not lane.scheduled and lane.linger is None:
            # On the next loop turn, so that requests arriving together batch together.
            lane.scheduled = True
            loop.call_soon(self._scheduled_pump, lane)
        return await job.future

    def _admit(self, lane: Lane, rows: int) -> None:
        """Refuse ``rows`` more rows of ``lane`` when its model hangs or a queue is full."""
        if lane.hung:
            raise self._timeout_error(lane)
        lane_limit = lane.limits.queue_limit
        if self.queued_rows + rows > self.queue_limit and self.queued_rows:
            where, waiting, limit = "the runner's queue", self.queued_rows, self.queue_limit
        elif lane_limit is not None and lane.queued_rows + rows > lane_limit and lane.queue:
            where, waiting, limit = (
                f"the queue of {group_name(lane.group)}",
                lane.queued_rows,
                lane_limit,
            )
        else:
            return
        self.stats.shed += 1
        self.admission.count_refusal(lane, "queue_full")
        raise OverloadedError(
            f"{where} is full ({waiting} rows waiting, limit {limit}); retry later",
            retry_after=self.retry_after(),
            limit=limit,
        )

    def retry_after(self) -> int:
        """Seconds a shed client should wait: the queue's drain time, at least 1."""
        if self._rows_per_s <= 0:
            return 1
        return max(1, math.ceil(self.queued_rows / self._rows_per_s))

    def lanes(self) -> Iterable[Lane]:
        """The lanes now (a live view: do not hold it across awaits)."""
        return self._lanes.values()

    def busy(self, group: Hashable) -> bool:
        """Whether ``group`` has requests queued or backend calls running (hung included)."""
        lane = self._lanes.get(group)
        return lane is not None and (lane.running > 0 or bool(lane.queue))

    def hung(self, group: Hashable) -> bool:
        """Whether a call of ``group`` is past its timeout and has not returned."""
        lane = self._lanes.get(group)
        return lane is not None and lane.hung > 0

    def forget(self, group: Hashable) -> None:
        """Drop an idle group's lane (its model was unloaded)."""
        lane = self._lanes.get(group)
        if lane is not None and not lane.running and not lane.queue:
            lane.cancel_linger()
            del self._lanes[group]

    async def close(self) -> None:
        """Stop dispatching; queued and running requests fail with ``OverloadedError``."""
        self._closed = True
        for lane in self._lanes.values():
            lane.cancel_linger()
            for call in lane.calls:
                if call.timer is not None:
                    call.timer.cancel()
                fail_jobs(call.jobs, OverloadedError("the runner shut down", retry_after=1))
            lane.clear(OverloadedError("the runner shut down", retry_after=1))
        self.queued_rows = 0
        self._workers.shutdown()
        self.watchdog.close()

    # -- dispatch --------------------------------------------------------------------
    def _pump(self, lane: Lane) -> None:
        """Start batches of ``lane`` while it has queued rows and free slots."""
        while lane.queue and lane.running < lane.limits.max_concurrency and not self._closed:
            if lane.linger is not None:
                return
            head = lane.queue[0]
            limit = lane.policy.max_batch_size if self.enabled else head.rows
            lane.dispatches += 1
            if self.enabled and lane.queued_rows < limit and not lane.lingered:
                wait = lane.linger_wait(head, self._clock)
                if wait > 0:
                    assert self._loop is not None
                    lane.linger_from = lane.queued_rows
                    lane.linger = self._loop.call_later(wait, self._end_linger, lane)
                    return
            lane.lingered = False
            now = self._clock()
            jobs, rows, taken = lane.take(limit, now, self.admission.drop)
            self.queued_rows -= taken
            if not jobs:
                continue
            lane.started(now)
            watched = self.inline.mode(lane, now)
            if watched is None:
                self._start(lane, jobs, rows)
            else:
                self._run_inline(lane, jobs, rows, watched)

    def _run_inline(self, lane: Lane, jobs: list[Job], rows: int, watched: bool) -> None:
        """Run one batch on the event loop: under the watchdog when ``watched``."""
        self.stats.inline_batches += 1
        lane.running += 1
        # Unwatched (trusted) inline calls have nobody to stop them: no switch to make.
        switch = StopSwitch() if watched else None
        t0 = self._clock()
        if switch is not None:
            self.watchdog.arm(switch, self.inline.deadline_s)
            outcome = self._call(lane, jobs, switch)
            self.watchdog.disarm()
        else:
            outcome = self._call(lane, jobs, None)
        elapsed = self._clock() - t0
        if switch is not None and switch.stopped and isinstance(outcome, Exception):
            # Past the deadline: off the inline path for a while; its requests run again
            # on a worker thread, under the lane's timeout.
            lane.running -= 1
            self.inline.stopped(lane, self._clock())
            self.stats.inline_stops += 1
            self._start(lane, jobs, rows)
            return
        self._finish(Call(lane, jobs, rows), outcome, elapsed, pump=False)

    def _scheduled_pump(self, lane: Lane) -> None:
        lane.scheduled = False
        self._pump(lane)

    def _end_linger(self, lane: Lane) -> None:
        lane.linger_ended()
        self._pump(lane)

    def _start(self, lane: Lane, jobs: list[Job], rows: int) -> None:
        """Run one batch on a worker thread, under the lane's timeout."""
        loop = self._loop
        assert loop is not None
        call = Call(lane, jobs, rows, StopSwitch() if lane.stoppable else None)
        lane.running += 1
        lane.calls.add(call)
        clock = self._clock

        def work() -> None:
            t0, cpu0 = clock(), time.thread_time()
            outcome = self._call(lane, jobs, call.switch)
            elapsed = clock() - t0
            # The inline decision uses this thread's CPU time: its wall time also counts
            # waiting for the GIL while the event loop is busy, which would keep a tiny
            # model off the inline path exactly when the loop is saturated.
            cost = time.thread_time() - cpu0
            try:
                loop.call_soon_threadsafe(self._finish, call, outcome, elapsed, cost)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        timeout = lane.limits.timeout_s
        if timeout is not None:
            call.timer = loop.call_later(timeout, self._expire, call)
        self._workers.submit(work)

    def _call(
        self, lane: Lane, jobs: list[Job], switch: StopSwitch | None
    ) -> list[Feeds] | Exception:
        group = lane.group
        run = self._run_group
        try:
            buckets = length_buckets(jobs)
            if len(buckets) == 1:
                feeds = [j.feeds for j in jobs]
                return run(group, feeds) if switch is None else run(group, feeds, switch)
            # Very different sequence lengths run as separate calls (see length_bucket).
            results: list[Any] = [None] * len(jobs)
            for idx in buckets:
                part = [jobs[i].feeds for i in idx]
                outs = run(group, part) if switch is None else run(group, part, switch)
                for i, out in zip(idx, outs, strict=True):
                    results[i] = out
            return results
        except Exception as exc:  # one group's failure fails only its own requests
            return exc

    def _finish(
        self,
        call: Call,
        outcome: list[Feeds] | Exception,
        elapsed: float,
        cost: float | None = None,
        *,
        pump: bool = True,
    ) -> None:
        lane = call.lane
        lane.running -= 1
        lane.calls.discard(call)
        if call.timer is not None:
            call.timer.cancel()
        if call.expired:
            lane.hung -= 1
            logger.warning(
                "%s returned after %.1f s, past its timeout", group_name(lane.group), elapsed
            )
        if isinstance(outcome, Exception):
            logger.warning("batch of %d rows for %s failed: %s", call.rows, lane.group, outcome)
            fail_jobs(call.jobs, outcome)
        else:
            lane.finished(elapsed, elapsed if cost is None else cost, call.rows)
            self._rows_per_s = 0.9 * self._rows_per_s + 0.1 * (call.rows / max(elapsed, 1e-6))
            self.stats.batches += 1
            self.stats.rows += call.rows
            self.stats.batch_rows[call.rows] += 1
            if self._on_batch is not None:
                self._on_batch(lane.group, call.rows, elapsed)
            for job, out in zip(call.jobs, outcome, strict=True):
                if not job.future.done():
                    job.future.set_result(out)
        if pump:
            self._pump(lane)

    def _expire(self, call: Call) -> None:
        """A call ran past its timeout: fail its requests and the lane's queue."""
        lane = call.lane
        call.timer = None
        call.expired = True
        if call.switch is not None:
            call.switch.stop()  # the backend ends the call; its thread comes back
        lane.hung += 1
        self.stats.timeouts += 1
        err = self._timeout_error(lane)
        logger.error("%s", err.message)
        fail_jobs(call.jobs, err)
        self.queued_rows -= lane.clear(err)
        self._workers.replace()
        if self._on_timeout is not None:
            self._on_timeout(lane.group)

    def _timeout_error(self, lane: Lane) -> ModelTimeoutError:
        timeout = lane.limits.timeout_s
        model, version = split_group(lane.group)
        return ModelTimeoutError(
            f"{group_name(lane.group)} did not answer within {timeout:g} s; it is unhealthy "
            "until its stuck call returns",
            retry_after=max(1.0, timeout or 1.0),
            model=model,
            version=version,
        )
