"""Assembling a tabular model's feature vector: request fields + feature-store values.

A model's schema lists its fields in vector order; each field comes from the request
(``source="request"``) or from a feature view (``source="feature:<view>.<feature>"``).
``VectorAssembler`` validates and encodes the request fields, fetches every feature of
every row in one Redis round trip, and interleaves them. Feature retrieval fails open:
when Redis is down or slow, the features' defaults are served and each row is flagged
``unavailable``, so a prediction never fails because of the feature store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from redis.exceptions import RedisError

from services.registry.schema import ModelSchema
from services.request.encoding import RecordEncoder
from services.state.coalesce import TickCoalescer

if TYPE_CHECKING:
    from services.state.features import FeatureStore

logger = logging.getLogger(__name__)

_FEATURE = "feature:"


@dataclass(frozen=True)
class FeatureFlags:
    """Per row: views whose entity was missing (defaults), stale views, or no store."""

    missing: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    unavailable: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.unavailable)

    def public(self) -> dict[str, Any]:
        """As shown in a prediction when not ``ok``."""
        out: dict[str, Any] = {}
        if self.missing:
            out["missing"] = list(self.missing)
        if self.stale:
            out["stale"] = list(self.stale)
        if self.unavailable:
            out["unavailable"] = True
        return out


OK = FeatureFlags()


class VectorAssembler:
    """Builds the float32 vector a tabular model takes from records and features.

    Args:
        schema: the model's schema.
        store: the feature store (``None``: features take their defaults, flagged).
    """

    def __init__(self, schema: ModelSchema, store: FeatureStore | None) -> None:
        self.schema = schema
        self.store = store
        self.encoder = RecordEncoder(schema)
        self.width = len(schema.fields)
        self.request_cols = [i for i, f in enumerate(schema.fields) if f.source == "request"]
        self.feature_cols = [
            i for i, f in enumerate(schema.fields) if f.source.startswith(_FEATURE)
        ]
        self.wanted = [schema.fields[i].source[len(_FEATURE) :] for i in self.feature_cols]
        self.defaults = np.array(
            [float(schema.fields[i].default or 0.0) for i in self.feature_cols], dtype=np.float32
        )
        self.entities = dict(schema.entities)  # entity type -> record key
        self.ignore = frozenset(schema.entities.values()) - set(self.encoder.names)
        self._all_request = self.request_cols == list(range(self.width))
        self._reads: TickCoalescer[dict[str, str], tuple[np.ndarray, FeatureFlags]] = TickCoalescer(
            self._read_many
        )

    async def assemble(
        self, records: list[Any], *, user_id: str | None = None
    ) -> tuple[np.ndarray, list[FeatureFlags]]:
        """The model's input rows for ``records`` and each row's feature flags."""
        request = self.encoder.encode(records, ignore=self.ignore)
        if self._all_request:
            return request, [OK] * len(records)
        n = len(records)
        x = np.empty((n, self.width), dtype=np.float32)
        x[:, self.request_cols] = request
        feats, flags = await self._features(records, user_id)
        x[:, self.feature_cols] = feats
        return x, flags

    async def _features(
        self, records: list[dict[str, Any]], user_id: str | None
    ) -> tuple[np.ndarray, list[FeatureFlags]]:
        n = len(records)
        if self.store is None:
            return np.tile(self.defaults, (n, 1)), [FeatureFlags(unavailable=True)] * n
        requests = []
        for rec in records:
            ids: dict[str, str] = {}
            for entity, key in self.entities.items():
                value = rec.get(key)
                if value is None and key == "user_id":
                    value = user_id
                if value is not None:
                    ids[entity] = str(value)
            requests.append(ids)
        try:
            rows = await self._reads.submit(requests)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("feature store unavailable, serving defaults: %s", exc)
            return np.tile(self.defaults, (n, 1)), [FeatureFlags(unavailable=True)] * n
        return np.stack([values for values, _ in rows]), [flag for _, flag in rows]

    async def _read_many(
        self, requests: list[dict[str, str]]
    ) -> list[tuple[np.ndarray, FeatureFlags]]:
        """One feature-store round trip for the rows of all requests in this loop tick."""
        assert self.store is not None
        values, row_flags = await self.store.get_features(requests, self.wanted)
        flags = [
            OK
            if f.ok
            else FeatureFlags(missing=tuple(sorted(f.missing)), stale=tuple(sorted(f.stale)))
            for f in row_flags
        ]
        return list(zip(values, flags, strict=True))
