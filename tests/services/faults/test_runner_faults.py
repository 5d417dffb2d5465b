"""The split shape's ModelRunner killed with SIGKILL under steady load: the requests it
had are answered 503 with Retry-After (never 500), and the gateway answers again once
BentoML has started the runner anew."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fault_cases import runner_killed


@pytest.mark.slow
def test_runner_killed_mid_traffic(fraud_store: Path, work: Path, serving_redis_url: str) -> None:
    row = runner_killed(fraud_store, work, serving_redis_url)
    assert row["unexplained"] == 0, row["unexplained_examples"]
    assert row["runner_restarted"], row
    assert row["recover_s"] <= 30.0, row
    predict = row["by_kind"]["predict"]
    assert predict["ok"] > 0 and predict["ok"] + row["503"] == predict["sent"], row
