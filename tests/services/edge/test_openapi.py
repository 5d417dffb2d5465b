"""The OpenAPI 3.1 document: valid, one /predict schema per model that accepts what the
gateway accepts and refuses what it refuses, the error body on every 4xx/5xx."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from flows.recipes.demo_models import FRAUD_SCHEMA
from flows.recipes.text_model import TEXT_SCHEMA
from services.edge.openapi import OPERATIONS, DocContext, DocModel, build_openapi, example_record
from services.registry.schema import ModelSchema, TensorSpec

TENSOR_SCHEMA = ModelSchema(
    kind="tensor",
    inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 16])],
    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 16])],
)
GOOD = {"amount": 4000, "merchant_category": "crypto", "hour": 2, "channel": "online"}


def document(**overrides: Any) -> dict[str, Any]:
    ctx = DocContext(
        models=[
            DocModel("fraud", "2", ["1", "2"], FRAUD_SCHEMA),
            DocModel("text-embed", "1", ["1"], TEXT_SCHEMA),
            DocModel("spin", "1", ["1"], TENSOR_SCHEMA),
        ],
        routes=set(OPERATIONS),
        max_records=64,
        max_body_bytes=65536,
        version="0.1.0",
        event_fields=["amount"],
        entities=["merchant_category", "user"],
    )
    for key, value in overrides.items():
        setattr(ctx, key, value)
    return build_openapi(ctx)


def validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of ``#/components/schemas/{name}`` (refs resolve inside ``doc``)."""
    root = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(root)


def test_the_document_is_valid_openapi_3_1() -> None:
    spec_validator = pytest.importorskip("openapi_spec_validator")
    doc = document()
    assert doc["openapi"] == "3.1.0"
    spec_validator.validate(doc)
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_one_predict_schema_per_model_that_predict_takes() -> None:
    doc = document()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    refs = [s["$ref"] for s in body["schema"]["oneOf"]]
    # Tensor models answer on the v2 routes only; /predict refuses them.
    assert refs == ["#/components/schemas/Predict.fraud", "#/components/schemas/Predict.text-embed"]
    assert body["schema"]["discriminator"]["propertyName"] == "model"
    assert set(body["examples"]) == {"fraud", "text-embed"}
    for name, example in body["examples"].items():
        validator(doc, f"Predict.{name}").validate(example["value"])
    model = doc["paths"]["/v2/models/{model_name}"]["parameters"][0]
    assert model["schema"]["enum"] == ["fraud", "spin", "text-embed"]


def test_fraud_record_schema_carries_types_ranges_categories_and_descriptions() -> None:
    doc = document()
    record = doc["components"]["schemas"]["Record.fraud"]
    props = record["properties"]
    assert props["amount"] == {
        "type": "number",
        "minimum": 0.0,
        "maximum": 1_000_000.0,
        "description": "Amount in EUR.",
    }
    assert props["hour"]["type"] == "integer" and props["hour"]["maximum"] == 23
    assert "crypto" in props["merchant_category"]["enum"]
    assert props["channel"]["enum"] == ["pos", "online", "atm"]
    assert record["required"] == ["amount", "merchant_category", "hour", "channel"]
    assert "user_id" in props and "user_id" not in record["required"]  # the entity key
    # Feature-store fields are not sent; the schema says where they come from.
    assert "avg_amount_30d" not in props
    assert "user_stats.avg_amount_30d" in record["description"]
    predict = doc["components"]["schemas"]["Predict.fraud"]
    assert predict["properties"]["inputs"]["maxItems"] == 64
    assert predict["properties"]["version"]["enum"] == ["1", "2"]


@pytest.mark.parametrize(
    ("record", "ok"),
    [
        (GOOD, True),
        ({**GOOD, "user_id": "u1"}, True),
        ({**GOOD, "amount": -1}, False),
        ({**GOOD, "hour": 24}, False),
        ({**GOOD, "hour": 2.5}, False),
        ({**GOOD, "merchant_category": "casino"}, False),
        ({**GOOD, "colour": "red"}, False),
        ({k: v for k, v in GOOD.items() if k != "channel"}, False),
        ({**GOOD, "avg_amount_30d": 1.0}, False),
    ],
)
def test_fraud_schema_agrees_with_the_gateway(record: dict[str, Any], ok: bool) -> None:
    """The schema accepts what the gateway's validation accepts, and refuses the rest."""
    from services.errors import InvalidInputError
    from services.request.encoding import RecordEncoder

    encoder = RecordEncoder(FRAUD_SCHEMA)
    try:
        encoder.encode([record], ignore=frozenset({"user_id"}))
        gateway_ok = True
    except InvalidInputError:
        gateway_ok = False
    schema_ok = validator(document(), "Predict.fraud").is_valid(
        {"model": "fraud", "inputs": [record]}
    )
    assert gateway_ok == schema_ok == ok


def test_text_record_schema() -> None:
    doc = document()
    check = validator(doc, "Predict.text-embed")
    check.validate({"model": "text-embed", "inputs": [{"text": "hello"}, "plain string"]})
    assert not check.is_valid({"model": "text-embed", "inputs": [{"text": ""}]})
    assert not check.is_valid({"model": "text-embed", "inputs": [{"text": "a", "lang": "en"}]})
    assert not check.is_valid({"model": "fraud", "inputs": [{"text": "a"}]})


def test_every_error_answer_carries_the_error_body() -> None:
    doc = document()
    responses = doc["components"]["responses"]
    for name, response in responses.items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, name
    error = doc["components"]["schemas"]["Error"]
    assert {"error", "type", "field", "limit"} <= set(error["properties"])
    seen = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    seen += 1
                    assert response["$ref"].startswith("#/components/responses/"), (path, code)
    assert seen > 20
    check = validator(doc, "Error")
    check.validate({"error": "x", "type": "InvalidInputError", "field": "inputs[0].amount"})
    check.validate({"error": "x", "type": "PayloadTooLargeError", "limit": 64})


def test_only_the_apps_routes_are_documented() -> None:
    routes = {("POST", "/predict"), ("GET", "/models")}
    doc = document(routes=routes)
    fixed = {p for p in doc["paths"] if not p.startswith("/v2/models/")}
    assert fixed == {"/predict", "/models"}
    assert "/v2/models/{model_name}/versions/{model_version}/infer" in doc["paths"]


def test_event_schema_follows_the_feature_views() -> None:
    doc = document()
    event = doc["components"]["schemas"]["Event"]
    assert event["required"] == ["timestamp", "entities", "amount"]
    check = validator(doc, "Event")
    check.validate({"timestamp": 1.0, "entities": {"user": "u1"}, "amount": 3.5})
    assert not check.is_valid({"timestamp": 1.0, "entities": {"shop": "s1"}, "amount": 3.5})
    assert not check.is_valid({"timestamp": 1.0, "entities": {"user": "u1"}})


def test_example_record_passes_validation() -> None:
    from services.request.encoding import RecordEncoder

    RecordEncoder(FRAUD_SCHEMA).encode([example_record(FRAUD_SCHEMA)])
    assert example_record(TEXT_SCHEMA) == {"text": "A short text to embed."}


def test_ingest_routes_document_their_token_and_the_signed_request_id() -> None:
    doc = document()
    ingest = doc["components"]["securitySchemes"]["ingestToken"]
    assert (ingest["type"], ingest["scheme"]) == ("http", "bearer")
    for path in ("/events", "/feedback"):
        op = doc["paths"][path]["post"]
        assert op["security"] == [{"ingestToken": []}]
        assert {"401", "403", "429"} <= set(op["responses"])
    assert "security" not in doc["paths"]["/predict"]["post"]
    feedback = validator(doc, "Feedback")
    feedback.validate({"signed_request_id": "rid.sig", "outcome": 1})
    with pytest.raises(jsonschema.ValidationError):
        feedback.validate({"request_id": "rid", "outcome": 1})
    answer = doc["components"]["schemas"]["PredictResponse"]["properties"]
    assert "feedback" in answer["signed_request_id"]["description"]
