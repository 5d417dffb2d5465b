"""Rollouts through the gateway over real HTTP: sticky canary assignment, shadow mode,
feedback attribution, and no failed request while promoting or rolling back under load."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import redis

from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from tests.conftest import INGEST, INGEST_TOKEN, ServerProcess

pytestmark = pytest.mark.slow

TOKEN = "rollout-token-0123456789abcdef-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}


@pytest.fixture(scope="module")
def two_versions(fraud_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two_versions") / "store"
    shutil.copytree(fraud_store, root)
    registry = ModelRegistry(LocalStore(root))
    v1 = registry.get("fraud", "1")
    registry.register("fraud", registry.load_artifact(v1), schema=v1.model_schema)  # version 2
    return root


@pytest.fixture(scope="module")
def rollout_gateway(two_versions: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    from services.state.keys import rollout_state_key, shadow_stream_key

    redis.Redis.from_url(serving_redis_url).delete(
        rollout_state_key("fraud"), shadow_stream_key("fraud")
    )
    server = ServerProcess(
        {
            "SERVEKIT_MODEL_STORE": str(two_versions),
            "SERVEKIT_REDIS_URL": serving_redis_url,
            "SERVEKIT_ADMIN_TOKEN": TOKEN,
            "SERVEKIT_INGEST_TOKEN": INGEST_TOKEN,
            "SERVEKIT_CACHE_ENABLED": "false",
        }
    )
    yield server
    # Other gateways of this test run follow these notices: hand "fraud" back to version 1.
    httpx.post(
        f"{server.url}/admin/rollout",
        json={"model": "fraud", "action": "set-primary", "version": "1"},
        headers=AUTH,
    )
    server.stop()
    # Leave no rollout of "fraud" behind for the gateways other modules start later.
    from services.state.keys import rollout_history_key, rollout_models_key, rollout_state_key

    r = redis.Redis.from_url(serving_redis_url)
    r.delete(rollout_state_key("fraud"), rollout_history_key("fraud"))
    r.srem(rollout_models_key(), "fraud")


def admin(server: ServerProcess, **body: object) -> dict[str, object]:
    resp = httpx.post(f"{server.url}/admin/rollout", json={"model": "fraud", **body}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_for_mode(server: ServerProcess, user: str, version: str, timeout: float = 5.0) -> None:
    """Wait (on a condition, not a fixed sleep) until the gateway's follower applied it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.post(
            f"{server.url}/predict", json={"model": "fraud", "inputs": [GOOD], "user_id": user}
        ).json()
        if body["version"] == version:
            return
        time.sleep(0.02)
    raise AssertionError(f"gateway did not follow the rollout within {timeout}s")


def test_the_gateway_gives_its_served_model_a_rollout_state(
    rollout_gateway: ServerProcess,
) -> None:
    # The fixture removed any state before the gateway started; starting created it.
    deadline = time.monotonic() + 5
    states: dict[str, object] = {}
    while "fraud" not in states and time.monotonic() < deadline:
        states = httpx.get(f"{rollout_gateway.url}/admin/rollouts", headers=AUTH).json()
        time.sleep(0.05)
    state = states["fraud"]
    assert state["mode"] == "off" and state["primary"] == "1"  # type: ignore[index]
    history = admin(rollout_gateway, action="status")["history"]
    assert history[-1]["action"] == "init"  # type: ignore[index]


def test_canary_is_sticky_per_user_and_splits(rollout_gateway: ServerProcess) -> None:
    url = rollout_gateway.url
    admin(rollout_gateway, action="set-primary", version="1")
    state = admin(rollout_gateway, action="canary", candidate="2", percent=50)["state"]
    salt = state["salt"]  # type: ignore[index]
    from services.rollout.assignment import bucket

    user_on_candidate = next(f"u{i}" for i in range(1000) if bucket(salt, f"u{i}") < 5000)
    wait_for_mode(rollout_gateway, user_on_candidate, "2")
    seen: dict[str, set[str]] = {}
    for i in range(200):
        user = f"user-{i % 50}"
        body = httpx.post(
            f"{url}/predict", json={"model": "fraud", "inputs": [GOOD], "user_id": user}
        ).json()
        assert body["assignment"] == "user"
        assert body["variant"] == ("candidate" if body["version"] == "2" else "primary")
        seen.setdefault(user, set()).add(body["version"])
    assert all(len(v) == 1 for v in seen.values())  # sticky
    on_candidate = sum(v == {"2"} for v in seen.values())
    assert 10 <= on_candidate <= 40  # 50 % of 50 users, loosely
    anon = httpx.post(f"{url}/predict", json={"model": "fraud", "inputs": [GOOD]}).json()
    assert anon["assignment"] == "request"
    admin(rollout_gateway, action="rollback", reason="test over")


def test_feedback_is_attributed_to_the_serving_variant(rollout_gateway: ServerProcess) -> None:
    state = admin(rollout_gateway, action="canary", candidate="2", percent=50)["state"]
    from services.rollout.assignment import bucket

    user = next(f"fb{i}" for i in range(1000) if bucket(state["salt"], f"fb{i}") < 5000)  # type: ignore[index]
    wait_for_mode(rollout_gateway, user, "2")
    body = httpx.post(
        f"{rollout_gateway.url}/predict",
        json={"model": "fraud", "inputs": [GOOD], "request_id": "fb-1"},
    ).json()
    outcome = {"signed_request_id": body["signed_request_id"], "outcome": True}
    resp = httpx.post(f"{rollout_gateway.url}/feedback", json=outcome, headers=INGEST)
    assert resp.status_code == 201, resp.text
    assert resp.json()["variant"] == body["variant"] and resp.json()["version"] == body["version"]
    again = httpx.post(f"{rollout_gateway.url}/feedback", json=outcome, headers=INGEST)
    assert again.status_code == 409
    admin(rollout_gateway, action="rollback", reason="feedback test over")


def test_shadow_answers_with_primary_and_logs_pairs(
    rollout_gateway: ServerProcess, serving_redis_url: str
) -> None:
    admin(rollout_gateway, action="shadow", candidate="2")
    r = redis.Redis.from_url(serving_redis_url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = httpx.post(
            f"{rollout_gateway.url}/predict",
            json={"model": "fraud", "inputs": [GOOD], "user_id": "s1"},
        ).json()
        assert body["version"] == "1" and body["variant"] == "primary"
        if r.xlen("servekit:shadow:fraud") >= 5:
            break
        time.sleep(0.02)
    pairs = r.xrange("servekit:shadow:fraud", count=5)
    assert len(pairs) == 5
    admin(rollout_gateway, action="rollback", reason="shadow test over")


def test_no_request_fails_during_promote_and_rollback(rollout_gateway: ServerProcess) -> None:
    url = rollout_gateway.url

    async def load(stop: asyncio.Event) -> list[int]:
        statuses: list[int] = []
        async with aiohttp.ClientSession() as s:

            async def client(k: int) -> None:
                i = 0
                while not stop.is_set():
                    payload = {"model": "fraud", "inputs": [GOOD], "user_id": f"load-{k}-{i % 20}"}
                    async with s.post(f"{url}/predict", json=payload) as resp:
                        await resp.read()
                        statuses.append(resp.status)
                    i += 1

            await asyncio.gather(*(client(k) for k in range(8)))
        return statuses

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        task = asyncio.create_task(load(stop))
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as c:
            for action in (
                {"action": "canary", "candidate": "2", "percent": 50},
                {"action": "promote"},
                {"action": "canary", "candidate": "1", "percent": 25},
                {"action": "rollback"},
            ):
                await asyncio.sleep(0.3)
                r = await c.post("/admin/rollout", json={"model": "fraud", **action})
                assert r.status_code == 200, r.text
        await asyncio.sleep(0.3)
        stop.set()
        return await task

    statuses = asyncio.run(scenario())
    assert len(statuses) > 100
    assert set(statuses) == {200}


def test_feedback_right_after_predict_outside_a_rollout(rollout_gateway: ServerProcess) -> None:
    admin(rollout_gateway, action="set-primary", version="1")  # mode off: 10 % logged
    url = rollout_gateway.url
    statuses = []
    with httpx.Client(headers=INGEST) as client:
        for i in range(20):
            body = client.post(
                f"{url}/predict", json={"model": "fraud", "inputs": [GOOD], "user_id": f"i{i}"}
            ).json()
            resp = client.post(
                f"{url}/feedback",
                json={"signed_request_id": body["signed_request_id"], "outcome": i % 2},
            )
            statuses.append(resp.status_code)
            assert resp.status_code != 201 or resp.json()["version"] == body["version"]
    assert statuses == [201] * 20
    payload = body["signed_request_id"].split(".")[1]
    forged = {"signed_request_id": f"never-seen.{payload}." + "A" * 22, "outcome": 1}
    refused = httpx.post(f"{url}/feedback", json=forged, headers=INGEST)
    assert refused.status_code == 422 and refused.json()["reason"] == "forged"


def test_models_shows_what_predict_answers_after_a_promotion(
    rollout_gateway: ServerProcess,
) -> None:
    admin(rollout_gateway, action="set-primary", version="1")
    admin(rollout_gateway, action="canary", candidate="2", percent=5)
    admin(rollout_gateway, action="promote", reason="gates passed")
    wait_for_mode(rollout_gateway, "anyone", "2")
    answered = httpx.post(
        f"{rollout_gateway.url}/predict", json={"model": "fraud", "inputs": [GOOD]}
    ).json()
    (fraud,) = [m for m in httpx.get(f"{rollout_gateway.url}/models").json()["models"]
                if m["name"] == "fraud"]  # fmt: skip
    assert answered["version"] == fraud["served_version"] == "2"
    stages = {v["version"]: v["stage"] for v in fraud["versions"]}
    assert stages == {"1": "archived", "2": "production"}
    assert fraud["rollout"] == {"mode": "off", "candidate": None, "percent": 0.0}
    admin(rollout_gateway, action="set-primary", version="1", reason="test over")


def test_client_mistakes_during_a_canary_do_not_count_against_the_candidate(
    rollout_gateway: ServerProcess, serving_redis_url: str
) -> None:
    from flows.gates import Thresholds, canary_check
    from services.rollout.assignment import bucket
    from services.rollout.feedback import FeedbackStore
    from services.settings import RolloutSettings

    admin(rollout_gateway, action="set-primary", version="1")
    state = admin(rollout_gateway, action="canary", candidate="2", percent=50)["state"]
    salt, experiment = state["salt"], state["experiment_id"]  # type: ignore[index]
    users = [f"bad{i}" for i in range(2000) if bucket(salt, f"bad{i}") < 5000][:20]
    wait_for_mode(rollout_gateway, users[0], "2")
    url = f"{rollout_gateway.url}/predict"
    bad_records = [
        {**GOOD, "hour": 99},
        {**GOOD, "channel": "fax"},
        {k: v for k, v in GOOD.items() if k != "amount"},
        {**GOOD, "amount": "lots"},
    ]
    with httpx.Client(headers=INGEST) as client:
        for i in range(200):  # a burst of client mistakes from users on the candidate
            user = users[i % len(users)]
            resp = client.post(
                url, json={"model": "fraud", "inputs": [bad_records[i % 4]], "user_id": user}
            )
            assert resp.status_code == 422, resp.text
        for i in range(40):
            body = client.post(
                url, json={"model": "fraud", "inputs": [GOOD], "user_id": users[i % len(users)]}
            ).json()
            assert body["variant"] == "candidate"

    async def stats() -> dict[str, object]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(serving_redis_url)
        try:
            return await FeedbackStore(client).variant_stats("fraud", experiment)  # type: ignore[arg-type]
        finally:
            await client.aclose()

    deadline = time.monotonic() + 5
    while True:  # counters are flushed in the background: wait for the good ones
        table = asyncio.run(stats())
        cand = table.get("candidate")
        if (cand is not None and cand.predictions >= 40) or time.monotonic() > deadline:  # type: ignore[attr-defined]
            break
        time.sleep(0.05)
    assert cand is not None
    assert cand.predictions >= 40 and cand.errors == 0  # type: ignore[attr-defined]
    thresholds = Thresholds.from_settings(RolloutSettings(), min_predictions=40)
    check = canary_check(table, thresholds, percent=50, step_predictions=40)  # type: ignore[arg-type]
    assert check.failures == []
    admin(rollout_gateway, action="rollback", reason="client-mistakes test over")
