"""The materialize flow killed (SIGKILL) in the middle of loading a batch view.

A load writes a whole new version beside the current one and swaps the view's pointer in
one command, and readers resolve the pointer and read its rows in one script: a load
killed half-way leaves the old snapshot current (the partial version is never seen), and
the re-run loads a complete version and retires the partial one.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import redis.asyncio as aioredis
from prefect.settings import PREFECT_API_URL

from flows.materialize import materialize
from services.settings import FeatureSettings
from services.state import keys
from services.state.features import FeatureRegistry, FeatureStore
from tests.flows.faults import kill, record_fault, spawn, wait_for

AS_OF = datetime(2027, 1, 31, 2, 0, tzinfo=UTC)
USERS = 20_000
SAMPLE = [f"u{i}" for i in range(0, USERS, 97)]  # 207 users across the whole view


def _source(path: Path, amount: float) -> str:
    """Two transactions of ``amount`` for each of USERS users, inside the window."""
    users = [f"u{i}" for i in range(USERS)] * 2
    pd.DataFrame(
        {
            "user_id": users,
            "amount": amount,
            "merchant_category": "grocery",
            "timestamp": AS_OF - timedelta(days=1),
            "is_fraud": False,
        }
    ).to_csv(path, index=False)
    return str(path)


async def _read(store: FeatureStore) -> set[float]:
    """The distinct average amounts one request over SAMPLE users reads (one script)."""
    values, _ = await store.get_features(
        [{"user": u} for u in SAMPLE], ["user_stats.avg_amount_30d"]
    )
    return {float(v) for v in np.asarray(values)[:, 0]}


async def _versions(client: aioredis.Redis) -> set[str]:
    members = await client.smembers(keys.view_versions_key("user_stats"))
    return {v.decode() if isinstance(v, bytes) else str(v) for v in members}


async def test_a_load_killed_halfway_never_shows_readers_a_mix_and_a_rerun_completes(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    settings = FeatureSettings()
    store = FeatureStore(aredis, FeatureRegistry.from_settings(settings), settings)
    old_source, new_source = (
        _source(tmp_path / "old.csv", 10.0),
        _source(tmp_path / "new.csv", 20.0),
    )
    first = await materialize(source=old_source, as_of=AS_OF, redis_url=redis_url)
    old = first["user_stats"].version
    assert await _read(store) == {10.0}

    log = tmp_path / "materialize-child.log"
    args = {"source": new_source, "as_of": AS_OF.isoformat(), "redis_url": redis_url}
    child = spawn(
        ["tests.flows.flow_child", "materialize", json.dumps(args)],
        log,
        # One entity per pipeline: a load of 20 000 users lasts long enough to be cut.
        {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "SERVEKIT_FEATURES_LOAD_CHUNK": "1"},
    )
    reads: list[set[float]] = []
    try:

        async def partial() -> str | None:
            reads.append(await _read(store))
            for version in await _versions(aredis) - {old}:
                if await aredis.scard(keys.view_index_key("user_stats", version)) >= 2000:
                    return version
            return None

        half = await wait_for(
            partial, timeout_s=180, what="a half-written version", proc=child, log=log
        )
        kill(child)
    finally:
        kill(child)
    written = await aredis.scard(keys.view_index_key("user_stats", half))
    assert 0 < written < USERS  # cut half-way
    assert await store.current_version("user_stats") == old  # the old snapshot stays current
    assert await _read(store) == {10.0}

    started = time.monotonic()
    rerun = asyncio.create_task(materialize(source=new_source, as_of=AS_OF, redis_url=redis_url))
    while not rerun.done():  # every read during the re-run: all old or all new, never both
        reads.append(await _read(store))
        await asyncio.sleep(0.01)
    results = await rerun
    rerun_s = time.monotonic() - started
    new = results["user_stats"]
    assert new.rows == USERS and new.version not in (old, half)
    assert new.previous_version == old
    assert await _read(store) == {20.0}
    assert all(r in ({10.0}, {20.0}) for r in reads), [r for r in reads if len(r) > 1]
    # The half-written version is retired with the replaced one: off the list, expiring.
    assert await _versions(aredis) == {new.version}
    sample_key = keys.feature_key("user_stats", half, SAMPLE[0])
    assert await aredis.ttl(sample_key) in (-2, *range(1, settings.version_grace_s + 1))
    record_fault(
        "materialize_sigkill_midload",
        fault="the materialize flow's process SIGKILLed half-way through loading a view",
        lost=sum(1 for r in reads if len(r) > 1),
        lost_unit="reads seeing a mix of versions",
        recover_s=round(rerun_s, 3),
        rows_written_before_kill=written,
        rows_in_view=USERS,
        reads_during_fault=len(reads),
        reads_with_mixed_versions=sum(1 for r in reads if len(r) > 1),
        seconds_of_rerun_to_a_complete_view=round(rerun_s, 3),
        outcome="re-run loaded a complete version; the partial one is retired",
    )
