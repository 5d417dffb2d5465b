"""Real-time views against a real Redis: events, the consumer-group worker, replays."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from services.errors import InvalidInputError
from services.settings import FeatureSettings
from services.state import keys
from services.state.features import FeatureRegistry, FeatureStore
from services.state.realtime import Event, EventLog, validate_event
from tests.services.state.conftest import NOW, WANTED, FakeClock, event, worker


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
