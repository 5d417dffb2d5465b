"""The artifact store failing while a model version loads, under steady load on a real
gateway whose models live in S3 (moto's server over HTTP): S3 unreachable, and the
artifact corrupted. The served version keeps answering; requests for the loading one get
503 with Retry-After naming it, never 500, and it loads once the store is sound again."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fault_cases import s3_fault
from tests.conftest import free_port


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["down", "corrupt"])
def test_store_fault_while_loading(
    fraud_store: Path, work: Path, serving_redis_url: str, kind: str
) -> None:
    row = s3_fault(fraud_store, work, serving_redis_url, free_port(), kind)
    assert row["unexplained"] == 0, row["unexplained_examples"]
    assert row["503"] > 0, row  # the fault was felt, and refused the right way
    assert row["first_version_ok"], row
    # The load backoff doubles from 1 s: the next try after the store is back is within 8 s.
    assert row["recover_s"] <= 15.0, row
