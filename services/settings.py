"""All of servekit's configuration, read from the environment (prefix ``SERVEKIT_``).

No other module reads ``os.environ``: they take a settings object (or the part of it they
need) in their constructor. ``get_settings()`` returns the process-wide instance.

One class per area, each with its own prefix, in the style of Prefect's settings models:

- ``SERVEKIT_REDIS_*``     Redis (cache, features, rollout state, prediction stream)
- ``SERVEKIT_BATCH_*``     the runner's adaptive micro-batcher
- ``SERVEKIT_CACHE_*``     the Redis prediction cache
- ``SERVEKIT_FEATURES_*``  the feature store (views, event stream, real-time worker)
- ``SERVEKIT_ROLLOUT_*``   shadow and canary rollouts, their gates, A/B analysis
- ``SERVEKIT_CONVERT_*``   the conversion flow: opset, parity tolerances, variants, TensorRT
- ``SERVEKIT_*``           serving: shape, models, limits, model store, admin token
- ``SERVEKIT_MULTIMODEL_*`` the shared runner's pool: memory budget, idle unload, isolation
- ``SERVEKIT_AUTOSCALE_*`` the GPU sampler behind the autoscaling metrics
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchPolicy(BaseModel):
    """Batching policy for one model (default: wait at most 10 ms, batch at most 32)."""

    max_batch_size: int = Field(32, ge=1, le=4096, description="Most rows in one backend call.")
    max_wait_ms: float = Field(
        10.0,
        ge=0,
        le=1000,
        description="Longest a request may be held waiting for a batch to fill. A lone "
        "request on an idle runner is never held.",
    )


class RedisSettings(BaseSettings):
    """Where Redis is. No URL: servekit starts a private redis-server on a Unix socket."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_REDIS_", extra="ignore")

    url: str | None = Field(None, description="redis://host:port/db or unix:///path.sock")
    embedded_dir: Path = Field(Path(".servekit/redis"), description="Embedded server's dir.")
    socket_timeout_ms: float = Field(
        100.0,
        gt=0,
        description="Socket timeout on the serving path; slow calls fail open (see the "
        "cache's timeout_ms for why it is not a few ms).",
    )
    stream_maxlen: int = Field(100_000, ge=100, description="Cap of the prediction stream.")


class BatchSettings(BaseSettings):
    """The runner's adaptive micro-batcher."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_BATCH_", extra="ignore")

    enabled: bool = Field(True, description="Off: every request runs alone (batch of its rows).")
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(10.0, ge=0, le=1000)
    queue_limit: int = Field(
        4096, ge=1, description="Most rows queued; past it requests get 503 + Retry-After."
    )
    per_model: dict[str, BatchPolicy] = Field(
        default_factory=dict, description='JSON, e.g. {"text-embed": {"max_batch_size": 64}}'
    )

    def policy_for(self, model: str) -> BatchPolicy:
        """The batching policy of ``model``: its override, else the defaults."""
        if model in self.per_model:
            return self.per_model[model]
        return BatchPolicy(max_batch_size=self.max_batch_size, max_wait_ms=self.max_wait_ms)


class ServingSettings(BaseSettings):
    """The gateway and the model runner."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_", extra="ignore")

    shape: Literal["colocated", "split"] = Field(
        "colocated",
        description="colocated: pool and batcher in the gateway's process; split: a "
        "ModelRunner BentoML service reached with bentoml.depends.",
    )
    model_store: str = Field(
        "model_store",
        description="Local folder, s3://bucket/prefix, or bentoml (the BentoML model store).",
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto).")
    models: list[str] = Field(
        default_factory=lambda: ["fraud"],
        description="Models preloaded and pinned at start-up (JSON list or comma-separated).",
    )
    max_records: int = Field(256, ge=1, description="Most records in one /predict request.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted.")
    ort_threads: int = Field(
        1, ge=1, le=64, description="ONNX Runtime intra-op threads per session."
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference, e.g. "
        '["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"].',
    )
    admin_token: str | None = Field(
        None, description="Bearer token of the admin routes; unset: off."
    )
    workers: int = Field(1, ge=1, le=64, description="BentoML worker processes of the gateway.")
    catalog_ttl_s: float = Field(
        10.0, gt=0, description="How long a resolved model version is reused before re-reading."
    )
    s3_connect_timeout_s: float = Field(2.0, gt=0, description="S3 connect timeout.")
    s3_read_timeout_s: float = Field(10.0, gt=0, description="S3 read timeout.")
    s3_max_attempts: int = Field(2, ge=1, le=10, description="S3 attempts per call (retries + 1).")


class ModelLimits(BaseModel):
    """Isolation limits of one model on a shared runner."""

    max_concurrency: int = Field(1, ge=1, le=64, description="Backend calls running at once.")
    timeout_s: float | None = Field(
        30.0,
        gt=0,
        description="Longest one backend call may run; past it its requests get 503 and the "
        "model is unhealthy until the call returns. None: no limit.",
    )
    queue_limit: int = Field(
        1024, ge=1, description="Rows of this model waiting; past it its requests get 503."
    )


class MultiModelSettings(BaseSettings):
    """The model pool on a shared (multi-model) runner: memory budget, eviction, isolation."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_MULTIMODEL_", extra="ignore")

    memory_budget_bytes: int | None = Field(
        None,
        ge=1,
        description="Most bytes the loaded sessions (as measured) plus loads in flight may "
        "hold; least recently used models are evicted to stay under it. None: no budget.",
    )
    idle_timeout_s: float | None = Field(
        3600.0, gt=0, description="A model unused this long is unloaded (never a pinned one)."
    )
    sweep_interval_s: float = Field(60.0, gt=0, description="How often idle models are sought.")
    load_timeout_s: float = Field(
        30.0, gt=0, description="Longest a request waits for its model to load (or for room)."
    )
    load_threads: int = Field(4, ge=1, le=64, description="Threads fetching artifacts.")
    estimate_ratio: float = Field(
        1.5,
        gt=0,
        description="Before a first load, session bytes are estimated as estimate_fixed_bytes "
        "+ this x artifact size (raised by what loads measure); reserved while loading.",
    )
    estimate_fixed_bytes: int = Field(256 * 1024, ge=0, description="See estimate_ratio.")
    retry_backoff_s: float = Field(
        1.0, gt=0, description="A failed load is retried after this, doubling per failure."
    )
    retry_backoff_max_s: float = Field(60.0, gt=0, description="Cap of the retry backoff.")
    threads: int = Field(
        4, ge=1, le=256, description="Threads running backend calls, shared by all models."
    )
    inline_deadline_ms: float = Field(
        20.0,
        ge=0,
        le=1000,
        description="A tiny model whose backend can be stopped (ONNX Runtime) runs inline on "
        "the event loop (a worker-thread hop costs several times its call) under a watchdog: "
        "a call that has run past this and spent half of it on the CPU (or past 10x this, "
        "whatever it did) is stopped, re-run on a worker thread under the model's timeout, "
        "and the model stays off the inline path for a backoff (1 s, doubling). 0: such "
        "models always run on worker threads.",
    )
    inline_unpinned: bool = Field(
        False,
        description="Also let unpinned models whose backends cannot be stopped run inline, "
        "unwatched, when their calls are tiny. A model that then hangs stalls every model "
        "and cannot be timed out: only for trusted models.",
    )
    limits: ModelLimits = Field(default_factory=ModelLimits, description="Per-model defaults.")
    per_model: dict[str, ModelLimits] = Field(
        default_factory=dict, description='Overrides, JSON: {"big": {"timeout_s": 120}}'
    )

    def limits_for(self, model: str) -> ModelLimits:
        """The isolation limits of ``model``."""
        return self.per_model.get(model, self.limits)


class CacheSettings(BaseSettings):
    """The Redis prediction cache: TTL, fail-open timeouts, auto-disable and breaker."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_CACHE_", extra="ignore")

    enabled: bool = Field(True, description="Off: every prediction is computed.")
    ttl_s: int = Field(3600, ge=1, description="Lifetime of a cached prediction.")
    per_model_ttl: dict[str, int] = Field(
        default_factory=dict, description='TTL overrides in seconds, JSON: {"fraud": 600}'
    )
    timeout_ms: float = Field(
        100.0,
        gt=0,
        description="Per-call budget; a slower call is skipped (fail open). It is measured on "
        "the event loop, so it must cover the loop's own queueing at saturation (request p99 "
        "20-30 ms at concurrency 32 here): with 25 ms a saturated gateway tripped the breaker "
        "on a healthy Redis and ran uncached.",
    )
    min_hit_rate: float = Field(
        0.05, ge=0, le=1, description="Below it (over `window` lookups) a model's cache turns off."
    )
    reenable_hit_rate: float = Field(
        0.10, ge=0, le=1, description="Probed hit rate at which an off cache turns back on."
    )
    window: int = Field(1000, ge=10, description="Lookups in the hit-rate sliding window.")
    probe_rate: float = Field(
        0.02, gt=0, le=1, description="Share of inputs (by key hash) still cached while off."
    )
    probe_window: int = Field(200, ge=10, description="Probe lookups needed to turn back on.")
    min_off_s: float = Field(60.0, ge=0, description="Shortest time a cache stays off.")
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failed calls that open the circuit breaker."
    )
    breaker_cooldown_s: float = Field(
        5.0, gt=0, description="Open breaker waits this long before one trial call."
    )


class FeatureSettings(BaseSettings):
    """The feature store: view declarations, the event stream and its consumer group."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_FEATURES_", extra="ignore")

    enabled: bool = Field(
        True, description="Off: feature fields take their defaults (flagged 'unavailable')."
    )
    views: list[dict[str, Any]] | None = Field(
        None,
        description="Feature views as JSON (see services.state.features.FeatureView); "
        "unset: the demo fraud model's views.",
    )
    stream_maxlen: int = Field(100_000, ge=100, description="Cap of the event stream.")
    consumer_group: str = Field("servekit-features", description="Real-time worker group.")
    claim_min_idle_ms: int = Field(
        30_000, ge=0, description="Pending events idle this long are reclaimed from dead workers."
    )
    dedupe_ttl_s: int = Field(
        7 * 86400, ge=60, description="How long an applied event id is remembered."
    )
    version_grace_s: int = Field(
        300, ge=0, description="A replaced batch-view version lives this long after the swap."
    )
    load_chunk: int = Field(1000, ge=1, description="Entities written per pipeline on load.")
    state_ttl_s: int = Field(
        30 * 86400, ge=60, description="Real-time state of an entity idle this long expires."
    )


class RolloutSettings(BaseSettings):
    """Shadow and canary rollouts, their gates and the A/B analysis."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_ROLLOUT_", extra="ignore")

    enabled: bool = Field(
        True,
        description="Off: no rollout routing, shadowing, prediction stream or outcome "
        "attribution (a dedicated server that never takes part in rollouts).",
    )
    shadow_window_s: float = Field(86_400, gt=0, description="How long a shadow run lasts.")
    canary_steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        description="Candidate traffic percent of each canary step, increasing, in (0, 100].",
    )
    step_duration_s: float = Field(
        151_200, gt=0, description="Time at each canary step (default: 7 days over 4 steps)."
    )
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="Gate: most errors per prediction of the candidate."
    )
    max_p99_latency_ratio: float = Field(
        1.2, gt=0, description="Gate: most candidate p99 latency over the primary's."
    )
    min_agreement: float = Field(
        0.99, ge=0, le=1, description="Gate: least share of shadow outputs equal to primary's."
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Level of the A/B tests.")
    msprt_tau2: float = Field(
        1e-4, gt=0, description="mSPRT mixing variance (~ squared effect size to detect)."
    )
    feedback_ttl_s: int = Field(
        7 * 86_400, ge=60, description="How long a prediction waits for its outcome."
    )
    history_maxlen: int = Field(1000, ge=10, description="Changes kept per model's history.")
    prediction_log_sample: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of requests written to the prediction stream (drift reports) and "
        "kept for outcome attribution while no rollout runs; during a rollout, all of them.",
    )
    follower_refresh_s: float = Field(
        30.0, gt=0, description="Full re-read of rollout state behind the pub/sub notices."
    )
    shadow_queue: int = Field(
        256, ge=1, description="Shadow jobs waiting at most; past it new ones are dropped."
    )
    shadow_concurrency: int = Field(4, ge=1, description="Shadow calls running at once.")
    shadow_timeout_s: float = Field(2.0, gt=0, description="Longest a shadow call may run.")
    feedback_buffer: int = Field(
        1024, ge=1, description="Prediction records buffered for attribution before drops."
    )

    @field_validator("canary_steps")
    @classmethod
    def _increasing_percents(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < p <= 100 for p in steps):
            raise ValueError("canary steps must be percents in (0, 100]")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError("canary steps must increase")
        return steps


class ConvertSettings(BaseSettings):
    """The conversion flow (native -> ONNX -> TensorRT), its parity gate and latency probe."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_CONVERT_", extra="ignore")

    opset: int = Field(17, ge=7, le=23, description="ONNX opset of the export.")
    parity_rows: int = Field(256, ge=8, description="Rows of the held-out parity batch.")
    fp32_tolerance: float = Field(
        1e-4, gt=0, description="Most |onnx - native| per element (relative above 1) for fp32."
    )
    fp16_tolerance: float = Field(1e-2, gt=0, description="Same for fp16 and TensorRT fp16.")
    int8_tolerance: float = Field(1e-1, gt=0, description="Same for the dynamic int8 variant.")
    int8_reduce_range: bool = Field(
        True,
        description="Quantize int8 weights to 7 bits. CPUs without VNNI (AVX2 only) saturate "
        "u8 x s8 products of full-range weights (an MLP's top-1 agreement "
        "falls to about 99.2 %). Off only where every serving CPU has VNNI.",
    )
    min_agreement: float = Field(
        0.995, ge=0, le=1, description="Least label / top-1 agreement of every format."
    )
    variants: list[Literal["fp16", "int8"]] = Field(
        default_factory=list, description='Extra ONNX variants to build and check, e.g. ["int8"].'
    )
    serve_variant: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="The ONNX variant registered as the served version."
    )
    tensorrt: bool = Field(
        True, description="Build a TensorRT fp16 engine where TensorRT and a CUDA GPU exist."
    )
    register_engine: bool = Field(
        False, description="Also register a built TensorRT engine as its own version."
    )
    trt_workspace_mb: int = Field(2048, ge=64, description="TensorRT builder workspace.")
    trt_max_batch: int = Field(64, ge=1, description="Largest batch of the engine's profile.")
    trt_max_sequence: int = Field(128, ge=1, description="Longest sequence of text profiles.")
    latency_batches: list[int] = Field(
        default_factory=lambda: [1, 8, 32], description="Batch sizes of the latency probe."
    )
    latency_seconds: float = Field(
        0.5, gt=0, description="Time spent timing each (format, batch size)."
    )
    ort_threads: int = Field(2, ge=1, le=64, description="ONNX Runtime threads while probing.")


class AutoscaleSettings(BaseSettings):
    """The GPU sampler (NVML) that exports the model process's GPUs on /metrics."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_AUTOSCALE_", extra="ignore")

    gpu_sampler: bool = Field(True, description="Sample GPUs; no NVML or GPU: no GPU series.")
    gpu_interval_s: float = Field(1.0, gt=0, le=60, description="Seconds between GPU samples.")
    gpu_window_s: float = Field(300.0, gt=0, description="GPU utilization moving-average window.")


class Settings(BaseModel):
    """Every area's settings, read once."""

    redis: RedisSettings = Field(default_factory=RedisSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    multimodel: MultiModelSettings = Field(default_factory=MultiModelSettings)
    convert: ConvertSettings = Field(default_factory=ConvertSettings)
    autoscale: AutoscaleSettings = Field(default_factory=AutoscaleSettings)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
