"""Admin authentication: failures rate-limited per client address, and counted."""

from __future__ import annotations

from typing import Any

import pytest

from services.edge.admin_auth import AdminAuth, TooManyAuthFailuresError
from services.errors import NotFoundError, UnauthorizedError

TOKEN = "t" * 32


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scope(token: str | None, address: str = "10.0.0.1") -> dict[str, Any]:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    return {"headers": headers, "client": (address, 5555)}


def test_without_a_token_admin_is_off() -> None:
    with pytest.raises(NotFoundError):
        AdminAuth(None).check(scope(TOKEN))


def test_failures_are_limited_per_address_then_refill() -> None:
    clock, reasons = FakeClock(), []
    auth = AdminAuth(TOKEN, max_failures=3, window_s=30.0, on_failure=reasons.append, clock=clock)
    for _ in range(3):
        with pytest.raises(UnauthorizedError):
            auth.check(scope("wrong"))
    with pytest.raises(TooManyAuthFailuresError) as err:
        auth.check(scope(TOKEN))  # even the right token: guessing must not go on
    assert err.value.retry_after == pytest.approx(10.0)  # one failure's worth refills
    auth.check(scope(TOKEN, "10.0.0.2"))  # another address is not affected
    clock.now += 10.0
    auth.check(scope(TOKEN))
    with pytest.raises(UnauthorizedError):
        auth.check(scope(None))
    with pytest.raises(TooManyAuthFailuresError):
        auth.check(scope("wrong"))
    assert reasons == ["invalid"] * 3 + ["rate_limited", "invalid", "rate_limited"]


def test_successes_do_not_spend_the_bucket() -> None:
    auth = AdminAuth(TOKEN, max_failures=1, window_s=60.0, clock=FakeClock())
    for _ in range(100):
        auth.check(scope(TOKEN))
