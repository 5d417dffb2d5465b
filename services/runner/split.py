"""The split shape's wire between the gateway and ``ModelRunner``, both sides of it.

Gateway side: ``RemoteRunner`` queues each request's feeds in servekit's adaptive batcher
(one lane per (model, version), as colocated), and the batcher drives a
``RemoteBackend``: a whole batch is one call of ``ModelRunner.run_batch`` over
``bentoml.depends``, its tensors carried as raw bytes (``services.runner.wire``: numpy
buffers and a dtype/shape header), nothing pickled per request. The calls run on the
batcher's worker threads (never inline: a call waits on the network), at most
``SPLIT_CONCURRENCY`` per lane, so while one batch is in the runner the next one forms.

Runner side: ``FrameServer`` decodes a batch, runs it on the runner's model pool (through
the pool's own batcher, so batches of several gateway workers or replicas merge) and
answers its outputs, or an error frame naming the error's class, status and context.

Errors: the gateway raises the runner's servekit error as the same class (404 unknown
version, 422, 503 with Retry-After for a full queue, a timeout or a failed load); any
other failure in the runner is a 503 ``ModelLoadError`` naming the model ("runner failed
on ..."), and a runner that cannot be reached a 503 ``ModelLoadError`` ("the model runner
did not answer ...").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

import aiohttp
from bentoml.exceptions import BentoMLException

from services.errors import (
    ArtifactIntegrityError,
    BadRequestError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    ModelTimeoutError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ServekitError,
    StoreError,
    UnavailableError,
)
from services.registry.versions import ModelVersion
from services.runner import wire
from services.runner.batching import AdaptiveBatcher
from services.runner.feeds import Feeds, concat_feeds, split_outputs
from services.runner.lanes import LaneLimits
from services.runner.pool import ModelPool
from services.settings import Settings

logger = logging.getLogger(__name__)

# Batches of one lane in flight to the runner at once: one runs while the next forms.
SPLIT_CONCURRENCY = 2
# The runner's API that takes a batch frame (services/service.py: ModelRunner.run_batch).
RUN_BATCH = "run_batch"
# Servekit errors the runner's frames may name; the gateway raises the same class.
_REMOTE_ERRORS: dict[str, type[ServekitError]] = {
    cls.__name__: cls
    for cls in (
        BadRequestError,
        InvalidInputError,
        PayloadTooLargeError,
        NotFoundError,
        ModelNotFoundError,
        UnavailableError,
        OverloadedError,
        ModelLoadError,
        ModelTimeoutError,
        ArtifactIntegrityError,
        StoreError,
    )
}


# -- runner side ------------------------------------------------------------------------
class FrameServer:
    """``ModelRunner``'s side: one batch frame in, its outputs (or an error) out.

    Args:
        pool: the runner's model pool (its preloaded models; others load on first use).
    """

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool
        self._versions: dict[tuple[str, str], ModelVersion] = {}

    async def serve(self, frame: bytes) -> bytes:
        """Run the batch ``frame`` holds; an output frame, or an error frame."""
        try:
            header, feeds = wire.decode(frame)
            mv = self._version(header)
            if not feeds:
                raise BadRequestError("a batch frame without tensors")
            rows = len(next(iter(feeds.values())))
            outputs = await self.pool.infer(mv, feeds, rows)
            return wire.encode({}, outputs)
        except ServekitError as exc:
            return wire.encode(error_header(exc))
        except Exception as exc:  # a backend's own error (ONNX Runtime's are untyped)
            logger.warning("runner batch failed: %s", exc)
            return wire.encode({"error": str(exc), "type": type(exc).__name__})

    def _version(self, header: dict[str, Any]) -> ModelVersion:
        """The registered version a frame names (looked up once: versions never change)."""
        model, version = header.get("model"), header.get("version")
        if not isinstance(model, str) or not isinstance(version, str):
            raise BadRequestError("a batch frame must name its model and version")
        mv = self._versions.get((model, version))
        if mv is None:
            mv = self._versions[(model, version)] = self.pool.registry.get(model, version)
        return mv


def error_header(exc: ServekitError) -> dict[str, Any]:
    """The header of an error frame: message, class, status and the error's context."""
    return {
        **{k: v for k, v in exc.context.items() if v is not None},
        "error": exc.message,
        "type": type(exc).__name__,
        "status": int(exc.error_code),
    }


def resident_versions(pool: ModelPool) -> dict[str, Any]:
    """The runner's resident versions, keyed ``model:version``."""
    return {f"{k[0]}:{k[1]}": lm.describe() for k, lm in pool.loaded().items()}


# -- gateway side -----------------------------------------------------------------------
def remote_error(header: dict[str, Any], model: str, version: str) -> ServekitError:
    """The error an error frame names, as the same servekit class, message and context;
    a failure that is no servekit error is a 503 naming the model."""
    message = str(header.get("error"))
    cls = _REMOTE_ERRORS.get(str(header.get("type")))
    if cls is None:
        return ModelLoadError(
            f"runner failed on {model} version {version}: {message}",
            retry_after=1.0,
            model=model,
            version=version,
        )
    context = {k: v for k, v in header.items() if k not in ("error", "type", "status")}
    exc = cls.__new__(cls)  # the classes' own constructors build their messages
    ServekitError.__init__(exc, message, **context)
    for key, value in context.items():  # retry_after, field, limit, model, version
        setattr(exc, key, value)
    return exc


class RemoteBackend:
    """Runs one batch of a (model, version) in ``ModelRunner``: one call of its
    ``run_batch`` API, made from a batcher worker thread (it blocks that thread only).

    Args:
        call: sends a frame to ``ModelRunner.run_batch`` and returns the reply frame.
    """

    stoppable = False

    def __init__(self, call: Callable[[bytes], bytes]) -> None:
        self._call = call

    def run(self, key: tuple[str, str], batch: Feeds) -> Feeds:
        model, version = key
        frame = wire.encode({"model": model, "version": version}, batch)
        try:
            reply = self._call(frame)
        except (aiohttp.ClientError, BentoMLException, OSError, TimeoutError) as exc:
            raise ModelLoadError(
                f"the model runner did not answer for {model} version {version}: {exc}",
                retry_after=1.0,
                model=model,
                version=version,
            ) from exc
        header, outputs = wire.decode(reply)
        if "error" in header:
            raise remote_error(header, model, version)
        return outputs


class RemoteRunner:
    """The gateway's runner in the split shape: batches requests per (model, version) and
    runs each batch in ``ModelRunner`` with one call.

    Args:
        proxy: the ``bentoml.depends`` handle of ``ModelRunner``.
        settings: servekit's settings (batching policy, queue limit, lane limits).
        on_batch: metrics hook, called with (key, rows, seconds) per batch.
    """

    def __init__(
        self,
        proxy: Any,
        settings: Settings,
        *,
        on_batch: Callable[[Hashable, int, float], None] | None = None,
    ) -> None:
        self.proxy = proxy
        self.backend = RemoteBackend(self._send)
        self._loop: asyncio.AbstractEventLoop | None = None
        mm = settings.multimodel
        self.batcher = AdaptiveBatcher(
            self._run_group,
            policy_for=lambda key: settings.batch.policy_for(key[0]),  # type: ignore[index]
            queue_limit=settings.batch.queue_limit,
            enabled=settings.batch.enabled,
            on_batch=on_batch,
            limits_for=lambda key: _split_limits(mm.limits_for(key[0])),  # type: ignore[index]
            inline_for=lambda key: False,  # a call waits on the network: never on the loop
            threads=mm.threads,
        )

    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
        """Run one request's feeds of ``mv`` in the runner, batched with its neighbours."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return await self.batcher.submit(mv.key, feeds, rows)

    def _send(self, frame: bytes) -> bytes:
        """One ``run_batch`` call, from a worker thread: BentoML's dependency client is
        asynchronous (aiohttp), so the call runs on the event loop while this thread waits."""
        assert self._loop is not None
        call = self.proxy.to_async.call(RUN_BATCH, frame)
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()  # type: ignore[no-any-return]

    def _run_group(self, key: Hashable, feeds: list[Feeds]) -> list[Feeds]:
        batch, sizes = concat_feeds(feeds)
        return split_outputs(self.backend.run(key, batch), sizes)  # type: ignore[arg-type]

    def describe(self) -> dict[tuple[str, str], dict[str, Any]]:
        """What the gateway shows as loaded: nothing (the models live in the runner)."""
        return {}

    async def close(self) -> None:
        """Stop the batcher; queued requests fail with 503."""
        await self.batcher.close()


def _split_limits(limits: Any) -> LaneLimits:
    return LaneLimits(
        max(SPLIT_CONCURRENCY, limits.max_concurrency), limits.timeout_s, limits.queue_limit
    )
