"""The gateway's Redis-backed runtime: one client, the cache, the feature store, the
event log and the real-time worker, started once the server's event loop runs.

Redis is always the backend (``SERVEKIT_REDIS_URL``, else the embedded server is started);
there is no in-memory stand-in. A ``redis+cluster://`` URL gets Redis Cluster clients
(``services.state.redis_clients``). The serving-path client has a short socket timeout and no
retry on a timeout, so a slow or dead Redis costs a few milliseconds, never a failed
request. A dropped connection is retried once at once on a new one, so once Redis is back
no call fails on a connection pooled before it went away; when the embedded server died, the
real-time worker's retry loop starts it again (its append-only file brings the state back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from services.errors import InvalidInputError, UnavailableError
from services.settings import Settings
from services.state.cache import PredictionCache
from services.state.features import FeatureRegistry, FeatureStore
from services.state.realtime import EventLog, RealtimeWorker, validate_event
from services.state.redis_clients import connect
from services.state.redis_embedded import EmbeddedRedis

logger = logging.getLogger(__name__)


def redis_url(settings: Settings) -> str:
    """The configured Redis, or the embedded server (started if needed)."""
    if settings.redis.url:
        return settings.redis.url
    url = EmbeddedRedis(settings.redis.embedded_dir).start()
    logger.info("no SERVEKIT_REDIS_URL: using the embedded Redis at %s", url)
    return url


def reconnect_once() -> Retry:
    """One immediate retry when a connection drops, none on a timeout.

    After Redis restarts, every pooled connection is dead and fails on its next use: the
    retry opens a new one instead of failing that call. A slow or paused Redis is not
    waited for twice.
    """
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


async def restart_embedded(server: EmbeddedRedis) -> bool:
    """Start the embedded server again if it is down (off the event loop); whether it
    answers now."""
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, server.start)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        logger.warning("embedded Redis not restarted: %s", exc)
        return False
    return True


class RedisRuntime:
    """Everything the gateway keeps in Redis.

    Args:
        settings: servekit's settings.
        metrics_registry: the Prometheus registry the cache and store report into.
    """

    def __init__(self, settings: Settings, metrics_registry: Any) -> None:
        self.settings = settings
        self.url = redis_url(settings)
        self.embedded = None if settings.redis.url else EmbeddedRedis(settings.redis.embedded_dir)
        self.client = connect(
            self.url,
            socket_timeout=settings.redis.socket_timeout_ms / 1000,
            socket_connect_timeout=settings.redis.socket_timeout_ms / 1000,
            retry=reconnect_once(),
        )
        # The stream worker blocks on XREADGROUP, and control operations (rollout changes)
        # may wait on a busy Redis: they get their own, patient client.
        self._worker_client = connect(
            self.url,
            socket_timeout=settings.redis.worker_socket_timeout_ms / 1000,
            retry=reconnect_once(),
        )
        self.control_client = self._worker_client
        # Prediction log and feedback writes happen off the request path.
        self.background_client = connect(
            self.url,
            socket_timeout=settings.redis.background_socket_timeout_ms / 1000,
            retry=reconnect_once(),
        )
        # The rollout follower's pub/sub connection waits for notices: no socket timeout.
        self.pubsub_client = connect(self.url)
        self.views = FeatureRegistry.from_settings(settings.features)
        self.cache = (
            PredictionCache(self.client, settings.cache, registry=metrics_registry)
            if settings.cache.enabled
            else None
        )
        self.features = FeatureStore(
            self.client, self.views, settings.features, registry=metrics_registry
        )
        self.events = EventLog(self.client, settings.features)
        self.worker = RealtimeWorker(
            self._worker_client,
            self.views,
            settings.features,
            consumer=f"{socket.gethostname()}-{os.getpid()}",
            registry=metrics_registry,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the real-time worker (call from inside the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._work(), name="servekit-realtime"
            )

    async def _work(self) -> None:
        failures = 0
        while True:
            try:
                await self.worker.run_once(200, block_ms=1000)
                failures = 0
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream or its group was deleted (a flush, a trim): create it again.
                logger.warning("real-time worker: consumer group missing; recreating it")
                await self.worker.ensure_group()
            except (RedisError, OSError) as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    logger.warning(
                        "real-time worker: Redis failed (%d in a row): %s", failures, exc
                    )
                if self.embedded is not None:
                    await restart_embedded(self.embedded)
                await asyncio.sleep(min(2.0, 0.1 * failures))

    async def append_event(self, body: Any) -> str:
        """Validate and append one event (``POST /events``); returns its stream id."""
        if not isinstance(body, dict):
            raise InvalidInputError("an event must be a JSON object", field="body")
        event = validate_event(body, self.views)
        try:
            return await self.events.append(event)
        except (RedisError, OSError) as exc:
            # Not accepted, so not lost: the caller is told to send it again.
            raise UnavailableError(
                f"the event stream is unavailable ({type(exc).__name__}); retry", retry_after=1
            ) from exc

    async def health(self) -> dict[str, Any]:
        """Readiness detail: whether Redis answers (it degrades, never blocks readiness)."""
        try:
            await self.client.ping()
            return {"redis": "ok"}
        except (RedisError, OSError) as exc:
            return {"redis": f"unavailable: {type(exc).__name__}"}

    async def close(self) -> None:
        """Stop the worker and close the clients."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.features.aclose()
        for client in (
            self.client,
            self._worker_client,
            self.background_client,
            self.pubsub_client,
        ):
            await client.aclose()
