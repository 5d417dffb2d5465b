"""Rollout profiles: production windows from the settings, or a demo that runs in minutes.

``production`` (the default) takes every window and gate from ``RolloutSettings``
(``SERVEKIT_ROLLOUT_*``: a 24 h shadow, four canary steps of 42 h). ``demo`` shortens the
windows so a whole rollout runs in about three minutes against a gateway fed by
``python -m flows.demo_traffic``: a 60 s shadow, canary steps of 10, 50 and 100 % for
30 s each, looks every 10 s, and 50 pairs or predictions to judge. Explicit flow
parameters win over the profile; the reports mark every value that differs from the
settings as overridden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Profile = Literal["production", "demo"]


@dataclass(frozen=True, slots=True)
class ProfileValues:
    """What a profile sets (None: the settings' value)."""

    shadow_window_s: float | None = None
    canary_steps: list[float] | None = None
    step_duration_s: float | None = None
    shadow_options: dict[str, Any] | None = None
    canary_options: dict[str, Any] | None = None


DEMO = ProfileValues(
    shadow_window_s=60.0,
    canary_steps=[10.0, 50.0, 100.0],
    step_duration_s=30.0,
    shadow_options={"min_pairs": 50, "poll_s": 10.0},
    canary_options={"min_predictions": 50, "poll_s": 10.0},
)


def profile_values(profile: Profile) -> ProfileValues:
    """The values of ``profile``."""
    if profile == "demo":
        return DEMO
    if profile == "production":
        return ProfileValues()
    raise ValueError(f"unknown rollout profile {profile!r}; expected production or demo")
