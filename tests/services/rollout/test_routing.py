"""TrafficRouter and PredictionLog against a real Redis, with fake runners passed in."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.registry.schema import ModelSchema, TensorSpec
from services.registry.versions import ModelVersion
from services.rollout.feedback import FeedbackStore
from services.rollout.follower import RolloutFollower
from services.rollout.prediction_log import PredictionEvent, PredictionLog, ShadowPair
from services.rollout.routing import RouteDecision, TrafficRouter
from services.rollout.signing import AnsweredPrediction
from services.rollout.state import RolloutStore
from services.runner.feeds import Feeds
from services.state.keys import prediction_stream_key as predictions_key

SCHEMA = ModelSchema(
    kind="tensor",
    inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
    outputs=[TensorSpec(name="label", datatype="INT64", shape=[-1])],
)


def _mv(version: str) -> ModelVersion:
    return ModelVersion(
        name="m",
        version=version,
        sha256="0" * 64,
        size_bytes=1,
        schema=SCHEMA,
        created=datetime(2027, 1, 1, tzinfo=UTC),
    )


PRIMARY, CANDIDATE = _mv("1"), _mv("2")


async def _resolve(model: str, version: str) -> ModelVersion:
    return {"1": PRIMARY, "2": CANDIDATE}[version]


class FakeRunner:
    """Primary answers after ``primary_s``; the candidate raises, hangs or is slow."""

    def __init__(self, primary_s: float = 0.005, candidate: str = "ok", candidate_s: float = 0.0):
        self.primary_s = primary_s
        self.candidate = candidate
        self.candidate_s = candidate_s
        self.candidate_calls = 0

    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
        if mv.version == "1":
            await asyncio.sleep(self.primary_s)
            return {"label": np.zeros(rows, dtype=np.int64)}
        self.candidate_calls += 1
        if self.candidate == "raise":
            raise RuntimeError("candidate exploded")
        if self.candidate == "hang":
            await asyncio.Event().wait()
        await asyncio.sleep(self.candidate_s)
        return {"label": np.ones(rows, dtype=np.int64)}


@pytest.fixture
async def follower(aredis: aioredis.Redis) -> AsyncIterator[RolloutFollower]:
    store = RolloutStore(aredis)
    await store.set_primary("m", "1")
    async with RolloutFollower(aredis) as f:
        yield f


async def _set(follower: RolloutFollower, change: Any) -> None:
    state = await change
    await follower.wait_for(lambda s: s["m"].revision >= state.revision, timeout=2)


def _router(
    follower: RolloutFollower, client: aioredis.Redis, runner: Any, **kw: Any
) -> TrafficRouter:
    log = PredictionLog(client, flush_interval_s=0.01)
    return TrafficRouter(follower, runner, log, FeedbackStore(client), _resolve, **kw)


async def test_decide_is_sticky_per_user_and_follows_the_mode(
    aredis: aioredis.Redis, follower: RolloutFollower
) -> None:
    router = _router(follower, aredis, FakeRunner())
    assert router.decide("unknown", "u1", "r1") == RouteDecision(None, "primary", "user")
    off = router.decide("m", None, "r1")
    assert (off.version, off.variant, off.unit) == ("1", "primary", "request")
    assert off.shadow_version is None

    store = RolloutStore(aredis)
    await _set(follower, store.start_shadow("m", "2"))
    shadow = router.decide("m", "u1", "r1")
    assert (shadow.version, shadow.variant, shadow.shadow_version) == ("1", "primary", "2")

    await _set(follower, store.start_canary("m", "2", 30.0))
    state = follower.get("m")
    assert state is not None
    users = [f"user-{i}" for i in range(2000)]
    first = {u: router.decide("m", u, f"req-{u}-a") for u in users}
    again = {u: router.decide("m", u, f"req-{u}-b") for u in users}
    assert all(first[u] == again[u] for u in users)  # same user, same variant, any request
    on_candidate = [u for u in users if first[u].variant == "candidate"]
    assert 0.25 < len(on_candidate) / len(users) < 0.35
    assert {first[u].version for u in on_candidate} == {"2"}
    assert {d.experiment_id for d in first.values()} == {state.experiment_id}
    assert {d.unit for d in first.values()} == {"user"} and first[users[0]].shadow_version is None

    await _set(follower, store.set_percent("m", 60.0))  # raising keeps everyone there
    assert all(router.decide("m", u, "r").variant == "candidate" for u in on_candidate)

    await _set(follower, store.promote("m"))
    done = router.decide("m", "u1", "r1")
    assert (done.version, done.variant, done.experiment_id) == ("2", "primary", None)


async def _caller_latencies(router: TrafficRouter, runner: FakeRunner, n: int) -> list[float]:
    """What a gateway does per request: infer on the primary, then mirror; caller's time."""
    feeds = {"x": np.zeros((1, 2), dtype=np.float32)}
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        outputs = await runner.infer(PRIMARY, feeds, 1)
        assert outputs["label"].tolist() == [0]  # the caller always gets the primary
        router.shadow(PRIMARY, "2", feeds, 1, f"r{i}", outputs, 5.0)
        out.append(time.perf_counter() - t0)
    return out


@pytest.mark.parametrize(
    ("behaviour", "counter"),
    [("raise", "shadow_errors"), ("hang", "shadow_timeouts"), ("slow", "shadow_completed")],
)
async def test_a_bad_shadow_candidate_changes_nothing_for_callers(
    aredis: aioredis.Redis, follower: RolloutFollower, behaviour: str, counter: str
) -> None:
    n, primary_s = 30, 0.005
    base = [await _timed(FakeRunner(primary_s)) for _ in range(n)]  # no shadow at all

    # A 3x slower candidate, one that never answers (cut at the timeout), one that raises.
    runner = FakeRunner(primary_s, candidate=behaviour, candidate_s=3 * primary_s)
    router = _router(follower, aredis, runner, shadow_timeout_s=0.2, shadow_concurrency=4)
    await router.start()
    try:
        seen = await _caller_latencies(router, runner, n)
        await router.drain(timeout=5)
        await router._log.flush()
    finally:
        await router.close()
    assert statistics.median(seen) < statistics.median(base) + 0.003
    # Never held up by a hung candidate (cut at 200 ms); a slow one shows in the median.
    assert max(seen) < primary_s + 0.1
    assert getattr(router, counter) == n and router.shadow_sent == n
    assert router.shadow_dropped == 0
    pairs = await PredictionLog(aredis).read_shadow("m")
    assert len(pairs) == n
    _, pair = pairs[0]
    assert pair.primary_output == {"label": [0]} and pair.primary_version == "1"
    if behaviour == "slow":
        assert pair.candidate_output == {"label": [1]} and pair.candidate_error == ""
        assert pair.candidate_latency_ms is not None and pair.candidate_latency_ms >= 14
    else:
        assert pair.candidate_output is None and pair.candidate_latency_ms is None
        assert pair.candidate_error.startswith("timeout" if behaviour == "hang" else "RuntimeError")


async def _timed(runner: FakeRunner) -> float:
    t0 = time.perf_counter()
    await runner.infer(PRIMARY, {"x": np.zeros((1, 2), dtype=np.float32)}, 1)
    return time.perf_counter() - t0


async def test_a_full_shadow_queue_drops_and_counts(
    aredis: aioredis.Redis, follower: RolloutFollower
) -> None:
    runner = FakeRunner(candidate="hang")
    router = _router(follower, aredis, runner, shadow_queue=4, shadow_concurrency=1)
    await router.start()
    feeds = {"x": np.zeros((1, 2), dtype=np.float32)}
    try:
        # No await in between: the worker cannot take any, so the queue holds 4.
        accepted = [
            router.shadow(PRIMARY, CANDIDATE, feeds, 1, f"r{i}", {}, 1.0) for i in range(20)
        ]
        assert accepted == [True] * 4 + [False] * 16
        assert (router.shadow_sent, router.shadow_dropped, router.shadow_queued) == (4, 16, 4)
    finally:
        await router.close()


async def test_record_logs_the_event_and_counts_the_variant(
    aredis: aioredis.Redis, follower: RolloutFollower
) -> None:
    router = _router(follower, aredis, FakeRunner())
    await _set(follower, RolloutStore(aredis).start_canary("m", "2", 100.0))
    await router.start()
    decision = router.decide("m", "u1", "req-1")
    assert decision.variant == "candidate"
    router.record(decision, CANDIDATE, "req-1", 4.5, False, np.array([[1.5, 2.0]]), [{"label": 1}])
    await router.drain()
    await router.close()  # flushes the log
    ((_, event),) = await PredictionLog(aredis).read("m")
    assert event == PredictionEvent(
        model="m", version="2", variant="candidate", unit="user", request_id="req-1",
        latency_ms=4.5, error=False, inputs=[[1.5, 2.0]], output=[{"label": 1}],
        experiment_id=decision.experiment_id, ts=event.ts,
    )  # fmt: skip
    assert decision.experiment_id is not None
    stats = await FeedbackStore(aredis).variant_stats("m", decision.experiment_id)
    assert stats["candidate"].predictions == 1 and stats["candidate"].version == "2"
    # Its outcome (attributed from its signed id) lands on the counters the router wrote.
    answered = AnsweredPrediction("req-1", "m", "candidate", "2", decision.experiment_id, 0)
    await FeedbackStore(aredis, clock=lambda: 1.0).record_outcome(answered, 1)
    stats = await FeedbackStore(aredis).variant_stats("m", decision.experiment_id)
    assert (stats["candidate"].predictions, stats["candidate"].outcomes) == (1, 1)
    assert router.assignments == {("m", "user"): 1}


async def test_log_reads_after_an_id_and_caps_the_stream(aredis: aioredis.Redis) -> None:
    log = PredictionLog(aredis, maxlen=100, clock=lambda: 123.0, batch_size=64)
    for i in range(1000):
        log.append(PredictionEvent("m", "1", "primary", "request", f"r{i}", 1.0, output=i))
    assert await log.flush() == 1000 and log.written == 1000
    length = await aredis.xlen(predictions_key("m"))
    assert 100 <= length < 1000  # MAXLEN ~ trims whole nodes
    events = await log.read("m", count=5)
    assert events[0][1].ts == 123.0
    after = await log.read("m", events[1][0], count=2)
    assert [e.output for _, e in after] == [events[2][1].output, events[3][1].output]
    assert await log.last_id("m") == (await log.read("m", events[-1][0], 10_000))[-1][0]


async def test_log_fails_open_when_redis_is_down() -> None:
    dead = aioredis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    log = PredictionLog(dead, flush_interval_s=0.01, buffer_limit=3)
    await log.start()
    pair = ShadowPair("r", "m", "1", "2", {"y": [1]}, None, 1.0, None, "boom")
    assert all([log.append(pair) for _ in range(3)])
    assert log.append(pair) is False  # buffer full: dropped, counted, no exception
    await log.close()
    assert (log.written, log.dropped, log.buffered) == (0, 4, 0)
    assert log.flush_errors >= 1
    await dead.aclose()


async def test_record_counts_requests_per_assignment_unit(
    aredis: aioredis.Redis, follower: RolloutFollower
) -> None:
    router = _router(follower, aredis, FakeRunner(), log_sample=0.0)
    for user_id, request_id in (("u1", "r1"), (None, "r2"), (None, "r3")):
        decision = router.decide("m", user_id, request_id)
        router.record(decision, PRIMARY, request_id, 1.0, False, None, None)
    assert router.assignments == {("m", "user"): 1, ("m", "request"): 2}
    await router.drain()
    await router.close()


async def test_the_candidate_logs_what_the_primary_logged(
    aredis: aioredis.Redis, follower: RolloutFollower
) -> None:
    class ExtraOutputs(FakeRunner):
        async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
            out = await super().infer(mv, feeds, rows)
            return {**out, "debug": np.zeros(rows)} if mv.version == "2" else out

    runner = ExtraOutputs()
    router = _router(follower, aredis, runner)
    await router.start()
    try:
        feeds = {"x": np.zeros((1, 2), dtype=np.float32)}
        router.shadow(PRIMARY, "2", feeds, 1, "r-like", {"label": [0]}, float("nan"))
        await router.drain(timeout=5)
        await router._log.flush()
    finally:
        await router.close()
    (_, pair), *_ = await PredictionLog(aredis).read_shadow("m")
    assert pair.candidate_output == {"label": [1]}
    assert np.isnan(pair.primary_latency_ms)  # answered from the cache: no runner time
