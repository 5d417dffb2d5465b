"""Signed request ids: feedback is attributable only to predictions this service answered.

Every ``/predict`` answer carries ``signed_request_id`` = ``{request_id}.{mac}``, where mac
is the first 128 bits of HMAC-SHA256(``SERVEKIT_REQUEST_ID_SECRET``, request_id), base64url
without padding (22 characters). ``POST /feedback`` takes that value back and verifies it in
constant time before touching Redis, so an id that was never answered, or one copied from
elsewhere without its signature, is refused without a lookup. The key is shared by every
worker and replica through configuration; unset, each process draws a random one (feedback
then verifies only on the process that answered: single-process demos).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from services.errors import InvalidInputError

_MAC_BYTES = 16
_MAC_CHARS = 22  # base64url of 16 bytes, unpadded


class SignatureError(InvalidInputError):
    """A signed request id that is malformed or whose signature does not verify (422)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, field="signed_request_id", reason=reason)
        self.reason = reason
        """"malformed" or "forged" (the metric label)."""


class RequestSigner:
    """Signs request ids and verifies signed ones.

    Args:
        secret: the HMAC key (``None``: a random one for this process).
    """

    def __init__(self, secret: str | None) -> None:
        key = secret.encode() if secret is not None else os.urandom(32)
        self.shared = secret is not None
        """Whether the key came from configuration (else: this process only)."""
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def mac(self, request_id: str) -> str:
        """The signature of ``request_id`` (22 base64url characters)."""
        h = self._base.copy()
        h.update(request_id.encode())
        return base64.urlsafe_b64encode(h.digest()[:_MAC_BYTES]).decode()[:_MAC_CHARS]

    def sign(self, request_id: str) -> str:
        """``request_id.mac``: what a prediction answers with and feedback sends back."""
        return f"{request_id}.{self.mac(request_id)}"

    def verify(self, signed: str) -> str:
        """The request id of a signed one.

        Raises:
            SignatureError: no signature, a malformed one ("malformed"), or one this key
                did not make ("forged").
        """
        request_id, dot, mac = signed.rpartition(".")
        if not dot or not request_id or len(mac) != _MAC_CHARS:
            raise SignatureError(
                "signed_request_id must be the value a prediction answered with: "
                "'<request_id>.<signature>'",
                reason="malformed",
            )
        if not hmac.compare_digest(mac.encode(), self.mac(request_id).encode()):
            raise SignatureError(
                f"signed_request_id for request_id {request_id!r} has a signature this "
                "service did not make: it was altered, or signed with another "
                "SERVEKIT_REQUEST_ID_SECRET",
                reason="forged",
            )
        return request_id
