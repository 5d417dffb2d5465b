"""Hand-built /metrics samples and GET /models entries for the decision report's tests,
and a stub gateway serving them over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from monitoring.metrics import LATENCY_BUCKETS
from monitoring.scrape import Sample, Scrape


def sample(name: str, value: float, **labels: str) -> Sample:
    """One sample line."""
    return Sample(name, tuple(sorted(labels.items())), float(value))


def histogram(
    name: str,
    observations: Iterable[float],
    buckets: Iterable[float] = LATENCY_BUCKETS,
    **labels: str,
) -> list[Sample]:
    """The ``_bucket``, ``_count`` and ``_sum`` samples of ``observations``."""
    obs = list(observations)
    out = [
        sample(f"{name}_bucket", sum(o <= le for o in obs), le=repr(float(le)), **labels)
        for le in buckets
    ]
    out.append(sample(f"{name}_bucket", len(obs), le="+Inf", **labels))
    out += [sample(f"{name}_count", len(obs), **labels), sample(f"{name}_sum", sum(obs), **labels)]
    return out


def scrape(at: float, *parts: Sample | list[Sample]) -> Scrape:
    """A scrape at ``at`` of the given samples."""
    samples: list[Sample] = []
    for part in parts:
        samples.extend(part if isinstance(part, list) else [part])
    return Scrape(at, tuple(samples))


def model_entry(
    name: str,
    *,
    pinned: bool = True,
    provider: str = "CPUExecutionProvider",
    max_wait_ms: float = 10.0,
    fmt: str = "onnx",
    loaded: bool = True,
) -> dict[str, Any]:
    """One model of GET /models with one version."""
    runtime: dict[str, Any] = {"loaded": False}
    if loaded:
        runtime = {
            "loaded": True,
            "pinned": pinned,
            "provider": provider,
            "batching": {"max_batch_size": 32, "max_wait_ms": max_wait_ms},
        }
    return {
        "name": name,
        "served_version": "1",
        "versions": [{"version": "1", "format": fmt, "runtime": runtime}],
    }


def exposition(samples: Iterable[Sample]) -> str:
    """Samples as exposition text (untyped families, which the parser reads as gauges)."""
    lines = []
    for s in samples:
        labels = ",".join(f'{k}="{v}"' for k, v in s.labels)
        lines.append(f"{s.name}{{{labels}}} {s.value!r}" if labels else f"{s.name} {s.value!r}")
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    server: _StubServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/metrics":
            texts = self.server.metrics
            body = texts[min(self.server.scrapes, len(texts) - 1)].encode()
            self.server.scrapes += 1
        elif self.path == "/models":
            body = json.dumps({"models": self.server.models}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _StubServer(ThreadingHTTPServer):
    metrics: list[str]
    models: list[dict[str, Any]]
    scrapes: int = 0


@contextmanager
def stub_gateway(metrics: list[str], models: list[dict[str, Any]]) -> Iterator[str]:
    """A gateway that answers /metrics with ``metrics[i]`` on the i-th scrape (the last one
    from then on) and /models with ``models``; yields its URL."""
    server = _StubServer(("127.0.0.1", 0), _Handler)
    server.metrics, server.models = metrics, models
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
