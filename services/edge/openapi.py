"""The gateway's OpenAPI 3.1 document, built from its routes and the registered models.

``build_openapi`` documents every route the ASGI app has (the fixed ones it was given,
plus the Open Inference Protocol model routes), with one ``/predict`` request schema per
model (``services.edge.openapi_schemas``) and the error body on every 4xx/5xx answer.
It is pure: ``services.edge.docs`` decides when to rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from services.edge.openapi_schemas import (
    JSON,
    event_schema,
    fixed_schemas,
    predict_request_schema,
    record_schema,
    ref,
)
from services.registry.schema import ModelSchema

_ERRORS = {
    400: ("BadRequest", "Malformed JSON or an unreadable body."),
    401: ("Unauthorized", "A missing or wrong bearer token (admin or ingest)."),
    403: ("Forbidden", "Ingest from a non-loopback client while no ingest token is set."),
    404: ("NotFound", "An unknown model, version or route (admin routes: off)."),
    409: ("Conflict", "Already done: this prediction's outcome was recorded."),
    410: ("Gone", "Too late: the prediction's attribution expired."),
    413: ("TooLarge", "The body or the number of records is over a limit (`limit`)."),
    422: ("Invalid", "A missing, extra or mistyped field or tensor; `field` names it."),
    429: ("TooManyRequests", "Too many failed authentications from this address; see Retry-After."),
    503: ("Unavailable", "Starting, overloaded or a model that cannot load; see Retry-After."),
}


@dataclass
class DocModel:
    """What the document says of one registered model: its served version's schema."""

    name: str
    version: str
    versions: list[str]
    schema: ModelSchema


@dataclass
class DocContext:
    """Everything the document depends on.

    Attributes:
        models: the registered models, each at its served version.
        routes: the app's fixed (method, path) routes; only these are documented, with
            the Open Inference Protocol model routes.
        max_records: records per ``/predict`` request.
        max_body_bytes: the body limit.
        version: servekit's version.
        event_fields: the event values real-time feature views read (``POST /events``).
        entities: the entity types events may name.
    """

    models: list[DocModel]
    routes: set[tuple[str, str]]
    max_records: int
    max_body_bytes: int
    version: str
    event_fields: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)

    @property
    def predictable(self) -> list[DocModel]:
        """The models ``/predict`` takes (tabular and text; tensor models use v2 infer)."""
        return [m for m in self.models if m.schema.kind in ("tabular", "text")]


def build_openapi(ctx: DocContext) -> JSON:
    """The OpenAPI 3.1 document of the gateway described by ``ctx``."""
    ctx = replace(ctx, models=sorted(ctx.models, key=lambda m: m.name))
    components = fixed_schemas()
    components["Event"] = event_schema(ctx.event_fields, ctx.entities)
    for m in ctx.predictable:
        components[f"Record.{m.name}"] = record_schema(m.name, m.schema)
        components[f"Predict.{m.name}"] = predict_request_schema(m.name, m.versions,
                                                                  ctx.max_records)  # fmt: skip
    paths: dict[str, JSON] = {}
    for (method, path), build in OPERATIONS.items():
        if (method, path) in ctx.routes:
            paths.setdefault(path, {})[method.lower()] = build(ctx)
    paths.update(_v2_model_paths(ctx))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "servekit",
            "version": ctx.version,
            "summary": "Model serving: /predict with validation, features, caching and "
            "rollouts; the Open Inference Protocol (KServe v2 / Triton) for tensors.",
            "description": _description(ctx),
        },
        "tags": [{"name": name, "description": text} for name, text in _TAGS],
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {name: _error_response(text) for name, text in _ERRORS.values()},
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "ingestToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "SERVEKIT_INGEST_TOKEN (unset: loopback clients only).",
                },
            },
        },
    }


def _description(ctx: DocContext) -> str:
    rows = "\n".join(
        f"| `{m.name}` | {m.version} | {m.schema.kind} | "
        + ", ".join(f"`{t.name}` {t.datatype} {t.shape}" for t in m.schema.inputs)
        + " |"
        for m in ctx.models
    )
    return (
        "Bad input never gets a 500: every error is "
        '`{"error", "type", "field"?, "limit"?}` with its status.\n\n'
        f"Limits: {ctx.max_records:,} records per request, {ctx.max_body_bytes:,} bytes per "
        "body.\n\n| model | served version | kind | v2 input tensors |\n|---|---|---|---|\n" + rows
    )


_TAGS = [
    ("predict", "Predictions from records, validated against each model's schema."),
    ("features", "Real-time events feeding the feature store."),
    ("experiments", "Outcomes of predictions, attributed to their A/B or canary variant."),
    ("admin", "Rollout control (bearer token; off when no token is configured)."),
    ("open inference protocol", "KServe v2 / Triton REST, JSON or binary tensors."),
    ("operations", "Metrics, GPUs and these docs."),
]


def _error_response(text: str) -> JSON:
    return {"description": text, "content": {"application/json": {"schema": ref("Error")}}}


def _json(schema: JSON, description: str = "OK", **extra: Any) -> JSON:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _op(tag: str, summary: str, ok: dict[int, JSON], errors: Iterable[int], **extra: Any) -> JSON:
    responses: dict[str, JSON] = {str(code): resp for code, resp in ok.items()}
    for code in errors:
        responses[str(code)] = {"$ref": f"#/components/responses/{_ERRORS[code][0]}"}
    return {"tags": [tag], "summary": summary, "responses": responses, **extra}


def _body(schema: JSON, **extra: Any) -> JSON:
    return {"required": True, "content": {"application/json": {"schema": schema, **extra}}}


def example_record(schema: ModelSchema) -> Any:
    """A record that passes validation: first categories, values near the low end."""
    if schema.kind == "text":
        return {"text": "A short text to embed."}
    out: dict[str, Any] = {}
    for f in schema.fields:
        if f.source != "request":
            continue
        if f.dtype == "category":
            out[f.name] = (f.categories or [""])[0]
        elif f.dtype == "bool":
            out[f.name] = False
        else:
            low = f.min if f.min is not None else 0.0
            high = f.max if f.max is not None else low + 1.0
            value = min(max(1.0, low), high)
            out[f.name] = int(value) if f.dtype == "int" else value
    return out


def _predict(ctx: DocContext) -> JSON:
    models = ctx.predictable
    schema: JSON = (
        {"oneOf": [ref(f"Predict.{m.name}") for m in models]} if models else {"type": "object"}
    )
    if models:
        schema["discriminator"] = {
            "propertyName": "model",
            "mapping": {m.name: f"#/components/schemas/Predict.{m.name}" for m in models},
        }
    examples = {
        m.name: {
            "summary": f"{m.name} (version {m.version})",
            "value": {"model": m.name, "inputs": [example_record(m.schema)], "user_id": "u42"},
        }
        for m in models
    }
    return _op(
        "predict",
        "Predict from records",
        {200: _json(ref("PredictResponse"))},
        (400, 404, 413, 422, 503),
        description="One request schema per model (`Predict.<model>`): records are checked "
        "field by field; the version comes from the rollout state and the sticky "
        "assignment of `user_id`.",
        requestBody=_body(schema, examples=examples),
    )


def _models(ctx: DocContext) -> JSON:
    return _op(
        "predict",
        "Registered models, their versions, schemas and load state",
        {200: _json({"type": "object", "properties": {"models": {"type": "array"}}})},
        (503,),
    )


def _events(ctx: DocContext) -> JSON:
    accepted = {
        "type": "object",
        "properties": {"accepted": {"type": "boolean"}, "id": {"type": "string"}},
    }
    return _op(
        "features",
        "Append a real-time event",
        {202: _json(accepted, "Accepted")},
        (400, 401, 403, 413, 422, 429, 503),
        requestBody=_body(ref("Event")),
        security=[{"ingestToken": []}],
    )


def _feedback(ctx: DocContext) -> JSON:
    return _op(
        "experiments",
        "Record a prediction's outcome",
        {201: _json(ref("Attribution"), "Counted for this variant")},
        (400, 401, 403, 409, 410, 413, 422, 429),
        description="Only a `signed_request_id` a prediction answered with counts: it names "
        "the model, version, variant and experiment the outcome is counted for. A bare "
        "`request_id`, a malformed or forged value (422), one expired (410) or already "
        "counted (409) is refused.",
        requestBody=_body(ref("Feedback")),
        security=[{"ingestToken": []}],
    )


def _text(summary: str, tag: str, media: str) -> Callable[[DocContext], JSON]:
    def build(ctx: DocContext) -> JSON:
        ok = {"description": "OK", "content": {media: {"schema": {"type": "string"}}}}
        return _op(tag, summary, {200: ok}, ())

    return build


def _gpu(ctx: DocContext) -> JSON:
    status = {
        "type": "object",
        "properties": {
            "available": {"type": "boolean"},
            "reason": {"type": "string", "description": "Why no GPU is sampled."},
            "interval_s": {"type": "number"},
            "window_s": {"type": "number"},
            "devices": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["available"],
    }
    return _op("operations", "What the GPU sampler sees (or why it sees nothing)",
               {200: _json(status)}, ())  # fmt: skip


def _docs_json(ctx: DocContext) -> JSON:
    return _op("operations", "This OpenAPI document", {200: _json({"type": "object"})}, ())


def _admin(summary: str, body: JSON | None) -> Callable[[DocContext], JSON]:
    def build(ctx: DocContext) -> JSON:
        extra: dict[str, Any] = {"security": [{"adminToken": []}]}
        if body is not None:
            extra["requestBody"] = _body(body)
        errors = (400, 401, 404, 413, 422) if body is not None else (401, 404)
        return _op("admin", summary, {200: _json({"type": "object"})}, errors, **extra)

    return build


def _v2_plain(summary: str, schema: JSON, errors: tuple[int, ...] = ()) -> Callable[..., JSON]:
    def build(ctx: DocContext) -> JSON:
        return _op("open inference protocol", summary, {200: _json(schema)}, errors)

    return build


def _v2_model_paths(ctx: DocContext) -> dict[str, JSON]:
    """``/v2/models/{model_name}[/versions/{model_version}]`` with ``/ready`` and ``/infer``."""
    names = [m.name for m in ctx.models]
    model = {
        "name": "model_name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", **({"enum": names} if names else {})},
        "description": "A registered model; its input tensors are in the table above.",
    }
    version = {"name": "model_version", "in": "path", "required": True,
               "schema": {"type": "string"}}  # fmt: skip
    tag = "open inference protocol"
    header_length = {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "schema": {"type": "integer"},
        "description": "Binary tensor extension: length of the JSON header in the body.",
    }
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    infer = _op(
        tag,
        "Infer on tensors",
        {200: {"description": "OK", "content": {
            "application/json": {"schema": ref("InferResponse")}, **binary}}},
        (400, 404, 413, 422, 503),
        parameters=[header_length],
        requestBody={"required": True, "content": {
            "application/json": {"schema": ref("InferRequest")}, **binary}},
    )  # fmt: skip
    ready = _op(tag, "Model readiness", {200: _json({"type": "object"})}, (404, 503))
    meta = _op(tag, "Model metadata: tensor names, datatypes, shapes",
               {200: _json(ref("ModelMetadata"))}, (404,))  # fmt: skip
    out: dict[str, JSON] = {}
    for prefix, params in (
        ("/v2/models/{model_name}", [model]),
        ("/v2/models/{model_name}/versions/{model_version}", [model, version]),
    ):
        out[prefix] = {"parameters": params, "get": meta}
        out[prefix + "/ready"] = {"parameters": params, "get": ready}
        out[prefix + "/infer"] = {"parameters": params, "post": infer}
    return out


_SERVER_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}},
    },
}

OPERATIONS: dict[tuple[str, str], Callable[[DocContext], JSON]] = {
    ("POST", "/predict"): _predict,
    ("GET", "/models"): _models,
    ("POST", "/events"): _events,
    ("POST", "/feedback"): _feedback,
    ("GET", "/metrics"): _text("Prometheus metrics", "operations", "text/plain"),
    ("GET", "/gpu"): _gpu,
    ("GET", "/docs"): _text("These docs, rendered", "operations", "text/html"),
    ("GET", "/docs.json"): _docs_json,
    ("GET", "/admin/rollouts"): _admin("Every model's rollout state", None),
    ("POST", "/admin/rollout"): _admin("Change a model's rollout", ref("RolloutRequest")),
    ("GET", "/v2"): _v2_plain("Server metadata", _SERVER_META),
    ("GET", "/v2/health/live"): _v2_plain("Liveness", {"type": "object"}),
    ("GET", "/v2/health/ready"): _v2_plain(
        "Readiness (Redis state included)", {"type": "object"}, (503,)
    ),  # fmt: skip
}
