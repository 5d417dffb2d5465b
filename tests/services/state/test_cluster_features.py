"""The feature store's tests (batch loads, one-call reads, real-time worker) on a Redis
Cluster: the same tests, with ``aredis`` a cluster client."""

from __future__ import annotations

from tests.services.state.cluster_fixtures import aredis  # noqa: F401
from tests.services.state.test_feature_loads import *  # noqa: F403
from tests.services.state.test_feature_reads import *  # noqa: F403
from tests.services.state.test_features import *  # noqa: F403
from tests.services.state.test_realtime import *  # noqa: F403

# Counts the sends of one single-server connection; on a cluster a read is one call per
# view (see test_cluster_reads_are_one_call_per_view).
del test_batch_and_realtime_views_in_one_round_trip  # noqa: F821
