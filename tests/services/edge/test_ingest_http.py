"""The ingest routes over real HTTP: the ingest token (not the admin one), rate-limited
failures, loopback-only ingest without a token, and feedback only for signed request ids
of answered predictions, every refusal counted by reason."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks.fault_cases import RedisServer
from services.edge.ingest import FEEDBACK_REJECTIONS
from services.rollout.signing import AnsweredPrediction, RequestSigner
from tests.conftest import ServerProcess, free_port

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
    before = int(time.time())
    answer = predict(ingest_gateway.url, request_id="client-chosen.id")
    carried = RequestSigner(SECRET).verify(answer["signed_request_id"])
    assert carried == AnsweredPrediction(
        "client-chosen.id", "fraud", "primary", answer["version"], None, carried.issued_at
    )
    assert before <= carried.issued_at <= time.time()
    generated = predict(ingest_gateway.url)
    assert generated["signed_request_id"].startswith(generated["request_id"] + ".")


def resign(signed: str, fields: list[object]) -> str:
    """``signed`` with its payload replaced by ``fields`` and its signature kept."""
    signed_part, _, mac = signed.rpartition(".")
    request_id = signed_part.rpartition(".")[0]
    text = json.dumps(fields, separators=(",", ":")).encode()
    payload = base64.urlsafe_b64encode(text).rstrip(b"=").decode()
    return f"{request_id}.{payload}.{mac}"


def test_feedback_counts_only_signed_ids_of_answered_predictions(
    ingest_gateway: ServerProcess,
) -> None:
    url = ingest_gateway.url
    wait_for_good_token(url)
    before = counters(ingest_gateway, "servekit_feedback_rejected_total")
    answer = predict(url)
    signed, request_id = answer["signed_request_id"], answer["request_id"]
    carried = RequestSigner(SECRET).verify(signed)
    mac = signed.rsplit(".", 1)[1]
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    as_candidate = [carried.issued_at, "fraud", answer["version"], "c", ""]
    refused = {
        "unsigned": {"request_id": request_id, "outcome": 1},
        "malformed": {"signed_request_id": request_id, "outcome": 1},
        "forged": {"signed_request_id": signed.rsplit(".", 1)[0] + "." + flipped, "outcome": 1},
    }
    for reason, doc in refused.items():
        resp = feedback(url, doc)
        assert resp.status_code == 422, resp.text
        assert resp.json()["reason"] == reason and resp.json()["field"] == "signed_request_id"
    # The payload altered (the variant changed), the signature kept: forged.
    resp = feedback(url, {"signed_request_id": resign(signed, as_candidate), "outcome": 1})
    assert resp.status_code == 422 and resp.json()["reason"] == "forged", resp.text
    # Another prediction's payload and signature do not carry over to a different id.
    other = predict(url)["signed_request_id"].split(".", 1)[1]
    resp = feedback(url, {"signed_request_id": f"{request_id}.{other}", "outcome": 1})
    assert resp.json()["reason"] == "forged"
    # Signed with the right key, longer ago than the TTL (7 days): expired (410), named.
    week_ago = RequestSigner(SECRET, clock=lambda: time.time() - 7 * 86_400 - 60)
    old = week_ago.sign(
        request_id, model="fraud", variant="primary", version="1", experiment_id=None
    )
    resp = feedback(url, {"signed_request_id": old, "outcome": 1})
    assert resp.status_code == 410 and "expired" in resp.json()["error"], resp.text
    ok = feedback(url, {"signed_request_id": signed, "outcome": True})
    assert ok.status_code == 201, ok.text
    assert ok.json() == {
        "request_id": request_id, "model": "fraud", "experiment_id": "baseline",
        "variant": answer["variant"], "version": answer["version"],
    }  # fmt: skip
    assert feedback(url, {"signed_request_id": signed, "outcome": True}).status_code == 409
    after = counters(ingest_gateway, "servekit_feedback_rejected_total")
    delta = {k: after[k] - before[k] for k in FEEDBACK_REJECTIONS}
    assert delta == {"unsigned": 1, "malformed": 1, "forged": 3, "expired": 1, "duplicate": 1}


@pytest.fixture
def own_redis(work_dir: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port, that the test stops and starts."""
    server = RedisServer(free_port(), work_dir / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("r")


def test_feedback_of_a_prediction_answered_while_redis_was_down(
    fraud_store: Path, own_redis: RedisServer
) -> None:
    """Nothing is written for attribution when a prediction is answered: one answered while
    Redis is unreachable gets its outcome counted once Redis is back."""
    server = ServerProcess(
        {
            "SERVEKIT_MODEL_STORE": str(fraud_store),
            "SERVEKIT_REDIS_URL": own_redis.url,
            "SERVEKIT_INGEST_TOKEN": INGEST,
            "SERVEKIT_REQUEST_ID_SECRET": SECRET,
        }
    )
    try:
        url = server.url
        own_redis.stop()
        answer = predict(url)  # degraded (no cache, default features), answered
        doc = {"signed_request_id": answer["signed_request_id"], "outcome": 1}
        down = feedback(url, doc)
        assert down.status_code == 503 and down.headers["retry-after"], down.text
        own_redis.start()
        deadline = time.monotonic() + 15
        while (resp := feedback(url, doc)).status_code == 503:  # until it reconnects
            assert time.monotonic() < deadline, resp.text
            time.sleep(0.2)
        assert resp.status_code == 201, resp.text
        assert (resp.json()["request_id"], resp.json()["version"]) == (
            answer["request_id"],
            answer["version"],
        )
        assert feedback(url, doc).status_code == 409
    finally:
        server.stop()


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
