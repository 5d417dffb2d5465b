"""What BentoML's HTTP client needs to call the gateway's raw routes.

``bentoml.SyncHTTPClient(url)`` and ``AsyncHTTPClient(url)`` wait for ``GET /readyz``,
then read ``GET /schema.json`` (BentoML's own route, answered from ``Service.schema()``)
and make one method per entry of its ``routes``: ``client.predict(model=..., inputs=...)``
POSTs ``{"model": ..., "inputs": ...}`` as JSON to the entry's ``route``. Each entry has
``name``, ``route``, ``input`` (a JSON Schema whose ``properties`` are the keyword
arguments and whose ``required`` the mandatory ones) and ``output``.

The gateway's routes are not ``@bentoml.api`` methods (a typed API costs several times
more per request), so ``Service.schema()`` lists none. ``publish_routes`` adds entries
describing the raw routes to one service's ``schema()``; the request path is untouched.

The schemas are deliberately loose where the client would rewrite the body: the client
keeps only the ``properties`` it knows of an object (at any depth) and of an answer, so a
record's fields and the answer's keys are left open and the gateway validates them.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

from _bentoml_sdk.service.factory import Service

_STRING = {"type": "string"}
_ANSWER = {"type": "object", "description": "The gateway's JSON answer, unchanged."}
_PROVIDERS: weakref.WeakKeyDictionary[Any, Callable[[], list[dict[str, Any]]]] = (
    weakref.WeakKeyDictionary()
)


def _route(name: str, route: str, doc: str, props: dict[str, Any], required: list[str]) -> Any:
    return {
        "name": name,
        "route": route,
        "description": doc,
        "doc": doc,
        "batchable": False,
        "is_task": False,
        "input": {"type": "object", "title": name, "properties": props, "required": required},
        "output": _ANSWER,
    }


PREDICT = _route(
    "predict",
    "/predict",
    "Predict from records: predict(model, inputs, user_id=None, request_id=None, "
    "version=None). See /docs for each model's record schema.",
    {
        "model": _STRING,
        "inputs": {"type": "array", "items": {}},
        "user_id": _STRING,
        "request_id": _STRING,
        "version": _STRING,
    },
    ["model", "inputs"],
)
FEEDBACK = _route(
    "feedback",
    "/feedback",
    "Record a prediction's outcome: feedback(signed_request_id, outcome), with the "
    "signed_request_id the prediction answered with.",
    {"signed_request_id": _STRING, "outcome": {"type": ["number", "boolean"]}},
    ["signed_request_id", "outcome"],
)
ROLLOUT = _route(
    "rollout",
    "/admin/rollout",
    "Change a model's rollout: rollout(model, action, candidate=None, percent=None, "
    "version=None, reason=None).",
    {
        "model": _STRING,
        "action": _STRING,
        "candidate": _STRING,
        "percent": {"type": "number"},
        "version": _STRING,
        "reason": _STRING,
    },
    ["model", "action"],
)


def client_routes(*, event_fields: list[str], admin: bool) -> list[dict[str, Any]]:
    """``/schema.json`` entries for the gateway's POST routes (the client only POSTs).

    Args:
        event_fields: the numeric event values real-time views read (``events``' kwargs).
        admin: whether the admin routes are on (``rollout``; pass ``token=`` to the client).
    """
    events = _route(
        "events",
        "/events",
        "Append a real-time event: events(timestamp, entities, <event fields>, event_id).",
        {
            "event_id": _STRING,
            "timestamp": {"type": ["number", "string"]},
            "entities": {"type": "object"},
            **{name: {"type": "number"} for name in event_fields},
        },
        ["timestamp", "entities", *event_fields],
    )
    return [PREDICT, events, FEEDBACK, *([ROLLOUT] if admin else [])]


def publish_routes(service: Any, provider: Callable[[], list[dict[str, Any]]]) -> None:
    """Make ``service.schema()`` (``GET /schema.json``) also list ``provider()``'s routes."""
    _install()
    _PROVIDERS[service] = provider


@functools.cache
def _install() -> None:
    """Wrap ``Service.schema`` once; services without a provider answer as before."""
    original = Service.schema

    @functools.wraps(original)
    def schema(self: Any) -> dict[str, Any]:
        doc = original(self)
        provider = _PROVIDERS.get(self)
        if provider is not None:
            doc["routes"] = [*doc.get("routes", []), *provider()]
        return doc

    Service.schema = schema  # type: ignore[method-assign]
