"""The ingest routes over real HTTP: the ingest token (not the admin one), rate-limited
failures, loopback-only ingest without a token, and feedback only for signed request ids
of answered predictions, every refusal counted by reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from services.rollout.signing import RequestSigner
from tests.conftest import ServerProcess

ADMIN = "ingest-test-admin-token-0123456789ab"
INGEST = "ingest-test-ingest-token-0123456789"
SECRET = "ingest-test-request-id-secret-01234567"
GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def event() -> dict[str, object]:
    return {"timestamp": time.time(), "entities": {"user": "u-ingest"}, "amount": 3.0}


@pytest.fixture(scope="module")
def ingest_gateway(fraud_store: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    server = ServerProcess(
        {
            "SERVEKIT_MODEL_STORE": str(fraud_store),
            "SERVEKIT_REDIS_URL": serving_redis_url,
            "SERVEKIT_ADMIN_TOKEN": ADMIN,
            "SERVEKIT_INGEST_TOKEN": INGEST,
            "SERVEKIT_REQUEST_ID_SECRET": SECRET,
            "SERVEKIT_ADMIN_AUTH_MAX_FAILURES": "4",  # refills one failure a second
            "SERVEKIT_ADMIN_AUTH_WINDOW_S": "4",
        }
    )
    yield server
    server.stop()


def counters(server: ServerProcess, family: str, url: str | None = None) -> dict[str, float]:
    text = httpx.get(f"{url or server.url}/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith(family + "{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def wait_for_good_token(url: str) -> None:
    """Poll until this address's failure bucket lets the right token through again."""
    deadline = time.monotonic() + 10
    while httpx.post(f"{url}/events", json=event(), headers=bearer(INGEST)).status_code != 202:
        assert time.monotonic() < deadline, "the ingest bucket never refilled"
        time.sleep(0.1)


def test_ingest_routes_take_the_ingest_token_only(ingest_gateway: ServerProcess) -> None:
    url = ingest_gateway.url
    before = counters(ingest_gateway, "servekit_ingest_auth_failures_total")
    for path in ("/events", "/feedback"):
        for headers in ({}, bearer(ADMIN)):  # no token; the admin token is not an ingest one
            resp = httpx.post(f"{url}{path}", json=event(), headers=headers)
            assert resp.status_code == 401, resp.text
            assert "ingest token" in resp.json()["error"]
    wait_for_good_token(url)
    assert httpx.post(f"{url}/events", json=event(), headers=bearer(INGEST)).status_code == 202
    after = counters(ingest_gateway, "servekit_ingest_auth_failures_total")
    assert after["invalid"] - before["invalid"] == 4
    # The ingest token opens no admin route.
    assert httpx.get(f"{url}/admin/rollouts", headers=bearer(INGEST)).status_code == 401
    wait_for_good_token(url)


def predict(url: str, **extra: str) -> dict[str, str]:
    body = {"model": "fraud", "inputs": [GOOD], **extra}
    resp = httpx.post(f"{url}/predict", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def feedback(url: str, doc: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}/feedback", json=doc, headers=bearer(INGEST))


def test_predictions_answer_with_a_signed_request_id(ingest_gateway: ServerProcess) -> None:
    answer = predict(ingest_gateway.url, request_id="client-chosen.id")
    assert answer["signed_request_id"] == RequestSigner(SECRET).sign("client-chosen.id")
    generated = predict(ingest_gateway.url)
    assert generated["signed_request_id"].startswith(generated["request_id"] + ".")


def test_feedback_counts_only_signed_ids_of_answered_predictions(
    ingest_gateway: ServerProcess,
) -> None:
    url = ingest_gateway.url
    wait_for_good_token(url)
    before = counters(ingest_gateway, "servekit_feedback_rejected_total")
    answer = predict(url)
    signed, request_id = answer["signed_request_id"], answer["request_id"]
    mac = signed.rsplit(".", 1)[1]
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    refused = {
        "unsigned": {"request_id": request_id, "outcome": 1},
        "malformed": {"signed_request_id": request_id, "outcome": 1},
        "forged": {"signed_request_id": f"{request_id}.{flipped}", "outcome": 1},
    }
    for reason, doc in refused.items():
        resp = feedback(url, doc)
        assert resp.status_code == 422, resp.text
        assert resp.json()["reason"] == reason and resp.json()["field"] == "signed_request_id"
    # Another prediction's signature does not carry over to a different id.
    other = predict(url)["signed_request_id"].rsplit(".", 1)[1]
    assert (
        feedback(url, {"signed_request_id": f"{request_id}.{other}", "outcome": 1}).json()["reason"]
        == "forged"
    )
    # Signed with the right key but never answered: unknown (404), named.
    never = RequestSigner(SECRET).sign("never-answered-here")
    resp = feedback(url, {"signed_request_id": never, "outcome": 1})
    assert resp.status_code == 404 and "unknown request_id" in resp.json()["error"]
    ok = feedback(url, {"signed_request_id": signed, "outcome": True})
    assert ok.status_code == 201, ok.text
    assert ok.json()["request_id"] == request_id and ok.json()["version"] == answer["version"]
    assert feedback(url, {"signed_request_id": signed, "outcome": True}).status_code == 409
    after = counters(ingest_gateway, "servekit_feedback_rejected_total")
    delta = {k: after[k] - before[k] for k in after}
    assert delta == {
        "unsigned": 1, "malformed": 1, "forged": 2, "unknown": 1, "expired": 0, "duplicate": 1,
    }  # fmt: skip


def test_failed_ingest_authentications_are_rate_limited(ingest_gateway: ServerProcess) -> None:
    url = ingest_gateway.url
    wait_for_good_token(url)
    before = counters(ingest_gateway, "servekit_ingest_auth_failures_total")
    guesses = 0
    while (
        resp := httpx.post(f"{url}/events", json=event(), headers=bearer("guess"))
    ).status_code == 401:
        guesses += 1
        assert guesses <= 4, "more than max_failures guesses were let through"
    assert resp.status_code == 429 and guesses >= 1, resp.text
    limited = httpx.post(f"{url}/events", json=event(), headers=bearer(INGEST))
    assert limited.status_code == 429, limited.text  # the right token too, until refilled
    assert int(limited.headers["retry-after"]) >= 1
    after = counters(ingest_gateway, "servekit_ingest_auth_failures_total")
    assert after["invalid"] - before["invalid"] == guesses
    assert after["rate_limited"] - before["rate_limited"] == 2
    # The admin token's buckets are its own: the admin routes still answer.
    assert httpx.get(f"{url}/admin/rollouts", headers=bearer(ADMIN)).status_code == 200
    wait_for_good_token(url)


def outside_address() -> str | None:
    """A non-loopback IPv4 address of this machine (a client there is not loopback)."""
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return str(a.address)
    return None


@pytest.fixture(scope="module")
def open_gateway(fraud_store: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    """No ingest token, bound to every interface."""
    server = ServerProcess(
        {"SERVEKIT_MODEL_STORE": str(fraud_store), "SERVEKIT_REDIS_URL": serving_redis_url},
        host="0.0.0.0",
    )
    yield server
    server.stop()


def test_without_an_ingest_token_only_loopback_clients_may_ingest(
    open_gateway: ServerProcess,
) -> None:
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    outside = f"http://{address}:{open_gateway.port}"
    assert httpx.post(f"{open_gateway.url}/events", json=event()).status_code == 202
    for path in ("/events", "/feedback"):
        resp = httpx.post(f"{outside}{path}", json=event())
        assert resp.status_code == 403, resp.text
        assert "SERVEKIT_INGEST_TOKEN" in resp.json()["error"]
    assert httpx.post(f"{outside}/predict", json={"model": "fraud", "inputs": [GOOD]}).is_success
    failures = counters(open_gateway, "servekit_ingest_auth_failures_total")
    assert failures["not_loopback"] == 2
