"""PredictionCache against a real Redis: hits, TTL, isolation, auto-off, fail-open."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.settings import CacheSettings
from services.state import keys
from services.state.cache import PredictionCache, decode_output, encode_output
from services.state.cache_policy import BreakerState, CacheState

MODEL = "fraud"


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Model:
    """A stand-in model: output = row sum and row max; records every call."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(rows.copy())
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return np.stack([rows.sum(axis=1), rows.max(axis=1)], axis=1)

    @property
    def rows_computed(self) -> int:
        return sum(len(c) for c in self.calls)


def settings(**overrides: object) -> CacheSettings:
    base: dict[str, object] = {"timeout_ms": 500.0}  # the shared test Redis can be slow
    base.update(overrides)
    return CacheSettings(**base)  # type: ignore[arg-type]


def rows(n: int, seed: int = 0, width: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_output_encoding_exact_bytes() -> None:
    row = np.array([0.5, -1.0], dtype=np.float32)
    data = encode_output(row)
    assert data == b"\x01\x02\x00\x00\x00" + b"\x00\x00\x00?\x00\x00\x80\xbf"
    assert decode_output(data).tolist() == [0.5, -1.0]
    matrix = np.arange(6, dtype=np.float64).reshape(2, 3)
    decoded = decode_output(encode_output(matrix))
    assert decoded.dtype == np.float32 and decoded.shape == (2, 3)
    with pytest.raises(ValueError):
        decode_output(data[:-1])


async def test_miss_then_hit_and_ttl(
    aredis: aioredis.Redis, clock: FakeClock, registry: CollectorRegistry
) -> None:
    cache = PredictionCache(aredis, settings(), clock, registry=registry)
    model = Model()
    x = rows(3)
    out, cached = await cache.get_or_compute(MODEL, "v1", x, model)
    assert cached.tolist() == [False, False, False]
    assert model.rows_computed == 3
    np.testing.assert_array_equal(out, await Model()(x))
    await cache.drain()  # the write goes behind the answer

    again, cached = await cache.get_or_compute(MODEL, "v1", x, model)
    assert cached.tolist() == [True, True, True]
    assert model.rows_computed == 3
    np.testing.assert_array_equal(again, out)
    assert sample(registry, "servekit_cache_hits_total", model=MODEL) == 3
    assert sample(registry, "servekit_cache_misses_total", model=MODEL) == 3

    pttl = await aredis.pttl(keys.prediction_key(MODEL, "v1", x[0]))
    assert 3_590_000 < pttl <= 3_600_000


async def test_per_model_ttl(aredis: aioredis.Redis, clock: FakeClock) -> None:
    cache = PredictionCache(aredis, settings(per_model_ttl={"short": 60}), clock)
    x = rows(1)
    await cache.get_or_compute("short", "v1", x, Model())
    await cache.drain()
    assert 0 < await aredis.pttl(keys.prediction_key("short", "v1", x[0])) <= 60_000


async def test_expired_entry_is_recomputed(aredis: aioredis.Redis, clock: FakeClock) -> None:
    cache = PredictionCache(aredis, settings(ttl_s=1), clock)
    model = Model()
    x = rows(2)
    await cache.get_or_compute(MODEL, "v1", x, model)
    await cache.drain()
    # expire one entry as Redis's TTL would, without waiting for it
    assert await aredis.pexpireat(keys.prediction_key(MODEL, "v1", x[0]), 1)
    _, cached = await cache.get_or_compute(MODEL, "v1", x, model)
    assert cached.tolist() == [False, True]
    assert model.rows_computed == 3
    await cache.drain()
    assert await aredis.pttl(keys.prediction_key(MODEL, "v1", x[0])) > 0


async def test_versions_and_models_are_isolated(aredis: aioredis.Redis, clock: FakeClock) -> None:
    cache = PredictionCache(aredis, settings(), clock)
    model = Model()
    x = rows(2)
    await cache.get_or_compute(MODEL, "v1", x, model)
    _, cached_v2 = await cache.get_or_compute(MODEL, "v2", x, model)
    _, cached_other = await cache.get_or_compute("other", "v1", x, model)
    assert not cached_v2.any() and not cached_other.any()
    assert model.rows_computed == 6


async def test_get_many_and_set_many_round_trip(aredis: aioredis.Redis, clock: FakeClock) -> None:
    cache = PredictionCache(aredis, settings(), clock)
    x = rows(3)
    assert await cache.get_many(MODEL, "v1", x) == [None, None, None]
    await cache.set_many(MODEL, "v1", x[:2], [b"a", b"b"])
    assert await cache.get_many(MODEL, "v1", x) == [b"a", b"b", None]


async def test_duplicate_rows_in_one_request_compute_once(
    aredis: aioredis.Redis, clock: FakeClock
) -> None:
    cache = PredictionCache(aredis, settings(), clock)
    model = Model()
    x = rows(2)
    batch = np.stack([x[0], x[1], x[0], x[0]])
    out, cached = await cache.get_or_compute(MODEL, "v1", batch, model)
    assert model.rows_computed == 2
    np.testing.assert_array_equal(out[0], out[2])
    assert not cached.any()


async def test_single_flight_joins_concurrent_identical_misses(
    aredis: aioredis.Redis, clock: FakeClock, registry: CollectorRegistry
) -> None:
    cache = PredictionCache(aredis, settings(), clock, registry=registry)
    model = Model()
    model.gate = asyncio.Event()
    x = rows(3)
    first = asyncio.create_task(cache.get_or_compute(MODEL, "v1", x[:2], model))
    second = asyncio.create_task(cache.get_or_compute(MODEL, "v1", x[1:], model))
    while len(model.calls) < 2:  # both past their MGET, one computing each own row set
        await asyncio.sleep(0)
    model.gate.set()
    (out1, _), (out2, _) = await asyncio.gather(first, second)
    assert model.rows_computed == 3  # x[1] computed once, shared
    np.testing.assert_array_equal(out1[1], out2[0])
    assert sample(registry, "servekit_cache_singleflight_joined_total", model=MODEL) == 1


async def test_single_flight_failure_reaches_joiners_and_writes_nothing(
    aredis: aioredis.Redis, clock: FakeClock, registry: CollectorRegistry
) -> None:
    cache = PredictionCache(aredis, settings(), clock, registry=registry)
    model = Model()
    model.gate = asyncio.Event()
    model.fail = RuntimeError("backend down")
    x = rows(1)
    tasks = [asyncio.create_task(cache.get_or_compute(MODEL, "v1", x, model)) for _ in range(3)]
    while sample(registry, "servekit_cache_singleflight_joined_total", model=MODEL) < 2:
        await asyncio.sleep(0)  # until both joiners wait on the in-flight computation
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(model.calls) == 1
    await cache.drain()
    assert await aredis.exists(keys.prediction_key(MODEL, "v1", x[0])) == 0


async def test_turns_off_below_min_hit_rate_and_back_on(
    aredis: aioredis.Redis, clock: FakeClock, registry: CollectorRegistry
) -> None:
    s = settings(
        window=100, min_hit_rate=0.05, probe_rate=0.5, probe_window=20, reenable_hit_rate=0.5
    )
    cache = PredictionCache(aredis, s, clock, registry=registry)
    model = Model()
    unique = rows(100, seed=1)
    for i in range(0, 100, 10):
        await cache.get_or_compute(MODEL, "v1", unique[i : i + 10], model)
    assert cache.state(MODEL) is CacheState.OFF
    assert sample(registry, "servekit_cache_enabled", model=MODEL) == 0

    # while off only probe inputs (half, by key hash) are looked up and written
    fresh = rows(200, seed=2)
    is_probe = np.array([_probe(r, 0.5) for r in fresh])
    probes, others = fresh[is_probe][:20], fresh[~is_probe][:20]
    await cache.get_or_compute(MODEL, "v1", others, model)
    await cache.drain()
    assert sum([await aredis.exists(keys.prediction_key(MODEL, "v1", r)) for r in others]) == 0
    assert sample(registry, "servekit_cache_bypasses_total", model=MODEL, reason="off") == 20

    await cache.get_or_compute(MODEL, "v1", probes[:10], model)  # 10 probe misses, written
    await cache.drain()
    _, cached = await cache.get_or_compute(MODEL, "v1", probes[:10], model)
    assert cached.all()  # probes are served from the cache even while off
    assert cache.hit_rate(MODEL) == 0.5
    assert cache.state(MODEL) is CacheState.OFF  # min_off_s (60 s) has not passed

    clock.advance(61)
    await cache.get_or_compute(MODEL, "v1", probes[:1], model)
    assert cache.state(MODEL) is CacheState.ON
    assert sample(registry, "servekit_cache_enabled", model=MODEL) == 1
    _, cached = await cache.get_or_compute(MODEL, "v1", others[:3], model)
    assert not cached.any()
    await cache.drain()
    _, cached = await cache.get_or_compute(MODEL, "v1", others[:3], model)
    assert cached.all()


def _probe(row: np.ndarray, rate: float) -> bool:
    return int.from_bytes(keys.row_digest(row)[:4], "little") < int(rate * 2**32)


async def test_disabled_cache_never_calls_redis(aredis: aioredis.Redis, clock: FakeClock) -> None:
    cache = PredictionCache(aredis, settings(enabled=False), clock)
    model = Model()
    x = rows(2)
    await cache.get_or_compute(MODEL, "v1", x, model)
    _, cached = await cache.get_or_compute(MODEL, "v1", x, model)
    assert not cached.any() and model.rows_computed == 4
    assert await aredis.dbsize() == 0


# --- fail-open against a private redis-server the test starts and kills ----------------


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test may kill."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # blocks until the server says it is ready
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server exited before it was ready")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def private_client(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=private_redis.port, retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


async def test_slow_redis_call_is_skipped(
    private_client: aioredis.Redis, clock: FakeClock, registry: CollectorRegistry
) -> None:
    cache = PredictionCache(private_client, settings(timeout_ms=5.0), clock, registry=registry)
    other = aioredis.Redis(port=private_client.connection_pool.connection_kwargs["port"])
    model = Model()
    x = rows(2)
    await other.execute_command("CLIENT", "PAUSE", 80, "ALL")  # the server stalls 80 ms
    out, cached = await cache.get_or_compute(MODEL, "v1", x, model)
    assert not cached.any() and model.rows_computed == 2
    assert sample(registry, "servekit_cache_errors_total", model=MODEL, kind="timeout") >= 1
    await other.aclose()


async def test_fails_open_when_redis_dies_and_recovers_after_restart(
    private_redis: PrivateRedis,
    private_client: aioredis.Redis,
    clock: FakeClock,
    registry: CollectorRegistry,
) -> None:
    s = settings(timeout_ms=200.0, breaker_failures=3, breaker_cooldown_s=5.0)
    cache = PredictionCache(private_client, s, clock, registry=registry)
    model = Model()
    x = rows(4)
    served = 0
    for step in range(30):
        if step == 10:
            private_redis.kill()
        out, cached = await cache.get_or_compute(MODEL, "v1", x, model)
        np.testing.assert_array_equal(out, await Model()(x))
        assert step < 10 or not cached.any()
        served += 1
        await cache.drain()  # one step's calls at a time: the count below is exact
    assert served == 30
    assert cache.breaker.state is BreakerState.OPEN
    assert sample(registry, "servekit_cache_bypasses_total", model=MODEL, reason="breaker") > 0
    errors = sample(registry, "servekit_cache_errors_total", model=MODEL, kind="error")
    assert 3 <= errors <= 4  # the breaker stopped calling the dead server

    private_redis.start()  # same port, empty
    clock.advance(4.9)
    await cache.get_or_compute(MODEL, "v1", x, model)
    assert cache.breaker.state is BreakerState.OPEN  # still cooling down
    clock.advance(0.2)
    _, cached = await cache.get_or_compute(MODEL, "v1", x, model)  # the trial call
    assert cache.breaker.state is BreakerState.CLOSED and not cached.any()
    await cache.drain()
    _, cached = await cache.get_or_compute(MODEL, "v1", x, model)
    assert cached.all()
