"""All of servekit's configuration, read from the environment (prefix ``SERVEKIT_``).

No other module reads ``os.environ``: they take a settings object (or the part of it they
need) in their constructor. ``get_settings()`` returns the process-wide instance.

One class per area, each with its own prefix and module (serving, state, rollout, convert,
autoscale, decisions, monitoring):

- ``SERVEKIT_REDIS_*``     Redis (cache, features, rollout state, prediction stream)
- ``SERVEKIT_BATCH_*``     the runner's adaptive micro-batcher
- ``SERVEKIT_CACHE_*``     the Redis prediction cache
- ``SERVEKIT_FEATURES_*``  the feature store (views, event stream, real-time worker)
- ``SERVEKIT_ROLLOUT_*``   shadow and canary rollouts, their gates, A/B analysis
- ``SERVEKIT_CONVERT_*``   the conversion flow: opset, parity tolerances, variants, TensorRT
- ``SERVEKIT_*``           serving: shape, models, limits, model store, admin token
- ``SERVEKIT_MULTIMODEL_*`` the shared runner's pool: memory budget, idle unload, isolation
- ``SERVEKIT_AUTOSCALE_*`` the GPU sampler behind the autoscaling metrics
- ``SERVEKIT_DECISIONS_*`` the decision-health report: gateway, window, thresholds
- ``SERVEKIT_MONITORING_*`` drift reports: reference samples, windows, reports location
"""

from __future__ import annotations

import functools

from pydantic import BaseModel, Field

from services.settings.autoscale import AutoscaleSettings
from services.settings.convert import ConvertSettings
from services.settings.decisions import DecisionSettings
from services.settings.monitoring import MonitoringSettings, parse_duration
from services.settings.rollout import RolloutSettings
from services.settings.serving import (
    BatchPolicy,
    BatchSettings,
    ModelLimits,
    MultiModelSettings,
    ServingSettings,
)
from services.settings.state import CacheSettings, FeatureSettings, RedisSettings

__all__ = [
    "AutoscaleSettings",
    "BatchPolicy",
    "BatchSettings",
    "CacheSettings",
    "ConvertSettings",
    "DecisionSettings",
    "FeatureSettings",
    "ModelLimits",
    "MonitoringSettings",
    "MultiModelSettings",
    "RedisSettings",
    "RolloutSettings",
    "ServingSettings",
    "Settings",
    "get_settings",
    "parse_duration",
]


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
    decisions: DecisionSettings = Field(default_factory=DecisionSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
