"""Bearer authentication: a constant-time token check, rate-limited per client address.

``BearerAuth`` guards one realm of routes with one token: ``AdminAuth`` the admin routes,
``services.edge.ingest_auth.IngestAuth`` the ingest routes (``/events``, ``/feedback``),
each with buckets of its own.

Each client address has a token bucket of ``max_failures`` failed authentications that
refills over ``window_s``; once it is empty every admin request from that address gets
429 with Retry-After until a failure's worth has refilled, whatever token it carries (so
guessing cannot go on at full speed). Behind a proxy every client shares the proxy's
address: the bucket then limits them together.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from services.errors import NotFoundError, ServekitError, UnauthorizedError

logger = logging.getLogger(__name__)

_MAX_CLIENTS = 10_000  # addresses tracked at once (least recently failed go first)


class TooManyAuthFailuresError(ServekitError):
    """Too many failed authentications from one address; ``retry_after`` seconds."""

    error_code = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` and limits failures per client address.

    Args:
        token: the realm's bearer token (``None``: see ``unconfigured``).
        realm: what the token guards, in messages ("admin", "ingest").
        max_failures: failed authentications an address may make per ``window_s``.
        window_s: how long an empty bucket takes to refill completely.
        on_failure: called with "invalid" or "rate_limited" for each refused request.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        token: str | None,
        *,
        realm: str = "admin",
        max_failures: int = 10,
        window_s: float = 60.0,
        on_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token = token
        self.realm = realm
        self.capacity = float(max(1, max_failures))
        self.rate = self.capacity / window_s  # failures refilled per second
        self._on_failure = on_failure
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, scope: dict[str, Any]) -> None:
        """Refuse the request unless it carries the token and its address may try."""
        if self.token is None:
            self.unconfigured(scope)
            return
        address = client_address(scope)
        tokens = self._tokens(address)
        if tokens < 1.0:
            self.count("rate_limited")
            raise TooManyAuthFailuresError(
                f"too many failed {self.realm} authentications from this address; retry later",
                retry_after=(1.0 - tokens) / self.rate,
            )
        if not _bearer_matches(scope, self.token):
            self._buckets[address] = (tokens - 1.0, self._clock())
            self._buckets.move_to_end(address)
            while len(self._buckets) > _MAX_CLIENTS:
                self._buckets.popitem(last=False)
            self.count("invalid")
            logger.warning("failed %s authentication from %s", self.realm, address)
            raise UnauthorizedError(
                f"a valid 'Authorization: Bearer <{self.realm} token>' header is required"
            )

    def unconfigured(self, scope: dict[str, Any]) -> None:
        """With no token configured: refuse (the default) or let the request through."""
        raise NotFoundError(f"{self.realm} routes are off: no token is configured")

    def _tokens(self, address: str) -> float:
        """The address's bucket now (full when it never failed)."""
        entry = self._buckets.get(address)
        if entry is None:
            return self.capacity
        tokens, at = entry
        return min(self.capacity, tokens + (self._clock() - at) * self.rate)

    def count(self, reason: str) -> None:
        """Report one refused request (``on_failure``)."""
        if self._on_failure is not None:
            self._on_failure(reason)


class AdminAuth(BearerAuth):
    """The admin routes' bearer check; with no token configured they are off (404)."""

    def unconfigured(self, scope: dict[str, Any]) -> None:
        """Admin routes off: every call is 404."""
        raise NotFoundError("admin routes are off: set SERVEKIT_ADMIN_TOKEN to enable them")


def client_address(scope: dict[str, Any]) -> str:
    """The peer address of the connection ("unknown" when the server gives none)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _bearer_matches(scope: dict[str, Any], token: str) -> bool:
    given = b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            given = value
    scheme, _, credential = given.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), token.encode())
