"""Online feature reads: every view a request needs, for every row, in one Lua call.

One round trip, and one command to pack and parse (on a Redis Cluster, one command per
view, sent to the views' nodes at once: a view's keys share its hash tag's slot). Batch views resolve their current
version and read its rows inside the same script, so a reader sees the old snapshot or the
new one, never a mix. A view whose entity has no data serves its defaults and flags the
row ``missing``; a view older than its ``max_staleness_s`` flags it ``stale``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from redis.exceptions import NoScriptError

from services.state import keys
from services.state.redis_clients import is_cluster

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from services.state.features import FeatureMetrics, FeatureRegistry, FeatureSpec, FeatureView
    from services.state.resp import RespClient

logger = logging.getLogger(__name__)

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

Row = list[float | None]
"""One entity's values of a view's requested features (None: not stored, use the default)."""


@dataclasses.dataclass(frozen=True)
class RowFlags:
    """Views whose entity was missing (defaults served) or whose data is stale, per row."""

    missing: frozenset[str] = frozenset()
    stale: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        """Neither missing nor stale."""
        return not (self.missing or self.stale)


_OK = RowFlags()


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What every read of the same features shares: the views, the columns each view
    fills, the defaults, and each view's script arguments before its entity ids.

    Built once per list of wanted features (the views are fixed for the process), so a
    read only gathers its entity ids.
    """

    defaults: np.ndarray
    """The features' defaults, shape (1, len(wanted)), float32."""
    batch: list[FeatureView]
    realtime: list[FeatureView]
    columns: dict[str, list[tuple[int, FeatureSpec]]]
    fixed: dict[str, list[Any]]
    """Per batch view: pointer key, key prefix, n_fields, fields. Per real-time view:
    heartbeat key, n_specs, then (code, key suffix, param) per spec, a count_window's
    param left empty (it depends on the time of the read)."""

    @property
    def views(self) -> list[FeatureView]:
        return [*self.batch, *self.realtime]


def _layout(registry: FeatureRegistry, wanted: Sequence[str]) -> _Layout:
    resolved = registry.resolve(wanted)
    views = list({view.name: view for view, _ in resolved}.values())
    columns = {
        v.name: [(j, spec) for j, (view, spec) in enumerate(resolved) if view.name == v.name]
        for v in views
    }
    fixed: dict[str, list[Any]] = {}
    for view in views:
        v = view.name
        if view.kind == "batch":
            fields = [spec.name for _, spec in columns[v]]
            fixed[v] = [keys.view_pointer_key(v), keys.feature_key_prefix(v), len(fields)]
            fixed[v] += fields
            continue
        fixed[v] = [keys.realtime_heartbeat_key(v), len(columns[v])]
        base = keys.realtime_state_key(v, "")
        for _, spec in columns[v]:
            if spec.agg == "last_n_mean":
                assert spec.field is not None
                suffix = keys.realtime_last_key(v, "", spec.field)[len(base) :]
                fixed[v] += ["L", suffix, spec.n]
            elif spec.agg == "count_window":
                fixed[v] += ["C", keys.realtime_window_key(v, "")[len(base) :], ""]
            else:
                fixed[v] += ["S", "", ""]
    defaults = np.array([[spec.default for _, spec in resolved]], dtype=np.float32)
    batch = [v for v in views if v.kind == "batch"]
    realtime = [v for v in views if v.kind == "realtime"]
    return _Layout(defaults, batch, realtime, columns, fixed)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What one read fetches: the layout, and per view its unique entity ids."""

    layout: _Layout
    entity_ids: dict[str, list[str]]


def _plan(layout: _Layout, requests: Sequence[Mapping[str, str]]) -> _Plan:
    entity_ids = {
        v.name: list(dict.fromkeys(r[v.entity] for r in requests if v.entity in r))
        for v in layout.views
    }
    return _Plan(layout, entity_ids)


def _script_args(
    plan: _Plan, now: float, batch: Sequence[FeatureView], realtime: Sequence[FeatureView]
) -> list[Any]:
    """The read script's ARGV (layout above the script) for these views of ``plan``."""
    fixed = plan.layout.fixed
    args: list[Any] = [len(batch)]
    for view in batch:
        ents = [keys.escape(e) for e in plan.entity_ids[view.name]]
        args += fixed[view.name]
        args.append(len(ents))
        args += ents
    args.append(len(realtime))
    for view in realtime:
        v = view.name
        view_args = list(fixed[v])
        for s, (_, spec) in enumerate(plan.layout.columns[v]):
            if spec.agg == "count_window":
                view_args[4 + 3 * s] = f"({now - spec.window_s!r}"
        args += view_args
        ids = plan.entity_ids[v]
        args += [len(ids), *(keys.realtime_state_key(v, e) for e in ids)]
    return args


def _realtime_row(specs: Sequence[tuple[int, FeatureSpec]], hit: Sequence[Any], now: float) -> Row:
    """One entity's real-time values from its script reply (last_ts, then L/C replies)."""
    last_ts, replies = float(hit[0]), iter(hit[1:])
    row: Row = []
    for _, spec in specs:
        if spec.agg == "seconds_since_last":
            row.append(max(0.0, now - last_ts))
        elif spec.agg == "last_n_mean":
            recent = next(replies)
            row.append(sum(map(float, recent)) / len(recent) if recent else None)
        else:
            row.append(float(next(replies)))
    return row


class FeatureReader:
    """Reads feature rows for requests with the one-call read script.

    Args:
        redis: an asyncio client: redis-py's, or a lean :class:`RespClient`.
        registry: the declared views.
        metrics: where missing and stale rows and data ages are counted.
    """

    def __init__(
        self, redis: aioredis.Redis | RespClient, registry: FeatureRegistry, metrics: FeatureMetrics
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._metrics = metrics
        self._sha: str | None = None
        self._warned_unloaded: set[str] = set()
        self._cluster = is_cluster(redis)
        self._layouts: dict[tuple[str, ...], _Layout] = {}
        # Metric children by (metric, view): looked up once, not on every read.
        self._children: dict[tuple[str, str], Any] = {}

    async def read(
        self, requests: Sequence[Mapping[str, str]], wanted: Sequence[str], now: float
    ) -> tuple[np.ndarray, list[RowFlags]]:
        """Feature values for each request row, in the order of ``wanted``, at time ``now``.

        Returns:
            A float32 array (rows, len(wanted)) and per row its :class:`RowFlags`.
        """
        key = tuple(wanted)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = _layout(self._registry, wanted)
        n = len(requests)
        values = np.repeat(layout.defaults, n, axis=0)
        if n == 0 or not (layout.batch or layout.realtime):
            return values, [_OK] * n
        plan = _plan(layout, requests)
        if self._cluster:
            batch_reply, realtime_reply = await self._call_per_view(plan, now)
        else:
            args = _script_args(plan, now, layout.batch, layout.realtime)
            batch_reply, realtime_reply = await self._call(args)
        found: dict[str, dict[str, Row]] = {}
        stale: dict[str, bool] = {}
        for view, reply in zip(layout.batch, batch_reply, strict=True):
            found[view.name], stale[view.name] = self._batch_rows(plan, view, reply, now)
        for view, reply in zip(layout.realtime, realtime_reply, strict=True):
            found[view.name], stale[view.name] = self._realtime_rows(plan, view, reply, now)
        return values, self._fill(layout, requests, values, found, stale)

    async def _call(self, args: list[Any], route: bytes | None = None) -> Any:
        """One script call; ``route`` (a key of the views read) picks the cluster node."""
        keys_part = [] if route is None else [route]
        try:
            return await self._redis.evalsha(
                await self._script_sha(), len(keys_part), *keys_part, *args
            )
        except NoScriptError:
            # The server lost its script cache (restart, SCRIPT FLUSH): load it, once more.
            self._sha = None
            return await self._redis.evalsha(
                await self._script_sha(), len(keys_part), *keys_part, *args
            )

    async def _call_per_view(self, plan: _Plan, now: float) -> tuple[list[Any], list[Any]]:
        """On a Redis Cluster: one script call per view (a view's keys share one slot),
        all in flight at once, so a read still costs one round trip of wall time."""
        layout = plan.layout
        calls = [
            self._call(_script_args(plan, now, [v], []), keys.view_pointer_key(v.name))
            for v in layout.batch
        ] + [
            self._call(_script_args(plan, now, [], [v]), keys.realtime_heartbeat_key(v.name))
            for v in layout.realtime
        ]
        replies = await asyncio.gather(*calls)
        n = len(layout.batch)
        return [r[0][0] for r in replies[:n]], [r[1][0] for r in replies[n:]]

    def _child(self, metric: str, view: str) -> Any:
        """The ``metric`` (missing, stale or age) series of ``view``."""
        child = self._children.get((metric, view))
        if child is None:
            parent = getattr(self._metrics, metric)
            child = self._children[(metric, view)] = parent.labels(view)
        return child

    def _batch_rows(
        self, plan: _Plan, view: FeatureView, reply: Any, now: float
    ) -> tuple[dict[str, Row], bool]:
        """A batch view's rows by entity id, and whether the view is stale."""
        version, materialized_at, hits = reply
        if not version:
            if view.name not in self._warned_unloaded:
                self._warned_unloaded.add(view.name)  # once: this runs per request
                logger.warning("batch view %s has never been loaded", view.name)
            return {}, False
        age = now - float(materialized_at)
        self._child("age", view.name).set(age)
        rows = {
            e: [None if x is None else float(x) for x in hit]
            for e, hit in zip(plan.entity_ids[view.name], hits, strict=True)
            if hit != 0
        }
        return rows, age > view.max_staleness_s

    def _realtime_rows(
        self, plan: _Plan, view: FeatureView, reply: Any, now: float
    ) -> tuple[dict[str, Row], bool]:
        """A real-time view's rows by entity id, and whether the view is stale."""
        beat, hits = reply
        age = math.inf if not beat else now - float(beat)
        self._child("age", view.name).set(age if beat else -1)
        specs = plan.layout.columns[view.name]
        rows = {
            e: _realtime_row(specs, hit, now)
            for e, hit in zip(plan.entity_ids[view.name], hits, strict=True)
            if hit != 0
        }
        return rows, age > view.max_staleness_s

    def _fill(
        self,
        layout: _Layout,
        requests: Sequence[Mapping[str, str]],
        values: np.ndarray,
        found: Mapping[str, Mapping[str, Row]],
        view_stale: Mapping[str, bool],
    ) -> list[RowFlags]:
        """Write the found values into ``values``; flag and count missing and stale rows."""
        flags: list[RowFlags] = []
        n_missing: dict[str, int] = {}
        n_stale: dict[str, int] = {}
        views = layout.views
        for i, request in enumerate(requests):
            missing: list[str] = []
            stale: list[str] = []
            for view in views:
                v = view.name
                got = found[v].get(request[view.entity]) if view.entity in request else None
                if got is None:
                    missing.append(v)
                    n_missing[v] = n_missing.get(v, 0) + 1
                    continue
                if view_stale[v]:
                    stale.append(v)
                    n_stale[v] = n_stale.get(v, 0) + 1
                for (j, _), x in zip(layout.columns[v], got, strict=True):
                    if x is not None:
                        values[i, j] = x
            ok = not (missing or stale)
            flags.append(_OK if ok else RowFlags(frozenset(missing), frozenset(stale)))
        for v, count in n_missing.items():
            self._child("missing", v).inc(count)
        for v, count in n_stale.items():
            self._child("stale", v).inc(count)
        return flags

    async def _script_sha(self) -> str:
        if self._sha is None:
            self._sha = await self._redis.script_load(_READ)
        return self._sha
