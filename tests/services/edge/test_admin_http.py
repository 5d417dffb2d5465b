"""Admin routes (bearer token, constant-time) and POST /feedback, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess

TOKEN = "s3cret-token-0123456789abcdef-admin"
GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}


@pytest.fixture(scope="module")
def admin_gateway(fraud_store: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    server = ServerProcess(
        {
            "SERVEKIT_MODEL_STORE": str(fraud_store),
            "SERVEKIT_REDIS_URL": serving_redis_url,
            "SERVEKIT_ADMIN_TOKEN": TOKEN,
        }
    )
    yield server
    server.stop()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_admin_routes_are_off_without_a_token(gateway: ServerProcess) -> None:
    resp = httpx.get(f"{gateway.url}/admin/rollouts", headers=auth())
    assert resp.status_code == 404
    assert "SERVEKIT_ADMIN_TOKEN" in resp.json()["error"]


@pytest.mark.parametrize(
    "headers", [{}, auth("wrong"), {"Authorization": TOKEN}, {"Authorization": "Basic abc"}]
)
def test_admin_refuses_missing_or_wrong_token(
    admin_gateway: ServerProcess, headers: dict[str, str]
) -> None:
    resp = httpx.post(
        f"{admin_gateway.url}/admin/rollout",
        json={"model": "fraud", "action": "status"},
        headers=headers,
    )
    assert resp.status_code == 401
    assert resp.json()["type"] == "UnauthorizedError"


def test_admin_changes_rollout_state(admin_gateway: ServerProcess) -> None:
    url = f"{admin_gateway.url}/admin/rollout"
    r = httpx.post(
        url, json={"model": "fraud", "action": "set-primary", "version": "1"}, headers=auth()
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        url,
        json={
            "model": "fraud",
            "action": "canary",
            "candidate": "2",
            "percent": 5,
            "reason": "try v2",
        },
        headers=auth(),
    )
    assert r.status_code == 200, r.text
    state = r.json()["state"]
    assert (state["mode"], state["candidate"], state["percent"]) == ("canary", "2", 5.0)
    assert r.json()["history"][0]["reason"] == "try v2"
    r = httpx.post(
        url, json={"model": "fraud", "action": "percent", "percent": 150}, headers=auth()
    )
    assert r.status_code == 422 and r.json()["field"] == "percent"
    r = httpx.post(url, json={"model": "fraud", "action": "explode"}, headers=auth())
    assert r.status_code == 422 and r.json()["field"] == "action"
    r = httpx.post(
        url, json={"model": "fraud", "action": "rollback", "reason": "bad"}, headers=auth()
    )
    assert r.json()["state"]["mode"] == "off" and r.json()["state"]["candidate"] is None
    listing = httpx.get(f"{admin_gateway.url}/admin/rollouts", headers=auth()).json()
    assert listing["fraud"]["primary"] == "1"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"model": "fraud", "action": "set-primary", "version": "../1"}, "version"),
        ({"model": "fraud", "action": "set-primary", "version": "1\x00"}, "version"),
        ({"model": "fraud", "action": "shadow", "candidate": "a/b"}, "candidate"),
        ({"model": "fraud", "action": "canary", "candidate": "\n2"}, "candidate"),
        ({"model": "fraud", "action": "ab", "candidate": "2" * 65}, "candidate"),
        ({"model": "../fraud", "action": "status"}, "model"),
    ],
)
def test_admin_refuses_malformed_versions_and_models(
    admin_gateway: ServerProcess, doc: dict[str, str], field: str
) -> None:
    resp = httpx.post(f"{admin_gateway.url}/admin/rollout", json=doc, headers=auth())
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == field
