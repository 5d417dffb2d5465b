"""An adaptive micro-batcher for the model runner, with one lane per (model, version).

It follows the seed's policy (wait at most ``max_wait_ms``, batch at most
``max_batch_size`` rows) without the faults measured in BentoML's dispatcher
(shared/MEASURED.md):

- A lone request on an idle lane goes at once: it lingers only when the recent arrival
  rate says more rows are due before its wait runs out, so no learned wait survives a
  burst.
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

Backend calls run on the worker threads, or inline on the event loop when the group's
measured run time is below ``inline_below_s`` (a thread hop costs several times a tiny
model's call) and the group is either trusted (``inline_for``: the pool's pinned models)
or stoppable (``stoppable_for``: its backend takes a ``StopSwitch``, as ONNX Runtime's
does). A stoppable inline call runs under the ``Watchdog``: past ``inline_deadline_s`` it is
stopped and its requests re-run on a worker thread under the lane's timeout, and the group
stays off the inline path for a backoff that doubles per stop. So the loop is held by one
model for at most the deadline (plus a millisecond's tick), which is the isolation the
worker threads give, at the cost of an inline call. Calls on worker threads of stoppable
groups are stopped at their timeout too, which frees the thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from services.errors import ModelTimeoutError, OverloadedError
from services.runner.feeds import Feeds, length_bucket
from services.runner.watchdog import StopSwitch, Watchdog
from services.runner.workers import WorkerThreads
from services.settings import BatchPolicy

logger = logging.getLogger(__name__)

# Runs one group: the feeds of several requests of one (model, version) -> their outputs.
# Stoppable groups are called with a third argument, the call's ``StopSwitch``.
RunGroup = Callable[..., list[Feeds]]


_FRUITLESS_LINGERS = 8
_PROBE_EVERY = 64
# Linger only while the runner is busy at least this share of the time (it is the bottleneck).
_BUSY_TO_LINGER = 0.5
# A group whose inline call was stopped stays off the inline path this long, doubling per
# stop (capped); its count of stops is forgotten after ``_STRIKES_FORGOTTEN_S`` clean.
_INLINE_BACKOFF_S = 1.0
_INLINE_BACKOFF_MAX_S = 300.0
_STRIKES_FORGOTTEN_S = 600.0


@dataclass(slots=True)
class _Job:
    group: Hashable
    feeds: Feeds
    rows: int
    future: asyncio.Future[Feeds]
    enqueued: float


@dataclass(frozen=True, slots=True)
class LaneLimits:
    """Isolation limits of one group's lane.

    Attributes:
        max_concurrency: backend calls of the group running at once.
        timeout_s: longest one backend call may run (None: no limit).
        queue_limit: most rows of the group waiting (None: only the batcher's limit).
    """

    max_concurrency: int = 1
    timeout_s: float | None = None
    queue_limit: int | None = None


@dataclass
class BatcherStats:
    """Counters a metrics collector reads at scrape time."""

    batches: int = 0
    rows: int = 0
    shed: int = 0
    inline_batches: int = 0
    inline_stops: int = 0
    timeouts: int = 0
    batch_rows: collections.Counter[int] = field(default_factory=collections.Counter)


class _Lane:
    """One group's queue, running calls and learned timings."""

    __slots__ = (
        "group",
        "policy",
        "limits",
        "queue",
        "queued_rows",
        "running",
        "hung",
        "calls",
        "gap_ewma",
        "last_arrival",
        "run_ewma",
        "linger",
        "lingered",
        "linger_from",
        "fruitless",
        "dispatches",
        "scheduled",
        "util",
        "last_start",
        "last_interval",
        "stoppable",
        "inline_after",
        "strikes",
        "last_strike",
    )

    def __init__(self, group: Hashable, policy: BatchPolicy, limits: LaneLimits) -> None:
        self.group = group
        self.policy = policy
        self.limits = limits
        self.queue: collections.deque[_Job] = collections.deque()
        self.queued_rows = 0
        self.running = 0
        self.hung = 0  # calls past their timeout that have not returned yet
        self.calls: set[_Call] = set()
        self.gap_ewma = math.inf  # seconds between arrivals, smoothed
        self.last_arrival = -math.inf
        self.run_ewma = math.inf  # seconds per backend call, smoothed
        self.linger: asyncio.TimerHandle | None = None
        self.lingered = False
        self.linger_from = 0  # rows queued when the current linger began
        self.fruitless = 0  # lingers in a row that gained no rows
        self.dispatches = 0
        self.scheduled = False  # a pump is due on the next loop turn
        self.util = 0.0  # smoothed share of wall time the runner spends in this lane's calls
        self.last_start = -math.inf
        self.last_interval = math.inf  # time between the last two call starts
        self.stoppable = False  # its backend calls take a StopSwitch
        self.inline_after = -math.inf  # off the inline path until then (after a stop)
        self.strikes = 0  # inline calls stopped at the deadline
        self.last_strike = -math.inf


class _Call:
    """One backend call in flight on a worker thread."""

    __slots__ = ("lane", "jobs", "rows", "timer", "expired", "switch")

    def __init__(
        self, lane: _Lane, jobs: list[_Job], rows: int, switch: StopSwitch | None = None
    ) -> None:
        self.lane = lane
        self.jobs = jobs
        self.rows = rows
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False
        self.switch = switch


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
    ) -> None:
        self._run_group = run_group
        self._policy_for = policy_for
        self._limits_for = limits_for or (lambda group: LaneLimits())
        self._inline_for = inline_for or (lambda group: True)
        self._stoppable_for = stoppable_for or (lambda group: False)
        self._inline_deadline = inline_deadline_s
        self.watchdog = Watchdog()
        self._on_timeout = on_timeout
        self.queue_limit = queue_limit
        self.enabled = enabled
        self._on_batch = on_batch
        self._inline_below = inline_below_s
        self._clock = clock
        self._lanes: dict[Hashable, _Lane] = {}
        self.queued_rows = 0
        self.stats = BatcherStats()
        self._rows_per_s = 0.0
        self._workers = WorkerThreads(threads, "servekit-batch")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- public ----------------------------------------------------------------------
    async def submit(self, group: Hashable, feeds: Feeds, rows: int) -> Feeds:
        """Queue one request's feeds (``rows`` rows) and wait for its outputs."""
        if self._closed:
            raise OverloadedError("the runner is shutting down", retry_after=1)
        lane = self._lanes.get(group)
        if lane is None:
            lane = _Lane(group, self._policy_for(group), self._limits_for(group))
            lane.stoppable = self._stoppable_for(group)
            self._lanes[group] = lane
        if lane.hung:
            raise self._timeout_error(lane)
        if self.queued_rows + rows > self.queue_limit and self.queued_rows:
            self.stats.shed += 1
            raise OverloadedError(
                f"the runner's queue is full ({self.queued_rows} rows waiting, limit "
                f"{self.queue_limit}); retry later",
                retry_after=self.retry_after(),
                limit=self.queue_limit,
            )
        lane_limit = lane.limits.queue_limit
        if lane_limit is not None and lane.queued_rows + rows > lane_limit and lane.queue:
            self.stats.shed += 1
            raise OverloadedError(
                f"the queue of {_name(group)} is full ({lane.queued_rows} rows waiting, "
                f"limit {lane_limit}); retry later",
                retry_after=self.retry_after(),
                limit=lane_limit,
            )
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = self._clock()
        gap = now - lane.last_arrival
        lane.last_arrival = now
        lane.gap_ewma = gap if math.isinf(lane.gap_ewma) else 0.8 * lane.gap_ewma + 0.2 * gap
        job = _Job(group, feeds, rows, loop.create_future(), now)
        lane.queue.append(job)
        lane.queued_rows += rows
        self.queued_rows += rows
        if lane.linger is not None and lane.queued_rows >= lane.policy.max_batch_size:
            self._end_linger(lane)
        elif not lane.scheduled and lane.linger is None:
            # On the next loop turn, so that requests arriving together batch together.
            lane.scheduled = True
            loop.call_soon(self._scheduled_pump, lane)
        return await job.future

    def retry_after(self) -> int:
        """Seconds a shed client should wait: the queue's drain time, at least 1."""
        if self._rows_per_s <= 0:
            return 1
        return max(1, math.ceil(self.queued_rows / self._rows_per_s))

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
            if lane.linger is not None:
                lane.linger.cancel()
            del self._lanes[group]

    async def close(self) -> None:
        """Stop dispatching; queued and running requests fail with ``OverloadedError``."""
        self._closed = True
        for lane in self._lanes.values():
            if lane.linger is not None:
                lane.linger.cancel()
                lane.linger = None
            for call in lane.calls:
                if call.timer is not None:
                    call.timer.cancel()
                _fail(call.jobs, OverloadedError("the runner shut down", retry_after=1))
            _fail(lane.queue, OverloadedError("the runner shut down", retry_after=1))
            lane.queue.clear()
            lane.queued_rows = 0
        self.queued_rows = 0
        self._workers.shutdown()
        self.watchdog.close()

    # -- dispatch --------------------------------------------------------------------
    def _pump(self, lane: _Lane) -> None:
        """Start batches of ``lane`` while it has queued rows and free slots."""
        while lane.queue and lane.running < lane.limits.max_concurrency and not self._closed:
            if lane.linger is not None:
                return
            head = lane.queue[0]
            limit = lane.policy.max_batch_size if self.enabled else head.rows
            lane.dispatches += 1
            if self.enabled and lane.queued_rows < limit and not lane.lingered:
                wait = self._linger_wait(lane, head)
                if wait > 0:
                    assert self._loop is not None
                    lane.linger_from = lane.queued_rows
                    lane.linger = self._loop.call_later(wait, self._end_linger, lane)
                    return
            lane.lingered = False
            jobs, rows = self._take(lane, limit)
            if not jobs:
                continue
            now = self._clock()
            lane.last_interval, lane.last_start = now - lane.last_start, now
            if not lane.running and lane.run_ewma < self._inline_below and now >= lane.inline_after:
                watched = lane.stoppable and self._inline_deadline > 0
                if watched or self._inline_for(lane.group):
                    self._run_inline(lane, jobs, rows, watched)
                    continue
            self._start(lane, jobs, rows)

    def _run_inline(self, lane: _Lane, jobs: list[_Job], rows: int, watched: bool) -> None:
        """Run one batch on the event loop: under the watchdog when ``watched``."""
        self.stats.inline_batches += 1
        lane.running += 1
        # Unwatched (trusted) inline calls have nobody to stop them: no switch to make.
        switch = StopSwitch() if watched else None
        t0 = self._clock()
        if switch is not None:
            self.watchdog.arm(switch, self._inline_deadline)
            outcome = self._call(lane, jobs, switch)
            self.watchdog.disarm()
        else:
            outcome = self._call(lane, jobs, None)
        elapsed = self._clock() - t0
        if switch is not None and switch.stopped and isinstance(outcome, Exception):
            # Past the deadline: off the inline path for a while; its requests run again
            # on a worker thread, under the lane's timeout.
            lane.running -= 1
            now = self._clock()
            if now - lane.last_strike > _STRIKES_FORGOTTEN_S:
                lane.strikes = 0
            lane.strikes += 1
            lane.last_strike = now
            backoff = min(_INLINE_BACKOFF_S * 2 ** (lane.strikes - 1), _INLINE_BACKOFF_MAX_S)
            lane.inline_after = now + backoff
            self.stats.inline_stops += 1
            logger.warning(
                "%s held the event loop past %.1f ms: stopped, re-run on a worker thread; "
                "off the inline path for %g s",
                _name(lane.group),
                self._inline_deadline * 1000,
                backoff,
            )
            self._start(lane, jobs, rows)
            return
        self._finish(_Call(lane, jobs, rows), outcome, elapsed, pump=False)

    def _scheduled_pump(self, lane: _Lane) -> None:
        lane.scheduled = False
        self._pump(lane)

    def _linger_wait(self, lane: _Lane, head: _Job) -> float:
        """How long to wait for more rows: only when arrivals are frequent enough, and
        while waiting pays. A closed-loop client (the next request only after this one
        returns) arrives at short gaps but never within a wait: after
        ``_FRUITLESS_LINGERS`` lingers in a row that gained nothing, the lane stops
        lingering, probing once every ``_PROBE_EVERY`` dispatches."""
        if lane.util < _BUSY_TO_LINGER:
            # The runner keeps up (a small model): batches form by themselves while a call
            # runs, and waiting would only add latency - the closed-loop spiral where each
            # wait lengthens the arrival gaps that justify the next wait.
            return 0.0
        if lane.fruitless >= _FRUITLESS_LINGERS and lane.dispatches % _PROBE_EVERY:
            return 0.0
        remaining = lane.policy.max_wait_ms / 1000.0 - (self._clock() - head.enqueued)
        gap = lane.gap_ewma
        if remaining <= 0 or gap * 2 > remaining:
            return 0.0
        return min(remaining, gap * 4)

    def _end_linger(self, lane: _Lane) -> None:
        if lane.linger is not None:
            lane.linger.cancel()
            lane.linger = None
        lane.fruitless = lane.fruitless + 1 if lane.queued_rows <= lane.linger_from else 0
        lane.lingered = True
        self._pump(lane)

    def _take(self, lane: _Lane, limit: int) -> tuple[list[_Job], int]:
        jobs: list[_Job] = []
        rows = taken = 0
        while lane.queue and (not jobs or rows + lane.queue[0].rows <= limit):
            job = lane.queue.popleft()
            taken += job.rows
            if job.future.done():  # the caller went away
                continue
            jobs.append(job)
            rows += job.rows
        lane.queued_rows -= taken
        self.queued_rows -= taken
        return jobs, rows

    def _start(self, lane: _Lane, jobs: list[_Job], rows: int) -> None:
        loop = self._loop
        assert loop is not None
        call = _Call(lane, jobs, rows, StopSwitch() if lane.stoppable else None)
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
        self, lane: _Lane, jobs: list[_Job], switch: StopSwitch | None
    ) -> list[Feeds] | Exception:
        group = lane.group
        run = self._run_group
        try:
            buckets = _length_buckets(jobs)
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
        call: _Call,
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
            logger.warning("%s returned after %.1f s, past its timeout", _name(lane.group), elapsed)
        if isinstance(outcome, Exception):
            logger.warning("batch of %d rows for %s failed: %s", call.rows, lane.group, outcome)
            _fail(call.jobs, outcome)
        else:
            spent = elapsed if cost is None else cost
            duty = min(1.0, elapsed / max(lane.last_interval, elapsed, 1e-9))
            lane.util = 0.8 * lane.util + 0.2 * duty
            lane.run_ewma = (
                spent if math.isinf(lane.run_ewma) else 0.9 * lane.run_ewma + 0.1 * spent
            )
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

    def _expire(self, call: _Call) -> None:
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
        _fail(call.jobs, err)
        _fail(lane.queue, err)
        self.queued_rows -= lane.queued_rows
        lane.queue.clear()
        lane.queued_rows = 0
        self._workers.replace()
        if self._on_timeout is not None:
            self._on_timeout(lane.group)

    def _timeout_error(self, lane: _Lane) -> ModelTimeoutError:
        timeout = lane.limits.timeout_s
        model, version = _split(lane.group)
        return ModelTimeoutError(
            f"{_name(lane.group)} did not answer within {timeout:g} s; it is unhealthy until "
            "its stuck call returns",
            retry_after=max(1.0, timeout or 1.0),
            model=model,
            version=version,
        )


def _fail(jobs: Any, exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


def _split(group: Hashable) -> tuple[Any, Any]:
    if isinstance(group, tuple) and len(group) == 2:
        return group[0], group[1]
    return group, None


def _name(group: Hashable) -> str:
    model, version = _split(group)
    return f"model {model}" if version is None else f"model {model} version {version}"


def _length_buckets(jobs: list[_Job]) -> list[list[int]]:
    """Indices of ``jobs`` grouped by length bucket, in order of first appearance."""
    buckets: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        buckets.setdefault(length_bucket(job.feeds), []).append(i)
    return list(buckets.values())
