"""Monitoring settings: drift reports, their reference samples and their export to Redis."""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(value: str | float) -> float:
    """Seconds of a duration as people type it: ``90``, ``"90s"``, ``"30m"``, ``"1h"``,
    ``"2d"``, ``"1w"``. Raises ``ValueError`` for anything else or a zero duration."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).lower())
        if match is None:
            raise ValueError(
                f"not a duration: {value!r} (use seconds or a number with s, m, h, d or w)"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not seconds > 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


class MonitoringSettings(BaseSettings):
    """Drift reports: where they go, what they compare, and how the gateway shows them."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_MONITORING_", extra="ignore")

    reports: str = Field(
        "reports",
        description="Where drift reports (HTML and JSON) are saved: a local folder, or "
        "s3://bucket/prefix (with SERVEKIT_S3_ENDPOINT_URL for MinIO and the like).",
    )
    reference_rows: int = Field(
        5000,
        ge=10,
        description="Rows of the reference sample (input features and the model's "
        "predictions) stored beside each version at registration. Over 1,000 rows the drift "
        "tests are distances (Wasserstein, Jensen-Shannon) rather than p-values, which flag "
        "negligible shifts on large windows; more rows make the distances less noisy.",
    )
    window: str = Field(
        "1h", description="Default window of live traffic a report reads: 1h, 30m, 2d or seconds."
    )
    drift_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Share of a version's input columns that must drift for its report to "
        "say drift_detected. The default flags one drifted column of up to ten.",
    )
    min_rows: int = Field(
        1000,
        ge=1,
        description="Fewest logged rows of a version in the window to judge drift; with "
        "fewer, the report says there is too little traffic. The distances are noisy on "
        "small windows: on the demo model, unshifted windows of 500 rows scored up to 0.12 "
        "(the threshold is 0.1), of 1,000 rows up to 0.09.",
    )
    max_rows: int = Field(
        50_000, ge=100, description="Most rows a report reads: the newest of the window."
    )
    components: int = Field(
        5,
        ge=1,
        le=32,
        description="Principal components of an embedding output (fitted on the reference) "
        "tested for drift, beside the embedding's norm.",
    )
    metrics_refresh_s: float = Field(
        30.0,
        gt=0,
        description="How often a gateway re-reads the exported drift results from Redis for "
        "its /metrics (in the background, never at scrape time).",
    )
    result_ttl_s: int = Field(
        2 * 86_400,
        ge=60,
        description="Exported drift results older than this are dropped from Redis and from "
        "/metrics (a version that stopped serving stops being reported).",
    )

    @field_validator("window")
    @classmethod
    def _window_is_a_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def window_s(self) -> float:
        """The default window in seconds."""
        return parse_duration(self.window)
