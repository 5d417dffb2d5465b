"""Deadline-aware admission to the batcher: shed by expected time, not by queue length.

A lane learns, from its own backend calls, the wall time of one call and of one row (EWMAs,
``Lane.finished``). A request arriving at a lane with ``ahead`` rows queued expects to wait

    ahead x row time / max_concurrency  (+ half a call while every slot is busy)

and is refused at once (``OverloadedError``: 503 with Retry-After, the lane's drain time)
when that is over the model's queueing budget (``BatchPolicy.queue_budget_ms``), unless
the rows ahead do not yet fill one batch per slot: those ride in the next batches, which
must stay full for the model to keep its throughput. A model whose call outlasts the
budget (a text model's batch of 32 on a small CPU) so still fills each batch, and its
requests wait at most about one call; a fast model queues as many batches as fit in the
budget. (Refusing everything past the budget there would shrink its batches to one row
and its throughput to the unbatched one.) A request is also refused at once when its
client's deadline (``Request-Timeout``) would pass before its expected turn.

Once queued, a request is dropped before it runs (503, not computed) when its client's
deadline has passed, when its client has disconnected, or when it has waited twice what
it was admitted for (twice the longer of the budget and its expected wait plus one call):
the model slowed down after the estimate, and an answer that late is worth less than the
capacity it takes.

The edge binds each request's deadline and ASGI ``receive`` to the ``REQUEST`` context
variable (``bind_request``); the batcher reads it in ``submit``, so nothing between the
edge and the runner passes it along. A request that has to queue behind a busy lane gets
one watcher task awaiting ``receive`` (which answers ``http.disconnect`` when the client
goes, or once the response is sent); a request that runs at once gets none.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from contextvars import ContextVar
from typing import Any

from services.errors import BadRequestError, OverloadedError
from services.runner.lanes import BatcherStats, Job, Lane, group_name

Receive = Callable[[], Awaitable[dict[str, Any]]]

# Drop a queued request that has waited this many times what it was admitted for.
_DROP_SLACK = 2.0
# The longest client timeout taken (a day): beyond it, no deadline.
_MAX_TIMEOUT_S = 86_400.0
# A lane without a queue limit of its own counts as holding this many rows (the batcher's
# default limit) when the edge derives its in-flight limit.
_UNLIMITED_LANE_ROWS = 4096


class RequestContext:
    """One request's deadline (``time.perf_counter`` seconds) and its connection."""

    __slots__ = ("deadline", "receive", "watcher", "gone", "answered")

    def __init__(self, deadline: float, receive: Receive | None) -> None:
        self.deadline = deadline  # math.inf: none
        self.receive = receive
        self.watcher: asyncio.Task[None] | None = None
        self.gone = False  # the client disconnected before it was answered
        # Answered: work the request left behind (shadow calls, which inherit this
        # context) is no longer bound by its client's deadline or connection.
        self.answered = False

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Learn of the client's disconnect while the request waits (once per request)."""
        if self.watcher is None and self.receive is not None and not self.answered:
            self.watcher = loop.create_task(self._watch(self.receive))

    async def _watch(self, receive: Receive) -> None:
        # ``receive`` also answers http.disconnect once the response is sent.
        message = await receive()
        if message.get("type") == "http.disconnect" and not self.answered:
            self.gone = True


REQUEST: ContextVar[RequestContext | None] = ContextVar("servekit_request", default=None)


def bind_request(timeout_s: float | None, receive: Receive | None) -> RequestContext:
    """Bind the current request's timeout (seconds from now) and ``receive``."""
    deadline = math.inf if timeout_s is None else time.perf_counter() + timeout_s
    ctx = RequestContext(deadline, receive)
    REQUEST.set(ctx)
    return ctx


def request_answered() -> None:
    """The current request's response is about to leave (see ``RequestContext.answered``)."""
    ctx = REQUEST.get()
    if ctx is not None:
        ctx.answered = True


def shorten_deadline(timeout_s: float) -> None:
    """Bring the current request's deadline to ``timeout_s`` from now if that is sooner."""
    deadline = time.perf_counter() + timeout_s
    ctx = REQUEST.get()
    if ctx is None:
        REQUEST.set(RequestContext(deadline, None))
    elif deadline < ctx.deadline:
        ctx.deadline = deadline


def parse_timeout(raw: str | float | int, name: str, *, scale: float = 1.0) -> float:
    """A client timeout in seconds (``raw`` x ``scale``): finite and positive, else a 400
    naming ``name``."""
    try:
        value = float(raw) * scale
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(raw, bool) or not (value > 0 and math.isfinite(value)):
        raise BadRequestError(
            f"{name} must be a positive number of seconds{' (scaled)' if scale != 1 else ''}, "
            f"got {str(raw)[:40]!r}",
            field=name,
        )
    return min(value, _MAX_TIMEOUT_S)


class AdmissionStats:
    """Refusals at admission and drops from the queue, by (model, version, reason)."""

    def __init__(self) -> None:
        self.refused: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.dropped: collections.Counter[tuple[str, str, str]] = collections.Counter()


def _labels(group: Hashable, reason: str) -> tuple[str, str, str]:
    if isinstance(group, tuple) and len(group) == 2:
        return str(group[0]), str(group[1]), reason
    return str(group), "", reason


def expected_wait(lane: Lane) -> float:
    """Seconds a request arriving now at ``lane`` expects to wait for its call to start
    (0 while the lane has not finished a call: nothing is known yet)."""
    if math.isinf(lane.row_s):
        return 0.0
    slots = lane.limits.max_concurrency
    wait = lane.queued_rows * lane.row_s / slots
    if lane.running >= slots:
        wait += 0.5 * lane.call_s
    return wait


def over_budget(lane: Lane) -> bool:
    """Whether a request arriving now at ``lane`` is refused for its budget (the rule of
    ``Admission.admit``, without a client deadline)."""
    budget_ms = lane.policy.queue_budget_ms
    if not budget_ms or math.isinf(lane.row_s):
        return False
    batch_rows = lane.policy.max_batch_size * lane.limits.max_concurrency
    return lane.queued_rows >= batch_rows and expected_wait(lane) > budget_ms / 1000.0


def lane_tolerance(lane: Lane) -> float | None:
    """The longest a request of ``lane`` may expect to wait and still be admitted: its
    budget, or one call where a call outlasts the budget (a batch still fills); None
    without a budget."""
    budget_ms = lane.policy.queue_budget_ms
    if not budget_ms:
        return None
    budget = budget_ms / 1000.0
    return budget if math.isinf(lane.call_s) else max(budget, lane.call_s)


def lane_capacity(lane: Lane) -> int:
    """Rows ``lane`` holds at most within its budget: what admission lets queue (one batch
    per call slot, or the budget's worth of rows if more) plus one batch per slot running;
    the lane's queue limit instead when it has no budget."""
    slots = lane.limits.max_concurrency
    batch_rows = lane.policy.max_batch_size * slots
    budget_ms = lane.policy.queue_budget_ms
    queue_limit = lane.limits.queue_limit or _UNLIMITED_LANE_ROWS
    if not budget_ms:
        return queue_limit + batch_rows
    queued = batch_rows
    if not math.isinf(lane.row_s) and lane.row_s > 0:
        queued = max(queued, math.ceil(budget_ms / 1000.0 * slots / lane.row_s))
    return min(queued, queue_limit) + batch_rows


def drain_s(lane: Lane) -> int:
    """Retry-After for ``lane``: seconds to drain its queue, at least 1."""
    if math.isinf(lane.row_s):
        return 1
    slots = lane.limits.max_concurrency
    total = (lane.queued_rows * lane.row_s + lane.running * lane.call_s) / slots
    return max(1, math.ceil(total))


class Admission:
    """The admission decisions of one batcher, and their counts."""

    def __init__(self, batcher_stats: BatcherStats) -> None:
        self.stats = AdmissionStats()
        self._batcher_stats = batcher_stats  # refusals over the budget count as shed

    def admit(self, lane: Lane, now: float, ctx: RequestContext | None) -> float:
        """Admit a request to ``lane`` or raise ``OverloadedError``; the time past which
        it is dropped from the queue (``math.inf``: never)."""
        budget_ms = lane.policy.queue_budget_ms
        deadline = math.inf if ctx is None or ctx.answered else ctx.deadline
        if not budget_ms and deadline == math.inf:
            return math.inf  # no budget, no client deadline: the old behaviour
        wait = expected_wait(lane)
        if now + wait > deadline:
            self.refuse(lane, "deadline", f"its deadline passes before its turn (~{wait:.3f} s)")
        expires = deadline
        if budget_ms and not math.isinf(lane.row_s):
            budget = budget_ms / 1000.0
            if over_budget(lane):
                self.refuse(
                    lane, "budget", f"expected wait {wait:.3f} s is over the {budget:g} s budget"
                )
            expires = min(expires, now + _DROP_SLACK * max(budget, wait + lane.call_s))
        return expires

    def count_refusal(self, lane: Lane, reason: str) -> None:
        """Count one refusal of ``reason`` at ``lane``."""
        self.stats.refused[_labels(lane.group, reason)] += 1

    def count_entry_refusal(self, reason: str) -> None:
        """Count one refusal at the HTTP entry, before the request's model is known."""
        self.stats.refused[("", "", reason)] += 1
        self._batcher_stats.shed += 1

    def refuse(self, lane: Lane, reason: str, why: str) -> None:
        """Count a refusal of ``reason`` and raise its 503."""
        self.count_refusal(lane, reason)
        if reason != "deadline":
            self._batcher_stats.shed += 1
        raise OverloadedError(
            f"{group_name(lane.group)} is overloaded: {why}; retry later",
            retry_after=drain_s(lane),
            reason=reason,
        )

    def drop(self, lane: Lane, job: Job, now: float) -> None:
        """Answer a queued ``job`` that will not run (gone, past its deadline or budget)."""
        if job.ctx is not None and job.ctx.gone:
            reason, why = "disconnected", "the client disconnected"
        elif job.ctx is not None and not job.ctx.answered and job.ctx.deadline <= now:
            reason, why = "deadline", "its deadline passed while it was queued"
        else:
            reason, why = "budget", f"it waited {now - job.enqueued:.3f} s, past its budget"
        self.stats.dropped[_labels(lane.group, reason)] += 1
        if not job.future.done():
            job.future.set_exception(
                OverloadedError(
                    f"request dropped before it ran: {why}",
                    retry_after=drain_s(lane),
                    reason=reason,
                )
            )
