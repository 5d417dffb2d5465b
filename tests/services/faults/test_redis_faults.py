"""Redis paused, killed, and the embedded Redis killed, under steady load on a real
gateway: predictions keep being answered (degraded: no cache, default features), events
and feedback are accepted or refused with 503 + Retry-After, never accepted and then
lost, and the gateway recovers on its own within a bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.fault_cases import embedded_redis_killed, redis_fault
from tests.conftest import free_port

RECOVER_S = 10.0


def check_row(row: dict[str, Any]) -> None:
    """The suite's common bar for one fault's row."""
    assert row["unexplained"] == 0, row["unexplained_examples"]
    assert row["events_lost"] == 0 and row["feedback_lost"] == 0, row
    assert row["recover_s"] <= RECOVER_S, row
    assert row["by_kind"]["event"]["ok"] > 0 and row["by_kind"]["feedback"]["ok"] > 0, row


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["pause", "kill"])
def test_redis_paused_or_killed_and_restarted(fraud_store: Path, work: Path, fault: str) -> None:
    row = redis_fault(fraud_store, work, free_port(), fault)
    check_row(row)
    # Predictions do not need Redis: answered all through the outage.
    predict = row["by_kind"]["predict"]
    assert predict["ok"] == predict["sent"], row


@pytest.mark.slow
def test_embedded_redis_killed(fraud_store: Path, work: Path) -> None:
    row = embedded_redis_killed(fraud_store, work)
    check_row(row)
    assert row["rollout_state_kept"] and row["restarted_pid_differs"], row
