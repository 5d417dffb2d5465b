"""Malformed versions get a 4xx naming the field at every entry point, never a 500."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ServerProcess

GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}
BAD_VERSIONS = ["../1", "1/../../etc", "a\x00b", "1\nx", "\x1b[31m", ".", "..", "v" * 65, "1 2"]


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_predict_refuses_malformed_versions(gateway: ServerProcess, version: str) -> None:
    resp = httpx.post(
        f"{gateway.url}/predict", json={"model": "fraud", "version": version, "inputs": [GOOD]}
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == "version"


@pytest.mark.parametrize("version", ["a\x00b", "\x1b[31m", "1\tx", ".x", "v" * 65, "1 2"])
@pytest.mark.parametrize("suffix", ["", "/ready", "/infer"])
def test_oip_path_refuses_malformed_versions(
    gateway: ServerProcess, version: str, suffix: str
) -> None:
    url = f"{gateway.url}/v2/models/fraud/versions/{quote(version, safe='')}{suffix}"
    resp = httpx.post(url, json={"inputs": []}) if suffix == "/infer" else httpx.get(url)
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == "version"


@pytest.mark.parametrize("version", ["%2e%2e", "1%2F..%2F..", "%2F", "1%0Ax", "%00"])
def test_oip_path_segments_never_reach_the_store(gateway: ServerProcess, version: str) -> None:
    # Some of these never reach servekit's router (the server's own 404): any 4xx will do.
    resp = httpx.get(f"{gateway.url}/v2/models/fraud/versions/{version}")
    assert 400 <= resp.status_code < 500, resp.text
    assert "Traceback" not in resp.text


def test_a_well_formed_unknown_version_is_404(gateway: ServerProcess) -> None:
    resp = httpx.get(f"{gateway.url}/v2/models/fraud/versions/12345")
    assert resp.status_code == 404
    assert httpx.get(f"{gateway.url}/v2/health/ready").status_code == 200
