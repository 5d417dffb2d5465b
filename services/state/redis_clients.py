"""Redis clients for a single server or a Redis Cluster, from one URL.

``redis://``, ``rediss://`` and ``unix://`` URLs name one server; ``redis+cluster://`` and
``rediss+cluster://`` name any node of a Redis Cluster (the client discovers the others).
Code that needs to know which kind it holds asks :func:`is_cluster`: on a cluster, keys in
different slots cannot meet in one command or script, so such calls are split per slot.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.cluster import key_slot

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_node_url(url: str) -> str | None:
    """The plain ``redis://`` URL of a cluster URL's node; None for a single-server URL."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}{sep}{rest}" if plain and sep else None


class _Cluster(RedisCluster):
    """``RedisCluster`` that discovers the cluster before a command's routing is resolved.

    redis-py resolves a command's routing (which may query the startup node) before it
    initialises; concurrent first commands then race the discovery, which closes the
    startup node's connections under them (``'NoneType' object has no attribute
    'writelines'``). Initialising first, under the client's own lock, avoids it.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    def pubsub(self, *args: Any, **kwargs: Any) -> ClusterPubSub:
        return _ClusterPubSub(self, *args, **kwargs)


class _ClusterPubSub(ClusterPubSub):
    """Pub/sub that discovers the cluster first (redis-py looks the channel's slot up in a
    slot map that is empty until the client's first command)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.cluster.initialize()
        return await super().execute_command(*args, **kwargs)


def connect(url: str, **kwargs: Any) -> Any:
    """An asyncio client for ``url``: a ``RedisCluster`` for a cluster URL, else ``Redis``.

    ``kwargs`` are connection options (socket timeouts, retry) given to either.
    """
    node = cluster_node_url(url)
    if node is None:
        return aioredis.Redis.from_url(url, **kwargs)
    return _Cluster.from_url(node, **kwargs)


def connect_sync(url: str, **kwargs: Any) -> Any:
    """A blocking client for ``url`` (the CLI's): ``redis.cluster.RedisCluster`` for a
    cluster URL, else ``redis.Redis``."""
    node = cluster_node_url(url)
    if node is None:
        return redis.Redis.from_url(url, **kwargs)
    return redis.cluster.RedisCluster.from_url(node, **kwargs)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (its pipelines route per slot)."""
    return isinstance(client, RedisCluster)


def slot_of(key: bytes | str) -> int:
    """The cluster slot of ``key`` (its hash tag's, when it has one)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))
