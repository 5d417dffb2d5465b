"""Serving settings: the admin token must be long enough, and is never echoed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.settings.serving import ServingSettings


def test_a_short_admin_token_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_ADMIN_TOKEN", "hunter2-secret")
    with pytest.raises(ValidationError) as err:
        ServingSettings()
    message = str(err.value)
    assert "SERVEKIT_ADMIN_TOKEN is 14 characters; it must be at least 32" in message
    assert "hunter2" not in message


def test_a_long_admin_token_or_none_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_ADMIN_TOKEN", "a" * 32)
    assert ServingSettings().admin_token == "a" * 32
    monkeypatch.delenv("SERVEKIT_ADMIN_TOKEN")
    assert ServingSettings().admin_token is None
