"""The /schema.json entries BentoML's HTTP client turns into methods, and what its
serializer makes of them (it must not rewrite a record or an answer)."""

from __future__ import annotations

import json
from typing import Any

import bentoml

from services.edge.bentoml_client import client_routes, publish_routes


def test_published_routes_join_one_services_schema_only() -> None:
    @bentoml.service(name="clients-probe")
    class Probe:
        @bentoml.api
        def ping(self) -> str:
            return "pong"

    @bentoml.service(name="clients-other")
    class Other:
        pass

    publish_routes(Probe, lambda: client_routes(event_fields=["amount"], admin=False))
    names = [r["name"] for r in Probe.schema()["routes"]]
    assert names == ["ping", "predict", "events", "feedback"]
    assert Other.schema()["routes"] == []


def test_the_gateway_publishes_its_raw_routes() -> None:
    from services.service import Gateway

    routes = {r["name"]: r for r in Gateway.schema()["routes"]}
    assert {"predict", "events", "feedback"} <= set(routes)
    predict = routes["predict"]
    assert predict["route"] == "/predict"
    assert predict["input"]["required"] == ["model", "inputs"]
    assert routes["events"]["input"]["required"] == ["timestamp", "entities", "amount"]


def test_admin_route_only_when_admin_is_on() -> None:
    off = [r["name"] for r in client_routes(event_fields=[], admin=False)]
    on = [r["name"] for r in client_routes(event_fields=[], admin=True)]
    assert "rollout" not in off and on[-1] == "rollout"


def test_the_clients_serializer_sends_records_and_returns_answers_unchanged() -> None:
    """BentoML's client keeps only the ``properties`` it knows of an object: records and
    answers are left open, so an unknown field still reaches the gateway (and its 422)."""
    from _bentoml_impl.serde import JSONSerde, Payload

    predict = client_routes(event_fields=[], admin=False)[0]
    serde = JSONSerde()
    kwargs: dict[str, Any] = {
        "model": "fraud",
        "inputs": [{"amount": 1, "colour": "red", "nested": {"a": [1, 2]}}, "text"],
        "user_id": "u1",
    }
    sent = b"".join(serde.serialize(kwargs, predict["input"]).iter_bytes())
    assert json.loads(sent) == kwargs
    answer = {"model": "fraud", "predictions": [{"label": "x"}], "new_key": 1}
    got = serde.deserialize(Payload((json.dumps(answer).encode(),)), predict["output"])
    assert got == answer
