"""The BentoML services: the public ``Gateway`` and, for the split shape, ``ModelRunner``.

Thin by design (STYLE.md): each class wires plain objects in ``__init__`` and mounts the
gateway's ASGI app; the logic lives in ``services.request.predictor``, ``services.runner.pool`` and
``services.runner.batching``. ``SERVEKIT_SHAPE`` picks the shape ``bentoml serve
services.service:Gateway`` runs:

- colocated (default): the model pool and the adaptive batcher live in the gateway's
  process (4-10x cheaper per request than a second hop, shared/MEASURED.md);
- split: the gateway validates and routes, and a ``ModelRunner`` service, reached with
  ``bentoml.depends`` and batching with BentoML's batchable API, runs the models in its
  own process (for GPU models that need their own process and scaling).

Both services carry the trims measured in shared/MEASURED.md: tracing excluded, access
log and BentoML's metrics off (servekit exports its own on ``/metrics``), the
TimeoutMiddleware timer fixed (``services.edge.bentoml_fixes``) and ``gc.freeze()`` after load.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import bentoml
import numpy as np
from redis.exceptions import RedisError

from monitoring.metrics import CallbackCollector, ServingMetrics
from services.edge import bentoml_fixes
from services.edge.admin import AdminRoutes
from services.edge.http import GatewayApp, HTTPResponse, json_response, parse_json
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry, ModelVersion
from services.request.catalog import ModelCatalog
from services.request.predictor import LocalRunner, Predictor
from services.rollout.feedback import FeedbackStore
from services.rollout.follower import RolloutFollower
from services.rollout.prediction_log import PredictionLog
from services.rollout.routing import TrafficRouter
from services.rollout.state import RolloutStore
from services.runner.budget import PoolCollector
from services.runner.feeds import Feeds, concat_feeds, split_outputs
from services.runner.pool import ModelPool
from services.settings import Settings, get_settings
from services.state.runtime import RedisRuntime

logger = logging.getLogger(__name__)
bentoml_fixes.apply()

SETTINGS = get_settings()
_TRIMS: dict[str, Any] = {
    "traffic": {"timeout": 60},
    "logging": {"access": {"enabled": False}},
    "metrics": {"enabled": False},
    "tracing": {"excluded_urls": [".*"]},
}
app = GatewayApp()


def _pool_collector(pool: ModelPool) -> CallbackCollector:
    def collect() -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
        b = pool.batcher
        return [
            (
                "servekit_queue_rows",
                "Rows waiting in the batcher's queue.",
                "gauge",
                [({}, b.queued_rows)],
            ),
            (
                "servekit_inline_batches",
                "Backend calls run inline on the event loop (tiny models).",
                "counter",
                [({}, b.stats.inline_batches)],
            ),
            (
                "servekit_inline_stops",
                "Inline calls stopped by the watchdog past the inline deadline (re-run on a "
                "worker thread).",
                "counter",
                [({}, b.stats.inline_stops)],
            ),
            (
                "servekit_shed_requests",
                "Requests refused with 503 (queue full).",
                "counter",
                [({}, b.stats.shed)],
            ),
        ]

    return CallbackCollector(collect)


def _spawn(coro: Any) -> None:
    import asyncio

    task = asyncio.get_running_loop().create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[Any] = set()


def build_colocated(
    settings: Settings, runtime: RedisRuntime, metrics: ServingMetrics
) -> tuple[Predictor, ModelPool]:
    """The colocated gateway's objects: registry, pool (preloaded), predictor."""
    registry = ModelRegistry(open_store(settings.serving))
    catalog = ModelCatalog(registry)
    pool = ModelPool(registry, settings, catalog=catalog, on_batch=metrics.observe_batch)
    pool.preload(settings.serving.models)
    metrics.add_collector(_pool_collector(pool))
    metrics.add_collector(PoolCollector(pool))
    predictor = Predictor(
        catalog,
        LocalRunner(pool),
        settings,
        metrics,
        cache=runtime.cache,
        features=runtime.features if settings.features.enabled else None,
    )
    return predictor, pool


def _router_collector(
    router: TrafficRouter, log: PredictionLog, follower: RolloutFollower
) -> CallbackCollector:
    def collect() -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
        shadow = [
            ({"result": name}, float(getattr(router, f"shadow_{name}")))
            for name in ("sent", "dropped", "completed", "errors", "timeouts")
        ]
        entries = [
            ({"result": name}, float(getattr(log, name)))
            for name in ("appended", "written", "dropped")
        ]
        rollouts = [
            ({"model": m, "mode": s.mode}, float(s.percent)) for m, s in follower.states.items()
        ]
        return [
            ("servekit_shadow_requests", "Shadow requests by result.", "counter", shadow),
            (
                "servekit_shadow_queue_depth",
                "Shadow jobs waiting.",
                "gauge",
                [({}, router.shadow_queued)],
            ),
            (
                "servekit_prediction_log_entries",
                "Prediction-stream entries by result.",
                "counter",
                entries,
            ),
            (
                "servekit_prediction_log_buffered",
                "Entries waiting to be written.",
                "gauge",
                [({}, log.buffered)],
            ),
            (
                "servekit_feedback_write_failures",
                "Feedback records that failed or were dropped.",
                "counter",
                [({}, float(router.feedback_errors + router.feedback_dropped))],
            ),
            ("servekit_rollout_percent", "Candidate share per model and mode.", "gauge", rollouts),
        ]

    return CallbackCollector(collect)


class _GatewayBase:
    """What both gateway shapes share: Redis runtime, routing, extra routes, the app."""

    def _runtime(self) -> tuple[RedisRuntime, ServingMetrics]:
        metrics = ServingMetrics()
        runtime = RedisRuntime(SETTINGS, metrics.registry)

        async def events(body: bytes, scope: dict[str, Any]) -> HTTPResponse:
            entry = await runtime.append_event(parse_json(body))
            return json_response({"accepted": True, "id": entry}, 202)

        app.add_route("POST", "/events", events)
        app.readiness.append(runtime.health)
        app.on_first_request.append(runtime.start)
        return runtime, metrics

    def _routing(
        self, runtime: RedisRuntime, catalog: ModelCatalog, runner: Any, metrics: ServingMetrics
    ) -> TrafficRouter:
        """Rollout routing: the follower (pub/sub), the prediction log, feedback, admin."""
        rollout = SETTINGS.rollout
        feedback = FeedbackStore(runtime.background_client, ttl_seconds=rollout.feedback_ttl_s)
        log = PredictionLog(runtime.background_client, maxlen=SETTINGS.redis.stream_maxlen)
        follower = RolloutFollower(
            runtime.pubsub_client, refresh_seconds=rollout.follower_refresh_s
        )
        router = TrafficRouter(
            follower,
            runner,
            log,
            feedback,
            catalog.resolve,
            log_sample=rollout.prediction_log_sample,
        )
        AdminRoutes(
            RolloutStore(runtime.control_client, history_maxlen=rollout.history_maxlen),
            feedback,
            SETTINGS.serving.admin_token,
        ).register(app)
        metrics.add_collector(_router_collector(router, log, follower))

        async def start() -> None:
            try:
                await follower.start()
            except (RedisError, OSError) as exc:  # Redis down at start: route to primaries
                logger.warning("rollout follower not started (%s); serving primaries", exc)
            await router.start()

        app.on_first_request.append(lambda: _spawn(start()))
        return router

    def _bind(self, predictor: Predictor, metrics: ServingMetrics) -> None:
        app.bind(
            predictor, max_body_bytes=SETTINGS.serving.max_body_bytes, metrics_render=metrics.render
        )
        predictor.ready = True
        gc.collect()
        gc.freeze()  # the loaded models and wiring are long-lived: keep them out of GC scans


@bentoml.service(
    name="servekit-runner",
    workers=1,
    runner_connection={"max_requests": 10**9, "max_age": 3600.0},  # BentoML #5540
    **_TRIMS,
)
class ModelRunner:
    """Runs models for the split shape; BentoML's batchable API forms the batches."""

    def __init__(self) -> None:
        settings = get_settings()
        self.registry = ModelRegistry(open_store(settings.serving))
        self.pool = ModelPool(self.registry, settings)
        self.pool.preload(settings.serving.models)
        gc.collect()
        gc.freeze()

    @bentoml.api(
        batchable=True, max_batch_size=SETTINGS.batch.max_batch_size, max_latency_ms=60_000
    )
    def infer(self, items: list[Any]) -> list[Any]:
        """Run a batch of ``{"model", "version", "feeds"}`` items; one output dict each."""
        results: list[Any] = [None] * len(items)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((item["model"], item["version"]), []).append(i)
        for key, idx in groups.items():
            try:
                lm = self.pool.loaded().get(key)
                if lm is None:
                    lm = self.pool.load_sync(self.registry.get(*key))
                batch, sizes = concat_feeds([items[i]["feeds"] for i in idx])
                outs = split_outputs(lm.backend.run(batch), sizes)
            except Exception as exc:  # one group's failure fails only its own items
                logger.warning("runner batch for %s failed: %s", key, exc)
                for i in idx:
                    results[i] = {"error": str(exc)}
                continue
            for i, out in zip(idx, outs, strict=True):
                results[i] = out
        return results

    @bentoml.api
    def loaded(self) -> dict[str, Any]:
        """The runner's resident versions."""
        return {f"{k[0]}:{k[1]}": lm.describe() for k, lm in self.pool.loaded().items()}


class RemoteRunner:
    """The split shape's runner: calls ``ModelRunner.infer`` through ``bentoml.depends``."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy

    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
        from services.errors import ModelLoadError

        (out,) = await self.proxy.to_async.infer(
            [{"model": mv.name, "version": mv.version, "feeds": feeds}]
        )
        if "error" in out and not isinstance(out["error"], np.ndarray):
            raise ModelLoadError(f"runner failed on {mv.name} version {mv.version}: {out['error']}")
        return out

    def describe(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {}


if SETTINGS.serving.shape == "split":

    @bentoml.service(name="servekit", workers=SETTINGS.serving.workers, **_TRIMS)
    @bentoml.asgi_app(app, path="/")
    class Gateway(_GatewayBase):
        """The public gateway, split shape: models run in ``ModelRunner``."""

        runner = bentoml.depends(ModelRunner)

        def __init__(self) -> None:
            self.redis, metrics = self._runtime()
            registry = ModelRegistry(open_store(SETTINGS.serving))
            catalog = ModelCatalog(registry)
            for name in SETTINGS.serving.models:
                catalog.pin(registry.get(name))
            runner = RemoteRunner(self.runner)
            self.predictor = Predictor(
                catalog,
                runner,
                SETTINGS,
                metrics,
                cache=self.redis.cache,
                features=self.redis.features if SETTINGS.features.enabled else None,
                router=self._routing(self.redis, catalog, runner, metrics)
                if SETTINGS.rollout.enabled
                else None,
            )
            self._bind(self.predictor, metrics)

else:

    @bentoml.service(name="servekit", workers=SETTINGS.serving.workers, **_TRIMS)  # type: ignore[no-redef]
    @bentoml.asgi_app(app, path="/")
    class Gateway(_GatewayBase):  # type: ignore[no-redef]
        """The public gateway, colocated shape: pool and batcher in this process."""

        def __init__(self) -> None:
            self.redis, metrics = self._runtime()
            self.predictor, self.pool = build_colocated(SETTINGS, self.redis, metrics)
            if SETTINGS.rollout.enabled:
                self.predictor.router = self._routing(
                    self.redis, self.predictor.catalog, self.predictor.runner, metrics
                )
            self._bind(self.predictor, metrics)
