"""The BentoML services: the public ``Gateway`` and, for the split shape, ``ModelRunner``.

Wiring only: each class builds plain objects in ``__init__`` and the gateway mounts its
ASGI app; the logic lives in ``services.request.predictor``, ``services.runner`` and
``services.edge``. ``SERVEKIT_SHAPE`` picks the shape ``bentoml serve
services.service:Gateway`` runs:

- colocated (default): the model pool and the adaptive batcher live in the gateway's
  process (a second HTTP hop costs several times the in-process call; docs/design.md);
- split: the gateway validates, routes and batches (servekit's batcher), and a
  ``ModelRunner`` service, reached with ``bentoml.depends``, runs each batch in its own
  process (for GPU models that need their own process and scaling): one call per batch,
  tensors as raw bytes (``services.runner.split``).

Both services carry the same trims: tracing excluded, access log and BentoML's metrics off
(servekit exports its own on ``/metrics``), the TimeoutMiddleware timer fixed
(``services.edge.bentoml_fixes``) and ``gc.freeze()`` after load.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from redis.exceptions import RedisError

from monitoring.collectors import PoolCollector, RouterCollector
from monitoring.drift_metrics import DriftCollector
from monitoring.gpu import GpuSampler
from monitoring.metrics import ServingMetrics
from services.edge import bentoml_fixes
from services.edge.admin import AdminRoutes
from services.edge.admin_auth import AdminAuth
from services.edge.bentoml_client import client_routes, publish_routes
from services.edge.docs import ApiDocs
from services.edge.http import GatewayApp, HTTPResponse, json_response
from services.edge.ingest import FeedbackRoute, add_events_route
from services.edge.ingest_auth import IngestAuth
from services.errors import ServekitError
from services.registry.catalog import ModelCatalog
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry
from services.request.predictor import LocalRunner, Predictor, Runner
from services.rollout.attribution import AttributionWriter
from services.rollout.feedback import FeedbackStore
from services.rollout.follower import RolloutFollower
from services.rollout.prediction_log import PredictionLog
from services.rollout.routing import TrafficRouter
from services.rollout.signing import RequestSigner
from services.rollout.state import RolloutStore
from services.runner.pool import ModelPool
from services.runner.split import FrameServer, RemoteRunner, resident_versions
from services.settings import Settings, get_settings
from services.state.features import FeatureRegistry
from services.state.runtime import RedisRuntime

logger = logging.getLogger(__name__)
bentoml_fixes.apply()

SETTINGS = get_settings()
SPLIT = SETTINGS.serving.shape == "split"
_TRIMS: dict[str, Any] = {
    "traffic": {"timeout": 60},
    "logging": {"access": {"enabled": False}},
    "metrics": {"enabled": False},
    "tracing": {"excluded_urls": [".*"]},
}
# The split shape's batch frames: raw bytes both ways (BentoML sends a positional bytes
# input as the request body, unpickled, and a bytes output as the response body).
WireBytes = Annotated[bytes, ContentType("application/octet-stream")]
app = GatewayApp()
_BACKGROUND: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


def _freeze() -> None:
    gc.collect()
    gc.freeze()  # the loaded models and wiring are long-lived: keep them out of GC scans


def build_colocated(
    settings: Settings, runtime: RedisRuntime, metrics: ServingMetrics
) -> tuple[Predictor, ModelPool]:
    """The colocated gateway's objects: registry, pool (preloaded), predictor."""
    registry = ModelRegistry(open_store(settings.serving))
    catalog = ModelCatalog(
        registry,
        ttl_s=settings.serving.catalog_ttl_s,
        negative_ttl_s=settings.serving.catalog_negative_ttl_s,
        max_entries=settings.serving.catalog_max_entries,
    )
    pool = ModelPool(registry, settings, catalog=catalog, on_batch=metrics.observe_batch)
    pool.preload(settings.serving.models)
    metrics.add_collector(PoolCollector(pool))
    return _predictor(settings, catalog, LocalRunner(pool), runtime, metrics), pool


def build_split(
    settings: Settings, proxy: Any, runtime: RedisRuntime, metrics: ServingMetrics
) -> Predictor:
    """The split gateway's predictor: models run in ``ModelRunner`` (``proxy``)."""
    registry = ModelRegistry(open_store(settings.serving))
    catalog = ModelCatalog(
        registry,
        ttl_s=settings.serving.catalog_ttl_s,
        negative_ttl_s=settings.serving.catalog_negative_ttl_s,
        max_entries=settings.serving.catalog_max_entries,
    )
    for name in settings.serving.models:
        catalog.pin(registry.get(name))
    runner = RemoteRunner(proxy, settings, on_batch=metrics.observe_batch)
    return _predictor(settings, catalog, runner, runtime, metrics)


def _predictor(
    settings: Settings,
    catalog: ModelCatalog,
    runner: Runner,
    runtime: RedisRuntime,
    metrics: ServingMetrics,
) -> Predictor:
    return Predictor(
        catalog,
        runner,
        settings,
        metrics,
        cache=runtime.cache,
        features=runtime.features if settings.features.enabled else None,
    )


def _runtime() -> tuple[RedisRuntime, ServingMetrics, IngestAuth]:
    """Metrics (drift results included), the Redis runtime, its ``/events`` route and the
    ingest credential check it shares with ``/feedback``."""
    metrics = ServingMetrics()
    runtime = RedisRuntime(SETTINGS, metrics.registry)
    serving = SETTINGS.serving
    ingest = IngestAuth(  # failures limited like the admin token's, in buckets of its own
        serving.ingest_token,
        max_failures=serving.admin_auth_max_failures,
        window_s=serving.admin_auth_window_s,
        on_failure=metrics.observe_ingest_auth_failure,
    )
    add_events_route(app, ingest, runtime.append_event)
    app.readiness.append(runtime.health)
    app.on_first_request.append(runtime.start)
    metrics.add_collector(drift := DriftCollector(runtime.background_client, SETTINGS.monitoring))
    app.on_first_request.append(drift.start)
    return runtime, metrics, ingest


def _gpu_sampler(settings: Settings) -> GpuSampler:
    """This process's GPUs, sampled at ~1 Hz (no NVML or GPU: no series and a reason)."""
    auto = settings.autoscale
    sampler = GpuSampler(
        interval_s=auto.gpu_interval_s, window_s=auto.gpu_window_s, enabled=auto.gpu_sampler
    )
    sampler.start()
    return sampler


def _gpu_route(sampler: GpuSampler, metrics: ServingMetrics) -> None:
    """``GET /gpu`` says what the sampler sees (or why it sees nothing); series on /metrics."""
    metrics.add_collector(sampler)

    async def gpu_status(body: bytes, scope: dict[str, Any]) -> HTTPResponse:
        return json_response(sampler.status())

    app.add_route("GET", "/gpu", gpu_status)


def _routing(
    runtime: RedisRuntime, predictor: Predictor, metrics: ServingMetrics, ingest: IngestAuth
) -> RolloutFollower:
    """Rollout routing: the follower (pub/sub), the prediction log, feedback, admin."""
    rollout = SETTINGS.rollout
    feedback = FeedbackStore(
        runtime.background_client,
        ttl_seconds=rollout.feedback_ttl_s,
        counter_ttl_seconds=rollout.counter_ttl_s,
    )
    log = PredictionLog(runtime.background_client, maxlen=SETTINGS.redis.stream_maxlen)
    follower = RolloutFollower(runtime.pubsub_client, refresh_seconds=rollout.follower_refresh_s)
    router = TrafficRouter(
        follower,
        predictor.runner,
        log,
        feedback,
        predictor.catalog.resolve,
        shadow_queue=rollout.shadow_queue,
        shadow_timeout_s=rollout.shadow_timeout_s,
        shadow_concurrency=rollout.shadow_concurrency,
        feedback_limit=rollout.feedback_buffer,
        log_sample=rollout.prediction_log_sample,
    )
    predictor.attribution = AttributionWriter(feedback)
    store = RolloutStore(runtime.control_client, history_maxlen=rollout.history_maxlen)
    auth = AdminAuth(
        SETTINGS.serving.admin_token,
        max_failures=SETTINGS.serving.admin_auth_max_failures,
        window_s=SETTINGS.serving.admin_auth_window_s,
        on_failure=metrics.observe_admin_auth_failure,
    )
    AdminRoutes(store, auth).register(app)
    predictor.signer = _signer()
    FeedbackRoute(feedback, ingest, predictor.signer, metrics.observe_feedback_rejected).register(
        app
    )
    metrics.add_collector(RouterCollector(router, log, follower))

    async def start() -> None:
        try:
            await follower.start()
        except (RedisError, OSError) as exc:  # Redis down at start: route to primaries
            logger.warning("rollout follower not started (%s); serving primaries", exc)
        else:
            await _init_rollout_states(store, predictor)
        await router.start()

    app.on_first_request.append(lambda: _spawn(start()))
    predictor.router = router
    predictor.rollout_states = lambda: follower.states
    return follower


def _signer() -> RequestSigner:
    """Signs the request ids predictions answer with; ``/feedback`` accepts only those."""
    signer = RequestSigner(SETTINGS.serving.request_id_secret)
    if not signer.shared:
        logger.warning(
            "SERVEKIT_REQUEST_ID_SECRET is unset: request ids are signed with a key of this "
            "process only, so other replicas refuse its predictions' feedback"
        )
    return signer


async def _init_rollout_states(store: RolloutStore, predictor: Predictor) -> None:
    """Give every served (pinned) model a rollout state: its served version as primary,
    mode off. An existing state is kept, whichever replica wrote it."""
    for mv in predictor.catalog.pinned():
        try:
            await store.ensure(mv.name, mv.version, actor="gateway")
        except (RedisError, OSError, ServekitError) as exc:  # fail open: primaries serve
            logger.warning("rollout state of %s not initialised: %s", mv.name, exc)


def _docs(runtime: RedisRuntime, predictor: Predictor, follower: RolloutFollower | None) -> None:
    """``GET /docs`` and ``/docs.json``, rebuilt when models are loaded or rolled out."""
    ApiDocs(
        app,
        predictor,
        rollout_states=(lambda: follower.states) if follower is not None else None,
        event_fields=sorted(runtime.views.event_fields),
        entities=sorted(runtime.views.entities),
        ttl_s=SETTINGS.serving.catalog_ttl_s,
    ).register(app)


def _client_routes() -> list[dict[str, Any]]:
    """The raw routes BentoML's HTTP client finds on ``/schema.json``."""
    views = FeatureRegistry.from_settings(SETTINGS.features)
    return client_routes(
        event_fields=sorted(views.event_fields), admin=SETTINGS.serving.admin_token is not None
    )


@bentoml.service(
    name="servekit-runner",
    workers=1,
    runner_connection={"max_requests": 10**9, "max_age": 3600.0},  # BentoML #5540
    **_TRIMS,
)
class ModelRunner:
    """Runs models for the split shape: the gateway batches, and each batch arrives as one
    ``run_batch`` call carrying raw tensor bytes (``services.runner.wire``)."""

    def __init__(self) -> None:
        settings = get_settings()
        self.pool = ModelPool(ModelRegistry(open_store(settings.serving)), settings)
        self.pool.preload(settings.serving.models)
        self.frames = FrameServer(self.pool)
        self.gpu_sampler = _gpu_sampler(settings)
        _freeze()

    @bentoml.api
    async def run_batch(self, frame: WireBytes, /) -> WireBytes:
        """Run one batch frame (a positional bytes input: sent raw, never pickled); its
        outputs, or an error frame."""
        return await self.frames.serve(frame)

    @bentoml.api
    def loaded(self) -> dict[str, Any]:
        """The runner's resident versions."""
        return resident_versions(self.pool)

    @bentoml.api
    def gpu(self) -> dict[str, Any]:
        """The runner's GPUs as sampled (or why none are)."""
        return self.gpu_sampler.status()


@bentoml.service(name="servekit", workers=SETTINGS.serving.workers, **_TRIMS)
@bentoml.asgi_app(app, path="/")
class Gateway:
    """The public gateway: models run in this process (colocated) or in ``ModelRunner``
    (split)."""

    if SPLIT:
        # Declared for the split shape only: BentoML serves the services a service
        # depends on, so the colocated shape starts no ModelRunner.
        runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        self.redis, metrics, ingest = _runtime()
        if SPLIT:
            self.predictor = build_split(SETTINGS, self.runner, self.redis, metrics)
        else:
            self.predictor, self.pool = build_colocated(SETTINGS, self.redis, metrics)
            # Colocated, the gateway's process owns the GPU: it samples and exports it.
            _gpu_route(_gpu_sampler(SETTINGS), metrics)
        follower = None
        if SETTINGS.rollout.enabled:
            follower = _routing(self.redis, self.predictor, metrics, ingest)
        _docs(self.redis, self.predictor, follower)
        app.bind(
            self.predictor,
            max_body_bytes=SETTINGS.serving.max_body_bytes,
            metrics_render=metrics.render,
        )
        self.predictor.ready = True
        _freeze()


# bentoml.SyncHTTPClient / AsyncHTTPClient discover the raw routes on /schema.json.
publish_routes(Gateway, _client_routes)
