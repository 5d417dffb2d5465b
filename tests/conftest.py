"""Shared fixtures: a real Redis (``--redis-url``), cleaned per test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
# Keep BentoML's stores inside the checkout, as the Makefile does (set before bentoml loads).
os.environ.setdefault("BENTOML_HOME", str(ROOT / ".servekit" / "bentoml"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default="redis://127.0.0.1:6379/9",
        help="A Redis the tests may flush (default: db 9 of the local server).",
    )
    parser.addoption(
        "--redis-cluster-port",
        type=int,
        default=7000,
        help="First of three loopback ports for the Redis Cluster the tests start.",
    )


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    url: str = request.config.getoption("--redis-url")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.ConnectionError as exc:  # pragma: no cover - environment problem
        pytest.exit(f"no Redis answers at {url} ({exc}); start one or pass --redis-url")
    return url


@pytest.fixture(scope="session")
def serving_redis_url(redis_url: str) -> str:
    """The database the test gateways (`bentoml serve`) use: two after ``--redis-url``'s.

    A gateway follows rollout state over pub/sub for its whole life; unit tests that write
    and flush rollout states in the shared database must not steer it.
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(redis_url)
    db = int(parts.path.strip("/") or 0)
    url = urlunsplit(parts._replace(path=f"/{(db + 2) % 16}"))
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client on a flushed database."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on a flushed database."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


# -- a real three-master Redis Cluster on loopback ports, started once per test run -------


def _wait_cluster_ok(ports: list[int], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            infos = [redis.Redis(port=p).cluster("info") for p in ports]
        except redis.RedisError:
            infos = []
        if infos and all(i.get("cluster_state") == "ok" for i in infos):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the Redis Cluster on ports {ports} is not ok after {timeout_s}s")


@pytest.fixture(scope="session")
def redis_cluster_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A ``redis+cluster://`` URL of a fresh three-master cluster (no replicas)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for the Redis Cluster tests")
    base: int = request.config.getoption("--redis-cluster-port")
    ports = [base, base + 1, base + 2]
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is taken: pass a free --redis-cluster-port")
    root = tmp_path_factory.mktemp("redis-cluster")
    for port in ports:
        subprocess.run(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
             "--dir", str(root), "--save", "", "--appendonly", "no",
             "--logfile", str(root / f"{port}.log")],
            check=True,
        )  # fmt: skip
    try:
        for port in ports:
            _wait_ping(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        _wait_cluster_ok(ports)
        yield f"redis+cluster://127.0.0.1:{base}"
    finally:
        for port in ports:
            with contextlib.suppress(redis.RedisError):
                redis.Redis(port=port).shutdown(nosave=True)


def _wait_ping(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=0.5).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- servekit fixtures: a trained demo registry and real BentoML servers ------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def fraud_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local model store holding the demo fraud model (trained once per session)."""
    from flows.recipes.demo_models import ensure_demo_models
    from services.registry.stores import LocalStore
    from services.registry.versions import ModelRegistry

    root = tmp_path_factory.mktemp("model_store")
    ensure_demo_models(ModelRegistry(LocalStore(root)))
    return root


INGEST_TOKEN = "test-ingest-token-0123456789abcdef"  # the gateway fixture's; 32+ characters
INGEST = {"Authorization": f"Bearer {INGEST_TOKEN}"}
# Gateways that must sign request ids alike (replicas of one deployment) share this key.
REQUEST_ID_SECRET = "test-request-id-secret-0123456789abcdef"


class ServerProcess:
    """A `bentoml serve` of the servekit gateway in a subprocess, bound to ``host``."""

    def __init__(
        self, env: dict[str, str], *, timeout_s: float = 90.0, host: str = "127.0.0.1"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(env.get("SERVEKIT_TEST_LOG", f"/tmp/servekit-test-{self.port}.log"))
        full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "services.service:Gateway",
             "--host", host, "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="session")
def gateway(fraud_store: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    """The colocated gateway serving the demo fraud model over real HTTP."""
    server = ServerProcess(
        {
            "SERVEKIT_MODEL_STORE": str(fraud_store),
            "SERVEKIT_REDIS_URL": serving_redis_url,
            "SERVEKIT_MAX_RECORDS": "64",
            "SERVEKIT_MAX_BODY_BYTES": "65536",
            "SERVEKIT_INGEST_TOKEN": INGEST_TOKEN,
            "SERVEKIT_REQUEST_ID_SECRET": REQUEST_ID_SECRET,
        }
    )
    yield server
    server.stop()
