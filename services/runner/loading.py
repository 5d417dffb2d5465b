"""Loading model versions into a pool: once on first use however many ask, under the
memory budget, with a retry backoff after failures.

A request for a version that is not resident starts its load (or joins the one in
flight) and waits for it up to ``load_timeout_s``. A load reserves room first
(``services.runner.residency``), waiting for room while loads and busy models hold the
budget; it creates the session on a loader thread (``services.runner.sessions``) and
publishes it at its measured size. A load that fails (bad artifact, missing file, store
down) fails only the requests for that model, with a ``ModelLoadError`` (503) naming it,
and is retried on demand after a backoff that doubles per failure.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.errors import ModelLoadError, ServekitError
from services.registry.versions import ModelVersion
from services.runner.budget import LoadBackoff
from services.runner.residency import (
    Key,
    LoadedModel,
    NoRoomError,
    RefitError,
    Residency,
    no_room,
)
from services.runner.sessions import FreshSession, SessionMaker

logger = logging.getLogger(__name__)


class Loader:
    """Loads versions into a ``Residency``: on first use, once, with retry backoff.

    Args:
        residency: the books the loaded versions go into.
        sessions: creates the sessions.
        executor: the loader threads (sessions are created there); shut down by ``close``.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        residency: Residency,
        sessions: SessionMaker,
        executor: ThreadPoolExecutor,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.residency = residency
        self.sessions = sessions
        mm = self.mm = residency.mm
        self.stats = residency.stats
        self._clock = clock
        self._backoff = LoadBackoff(mm.retry_backoff_s, mm.retry_backoff_max_s, clock)
        self._loading: dict[Key, asyncio.Task[LoadedModel]] = {}
        self.executor = executor
        self._sweeper: asyncio.Task[None] | None = None

    def load_sync(self, mv: ModelVersion, *, pinned: bool = False) -> LoadedModel:
        """Load ``mv`` now (blocking; start-up preloads and the split runner)."""
        res = self.residency
        lm = res.resident_or_reserve(mv, pinned=pinned)
        if lm is not None:
            return lm
        try:
            fresh = self.sessions.create(mv)
        except BaseException:
            res.unreserve(mv.key)
            raise
        return self._commit(mv, fresh, pinned=pinned)

    async def get(self, mv: ModelVersion) -> LoadedModel:
        """The loaded ``mv``, loading it on first use (once, however many ask)."""
        lm = self.residency.find(mv.key)
        if lm is not None:
            return lm
        if self._sweeper is None and self.mm.idle_timeout_s is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self.residency.sweep())
        task = self._loading.get(mv.key)
        if task is None:
            task = self._start(mv)
        with self.residency.waiting(mv.key):
            try:
                return await asyncio.wait_for(asyncio.shield(task), self.mm.load_timeout_s)
            except TimeoutError:
                raise ModelLoadError(
                    f"model {mv.name} version {mv.version} is still loading after "
                    f"{self.mm.load_timeout_s:g} s",
                    model=mv.name,
                    version=mv.version,
                    retry_after=5,
                ) from None

    def _start(self, mv: ModelVersion) -> asyncio.Task[LoadedModel]:
        """Start loading ``mv``, unless its last failure's backoff still runs."""
        blocked = self._backoff.blocked(mv.key)
        if blocked is not None:
            message, attempts, left = blocked
            raise ModelLoadError(
                f"model {mv.name} version {mv.version} cannot be loaded: {message} "
                f"({attempts} failed attempt{'s' if attempts > 1 else ''}; next in "
                f"{left:.0f} s)",
                model=mv.name,
                version=mv.version,
                retry_after=max(1.0, left),
            )
        task = asyncio.get_running_loop().create_task(self._load(mv))
        self._loading[mv.key] = task
        task.add_done_callback(functools.partial(self._done, mv.key))
        return task

    def _done(self, key: Key, task: asyncio.Task[LoadedModel]) -> None:
        self._loading.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: waiters get it through the shield

    async def _load(self, mv: ModelVersion) -> LoadedModel:
        loop = asyncio.get_running_loop()
        deadline = self._clock() + self.mm.load_timeout_s
        res = self.residency
        try:
            for attempt in (1, 2):
                await self._reserve(mv, deadline)
                try:
                    fresh = await loop.run_in_executor(self.executor, self.sessions.create, mv)
                except BaseException:
                    res.unreserve(mv.key)
                    raise
                try:
                    lm = self._commit(mv, fresh, pinned=False)
                    break
                except RefitError:
                    # Larger than reserved and no room at once: load again, now reserving
                    # the measured size (and waiting for room if need be).
                    if attempt == 2:
                        raise
        except NoRoomError:
            self.stats.loads["no_room"] += 1
            raise
        except (ServekitError, OSError) as exc:
            raise self._failed(mv, exc) from exc
        finally:
            res.notify_room()
        return lm

    async def _reserve(self, mv: ModelVersion, deadline: float) -> None:
        """Reserve room for ``mv``, waiting for it until ``deadline``."""
        res = self.residency
        while not res.reserve(mv):
            if self._clock() >= deadline:
                raise no_room(mv, res.budget.budget)
            await res.wait_room(deadline - self._clock())

    def _commit(self, mv: ModelVersion, fresh: FreshSession, *, pinned: bool) -> LoadedModel:
        lm = self.residency.commit(mv, fresh, pinned=pinned)
        self._backoff.succeeded(mv.key)
        self.stats.loads["ok"] += 1
        self.stats.observe_load(fresh.seconds)
        return lm

    def _failed(self, mv: ModelVersion, exc: BaseException) -> ModelLoadError:
        """Record a failed load (for its backoff); the error its requests get."""
        message = exc.message if isinstance(exc, ServekitError) else str(exc)
        prefix = f"model {mv.name} version {mv.version} cannot be loaded: "
        message = message.removeprefix(prefix)
        delay = self._backoff.failed(mv.key, message)
        self.stats.loads["error"] += 1
        logger.warning("%s%s (retry in %.0f s)", prefix, message, delay)
        return ModelLoadError(
            prefix + message, model=mv.name, version=mv.version, retry_after=max(1.0, delay)
        )

    def pending(self) -> dict[Key, dict[str, Any]]:
        """Versions not resident that ``GET /models`` shows: loads in flight, failures."""
        out: dict[Key, dict[str, Any]] = {}
        for key in list(self._loading):
            out.setdefault(key, {"loaded": False, "state": "loading"})
        for failed, (message, attempts, left) in self._backoff.failures().items():
            out.setdefault(
                failed,  # type: ignore[arg-type]
                {
                    "loaded": False,
                    "state": "failed",
                    "error": message,
                    "failed_attempts": attempts,
                    "retry_in_s": round(left, 1),
                },
            )
        return out

    def close(self) -> None:
        """Stop the idle sweeper and the loader threads."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
