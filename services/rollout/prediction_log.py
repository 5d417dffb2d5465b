"""The prediction stream and the shadow pair stream, written off the request path.

Every served prediction becomes an event on a capped Redis Stream per model (the source
of drift reports, canary gates and A/B analysis); every shadow comparison becomes a pair
on a second stream. Layout (keys built by ``services.state.keys``: bytes, a ``:`` inside a
name escaped)::

    servekit:predictions:{model}   stream, capped (MAXLEN ~): model, version, variant,
                                   unit, experiment, request_id, latency_ms, error,
                                   rows, inputs (JSON rows), output (JSON), ts
    servekit:shadow:{model}        stream, capped (MAXLEN ~): request_id, model,
                                   primary_version, candidate_version, rows,
                                   primary_output (JSON), candidate_output (JSON or null),
                                   primary_latency_ms, candidate_latency_ms (or empty),
                                   candidate_error (or empty), ts

``PredictionLog.append`` is a list append: a background task encodes the buffered entries
and writes them in pipelined batches. Writing fails open: when Redis is down or slow the
entries are dropped and counted (``dropped``), a warning is logged at most once per
``log_interval_s``, and no caller ever sees an exception.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.state.keys import prediction_stream_key, shadow_stream_key

logger = logging.getLogger(__name__)

_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class PredictionEvent:
    """One served request of one model.

    Attributes:
        model: the model's name.
        version: the version that answered.
        variant: ``"primary"`` or ``"candidate"``.
        unit: ``"user"`` or ``"request"``: what the assignment hashed.
        request_id: the request's id.
        latency_ms: time to answer (or to fail).
        error: whether serving failed.
        inputs: the feature rows, one per record (an array or nested lists; stored as a
            JSON list of rows). None when there are none to log.
        output: the answer (anything JSON-encodable, numpy arrays included).
        experiment_id: the canary or A/B experiment counted under, if any.
        ts: seconds since the epoch (0: stamped by the log when appended).
    """

    model: str
    version: str
    variant: str
    unit: str
    request_id: str
    latency_ms: float
    error: bool = False
    inputs: Any = None
    output: Any = None
    experiment_id: str | None = None
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """The primary's and the candidate's answers to one mirrored request.

    ``candidate_output`` and ``candidate_latency_ms`` are None when the candidate failed
    or timed out; ``candidate_error`` then says why (empty when it answered).
    """

    request_id: str
    model: str
    primary_version: str
    candidate_version: str
    primary_output: Any
    candidate_output: Any
    primary_latency_ms: float
    candidate_latency_ms: float | None
    candidate_error: str = ""
    rows: int = 1
    ts: float = 0.0


def _default(obj: Any) -> Any:
    # orjson serializes contiguous numpy arrays itself; the rest comes here.
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """JSON bytes of ``value`` (numpy arrays and scalars included)."""
    return orjson.dumps(value, default=_default, option=_ORJSON_OPTS)


def _rows(inputs: Any) -> Any:
    """Inputs as a list of rows (a single 1-D row becomes one row)."""
    if inputs is None:
        return None
    array = np.asarray(inputs, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    return array.reshape(array.shape[0], -1)


def _event_fields(event: PredictionEvent) -> dict[str, bytes | str]:
    rows = _rows(event.inputs)
    return {
        "model": event.model,
        "version": event.version,
        "variant": event.variant,
        "unit": event.unit,
        "experiment": event.experiment_id or "",
        "request_id": event.request_id,
        "latency_ms": repr(float(event.latency_ms)),
        "error": "1" if event.error else "0",
        "rows": str(0 if rows is None else len(rows)),
        "inputs": dumps(rows),
        "output": dumps(event.output),
        "ts": repr(event.ts),
    }


def _pair_fields(pair: ShadowPair) -> dict[str, bytes | str]:
    cand_ms = pair.candidate_latency_ms
    return {
        "request_id": pair.request_id,
        "model": pair.model,
        "primary_version": pair.primary_version,
        "candidate_version": pair.candidate_version,
        "rows": str(pair.rows),
        "primary_output": dumps(pair.primary_output),
        "candidate_output": dumps(pair.candidate_output),
        "primary_latency_ms": repr(float(pair.primary_latency_ms)),
        "candidate_latency_ms": "" if cand_ms is None else repr(float(cand_ms)),
        "candidate_error": pair.candidate_error,
        "ts": repr(pair.ts),
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode_event(fields: Mapping[bytes | str, bytes | str]) -> PredictionEvent:
    f = {_text(k): v for k, v in fields.items()}
    return PredictionEvent(
        model=_text(f["model"]),
        version=_text(f["version"]),
        variant=_text(f["variant"]),
        unit=_text(f["unit"]),
        request_id=_text(f["request_id"]),
        latency_ms=float(f["latency_ms"]),
        error=_text(f["error"]) == "1",
        inputs=orjson.loads(f["inputs"]),
        output=orjson.loads(f["output"]),
        experiment_id=_text(f["experiment"]) or None,
        ts=float(f["ts"]),
    )


def _decode_pair(fields: Mapping[bytes | str, bytes | str]) -> ShadowPair:
    f = {_text(k): v for k, v in fields.items()}
    cand_ms = _text(f["candidate_latency_ms"])
    return ShadowPair(
        request_id=_text(f["request_id"]),
        model=_text(f["model"]),
        primary_version=_text(f["primary_version"]),
        candidate_version=_text(f["candidate_version"]),
        primary_output=orjson.loads(f["primary_output"]),
        candidate_output=orjson.loads(f["candidate_output"]),
        primary_latency_ms=float(f["primary_latency_ms"]),
        candidate_latency_ms=float(cand_ms) if cand_ms else None,
        candidate_error=_text(f["candidate_error"]),
        rows=int(f["rows"]),
        ts=float(f["ts"]),
    )


def _exclusive_after(since_id: str) -> str:
    return "-" if since_id in ("", "-", "0", "0-0") else f"({since_id}"


class PredictionLog:
    """Buffers prediction events and shadow pairs; a background task writes them to Redis.

    Args:
        redis: an asyncio Redis client (give it a short socket timeout: a slow Redis
            makes a flush fail, never a request).
        maxlen: approximate cap of each stream (``XADD MAXLEN ~``).
        clock: seconds since the epoch, stamped on entries without a time.
        batch_size: entries per pipelined round trip; a full batch wakes the writer.
        flush_interval_s: the longest an entry waits in the buffer (the streams feed drift
            reports and gates over minutes; each flush costs the gateway a round trip).
        buffer_limit: most entries held while Redis is slow; past it new ones are dropped.
        log_interval_s: at most one warning about dropped entries per this many seconds.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        maxlen: int = 100_000,
        clock: Callable[[], float] = time.time,
        *,
        batch_size: int = 256,
        flush_interval_s: float = 0.25,
        buffer_limit: int = 10_000,
        log_interval_s: float = 60.0,
    ) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._clock = clock
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._buffer_limit = buffer_limit
        self._log_interval_s = log_interval_s
        self._buffer: list[PredictionEvent | ShadowPair] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._last_warning = -math.inf
        self._dropped_since_warning = 0
        self.appended = 0
        """Entries accepted into the buffer."""
        self.written = 0
        """Entries written to Redis."""
        self.dropped = 0
        """Entries lost: buffer full, or Redis failed while writing them."""
        self.flush_errors = 0
        """Flushes that failed (each drops its batch)."""

    # -- request path --------------------------------------------------------------------
    def append(self, entry: PredictionEvent | ShadowPair) -> bool:
        """Queue one event or pair for writing; False (and counted) when the buffer is full.

        Never raises and never waits: encoding and the Redis round trip happen in the
        background writer.
        """
        if len(self._buffer) >= self._buffer_limit:
            self._drop(1, "buffer full")
            return False
        self._buffer.append(entry)
        self.appended += 1
        if len(self._buffer) >= self._batch_size:
            self._wake.set()
        return True

    @property
    def buffered(self) -> int:
        """Entries waiting to be written."""
        return len(self._buffer)

    # -- writer --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="prediction-log-writer")

    async def close(self) -> None:
        """Stop the writer and write what is buffered (fail-open)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def flush(self) -> int:
        """Write everything buffered now; returns how many entries were written."""
        async with self._flush_lock:
            written = 0
            while self._buffer:
                batch = self._buffer[: self._batch_size]
                del self._buffer[: self._batch_size]
                written += await self._write(batch)
            return written

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def _write(self, batch: Sequence[PredictionEvent | ShadowPair]) -> int:
        now = self._clock()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry in batch:
                    if isinstance(entry, ShadowPair):
                        key, fields = shadow_stream_key(entry.model), _pair_fields(entry)
                    else:
                        key, fields = prediction_stream_key(entry.model), _event_fields(entry)
                    if not entry.ts:
                        fields["ts"] = repr(now)
                    pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()
        except (RedisError, OSError, TypeError, ValueError) as exc:
            # TypeError/ValueError: an output that is not JSON-encodable; the batch is lost
            # either way, and the serving path must not notice.
            self.flush_errors += 1
            self._drop(len(batch), f"{type(exc).__name__}: {exc}")
            return 0
        self.written += len(batch)
        return len(batch)

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        self._dropped_since_warning += n
        now = time.monotonic()
        if now - self._last_warning >= self._log_interval_s:
            logger.warning(
                "prediction log dropped %d entr%s (%s); %d dropped in all",
                self._dropped_since_warning,
                "y" if self._dropped_since_warning == 1 else "ies",
                why,
                self.dropped,
            )
            self._last_warning = now
            self._dropped_since_warning = 0

    # -- readers (flows, drift reports) --------------------------------------------------
    async def read(
        self, model: str, since_id: str = "0-0", count: int = 1000
    ) -> list[tuple[str, PredictionEvent]]:
        """Up to ``count`` prediction events of ``model`` after ``since_id``, oldest first."""
        entries: Any = await self._redis.xrange(
            prediction_stream_key(model), min=_exclusive_after(since_id), max="+", count=count
        )
        return [(_text(entry_id), _decode_event(fields)) for entry_id, fields in entries]

    async def read_shadow(
        self, model: str, since_id: str = "0-0", count: int = 1000
    ) -> list[tuple[str, ShadowPair]]:
        """Up to ``count`` shadow pairs of ``model`` after ``since_id``, oldest first."""
        entries: Any = await self._redis.xrange(
            shadow_stream_key(model), min=_exclusive_after(since_id), max="+", count=count
        )
        return [(_text(entry_id), _decode_pair(fields)) for entry_id, fields in entries]

    async def last_id(self, model: str, *, shadow: bool = False) -> str:
        """The id of the newest entry of a stream (``"0-0"`` when empty): read after it."""
        key = shadow_stream_key(model) if shadow else prediction_stream_key(model)
        entries: Any = await self._redis.xrevrange(key, count=1)
        return _text(entries[0][0]) if entries else "0-0"
