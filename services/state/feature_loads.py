"""Batch view loads: a new version written whole, made current by one pointer rewrite.

``flows.materialize`` computes the daily batch features; :class:`BatchViewLoader` writes
them under a fresh version (``<UTC time>-<random hex>``), then points the view at it in one
``HSET``, so readers switch from the old snapshot to the new one at once. The replaced
version, and any left behind by a crashed load, expires after ``version_grace_s``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from services.errors import InvalidInputError
from services.state import keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from services.settings import FeatureSettings
    from services.state.features import FeatureRegistry, FeatureSpec

logger = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What one batch-view load wrote."""

    view: str
    version: str
    rows: int
    materialized_at: float
    previous_version: str | None
    seconds: float


class BatchViewLoader:
    """Writes batch view versions and retires the replaced ones.

    Args:
        redis: an asyncio client.
        registry: the declared views.
        settings: the feature settings (``load_chunk``, ``version_grace_s``).
    """

    def __init__(
        self, redis: aioredis.Redis, registry: FeatureRegistry, settings: FeatureSettings
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._settings = settings

    async def load(
        self,
        view: str,
        rows: Mapping[str, Mapping[str, float]],
        materialized_at: datetime | float,
    ) -> LoadResult:
        """Write a new version of a batch view, then make it current in one command.

        Args:
            view: the batch view's name.
            rows: entity id -> feature name -> value.
            materialized_at: when the data was computed (epoch seconds or aware datetime).
        """
        started = time.perf_counter()
        spec = self._registry.view(view)
        if spec.kind != "batch":
            raise InvalidInputError(f"view {view!r} is not a batch view", field=view)
        at = (
            materialized_at.timestamp()
            if isinstance(materialized_at, datetime)
            else float(materialized_at)
        )
        version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at)) + "-" + secrets.token_hex(4)
        await self._redis.sadd(keys.view_versions_key(view), version)
        items = list(rows.items())
        features = {s.name: s for s in spec.features}
        chunk = self._settings.load_chunk
        for start in range(0, len(items), chunk):
            await self._write_chunk(view, version, features, items[start : start + chunk])

        pointer = keys.view_pointer_key(view)
        previous = await self._redis.hget(pointer, "version")
        await self._redis.hset(
            pointer, mapping={"version": version, "materialized_at": repr(at), "rows": len(items)}
        )
        logger.info("batch view %s: version %s is current (%d rows)", view, version, len(items))
        await self._retire_versions(view, keep=version)
        return LoadResult(
            view=view,
            version=version,
            rows=len(items),
            materialized_at=at,
            previous_version=_text(previous) if previous else None,
            seconds=time.perf_counter() - started,
        )

    async def current_version(self, view: str) -> str | None:
        """The current version of a batch view, None if never loaded."""
        version = await self._redis.hget(keys.view_pointer_key(view), "version")
        return _text(version) if version else None

    async def _write_chunk(
        self,
        view: str,
        version: str,
        features: Mapping[str, FeatureSpec],
        items: Sequence[tuple[str, Mapping[str, float]]],
    ) -> None:
        """Write one pipeline of entity rows and add their ids to the version's index."""
        pipe = self._redis.pipeline(transaction=False)
        ids = []
        for entity_id, values in items:
            mapping = _encode_row(view, features, values)
            if mapping:
                pipe.hset(keys.feature_key(view, version, str(entity_id)), mapping=mapping)
                ids.append(str(entity_id))
        if ids:
            pipe.sadd(keys.view_index_key(view, version), *ids)
        await pipe.execute()

    async def _retire_versions(self, view: str, keep: str) -> None:
        """Let every version of ``view`` but ``keep`` expire after the grace period."""
        grace_ms = self._settings.version_grace_s * 1000
        versions_key = keys.view_versions_key(view)
        for raw in await self._redis.smembers(versions_key):
            old = _text(raw)
            if old == keep or not _VERSION_RE.match(old):
                continue
            index = keys.view_index_key(view, old)
            async for batch in _sscan_batches(self._redis, index, self._settings.load_chunk):
                pipe = self._redis.pipeline(transaction=False)
                for entity_id in batch:
                    key = keys.feature_key(view, old, _text(entity_id))
                    if grace_ms:
                        pipe.pexpire(key, grace_ms)
                    else:
                        pipe.unlink(key)
                await pipe.execute()
            if grace_ms:
                await self._redis.pexpire(index, grace_ms)
            else:
                await self._redis.unlink(index)
            await self._redis.srem(versions_key, old)
            logger.info("batch view %s: version %s retired (grace %d ms)", view, old, grace_ms)


def _encode_row(
    view: str, features: Mapping[str, FeatureSpec], values: Mapping[str, float]
) -> dict[Any, Any]:
    """One entity's stored hash: each value cast to its feature's dtype; NaN/None skipped."""
    mapping: dict[Any, Any] = {}
    for name, value in values.items():
        if name not in features:
            raise InvalidInputError(
                f"view {view!r} has no feature {name!r}", field=f"{view}.{name}"
            )
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        cast = int(value) if features[name].dtype == "int64" else float(value)
        mapping[name] = repr(cast)
    return mapping


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _sscan_batches(redis: aioredis.Redis, key: bytes, count: int) -> AsyncIterator[Any]:
    cursor = 0
    while True:
        cursor, members = await redis.sscan(key, cursor, count=count)
        if members:
            yield members
        if cursor == 0:
            return
