"""The BentoML services: the public ``Gateway`` and, for the split shape, ``ModelRunner``.

Wiring only: each class builds plain objects in ``__init__`` and the gateway mounts its
ASGI app; the logic lives in ``services.request.predictor``, ``services.runner`` and
``services.edge``. ``SERVEKIT_SHAPE`` picks the shape ``bentoml serve
services.service:Gateway`` runs:

- colocated (default): the model pool and the adaptive batcher live in the gateway's
  process (a second HTTP hop costs several times the in-process call; docs/design.md);
- split: the gateway validates, routes and batches (servekit's batcher), and a
  ``ModelRunner`` service, reached with ``bentoml.depends``, runs each batch in its own
  process (for GPU models that need their own process and scaling): one call per batch,
  tensors as raw bytes (``services.runner.split``).

This module holds the service definitions only: the objects are built in the services'
``__init__`` by ``services.wiring``, imported there, so that BentoML's arbiter process,
which imports this module to read the definitions, never loads the serving stack.

Both services carry the same trims: tracing excluded, access log and BentoML's metrics off
(servekit exports its own on ``/metrics``), the TimeoutMiddleware timer fixed
(``services.edge.bentoml_fixes``) and ``gc.freeze()`` after load.
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType

from services.edge import bentoml_fixes
from services.edge.bentoml_client import publish_routes
from services.settings import get_settings

bentoml_fixes.apply()

SETTINGS = get_settings()
SPLIT = SETTINGS.serving.shape == "split"
_TRIMS: dict[str, Any] = {
    "traffic": {"timeout": 60},
    "logging": {"access": {"enabled": False}},
    "metrics": {"enabled": False},
    "tracing": {"excluded_urls": [".*"]},
}
# The split shape's batch frames: raw bytes both ways (BentoML sends a positional bytes
# input as the request body, unpickled, and a bytes output as the response body).
WireBytes = Annotated[bytes, ContentType("application/octet-stream")]


class _Forwarder:
    """The ASGI app BentoML mounts at ``/``: it forwards to the gateway's app
    (``services.wiring.app``), which ``Gateway.__init__`` builds in the worker."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


_ASGI = _Forwarder()


def _client_routes() -> list[dict[str, Any]]:
    """The raw routes BentoML's HTTP client finds on ``/schema.json``."""
    from services.wiring import client_route_list

    return client_route_list()


@bentoml.service(
    name="servekit-runner",
    workers=1,
    runner_connection={"max_requests": 10**9, "max_age": 3600.0},  # BentoML #5540
    **_TRIMS,
)
class ModelRunner:
    """Runs models for the split shape: the gateway batches, and each batch arrives as one
    ``run_batch`` call carrying raw tensor bytes (``services.runner.wire``)."""

    def __init__(self) -> None:
        from services.wiring import build_runner

        self.pool, self.frames, self.gpu_sampler = build_runner()

    @bentoml.api
    async def run_batch(self, frame: WireBytes, /) -> WireBytes:
        """Run one batch frame (a positional bytes input: sent raw, never pickled); its
        outputs, or an error frame."""
        return await self.frames.serve(frame)

    @bentoml.api
    def loaded(self) -> dict[str, Any]:
        """The runner's resident versions."""
        from services.runner.split import resident_versions

        return resident_versions(self.pool)

    @bentoml.api
    def gpu(self) -> dict[str, Any]:
        """The runner's GPUs as sampled (or why none are)."""
        return self.gpu_sampler.status()


@bentoml.service(name="servekit", workers=SETTINGS.serving.workers, **_TRIMS)
@bentoml.asgi_app(_ASGI, path="/")
class Gateway:
    """The public gateway: models run in this process (colocated) or in ``ModelRunner``
    (split)."""

    if SPLIT:
        # Declared for the split shape only: BentoML serves the services a service
        # depends on, so the colocated shape starts no ModelRunner.
        runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        from services import wiring

        self.predictor, self.pool = wiring.build_gateway(self.runner if SPLIT else None)
        _ASGI.app = wiring.app


# bentoml.SyncHTTPClient / AsyncHTTPClient discover the raw routes on /schema.json.
publish_routes(Gateway, _client_routes)
