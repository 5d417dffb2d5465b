"""Decision-health report settings: where the gateway is, how long to watch it, and the
thresholds at which each serving decision of docs/design.md should be reconsidered."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DecisionSettings(BaseSettings):
    """The decision-health report (``servekit report decisions``, ``flows.decisions``)."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_DECISIONS_", extra="ignore")

    url: str = Field("http://127.0.0.1:3000", description="The gateway whose /metrics is read.")
    window_s: float = Field(
        60.0,
        ge=0,
        description="Seconds between the first and the last scrape of /metrics; rates are "
        "counter deltas over it. 0: one scrape (rates are then 'not enough data').",
    )
    scrapes: int = Field(
        6,
        ge=2,
        le=120,
        description="Scrapes spread over the window (consecutive pairs give the points of "
        "the GPU utilisation vs latency correlation).",
    )
    http_timeout_s: float = Field(5.0, gt=0, description="Timeout of each gateway request.")
    min_samples: int = Field(
        20,
        ge=1,
        description="Fewest requests, lookups or shadow pairs from which a rate, a share or "
        "a p99 is judged; fewer: 'not enough data'.",
    )
    batch_min_arrivals: float = Field(
        3.0,
        gt=0,
        description="Requests per batching window (max_wait_ms) under which batching buys little.",
    )
    p99_target_ms: float = Field(100.0, gt=0, description="Request p99 target of every model.")
    per_model_p99_target_ms: dict[str, float] = Field(
        default_factory=dict, description='p99 targets per model, JSON: {"fraud": 10}'
    )
    window_budget_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A batching window (max_wait_ms) over this share of the p99 target "
        "leaves too little of the budget to inference.",
    )
    dedicated_min_rps: float = Field(
        1.0, ge=0, description="A pinned (dedicated) model under this many requests/s idles."
    )
    shared_max_rps: float = Field(
        50.0,
        gt=0,
        description="A shared-pool model over this many requests/s earns a dedicated server.",
    )
    max_churn_per_hour: float = Field(
        60.0, ge=0, description="Most shared-pool loads plus evictions per hour."
    )
    cache_min_hit_rate: float = Field(
        0.05, ge=0, le=1, description="Under this hit rate the prediction cache costs more."
    )
    feature_max_age_s: float = Field(
        86_400.0, gt=0, description="Oldest a batch feature view may be (daily loads)."
    )
    feature_p99_ms: float = Field(5.0, gt=0, description="Feature retrieval p99 target.")
    probes: int = Field(
        200,
        ge=0,
        le=10_000,
        description="Feature reads and cache lookups the report times against Redis "
        "(0: none; the retrieval and lookup rows are then 'not enough data').",
    )
    max_anonymous_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Over this share of requests without a user id, user-level hashing "
        "buys little.",
    )
    min_gpu_latency_correlation: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="Under this correlation of GPU utilisation with latency, utilisation "
        "is a poor scaling signal.",
    )
    max_shadow_drop_rate: float = Field(
        0.01, ge=0, le=1, description="Most shadow jobs dropped (queue full) per job."
    )
    stream_entries: int = Field(
        1000, ge=10, description="Newest prediction and shadow entries read per model."
    )
