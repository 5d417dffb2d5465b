"""Real-time features: events in, per-entity state out.

``POST /events`` validates a payload with :func:`validate_event` and appends it with
:meth:`EventLog.append` to a capped Redis Stream. :class:`RealtimeWorker`, one of a
consumer group, reads the stream and updates each real-time view's state (last N values
of a field, last event time, recent events in a sorted set) that
``services.state.features.FeatureStore`` reads at request time.

Delivery is at least once, application exactly once: each event is applied by one Lua
script that first sets a per-event marker (SET NX with a TTL), so a replayed or
reclaimed event changes nothing, and a worker that dies between applying and XACK
leaves entries that another worker reclaims with XAUTOCLAIM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ResponseError

from services.errors import InvalidInputError
from services.state import keys
from services.state.features import FeatureRegistry, feature_metrics

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry

    from services.settings import FeatureSettings

logger = logging.getLogger(__name__)

_MAX_ID_LEN = 256


@dataclasses.dataclass(frozen=True)
class Event:
    """One validated event.

    Attributes:
        event_id: the client's id, or a generated one; replays with it are applied once.
        timestamp: event time, epoch seconds.
        entities: entity type -> entity id.
        values: numeric event fields that real-time views read (``amount``).
    """

    event_id: str
    timestamp: float
    entities: dict[str, str]
    values: dict[str, float]

    def encode(self) -> bytes:
        """The stream entry's payload."""
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Event:
        """The event that :meth:`encode` wrote."""
        raw = orjson.loads(data)
        return cls(
            event_id=str(raw["event_id"]),
            timestamp=float(raw["timestamp"]),
            entities={str(k): str(v) for k, v in raw["entities"].items()},
            values={str(k): float(v) for k, v in raw["values"].items()},
        )


def validate_event(payload: Mapping[str, Any], registry: FeatureRegistry) -> Event:
    """An :class:`Event` from a request body; InvalidInputError naming the field at fault.

    The body: ``{"event_id"?: str, "timestamp": epoch seconds | ISO-8601 with zone,
    "entities": {"user": "u1", ...}, "amount": 12.5, ...}``; every event field a
    real-time view reads is required and numeric.
    """
    if not isinstance(payload, Mapping):
        raise InvalidInputError("an event is a JSON object", field="")
    event_id = payload.get("event_id")
    if event_id is None:
        event_id = uuid.uuid4().hex
    elif not isinstance(event_id, str) or not 0 < len(event_id) <= _MAX_ID_LEN:
        raise InvalidInputError("event_id must be a non-empty string", field="event_id")

    if "timestamp" not in payload:
        raise InvalidInputError("timestamp is required", field="timestamp")
    timestamp = _timestamp(payload["timestamp"])

    entities = payload.get("entities")
    if not isinstance(entities, Mapping) or not entities:
        raise InvalidInputError("entities must be a non-empty object", field="entities")
    known = registry.entities
    for entity, entity_id in entities.items():
        if entity not in known:
            raise InvalidInputError(
                f"unknown entity type {entity!r} (known: {sorted(known)})",
                field=f"entities.{entity}",
            )
        if not isinstance(entity_id, str) or not 0 < len(entity_id) <= _MAX_ID_LEN:
            raise InvalidInputError(
                "an entity id must be a non-empty string", field=f"entities.{entity}"
            )

    values: dict[str, float] = {}
    for name in sorted(registry.event_fields):
        value = payload.get(name)
        if value is None:
            raise InvalidInputError(f"{name} is required", field=name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInputError(f"{name} must be a finite number", field=name)
        values[name] = float(value)
    return Event(event_id, timestamp, dict(entities), values)


def _timestamp(value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidInputError("timestamp must be epoch seconds or ISO-8601", field="timestamp")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise InvalidInputError("timestamp must be a finite epoch time", field="timestamp")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInputError("timestamp is not ISO-8601", field="timestamp") from None
        if parsed.tzinfo is None:
            raise InvalidInputError("timestamp needs a time zone", field="timestamp")
        return parsed.timestamp()
    raise InvalidInputError("timestamp must be epoch seconds or ISO-8601", field="timestamp")


class EventLog:
    """Appends events to the capped event stream.

    Args:
        redis: an asyncio client.
        settings: the feature settings (``stream_maxlen``).
    """

    def __init__(self, redis: aioredis.Redis, settings: FeatureSettings) -> None:
        self._redis = redis
        self._maxlen = settings.stream_maxlen

    async def append(self, event: Event) -> str:
        """XADD ``event``; returns its stream id."""
        entry_id = await self._redis.xadd(
            keys.event_stream_key(), {"e": event.encode()}, maxlen=self._maxlen, approximate=True
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


# Applies one event to real-time views of its entities, once. The worker calls it once per
# view, so that every key of a call shares the view's hash tag (one Redis Cluster slot).
# KEYS: seen marker, then per view: state hash, window zset, one list per last_n field.
# ARGV: dedupe ttl, event id, timestamp, state ttl ms, then per view: n_lists, window_s,
# then (value, n) per list. Returns 1 if applied, 0 if already applied.
_APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local id, ts, ttl = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local k, a = 2, 5
while a <= #ARGV do
  local nl, win = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local state, zset = KEYS[k], KEYS[k + 1]
  a, k = a + 2, k + 2
  local prev = redis.call('HGET', state, 'last_ts')
  if (not prev) or ts > tonumber(prev) then redis.call('HSET', state, 'last_ts', ARGV[3]) end
  redis.call('PEXPIRE', state, ttl)
  if win > 0 then
    redis.call('ZADD', zset, ts, id)
    redis.call('ZREMRANGEBYSCORE', zset, '-inf', '(' .. tostring(ts - win))
    redis.call('PEXPIRE', zset, ttl)
  end
  for l = 1, nl do
    redis.call('LPUSH', KEYS[k], ARGV[a])
    redis.call('LTRIM', KEYS[k], 0, tonumber(ARGV[a + 1]) - 1)
    redis.call('PEXPIRE', KEYS[k], ttl)
    k, a = k + 1, a + 2
  end
end
return 1
"""


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one :meth:`RealtimeWorker.run_once` did."""

    claimed: int = 0
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    invalid: int = 0


Entry = tuple[bytes, dict[bytes, bytes]]


class RealtimeWorker:
    """A consumer-group worker that turns events into real-time view state.

    Args:
        redis: an asyncio client.
        views: the declared views (only real-time ones are updated).
        settings: the feature settings (group, dedupe TTL, claim idle time, state TTL).
        consumer: this worker's name in the group; unique per live worker.
        clock: wall-clock seconds, for the heartbeat that tells readers the view is fresh.
        registry: where the metrics go (default: prometheus_client's global registry).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        views: FeatureRegistry,
        settings: FeatureSettings,
        consumer: str,
        clock: Callable[[], float] = time.time,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._redis = redis
        self._views = [v for v in views.views.values() if v.kind == "realtime"]
        self._settings = settings
        self.group = settings.consumer_group
        self.consumer = consumer
        self._clock = clock
        self._stream = keys.event_stream_key()
        self._apply = redis.register_script(_APPLY)
        self._claim_cursor: bytes | str = "0-0"
        self._group_ready = False
        self.metrics = feature_metrics(registry)

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing."""
        try:
            await self._redis.xgroup_create(self._stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def run_once(self, count: int = 100, block_ms: int | None = None) -> StepResult:
        """Reclaim stalled entries, read new ones, apply and acknowledge them.

        Args:
            count: most entries handled in this step.
            block_ms: wait this long for new entries when there are none (None: no wait).
        """
        claimed = await self.claim(count)
        read = await self.read(count - len(claimed), block_ms) if len(claimed) < count else []
        entries = claimed + read
        applied, duplicates, invalid = await self.apply(entries)
        await self.ack([entry_id for entry_id, _ in entries])
        return StepResult(len(claimed), len(read), applied, duplicates, invalid)

    async def claim(self, count: int) -> list[Entry]:
        """Take over entries pending longer than ``claim_min_idle_ms`` (dead consumers)."""
        if not self._group_ready:
            await self.ensure_group()
        cursor, entries, *_ = await self._redis.xautoclaim(
            self._stream,
            self.group,
            self.consumer,
            min_idle_time=self._settings.claim_min_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = cursor
        if entries:
            logger.info("worker %s reclaimed %d pending events", self.consumer, len(entries))
        return [(i, f) for i, f in entries if f is not None]

    async def read(self, count: int, block_ms: int | None = None) -> list[Entry]:
        """New entries for this consumer (they stay pending until :meth:`ack`)."""
        if count <= 0:
            return []
        if not self._group_ready:
            await self.ensure_group()
        reply: Any = await self._redis.xreadgroup(
            self.group, self.consumer, {self._stream: ">"}, count=count, block=block_ms
        )
        return [entry for _, stream_entries in reply or [] for entry in stream_entries]

    async def apply(self, entries: list[Entry]) -> tuple[int, int, int]:
        """Apply entries to the real-time state; (applied, duplicates, invalid)."""
        applied = duplicates = invalid = 0
        for entry_id, fields in entries:
            try:
                event = Event.decode(fields[b"e"])
            except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
                logger.warning("dropping undecodable event %r", entry_id)
                invalid += 1
                continue
            calls = [self._apply(keys=k, args=a) for k, a in self._apply_args(event)]
            # Applied if any view took it; a replay finds every view's marker set.
            if not calls or any(await asyncio.gather(*calls)):
                applied += 1
            else:
                duplicates += 1
        self.metrics.events.labels("applied").inc(applied)
        self.metrics.events.labels("duplicate").inc(duplicates)
        self.metrics.events.labels("invalid").inc(invalid)
        return applied, duplicates, invalid

    async def ack(self, entry_ids: list[bytes]) -> None:
        """XACK handled entries and record the heartbeat of every real-time view."""
        pipe = self._redis.pipeline(transaction=False)
        if entry_ids:
            pipe.xack(self._stream, self.group, *entry_ids)
        now = repr(float(self._clock()))
        for view in self._views:
            pipe.set(keys.realtime_heartbeat_key(view.name), now)
        await pipe.execute()

    def _apply_args(self, event: Event) -> list[tuple[list[bytes], list[Any]]]:
        """Per real-time view of the event's entities: the apply script's keys and args."""
        head: list[Any] = [
            self._settings.dedupe_ttl_s,
            event.event_id,
            repr(event.timestamp),
            self._settings.state_ttl_s * 1000,
        ]
        calls = []
        for view in self._views:
            entity_id = event.entities.get(view.entity)
            if entity_id is None:
                continue
            lists: dict[str, int] = {}  # field -> longest n any feature reads
            for spec in view.features:
                if spec.agg == "last_n_mean" and spec.field is not None:
                    lists[spec.field] = max(spec.n, lists.get(spec.field, 0))
            window = max((s.window_s for s in view.features if s.agg == "count_window"), default=0)
            script_keys = [
                keys.event_seen_key(view.name, self.group, event.event_id),
                keys.realtime_state_key(view.name, entity_id),
                keys.realtime_window_key(view.name, entity_id),
            ]
            args = [*head, len(lists), repr(float(window))]
            for field, n in lists.items():
                script_keys.append(keys.realtime_last_key(view.name, entity_id, field))
                args += [repr(event.values.get(field, 0.0)), n]
            calls.append((script_keys, args))
        return calls
