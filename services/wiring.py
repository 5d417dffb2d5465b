"""The gateway's and the runner's objects, built in their worker processes.

``services.service`` holds only the BentoML service definitions and imports this module in
the services' ``__init__``: BentoML's arbiter process (``bentoml serve``), which reads
those definitions and supervises the workers, never imports the serving stack (NumPy,
redis-py, ONNX Runtime, the request path), and stays small.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from redis.exceptions import RedisError

from monitoring.collectors import PoolCollector, RouterCollector
from monitoring.drift_metrics import DriftCollector
from monitoring.gpu import GpuSampler
from monitoring.metrics import ServingMetrics
from services.edge.admin import AdminRoutes
from services.edge.admin_auth import AdminAuth
from services.edge.bentoml_client import client_routes
from services.edge.docs import ApiDocs
from services.edge.http import GatewayApp, HTTPResponse, json_response
from services.edge.ingest import FeedbackRoute, add_events_route
from services.edge.ingest_auth import IngestAuth
from services.edge.ingress import IngressGate
from services.errors import ServekitError
from services.registry.catalog import ModelCatalog
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry
from services.request.predictor import LocalRunner, Predictor, Runner
from services.rollout.feedback import FeedbackStore
from services.rollout.follower import RolloutFollower
from services.rollout.prediction_log import PredictionLog
from services.rollout.routing import TrafficRouter
from services.rollout.signing import RequestSigner
from services.rollout.state import RolloutStore
from services.runner.batching import AdaptiveBatcher
from services.runner.pool import ModelPool
from services.runner.split import FrameServer, RemoteRunner
from services.settings import Settings, get_settings
from services.state.features import FeatureRegistry
from services.state.runtime import RedisRuntime

logger = logging.getLogger(__name__)

SETTINGS = get_settings()
app = GatewayApp()
"""The gateway's ASGI app; ``services.service`` mounts it (through its forwarder)."""
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
    if runtime.cache is not None:  # the cost policy weighs lookups against runner CPU
        runtime.cache.costs.runner_cost = pool.cpu_per_row
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


def client_route_list() -> list[dict[str, Any]]:
    """The raw routes BentoML's HTTP client finds on ``/schema.json``."""
    views = FeatureRegistry.from_settings(SETTINGS.features)
    return client_routes(
        event_fields=sorted(views.event_fields), admin=SETTINGS.serving.admin_token is not None
    )


def build_gateway(proxy: Any | None) -> tuple[Predictor, ModelPool | None]:
    """Everything the gateway serves with, on ``app``: the Redis runtime and ``/events``,
    the predictor (colocated pool, or ``proxy``, a ModelRunner handle), rollout routing,
    feedback and admin routes, the docs. Returns the predictor and the colocated pool."""
    redis_runtime, metrics, ingest = _runtime()
    pool = None
    if proxy is not None:
        predictor = build_split(SETTINGS, proxy, redis_runtime, metrics)
    else:
        predictor, pool = build_colocated(SETTINGS, redis_runtime, metrics)
        # Colocated, the gateway's process owns the GPU: it samples and exports it.
        _gpu_route(_gpu_sampler(SETTINGS), metrics)
    follower = None
    if SETTINGS.rollout.enabled:
        follower = _routing(redis_runtime, predictor, metrics, ingest)
    _docs(redis_runtime, predictor, follower)
    app.bind(
        predictor,
        max_body_bytes=SETTINGS.serving.max_body_bytes,
        metrics_render=metrics.render,
    )
    if pool is not None:
        app.gate = _ingress_gate(pool.batcher)
    elif isinstance(predictor.runner, RemoteRunner):
        app.gate = _ingress_gate(predictor.runner.batcher)
    predictor.ready = True
    _freeze()
    return predictor, pool


def _ingress_gate(batcher: AdaptiveBatcher) -> IngressGate | None:
    """The gate that refuses at the HTTP entry: a v2 request whose model's lane is over
    its budget (what admission would refuse, before the body), and the opt-in loop-lag
    and in-flight limits; none when the budget is off and neither limit is set."""
    serving = SETTINGS.serving
    budget_ms = SETTINGS.batch.default_budget_ms()
    lag, max_in_flight = serving.ingress_lag_ms, serving.ingress_max_in_flight
    if not budget_ms and lag == 0 and max_in_flight is None:
        return None
    gate = IngressGate(
        batcher.lanes,
        batcher.admission,
        budget_s=budget_ms / 1000,
        lag_s=lag if lag == "lanes" else lag / 1000,
        max_in_flight=max_in_flight,
    )
    app.on_first_request.append(gate.start)
    return gate


def build_runner() -> tuple[ModelPool, FrameServer, GpuSampler]:
    """The split shape's ModelRunner: its pool (preloaded), frame server and GPU sampler."""
    settings = get_settings()
    pool = ModelPool(ModelRegistry(open_store(settings.serving)), settings)
    pool.preload(settings.serving.models)
    sampler = _gpu_sampler(settings)
    _freeze()
    return pool, FrameServer(pool), sampler
