"""The split shape's wire between the gateway and ``ModelRunner``, both sides of it.

The gateway's ``RemoteRunner`` sends one item per request, ``{"model", "version",
"feeds"}``, to ``ModelRunner.infer`` (``bentoml.depends``); BentoML's batchable API
gathers items from concurrent requests into one call, and ``run_items`` runs them: items
of one (model, version) as one backend call, each group's failure answered as
``{"error": message}`` for its own items only. A runner that cannot be reached (killed,
restarting: the connection is refused or dropped, BentoML answers 5xx, or no answer within
``SERVEKIT_RUNNER_TIMEOUT_S``) fails the requests with 503 and Retry-After; BentoML starts
the runner again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import httpx
import numpy as np
from bentoml.exceptions import BentoMLException

from services.errors import ModelLoadError, UnavailableError
from services.registry.versions import ModelVersion
from services.runner.feeds import Feeds
from services.runner.pool import ModelPool

logger = logging.getLogger(__name__)


def run_items(pool: ModelPool, items: list[dict[str, Any]]) -> list[Any]:
    """Run a batch of ``{"model", "version", "feeds"}`` items; one output dict each (or
    ``{"error": message}`` for the items of a group that failed)."""
    results: list[Any] = [None] * len(items)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((item["model"], item["version"]), []).append(i)
    for key, idx in groups.items():
        try:
            outs = pool.run_now(key, [items[i]["feeds"] for i in idx])
        except Exception as exc:  # one group's failure fails only its own items
            logger.warning("runner batch for %s failed: %s", key, exc)
            for i in idx:
                results[i] = {"error": str(exc)}
            continue
        for i, out in zip(idx, outs, strict=True):
            results[i] = out
    return results


def resident_versions(pool: ModelPool) -> dict[str, Any]:
    """The runner's resident versions, keyed ``model:version``."""
    return {f"{k[0]}:{k[1]}": lm.describe() for k, lm in pool.loaded().items()}


def runner_unavailable(mv: ModelVersion, exc: Exception) -> UnavailableError:
    """The 503 for a request the runner could not answer (it died or is restarting)."""
    logger.warning("model runner unavailable for %s:%s: %r", mv.name, mv.version, exc)
    return UnavailableError(
        f"the model runner is unavailable ({type(exc).__name__}); retry",
        model=mv.name,
        version=mv.version,
        retry_after=2,
    )


class RemoteRunner:
    """The gateway's runner in the split shape: calls ``ModelRunner.infer`` remotely.

    Args:
        proxy: the ``bentoml.depends`` handle of ``ModelRunner``.
        timeout_s: longest a request waits for the runner (a restarting runner's socket
            accepts and holds requests until it serves again); past it, 503.
    """

    def __init__(self, proxy: Any, *, timeout_s: float | None = None) -> None:
        self.proxy = proxy
        self.timeout_s = timeout_s

    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
        """Run one request's feeds of ``mv`` in the runner; its outputs."""
        call = self.proxy.to_async.infer(
            [{"model": mv.name, "version": mv.version, "feeds": feeds}]
        )
        try:
            (out,) = await asyncio.wait_for(call, self.timeout_s)
        except (TimeoutError, aiohttp.ClientError, httpx.TransportError) as exc:
            raise runner_unavailable(mv, exc) from exc
        except BentoMLException as exc:
            if int(exc.error_code) < 500:
                raise
            raise runner_unavailable(mv, exc) from exc
        # An output tensor could be named "error": only a message is a failure.
        if "error" in out and not isinstance(out["error"], np.ndarray):
            raise ModelLoadError(f"runner failed on {mv.name} version {mv.version}: {out['error']}")
        return out

    def describe(self) -> dict[tuple[str, str], dict[str, Any]]:
        """What the gateway shows as loaded: nothing (the models live in the runner)."""
        return {}
