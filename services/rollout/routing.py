"""Traffic routing for rollouts: which version answers, shadow mirroring, prediction logging.

``TrafficRouter`` is what the gateway calls around each inference (request path steps 2, 6, 7):

- ``decide`` picks the version from the in-memory rollout state (``RolloutFollower``)
  with the sticky assignment of ``services.rollout.assignment``: no I/O on the request path;
- ``shadow`` mirrors a request to the candidate without awaiting it: the job goes on a
  bounded queue (dropped and counted when full), worker tasks run the candidate under a
  timeout, and both answers are logged as a pair. A candidate that raises, hangs or is
  slow is counted and logged, never seen by the caller;
- ``record`` logs the prediction event (``PredictionLog``: a list append) and counts it
  for its variant in ``FeedbackStore`` (a background task, fail-open). Counters are plain
  attributes, for the gateway's Prometheus collector.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

from services.errors import ServekitError
from services.rollout.assignment import Unit, Variant, assign
from services.rollout.feedback import PredictionRecordIn
from services.rollout.prediction_log import PredictionEvent, PredictionLog, ShadowPair
from services.rollout.shadow_outputs import comparable_outputs, like_primary

if TYPE_CHECKING:
    from services.registry.versions import ModelVersion
    from services.rollout.feedback import FeedbackStore
    from services.rollout.follower import RolloutFollower
    from services.runner.feeds import Feeds

logger = logging.getLogger(__name__)

Resolve = Callable[[str, str], Awaitable["ModelVersion"]]
"""Resolves (model, version) to a registered ModelVersion (``ModelCatalog.resolve``)."""


class InferRunner(Protocol):
    """The part of the gateway's ``Runner`` the router uses."""

    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds: ...


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request goes.

    Attributes:
        version: the version to serve; None means the model's default (no rollout state).
        variant: ``"primary"`` or ``"candidate"``.
        unit: ``"user"`` when assigned by user id, ``"request"`` otherwise.
        experiment_id: the canary or A/B experiment the request counts under, if any.
        shadow_version: in shadow mode, the candidate to mirror the request to.
        active: a rollout is running (shadow, canary or A/B): every request is logged.
    """

    version: str | None
    variant: Variant
    unit: Unit
    experiment_id: str | None = None
    shadow_version: str | None = None
    active: bool = False


@dataclass(frozen=True, slots=True)
class _ShadowJob:
    primary: ModelVersion
    candidate: ModelVersion | str
    feeds: Feeds
    rows: int
    request_id: str
    primary_outputs: Any
    primary_latency_ms: float


class TrafficRouter:
    """Routes requests between a model's primary and candidate, mirrors and logs them.

    Args:
        follower: the in-process copy of every model's rollout state.
        runner: runs inference (the gateway's ``Runner``); used for shadow copies.
        log: where prediction events and shadow pairs go.
        feedback: per-variant experiment counters; None to skip counting.
        resolve: resolves a candidate's (model, version) to its ModelVersion.
        shadow_queue: most shadow jobs waiting; past it they are dropped and counted.
        shadow_timeout_s: longest a candidate may take on one mirrored request.
        shadow_concurrency: shadow jobs run at once.
        feedback_limit: most feedback writes in flight; past it they are dropped.
        log_sample: share of requests logged to the prediction stream while no rollout
            runs (all of them during a rollout). Per-variant counters always count every
            request.
        clock: seconds since the epoch, stamped on logged entries.
    """

    def __init__(
        self,
        follower: RolloutFollower,
        runner: InferRunner,
        log: PredictionLog,
        feedback: FeedbackStore | None,
        resolve: Resolve,
        *,
        shadow_queue: int = 256,
        shadow_timeout_s: float = 2.0,
        shadow_concurrency: int = 4,
        feedback_limit: int = 1024,
        log_sample: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if shadow_queue < 1 or shadow_concurrency < 1 or shadow_timeout_s <= 0:
            raise ValueError("shadow_queue, shadow_concurrency and shadow_timeout_s must be > 0")
        self._follower = follower
        self._runner = runner
        self._log = log
        self._feedback = feedback
        self._resolve = resolve
        self._shadow_timeout_s = shadow_timeout_s
        self._shadow_concurrency = shadow_concurrency
        self._feedback_limit = feedback_limit
        self._clock = clock
        self._queue: asyncio.Queue[_ShadowJob] = asyncio.Queue(maxsize=shadow_queue)
        self._workers: list[asyncio.Task[None]] = []
        self._feedback_tasks: set[asyncio.Task[None]] = set()
        self._feedback_buffer: list[PredictionRecordIn] = []
        self._feedback_due = False
        self._feedback_interval_s = 0.1  # counts feed gates that judge minutes of traffic
        self._log_sample = log_sample
        self._rng = random.Random()
        self.shadow_sent = 0
        """Shadow jobs queued."""
        self.shadow_dropped = 0
        """Shadow jobs dropped because the queue was full."""
        self.shadow_completed = 0
        """Shadow jobs the candidate answered."""
        self.shadow_errors = 0
        """Shadow jobs the candidate failed (raised, or could not be resolved)."""
        self.shadow_timeouts = 0
        """Shadow jobs the candidate did not answer within ``shadow_timeout_s``."""
        self.feedback_errors = 0
        """Feedback writes that failed (Redis down or slow)."""
        self.feedback_dropped = 0
        """Feedback writes skipped because too many were in flight."""
        self.assignments: dict[tuple[str, Unit], int] = {}
        """Served requests per (model, assignment unit): ``user`` when hashed by user id,
        ``request`` when anonymous; the anonymous share is a signal of the design."""

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the shadow workers and the prediction log's writer (idempotent)."""
        await self._log.start()
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._shadow_worker(), name=f"shadow-worker-{i}")
                for i in range(self._shadow_concurrency)
            ]

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued shadow job and feedback write is done."""
        async with asyncio.timeout(timeout):
            await self._queue.join()
            self._flush_feedback()
            while self._feedback_tasks:
                await asyncio.gather(*list(self._feedback_tasks), return_exceptions=True)

    async def close(self) -> None:
        """Stop the workers (queued shadow jobs are abandoned) and flush the log."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._flush_feedback()
        if self._feedback_tasks:
            await asyncio.gather(*list(self._feedback_tasks), return_exceptions=True)
        await self._log.close()

    @property
    def shadow_queued(self) -> int:
        """Shadow jobs waiting now."""
        return self._queue.qsize()

    # -- request path --------------------------------------------------------------------
    def decide(self, model: str, user_id: str | None, request_id: str) -> RouteDecision:
        """The version, variant and assignment unit of one request (in memory, no I/O).

        Without a rollout state the model's default version answers. With one, its
        ``primary`` answers unless the assignment sends the request to the candidate
        (canary and A/B modes); in shadow mode the decision names the candidate to mirror.
        """
        state = self._follower.get(model)
        if state is None:
            return RouteDecision(None, "primary", "user" if user_id else "request")
        assignment = assign(state, user_id, request_id)
        return RouteDecision(
            version=assignment.version,
            variant=assignment.variant,
            unit=assignment.unit,
            experiment_id=state.experiment_id if state.mode in ("canary", "ab") else None,
            shadow_version=state.candidate if state.mode == "shadow" else None,
            active=state.mode != "off",
        )

    def shadow(
        self,
        primary: ModelVersion,
        candidate: ModelVersion | str,
        feeds: Feeds,
        rows: int,
        request_id: str,
        primary_outputs: Any,
        primary_latency_ms: float,
    ) -> bool:
        """Mirror one request to ``candidate`` in the background; never waits, never raises.

        Args:
            primary: the version that answered the caller.
            candidate: the candidate's ModelVersion, or its version string (resolved in
                the background).
            feeds: the input tensors the primary ran on (not modified afterwards).
            rows: rows in ``feeds``.
            request_id: the request's id.
            primary_outputs: the primary's outputs as ``comparable_outputs`` gives them
                (the candidate's are logged the same way, so the gate compares like with like).
            primary_latency_ms: the primary's time in the runner (NaN: answered from the
                cache), compared with the candidate's time in the runner.

        Returns:
            True when queued, False when the queue was full (counted in
            ``shadow_dropped``).
        """
        job = _ShadowJob(
            primary, candidate, feeds, rows, request_id, primary_outputs, primary_latency_ms
        )
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.shadow_dropped += 1
            return False
        self.shadow_sent += 1
        return True

    def record(
        self,
        decision: RouteDecision,
        mv: ModelVersion,
        request_id: str,
        latency_ms: float,
        error: bool,
        inputs: Any,
        output: Any,
    ) -> None:
        """Log one served request and count it for its variant; never waits, never raises.

        Args:
            decision: the request's routing decision.
            mv: the version that answered (or failed).
            request_id: the request's id.
            latency_ms: time to answer.
            error: whether serving failed.
            inputs: the feature rows (array or nested lists), or None.
            output: the answer, JSON-encodable (numpy arrays included), or None.
        """
        # Counted here, after the model resolved, so client-made names cannot add series.
        key = (mv.name, decision.unit)
        self.assignments[key] = self.assignments.get(key, 0) + 1
        if decision.active or self._rng.random() < self._log_sample:
            self._log_event(decision, mv, request_id, latency_ms, error, inputs, output)
        if self._feedback is None:
            return
        if len(self._feedback_buffer) >= self._feedback_limit:
            self.feedback_dropped += 1
            return
        self._feedback_buffer.append(
            (mv.name, decision.variant, mv.version, decision.experiment_id, latency_ms, error)
        )
        if not self._feedback_due:
            # One pipelined write (a round trip of the gateway's) per 100 ms of predictions.
            self._feedback_due = True
            asyncio.get_running_loop().call_later(self._feedback_interval_s, self._flush_feedback)

    def _log_event(
        self,
        decision: RouteDecision,
        mv: ModelVersion,
        request_id: str,
        latency_ms: float,
        error: bool,
        inputs: Any,
        output: Any,
    ) -> None:
        self._log.append(
            PredictionEvent(
                model=mv.name,
                version=mv.version,
                variant=decision.variant,
                unit=decision.unit,
                request_id=request_id,
                latency_ms=latency_ms,
                error=error,
                inputs=inputs,
                output=output,
                experiment_id=decision.experiment_id,
                ts=self._clock(),
            )
        )

    def _flush_feedback(self) -> None:
        self._feedback_due = False
        if not self._feedback_buffer:
            return
        batch, self._feedback_buffer = self._feedback_buffer, []
        task = asyncio.get_running_loop().create_task(self._write_feedback(batch))
        self._feedback_tasks.add(task)
        task.add_done_callback(self._feedback_tasks.discard)

    async def _write_feedback(self, batch: list[PredictionRecordIn]) -> None:
        assert self._feedback is not None
        try:
            await self._feedback.record_predictions(batch)
        except (RedisError, OSError, ServekitError) as exc:
            self.feedback_errors += len(batch)
            logger.warning(
                "feedback write of %d predictions failed (%d so far, fail-open): %s",
                len(batch),
                self.feedback_errors,
                exc,
            )

    # -- background ----------------------------------------------------------------------
    async def _shadow_worker(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._shadow_one(job)
            except Exception:  # a bug here must not stop the worker; the job is lost
                logger.exception("shadow job %s failed unexpectedly", job.request_id)
            finally:
                self._queue.task_done()

    async def _shadow_one(self, job: _ShadowJob) -> None:
        model = job.primary.name
        candidate_version = (
            job.candidate if isinstance(job.candidate, str) else job.candidate.version
        )
        outputs: Any = None
        latency_ms: float | None = None
        error = ""
        try:
            async with asyncio.timeout(self._shadow_timeout_s):
                mv = (
                    await self._resolve(model, job.candidate)
                    if isinstance(job.candidate, str)
                    else job.candidate
                )
                t0 = time.perf_counter()
                outputs = await self._runner.infer(mv, job.feeds, job.rows)
                latency_ms = (time.perf_counter() - t0) * 1000.0
            outputs = like_primary(job.primary_outputs, comparable_outputs(mv, outputs))
            self.shadow_completed += 1
        except TimeoutError:
            self.shadow_timeouts += 1
            error = f"timeout after {self._shadow_timeout_s:g} s"
        except Exception as exc:  # any candidate failure is data for the gate, not an outage
            self.shadow_errors += 1
            error = f"{type(exc).__name__}: {exc}"[:500]
        self._log.append(
            ShadowPair(
                request_id=job.request_id,
                model=model,
                primary_version=job.primary.version,
                candidate_version=candidate_version,
                primary_output=job.primary_outputs,
                candidate_output=outputs,
                primary_latency_ms=job.primary_latency_ms,
                candidate_latency_ms=latency_ms,
                candidate_error=error,
                rows=job.rows,
                ts=self._clock(),
            )
        )
