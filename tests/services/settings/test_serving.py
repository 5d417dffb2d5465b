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


@pytest.mark.parametrize("name", ["SERVEKIT_INGEST_TOKEN", "SERVEKIT_REQUEST_ID_SECRET"])
def test_short_ingest_secrets_are_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "hunter2-secret")
    with pytest.raises(ValidationError) as err:
        ServingSettings()
    message = str(err.value)
    assert f"{name} is 14 characters; it must be at least 32" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("other", ["SERVEKIT_ADMIN_TOKEN", "SERVEKIT_REQUEST_ID_SECRET"])
def test_the_ingest_token_must_differ_from_the_other_secrets(
    monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    monkeypatch.setenv("SERVEKIT_INGEST_TOKEN", "s" * 32)
    monkeypatch.setenv(other, "s" * 32)
    with pytest.raises(ValidationError) as err:
        ServingSettings()
    assert "SERVEKIT_INGEST_TOKEN must differ from SERVEKIT_ADMIN_TOKEN" in str(err.value)
    assert "s" * 32 not in str(err.value)
    monkeypatch.setenv(other, "t" * 32)
    assert ServingSettings().ingest_token == "s" * 32


def test_several_workers_need_a_shared_request_id_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVEKIT_WORKERS", "2")
    with pytest.raises(ValidationError, match="needs SERVEKIT_REQUEST_ID_SECRET"):
        ServingSettings()
    monkeypatch.setenv("SERVEKIT_REQUEST_ID_SECRET", "k" * 32)
    assert ServingSettings().workers == 2
