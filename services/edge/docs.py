"""``GET /docs.json`` (the OpenAPI 3.1 document) and ``GET /docs`` (Swagger UI over it).

The document describes the registered models' served versions, so it changes when a
model is registered, loaded or rolled out. It is cached as bytes: a request compares an
in-memory fingerprint (pinned and loaded versions, rollout revisions, routes) and, at most
once per catalog TTL, re-lists the registry off the event loop; the document is rebuilt
only when the models or routes it describes differ, never per request.

Swagger UI is not fetched from a CDN: its files come from the installed BentoML package,
which bundles Swagger UI 5 (OpenAPI 3.1) for its own docs page, and are served by the
gateway at ``/docs/assets/``. Without them ``/docs`` says so and links the JSON.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from services.edge.http import HTTPResponse
from services.edge.openapi import DocContext, DocModel, build_openapi
from services.errors import ServekitError, UnavailableError

if TYPE_CHECKING:
    from services.edge.http import GatewayApp
    from services.request.predictor import Predictor

logger = logging.getLogger(__name__)

ASSETS = {"swagger-ui.css": b"text/css", "swagger-ui-bundle.js": b"text/javascript"}
ASSET_PREFIX = "/docs/assets/"
_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-cache")]
_HTML = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-cache")]


def swagger_ui_dir() -> Path | None:
    """Where the installed BentoML keeps Swagger UI's files (None: not there)."""
    spec = importlib.util.find_spec("bentoml")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "_internal" / "server" / "static_content"
    return folder if all((folder / name).is_file() for name in ASSETS) else None


class ApiDocs:
    """Serves the gateway's OpenAPI document and its docs page.

    Args:
        app: the gateway's ASGI app (its routes are documented).
        predictor: the request logic (catalog, runner, limits).
        rollout_states: model -> rollout state (``primary``, ``revision``), or None.
        event_fields: event values read by real-time feature views.
        entities: entity types events may name.
        ttl_s: longest the registry listing is trusted without a visible change.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        app: GatewayApp,
        predictor: Predictor,
        *,
        rollout_states: Callable[[], Mapping[str, Any]] | None = None,
        event_fields: list[str] | None = None,
        entities: list[str] | None = None,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.predictor = predictor
        self._rollout_states = rollout_states or dict
        self._event_fields = sorted(event_fields or [])
        self._entities = sorted(entities or [])
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._body: bytes | None = None
        self._key: Hashable = None
        self._models: tuple[list[DocModel], Hashable] = ([], None)
        self._seen: Hashable = None
        self._fresh_until = 0.0
        self._assets: dict[str, bytes] = {}
        self.builds = 0
        """How many times the document was built (it is cached in between)."""

    def register(self, app: GatewayApp) -> None:
        """Add ``/docs``, ``/docs.json`` and the docs page's assets to ``app``."""
        app.add_route("GET", "/docs.json", self.docs_json)
        app.add_route("GET", "/docs", self.docs_page)
        for name in ASSETS:
            app.add_route("GET", ASSET_PREFIX + name, self._asset_route(name))

    async def docs_json(self, body: bytes, scope: dict[str, Any]) -> HTTPResponse:
        return HTTPResponse(200, await self.document(), _JSON)

    async def docs_page(self, body: bytes, scope: dict[str, Any]) -> HTTPResponse:
        page = PAGE if swagger_ui_dir() is not None else FALLBACK_PAGE
        return HTTPResponse(200, page, _HTML)

    def _asset_route(self, name: str) -> Callable[..., Any]:
        async def asset(body: bytes, scope: dict[str, Any]) -> HTTPResponse:
            data = self._assets.get(name)
            if data is None:
                folder = swagger_ui_dir()
                if folder is None:
                    raise UnavailableError("Swagger UI's files are not installed", retry_after=60)
                data = self._assets[name] = await asyncio.to_thread((folder / name).read_bytes)
            headers = [(b"content-type", ASSETS[name]), (b"cache-control", b"max-age=86400")]
            return HTTPResponse(200, data, headers)

        return asset

    # -- the document ----------------------------------------------------------------
    def _fingerprint(self) -> Hashable:
        """What changes, in memory, when a model is loaded or rolled out."""
        pinned = tuple(sorted(mv.key for mv in self.predictor.catalog.pinned()))
        loaded = tuple(sorted(self.predictor.runner.describe()))
        rollouts = tuple(
            sorted((m, s.primary, s.revision) for m, s in self._rollout_states().items())
        )
        return pinned, loaded, rollouts, frozenset(self.app.routes())

    def _fresh(self, fingerprint: Hashable) -> bool:
        return (
            self._body is not None
            and fingerprint == self._seen
            and self._clock() < self._fresh_until
        )

    async def document(self) -> bytes:
        """The document's JSON bytes, rebuilt only when what it describes changed."""
        fingerprint = self._fingerprint()
        if not self._fresh(fingerprint):
            async with self._lock:
                if not self._fresh(fingerprint):
                    await self._refresh(fingerprint)
        assert self._body is not None
        return self._body

    async def _refresh(self, fingerprint: Hashable) -> None:
        catalog = self.predictor.catalog
        wanted = {mv.name: mv.version for mv in catalog.pinned()}
        wanted.update({m: s.primary for m, s in self._rollout_states().items()})
        try:
            models, models_key = await asyncio.to_thread(_served_models, catalog.registry, wanted)
        except (ServekitError, OSError) as exc:
            if self._body is None:
                raise UnavailableError(
                    f"the model registry cannot be read now ({type(exc).__name__})",
                    retry_after=5,
                ) from exc
            logger.warning("docs: registry listing failed (%s); describing the last listing", exc)
            models, models_key = self._models
        self._models = (models, models_key)
        routes = frozenset(self.app.routes())
        key = (models_key, routes)
        if key != self._key:
            self._body = orjson.dumps(build_openapi(self._context(models, routes)))
            self._key = key
            self.builds += 1
        self._seen = fingerprint
        self._fresh_until = self._clock() + self.ttl_s

    def _context(self, models: list[DocModel], routes: frozenset[tuple[str, str]]) -> DocContext:
        from services import __version__

        serving = self.predictor.settings.serving
        return DocContext(
            models=models,
            routes=set(routes),
            max_records=serving.max_records,
            max_body_bytes=serving.max_body_bytes,
            version=__version__,
            event_fields=self._event_fields,
            entities=self._entities,
        )


def _served_models(registry: Any, wanted: dict[str, str]) -> tuple[list[DocModel], Hashable]:
    """Every registered model at its served version (``wanted``, else the registry's
    default: the newest production version, else the newest), and a key of what was read."""
    models: list[DocModel] = []
    key = []
    for name in registry.list_models():
        versions = registry.list_versions(name)
        if not versions:
            continue
        by_version = {v.version: v for v in versions}
        served = by_version.get(wanted.get(name, ""))
        if served is None:
            production = [v for v in versions if v.stage == "production"]
            served = (production or versions)[-1]
        models.append(DocModel(name, served.version, list(by_version), served.model_schema))
        key.append((name, served.version, served.sha256, tuple(by_version)))
    return models, tuple(key)


PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>servekit API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<style>
  body { margin: 0; background: #fafafa; }
  .swagger-ui .info { margin: 24px 0 12px; }
  .swagger-ui .info .title small pre { background: none; }
  .swagger-ui .info table { margin: 8px 0; }
  .swagger-ui .scheme-container { padding: 12px 0; box-shadow: none; background: none; }
</style>
</head>
<body>
<div id="docs"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script>
  window.ui = SwaggerUIBundle({
    url: "docs.json",
    dom_id: "#docs",
    deepLinking: true,
    validatorUrl: null,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    defaultModelExpandDepth: 2,
    displayRequestDuration: true,
  });
</script>
</body>
</html>
"""

FALLBACK_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>servekit API</title></head>
<body style="font-family: sans-serif; margin: 2em">
<h1>servekit API</h1>
<p>The docs viewer's files (Swagger UI, bundled with BentoML) are not installed here.
The OpenAPI 3.1 document is at <a href="docs.json">docs.json</a>.</p>
</body></html>
"""
