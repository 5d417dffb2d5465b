"""Rollout settings: shadow runs, canaries, their gates and the A/B analysis."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    canary_interval_s: float = Field(
        60.0,
        gt=0,
        description="Observation interval of a canary step: its progress is saved after "
        "each one, so a restarted flow or a retried look resumes the step from there.",
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
        7 * 86_400,
        ge=60,
        description="How long a prediction waits for its outcome (its signed request id "
        "expires then).",
    )
    history_maxlen: int = Field(1000, ge=10, description="Changes kept per model's history.")
    prediction_log_sample: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of requests written to the prediction stream (drift reports) "
        "while no rollout runs; during a rollout, all of them.",
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
        1024, ge=1, description="Prediction records buffered for the counters before drops."
    )
    counter_ttl_s: int = Field(
        90 * 86_400,
        ge=60,
        description="How long an experiment's per-variant counters outlive their last write.",
    )
    latency_slack_ms: float = Field(
        1.0,
        ge=0,
        description="Gate: milliseconds allowed on top of the p99 latency ratio, so that "
        "sub-millisecond noise on fast models does not fail a gate.",
    )
    regression_rtol: float = Field(
        1e-3, ge=0, description="Gate: relative error under which shadow regression outputs agree."
    )
    min_pairs: int = Field(
        100, ge=0, description="Gate: fewest shadow pairs to judge; fewer fails the shadow gate."
    )
    min_predictions: int = Field(
        100,
        ge=0,
        description="Gate: fewest candidate predictions to judge a canary step's error rate "
        "and latency; fewer at the step's end fails it.",
    )
    min_outcomes: int = Field(
        100, ge=0, description="Gate: outcomes per variant before the canary's mSPRT is run."
    )
    max_drift_psi: float = Field(
        0.25,
        gt=0,
        description="Gate: largest population stability index of the candidate's predicted "
        "labels or class-probability histograms against the primary's on the same window "
        "(shadow and canary); over it the candidate is rolled back before any outcome.",
    )

    @field_validator("canary_steps")
    @classmethod
    def _increasing_percents(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < p <= 100 for p in steps):
            raise ValueError("canary steps must be percents in (0, 100]")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError("canary steps must increase")
        return steps
