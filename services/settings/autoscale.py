"""Autoscaling settings: the GPU sampler behind the autoscaling metrics."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AutoscaleSettings(BaseSettings):
    """The GPU sampler (NVML) that exports the model process's GPUs on /metrics."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_AUTOSCALE_", extra="ignore")

    gpu_sampler: bool = Field(True, description="Sample GPUs; no NVML or GPU: no GPU series.")
    gpu_interval_s: float = Field(1.0, gt=0, le=60, description="Seconds between GPU samples.")
    gpu_window_s: float = Field(300.0, gt=0, description="GPU utilization moving-average window.")
