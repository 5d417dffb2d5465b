"""Signed request ids: what they carry, round trip, forgery, malformed values, keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from services.rollout.signing import (
    AnsweredPrediction,
    RequestSigner,
    SignatureError,
    new_request_id,
)

KEY = "signing-test-secret-0123456789abcdef"
NOW = 1_800_000_000
ANSWER = {"model": "fraud", "variant": "candidate", "version": "2", "experiment_id": "fraud-2-ab"}


def signer(key: str | None = KEY, now: float = NOW + 0.75) -> RequestSigner:
    return RequestSigner(key, clock=lambda: now)


def parts(signed: str) -> tuple[str, str, str]:
    signed_part, _, mac = signed.rpartition(".")
    request_id, _, payload = signed_part.rpartition(".")
    return request_id, payload, mac


def encode(fields: list[object]) -> str:
    text = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


def test_a_signed_id_carries_its_prediction() -> None:
    for request_id in ("0192f3a4b5c67d8e9f0a1b2c3d4e5f60", "with.dots.in.it", "ü", "\ud800"):
        signed = signer().sign(request_id, **ANSWER)
        assert signed.startswith(request_id + ".")
        assert signer().verify(signed) == AnsweredPrediction(request_id, **ANSWER, issued_at=NOW)
    baseline = signer().sign("r", model="m", variant="primary", version="1", experiment_id=None)
    assert signer().verify(baseline) == AnsweredPrediction("r", "m", "primary", "1", None, NOW)
    # Replicas sharing the key agree.
    assert RequestSigner(KEY, clock=lambda: NOW).sign("x", **ANSWER) == signer().sign("x", **ANSWER)


def test_the_format_is_request_id_payload_mac_and_short() -> None:
    request_id = new_request_id()
    signed = signer().sign(request_id, **ANSWER)
    rid, payload, mac = parts(signed)
    assert rid == request_id and len(mac) == 22
    assert payload == encode([NOW, "fraud", "2", "c", "fraud-2-ab"])
    key = hmac.new(KEY.encode(), b"servekit signed_request_id: request_id.payload", "sha256")
    digest = hmac.new(key.digest(), f"{rid}.{payload}".encode(), "sha256").digest()
    assert mac == base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")
    assert len(signed) <= len(request_id) + 80
    assert "=" not in payload and "." not in payload


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("no-signature", "malformed"),
        ("short.abc", "malformed"),
        ("rid." + "A" * 22, "malformed"),  # the old two-part form: no payload
        (".payload." + "A" * 22, "malformed"),
        ("rid.." + "A" * 22, "malformed"),
        ("other-id.payload." + "A" * 22, "forged"),
    ],
)
def test_malformed_and_forged_ids_are_refused(value: str, reason: str) -> None:
    with pytest.raises(SignatureError) as info:
        signer().verify(value)
    assert info.value.reason == reason and info.value.context["field"] == "signed_request_id"


def test_an_altered_payload_or_id_does_not_verify() -> None:
    signed = signer().sign("rid", **ANSWER)
    rid, payload, mac = parts(signed)
    # The variant (or anything else) changed, the signature kept: forged.
    for fields in (
        [NOW, "fraud", "2", "p", "fraud-2-ab"],
        [NOW + 86_400, "fraud", "2", "c", "fraud-2-ab"],
        [NOW, "fraud", "1", "c", "fraud-2-ab"],
    ):
        with pytest.raises(SignatureError, match="did not make") as info:
            signer().verify(f"{rid}.{encode(fields)}.{mac}")
        assert info.value.reason == "forged"
    with pytest.raises(SignatureError, match="did not make"):
        signer().verify(f"rie.{payload}.{mac}")
    # Another prediction's payload and signature do not carry over to this id.
    _, other_payload, other_mac = parts(signer().sign("other", **ANSWER))
    with pytest.raises(SignatureError, match="did not make"):
        signer().verify(f"{rid}.{other_payload}.{other_mac}")


def test_another_key_does_not_verify() -> None:
    signed = signer().sign("rid", **ANSWER)
    with pytest.raises(SignatureError, match="did not make"):
        signer("another-secret-0123456789abcdef-xyz").verify(signed)
    unset = signer(None)  # a random key per process
    assert not unset.shared and signer().shared
    with pytest.raises(SignatureError):
        signer(None).verify(unset.sign("rid", **ANSWER))


def test_a_plain_mac_of_the_secret_cannot_pass_for_one() -> None:
    """The MAC key is derived from the secret: an HMAC of the same text under the bare
    secret (as another use of it would make) does not verify."""
    signed_part = f"rid.{encode([NOW, 'fraud', '2', 'p', 'fraud-2-ab'])}"
    digest = hmac.new(KEY.encode(), signed_part.encode(), hashlib.sha256).digest()[:16]
    plain = base64.urlsafe_b64encode(digest).decode()[:22]
    with pytest.raises(SignatureError, match="did not make"):
        signer().verify(f"{signed_part}.{plain}")


def test_a_verified_payload_of_another_shape_is_malformed() -> None:
    """Only this key makes a valid signature, but a payload it cannot read is refused, not
    a server error."""
    derived = signer()
    for fields in (["x"], [NOW, "fraud", "2", "z", ""], ["soon", "fraud", "2", "c", ""]):
        signed_part = f"rid.{encode(fields)}"
        with pytest.raises(SignatureError, match="cannot read") as info:
            derived.verify(f"{signed_part}.{derived._mac(signed_part)}")
        assert info.value.reason == "malformed"
    signed_part = "rid.not-base64-json"
    with pytest.raises(SignatureError, match="cannot read"):
        derived.verify(f"{signed_part}.{derived._mac(signed_part)}")


def test_request_ids_are_time_ordered_and_unique() -> None:
    ids = [new_request_id(lambda: 1_800_000_000.123) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and i[12] == "7" and i[16] in "89ab" for i in ids)
    assert int(ids[0][:12], 16) == 1_800_000_000_123
    assert new_request_id(lambda: 1_800_000_001.0) > max(ids)
