"""Which model versions a pool holds: the memory books and eviction.

- A dedicated server preloads and pins its models: never evicted.
- A shared server unloads least-recently-used models to stay under its memory budget,
  and models idle for ``idle_timeout_s`` (1 h by default; docs/design.md has the
  trade-off).

A load (``services.runner.loading``) first reserves an estimate (the artifact's bytes,
held while loading, plus the expected session size; ``services.runner.sessions``) and
evicts what it must to fit; on success the reservation becomes the measured size, and if
that is larger, more is evicted before the model is published, or the model is dropped.
Loaded plus reserved bytes therefore never pass the budget. A model with requests in
flight, a request waiting for its load, or a backend call still running is never evicted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.errors import ModelLoadError
from services.registry.versions import ModelVersion
from services.runner.backends import Backend
from services.runner.budget import MemoryBudget, PoolStats
from services.runner.sessions import FreshSession, Released, SessionMaker
from services.settings import BatchPolicy, Settings

logger = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass
class LoadedModel:
    """A version resident in the pool."""

    mv: ModelVersion
    backend: Backend
    policy: BatchPolicy
    loaded_at: float
    load_seconds: float
    pinned: bool = False
    last_used: float = 0.0
    requests: int = 0
    resident_bytes: int = 0
    inflight: int = 0
    loaded_wall: float = 0.0  # wall-clock seconds at ``loaded_at``
    healthy: bool = True

    def describe(self) -> dict[str, Any]:
        """As shown by ``GET /models``."""
        return {
            "loaded": True,
            "pinned": self.pinned,
            "healthy": self.healthy,
            "provider": self.backend.provider if self.backend is not None else None,
            "resident_bytes": self.resident_bytes,
            "loaded_at": _iso(self.loaded_wall),
            "last_used": _iso(self.loaded_wall + (self.last_used - self.loaded_at)),
            "load_seconds": round(self.load_seconds, 4),
            "requests": self.requests,
            "inflight": self.inflight,
            "batching": self.policy.model_dump(),
        }


class Residency:
    """The resident versions and the bytes reserved by loads in flight, under a budget.

    Args:
        settings: servekit's settings (batching policies, multimodel limits).
        sessions: estimates, learns and frees sessions.
        busy: whether a version has requests queued or calls running (never evicted).
        on_evict: called with a version's key when it is unloaded.
        release_soon: runs a function on a loader thread (freeing unloaded sessions).
        clock: monotonic seconds.
        wall_clock: epoch seconds, for the times ``describe`` shows.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: SessionMaker,
        *,
        busy: Callable[[Key], bool],
        on_evict: Callable[[Key], None],
        release_soon: Callable[[Callable[[], None]], object],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.mm = settings.multimodel
        self.sessions = sessions
        self._busy = busy
        self._on_evict = on_evict
        self._release_soon = release_soon
        self._clock = clock
        self._wall = wall_clock
        self.budget = MemoryBudget(self.mm.memory_budget_bytes)
        self.stats = PoolStats()
        self._loaded: collections.OrderedDict[Key, LoadedModel] = collections.OrderedDict()
        self._waiting: collections.Counter[Key] = collections.Counter()
        self._lock = threading.RLock()  # the books: _loaded and budget
        self._room: list[asyncio.Future[None]] = []

    # -- lookups ---------------------------------------------------------------------
    def find(self, key: Key) -> LoadedModel | None:
        """The resident version ``key``, or ``None``."""
        return self._loaded.get(key)

    def loaded(self) -> dict[Key, LoadedModel]:
        """The resident versions."""
        with self._lock:
            return dict(self._loaded)

    def use(self, lm: LoadedModel) -> None:
        """A request for ``lm`` starts: most recently used, and not evictable until
        ``done``. Call with no await since ``lm`` was found, so it cannot be evicted in
        between."""
        lm.last_used = self._clock()
        lm.requests += 1
        lm.inflight += 1
        with self._lock:
            if lm.mv.key in self._loaded:
                self._loaded.move_to_end(lm.mv.key)

    def done(self, lm: LoadedModel) -> None:
        """A request for ``lm`` ended: loads waiting for room may now evict it."""
        lm.inflight -= 1
        if self._room and not lm.inflight:
            self.notify_room()

    @contextlib.contextmanager
    def waiting(self, key: Key) -> Iterator[None]:
        """A request waits for ``key``'s load: it is not evicted before the request's turn."""
        self._waiting[key] += 1
        try:
            yield
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]

    # -- reserving and publishing -----------------------------------------------------
    def reserve(self, mv: ModelVersion) -> bool:
        """Reserve room for loading ``mv``, evicting LRU models; ``False``: no room now."""
        with self._lock:
            return self._reserve(mv) is not None

    def resident_or_reserve(self, mv: ModelVersion, *, pinned: bool) -> LoadedModel | None:
        """``mv`` if it is resident (pinned now if ``pinned``), else ``None`` with room
        reserved for loading it; raises ``NoRoomError`` when there is no room now."""
        with self._lock:
            lm = self._loaded.get(mv.key)
            if lm is not None:
                lm.pinned = lm.pinned or pinned
                return lm
            if self._reserve(mv) is None:
                raise no_room(mv, self.budget.budget)
        return None

    def unreserve(self, key: Key) -> None:
        """Give back the room reserved for a load that failed."""
        with self._lock:
            self.budget.unreserve(key)

    def _reserve(self, mv: ModelVersion) -> list[LoadedModel] | None:
        need = self.sessions.estimate(mv)
        victims = self._make_room(need, reason="budget")
        if victims is None:
            return None
        self.budget.reserve(mv.key, need)
        return victims

    def commit(self, mv: ModelVersion, fresh: FreshSession, *, pinned: bool) -> LoadedModel:
        """Publish a loaded model at its measured size, evicting more if it is larger than
        its reservation; drop it (``RefitError``) if it does not fit."""
        key, measured = mv.key, fresh.measured
        backend = fresh.take()
        with self._lock:
            self.budget.unreserve(key)
            self.sessions.learn(mv, measured)
            if not self._room_for(measured, key):
                self.sessions.release(Released(backend))
                del backend  # the error's traceback keeps this frame: keep no session in it
                self._release_soon(self.sessions.release_now)
                raise RefitError(
                    f"model {mv.name} version {mv.version} holds {measured} bytes once loaded; "
                    f"no room under the memory budget of {self.budget.budget} bytes",
                    model=mv.name,
                    version=mv.version,
                    retry_after=5,
                )
            self.budget.commit(key, measured)
            backend.nbytes = measured
            now = self._clock()
            lm = self._loaded[key] = LoadedModel(
                mv=mv,
                backend=backend,
                policy=self.settings.batch.policy_for(mv.name),
                loaded_at=now,
                load_seconds=fresh.seconds,
                pinned=pinned,
                last_used=now,
                resident_bytes=measured,
                loaded_wall=self._wall(),
            )
        logger.info(
            "loaded %s version %s on %s in %.1f ms: %d bytes resident (%d of %s in use)",
            mv.name,
            mv.version,
            backend.provider,
            fresh.seconds * 1000,
            measured,
            self.budget.used,
            self.budget.budget,
        )
        return lm

    # -- eviction --------------------------------------------------------------------
    def _room_for(self, need: int, keep: Key) -> bool:
        """Whether ``need`` more bytes fit, evicting others than ``keep`` if need be."""
        try:
            return self._make_room(need, reason="budget", keep=keep) is not None
        except ModelLoadError:
            return False

    def _make_room(
        self, need: int, *, reason: str, keep: Key | None = None
    ) -> list[LoadedModel] | None:
        free = self.budget.free()
        if free is None or free >= need:
            return []
        if self.budget.budget is not None and need > self.budget.budget - self.pinned_bytes():
            raise ModelLoadError(
                f"needs {need} bytes; the memory budget is {self.budget.budget} bytes of which "
                f"{self.pinned_bytes()} are pinned",
                retry_after=self.mm.retry_backoff_max_s,
            )
        chosen: list[LoadedModel] = []
        for key, lm in self._loaded.items():  # least recently used first
            if free >= need:
                break
            if key == keep or not self._evictable(lm):
                continue
            chosen.append(lm)
            free += lm.resident_bytes
        if free < need:
            return None
        for lm in chosen:
            self._evict(lm, reason)
        return chosen

    def _evictable(self, lm: LoadedModel) -> bool:
        key = lm.mv.key
        return (
            not lm.pinned and not lm.inflight and key not in self._waiting and not self._busy(key)
        )

    def _evict(self, lm: LoadedModel, reason: str) -> None:
        """Unload ``lm`` from the books; its session is freed by the next loader step.
        Call with ``_lock`` held."""
        key = lm.mv.key
        del self._loaded[key]
        self.budget.release(key)
        self._on_evict(key)
        self.sessions.release(lm)
        self.stats.evictions[reason] += 1
        logger.info("unloaded %s version %s (%s)", key[0], key[1], reason)

    def evict_idle(self) -> list[Key]:
        """Unload every unpinned, unused model idle for ``idle_timeout_s``; their keys."""
        timeout = self.mm.idle_timeout_s
        if timeout is None:
            return []
        now = self._clock()
        with self._lock:
            idle = [
                lm
                for lm in self._loaded.values()
                if now - lm.last_used >= timeout and self._evictable(lm)
            ]
            for lm in idle:
                self._evict(lm, "idle")
        if idle:
            self._release_soon(self.sessions.release_now)
            self.notify_room()
        return [lm.mv.key for lm in idle]

    async def sweep(self) -> None:
        """Unload idle models every ``sweep_interval_s`` (at most a quarter of the idle
        timeout), for ever."""
        timeout = self.mm.idle_timeout_s or 3600.0
        interval = min(self.mm.sweep_interval_s, timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self.evict_idle()

    async def wait_room(self, timeout: float) -> None:
        """Wait until room may have come free (an eviction, a load ended), or ``timeout``."""
        fut = asyncio.get_running_loop().create_future()
        self._room.append(fut)
        try:
            await asyncio.wait_for(fut, max(0.0, timeout))
        except TimeoutError:
            pass
        finally:
            if fut in self._room:
                self._room.remove(fut)

    def notify_room(self) -> None:
        """Wake the loads waiting for room."""
        waiters, self._room = self._room, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- introspection ---------------------------------------------------------------
    def pinned_bytes(self) -> int:
        """Bytes held by pinned models."""
        return sum(lm.resident_bytes for lm in self._loaded.values() if lm.pinned)

    def memory(self) -> dict[str, Any]:
        """The memory books: budget, resident and reserved bytes."""
        with self._lock:
            return {
                "budget_bytes": self.budget.budget,
                "resident_bytes": self.budget.resident_total,
                "reserved_bytes": self.budget.reserved_total,
                "pinned_bytes": self.pinned_bytes(),
                "loaded": len(self._loaded),
            }


class NoRoomError(ModelLoadError):
    """No room under the budget right now (not the model's fault: no retry backoff)."""


class RefitError(NoRoomError):
    """Loaded, measured larger than its reservation, and no room for the difference."""


def no_room(mv: ModelVersion, budget: int | None) -> NoRoomError:
    """The error of a load that found no room under the budget."""
    return NoRoomError(
        f"model {mv.name} version {mv.version} cannot be loaded now: the memory budget "
        f"({budget} bytes) is held by pinned or busy models and loads in flight",
        model=mv.name,
        version=mv.version,
        retry_after=1,
    )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
