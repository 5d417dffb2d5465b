"""The runner's model pool: (model, version) -> a loaded backend, fed by the batcher.

One pool serves both sizes of server (docs/design.md):

- dedicated server: its models are preloaded and pinned, never evicted, and (being
  trusted) may run inline on the event loop when they are tiny;
- shared server: any registered model is loaded on first use and unloaded to stay under
  a memory budget or when idle (``services.runner.loading``: loads on first use;
  ``services.runner.residency``: the memory books and eviction;
  ``services.runner.sessions``: sessions and their measured bytes).

On either, a tiny model whose backend can be stopped (ONNX Runtime) runs inline under the
batcher's watchdog, which stops a call that holds the loop past ``inline_deadline_ms`` and
re-runs it on a worker thread (``services.runner.inline``). This module serves: it finds
or loads a request's version, counts its use, runs it through its lane of the batcher and
describes what is resident.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

from services.errors import ModelLoadError, ServekitError
from services.registry.versions import ModelRegistry, ModelVersion
from services.runner.backends import create_backend, warm_up
from services.runner.batching import AdaptiveBatcher
from services.runner.budget import heap_bytes
from services.runner.feeds import Feeds, concat_feeds, split_outputs
from services.runner.lanes import LaneLimits
from services.runner.loading import Loader
from services.runner.residency import Key, LoadedModel, Residency
from services.runner.sessions import BackendFactory, SessionMaker
from services.runner.watchdog import StopSwitch
from services.settings import Settings

logger = logging.getLogger(__name__)


class Pins(Protocol):
    """Where preloaded versions are pinned as their model's served version (the
    gateway's ``ModelCatalog``)."""

    def pin(self, mv: ModelVersion) -> None: ...


class ModelPool:
    """Loaded model versions and the batcher that runs them.

    Args:
        registry: where versions come from.
        settings: servekit's settings (batching, serving, multimodel).
        catalog: where ``preload`` pins the versions it loads (the gateway's catalog;
            ``None``: nowhere).
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
        catalog: Pins | None = None,
        backend_factory: BackendFactory | None = None,
        on_batch: Callable[[Hashable, int, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        memory_probe: Callable[[], int] = heap_bytes,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.settings = settings
        mm = self.mm = settings.multimodel
        self.catalog = catalog
        # On a budget, ORT's arena is off: a session then holds what was measured at load.
        arena = mm.memory_budget_bytes is None
        sessions = SessionMaker(
            registry,
            backend_factory
            or (lambda mv, data: create_backend(mv, data, settings.serving, mem_arena=arena)),
            memory_probe,
            mm,
            warm_up=(lambda: warm_up(settings.serving)) if backend_factory is None else None,
        )
        loader_threads = ThreadPoolExecutor(mm.load_threads, thread_name_prefix="servekit-load")
        self._res = Residency(
            settings,
            sessions,
            busy=lambda key: self.batcher.busy(key),
            on_evict=lambda key: self.batcher.forget(key),
            release_soon=loader_threads.submit,
            clock=clock,
            wall_clock=wall_clock,
        )
        self._loader = Loader(self._res, sessions, loader_threads, clock=clock)
        self._sessions = sessions
        self.budget = self._res.budget
        self.stats = self._res.stats
        self._cpu: dict[str, list[float]] = {}  # model -> decayed [CPU seconds, rows]
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
            nice=settings.serving.model_nice,
        )

    # -- loading ---------------------------------------------------------------------
    def load_sync(self, mv: ModelVersion, *, pinned: bool = False) -> LoadedModel:
        """Load ``mv`` now (blocking; start-up preloads and the split runner)."""
        return self._loader.load_sync(mv, pinned=pinned)

    def preload(self, names: list[str]) -> list[ModelVersion]:
        """Load and pin the served version of each model in ``names``."""
        out = []
        for name in names:
            mv = self.registry.get(name)
            self.load_sync(mv, pinned=True)
            if self.catalog is not None:
                self.catalog.pin(mv)
            out.append(mv)
        return out

    async def get(self, mv: ModelVersion) -> LoadedModel:
        """The loaded ``mv``, loading it on first use (once, however many ask)."""
        return await self._loader.get(mv)

    def evict_idle(self) -> list[Key]:
        """Unload every unpinned, unused model idle for ``idle_timeout_s``; their keys."""
        return self._res.evict_idle()

    def release_unloaded(self) -> None:
        """Free the sessions of unloaded models now (the loader does it on its next step)."""
        self._sessions.release_now()

    # -- inference -------------------------------------------------------------------
    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
        """Run ``rows`` rows of ``mv`` through its lane of the batcher."""
        key = mv.key
        res = self._res
        lm = res.find(key)
        if lm is None:
            try:
                lm = await self._loader.get(mv)
            except ServekitError:
                self.stats.errors[key] += 1
                raise
        res.use(lm)  # no await since it was found: it cannot have been evicted
        stats = self.stats
        stats.requests[key] += 1
        stats.rows[key] += rows
        try:
            return await self.batcher.submit(key, feeds, rows)
        except Exception:
            stats.errors[key] += 1
            raise
        finally:
            res.done(lm)

    def run_now(self, key: Key, feeds: list[Feeds]) -> list[Feeds]:
        """Run several requests' feeds of version ``key`` as one backend call, now, in
        this thread (loading the version if need be): the split runner's path, where
        BentoML forms the batches."""
        lm = self._res.find(key)
        if lm is None:
            lm = self.load_sync(self.registry.get(*key))
        batch, sizes = concat_feeds(feeds)
        return split_outputs(lm.backend.run(batch), sizes)

    def _run_group(
        self, key: Hashable, feeds: list[Feeds], switch: StopSwitch | None = None
    ) -> list[Feeds]:
        lm = self._res.find(key)  # type: ignore[arg-type]
        if lm is None:  # a bug if it happens: models in use are never evicted
            model, version = cast(Key, key)
            raise ModelLoadError(
                f"model {model} version {version} was unloaded while in use",
                model=model,
                version=version,
                retry_after=1,
            )
        cpu0 = time.thread_time()
        batch, sizes = concat_feeds(feeds)
        if switch is None:
            out = split_outputs(lm.backend.run(batch), sizes)
        else:
            out = split_outputs(lm.backend.run(batch, switch), sizes)  # type: ignore[call-arg]
        self._cpu_spent(cast(Key, key)[0], time.thread_time() - cpu0, sum(sizes))
        return out

    def _cpu_spent(self, model: str, cpu_s: float, rows: int) -> None:
        """Learn ``model``'s CPU per row (decayed sums; a lost update between threads is
        harmless)."""
        sums = self._cpu.get(model)
        if sums is None:
            sums = self._cpu[model] = [0.0, 0.0]
        sums[0] = sums[0] * 0.98 + cpu_s
        sums[1] = sums[1] * 0.98 + rows

    def cpu_per_row(self, model: str) -> float | None:
        """CPU seconds per row of ``model``'s backend calls (the calling thread's CPU, as
        the batcher measures it; None before any call)."""
        sums = self._cpu.get(model)
        return sums[0] / sums[1] if sums is not None and sums[1] > 0 else None

    def _limits_for(self, key: Hashable) -> LaneLimits:
        lim = self.mm.limits_for(key[0])  # type: ignore[index]
        return LaneLimits(lim.max_concurrency, lim.timeout_s, lim.queue_limit)

    def _is_pinned(self, key: Hashable) -> bool:
        lm = self._res.find(key)  # type: ignore[arg-type]
        return lm is not None and (lm.pinned or self.mm.inline_unpinned)

    def _is_stoppable(self, key: Hashable) -> bool:
        lm = self._res.find(key)  # type: ignore[arg-type]
        return lm is not None and getattr(lm.backend, "stoppable", False) is True

    def _on_timeout(self, key: Hashable) -> None:
        self.stats.timeouts[key] += 1  # type: ignore[index]
        lm = self._res.find(key)  # type: ignore[arg-type]
        if lm is not None:
            lm.healthy = False

    # -- introspection ---------------------------------------------------------------
    def loaded(self) -> dict[Key, LoadedModel]:
        """The resident versions."""
        return self._res.loaded()

    def describe(self) -> dict[Key, dict[str, Any]]:
        """Per version, for ``GET /models``: the loaded ones, loads in flight and failures."""
        out: dict[Key, dict[str, Any]] = {}
        for key, lm in self.loaded().items():
            lm.healthy = not self.batcher.hung(key)
            out[key] = lm.describe()
        for key, state in self._loader.pending().items():
            out.setdefault(key, state)
        return out

    def memory(self) -> dict[str, Any]:
        """The memory books: budget, resident and reserved bytes."""
        return self._res.memory()

    async def close(self) -> None:
        """Stop the batcher, the idle sweeper and the loader."""
        await self.batcher.close()
        self._loader.close()
