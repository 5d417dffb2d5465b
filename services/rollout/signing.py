"""Signed request ids: each one carries, under its signature, what its outcome is counted for.

Every ``/predict`` answer carries ``signed_request_id`` = ``{request_id}.{payload}.{mac}``:

- ``payload``: base64url, unpadded, of the compact JSON array
  ``[issued, model, version, variant, experiment]``: ``issued`` the answer's Unix time in
  whole seconds, ``variant`` ``"p"`` (primary) or ``"c"`` (candidate), ``experiment`` the
  experiment id or ``""`` (none). 63 characters for model ``fraud``, version ``2``, an
  experiment ``fraud-2-1a2b3c4d``; 42 with no experiment.
- ``mac``: the first 128 bits of HMAC-SHA256 over ``{request_id}.{payload}`` (UTF-8),
  base64url unpadded (22 characters). Its key is HMAC-SHA256(``SERVEKIT_REQUEST_ID_SECRET``,
  ``"servekit signed_request_id: request_id.payload"``): derived for this use only, so that
  no other MAC made with the secret can pass for one.

Neither the payload nor the mac holds a ``.``, so the value splits from the right even when
the request id (a client may choose it) holds dots. ``POST /feedback`` verifies the value in
constant time and takes the model, version, variant, experiment and issue time from it: an
outcome needs no record written while the prediction was answered, so it is attributable
even when Redis was unreachable then. An altered id, payload or signature, or one signed
with another key, is refused before Redis is touched.

The key is shared by every worker and replica through configuration; unset, each process
draws a random one (feedback then verifies only on the process that answered: single-process
demos).

Gateway-generated request ids are time-ordered (UUIDv7 layout): :func:`new_request_id`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.errors import InvalidInputError

_MAC_BYTES = 16
_MAC_CHARS = 22  # base64url of 16 bytes, unpadded
_KEY_LABEL = b"servekit signed_request_id: request_id.payload"
_VARIANT_CODES = {"primary": "p", "candidate": "c"}
_VARIANTS = {code: name for name, code in _VARIANT_CODES.items()}
_RANDOM_BITS = (1 << 62) - 1


def new_request_id(clock: Callable[[], float] = time.time) -> str:
    """A fresh request id: 32 hex digits, UUIDv7 layout (time-ordered, 74 random bits)."""
    ms = int(clock() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | (((rand >> 62) & 0xFFF) << 64)
    value |= (0b10 << 62) | (rand & _RANDOM_BITS)
    return f"{value:032x}"


class SignatureError(InvalidInputError):
    """A signed request id that is malformed or whose signature does not verify (422)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, field="signed_request_id", reason=reason)
        self.reason = reason
        """"malformed" or "forged" (the metric label)."""


@dataclass(frozen=True, slots=True)
class AnsweredPrediction:
    """What a signed request id says about the prediction that answered with it."""

    request_id: str
    model: str
    variant: str
    """``"primary"`` or ``"candidate"``."""
    version: str
    experiment_id: str | None
    issued_at: int
    """When it was answered (Unix time, whole seconds)."""


class RequestSigner:
    """Signs answered predictions into request ids and verifies signed ones.

    Args:
        secret: the HMAC secret (``None``: a random key for this process).
        clock: seconds since the epoch (the issue time signed into each id).
    """

    def __init__(self, secret: str | None, *, clock: Callable[[], float] = time.time) -> None:
        root = secret.encode() if secret is not None else os.urandom(32)
        self.shared = secret is not None
        """Whether the key came from configuration (else: this process only)."""
        key = hmac.new(root, _KEY_LABEL, hashlib.sha256).digest()
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self._clock = clock

    def _mac(self, signed_part: str) -> str:
        h = self._base.copy()
        h.update(signed_part.encode("utf-8", "surrogatepass"))  # any str a client sends
        return base64.urlsafe_b64encode(h.digest()[:_MAC_BYTES]).decode()[:_MAC_CHARS]

    def sign(
        self,
        request_id: str,
        *,
        model: str,
        variant: str,
        version: str,
        experiment_id: str | None,
    ) -> str:
        """``request_id.payload.mac``: what a prediction answers with and feedback sends back.

        Raises:
            ValueError: ``variant`` is neither ``"primary"`` nor ``"candidate"``.
        """
        fields = [int(self._clock()), model, version, _VARIANT_CODES[variant], experiment_id or ""]
        text = json.dumps(fields, separators=(",", ":")).encode()
        payload = base64.urlsafe_b64encode(text).rstrip(b"=").decode()
        signed_part = f"{request_id}.{payload}"
        return f"{signed_part}.{self._mac(signed_part)}"

    def verify(self, signed: str) -> AnsweredPrediction:
        """The prediction a signed request id was issued for.

        Raises:
            SignatureError: no signature, a malformed value ("malformed"), or one this key
                did not make ("forged").
        """
        signed_part, dot, mac = signed.rpartition(".")
        request_id, dot2, payload = signed_part.rpartition(".")
        if not (dot and dot2 and request_id and payload) or len(mac) != _MAC_CHARS:
            raise SignatureError(
                "signed_request_id must be the value a prediction answered with: "
                "'<request_id>.<payload>.<signature>'",
                reason="malformed",
            )
        if not hmac.compare_digest(mac.encode(), self._mac(signed_part).encode()):
            raise SignatureError(
                f"signed_request_id for request_id {request_id!r} has a signature this "
                "service did not make: it was altered, or signed with another "
                "SERVEKIT_REQUEST_ID_SECRET",
                reason="forged",
            )
        return _decode(request_id, payload)


def _decode(request_id: str, payload: str) -> AnsweredPrediction:
    """The prediction of a payload whose signature verified."""
    try:
        text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        issued, model, version, code, experiment = json.loads(text)
        variant = _VARIANTS[code]
    except (binascii.Error, ValueError, TypeError, KeyError):
        issued = None  # refused below
    if type(issued) is not int or not all(isinstance(v, str) for v in (model, version, experiment)):
        # Only this service's key makes a valid signature: a payload it cannot read was
        # signed by a servekit that writes another format.
        raise SignatureError(
            f"signed_request_id for request_id {request_id!r} carries a payload this "
            "service cannot read",
            reason="malformed",
        )
    return AnsweredPrediction(request_id, model, variant, version, experiment or None, issued)
