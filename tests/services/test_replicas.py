"""Several gateway replicas (`bentoml serve` processes, each with two workers) sharing one
Redis, over real HTTP: a rollout change reaches every replica within a second, a user gets
the same variant from any replica, one replica's cache entries are hits on another, and the
real-time worker's consumer group shares the event stream without loss or double counting.
The same runs on a single Redis and on a three-master Redis Cluster."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from redis.cluster import RedisCluster

from services.rollout.assignment import bucket
from services.state import keys
from services.state.redis_clients import cluster_node_url
from tests.conftest import REQUEST_ID_SECRET, ServerProcess
from tests.services import test_rollout_http

pytestmark = pytest.mark.slow

TOKEN = "replica-token-0123456789abcdef-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}
REPLICAS = 2
two_versions = test_rollout_http.two_versions  # fraud versions 1 and 2


def sync_client(url: str) -> redis.Redis | RedisCluster:
    node = cluster_node_url(url)
    return redis.Redis.from_url(url) if node is None else RedisCluster.from_url(node)


@pytest.fixture(scope="module", params=["redis", "cluster"])
def shared_redis(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The Redis the replicas share, flushed: a database of its own, or the cluster."""
    if request.param == "cluster":
        url: str = request.getfixturevalue("redis_cluster_url")
        RedisCluster.from_url(cluster_node_url(url)).flushdb(target_nodes=RedisCluster.PRIMARIES)
        return url
    # Three after --redis-url's database: no other test gateway follows its notices.
    parts = urlsplit(redis_url)
    db = (int(parts.path.strip("/") or 0) + 3) % 16
    url = urlunsplit(parts._replace(path=f"/{db}"))
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def replicas(two_versions: Path, shared_redis: str) -> Iterator[list[ServerProcess]]:
    env = {
        "SERVEKIT_MODEL_STORE": str(two_versions),
        "SERVEKIT_REDIS_URL": shared_redis,
        "SERVEKIT_ADMIN_TOKEN": TOKEN,
        "SERVEKIT_WORKERS": "2",
        # Every worker and replica verifies the request ids the others sign.
        "SERVEKIT_REQUEST_ID_SECRET": REQUEST_ID_SECRET,
    }
    servers: list[ServerProcess] = []
    try:
        for _ in range(REPLICAS):
            servers.append(ServerProcess(env, timeout_s=180))
        yield servers
    finally:
        for server in servers:
            server.stop()


def admin(server: ServerProcess, **body: object) -> dict[str, object]:
    resp = httpx.post(f"{server.url}/admin/rollout", json={"model": "fraud", **body}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


def predict(server: ServerProcess, user: str | None = None, **inputs: object) -> dict[str, object]:
    payload: dict[str, object] = {"model": "fraud", "inputs": [{**GOOD, **inputs}]}
    if user is not None:
        payload["user_id"] = user
    resp = httpx.post(f"{server.url}/predict", json=payload, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_everywhere(
    servers: list[ServerProcess],
    user: str,
    version: str,
    within: float,
    started: float | None = None,
    streak: int = 8,
) -> float:
    """Seconds from ``started`` (default: now) until every replica served ``version`` to
    ``user`` for good: the send time of the first request of a run of ``streak`` right
    answers (spread over its workers), latest over the replicas. Fails after ``within``."""
    started = time.monotonic() if started is None else started
    since: dict[int, float | None] = dict.fromkeys(range(len(servers)))
    runs = dict.fromkeys(range(len(servers)), 0)
    while any(n < streak for n in runs.values()):
        for i, server in enumerate(servers):
            if runs[i] >= streak:
                continue
            sent = time.monotonic()
            if predict(server, user)["version"] == version:
                since[i] = since[i] if runs[i] else sent
                runs[i] += 1
            else:
                runs[i] = 0
                assert sent - started <= within, f"replica {i} not on {version} in {within}s"
    return max(float(t) for t in since.values()) - started  # type: ignore[arg-type]


def test_a_rollout_change_reaches_every_replica_within_a_second(
    replicas: list[ServerProcess],
) -> None:
    first, *others = replicas
    admin(first, action="set-primary", version="1")
    wait_everywhere(replicas, "warm-up", "1", within=10.0)  # every worker has started
    changes = [
        ({"action": "canary", "candidate": "2", "percent": 100}, "2"),
        ({"action": "rollback", "reason": "replica test"}, "1"),
        ({"action": "canary", "candidate": "2", "percent": 100}, "2"),
        ({"action": "rollback", "reason": "replica test over"}, "1"),
    ]
    for n, (change, version) in enumerate(changes):
        # Changed through one replica; each replica learns it from Redis.
        started = time.monotonic()
        admin(others[-1] if n % 2 else first, **change)
        took = wait_everywhere(replicas, f"u{n}", version, within=1.0, started=started)
        assert took <= 1.0, took


def test_a_user_gets_the_same_variant_from_any_replica(replicas: list[ServerProcess]) -> None:
    state = admin(replicas[0], action="canary", candidate="2", percent=50)["state"]
    salt = str(state["salt"])  # type: ignore[index]
    on_candidate = next(f"s{i}" for i in range(1000) if bucket(salt, f"s{i}") < 5000)
    wait_everywhere(replicas, on_candidate, "2", within=5.0)
    seen: dict[str, set[str]] = {}
    for i, server in zip(range(120), itertools.cycle(replicas)):
        user = f"sticky-{i % 30}"
        seen.setdefault(user, set()).add(str(predict(server, user)["version"]))
    assert all(len(v) == 1 for v in seen.values()), seen
    assert {"1", "2"} == set().union(*seen.values())  # both variants are served
    admin(replicas[0], action="rollback", reason="replica test over")
    wait_everywhere(replicas, on_candidate, "1", within=5.0)


def test_one_replicas_cache_entries_are_hits_on_another(replicas: list[ServerProcess]) -> None:
    for i in range(10):
        amount = 1000.0 + 0.5 * i + time.time() % 1000  # an input no one asked before
        writer, reader = replicas[i % 2], replicas[(i + 1) % 2]
        first = predict(writer, amount=amount)
        assert first["predictions"][0]["cached"] is False  # type: ignore[index]
        again = predict(reader, amount=amount)
        assert again["predictions"][0]["cached"] is True  # type: ignore[index]
        assert again["predictions"] == [{**first["predictions"][0], "cached": True}]  # type: ignore[index]


def test_events_are_applied_once_across_replicas(
    replicas: list[ServerProcess], shared_redis: str
) -> None:
    n, user, now = 60, f"ev-{time.time_ns()}", time.time()
    amounts = [float(i + 1) for i in range(n)]
    for i, server in zip(range(n), itertools.cycle(replicas)):
        body = {"timestamp": now - n + i, "entities": {"user": user}, "amount": amounts[i]}
        resp = httpx.post(f"{server.url}/events", json=body)
        assert resp.status_code == 202, resp.text
    r = sync_client(shared_redis)
    window = keys.realtime_window_key("user_activity", user)
    deadline = time.monotonic() + 20
    while r.zcard(window) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.zcard(window) == n  # none lost
    # Every entry was delivered to the group once and acknowledged.
    stream = keys.event_stream_key()
    while r.xpending(stream, "servekit-features")["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    (group,) = r.xinfo_groups(stream)
    assert (group["entries-read"], group["lag"], group["pending"]) == (n, 0, 0)
    # None applied twice: the last-5 list (newest applied first) holds five distinct values.
    last = [
        float(x) for x in r.lrange(keys.realtime_last_key("user_activity", user, "amount"), 0, -1)
    ]
    assert len(last) == len(set(last)) == 5 and set(last) <= set(amounts)
    # Several workers share the group: each replica's worker has a consumer in it.
    assert len(r.xinfo_consumers(stream, "servekit-features")) >= REPLICAS
