"""Serving settings: the gateway, the model runner, batching and the multi-model pool."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_ADMIN_TOKEN_LENGTH = 32


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
    queue_budget_ms: float | None = Field(
        None,
        ge=0,
        le=600_000,
        description="Longest a request is expected to queue before its call starts; past "
        "it requests are refused at once with 503 + Retry-After (0: no budget; None: the "
        "batcher's default).",
    )


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
    latency_target_ms: float = Field(
        100.0, gt=0, description="A request's p99 latency goal; queueing gets half of it."
    )
    queue_budget_ms: float | None = Field(
        None,
        ge=0,
        le=600_000,
        description="Queueing-time budget of every model (expected wait before its call "
        "starts): over it requests get 503 + Retry-After at once, and queued ones are "
        "dropped unrun after twice what they were admitted for. None: half of "
        "latency_target_ms; 0: off (only queue_limit sheds).",
    )

    def default_budget_ms(self) -> float:
        """The queueing budget of a model without an override (0: off)."""
        if self.queue_budget_ms is None:
            return self.latency_target_ms / 2
        return self.queue_budget_ms

    def policy_for(self, model: str) -> BatchPolicy:
        """The batching policy of ``model``: its override, else the defaults."""
        budget = self.default_budget_ms()
        if model in self.per_model:
            policy = self.per_model[model]
            if policy.queue_budget_ms is None:
                return policy.model_copy(update={"queue_budget_ms": budget})
            return policy
        return BatchPolicy(
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            queue_budget_ms=budget,
        )


class ServingSettings(BaseSettings):
    """The gateway and the model runner."""

    # Errors never echo values: the admin token is a secret.
    model_config = SettingsConfigDict(
        env_prefix="SERVEKIT_", extra="ignore", hide_input_in_errors=True
    )

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
    ort_spinning: bool = Field(
        False,
        description="Let ONNX Runtime's intra- and inter-op threads spin after each run "
        "waiting for the next one. On: a thread holds its core for a while after every "
        "call, which starves the event loop that admits and refuses requests; off costs "
        "no measurable throughput on batched calls (README, text serving and overload).",
    )
    model_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Nice value of the threads that run models (the batcher's workers and "
        "ONNX Runtime's thread pools): above 0 the kernel gives a core to the event loop, "
        "which admits, refuses and answers, whenever it has work, and the models keep the "
        "rest. Niced threads also lose the cores to every other process at nice 0, so it "
        "pays where the gateway has its cores to itself (a container's CPU quota), not on "
        "a shared host (README, overload).",
    )
    ingress_max_in_flight: NonNegativeInt | Literal["lanes"] | None = Field(
        None,
        description="Most inference requests one worker holds; past it requests are "
        'refused with 503 at the HTTP entry, before their body is read. "lanes": the rows '
        "the model lanes hold within their queueing budgets, plus 64; 0: refuse them all "
        "(a worker draining); None: no limit. Off by default: when the HTTP front is the "
        "bottleneck a refusal costs the server over half of an answer, and refusing in "
        "the process lowers goodput (README, overload).",
    )
    ingress_lag_ms: NonNegativeFloat | Literal["lanes"] = Field(
        0.0,
        description="Refuse inference requests at the HTTP entry while the worker's event "
        "loop has lagged more than this twice in a row (a request read now has waited that "
        'long already). "lanes": the least any model tolerates, its queueing budget or one '
        "call where a call outlasts it; 0: off (the default, as ingress_max_in_flight).",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference, e.g. "
        '["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"].',
    )
    admin_token: str | None = Field(
        None,
        description=f"Bearer token of the admin routes, at least {MIN_ADMIN_TOKEN_LENGTH} "
        "characters; unset: off.",
    )
    workers: int = Field(1, ge=1, le=64, description="BentoML worker processes of the gateway.")
    catalog_ttl_s: float = Field(
        10.0, gt=0, description="How long a resolved model version is reused before re-reading."
    )
    s3_connect_timeout_s: float = Field(2.0, gt=0, description="S3 connect timeout.")
    s3_read_timeout_s: float = Field(10.0, gt=0, description="S3 read timeout.")
    s3_max_attempts: int = Field(2, ge=1, le=10, description="S3 attempts per call (retries + 1).")
    catalog_max_entries: int = Field(
        4096,
        ge=16,
        description="Most (model, version) resolutions the gateway caches; least recently "
        "used go first.",
    )
    catalog_negative_ttl_s: float = Field(
        1.0,
        gt=0,
        description="How long an unknown model version is remembered before the store is "
        "read again.",
    )
    admin_auth_max_failures: int = Field(
        10,
        ge=1,
        description="Failed admin authentications one client address may make per "
        "admin_auth_window_s before it gets 429 with Retry-After.",
    )
    admin_auth_window_s: float = Field(
        60.0, gt=0, description="Window over which admin_auth_max_failures refills."
    )
    ingest_token: str | None = Field(
        None,
        description=f"Bearer token of POST /events and POST /feedback, at least "
        f"{MIN_ADMIN_TOKEN_LENGTH} characters and not the admin token; unset: those routes "
        "accept only loopback clients. Failures are rate-limited like the admin token's.",
    )
    request_id_secret: str | None = Field(
        None,
        description=f"HMAC key (at least {MIN_ADMIN_TOKEN_LENGTH} characters) signing the "
        "request ids predictions answer with; POST /feedback accepts only ids it signed. "
        "Every worker and replica needs the same one; unset: a random key per process "
        "(refused with SERVEKIT_WORKERS > 1).",
    )

    @field_validator("admin_token")
    @classmethod
    def _long_admin_token(cls, value: str | None) -> str | None:
        # A short token can be guessed over the network; refuse to start with one.
        if value is not None and len(value) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"SERVEKIT_ADMIN_TOKEN is {len(value)} characters; it must be at least "
                f"{MIN_ADMIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 16`), or unset to turn "
                "the admin routes off"
            )
        return value

    @field_validator("ingest_token", "request_id_secret")
    @classmethod
    def _long_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and len(value) < MIN_ADMIN_TOKEN_LENGTH:
            name = f"SERVEKIT_{str(info.field_name).upper()}"
            raise ValueError(
                f"{name} is {len(value)} characters; it must be at least "
                f"{MIN_ADMIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 16`), or unset"
            )
        return value

    @model_validator(mode="after")
    def _distinct_secrets(self) -> ServingSettings:
        # Ingest clients must never hold the admin token, nor the key that signs request ids.
        if self.ingest_token is not None and self.ingest_token in (
            self.admin_token,
            self.request_id_secret,
        ):
            raise ValueError(
                "SERVEKIT_INGEST_TOKEN must differ from SERVEKIT_ADMIN_TOKEN and "
                "SERVEKIT_REQUEST_ID_SECRET"
            )
        if self.workers > 1 and self.request_id_secret is None:
            raise ValueError(
                f"SERVEKIT_WORKERS={self.workers} needs SERVEKIT_REQUEST_ID_SECRET, shared "
                "by every worker and replica, so that any of them verifies the request ids "
                "another signed"
            )
        return self


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
