"""Schemathesis against the gateway's own OpenAPI document, over real HTTP.

Every operation of ``GET /docs.json`` gets generated bodies, paths and queries, both
conforming and not: none may answer 5xx or carry a stack trace, and the gateway stays
healthy. The strategies are driven by Hypothesis directly (schemathesis' pytest loader
does not run on pytest 9).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import ServerProcess

EXAMPLES = 30  # per operation and generation mode: bounds the run to seconds
GOOD = {"amount": 1.0, "merchant_category": "grocery", "hour": 3, "channel": "online"}


def _fuzz(operation: Any, mode: GenerationMode, base_url: str, seen: list[int]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=10)
        seen.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])
        assert "Traceback" not in response.text, response.text
        assert 'File "' not in response.text, response.text

    try:
        run()
    except Unsatisfiable:
        # Nothing to break in an operation without parameters or body (GET /models).
        if mode is GenerationMode.POSITIVE:
            raise


def test_no_operation_answers_5xx_or_a_stack_trace(gateway: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.url}/docs.json")
    t0, seen, operations = time.monotonic(), [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, gateway.url, seen)
    assert operations >= 5 and len(seen) >= operations * EXAMPLES
    assert all(status < 500 or status == 503 for status in seen)
    assert time.monotonic() - t0 < 300
    assert httpx.get(f"{gateway.url}/v2/health/ready").status_code == 200
    assert (
        httpx.post(f"{gateway.url}/predict", json={"model": "fraud", "inputs": [GOOD]}).status_code
        == 200
    )
