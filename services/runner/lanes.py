"""The batcher's lanes: one per (model, version) group, holding its queue, its calls in
flight and its learned timings, and the linger policy that decides when a lane waits for
more rows before it dispatches.

Lingering pays only while the runner is the bottleneck: a lane waits for more rows only
when it is busy at least half of the time and arrivals are frequent enough to fill a batch
before the request's ``max_wait_ms`` runs out. A closed-loop client (its next request only
after this one returns) arrives at short gaps but never within a wait; a lane whose lingers
keep gaining nothing stops lingering and only probes now and then.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.runner.feeds import Feeds, length_bucket
from services.runner.watchdog import StopSwitch
from services.settings import BatchPolicy

if TYPE_CHECKING:
    from services.runner.admission import RequestContext

# After this many lingers in a row that gained no rows, a lane stops lingering, probing
# once every ``_PROBE_EVERY`` dispatches.
_FRUITLESS_LINGERS = 8
_PROBE_EVERY = 64
# Linger only while the runner is busy at least this share of the time (it is the bottleneck).
_BUSY_TO_LINGER = 0.5


@dataclass(slots=True)
class Job:
    """One request in a lane: its feeds and rows, the future its caller awaits, when it is
    dropped unrun (``expires``) and its request's context (deadline, connection)."""

    group: Hashable
    feeds: Feeds
    rows: int
    future: asyncio.Future[Feeds]
    enqueued: float
    expires: float = math.inf
    ctx: RequestContext | None = None


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


class Lane:
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
        "row_s",
        "call_s",
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
        self.queue: collections.deque[Job] = collections.deque()
        self.queued_rows = 0
        self.running = 0
        self.hung = 0  # calls past their timeout that have not returned yet
        self.calls: set[Call] = set()
        self.gap_ewma = math.inf  # seconds between arrivals, smoothed
        self.last_arrival = -math.inf
        self.run_ewma = math.inf  # seconds per backend call, smoothed
        self.row_s = math.inf  # wall seconds per row of a call, smoothed (admission)
        self.call_s = math.inf  # wall seconds per call, smoothed (admission)
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

    # -- the queue -----------------------------------------------------------------------
    def arrive(self, job: Job) -> None:
        """Queue ``job`` and learn the arrival gap from its enqueue time."""
        gap = job.enqueued - self.last_arrival
        self.last_arrival = job.enqueued
        self.gap_ewma = gap if math.isinf(self.gap_ewma) else 0.8 * self.gap_ewma + 0.2 * gap
        self.queue.append(job)
        self.queued_rows += job.rows

    def take(
        self,
        limit: int,
        now: float = -math.inf,
        drop: Callable[[Lane, Job, float], None] | None = None,
    ) -> tuple[list[Job], int, int]:
        """The next batch: jobs up to ``limit`` rows (at least one), skipping callers that
        went away and handing ``drop`` the jobs expired at ``now`` or whose client is gone;
        returns (jobs, their rows, rows taken off the queue)."""
        jobs: list[Job] = []
        rows = taken = 0
        while self.queue and (not jobs or rows + self.queue[0].rows <= limit):
            job = self.queue.popleft()
            taken += job.rows
            if job.future.done():  # the caller went away
                continue
            if drop is not None and (job.expires <= now or (job.ctx is not None and job.ctx.gone)):
                drop(self, job, now)
                continue
            jobs.append(job)
            rows += job.rows
        self.queued_rows -= taken
        return jobs, rows, taken

    def clear(self, exc: BaseException) -> int:
        """Fail every queued job with ``exc`` and empty the queue; the rows it held."""
        fail_jobs(self.queue, exc)
        rows, self.queued_rows = self.queued_rows, 0
        self.queue.clear()
        return rows

    # -- lingering -----------------------------------------------------------------------
    def linger_wait(self, head: Job, clock: Callable[[], float]) -> float:
        """How long to wait for more rows before dispatching ``head``: only while the
        runner is the bottleneck, arrivals are frequent enough, and waiting has paid."""
        if self.util < _BUSY_TO_LINGER:
            # The runner keeps up (a small model): batches form by themselves while a call
            # runs, and waiting would only add latency - the closed-loop spiral where each
            # wait lengthens the arrival gaps that justify the next wait.
            return 0.0
        if self.fruitless >= _FRUITLESS_LINGERS and self.dispatches % _PROBE_EVERY:
            return 0.0
        remaining = self.policy.max_wait_ms / 1000.0 - (clock() - head.enqueued)
        gap = self.gap_ewma
        if remaining <= 0 or gap * 2 > remaining:
            return 0.0
        return min(remaining, gap * 4)

    def cancel_linger(self) -> None:
        """Cancel the linger timer, if one is set."""
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None

    def linger_ended(self) -> None:
        """End the current linger, counting it fruitless when no rows arrived during it."""
        self.cancel_linger()
        self.fruitless = self.fruitless + 1 if self.queued_rows <= self.linger_from else 0
        self.lingered = True

    # -- timings -------------------------------------------------------------------------
    def started(self, now: float) -> None:
        """A batch is dispatched at ``now``."""
        self.last_interval, self.last_start = now - self.last_start, now

    def finished(self, elapsed: float, spent: float, rows: int = 1) -> None:
        """A call of ``rows`` rows returned: learn the lane's duty cycle, its mean run time
        (``spent``) and its wall time per call and per row (``elapsed``)."""
        duty = min(1.0, elapsed / max(self.last_interval, elapsed, 1e-9))
        self.util = 0.8 * self.util + 0.2 * duty
        self.run_ewma = spent if math.isinf(self.run_ewma) else 0.9 * self.run_ewma + 0.1 * spent
        per_row = elapsed / max(rows, 1)
        if math.isinf(self.call_s):
            self.call_s, self.row_s = elapsed, per_row
        else:
            self.call_s = 0.8 * self.call_s + 0.2 * elapsed
            self.row_s = 0.8 * self.row_s + 0.2 * per_row


class Call:
    """One backend call in flight on a worker thread."""

    __slots__ = ("lane", "jobs", "rows", "timer", "expired", "switch")

    def __init__(
        self, lane: Lane, jobs: list[Job], rows: int, switch: StopSwitch | None = None
    ) -> None:
        self.lane = lane
        self.jobs = jobs
        self.rows = rows
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False
        self.switch = switch


def fail_jobs(jobs: Iterable[Job], exc: BaseException) -> None:
    """Fail each job's future that is still pending with ``exc``."""
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


def split_group(group: Hashable) -> tuple[Any, Any]:
    """(model, version) of a group key; (group, None) when it is not a pair."""
    if isinstance(group, tuple) and len(group) == 2:
        return group[0], group[1]
    return group, None


def group_name(group: Hashable) -> str:
    """A group as error messages and logs name it."""
    model, version = split_group(group)
    return f"model {model}" if version is None else f"model {model} version {version}"


def length_buckets(jobs: list[Job]) -> list[list[int]]:
    """Indices of ``jobs`` grouped by length bucket, in order of first appearance."""
    buckets: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        buckets.setdefault(length_bucket(job.feeds), []).append(i)
    return list(buckets.values())
