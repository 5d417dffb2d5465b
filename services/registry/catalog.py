"""A cached view of the registry for the serving path.

Resolving "fraud" to its current version must not touch disk or S3 on every request:
``ModelCatalog`` keeps each model's resolved versions for ``ttl_s`` seconds and refreshes
them off the event loop. The cache is an LRU of at most ``max_entries`` entries, and a miss
(an unknown version) is remembered for ``negative_ttl_s``: clients naming random versions
neither grow memory without bound nor cost a store read each.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from services.errors import ModelNotFoundError
from services.registry.versions import (
    ModelRegistry,
    ModelVersion,
    validate_model_name,
    validate_version,
)

_Key = tuple[str, str | None]


class ModelCatalog:
    """Resolves (model, version) to registered metadata, with a short, bounded cache.

    Args:
        registry: the model registry.
        ttl_s: how long a resolution is reused.
        negative_ttl_s: how long "no such version" is reused.
        max_entries: most cached resolutions (least recently used go first); pinned
            versions are kept apart and never evicted.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        ttl_s: float = 10.0,
        negative_ttl_s: float = 1.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max(1, max_entries)
        self._clock = clock
        self._cache: OrderedDict[_Key, tuple[float, ModelVersion | None]] = OrderedDict()
        self._pinned: dict[str, ModelVersion] = {}
        self._pinned_versions: dict[_Key, ModelVersion] = {}

    def cached_entries(self) -> int:
        """How many resolutions are cached (pinned versions not counted)."""
        return len(self._cache)

    def pin(self, mv: ModelVersion) -> None:
        """Serve ``mv`` as the default version of its model until unpinned."""
        self._pinned[mv.name] = mv
        self._pinned_versions[(mv.name, mv.version)] = mv

    def pinned(self) -> list[ModelVersion]:
        """The pinned default versions."""
        return list(self._pinned.values())

    def resolve_cached(self, name: str, version: str | None) -> ModelVersion | None:
        """The cached answer, if fresh; ``None`` means "ask ``resolve``"."""
        if version is None and name in self._pinned:
            return self._pinned[name]
        key = (name, version)
        pinned = self._pinned_versions.get(key)
        if pinned is not None:
            return pinned
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        if hit[1] is None:
            raise ModelNotFoundError(name, version)
        return hit[1]

    async def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The metadata of ``name`` at ``version`` (default: its served version).

        Raises:
            InvalidInputError: a malformed model name or version (nothing is read).
            ModelNotFoundError: no such model or version.
        """
        cached = self.resolve_cached(name, version)
        if cached is not None:
            return cached
        validate_model_name(name)
        if version is not None:
            validate_version(version)
        try:
            mv: ModelVersion | None = await asyncio.to_thread(self.registry.get, name, version)
        except ModelNotFoundError:
            mv = None
        ttl = self.ttl_s if mv is not None else min(self.ttl_s, self.negative_ttl_s)
        self._remember((name, version), self._clock() + ttl, mv)
        if mv is None:
            raise ModelNotFoundError(name, version)
        return mv

    def _remember(self, key: _Key, expiry: float, mv: ModelVersion | None) -> None:
        self._cache[key] = (expiry, mv)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
