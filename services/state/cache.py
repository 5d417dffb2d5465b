"""The Redis prediction cache: one MGET per request, fail-open, self-disabling.

Computed rows are written behind the answer (one pipeline per event-loop iteration for
all its requests): a request never waits for its write.

A cached value is one model output row, encoded by :func:`encode_output`: a byte with
the row's number of dimensions, each dimension as a little-endian uint32, then the row's
float32 values (little-endian). Outputs are always float32, cached or not, so a cached
answer is bit-identical to a computed one.

Three safeguards keep Redis from ever costing a prediction:

- every call has a budget (``timeout_ms``); a slow or failing call is skipped and the
  prediction goes on uncached;
- a circuit breaker stops calling Redis after failures in a row, and a per-model
  auto-disable turns the cache off for a model whose hit rate stays low
  (``services.state.cache_policy``);
- identical rows in flight are computed once (single-flight), cached or not.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from services.state.cache_costs import CostReport, Counts, metered
from services.state.cache_metrics import CacheMetrics, cache_metrics  # noqa: F401 - re-exported
from services.state.cache_policy import AutoDisable, CacheState, CircuitBreaker, CpuCosts
from services.state.coalesce import TickCoalescer
from services.state.cpu_meter import CpuMeter
from services.state.keys import prediction_key, prediction_key_from_digest, row_digest
from services.state.redis_clients import is_cluster

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from services.settings import CacheSettings

logger = logging.getLogger(__name__)

Compute = Callable[[np.ndarray], Awaitable[np.ndarray]]


def encode_output(row: np.ndarray) -> bytes:
    """One output row as cache bytes: ndim (uint8), dims (uint32 LE), float32 LE values."""
    arr = np.ascontiguousarray(row, dtype="<f4")
    return struct.pack(f"<B{arr.ndim}I", arr.ndim, *arr.shape) + arr.tobytes()


def decode_output(data: bytes) -> np.ndarray:
    """The output row that :func:`encode_output` wrote; ValueError if the bytes are not one."""
    if not data:
        raise ValueError("empty cache value")
    ndim = data[0]
    header = 1 + 4 * ndim
    shape = struct.unpack_from(f"<{ndim}I", data, 1)
    if len(data) - header != 4 * int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"cache value of {len(data)} bytes does not hold shape {shape}")
    return np.frombuffer(data, dtype="<f4", offset=header).reshape(shape).astype(np.float32)


_FAILED = object()
_Entry = tuple[str, bytes, bytes, int]  # a cache write: model, key, value, TTL in seconds
_METER_EVERY = 4
"""While a model's cache is on, one request in this many has its CPU metered (metering
costs a few µs); while it is off, every probe is (they are few)."""


class PredictionCache:
    """Caches model outputs in Redis by model, version and input row.

    Args:
        redis: an asyncio client; give it no retries (``retry=None``): the budget here
            is a few milliseconds.
        settings: the cache settings.
        clock: monotonic seconds, for the breaker and the minimum off time.
        registry: where the metrics go (default: prometheus_client's global registry).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: CacheSettings,
        clock: Callable[[], float] = time.monotonic,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._timeout_s = settings.timeout_ms / 1000.0
        self._inflight: dict[bytes, asyncio.Future[np.ndarray]] = {}
        self._calls = 0
        self._off_children: dict[str, Any] = {}
        self.metrics = cache_metrics(registry)
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s, clock)
        # The CPU accounting behind the cost policy; the runner's cost per row is wired in
        # where the model pool is known (``costs.runner_cost``).
        self.costs = CpuCosts()
        self.policy = AutoDisable(settings, clock, self._export_state, self.costs)
        self.report = CostReport(self.policy, clock, registry)
        # Concurrent requests' lookups and writes share one MGET / one pipeline per loop tick.
        self._reads: TickCoalescer[bytes, bytes | None] = TickCoalescer(self._mget_all)
        self._writes: TickCoalescer[_Entry, None] = TickCoalescer(self._write_entries)

    def state(self, model: str) -> CacheState:
        """Whether ``model``'s cache is on."""
        return self.policy.state(model)

    def hit_rate(self, model: str) -> float | None:
        """Hit rate over the current window (the probes' while off); None before any lookup."""
        return self.policy.hit_rate(model)

    def ttl_for(self, model: str) -> int:
        """The TTL in seconds of ``model``'s cached outputs."""
        return self._settings.per_model_ttl.get(model, self._settings.ttl_s)

    async def get_many(self, model: str, version: str, rows: np.ndarray) -> list[bytes | None]:
        """Cached values of ``rows`` in one MGET; None where missed, skipped or failed."""
        digests = [row_digest(r) for r in _as_rows(rows)]
        keys = [prediction_key_from_digest(model, version, d) for d in digests]
        wanted = [i for i, d in enumerate(digests) if self._should_lookup(model, d)]
        out: list[bytes | None] = [None] * len(keys)
        values = await self._mget(model, [keys[i] for i in wanted])
        for i, value in zip(wanted, values, strict=True):
            out[i] = value
        return out

    async def set_many(
        self, model: str, version: str, rows: np.ndarray, values: Sequence[bytes]
    ) -> None:
        """Store ``values`` (see :func:`encode_output`) for ``rows`` in one pipelined round trip."""
        keys = [prediction_key(model, version, r) for r in _as_rows(rows)]
        await self._writes.submit(self._entries(model, dict(zip(keys, values, strict=True))))

    async def get_or_compute(
        self, model: str, version: str, rows: np.ndarray, compute: Compute
    ) -> tuple[np.ndarray, np.ndarray]:
        """Outputs for ``rows``, from the cache where possible.

        Looks all rows up in one MGET, computes the missing unique rows once (joining an
        identical computation already in flight in this process), queues them to be
        written behind the answer (:meth:`drain` waits for the write) and never fails
        because of Redis. The CPU of the cache's own work and of ``compute``'s
        gateway-side work is metered for the cost policy.

        Args:
            model: the model's name.
            version: the model version that answers.
            rows: the assembled float32 feature rows, shape (n, features).
            compute: runs the model on a (k, features) array, returns k output rows.

        Returns:
            The float32 outputs, one row per input row, and a bool mask of the rows that
            came from the cache.
        """
        on = self.policy.state(model) is CacheState.ON
        if on:
            self._calls += 1
        # Metered: one request in _METER_EVERY while on, every probe while off (few).
        sample = not on or self._calls % _METER_EVERY == 0
        t0 = time.thread_time() if on and sample else None
        rows = _as_rows(rows)
        digests = [row_digest(r) for r in rows]
        if (
            not on
            and self._settings.enabled
            and not any(self.policy.is_probe(d, model) for d in digests)
        ):
            # Off for this model and no probe among the rows: straight to the model, with
            # none of the single-flight bookkeeping (the cache is not worth its cost here).
            self._off_bypass(model).inc(len(rows))
            out = np.asarray(await compute(rows)).astype(np.float32, copy=False)
            return out, np.zeros(len(rows), dtype=bool)
        counts = Counts()
        if not sample:
            return await self._get_or_compute(model, version, rows, digests, compute, counts)
        computed, meter = CpuMeter(), CpuMeter()
        compute_metered = metered(compute, computed, counts)
        meter.cpu = 0.0 if t0 is None else time.thread_time() - t0
        result = await meter.run(
            self._get_or_compute(model, version, rows, digests, compute_metered, counts)
        )
        self.report.metered(model, meter.cpu - computed.cpu, counts, computed.cpu)
        return result

    async def _get_or_compute(
        self,
        model: str,
        version: str,
        rows: np.ndarray,
        digests: list[bytes],
        compute: Compute,
        counts: Counts,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cached path of :meth:`get_or_compute` (rows looked up, or probed)."""
        keys = [prediction_key_from_digest(model, version, d) for d in digests]
        row_of: dict[bytes, np.ndarray] = {}
        digest_of: dict[bytes, bytes] = {}
        for key, digest, row in zip(keys, digests, rows, strict=True):
            if key not in row_of:
                row_of[key] = row
                digest_of[key] = digest
        cacheable = [k for k in row_of if self._should_lookup(model, digest_of[k])]
        counts.looked = len(cacheable)
        found = await self._lookup(model, cacheable)
        missing = [k for k in row_of if k not in found]
        computed, owned = await self._compute_missing(model, missing, row_of, compute)
        cacheable_set = set(cacheable)
        to_write = {k: encode_output(computed[k]) for k in owned if k in cacheable_set}
        counts.written = len(to_write)
        if to_write:
            # Written behind the answer: the request does not wait for it.
            self._writes.post(self._entries(model, to_write))

        outputs = {**computed, **found}
        cached = np.fromiter((k in found for k in keys), dtype=bool, count=len(keys))
        return np.stack([outputs[k] for k in keys]), cached

    async def _lookup(self, model: str, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """The cached outputs of ``keys`` that were found and decode."""
        found: dict[bytes, np.ndarray] = {}
        for key, value in zip(keys, await self._mget(model, keys), strict=True):
            if value is None:
                continue
            try:
                found[key] = decode_output(value)
            except ValueError:
                logger.warning("undecodable cache value for model %s; recomputing", model)
                self.metrics.errors.labels(model, "decode").inc()
        return found

    def _export_state(self, model: str, state: CacheState) -> None:
        self.metrics.state.labels(model).set(1 if state is CacheState.ON else 0)
        self.report.switched(model, state)

    def _off_bypass(self, model: str) -> Any:
        """The model's ``bypasses{reason="off"}`` child (looked up once: the hot path)."""
        child = self._off_children.get(model)
        if child is None:
            child = self._off_children[model] = self.metrics.bypasses.labels(model, "off")
        return child

    def describe(self, model: str) -> dict[str, Any]:
        """The model's cache decision and the CPU figures behind it (for ``GET /models``)."""
        return self.report.describe(model)

    def _should_lookup(self, model: str, digest: bytes) -> bool:
        if not self._settings.enabled:
            self.metrics.bypasses.labels(model, "disabled").inc()
            return False
        if self.policy.state(model) is CacheState.ON or self.policy.is_probe(digest, model):
            return True
        self._off_bypass(model).inc()
        return False

    async def _mget(self, model: str, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._call(model, lambda: self._reads.submit(keys), len(keys))
        if values is _FAILED:
            return [None] * len(keys)
        hits = sum(v is not None for v in values)
        self.metrics.hits.labels(model).inc(hits)
        self.metrics.misses.labels(model).inc(len(keys) - hits)
        rate = self.policy.record(model, [v is not None for v in values])
        self.metrics.hit_rate.labels(model).set(rate or 0.0)
        return list(values)

    def _entries(self, model: str, items: dict[bytes, bytes]) -> list[_Entry]:
        ttl = self.ttl_for(model)
        return [(model, key, value, ttl) for key, value in items.items()]

    async def drain(self) -> None:
        """Wait until every write queued so far has been answered (or has failed)."""
        await self._writes.drain()

    async def _write_entries(self, entries: list[_Entry]) -> list[None]:
        """One pipelined write of the entries of one loop iteration, fail-open."""
        rows = Counter(model for model, _, _, _ in entries)
        await self._guarded(rows, lambda: self._set_all(entries))
        return [None] * len(entries)

    async def _mget_all(self, keys: list[bytes]) -> list[bytes | None]:
        # Prediction keys carry no hash tag: on a Redis Cluster they spread over the slots,
        # so the lookup is one MGET per slot, pipelined to each node at once.
        if is_cluster(self._redis):
            call = self._redis.mget_nonatomic(keys)  # type: ignore[attr-defined]
        else:
            call = self._redis.mget(keys)
        meter = CpuMeter()
        values: list[bytes | None] = await meter.run(call)  # type: ignore[arg-type]
        self.costs.client_read.add(meter.cpu, len(keys))
        return list(values)

    async def _set_all(self, entries: list[_Entry]) -> list[Any]:
        meter, t0 = CpuMeter(), time.thread_time()
        pipe = self._redis.pipeline(transaction=False)
        for _, key, value, ttl in entries:
            pipe.set(key, value, ex=ttl)
        meter.cpu = time.thread_time() - t0
        out = list(await meter.run(pipe.execute()))
        self.costs.client_write.add(meter.cpu, len(entries))
        return out

    async def _call(self, model: str, make: Callable[[], Awaitable[Any]], rows: int) -> Any:
        """Run one Redis call within budget; _FAILED (and counted) if skipped or failed."""
        return await self._guarded({model: rows}, make)

    async def _guarded(self, rows: Mapping[str, int], make: Callable[[], Awaitable[Any]]) -> Any:
        """:meth:`_call` for the rows of one or more models (a queued write's)."""
        if not self.breaker.allow():
            for model, n in rows.items():
                self.metrics.bypasses.labels(model, "breaker").inc(n)
            return _FAILED
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await make()
        except TimeoutError:
            self._failed(rows, "timeout")
            return _FAILED
        except (RedisError, OSError) as exc:
            logger.debug("cache call failed for models %s: %r", sorted(rows), exc)
            self._failed(rows, "error")
            return _FAILED
        self.breaker.record_success()
        self.metrics.breaker.set(self.breaker.state.value)
        return result

    def _failed(self, models: Iterable[str], kind: str) -> None:
        for model in models:
            self.metrics.errors.labels(model, kind).inc()
        self.breaker.record_failure()
        self.metrics.breaker.set(self.breaker.state.value)

    async def _compute_missing(
        self, model: str, keys: list[bytes], row_of: dict[bytes, np.ndarray], compute: Compute
    ) -> tuple[dict[bytes, np.ndarray], list[bytes]]:
        """Outputs of ``keys`` and the keys this call computed itself (not joined)."""
        own = [k for k in keys if k not in self._inflight]
        joined = {k: self._inflight[k] for k in keys if k in self._inflight}
        results: dict[bytes, np.ndarray] = {}
        if own:
            loop = asyncio.get_running_loop()
            futures = {k: loop.create_future() for k in own}
            self._inflight.update(futures)
            try:
                out = np.asarray(await compute(np.stack([row_of[k] for k in own])))
                if len(out) != len(own):
                    raise ValueError(f"compute returned {len(out)} rows for {len(own)} inputs")
                out = out.astype(np.float32, copy=False)
                for i, key in enumerate(own):
                    results[key] = out[i]
                    futures[key].set_result(out[i])
            except BaseException as exc:
                for fut in futures.values():
                    if fut.done():
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        fut.cancel()
                    else:
                        fut.set_exception(exc)
                        fut.exception()  # retrieved: joiners re-raise it themselves
                raise
            finally:
                for key, fut in futures.items():
                    if self._inflight.get(key) is fut:
                        del self._inflight[key]
        if joined:
            self.metrics.joined.labels(model).inc(len(joined))
            await asyncio.wait(joined.values())
            retry = []
            for key, fut in joined.items():
                if fut.cancelled():
                    retry.append(key)  # its owner was cancelled: compute it here
                elif (error := fut.exception()) is not None:
                    raise error
                else:
                    results[key] = fut.result()
            if retry:
                again, owned = await self._compute_missing(model, retry, row_of, compute)
                results.update(again)
                own = own + owned
        return results, own


def _as_rows(rows: np.ndarray) -> np.ndarray:
    arr = np.asarray(rows, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array of rows, got shape {arr.shape}")
    return arr
