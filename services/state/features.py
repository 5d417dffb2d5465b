"""The feature store: declared feature views, and :class:`FeatureStore` over Redis.

Batch views are written daily by ``flows.materialize`` under a new version, then made
current by rewriting one pointer hash (``services.state.feature_loads``). Real-time views
are derived from an event stream by ``services.state.realtime.RealtimeWorker``, a Redis
consumer-group worker. At request time ``FeatureStore.get_features`` reads every view a
request needs, for every row, with one Lua call (``services.state.feature_reads``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.errors import InvalidInputError
from services.state.feature_loads import BatchViewLoader, LoadResult
from services.state.feature_reads import FeatureReader, RowFlags
from services.state.resp import lean_client_for

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from services.settings import FeatureSettings


Aggregation = Literal["last_n_mean", "seconds_since_last", "count_window"]


class FeatureSpec(BaseModel):
    """One feature of a view.

    Real-time features say how they derive from events: ``last_n_mean`` of the event
    value ``field`` over the last ``n`` events, ``seconds_since_last`` event, or
    ``count_window`` of events in the last ``window_s`` seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    dtype: Literal["float32", "int64"] = "float32"
    default: float = 0.0
    agg: Aggregation | None = None
    field: str | None = None
    n: int = Field(default=5, ge=1, le=1000)
    window_s: float = Field(default=600.0, gt=0)


class FeatureView(BaseModel):
    """A named group of features of one entity, batch (daily) or real-time (events)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    entity: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    features: tuple[FeatureSpec, ...]
    kind: Literal["batch", "realtime"]
    max_staleness_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> FeatureView:
        for spec in self.features:
            if self.kind == "realtime" and spec.agg is None:
                raise ValueError(f"real-time feature {self.name}.{spec.name} needs an agg")
            if self.kind == "batch" and spec.agg is not None:
                raise ValueError(f"batch feature {self.name}.{spec.name} takes no agg")
            if spec.agg == "last_n_mean" and not spec.field:
                raise ValueError(f"{self.name}.{spec.name}: last_n_mean needs a field")
        return self

    def spec(self, name: str) -> FeatureSpec:
        """The feature called ``name``; KeyError if none."""
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(name)


def demo_views() -> list[FeatureView]:
    """The demo fraud model's views: two batch views and one real-time view."""
    return [
        FeatureView(
            name="user_stats",
            entity="user",
            kind="batch",
            max_staleness_s=36 * 3600,
            features=(FeatureSpec(name="avg_amount_30d"), FeatureSpec(name="txn_count_30d")),
        ),
        FeatureView(
            name="merchant_risk",
            entity="merchant_category",
            kind="batch",
            max_staleness_s=36 * 3600,
            features=(FeatureSpec(name="risk_score", default=0.03),),
        ),
        FeatureView(
            name="user_activity",
            entity="user",
            kind="realtime",
            max_staleness_s=60.0,
            features=(
                FeatureSpec(name="last5_amount_mean", agg="last_n_mean", field="amount", n=5),
                FeatureSpec(
                    name="seconds_since_last_txn", agg="seconds_since_last", default=30 * 86400.0
                ),
                FeatureSpec(name="txn_count_10m", agg="count_window", window_s=600.0),
            ),
        ),
    ]


class FeatureRegistry:
    """The declared feature views, by name."""

    def __init__(self, views: Sequence[FeatureView]) -> None:
        self.views: dict[str, FeatureView] = {}
        for view in views:
            if view.name in self.views:
                raise ValueError(f"feature view {view.name!r} declared twice")
            self.views[view.name] = view

    @classmethod
    def from_settings(cls, settings: FeatureSettings) -> FeatureRegistry:
        """The views of ``settings.views`` (JSON), or the demo views when unset."""
        if settings.views is None:
            return cls(demo_views())
        return cls([FeatureView.model_validate(v) for v in settings.views])

    def view(self, name: str) -> FeatureView:
        """The view called ``name``; InvalidInputError naming it if unknown."""
        try:
            return self.views[name]
        except KeyError:
            raise InvalidInputError(f"unknown feature view {name!r}", field=name) from None

    @property
    def entities(self) -> set[str]:
        """Entity types of every view."""
        return {v.entity for v in self.views.values()}

    @property
    def event_fields(self) -> set[str]:
        """Event values that real-time views read."""
        return {s.field for v in self.views.values() for s in v.features if s.field is not None}

    def resolve(self, wanted: Sequence[str]) -> list[tuple[FeatureView, FeatureSpec]]:
        """``view.feature`` names as (view, spec); InvalidInputError naming a bad one."""
        out = []
        for name in wanted:
            view_name, _, feature = name.partition(".")
            try:
                view = self.views[view_name]
                out.append((view, view.spec(feature)))
            except KeyError:
                raise InvalidInputError(f"unknown feature {name!r}", field=name) from None
        return out


class FeatureMetrics:
    """The feature store's Prometheus metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.missing = Counter(
            "servekit_feature_missing_rows",
            "Rows served defaults because the entity had no data.",
            ["view"],
            registry=registry,
        )
        self.stale = Counter(
            "servekit_feature_stale_rows",
            "Rows served from data older than the view's max staleness.",
            ["view"],
            registry=registry,
        )
        self.age = Gauge(
            "servekit_feature_age_seconds",
            "Age of the view's data at the last read (batch: materialization; "
            "real-time: worker heartbeat).",
            ["view"],
            registry=registry,
        )
        self.events = Counter(
            "servekit_feature_events",
            "Events handled by the real-time worker (outcome: applied, duplicate, invalid).",
            ["outcome"],
            registry=registry,
        )


_METRICS: dict[int, tuple[CollectorRegistry, FeatureMetrics]] = {}


def feature_metrics(registry: CollectorRegistry | None = None) -> FeatureMetrics:
    """The feature metrics of ``registry`` (default: prometheus_client's), created once."""
    registry = REGISTRY if registry is None else registry
    if id(registry) not in _METRICS:
        _METRICS[id(registry)] = (registry, FeatureMetrics(registry))
    return _METRICS[id(registry)][1]


class FeatureStore:
    """Reads feature rows for requests; loads batch views.

    Args:
        redis: an asyncio client.
        views: the declared views.
        settings: the feature settings.
        clock: wall-clock seconds (epoch), for staleness and real-time windows.
        registry: where the metrics go (default: prometheus_client's global registry).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        views: FeatureRegistry,
        settings: FeatureSettings,
        clock: Any = time.time,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = views
        self._clock = clock
        self.metrics = feature_metrics(registry)
        # The per-request script call goes over a lean pipelined connection where one can
        # stand in for ``redis`` (a single server); the rest stays on redis-py.
        self._lean = lean_client_for(redis) if settings.fast_client else None
        self._reader = FeatureReader(self._lean or redis, views, self.metrics)
        self._loader = BatchViewLoader(redis, views, settings)

    async def get_features(
        self, requests: Sequence[Mapping[str, str]], wanted: Sequence[str]
    ) -> tuple[np.ndarray, list[RowFlags]]:
        """Feature values for each request row, in the order of ``wanted``.

        Args:
            requests: per row, entity type -> entity id (``{"user": "u1", ...}``).
            wanted: ``view.feature`` names, the columns of the result.

        Returns:
            A float32 array (rows, len(wanted)) and per row its :class:`RowFlags`.
        """
        return await self._reader.read(requests, wanted, float(self._clock()))

    async def load_batch_view(
        self,
        view: str,
        rows: Mapping[str, Mapping[str, float]],
        materialized_at: datetime | float,
    ) -> LoadResult:
        """Write a new version of a batch view, then make it current in one command.

        The replaced version (and any left by a crashed load) expires after
        ``version_grace_s``.

        Args:
            view: the batch view's name.
            rows: entity id -> feature name -> value.
            materialized_at: when the data was computed (epoch seconds or aware datetime).
        """
        return await self._loader.load(view, rows, materialized_at)

    async def current_version(self, view: str) -> str | None:
        """The current version of a batch view, None if never loaded."""
        return await self._loader.current_version(view)

    async def aclose(self) -> None:
        """Close the store's own connections (``redis`` stays open: its owner closes it)."""
        if self._lean is not None:
            await self._lean.aclose()
