"""The ingest routes: ``POST /events`` and ``POST /feedback``, behind the ingest token.

- ``POST /events``    a real-time event for the feature store (202)
- ``POST /feedback``  ``{"signed_request_id", "outcome"}``: a prediction's outcome,
  attributed to the variant that served it (201). ``signed_request_id`` is the value the
  prediction answered with (``services.rollout.signing``): it names the model, version,
  variant and experiment and when it was answered, so no lookup is needed. A bare
  ``request_id``, a malformed or forged value (422), one older than the TTL (410) or one
  already counted (409) is refused and counted by reason on
  ``servekit_feedback_rejected_total``.

Who may call them: ``services.edge.ingest_auth``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from services.edge.http import HTTPResponse, json_response, parse_json
from services.errors import ConflictError, InvalidInputError
from services.rollout.feedback import AttributionExpiredError
from services.rollout.signing import SignatureError

if TYPE_CHECKING:
    from services.edge.http import GatewayApp
    from services.edge.ingest_auth import IngestAuth
    from services.rollout.feedback import FeedbackStore
    from services.rollout.signing import RequestSigner

FEEDBACK_REJECTIONS = ("unsigned", "malformed", "forged", "expired", "duplicate")
"""Why ``POST /feedback`` refused an outcome (the metric's ``reason`` label)."""


def add_events_route(
    app: GatewayApp, auth: IngestAuth, append: Callable[[Any], Awaitable[str]]
) -> None:
    """``POST /events``: check the ingest credential, then append the event."""

    async def events(body: bytes, scope: dict[str, Any]) -> HTTPResponse:
        auth.check(scope)
        entry = await append(parse_json(body))
        return json_response({"accepted": True, "id": entry}, 202)

    app.add_route("POST", "/events", events)


class FeedbackRoute:
    """``POST /feedback``: only signed request ids of answered predictions count.

    Args:
        feedback: outcome attribution in Redis.
        auth: the ingest credential check.
        signer: verifies ``signed_request_id`` and reads the prediction it names.
        on_reject: called with a ``FEEDBACK_REJECTIONS`` reason per refused outcome.
    """

    def __init__(
        self,
        feedback: FeedbackStore,
        auth: IngestAuth,
        signer: RequestSigner,
        on_reject: Callable[[str], None],
    ) -> None:
        self.feedback = feedback
        self.auth = auth
        self.signer = signer
        self.on_reject = on_reject

    def register(self, app: GatewayApp) -> None:
        """Add the route to ``app``."""
        app.add_route("POST", "/feedback", self)

    async def __call__(self, body: bytes, scope: dict[str, Any]) -> HTTPResponse:
        self.auth.check(scope)
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise InvalidInputError("the request must be a JSON object", field="body")
        outcome = doc.get("outcome")
        if isinstance(outcome, bool):
            outcome = float(outcome)
        if not isinstance(outcome, int | float):
            raise InvalidInputError("'outcome' must be a number or a boolean", field="outcome")
        try:
            prediction = self.signer.verify(_signed_id(doc))
            attribution = await self.feedback.record_outcome(prediction, outcome)
        except SignatureError as exc:
            self.on_reject(exc.reason)
            raise
        except AttributionExpiredError:
            self.on_reject("expired")
            raise
        except ConflictError:
            self.on_reject("duplicate")
            raise
        return json_response(dataclasses.asdict(attribution), 201)


def _signed_id(doc: dict[str, Any]) -> str:
    value = doc.get("signed_request_id")
    if isinstance(value, str) and value:
        return value
    if value is None:
        raise SignatureError(
            "'signed_request_id' is required: send back the signed_request_id the "
            "prediction answered with (a bare request_id is not accepted)",
            reason="unsigned",
        )
    raise SignatureError("'signed_request_id' must be a non-empty string", reason="malformed")
