"""Ingest authentication: who may post events (``/events``) and outcomes (``/feedback``).

Both feed decisions (real-time features, A/B outcomes), so both need a credential of
their own, distinct from the admin token: ``Authorization: Bearer <SERVEKIT_INGEST_TOKEN>``,
checked in constant time with failures rate-limited per client address, by the same
machinery as the admin token (``services.edge.admin_auth.BearerAuth``, buckets of its own).

With no ingest token configured the routes accept only clients whose connection comes from
a loopback address (127.0.0.0/8, ::1): the ``make serve`` demo, bound to 127.0.0.1, works
as it is, and a gateway reachable from elsewhere refuses everyone else with 403 until a
token is set. A proxy or sidecar on the gateway's own host makes every client look local:
such a deployment (Kubernetes included) must set the token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from services.edge.admin_auth import BearerAuth, client_address
from services.errors import ServekitError


class IngestForbiddenError(ServekitError):
    """An ingest request from a non-loopback client while no ingest token is configured."""

    error_code = HTTPStatus.FORBIDDEN


class IngestAuth(BearerAuth):
    """The ingest routes' bearer check; with no token, loopback clients only.

    Args:
        token: ``SERVEKIT_INGEST_TOKEN`` (``None``: loopback clients only).
        max_failures, window_s, on_failure, clock: as ``BearerAuth``; ``on_failure`` also
            hears "not_loopback" for a remote client refused while no token is configured.
    """

    def __init__(
        self,
        token: str | None,
        *,
        max_failures: int = 10,
        window_s: float = 60.0,
        on_failure: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            token,
            realm="ingest",
            max_failures=max_failures,
            window_s=window_s,
            on_failure=on_failure,
            **kwargs,
        )

    def unconfigured(self, scope: dict[str, Any]) -> None:
        """No token: let loopback clients through, refuse the rest with 403."""
        if is_loopback(client_address(scope)):
            return
        self.count("not_loopback")
        raise IngestForbiddenError(
            "this gateway has no SERVEKIT_INGEST_TOKEN, so /events and /feedback accept only "
            "loopback clients; set the token and send 'Authorization: Bearer <ingest token>'"
        )


def is_loopback(address: str) -> bool:
    """Whether ``address`` is a loopback IP (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
