"""The runner's model pool: (model, version) -> a loaded backend, fed by the batcher.

One pool serves both sizes of the design: a dedicated server preloads and pins its one
model; a multi-model server loads the long tail on first use. Concurrent first requests
for one version load it once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from services.backends import Backend, create_backend
from services.batching import AdaptiveBatcher, Feeds, concat_feeds, split_outputs
from services.catalog import ModelCatalog
from services.errors import ArtifactIntegrityError, ModelLoadError, ServekitError, StoreError
from services.registry import ModelRegistry, ModelVersion
from services.settings import BatchPolicy, Settings

logger = logging.getLogger(__name__)

BackendFactory = Callable[[ModelVersion, bytes], Backend]


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

    def describe(self) -> dict[str, Any]:
        """As shown by ``GET /models``."""
        return {
            "loaded": True,
            "pinned": self.pinned,
            "provider": self.backend.provider,
            "resident_bytes": self.backend.nbytes,
            "load_seconds": round(self.load_seconds, 4),
            "requests": self.requests,
            "batching": self.policy.model_dump(),
        }


class ModelPool:
    """Loaded model versions and the batcher that runs them.

    Args:
        registry: where versions come from.
        settings: servekit's settings (batching, serving).
        catalog: resolves model names to versions (shared with the gateway).
        backend_factory: builds a backend from metadata and artifact bytes.
        on_batch: metrics hook, called with (key, rows, seconds) per backend call.
        clock: monotonic seconds.
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
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.catalog = catalog or ModelCatalog(registry)
        self._factory = backend_factory or (
            lambda mv, data: create_backend(mv, data, settings.serving)
        )
        self._clock = clock
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[LoadedModel]] = {}
        self.batcher = AdaptiveBatcher(
            self._run_group,
            policy_for=lambda key: self.settings.batch.policy_for(key[0]),  # type: ignore[index]
            queue_limit=settings.batch.queue_limit,
            enabled=settings.batch.enabled,
            on_batch=on_batch,
        )

    # -- loading ---------------------------------------------------------------------
    def load_sync(self, mv: ModelVersion, *, pinned: bool = False) -> LoadedModel:
        """Load ``mv`` now (blocking); used at start-up for preloaded models."""
        t0 = time.perf_counter()
        data = self.registry.load_artifact(mv)
        backend = self._factory(mv, data)
        lm = LoadedModel(
            mv=mv,
            backend=backend,
            policy=self.settings.batch.policy_for(mv.name),
            loaded_at=self._clock(),
            load_seconds=time.perf_counter() - t0,
            pinned=pinned,
            last_used=self._clock(),
        )
        self._loaded[mv.key] = lm
        logger.info(
            "loaded %s version %s on %s in %.1f ms",
            mv.name,
            mv.version,
            backend.provider,
            lm.load_seconds * 1000,
        )
        return lm

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
        pending = self._loading.get(mv.key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[mv.key] = pending
            try:
                lm = await asyncio.to_thread(self.load_sync, mv)
                pending.set_result(lm)
            except (ArtifactIntegrityError, StoreError, ModelLoadError, OSError) as exc:
                err = ModelLoadError(
                    f"model {mv.name} version {mv.version} cannot be loaded: {_message(exc)}",
                    model=mv.name,
                    version=mv.version,
                    retry_after=5,
                )
                pending.set_exception(err)
                pending.exception()  # mark retrieved: waiters get it below
                raise err from exc
            finally:
                del self._loading[mv.key]
            return lm
        return await asyncio.shield(pending)

    # -- inference -------------------------------------------------------------------
    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
        """Run ``rows`` rows of ``mv`` through the batcher."""
        lm = await self.get(mv)
        lm.last_used = self._clock()
        lm.requests += 1
        return await self.batcher.submit(mv.key, feeds, rows)

    def _run_group(self, key: Hashable, feeds: list[Feeds]) -> list[Feeds]:
        lm = self._loaded[key]  # type: ignore[index]
        batch, sizes = concat_feeds(feeds)
        return split_outputs(lm.backend.run(batch), sizes)

    def loaded(self) -> dict[tuple[str, str], LoadedModel]:
        """The resident versions."""
        return dict(self._loaded)

    async def close(self) -> None:
        """Stop the batcher."""
        await self.batcher.close()


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ServekitError) else str(exc)
