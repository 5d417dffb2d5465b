"""JSON Schemas (2020-12, as OpenAPI 3.1 uses) of the gateway's bodies.

The ``/predict`` request schemas are built from each registered model's ``ModelSchema``:
one record schema per model with every request field's type, range, categories, default
and description, and the fields the feature store fills said in its description. The
others (errors, Open Inference Protocol tensors, events, feedback, rollouts) are fixed.
"""

from __future__ import annotations

import inspect
from typing import Any

from services.registry.schema import OIP_TO_NUMPY, FieldSpec, ModelSchema
from services.request.tokenizer import TextEncoder

JSON = dict[str, Any]
_ID = {"type": "string", "minLength": 1, "maxLength": 200}
# The longest text a text model accepts: the encoder's own default, so the two agree.
MAX_TEXT_CHARS: int = inspect.signature(TextEncoder).parameters["max_chars"].default


def ref(name: str) -> JSON:
    """A reference to ``#/components/schemas/{name}``."""
    return {"$ref": f"#/components/schemas/{name}"}


def field_schema(f: FieldSpec) -> JSON:
    """One record field: type, range or categories, default and description."""
    out: JSON
    if f.dtype == "category":
        out = {"type": "string", "enum": list(f.categories or [])}
    elif f.dtype == "bool":
        out = {"type": "boolean"}
    else:
        out = {"type": "integer" if f.dtype == "int" else "number"}
        for key, bound in (("minimum", f.min), ("maximum", f.max)):
            if bound is not None:
                out[key] = int(bound) if f.dtype == "int" and bound.is_integer() else bound
    if f.default is not None:
        out["default"] = f.default
    if f.description:
        out["description"] = f.description
    return out


def record_schema(name: str, schema: ModelSchema) -> JSON:
    """What one record of ``inputs`` holds for model ``name`` (tabular or text)."""
    if schema.kind == "text":
        text = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS}
        return {
            "title": f"{name} record",
            "description": "A text to embed: an object with `text`, or the string itself.",
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"text": {**text, "description": "The text to embed."}},
                    "required": ["text"],
                    "additionalProperties": False,
                },
                text,
            ],
        }
    fields = [f for f in schema.fields if f.source == "request"]
    props = {f.name: field_schema(f) for f in fields}
    # Entity keys (e.g. user_id) may ride in a record to look up its features.
    for entity, key in schema.entities.items():
        props.setdefault(
            key,
            {
                "type": "string",
                "description": f"The {entity} whose features this record uses "
                "(default: the request's user_id).",
            },
        )
    out: JSON = {
        "title": f"{name} record",
        "type": "object",
        "properties": props,
        "required": [f.name for f in fields if f.required],
        "additionalProperties": False,
    }
    features = [f for f in schema.fields if f.source != "request"]
    if features:
        out["description"] = "Filled from the feature store, not sent: " + ", ".join(
            f"`{f.name}` ({f.source.removeprefix('feature:')}, default {f.default})"
            for f in features
        )
    return out


def predict_request_schema(name: str, versions: list[str], max_records: int) -> JSON:
    """The ``/predict`` body for model ``name``."""
    return {
        "title": f"/predict {name}",
        "type": "object",
        "properties": {
            "model": {"const": name},
            "inputs": {
                "type": "array",
                "items": ref(f"Record.{name}"),
                "minItems": 1,
                "maxItems": max_records,
            },
            "user_id": {
                **_ID,
                "description": "Sticky A/B assignment and the user's features.",
            },
            "request_id": {**_ID, "description": "Echoed back; generated when absent."},
            "version": {
                "type": "string",
                "enum": versions,
                "description": "Pin a version (default: the served one).",
            },
        },
        "required": ["model", "inputs"],
        "additionalProperties": False,
    }


def event_schema(fields: list[str], entities: list[str]) -> JSON:
    """A real-time event: its entities and every numeric field a real-time view reads."""
    props: JSON = {
        "event_id": {**_ID, "description": "Deduplicates retries; generated when absent."},
        "timestamp": {
            "type": ["number", "string"],
            "description": "Epoch seconds, or ISO-8601 with a zone.",
        },
        "entities": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"enum": entities},
            "additionalProperties": _ID,
            "examples": [{e: f"{e[0]}42" for e in entities[:1]}],
        },
    }
    props.update({name: {"type": "number", "description": "Read by a real-time view."}
                  for name in fields})  # fmt: skip
    return {
        "type": "object",
        "properties": props,
        "required": ["timestamp", "entities", *fields],
    }


def fixed_schemas() -> dict[str, JSON]:
    """The component schemas that do not depend on the registered models."""
    return {
        "Error": ERROR,
        "PredictResponse": PREDICT_RESPONSE,
        "Feedback": FEEDBACK,
        "Attribution": ATTRIBUTION,
        "RolloutRequest": ROLLOUT_REQUEST,
        "Tensor": TENSOR,
        "InferRequest": INFER_REQUEST,
        "InferResponse": INFER_RESPONSE,
        "TensorMetadata": TENSOR_METADATA,
        "ModelMetadata": MODEL_METADATA,
    }


ERROR: JSON = {
    "type": "object",
    "description": "Every error: `error` holds the message (as Triton and KServe clients "
    "expect), `type` the error class, `field` the input at fault, `limit` the limit passed.",
    "properties": {
        "error": {"type": "string"},
        "type": {"type": "string", "examples": ["InvalidInputError"]},
        "field": {"type": "string", "examples": ["inputs[3].amount"]},
        "limit": {"type": "integer"},
        "retry_after": {"type": "number", "description": "Seconds (503 only)."},
    },
    "required": ["error"],
}

PREDICT_RESPONSE: JSON = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "string"},
        "predictions": {
            "type": "array",
            "items": {
                "type": "object",
                "description": "A classifier's `label` and `probabilities`, a text model's "
                "`embedding`, or each output tensor's row; `cached` says whether the "
                "prediction cache answered; `features` flags missing or stale features.",
                "properties": {
                    "label": {"type": "string"},
                    "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                    "embedding": {"type": "array", "items": {"type": "number"}},
                    "cached": {"type": "boolean"},
                    "features": {"type": "object"},
                },
            },
        },
        "request_id": {"type": "string"},
        "signed_request_id": {
            "type": "string",
            "description": "`request_id.payload.signature`: the request id, what its outcome "
            "is counted for (model, version, variant, experiment, issue time; base64url "
            "JSON) and an HMAC-SHA256 over both (128 bits, base64url): what "
            "`POST /feedback` takes back. Present when rollouts are on.",
        },
        "variant": {"type": "string", "examples": ["primary", "candidate"]},
        "assignment": {"type": "string", "enum": ["user", "request"]},
    },
    "required": ["model", "version", "predictions", "request_id"],
}

FEEDBACK: JSON = {
    "type": "object",
    "properties": {
        "signed_request_id": {
            "type": "string",
            "minLength": 1,
            "description": "The `signed_request_id` the prediction answered with.",
        },
        "outcome": {"type": ["number", "boolean"], "description": "> 0 is a conversion."},
    },
    "required": ["signed_request_id", "outcome"],
}

ATTRIBUTION: JSON = {
    "type": "object",
    "properties": {
        k: {"type": "string"}
        for k in ("request_id", "model", "experiment_id", "variant", "version")
    },
}

ROLLOUT_REQUEST: JSON = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "action": {
            "enum": [
                "status",
                "set-primary",
                "shadow",
                "canary",
                "percent",
                "ab",
                "promote",
                "rollback",
            ]
        },
        "candidate": {"type": "string", "description": "shadow, canary, ab."},
        "version": {"type": "string", "description": "set-primary."},
        "percent": {"type": "number", "minimum": 0, "maximum": 100},
        "reason": {"type": "string"},
    },
    "required": ["model", "action"],
}

_DATATYPE = {"enum": sorted(OIP_TO_NUMPY)}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": -1}}
_PARAMETERS = {"type": "object", "additionalProperties": True}

TENSOR: JSON = {
    "type": "object",
    "description": "A tensor as JSON `data` (row-major, flat or nested), or with the binary "
    "tensor data extension, `parameters.binary_data_size` bytes after the JSON header.",
    "properties": {
        "name": {"type": "string"},
        "datatype": _DATATYPE,
        "shape": _SHAPE,
        "data": {"type": "array"},
        "parameters": _PARAMETERS,
    },
    "required": ["name", "datatype", "shape"],
}

INFER_REQUEST: JSON = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": ref("Tensor"), "minItems": 1},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS},
                "required": ["name"],
            },
        },
        "parameters": _PARAMETERS,
    },
    "required": ["inputs"],
}

INFER_RESPONSE: JSON = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": ref("Tensor")},
    },
    "required": ["model_name", "outputs"],
}

TENSOR_METADATA: JSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "datatype": _DATATYPE, "shape": _SHAPE},
    "required": ["name", "datatype", "shape"],
}

MODEL_METADATA: JSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string", "examples": ["onnxruntime_onnx"]},
        "inputs": {"type": "array", "items": ref("TensorMetadata")},
        "outputs": {"type": "array", "items": ref("TensorMetadata")},
    },
    "required": ["name", "platform", "inputs", "outputs"],
}
