"""The gateway's HTTP surface: a small raw ASGI app mounted into the BentoML service.

Why raw ASGI and not ``@bentoml.api``: BentoML's typed API path regenerates a pydantic
schema per response and cannot take path parameters (``/v2/models/{name}/infer``) or a raw
body (the binary tensor extension); a mounted app with hand validation costs several times
less server CPU per request (docs/design.md). Every error leaves as JSON with the
status of its ``ServekitError``; anything unexpected is logged and answered with a generic
500 that carries no stack trace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.edge import v2
from services.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServekitError,
    UnavailableError,
)
from services.runner.admission import bind_request, parse_timeout, request_answered

if TYPE_CHECKING:
    from services.edge.ingress import IngressGate

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_V2_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/infer|/ready)?$")


class HTTPResponse:
    """A status, a body and headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or _JSON


def json_response(doc: Any, status: int = 200) -> HTTPResponse:
    """A JSON response (numpy scalars and arrays serialised natively)."""
    return HTTPResponse(status, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def error_response(exc: ServekitError) -> HTTPResponse:
    """The JSON error response for ``exc``; 5xx show a generic message."""
    status = int(exc.error_code)
    if status >= 500 and not isinstance(exc, UnavailableError):
        body = {"error": "internal error; see the server log", "type": "InternalError"}
        return json_response(body, status)
    resp = json_response(exc.to_dict(), status)
    retry_after = getattr(exc, "retry_after", None)  # 503s and 429s say when to come back
    if isinstance(retry_after, int | float):
        resp.headers = [*_JSON, (b"retry-after", str(max(1, round(retry_after))).encode())]
    return resp


class GatewayApp:
    """Routes the gateway's requests to a ``Predictor`` bound after start-up.

    Routes: ``POST /predict``, ``GET /models``, ``GET /metrics``, and the Open Inference
    Protocol v2 subset (``/v2``, ``/v2/health/{live,ready}``, ``/v2/models/{m}[/versions/{v}]``
    with ``/ready`` and ``/infer``). Extra routes (admin, events, feedback, gpu, docs) are
    added with ``add_route``.
    """

    def __init__(self) -> None:
        self.predictor: Any = None
        self.max_body_bytes = 1 << 20
        self.metrics_render: Callable[[], bytes] | None = None
        self.readiness: list[Callable[[], Awaitable[dict[str, Any]]]] = []
        # Refuses inference requests before their body is read (None: admission only).
        self.gate: IngressGate | None = None
        # Run once, on the first request, inside the server's event loop.
        self.on_first_request: list[Callable[[], None]] = []
        self._started = False
        self._routes: dict[tuple[str, str], Callable[..., Awaitable[HTTPResponse]]] = {
            ("POST", "/predict"): self._predict,
            ("GET", "/models"): self._models,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/v2"): self._server_metadata,
            ("GET", "/v2/health/live"): self._live,
            ("GET", "/v2/health/ready"): self._ready,
        }

    def bind(
        self, predictor: Any, *, max_body_bytes: int, metrics_render: Callable[[], bytes]
    ) -> None:
        """Attach the request logic (called from the service's ``__init__``)."""
        self.predictor = predictor
        self.max_body_bytes = max_body_bytes
        self.metrics_render = metrics_render

    def add_route(
        self, method: str, path: str, handler: Callable[..., Awaitable[HTTPResponse]]
    ) -> None:
        """Add ``handler(body: bytes, scope) -> HTTPResponse`` at a fixed path."""
        self._routes[(method, path)] = handler

    def routes(self) -> list[tuple[str, str]]:
        """The fixed (method, path) routes (the v2 model routes are matched by pattern)."""
        return list(self._routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        if not self._started:
            self._started = True
            for hook in self.on_first_request:
                hook()
        path: str = scope["path"]
        method: str = scope["method"]
        route = "unknown"
        gated = False
        try:
            handler = self._routes.get((method, path))
            if handler is not None:
                route = path
                if path == "/predict":
                    gated = self._enter(None)
                    _bind_request(scope, receive)
                body = await self._read_body(scope, receive) if method == "POST" else b""
                resp = await handler(body, scope)
            elif (m := _V2_MODEL.match(path)) is not None:
                route = "v2_model" + (m.group(3) or "")
                if m.group(3) == "/infer" and method == "POST":
                    gated = self._enter(m.group(1))
                resp = await self._v2_model(method, m, scope, receive)
            elif any(p == path for _, p in self._routes) or path == "/v2/models":
                raise ServekitError("method not allowed", status=405)
            else:
                raise NotFoundError(f"no route {method} {path}", path=path)
        except Exception as exc:  # every failure is answered as JSON: see _failure
            resp = self._failure(exc, method, path, route)
        request_answered()
        headers = [*resp.headers, (b"content-length", str(len(resp.body)).encode())]
        try:
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": resp.body})
        finally:
            if gated and self.gate is not None:
                self.gate.leave()

    def _failure(self, exc: Exception, method: str, path: str, route: str) -> HTTPResponse:
        """The answer to a request that raised, counted per route and error."""
        if isinstance(exc, ServekitError):
            if exc.context.get("status") == 405:
                resp = json_response({"error": f"method {method} not allowed on {path}"}, 405)
            else:
                resp = error_response(exc)
            if resp.status >= 500:
                logger.warning("%s %s: %s: %s", method, path, type(exc).__name__, exc)
            error = type(exc).__name__
        elif isinstance(exc, RedisConnectionError | RedisTimeoutError):
            # Redis down or paused under a route that needs it (feedback, admin): nothing
            # was confirmed, so the client is told to send it again (safe: an outcome
            # recorded twice is refused with 409, a rollout change is idempotent or 409).
            logger.warning("%s %s: Redis unavailable: %s", method, path, exc)
            unavailable = UnavailableError(
                f"state store unavailable ({type(exc).__name__}); retry", retry_after=1
            )
            resp, error = error_response(unavailable), "RedisUnavailable"
        else:
            logger.error("unhandled error on %s %s", method, path, exc_info=exc)
            resp, error = error_response(ServekitError("internal")), "InternalError"
        if self.predictor is not None:
            self.predictor.metrics.observe_error(route, resp.status, error)
        return resp

    def _enter(self, model: str | None) -> bool:
        """Pass the ingress gate (or raise its 503); whether the request was counted."""
        if self.gate is None:
            return False
        self.gate.check(model)
        return True

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise BadRequestError(
                        "invalid Content-Length", field="Content-Length"
                    ) from None
                if declared > limit:
                    raise PayloadTooLargeError(
                        f"request body of {declared} bytes is over the limit of {limit} bytes",
                        limit=limit,
                        field="body",
                    )
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequestError("client disconnected", field="body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(
                    f"request body is over the limit of {limit} bytes", limit=limit, field="body"
                )
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _need_predictor(self) -> Any:
        if self.predictor is None:
            raise UnavailableError("the gateway is starting", retry_after=1)
        return self.predictor

    async def _predict(self, body: bytes, scope: Scope) -> HTTPResponse:
        predictor = self._need_predictor()
        return json_response(await predictor.predict(parse_json(body)))

    async def _models(self, body: bytes, scope: Scope) -> HTTPResponse:
        return json_response(await self._need_predictor().models())

    async def _metrics(self, body: bytes, scope: Scope) -> HTTPResponse:
        if self.metrics_render is None:
            raise UnavailableError("the gateway is starting", retry_after=1)
        return HTTPResponse(
            200, self.metrics_render(), [(b"content-type", b"text/plain; version=0.0.4")]
        )

    async def _server_metadata(self, body: bytes, scope: Scope) -> HTTPResponse:
        from services import __version__

        return json_response(
            {"name": "servekit", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def _live(self, body: bytes, scope: Scope) -> HTTPResponse:
        return json_response({"live": True})

    async def _ready(self, body: bytes, scope: Scope) -> HTTPResponse:
        ready = self.predictor is not None and self.predictor.ready
        checks: dict[str, Any] = {}
        for check in self.readiness:
            checks.update(await check())
        return json_response({"ready": ready, **checks}, 200 if ready else 503)

    async def _v2_model(
        self, method: str, m: re.Match[str], scope: Scope, receive: Receive
    ) -> HTTPResponse:
        predictor = self._need_predictor()
        model, version, action = m.group(1), m.group(2), m.group(3)
        if action == "/infer":
            if method != "POST":
                raise ServekitError("method not allowed", status=405)
            _bind_request(scope, receive)
            body = await self._read_body(scope, receive)
            header_length = None
            for name, value in scope["headers"]:
                if name == b"inference-header-content-length":
                    header_length = value.decode("latin-1")
            out, headers = await v2.infer(predictor, model, version, body, header_length)
            return HTTPResponse(
                200, out, [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            )
        if method != "GET":
            raise ServekitError("method not allowed", status=405)
        if action == "/ready":
            await predictor.resolve(model, version)
            return json_response({"name": model, "ready": True})
        return json_response(await v2.metadata(predictor, model, version))


_TIMEOUT_HEADERS = {
    b"request-timeout": "Request-Timeout",
    b"x-request-timeout": "X-Request-Timeout",
}


def _bind_request(scope: Scope, receive: Receive) -> None:
    """Hand the runner's admission this request's timeout (``Request-Timeout`` or
    ``X-Request-Timeout``, seconds; the sooner if both) and its connection."""
    timeout = None
    for name, value in scope["headers"]:
        header = _TIMEOUT_HEADERS.get(name)
        if header is not None:
            t = parse_timeout(value.decode("latin-1"), header)
            timeout = t if timeout is None else min(timeout, t)
    bind_request(timeout, receive)


def parse_json(body: bytes) -> Any:
    """Parse a JSON body; 400 naming ``body`` when it is empty or not JSON."""
    if not body:
        raise BadRequestError("empty body: send a JSON object", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"malformed JSON: {exc}", field="body") from None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
