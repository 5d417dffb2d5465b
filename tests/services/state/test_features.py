"""Feature store against a real Redis: snapshots, one round trip, flags, events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.errors import InvalidInputError
from services.settings import FeatureSettings
from services.state import keys
from services.state.features import FeatureRegistry, FeatureStore, FeatureView, demo_views
from services.state.realtime import Event, EventLog, RealtimeWorker, validate_event

NOW = 1_800_000_000.0
WANTED = [
    "user_stats.avg_amount_30d",
    "user_stats.txn_count_30d",
    "merchant_risk.risk_score",
    "user_activity.last5_amount_mean",
    "user_activity.seconds_since_last_txn",
    "user_activity.txn_count_10m",
]


class FakeClock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def views() -> FeatureRegistry:
    return FeatureRegistry(demo_views())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fsettings() -> FeatureSettings:
    return FeatureSettings(load_chunk=50, version_grace_s=300, claim_min_idle_ms=0)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def store(
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
    registry: CollectorRegistry,
) -> FeatureStore:
    return FeatureStore(aredis, views, fsettings, clock, registry=registry)


def worker(
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
    name: str,
) -> RealtimeWorker:
    return RealtimeWorker(aredis, views, fsettings, name, clock, registry=CollectorRegistry())


def event(i: int, user: str = "u1", amount: float | None = None, ts: float | None = None) -> Event:
    return Event(
        event_id=f"e{i}",
        timestamp=NOW - 60 * (10 - i) if ts is None else ts,
        entities={"user": user, "merchant_category": "grocery"},
        values={"amount": float(10 * (i + 1)) if amount is None else amount},
    )


# --- configuration ----------------------------------------------------------------------


def test_registry_from_settings_defaults_and_json() -> None:
    demo = FeatureRegistry.from_settings(FeatureSettings())
    assert set(demo.views) == {"user_stats", "merchant_risk", "user_activity"}
    assert demo.entities == {"user", "merchant_category"}
    assert demo.event_fields == {"amount"}
    custom = FeatureRegistry.from_settings(
        FeatureSettings(
            views=[
                {
                    "name": "shop",
                    "entity": "shop",
                    "kind": "batch",
                    "max_staleness_s": 10,
                    "features": [{"name": "rating", "default": 3.0}],
                }
            ]
        )
    )
    assert custom.view("shop").spec("rating").default == 3.0


def test_bad_view_declarations_and_names_are_rejected(views: FeatureRegistry) -> None:
    with pytest.raises(ValueError, match="needs an agg"):
        FeatureView.model_validate(
            {"name": "rt", "entity": "user", "kind": "realtime", "max_staleness_s": 1,
             "features": [{"name": "x"}]}
        )  # fmt: skip
    with pytest.raises(InvalidInputError) as info:
        views.resolve(["user_stats.nope"])
    assert info.value.field == "user_stats.nope"


# --- batch views ------------------------------------------------------------------------


async def test_reads_loaded_values_defaults_and_missing_flags(store: FeatureStore) -> None:
    await store.load_batch_view(
        "user_stats", {"u1": {"avg_amount_30d": 42.5, "txn_count_30d": 7}}, NOW - 3600
    )
    await store.load_batch_view("merchant_risk", {"crypto": {"risk_score": 0.4}}, NOW - 3600)
    values, flags = await store.get_features(
        [{"user": "u1", "merchant_category": "crypto"}, {"user": "ghost"}],
        ["merchant_risk.risk_score", "user_stats.avg_amount_30d", "user_stats.txn_count_30d"],
    )
    assert values.dtype == np.float32
    assert values.tolist() == [[pytest.approx(0.4), 42.5, 7.0], [pytest.approx(0.03), 0.0, 0.0]]
    assert flags[0].ok
    assert flags[1].missing == {"user_stats", "merchant_risk"} and not flags[1].stale


async def test_view_never_loaded_serves_defaults(store: FeatureStore) -> None:
    values, flags = await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    assert values.tolist() == [[0.0]]
    assert flags[0].missing == {"user_stats"}


async def test_stale_batch_view_is_flagged_and_counted(
    store: FeatureStore, clock: FakeClock, registry: CollectorRegistry
) -> None:
    await store.load_batch_view("user_stats", {"u1": {"avg_amount_30d": 1.0}}, NOW)
    _, flags = await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    assert flags[0].ok
    clock.now = NOW + 36 * 3600 + 1
    values, flags = await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    assert values.tolist() == [[1.0]]  # stale values are still served, and flagged
    assert flags[0].stale == {"user_stats"}
    assert registry.get_sample_value("servekit_feature_stale_rows_total", {"view": "user_stats"})
    assert registry.get_sample_value(
        "servekit_feature_age_seconds", {"view": "user_stats"}
    ) == pytest.approx(36 * 3600 + 1)


async def test_load_rejects_unknown_feature(store: FeatureStore) -> None:
    with pytest.raises(InvalidInputError) as info:
        await store.load_batch_view("user_stats", {"u1": {"bogus": 1.0}}, NOW)
    assert info.value.field == "user_stats.bogus"


async def test_swap_retires_previous_version_after_grace(
    store: FeatureStore, aredis: aioredis.Redis
) -> None:
    first = await store.load_batch_view("user_stats", {"u1": {"avg_amount_30d": 1.0}}, NOW)
    second = await store.load_batch_view("user_stats", {"u1": {"avg_amount_30d": 2.0}}, NOW + 1)
    assert second.previous_version == first.version
    assert await store.current_version("user_stats") == second.version
    old_key = keys.feature_key("user_stats", first.version, "u1")
    assert 0 < await aredis.pttl(old_key) <= 300_000  # kept for in-flight readers, then gone
    assert await aredis.pttl(keys.feature_key("user_stats", second.version, "u1")) == -1
    assert await aredis.smembers(keys.view_versions_key("user_stats")) == {second.version.encode()}


async def test_reader_sees_old_or_new_snapshot_never_a_mix(store: FeatureStore) -> None:
    users = [f"u{i}" for i in range(1000)]
    await store.load_batch_view(
        "user_stats", {u: {"avg_amount_30d": 1.0, "txn_count_30d": 1} for u in users}, NOW
    )
    loading = True
    seen: list[float] = []

    async def read_until_loaded() -> None:
        rng = np.random.default_rng(0)
        while loading:
            picked = rng.choice(users, size=100, replace=False)
            values, _ = await store.get_features(
                [{"user": str(u)} for u in picked],
                ["user_stats.avg_amount_30d", "user_stats.txn_count_30d"],
            )
            assert len(set(values.ravel().tolist())) == 1, "a read mixed two versions"
            seen.append(float(values[0, 0]))

    readers = [asyncio.create_task(read_until_loaded()) for _ in range(4)]
    await store.load_batch_view(  # 20 pipelines of 50 rows: readers run in between
        "user_stats", {u: {"avg_amount_30d": 2.0, "txn_count_30d": 2} for u in users}, NOW + 1
    )
    loading = False
    await asyncio.gather(*readers)
    assert seen.count(1.0) >= 4  # reads overlapped the load
    values, _ = await store.get_features([{"user": "u7"}], ["user_stats.avg_amount_30d"])
    assert values.tolist() == [[2.0]]


class CountingConnection(aioredis.Connection):
    """A real connection that counts writes to the socket: one per round trip."""

    sends = 0

    async def send_packed_command(self, command: object, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)  # type: ignore[arg-type]


@pytest.fixture
async def counting_redis(redis_url: str, aredis: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, connection_class=CountingConnection)
    yield client
    await client.aclose()


async def test_batch_and_realtime_views_in_one_round_trip(
    counting_redis: aioredis.Redis,
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
) -> None:
    loader = FeatureStore(aredis, views, fsettings, clock, registry=CollectorRegistry())
    await loader.load_batch_view(
        "user_stats", {f"u{i}": {"avg_amount_30d": float(i)} for i in range(50)}, NOW
    )
    await loader.load_batch_view("merchant_risk", {"fuel": {"risk_score": 0.1}}, NOW)
    log = EventLog(aredis, fsettings)
    for i in range(3):
        await log.append(event(i, user="u3"))
    await worker(aredis, views, fsettings, clock, "w1").run_once()

    store = FeatureStore(counting_redis, views, fsettings, clock, registry=CollectorRegistry())
    requests = [{"user": f"u{i}", "merchant_category": "fuel"} for i in range(50)]
    await store.get_features(requests, WANTED)  # connects and loads the script
    CountingConnection.sends = 0
    values, flags = await store.get_features(requests, WANTED)
    assert CountingConnection.sends == 1
    assert values[3].tolist() == pytest.approx([3.0, 0.0, 0.1, 20.0, 480.0, 2.0])
    assert flags[3].ok and flags[4].missing == {"user_activity"}


async def test_script_cache_flush_is_survived(store: FeatureStore, aredis: aioredis.Redis) -> None:
    await store.load_batch_view("user_stats", {"u1": {"avg_amount_30d": 5.0}}, NOW)
    await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    await aredis.script_flush()
    values, _ = await store.get_features([{"user": "u1"}], ["user_stats.avg_amount_30d"])
    assert values.tolist() == [[5.0]]


# --- real-time views --------------------------------------------------------------------


def test_validate_event_accepts_epoch_and_iso(views: FeatureRegistry) -> None:
    e = validate_event(
        {"event_id": "x1", "timestamp": "2027-01-15T08:00:00+00:00",
         "entities": {"user": "u1"}, "amount": 12, "extra": "ignored"},
        views,
    )  # fmt: skip
    at = datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert e == Event("x1", at, {"user": "u1"}, {"amount": 12.0})
    generated = validate_event({"timestamp": NOW, "entities": {"user": "u1"}, "amount": 1.5}, views)
    assert len(generated.event_id) == 32
    assert Event.decode(generated.encode()) == generated


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"entities": {"user": "u1"}, "amount": 1.0}, "timestamp"),
        ({"timestamp": "yesterday", "entities": {"user": "u1"}, "amount": 1.0}, "timestamp"),
        (
            {"timestamp": "2027-01-15T08:00:00", "entities": {"user": "u1"}, "amount": 1},
            "timestamp",
        ),
        ({"timestamp": NOW, "entities": {"shop": "s1"}, "amount": 1.0}, "entities.shop"),
        ({"timestamp": NOW, "entities": {"user": 7}, "amount": 1.0}, "entities.user"),
        ({"timestamp": NOW, "entities": {}, "amount": 1.0}, "entities"),
        ({"timestamp": NOW, "entities": {"user": "u1"}, "amount": "12"}, "amount"),
        ({"timestamp": NOW, "entities": {"user": "u1"}, "amount": True}, "amount"),
        ({"timestamp": NOW, "entities": {"user": "u1"}}, "amount"),
        ({"event_id": 5, "timestamp": NOW, "entities": {"user": "u1"}, "amount": 1}, "event_id"),
    ],
)
def test_bad_events_name_the_field(views: FeatureRegistry, payload: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_event(payload, views)
    assert info.value.field == field


async def test_worker_derives_realtime_features(
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
    store: FeatureStore,
) -> None:
    log = EventLog(aredis, fsettings)
    for i in range(10):  # one event a minute, the last at NOW - 60
        await log.append(event(i))
    step = await worker(aredis, views, fsettings, clock, "w1").run_once(count=100)
    assert (step.read, step.applied) == (10, 10)
    rt = WANTED[3:]
    values, flags = await store.get_features([{"user": "u1"}], rt)
    # last 5 amounts: 60..100; last event 60 s ago; events inside 600 s: i = 1..9
    assert values.tolist() == [[80.0, 60.0, 9.0]]
    assert flags[0].ok
    clock.now = NOW + 120  # the worker has not run for 120 s: its view is stale
    values, flags = await store.get_features([{"user": "u1"}], rt)
    assert values.tolist() == [[80.0, 180.0, 7.0]]
    assert flags[0].stale == {"user_activity"}


async def test_consumer_killed_mid_stream_loses_no_event(
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
    store: FeatureStore,
) -> None:
    log = EventLog(aredis, fsettings)
    for i in range(10):
        await log.append(event(i))
    doomed = worker(aredis, views, fsettings, clock, "doomed")
    entries = await doomed.read(10)
    await doomed.apply(entries[:5])  # dies here: half applied, nothing acknowledged
    assert (await aredis.xpending(keys.event_stream_key(), fsettings.consumer_group))[
        "pending"
    ] == 10

    survivor = worker(aredis, views, fsettings, clock, "survivor")
    step = await survivor.run_once(count=100)
    assert (step.claimed, step.applied, step.duplicates) == (10, 5, 5)
    pending = await aredis.xpending(keys.event_stream_key(), fsettings.consumer_group)
    assert pending["pending"] == 0
    values, _ = await store.get_features([{"user": "u1"}], WANTED[3:])
    assert values.tolist() == [[80.0, 60.0, 9.0]]  # as if nothing had happened


async def test_replayed_and_invalid_entries_are_idempotent(
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
    store: FeatureStore,
) -> None:
    log = EventLog(aredis, fsettings)
    w = worker(aredis, views, fsettings, clock, "w1")
    await log.append(event(9))
    await w.run_once()
    before, _ = await store.get_features([{"user": "u1"}], WANTED[3:])
    await log.append(event(9))  # the same event delivered twice
    await aredis.xadd(keys.event_stream_key(), {"e": b"not json"})
    step = await w.run_once()
    assert (step.read, step.applied, step.duplicates, step.invalid) == (2, 0, 1, 1)
    after, _ = await store.get_features([{"user": "u1"}], WANTED[3:])
    assert after.tolist() == before.tolist() == [[100.0, 60.0, 1.0]]


async def test_out_of_order_event_keeps_latest_timestamp(
    aredis: aioredis.Redis,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
    store: FeatureStore,
) -> None:
    log = EventLog(aredis, fsettings)
    await log.append(event(9))  # NOW - 60
    await log.append(event(3))  # NOW - 420, arrives late
    await worker(aredis, views, fsettings, clock, "w1").run_once()
    values, _ = await store.get_features([{"user": "u1"}], WANTED[4:])
    assert values.tolist() == [[60.0, 2.0]]
