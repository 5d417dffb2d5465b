"""The runner's model pool: (model, version) -> a loaded backend, fed by the batcher.

One pool serves both sizes of the design (decision 2):

- dedicated server: its model is preloaded and pinned, never evicted, and (being trusted)
  may run inline on the event loop when it is tiny;
- shared server: any registered model is loaded on first use (once, however many ask)
  from the registry, and unloaded least-recently-used first to stay under a memory
  budget, or after ``idle_timeout_s`` without use (decision 3: 1 h).

On either, a tiny model whose backend can be stopped (ONNX Runtime) runs inline under the
batcher's watchdog, which stops a call that holds the loop past ``inline_deadline_ms`` and
re-runs it on a worker thread (see ``services.runner.batching``).

Memory: a model's resident bytes are measured around the creation of its session (the
allocator's in-use bytes, ``services.runner.budget.heap_bytes``), with session creation and
release serialized so the difference belongs to that model alone. A load first reserves
an estimate (the artifact's bytes, held while loading, plus the expected session size)
and evicts what it must to fit; on success the reservation becomes the measured size,
and if that is larger, more is evicted before the model is published, or the model is
dropped. Loaded plus reserved bytes therefore never pass the budget. A model with
requests in flight, or a backend call still running, is never evicted.

Failures: a load that fails (bad artifact, missing file, store down) fails only the
requests for that model, with a ``ModelLoadError`` (503) naming it, and is retried on
demand after a backoff that doubles per failure.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from services.errors import ModelLoadError, ServekitError
from services.registry.versions import ModelRegistry, ModelVersion
from services.request.catalog import ModelCatalog
from services.runner.backends import Backend, create_backend, warm_up
from services.runner.batching import AdaptiveBatcher
from services.runner.budget import LoadBackoff, MeasureGate, MemoryBudget, PoolStats, heap_bytes
from services.runner.feeds import Feeds, concat_feeds, split_outputs
from services.runner.lanes import LaneLimits
from services.runner.watchdog import StopSwitch
from services.settings import BatchPolicy, Settings

logger = logging.getLogger(__name__)

BackendFactory = Callable[[ModelVersion, bytes], Backend]
_LEARN_FROM_BYTES = 64 * 1024
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


class ModelPool:
    """Loaded model versions and the batcher that runs them.

    Args:
        registry: where versions come from.
        settings: servekit's settings (batching, serving, multimodel).
        catalog: resolves model names to versions (shared with the gateway).
        backend_factory: builds a backend from metadata and artifact bytes.
        on_batch: metrics hook, called with (key, rows, seconds) per backend call.
        clock: monotonic seconds.
        memory_probe: bytes the process holds, read around each session's creation
            (default: the allocator's in-use bytes).
        wall_clock: epoch seconds, for the times ``describe`` shows.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        *,
        catalog: ModelCatalog | None = None,
        backend_factory: BackendFactory | None = None,
        on_batch: Callable[[Hashable, int, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        memory_probe: Callable[[], int] = heap_bytes,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.settings = settings
        mm = self.mm = settings.multimodel
        self.catalog = catalog or ModelCatalog(registry)
        # On a budget, ORT's arena is off: a session then holds what was measured at load.
        arena = mm.memory_budget_bytes is None
        self._factory = backend_factory or (
            lambda mv, data: create_backend(mv, data, settings.serving, mem_arena=arena)
        )
        self._warm_up: Callable[[], None] | None = (
            (lambda: warm_up(settings.serving)) if backend_factory is None else None
        )
        self._clock = clock
        self._wall = wall_clock
        self._probe = memory_probe
        self.budget = MemoryBudget(mm.memory_budget_bytes)
        self.stats = PoolStats()
        self._backoff = LoadBackoff(mm.retry_backoff_s, mm.retry_backoff_max_s, clock)
        self._loaded: collections.OrderedDict[Key, LoadedModel] = collections.OrderedDict()
        self._loading: dict[Key, asyncio.Task[LoadedModel]] = {}
        self._waiting: collections.Counter[Key] = collections.Counter()
        self._measured: dict[Key, int] = {}  # last measured bytes, kept across evictions
        self._ratio = mm.estimate_ratio  # learned: session bytes per artifact byte
        self._lock = threading.RLock()  # the books: _loaded, budget, _to_release
        self._gate = MeasureGate()  # fetches side by side; create/release one at a time
        self._to_release: list[LoadedModel] = []
        self._room: list[asyncio.Future[None]] = []
        self._loader = ThreadPoolExecutor(mm.load_threads, thread_name_prefix="servekit-load")
        self._sweeper: asyncio.Task[None] | None = None
        self.batcher = AdaptiveBatcher(
            self._run_group,
            policy_for=lambda key: self.settings.batch.policy_for(key[0]),  # type: ignore[index]
            queue_limit=settings.batch.queue_limit,
            enabled=settings.batch.enabled,
            on_batch=on_batch,
            limits_for=self._limits_for,
            inline_for=self._is_pinned,
            on_timeout=self._on_timeout,
            threads=mm.threads,
            stoppable_for=self._is_stoppable,
            inline_deadline_s=mm.inline_deadline_ms / 1000.0,
        )

    # -- loading ---------------------------------------------------------------------
    def load_sync(self, mv: ModelVersion, *, pinned: bool = False) -> LoadedModel:
        """Load ``mv`` now (blocking; start-up preloads and the split runner)."""
        with self._lock:
            lm = self._loaded.get(mv.key)
            if lm is not None:
                lm.pinned = lm.pinned or pinned
                return lm
            victims = self._reserve(mv)
            if victims is None:
                raise self._no_room(mv)
        try:
            fresh = self._load_blocking(mv)
        except BaseException:
            with self._lock:
                self.budget.unreserve(mv.key)
            raise
        return self._commit(mv, fresh.take(), fresh.measured, fresh.seconds, pinned=pinned)

    def preload(self, names: list[str]) -> list[ModelVersion]:
        """Load and pin the served version of each model in ``names``."""
        out = []
        for name in names:
            mv = self.registry.get(name)
            self.load_sync(mv, pinned=True)
            self.catalog.pin(mv)
            out.append(mv)
        return out

    async def get(self, mv: ModelVersion) -> LoadedModel:
        """The loaded ``mv``, loading it on first use (once, however many ask)."""
        lm = self._loaded.get(mv.key)
        if lm is not None:
            return lm
        if self._sweeper is None and self.mm.idle_timeout_s is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        task = self._loading.get(mv.key)
        if task is None:
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
            task.add_done_callback(functools.partial(self._loaded_done, mv.key))
        # A waiter keeps the model from eviction between its load and the waiter's turn.
        self._waiting[mv.key] += 1
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
        finally:
            self._waiting[mv.key] -= 1
            if not self._waiting[mv.key]:
                del self._waiting[mv.key]

    def _loaded_done(self, key: Key, task: asyncio.Task[LoadedModel]) -> None:
        self._loading.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: waiters get it through the shield

    async def _load(self, mv: ModelVersion) -> LoadedModel:
        loop = asyncio.get_running_loop()
        deadline = self._clock() + self.mm.load_timeout_s
        try:
            for attempt in (1, 2):
                while True:
                    with self._lock:
                        victims = self._reserve(mv)
                    if victims is not None:
                        break
                    if self._clock() >= deadline:
                        raise self._no_room(mv)
                    await self._wait_room(deadline - self._clock())
                try:
                    fresh = await loop.run_in_executor(self._loader, self._load_blocking, mv)
                except BaseException:
                    with self._lock:
                        self.budget.unreserve(mv.key)
                    raise
                try:
                    lm = self._commit(mv, fresh.take(), fresh.measured, fresh.seconds, pinned=False)
                    break
                except _RefitError:
                    # Larger than reserved and no room at once: load again, now reserving
                    # the measured size (and waiting for room if need be).
                    if attempt == 2:
                        raise
        except _NoRoomError:
            self.stats.loads["no_room"] += 1
            raise
        except ServekitError as exc:
            raise self._load_failed(mv, exc) from exc
        except OSError as exc:
            raise self._load_failed(mv, exc) from exc
        finally:
            self._notify_room()
        return lm

    def _load_failed(self, mv: ModelVersion, exc: BaseException) -> ModelLoadError:
        message = exc.message if isinstance(exc, ServekitError) else str(exc)
        prefix = f"model {mv.name} version {mv.version} cannot be loaded: "
        message = message.removeprefix(prefix)
        delay = self._backoff.failed(mv.key, message)
        self.stats.loads["error"] += 1
        logger.warning("%s%s (retry in %.0f s)", prefix, message, delay)
        return ModelLoadError(
            prefix + message, model=mv.name, version=mv.version, retry_after=max(1.0, delay)
        )

    def _load_blocking(self, mv: ModelVersion) -> _Fresh:
        """Fetch and create a session (in a loader thread)."""
        t0 = time.perf_counter()
        with self._gate.shared():
            data = self.registry.load_artifact(mv)
        with self._gate.exclusive():
            self._drain_releases()
            if self._warm_up is not None:
                self._warm_up()
                self._warm_up = None
            refs = sys.getrefcount(data)
            before = self._probe()
            backend = self._factory(mv, data)
            measured = max(0, self._probe() - before)
            # The artifact's bytes were allocated before the window; a backend that keeps
            # them (ONNX Runtime's InferenceSession does, when built from bytes) holds them.
            if sys.getrefcount(data) > refs:
                measured += len(data)
        return _Fresh(backend, measured, time.perf_counter() - t0)

    def _estimate(self, mv: ModelVersion) -> int:
        """Bytes to reserve for loading ``mv``: its artifact plus its expected session."""
        session = self._measured.get(mv.key)
        if session is None:
            session = int(self.mm.estimate_fixed_bytes + self._ratio * mv.size_bytes)
        return mv.size_bytes + session

    def _reserve(self, mv: ModelVersion) -> list[LoadedModel] | None:
        """Reserve room for loading ``mv``, evicting LRU models; ``None``: no room now.
        Call with ``_lock`` held."""
        need = self._estimate(mv)
        victims = self._make_room(need, reason="budget")
        if victims is None:
            return None
        self.budget.reserve(mv.key, need)
        return victims

    def _make_room(
        self, need: int, *, reason: str, keep: Key | None = None
    ) -> list[LoadedModel] | None:
        free = self.budget.free()
        if free is None or free >= need:
            return []
        if self.budget.budget is not None and need > self.budget.budget - self._pinned_bytes():
            raise ModelLoadError(
                f"needs {need} bytes; the memory budget is {self.budget.budget} bytes of which "
                f"{self._pinned_bytes()} are pinned",
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

    def _commit(
        self, mv: ModelVersion, backend: Backend, measured: int, seconds: float, *, pinned: bool
    ) -> LoadedModel:
        """Publish a loaded model at its measured size, evicting more if it is larger than
        its reservation; drop it if it does not fit."""
        key = mv.key
        with self._lock:
            self.budget.unreserve(key)
            self._measured[key] = measured
            if mv.size_bytes >= _LEARN_FROM_BYTES:  # smaller ones are all fixed overhead
                session_ratio = (measured - self.mm.estimate_fixed_bytes) / mv.size_bytes
                self._ratio = min(max(self._ratio, session_ratio), 4 * self.mm.estimate_ratio)
            try:
                room = self._make_room(measured, reason="budget", keep=key)
            except ModelLoadError:
                room = None
            if room is None:
                self._to_release.append(_Released(backend))  # type: ignore[arg-type]
                del backend  # the error's traceback keeps this frame: keep no session in it
                self._loader.submit(self.release_unloaded)
                raise _RefitError(
                    f"model {mv.name} version {mv.version} holds {measured} bytes once loaded; "
                    f"no room under the memory budget of {self.budget.budget} bytes",
                    model=mv.name,
                    version=mv.version,
                    retry_after=5,
                )
            self.budget.commit(key, measured)
            backend.nbytes = measured
            now = self._clock()
            lm = LoadedModel(
                mv=mv,
                backend=backend,
                policy=self.settings.batch.policy_for(mv.name),
                loaded_at=now,
                load_seconds=seconds,
                pinned=pinned,
                last_used=now,
                resident_bytes=measured,
                loaded_wall=self._wall(),
            )
            self._loaded[key] = lm
        self._backoff.succeeded(key)
        self.stats.loads["ok"] += 1
        self.stats.observe_load(seconds)
        logger.info(
            "loaded %s version %s on %s in %.1f ms: %d bytes resident (%d of %s in use)",
            mv.name,
            mv.version,
            backend.provider,
            seconds * 1000,
            measured,
            self.budget.used,
            self.budget.budget,
        )
        return lm

    # -- eviction --------------------------------------------------------------------
    def _evictable(self, lm: LoadedModel) -> bool:
        key = lm.mv.key
        return (
            not lm.pinned
            and not lm.inflight
            and key not in self._waiting
            and not self.batcher.busy(key)
        )

    def _evict(self, lm: LoadedModel, reason: str) -> None:
        """Unload ``lm`` from the books; its session is freed by the next loader step.
        Call with ``_lock`` held."""
        key = lm.mv.key
        del self._loaded[key]
        self.budget.release(key)
        self.batcher.forget(key)
        self._to_release.append(lm)
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
            self._loader.submit(self.release_unloaded)
            self._notify_room()
        return [lm.mv.key for lm in idle]

    def release_unloaded(self) -> None:
        """Free the sessions of unloaded models now (the loader does it on its next step)."""
        with self._gate.exclusive():
            self._drain_releases()

    def _drain_releases(self) -> None:
        """Drop the sessions of unloaded models (inside ``_gate.exclusive()``, so no
        measurement sees a free that is not its own)."""
        with self._lock:
            gone, self._to_release = self._to_release, []
        for lm in gone:
            lm.backend = None  # type: ignore[assignment]
        del gone

    async def _sweep(self) -> None:
        timeout = self.mm.idle_timeout_s or 3600.0
        interval = min(self.mm.sweep_interval_s, timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self.evict_idle()

    async def _wait_room(self, timeout: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._room.append(fut)
        try:
            await asyncio.wait_for(fut, max(0.0, timeout))
        except TimeoutError:
            pass
        finally:
            if fut in self._room:
                self._room.remove(fut)

    def _notify_room(self) -> None:
        waiters, self._room = self._room, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _no_room(self, mv: ModelVersion) -> ModelLoadError:
        return _NoRoomError(
            f"model {mv.name} version {mv.version} cannot be loaded now: the memory budget "
            f"({self.budget.budget} bytes) is held by pinned or busy models and loads in flight",
            model=mv.name,
            version=mv.version,
            retry_after=1,
        )

    def _pinned_bytes(self) -> int:
        return sum(lm.resident_bytes for lm in self._loaded.values() if lm.pinned)

    # -- inference -------------------------------------------------------------------
    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
        """Run ``rows`` rows of ``mv`` through its lane of the batcher."""
        key = mv.key
        lm = self._loaded.get(key)
        if lm is None:
            try:
                lm = await self.get(mv)
            except ServekitError:
                self.stats.errors[key] += 1
                raise
        # No await from here to inflight += 1: the model cannot be evicted in between.
        lm.last_used = self._clock()
        lm.requests += 1
        lm.inflight += 1
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
        stats = self.stats
        stats.requests[key] += 1
        stats.rows[key] += rows
        try:
            return await self.batcher.submit(key, feeds, rows)
        except Exception:
            stats.errors[key] += 1
            raise
        finally:
            lm.inflight -= 1
            if self._room and not lm.inflight:
                self._notify_room()

    def _run_group(
        self, key: Hashable, feeds: list[Feeds], switch: StopSwitch | None = None
    ) -> list[Feeds]:
        lm = self._loaded.get(key)  # type: ignore[call-overload]
        if lm is None:  # a bug if it happens: models in use are never evicted
            model, version = cast(Key, key)
            raise ModelLoadError(
                f"model {model} version {version} was unloaded while in use",
                model=model,
                version=version,
                retry_after=1,
            )
        batch, sizes = concat_feeds(feeds)
        if switch is None:
            return split_outputs(lm.backend.run(batch), sizes)
        return split_outputs(lm.backend.run(batch, switch), sizes)  # type: ignore[call-arg]

    def _limits_for(self, key: Hashable) -> LaneLimits:
        lim = self.mm.limits_for(key[0])  # type: ignore[index]
        return LaneLimits(lim.max_concurrency, lim.timeout_s, lim.queue_limit)

    def _is_pinned(self, key: Hashable) -> bool:
        lm = self._loaded.get(key)  # type: ignore[call-overload]
        return lm is not None and (lm.pinned or self.mm.inline_unpinned)

    def _is_stoppable(self, key: Hashable) -> bool:
        lm = self._loaded.get(key)  # type: ignore[call-overload]
        return lm is not None and getattr(lm.backend, "stoppable", False) is True

    def _on_timeout(self, key: Hashable) -> None:
        self.stats.timeouts[key] += 1  # type: ignore[index]
        lm = self._loaded.get(key)  # type: ignore[call-overload]
        if lm is not None:
            lm.healthy = False

    # -- introspection ---------------------------------------------------------------
    def loaded(self) -> dict[Key, LoadedModel]:
        """The resident versions."""
        with self._lock:
            return dict(self._loaded)

    def describe(self) -> dict[Key, dict[str, Any]]:
        """Per version, for ``GET /models``: the loaded ones, loads in flight and failures."""
        out: dict[Key, dict[str, Any]] = {}
        for key, lm in self.loaded().items():
            lm.healthy = not self.batcher.hung(key)
            out[key] = lm.describe()
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

    def memory(self) -> dict[str, Any]:
        """The memory books: budget, resident and reserved bytes."""
        with self._lock:
            return {
                "budget_bytes": self.budget.budget,
                "resident_bytes": self.budget.resident_total,
                "reserved_bytes": self.budget.reserved_total,
                "pinned_bytes": self._pinned_bytes(),
                "loaded": len(self._loaded),
            }

    async def close(self) -> None:
        """Stop the batcher, the idle sweeper and the loader."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.batcher.close()
        self._loader.shutdown(wait=False, cancel_futures=True)


class _NoRoomError(ModelLoadError):
    """No room under the budget right now (not the model's fault: no retry backoff)."""


class _Fresh:
    """A session just created, handed over once: futures and tracebacks that keep this
    box alive must not keep the session (and its memory) alive after an eviction."""

    __slots__ = ("backend", "measured", "seconds")

    def __init__(self, backend: Backend, measured: int, seconds: float) -> None:
        self.backend: Backend | None = backend
        self.measured = measured
        self.seconds = seconds

    def take(self) -> Backend:
        backend, self.backend = self.backend, None
        assert backend is not None
        return backend


class _RefitError(_NoRoomError):
    """Loaded, measured larger than its reservation, and no room for the difference."""


class _Released:
    """A backend that was loaded but not published, queued for release like an evicted one."""

    __slots__ = ("backend",)

    def __init__(self, backend: Backend) -> None:
        self.backend: Backend | None = backend


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
