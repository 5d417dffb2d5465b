"""Monitoring settings: durations as people type them, and the defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.settings import MonitoringSettings, Settings, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), (90, 90), (1.5, 1.5), ("90s", 90), ("30m", 1800), ("1h", 3600),
     (" 2D ", 172_800), ("1w", 604_800), ("1.5h", 5400)],
)  # fmt: skip
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "h", "1y", "-1h", "0", 0, "1h30m", True])
def test_bad_durations(bad: str | float) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_MONITORING_WINDOW", "30m")
    monkeypatch.setenv("SERVEKIT_MONITORING_REPORTS", "s3://bucket/drift")
    settings = Settings().monitoring
    assert settings.window_s == 1800 and settings.reports == "s3://bucket/drift"
    defaults = MonitoringSettings()
    assert defaults.drift_share == 0.1 and defaults.min_rows == 1000
    monkeypatch.setenv("SERVEKIT_MONITORING_WINDOW", "soon")
    with pytest.raises(ValidationError, match="not a duration"):
        MonitoringSettings()
