"""The feature store's tests (batch loads, one-call reads, real-time worker) on a Redis
Cluster: the same tests, with ``aredis`` a cluster client."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster

from services.settings import FeatureSettings
from services.state.features import FeatureRegistry, FeatureStore
from tests.services.state import cluster_fixtures
from tests.services.state.conftest import WANTED, FakeClock, load_sample
from tests.services.state.test_feature_loads import *  # noqa: F403
from tests.services.state.test_feature_reads import *  # noqa: F403
from tests.services.state.test_features import *  # noqa: F403
from tests.services.state.test_realtime import *  # noqa: F403

aredis = cluster_fixtures.aredis  # this module's tests run on the cluster

# Counts the sends of one single-server connection; on a cluster a read is one call per
# view (see test_cluster_reads_are_one_call_per_view).
del test_batch_and_realtime_views_in_one_round_trip  # noqa: F821


async def test_cluster_reads_are_one_call_per_view(
    aredis: RedisCluster,
    views: FeatureRegistry,
    fsettings: FeatureSettings,
    clock: FakeClock,
) -> None:
    await load_sample(aredis, views, fsettings, clock)
    # Each view's keys sit in its tag's slot; the views spread over more than one node.
    nodes = set()
    for view in views.views:
        slots = {
            int(await aredis.cluster_keyslot(k))
            async for k in aredis.scan_iter(match=f"*{{{view}}}*".encode())
        }
        assert len(slots) == 1, view
        nodes.add(aredis.get_node_from_key(f"{{{view}}}").name)
    assert len(nodes) > 1

    store = FeatureStore(aredis, views, fsettings, clock, registry=CollectorRegistry())
    requests = [{"user": f"u{i}", "merchant_category": "fuel"} for i in range(50)]
    await store.get_features(requests, WANTED)  # loads the script
    before = await _evalsha_calls(aredis)
    values, flags = await store.get_features(requests, WANTED)
    after = await _evalsha_calls(aredis)
    # One script call per view, on the view's node: three calls over two nodes.
    assert sum(after.values()) - sum(before.values()) == len(views.views)
    assert sum(after[n] > before.get(n, 0) for n in after) == len(nodes)
    assert values[3].tolist() == pytest.approx([3.0, 0.0, 0.1, 20.0, 480.0, 2.0])
    assert flags[3].ok and flags[4].missing == {"user_activity"}


async def _evalsha_calls(client: RedisCluster) -> dict[str, int]:
    """EVALSHA calls served so far, per primary (the server's own command statistics)."""
    calls = {}
    for node in client.get_primaries():
        stats = await client.info("commandstats", target_nodes=node)
        calls[node.name] = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return calls
