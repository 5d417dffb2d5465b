"""The feature store: batch and real-time feature views served from Redis.

Batch views are written daily by ``flows.materialize`` under a new version, then made
current by rewriting one pointer hash; readers resolve the pointer and read the rows
inside one Lua script, so a reader sees the old snapshot or the new one, never a mix.
Real-time views are derived from an event stream by :class:`RealtimeWorker`, a Redis
consumer-group worker; their state is read at request time.

``FeatureStore.get_features`` reads every view a request needs, for every row, with one
Lua call: one round trip, and one command to pack and parse.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.exceptions import NoScriptError

from services.errors import InvalidInputError
from services.state import keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from services.settings import FeatureSettings

logger = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class RowFlags:
    """Views whose entity was missing (defaults served) or whose data is stale, per row."""

    missing: frozenset[str] = frozenset()
    stale: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        """Neither missing nor stale."""
        return not (self.missing or self.stale)


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What one batch-view load wrote."""

    view: str
    version: str
    rows: int
    materialized_at: float
    previous_version: str | None
    seconds: float


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


# Reads every view of a request in one call. Batch views: resolve the current version and
# read its rows in the same atomic step, so a load is seen whole or not at all.
# ARGV: n_batch, then per batch view: pointer key, key prefix, n_fields, fields...,
# n_entities, escaped entity ids...; then n_realtime, then per real-time view: heartbeat
# key, n_specs, (code, key suffix, param) per spec, n_entities, state keys...
# Spec codes: L = LRANGE suffix 0 param-1, C = ZCOUNT suffix param +inf, S = last_ts only.
# Returns {batch, realtime}: batch per view {version|'', materialized_at|'', rows}, a row 0
# when the entity has no hash, else the HMGET reply; realtime per view {heartbeat|'', rows},
# a row 0 when the entity has no state, else {last_ts, one reply per L/C spec}.
_READ = """
local i = 2
local batch = {}
for v = 1, tonumber(ARGV[1]) do
  local ptr, prefix, nf = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local fields = {}
  for f = 1, nf do fields[f] = ARGV[i + 2 + f] end
  i = i + 3 + nf
  local ne = tonumber(ARGV[i])
  i = i + 1
  local cur = redis.call('HMGET', ptr, 'version', 'materialized_at')
  local rows = {}
  for e = 1, ne do
    rows[e] = 0
    if cur[1] then
      local key = prefix .. cur[1] .. ':' .. ARGV[i + e - 1]
      if redis.call('EXISTS', key) == 1 then rows[e] = redis.call('HMGET', key, unpack(fields)) end
    end
  end
  i = i + ne
  batch[v] = {cur[1] or '', cur[2] or '', rows}
end
local realtime = {}
local nrt = tonumber(ARGV[i])
i = i + 1
for v = 1, nrt do
  local beat = redis.call('GET', ARGV[i])
  local ns = tonumber(ARGV[i + 1])
  local specs = {}
  for s = 1, ns do
    local at = i + 2 + 3 * (s - 1)
    specs[s] = {ARGV[at], ARGV[at + 1], ARGV[at + 2]}
  end
  i = i + 2 + 3 * ns
  local ne = tonumber(ARGV[i])
  i = i + 1
  local rows = {}
  for e = 1, ne do
    local base = ARGV[i + e - 1]
    local last = redis.call('HGET', base, 'last_ts')
    rows[e] = 0
    if last then
      local row = {last}
      for s = 1, ns do
        local code, suffix, param = specs[s][1], specs[s][2], specs[s][3]
        if code == 'L' then
          row[#row + 1] = redis.call('LRANGE', base .. suffix, 0, tonumber(param) - 1)
        elseif code == 'C' then
          row[#row + 1] = redis.call('ZCOUNT', base .. suffix, param, '+inf')
        end
      end
      rows[e] = row
    end
  end
  i = i + ne
  realtime[v] = {beat or '', rows}
end
return {batch, realtime}
"""

_VERSION_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


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
        self._redis = redis
        self.registry = views
        self._settings = settings
        self._clock = clock
        self._sha: str | None = None
        self._warned_unloaded: set[str] = set()
        self.metrics = feature_metrics(registry)

    async def get_features(
        self,
        requests: Sequence[Mapping[str, str]],
        wanted: Sequence[str],
        *,
        _retried: bool = False,
    ) -> tuple[np.ndarray, list[RowFlags]]:
        """Feature values for each request row, in the order of ``wanted``.

        Args:
            requests: per row, entity type -> entity id (``{"user": "u1", ...}``).
            wanted: ``view.feature`` names, the columns of the result.

        Returns:
            A float32 array (rows, len(wanted)) and per row its :class:`RowFlags`.
        """
        resolved = self.registry.resolve(wanted)
        n = len(requests)
        values = np.array([[spec.default for _, spec in resolved]] * n, dtype=np.float32)
        values = values.reshape(n, len(resolved))
        views = list(dict.fromkeys(view.name for view, _ in resolved))
        missing: list[set[str]] = [set() for _ in range(n)]
        stale: list[set[str]] = [set() for _ in range(n)]
        if n == 0 or not views:
            return values, [RowFlags() for _ in range(n)]
        now = float(self._clock())

        # per view: the columns it fills and its unique entity ids
        columns = {
            v: [(j, spec) for j, (view, spec) in enumerate(resolved) if view.name == v]
            for v in views
        }
        entity_ids = {
            v: list(
                dict.fromkeys(
                    r[self.registry.views[v].entity]
                    for r in requests
                    if self.registry.views[v].entity in r
                )
            )
            for v in views
        }
        batch = [v for v in views if self.registry.views[v].kind == "batch"]
        realtime = [v for v in views if self.registry.views[v].kind == "realtime"]

        args: list[Any] = [len(batch)]
        for v in batch:
            fields = [spec.name for _, spec in columns[v]]
            ents = [keys.escape(e) for e in entity_ids[v]]
            args += [keys.view_pointer_key(v), keys.feature_key_prefix(v), len(fields)]
            args += [*fields, len(ents), *ents]
        args.append(len(realtime))
        for v in realtime:
            args += [keys.realtime_heartbeat_key(v), len(columns[v])]
            base = keys.realtime_state_key(v, "")
            for _, spec in columns[v]:
                if spec.agg == "last_n_mean":
                    assert spec.field is not None
                    suffix = keys.realtime_last_key(v, "", spec.field)[len(base) :]
                    args += ["L", suffix, spec.n]
                elif spec.agg == "count_window":
                    suffix = keys.realtime_window_key(v, "")[len(base) :]
                    args += ["C", suffix, f"({now - spec.window_s!r}"]
                else:
                    args += ["S", "", ""]
            args += [len(entity_ids[v]), *(keys.realtime_state_key(v, e) for e in entity_ids[v])]
        try:
            batch_reply, realtime_reply = await self._redis.evalsha(
                await self._script_sha(), 0, *args
            )
        except NoScriptError:
            self._sha = None  # the server lost its script cache (restart, SCRIPT FLUSH)
            if _retried:
                raise
            return await self.get_features(requests, wanted, _retried=True)

        found: dict[str, dict[str, list[float | None]]] = {}
        view_stale: dict[str, bool] = {}
        for v, (version, materialized_at, rows) in zip(batch, batch_reply, strict=True):
            batch_rows: dict[str, list[float | None]] = {}
            if version:
                age = now - float(materialized_at)
                self.metrics.age.labels(v).set(age)
                view_stale[v] = age > self.registry.views[v].max_staleness_s
                for e, hit in zip(entity_ids[v], rows, strict=True):
                    if hit != 0:
                        batch_rows[e] = [None if x is None else float(x) for x in hit]
            elif v not in self._warned_unloaded:
                self._warned_unloaded.add(v)  # once: this runs per request
                logger.warning("batch view %s has never been loaded", v)
            found[v] = batch_rows
        for v, (beat, rows) in zip(realtime, realtime_reply, strict=True):
            age = math.inf if not beat else now - float(beat)
            self.metrics.age.labels(v).set(age if beat else -1)
            view_stale[v] = age > self.registry.views[v].max_staleness_s
            rt_rows: dict[str, list[float | None]] = {}
            for e, hit in zip(entity_ids[v], rows, strict=True):
                if hit == 0:
                    continue
                last_ts, replies = float(hit[0]), iter(hit[1:])
                row: list[float | None] = []
                for _, spec in columns[v]:
                    if spec.agg == "seconds_since_last":
                        row.append(max(0.0, now - last_ts))
                    elif spec.agg == "last_n_mean":
                        recent = next(replies)
                        row.append(sum(map(float, recent)) / len(recent) if recent else None)
                    else:
                        row.append(float(next(replies)))
                rt_rows[e] = row
            found[v] = rt_rows

        for i, request in enumerate(requests):
            for v in views:
                entity = self.registry.views[v].entity
                got = found[v].get(request[entity]) if entity in request else None
                if got is None:
                    missing[i].add(v)
                    continue
                if view_stale.get(v):
                    stale[i].add(v)
                for (j, _), x in zip(columns[v], got, strict=True):
                    if x is not None:
                        values[i, j] = x
        for v in views:
            if n_missing := sum(v in m for m in missing):
                self.metrics.missing.labels(v).inc(n_missing)
            if n_stale := sum(v in s for s in stale):
                self.metrics.stale.labels(v).inc(n_stale)
        flags = [RowFlags(frozenset(m), frozenset(s)) for m, s in zip(missing, stale, strict=True)]
        return values, flags

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
        started = time.perf_counter()
        spec = self.registry.view(view)
        if spec.kind != "batch":
            raise InvalidInputError(f"view {view!r} is not a batch view", field=view)
        names = {s.name: s for s in spec.features}
        at = (
            materialized_at.timestamp()
            if isinstance(materialized_at, datetime)
            else float(materialized_at)
        )
        version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at)) + "-" + secrets.token_hex(4)
        versions_key = keys.view_versions_key(view)
        await self._redis.sadd(versions_key, version)

        items = list(rows.items())
        chunk = self._settings.load_chunk
        for start in range(0, len(items), chunk):
            pipe = self._redis.pipeline(transaction=False)
            ids = []
            for entity_id, features in items[start : start + chunk]:
                mapping: dict[Any, Any] = {}
                for name, value in features.items():
                    if name not in names:
                        raise InvalidInputError(
                            f"view {view!r} has no feature {name!r}", field=f"{view}.{name}"
                        )
                    if value is None or (isinstance(value, float) and math.isnan(value)):
                        continue
                    cast = int(value) if names[name].dtype == "int64" else float(value)
                    mapping[name] = repr(cast)
                if mapping:
                    pipe.hset(keys.feature_key(view, version, str(entity_id)), mapping=mapping)
                    ids.append(str(entity_id))
            if ids:
                pipe.sadd(keys.view_index_key(view, version), *ids)
            await pipe.execute()

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

    async def _script_sha(self) -> str:
        if self._sha is None:
            self._sha = await self._redis.script_load(_READ)
        return self._sha


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _sscan_batches(redis: aioredis.Redis, key: bytes, count: int) -> Any:
    cursor = 0
    while True:
        cursor, members = await redis.sscan(key, cursor, count=count)
        if members:
            yield members
        if cursor == 0:
            return
