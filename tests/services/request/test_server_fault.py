"""Which failures count against the variant that served a request."""

from __future__ import annotations

import pytest

from services.errors import (
    BadRequestError,
    InvalidInputError,
    ModelNotFoundError,
    ModelTimeoutError,
    OverloadedError,
    PayloadTooLargeError,
    ServekitError,
    StoreError,
)
from services.request.predictor import server_fault


@pytest.mark.parametrize(
    "exc",
    [
        InvalidInputError("bad record", field="inputs[0].hour"),
        BadRequestError("not JSON"),
        PayloadTooLargeError("too many", limit=1),
        ModelNotFoundError("fraud", "9"),
    ],
)
def test_client_mistakes_are_not_server_faults(exc: Exception) -> None:
    assert not server_fault(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ServekitError("internal"),
        StoreError("s3 down"),
        ModelTimeoutError("slow", model="fraud", version="1"),
        OverloadedError("full", retry_after=1),
        RuntimeError("onnxruntime failed"),
    ],
)
def test_server_failures_are(exc: Exception) -> None:
    assert server_fault(exc)
