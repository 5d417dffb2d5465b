"""Admin routes: rollout control.

Admin routes need ``Authorization: Bearer <SERVEKIT_ADMIN_TOKEN>``, compared in constant
time, with failures rate-limited per client address (``services.edge.admin_auth``); with no
token configured they are off (404), so an unconfigured gateway exposes no control surface.
Routes:

- ``GET  /admin/rollouts``                      every model's rollout state
- ``POST /admin/rollout``  ``{"model", "action", "candidate"?, "percent"?, "version"?,
  "reason"?}`` with action one of status, set-primary, shadow, canary, percent, ab,
  promote, rollback

``POST /feedback`` (outcomes) is an ingest route: ``services.edge.ingest``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.edge.http import HTTPResponse, json_response, parse_json
from services.errors import InvalidInputError
from services.registry.versions import validate_model_name, validate_version

if TYPE_CHECKING:
    from services.edge.admin_auth import AdminAuth
    from services.edge.http import GatewayApp
    from services.rollout.state import RolloutStore

ACTIONS = ("status", "set-primary", "shadow", "canary", "percent", "ab", "promote", "rollback")


def _str(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"'{key}' must be a non-empty string", field=key)
    return value


def _version(body: dict[str, Any], key: str) -> str:
    """A version field, validated like the registry's versions (never a path)."""
    value = _str(body, key)
    assert value is not None
    return validate_version(value, field=key)


def _percent(body: dict[str, Any], default: float | None = None) -> float:
    value = body.get("percent", default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError("'percent' must be a number from 0 to 100", field="percent")
    return float(value)


class AdminRoutes:
    """Registers the admin routes on the gateway's ASGI app.

    Args:
        store: rollout state in Redis.
        auth: checks the admin bearer token, rate-limiting failures per client address.
    """

    def __init__(self, store: RolloutStore, auth: AdminAuth) -> None:
        self.store = store
        self.auth = auth

    def register(self, app: GatewayApp) -> None:
        """Add the routes to ``app``."""
        app.add_route("GET", "/admin/rollouts", self.rollouts)
        app.add_route("POST", "/admin/rollout", self.rollout)

    async def rollouts(self, body: bytes, scope: dict[str, Any]) -> HTTPResponse:
        self.auth.check(scope)
        states = await self.store.all()
        return json_response({m: s.model_dump(mode="json") for m, s in states.items()})

    async def rollout(self, body: bytes, scope: dict[str, Any]) -> HTTPResponse:
        self.auth.check(scope)
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise InvalidInputError("the request must be a JSON object", field="body")
        model = validate_model_name(_str(doc, "model") or "")
        action = doc.get("action")
        if action not in ACTIONS:
            raise InvalidInputError(f"'action' must be one of {', '.join(ACTIONS)}", field="action")
        reason = _str(doc, "reason", required=False) or ""
        actor = "admin-api"
        s = self.store
        if action == "status":
            state = await s.get(model)
        elif action == "set-primary":
            state = await s.set_primary(model, _version(doc, "version"), reason, actor)
        elif action == "shadow":
            state = await s.start_shadow(model, _version(doc, "candidate"), reason, actor)
        elif action == "canary":
            state = await s.start_canary(
                model, _version(doc, "candidate"), _percent(doc, 5.0), reason, actor
            )
        elif action == "percent":
            state = await s.set_percent(model, _percent(doc), reason, actor)
        elif action == "ab":
            state = await s.start_ab(
                model, _version(doc, "candidate"), _percent(doc, 50.0), reason, actor
            )
        elif action == "promote":
            state = await s.promote(model, reason, actor)
        else:
            state = await s.rollback(model, reason, actor)
        history = await s.history(model, 10)
        return json_response(
            {
                "state": state.model_dump(mode="json"),
                "history": [h.model_dump(mode="json") for h in history],
            }
        )
