"""All of servekit's configuration, read from the environment (prefix ``SERVEKIT_``).

No other module reads ``os.environ``: they take a settings object (or the part of it they
need) in their constructor. ``get_settings()`` returns the process-wide instance.

One class per area, each with its own prefix, in the style of Prefect's settings models:

- ``SERVEKIT_REDIS_*``     Redis (cache, features, rollout state, prediction stream)
- ``SERVEKIT_BATCH_*``     the runner's adaptive micro-batcher
- ``SERVEKIT_*``           serving: shape, models, limits, model store, admin token
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchPolicy(BaseModel):
    """Batching policy for one model (the seed's: wait at most 10 ms, batch at most 32)."""

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
        20.0, gt=0, description="Per-call timeout on the serving path; slow calls fail open."
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
        "model_store", description="Local folder, s3://bucket/prefix, or bentoml (the BentoML model store)."
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto).")
    models: list[str] = Field(
        default_factory=lambda: ["fraud"],
        description="Models preloaded and pinned at start-up (JSON list or comma-separated).",
    )
    max_records: int = Field(256, ge=1, description="Most records in one /predict request.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted.")
    ort_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads per session.")
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference, e.g. "
        '["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"].',
    )
    admin_token: str | None = Field(None, description="Bearer token of the admin routes; unset: off.")
    workers: int = Field(1, ge=1, le=64, description="BentoML worker processes of the gateway.")


class Settings(BaseModel):
    """Every area's settings, read once."""

    redis: RedisSettings = Field(default_factory=RedisSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
