"""A cached view of the registry for the serving path.

Resolving "fraud" to its current version must not touch disk or S3 on every request:
``ModelCatalog`` keeps each model's resolved versions for ``ttl_s`` seconds and refreshes
them off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from services.errors import ModelNotFoundError, StoreError
from services.registry.versions import ModelRegistry, ModelVersion, validate_model_name


class ModelCatalog:
    """Resolves (model, version) to registered metadata, with a short cache.

    Args:
        registry: the model registry.
        ttl_s: how long a resolution is reused.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str | None], tuple[float, ModelVersion | None]] = {}
        self._pinned: dict[str, ModelVersion] = {}

    def pin(self, mv: ModelVersion) -> None:
        """Serve ``mv`` as the default version of its model until unpinned."""
        self._pinned[mv.name] = mv
        self._cache[(mv.name, mv.version)] = (float("inf"), mv)

    def pinned(self) -> list[ModelVersion]:
        """The pinned default versions."""
        return list(self._pinned.values())

    def resolve_cached(self, name: str, version: str | None) -> ModelVersion | None:
        """The cached answer, if fresh; ``None`` means "ask ``resolve``"."""
        if version is None and name in self._pinned:
            return self._pinned[name]
        hit = self._cache.get((name, version))
        if hit is not None and hit[0] > self._clock():
            if hit[1] is None:
                raise ModelNotFoundError(name, version)
            return hit[1]
        return None

    async def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The metadata of ``name`` at ``version`` (default: its served version)."""
        cached = self.resolve_cached(name, version)
        if cached is not None:
            return cached
        validate_model_name(name)
        try:
            mv: ModelVersion | None = await asyncio.to_thread(self.registry.get, name, version)
        except ModelNotFoundError:
            mv = None
        except StoreError:
            raise
        expiry = self._clock() + (self.ttl_s if mv is not None else min(self.ttl_s, 1.0))
        self._cache[(name, version)] = (expiry, mv)
        if mv is None:
            raise ModelNotFoundError(name, version)
        return mv
