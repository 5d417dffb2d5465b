"""Redis-backed state settings: the connection, the prediction cache, the feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RedisSettings(BaseSettings):
    """Where Redis is. No URL: servekit starts a private redis-server on a Unix socket."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_REDIS_", extra="ignore")

    url: str | None = Field(
        None,
        description="redis://host:port/db or unix:///path.sock; a Redis Cluster: "
        "redis+cluster://host:port (any node; database 0 only).",
    )
    embedded_dir: Path = Field(Path(".servekit/redis"), description="Embedded server's dir.")
    socket_timeout_ms: float = Field(
        100.0,
        gt=0,
        description="Socket timeout on the serving path; slow calls fail open (see the "
        "cache's timeout_ms for why it is not a few ms).",
    )
    stream_maxlen: int = Field(100_000, ge=100, description="Cap of the prediction stream.")

    @field_validator("url")
    @classmethod
    def _cluster_db_zero(cls, url: str | None) -> str | None:
        scheme, _, rest = (url or "").partition("://")
        if scheme.lower().endswith("+cluster"):
            path = urlsplit(f"redis://{rest}").path.strip("/")
            if path not in ("", "0"):
                raise ValueError(f"a Redis Cluster has only database 0, not {path!r}")
        return url

    worker_socket_timeout_ms: float = Field(
        10_000.0,
        gt=0,
        description="Socket timeout of the client that the real-time worker (blocking stream "
        "reads) and rollout changes use: patient, as they wait on a busy Redis.",
    )
    background_socket_timeout_ms: float = Field(
        500.0,
        gt=0,
        description="Socket timeout of the client that writes the prediction log and feedback "
        "off the request path.",
    )


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
    cost_policy: bool = Field(
        True,
        description="Also switch a model's cache by CPU cost: on only while the runner CPU "
        "its hits save (hit rate x CPU per row) outweighs the cache's own CPU per lookup.",
    )
    cost_off_ratio: float = Field(
        1.0, gt=0, description="Saved/spent CPU under which a model's cache turns off."
    )
    cost_on_ratio: float = Field(
        1.5, gt=0, description="Probed saved/spent CPU at which an off cache turns back on."
    )
    cost_probe_rate: float = Field(
        0.005,
        gt=0,
        le=1,
        description="Share of inputs still cached while a model's cache is off for cost "
        "(at most probe_rate).",
    )
    cost_min_rows: int = Field(
        100, ge=10, description="Metered looked-up rows before the CPU costs decide anything."
    )
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
    fast_client: bool = Field(
        True,
        description="Online reads over services.state.resp's lean pipelined connection "
        "(single server, not TLS); off: over redis-py's client.",
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
