"""The demo traffic generator, against an in-process fake gateway."""

from __future__ import annotations

import json

import httpx
import pytest

from flows.demo_traffic import main, send_traffic
from tests.conftest import INGEST_TOKEN, ServerProcess


def _gateway(seen: list[dict[str, object]]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if body["user_id"] == "u000000":
            return httpx.Response(503, json={"error": "busy"})
        return httpx.Response(200, json={"model": "fraud", "version": "2", "predictions": []})

    return httpx.MockTransport(answer)


async def test_sends_demo_users_at_a_steady_rate() -> None:
    seen: list[dict[str, object]] = []
    tally = await send_traffic(
        "http://gateway", rate=100.0, duration_s=0.5, transport=_gateway(seen)
    )
    assert 35 <= len(seen) <= 60  # about rate x duration
    assert tally.requests + tally.failures == len(seen)
    assert set(tally.versions) <= {"2"}
    for body in seen:
        user = str(body["user_id"])
        assert body["model"] == "fraud" and user.startswith("u") and 0 <= int(user[1:]) < 1000
        (record,) = body["inputs"]  # type: ignore[misc]
        assert record["user_id"] == user and "amount" in record


async def test_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError, match="rate"):
        await send_traffic("http://gateway", rate=0.0)


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--rate" in capsys.readouterr().out


async def test_outcomes_follow_on_feedback_with_the_ingest_token(gateway: ServerProcess) -> None:
    tally = await send_traffic(
        gateway.url, rate=20.0, duration_s=1.0, outcomes=True, ingest_token=INGEST_TOKEN
    )
    assert tally.requests >= 10 and tally.failures == 0
    assert tally.outcomes == tally.requests and tally.outcome_failures == 0
