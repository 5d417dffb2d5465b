"""Failed admin authentications over HTTP: 401, then 429 with Retry-After, counted."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, ServerProcess

TOKEN = "auth-limit-token-0123456789abcdef"


@pytest.fixture(scope="module")
def limited_gateway(fraud_store: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    server = ServerProcess(
        {
            "SERVEKIT_MODEL_STORE": str(fraud_store),
            "SERVEKIT_REDIS_URL": serving_redis_url,
            "SERVEKIT_ADMIN_TOKEN": TOKEN,
            "SERVEKIT_ADMIN_AUTH_MAX_FAILURES": "3",
            "SERVEKIT_ADMIN_AUTH_WINDOW_S": "3",
        }
    )
    yield server
    server.stop()


def failures(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith("servekit_admin_auth_failures_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def test_failed_admin_authentications_are_rate_limited(limited_gateway: ServerProcess) -> None:
    url = f"{limited_gateway.url}/admin/rollouts"
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url, headers=good).status_code == 200
    for _ in range(3):
        assert httpx.get(url, headers={"Authorization": "Bearer guess"}).status_code == 401
    limited = httpx.get(url, headers=good)
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["retry-after"]) >= 1
    assert "Traceback" not in limited.text
    assert failures(limited_gateway) == {"invalid": 3.0, "rate_limited": 1.0}
    time.sleep(1.1)  # one failure's worth refills in 1 s
    assert httpx.get(url, headers=good).status_code == 200
    assert httpx.get(f"{limited_gateway.url}/v2/health/ready").status_code == 200


def test_a_short_admin_token_stops_the_gateway_with_a_clear_message() -> None:
    code = "from services.settings import get_settings; get_settings()"
    env = {"SERVEKIT_ADMIN_TOKEN": "too-short", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "SERVEKIT_ADMIN_TOKEN is 9 characters; it must be at least 32" in proc.stderr
    assert "too-short" not in proc.stderr
