"""Ingest authentication: loopback-only without a token, the token (and its own failure
buckets) with one."""

from __future__ import annotations

from typing import Any

import pytest

from services.edge.admin_auth import AdminAuth, TooManyAuthFailuresError
from services.edge.ingest_auth import IngestAuth, IngestForbiddenError, is_loopback
from services.errors import UnauthorizedError

TOKEN = "i" * 32


def scope(token: str | None, address: str | None = "10.0.0.1") -> dict[str, Any]:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    return {"headers": headers, "client": (address, 5555) if address else None}


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("0.0.0.0", False),
        ("unknown", False),
        ("localhost", False),  # a name is not an address
    ],
)
def test_loopback_addresses(address: str, local: bool) -> None:
    assert is_loopback(address) is local


def test_without_a_token_only_loopback_clients_pass() -> None:
    reasons: list[str] = []
    auth = IngestAuth(None, on_failure=reasons.append)
    auth.check(scope(None, "127.0.0.1"))
    auth.check(scope(None, "::1"))
    for address in ("10.0.0.1", None):  # a Unix-socket client has no address: refused
        with pytest.raises(IngestForbiddenError, match="SERVEKIT_INGEST_TOKEN"):
            auth.check(scope(TOKEN, address))
    assert reasons == ["not_loopback", "not_loopback"]


def test_with_a_token_every_client_needs_it_and_failures_are_limited() -> None:
    reasons: list[str] = []
    auth = IngestAuth(TOKEN, max_failures=2, window_s=60.0, on_failure=reasons.append)
    auth.check(scope(TOKEN))
    with pytest.raises(UnauthorizedError, match="ingest token"):
        auth.check(scope(None, "127.0.0.1"))  # loopback is no exemption once a token is set
    with pytest.raises(UnauthorizedError):
        auth.check(scope("t" * 32, "127.0.0.1"))
    with pytest.raises(TooManyAuthFailuresError, match="ingest"):
        auth.check(scope(TOKEN, "127.0.0.1"))
    auth.check(scope(TOKEN))  # another address has its own bucket
    assert reasons == ["invalid", "invalid", "rate_limited"]
    # The admin check keeps buckets of its own.
    AdminAuth("t" * 32).check(scope("t" * 32, "127.0.0.1"))
