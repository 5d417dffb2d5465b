"""Open Inference Protocol v2 model routes: infer and metadata, over the shared predictor.

The predictor resolves versions and runs models; this module only speaks the protocol
(the codec is ``services.edge.oip``), so both the v2 routes and ``/predict`` share one
runner, one catalog and one set of request metrics.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.edge.oip import decode_request, encode_response, model_metadata
from services.request.predictor import Predictor
from services.runner.admission import parse_timeout, shorten_deadline

_PLATFORM = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


async def infer(
    predictor: Predictor, model: str, version: str | None, body: bytes, header_length: str | None
) -> tuple[bytes, dict[str, str]]:
    """``POST /v2/models/{model}[/versions/{version}]/infer``: the body and its headers."""
    t0 = time.perf_counter()
    mv = await predictor.resolve(model, version)
    req = decode_request(
        body, header_length, mv.model_schema.inputs, max_rows=predictor.max_records
    )
    timeout = req.parameters.get("timeout")
    if timeout is not None:  # microseconds, as Triton's request parameter
        shorten_deadline(parse_timeout(timeout, "parameters.timeout", scale=1e-6))
    outputs = await predictor.runner.infer(mv, req.feeds, req.rows)
    out = encode_response(mv.name, mv.version, req, outputs)
    predictor.metrics.observe_request(
        mv.name, mv.version, "v2_infer", time.perf_counter() - t0, req.rows
    )
    return out


async def metadata(predictor: Predictor, model: str, version: str | None) -> dict[str, Any]:
    """``GET /v2/models/{model}[/versions/{version}]``: tensor names, datatypes, shapes."""
    mv = await predictor.resolve(model, version)
    registry = predictor.catalog.registry
    versions = [v.version for v in await asyncio.to_thread(registry.list_versions, mv.name)]
    schema = mv.model_schema
    return model_metadata(
        mv.name, versions, _PLATFORM.get(mv.format, mv.format), schema.inputs, schema.outputs
    )
